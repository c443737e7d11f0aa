"""Training data sets as files (Django-free): the nnU-Net v2 raw dataset and Cellpose training folders.

Both the exports (``interchange.services.archives`` streams the files into a zip) and training jobs (which
write them to a folder) use these writers, so a downloaded data set is exactly what the platform
trains on. A :class:`DatasetCase` is one image with its cells' polygons in image pixels, painted
in order (a later cell covers an earlier one where they overlap); polygons are rasterised with
the platform's pixel-centre rule (:func:`cytoseg.contours.polygon_rasterize`).

nnU-Net layout (``Dataset{id:03d}_{name}/``), as nnU-Net's own RGB conversion writes it:
``imagesTr/<case>_0000.png`` (RGB, read by ``NaturalImage2DIO`` as three channels),
``labelsTr/<case>.png`` (uint8 0 background / 1 cell / 2 erythrocyte), the same for test cases in
``imagesTs``/``labelsTs``, ``dataset.json``, and ``splits_final.json`` (one fold: the train cases
against the validation cases) when there are both.

Cellpose layout: ``<split>/<case>.png`` (RGB) and ``<split>/<case>_masks.png`` (uint16 instance
labels, 0 background, 1..N the cells in paint order), Cellpose's ``_masks`` naming, so that
``cellpose --train --dir train --test_dir test --mask_filter _masks`` reads it.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from cytoseg.contours import polygon_rasterize

__all__ = [
    "BOUNDARY",
    "CORE",
    "LABELS",
    "LABELS_WITH_BOUNDARY",
    "LABELS_WITH_CORE",
    "DatasetCase",
    "cellpose_dataset_files",
    "cellpose_dataset_write",
    "core_label_map",
    "crop_grid",
    "crop_polygons",
    "instance_label_map",
    "nnunet_raw_dataset_files",
    "nnunet_raw_dataset_write",
    "semantic_label_map",
]

# Semantic ids of the platform (docs/architecture.md) as nnU-Net label names.
LABELS: dict[str, int] = {"background": 0, "cell": 1, "erythrocyte": 2}
# nnU-Net trained with a cell-boundary class (interior / boundary / background, paper-style
# three-class targets): the inner rim of every cell is its own class, so touching and
# overlapping cells come apart where their rims run. Only for training targets; everything
# the platform stores or exports stays 0/1/2.
BOUNDARY = 3
LABELS_WITH_BOUNDARY: dict[str, int] = {**LABELS, "boundary": BOUNDARY}
# ... or with a cell-core class instead: the middle of every cell (where nuclei sit), one blob
# per cell, easier to learn than a thin rim and the seed the instances grow from.
CORE = 3
LABELS_WITH_CORE: dict[str, int] = {**LABELS, "core": CORE}
SPLITS = ("train", "validation", "test")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class DatasetCase:
    """One image of a data set.

    ``image`` is an RGB PNG file (written as it is) or an (H, W, 3) uint8 array; ``polygons``
    are ``[[x, y], ...]`` per cell in paint order, ``labels`` the semantic label of each cell
    (1 cell, 2 erythrocyte); ``split`` is train, validation or test.
    """

    case_id: str
    split: str
    image: bytes | np.ndarray
    height: int
    width: int
    polygons: Sequence[Sequence[Sequence[float]]]
    labels: Sequence[int]

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.case_id) or self.case_id.endswith("_0000"):
            raise ValueError(f"case id {self.case_id!r} must be letters, digits, _ or - (not ending in _0000)")
        if self.split not in SPLITS:
            raise ValueError(f"{self.case_id}: split must be one of {', '.join(SPLITS)}")
        if len(self.polygons) != len(self.labels):
            raise ValueError(f"{self.case_id}: one label per polygon")
        if any(label not in (1, 2) for label in self.labels):
            raise ValueError(f"{self.case_id}: labels must be 1 (cell) or 2 (erythrocyte)")


def _paint(target: np.ndarray, points: Sequence[Sequence[float]], value: int) -> None:
    """Set the pixels of ``target`` whose centre lies inside the polygon to ``value``,
    rasterising only the polygon's bounding box."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return
    height, width = target.shape
    x0 = max(math.floor(float(pts[:, 0].min())), 0)
    y0 = max(math.floor(float(pts[:, 1].min())), 0)
    x1 = min(math.ceil(float(pts[:, 0].max())), width)
    y1 = min(math.ceil(float(pts[:, 1].max())), height)
    if x1 <= x0 or y1 <= y0:
        return
    mask = polygon_rasterize(pts - (x0, y0), height=y1 - y0, width=x1 - x0)
    target[y0:y1, x0:x1][mask] = value


def semantic_label_map(
    *, polygons: Sequence[Sequence[Sequence[float]]], labels: Sequence[int], height: int, width: int
) -> np.ndarray:
    """(height, width) uint8: 0 background, else the label of the topmost cell."""
    out = np.zeros((height, width), dtype=np.uint8)
    for points, label in zip(polygons, labels, strict=True):
        _paint(out, points, int(label))
    return out


def boundary_label_map(semantic: np.ndarray, cell_instances: np.ndarray, *, width: int = 2) -> np.ndarray:
    """``semantic`` (0/1/2) with the inner rim of every cell, ``width`` pixels wide, set to
    :data:`BOUNDARY` (3): a cell pixel is rim when a pixel of another instance or of the
    background lies within ``width`` pixels (a disc). The image border is not a rim."""
    sem = np.asarray(semantic).astype(np.uint8)
    inst = np.asarray(cell_instances).astype(np.int32)
    if sem.shape != inst.shape:
        raise ValueError(f"semantic {sem.shape} and instances {inst.shape} differ in shape")
    if width <= 0:
        return sem.copy()
    yy, xx = np.mgrid[-width : width + 1, -width : width + 1]
    disc = (xx * xx + yy * yy) <= width * width
    low = ndi.minimum_filter(inst, footprint=disc, mode="nearest")
    high = ndi.maximum_filter(inst, footprint=disc, mode="nearest")
    rim = (inst > 0) & ((low != inst) | (high != inst)) & (sem == LABELS["cell"])
    out = sem.copy()
    out[rim] = BOUNDARY
    return out


def core_label_map(semantic: np.ndarray, cell_instances: np.ndarray, *, fraction: float = 0.4) -> np.ndarray:
    """``semantic`` (0/1/2) with the core of every cell set to :data:`CORE` (3): the pixels at
    least ``fraction`` of the cell's largest inner distance away from its edge (distance to the
    nearest pixel outside the instance, the image border not counting as outside)."""
    sem = np.asarray(semantic).astype(np.uint8)
    inst = np.asarray(cell_instances).astype(np.int32)
    if sem.shape != inst.shape:
        raise ValueError(f"semantic {sem.shape} and instances {inst.shape} differ in shape")
    out = sem.copy()
    if fraction <= 0:
        return out
    for index, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        # one pixel of margin so that the crop's edge counts as outside, unless it is the image's
        rows = slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, inst.shape[0]))
        cols = slice(max(sl[1].start - 1, 0), min(sl[1].stop + 1, inst.shape[1]))
        mask = inst[rows, cols] == index
        padded = np.pad(mask, 1, mode="edge")  # the image border is not an edge of the cell
        padded[1:-1, 1:-1] = mask
        depth = ndi.distance_transform_edt(padded)[1:-1, 1:-1]
        core = mask & (depth >= fraction * float(depth.max())) & (sem[rows, cols] == LABELS["cell"])
        out[rows, cols][core] = CORE
    return out


def instance_label_map(*, polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """(height, width) int32: 0 background, k the k-th polygon (1-based) where it is topmost.
    A cell covered completely by later ones leaves no pixel and its number is not used."""
    out = np.zeros((height, width), dtype=np.int32)
    for index, points in enumerate(polygons, start=1):
        _paint(out, points, index)
    return out


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), image pixels


def crop_grid(*, width: int, height: int, size: int) -> list[Box]:
    """The crops a large image is exported as: squares of ``size`` pixels from the top-left
    corner, row by row, partitioning the image (the last column and row narrower where the image
    ends)."""
    if size <= 0 or width <= 0 or height <= 0:
        raise ValueError("size, width and height must be positive")
    return [
        (x0, y0, min(x0 + size, width), min(y0 + size, height))
        for y0 in range(0, height, size)
        for x0 in range(0, width, size)
    ]


def crop_polygons(
    polygons: Sequence[Sequence[Sequence[float]]], labels: Sequence[int], box: Box
) -> tuple[list[list[list[float]]], list[int], list[int]]:
    """The polygons that have a pixel in ``box`` (pixel-centre rule), shifted into the crop's
    coordinates, with their labels and their indices in ``polygons`` (order kept: paint order).
    Painting them into a crop-sized map (:func:`semantic_label_map`, :func:`instance_label_map`)
    clips each to the crop, so a cell cut by a crop border is exactly its part inside."""
    x0, y0, x1, y1 = box
    kept: list[list[list[float]]] = []
    kept_labels: list[int] = []
    indices: list[int] = []
    for index, (points, label) in enumerate(zip(polygons, labels, strict=True)):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pts) < 3:
            continue
        wx0 = max(math.floor(float(pts[:, 0].min())), x0)
        wy0 = max(math.floor(float(pts[:, 1].min())), y0)
        wx1 = min(math.ceil(float(pts[:, 0].max())), x1)
        wy1 = min(math.ceil(float(pts[:, 1].max())), y1)
        if wx1 <= wx0 or wy1 <= wy0:
            continue
        if not polygon_rasterize(pts - (wx0, wy0), height=wy1 - wy0, width=wx1 - wx0).any():
            continue
        kept.append((pts - (x0, y0)).tolist())
        kept_labels.append(int(label))
        indices.append(index)
    return kept, kept_labels, indices


def _png_rgb(case: DatasetCase) -> bytes:
    if isinstance(case.image, bytes):
        return case.image
    array = np.asarray(case.image)
    if array.shape != (case.height, case.width, 3) or array.dtype != np.uint8:
        raise ValueError(f"{case.case_id}: expected a ({case.height}, {case.width}, 3) uint8 image, got {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _png_gray(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def _check_dataset(dataset_id: int, dataset_name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ValueError("dataset_id must be from 1 to 999")
    if not _NAME.fullmatch(dataset_name):
        raise ValueError(f"dataset name {dataset_name!r} must be letters, digits, _ or -")
    return f"Dataset{dataset_id:03d}_{dataset_name}"


def nnunet_raw_dataset_files(
    *, dataset_id: int, dataset_name: str, cases: Iterable[DatasetCase], normalization: str = "zscore"
) -> Iterator[tuple[str, bytes]]:
    """The files of an nnU-Net v2 raw dataset as ``(relative path, bytes)``, one case at a time
    (bounded memory); ``dataset.json`` and ``splits_final.json`` come last."""
    folder = _check_dataset(dataset_id, dataset_name)
    if normalization == "zscore":
        channels = {"0": "R", "1": "G", "2": "B"}  # names nnU-Net does not know -> z-score per image
    elif normalization == "rgb_to_0_1":
        channels = dict.fromkeys(("0", "1", "2"), "rgb_to_0_1")
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    seen: set[str] = set()
    by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    for case in cases:
        if case.case_id in seen:
            raise ValueError(f"case id {case.case_id!r} appears twice")
        seen.add(case.case_id)
        suffix = "Ts" if case.split == "test" else "Tr"
        labels = semantic_label_map(polygons=case.polygons, labels=case.labels, height=case.height, width=case.width)
        yield f"{folder}/images{suffix}/{case.case_id}_0000.png", _png_rgb(case)
        yield f"{folder}/labels{suffix}/{case.case_id}.png", _png_gray(labels)
        by_split[case.split].append(case.case_id)
    dataset = {
        "channel_names": channels,
        "labels": LABELS,
        "numTraining": len(by_split["train"]) + len(by_split["validation"]),
        "file_ending": ".png",
        "name": dataset_name,
    }
    yield f"{folder}/dataset.json", json.dumps(dataset, indent=2).encode()
    if by_split["train"] and by_split["validation"]:
        splits = [{"train": by_split["train"], "val": by_split["validation"]}]
        yield f"{folder}/splits_final.json", json.dumps(splits, indent=2).encode()


def cellpose_dataset_files(*, cases: Iterable[DatasetCase]) -> Iterator[tuple[str, bytes]]:
    """Cellpose training data as ``(relative path, bytes)``: ``<split>/<case>.png`` and
    ``<split>/<case>_masks.png`` (16-bit instance labels), one case at a time."""
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise ValueError(f"case id {case.case_id!r} appears twice")
        seen.add(case.case_id)
        if len(case.polygons) > np.iinfo(np.uint16).max:
            raise ValueError(f"{case.case_id}: more than 65535 cells do not fit a 16-bit mask")
        masks = instance_label_map(polygons=case.polygons, height=case.height, width=case.width)
        yield f"{case.split}/{case.case_id}.png", _png_rgb(case)
        yield f"{case.split}/{case.case_id}_masks.png", _png_gray(masks.astype(np.uint16))


def _write_all(root: Path, files: Iterable[tuple[str, bytes]]) -> None:
    for relative, data in files:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def nnunet_raw_dataset_write(
    *, raw_root: Path, dataset_id: int, dataset_name: str, cases: Iterable[DatasetCase], normalization: str = "zscore"
) -> Path:
    """Write an nnU-Net v2 raw dataset under ``raw_root`` (replacing a folder of the same name);
    returns its folder."""
    folder = Path(raw_root) / _check_dataset(dataset_id, dataset_name)
    if folder.exists():
        shutil.rmtree(folder)
    _write_all(
        Path(raw_root),
        nnunet_raw_dataset_files(
            dataset_id=dataset_id, dataset_name=dataset_name, cases=cases, normalization=normalization
        ),
    )
    return folder


def cellpose_dataset_write(*, root: Path, cases: Iterable[DatasetCase]) -> Path:
    """Write Cellpose training folders (``root/train``, ``root/validation``, ``root/test``)."""
    _write_all(Path(root), cellpose_dataset_files(cases=cases))
    return Path(root)
