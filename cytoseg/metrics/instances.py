"""Instances in every accepted form (label map, mask stack, cropped masks) as one internal
representation of tight crops, and their pairwise overlaps, computed without ever building an
N x M x H x W array."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
from scipy import ndimage as ndi

from cytoseg.crops import Crop

CELL_LABEL = 1


ERYTHROCYTE_LABEL = 2


# A boolean crop placed at column ``x0``, row ``y0`` of its image (backends' and generators' cells).
CroppedMask = Crop


InstancesLike: TypeAlias = np.ndarray | Sequence[np.ndarray] | Sequence[CroppedMask]


@dataclass(frozen=True)
class Instances:
    """Instances as tight boolean crops; ``label_map`` is kept when the input had one."""

    crops: tuple[np.ndarray, ...]
    boxes: np.ndarray  # (N, 4) int64: y0, x0, y1, x1 (exclusive)
    areas: np.ndarray  # (N,) int64
    shape: tuple[int, int] | None
    label_map: np.ndarray | None  # (H, W) int32 with consecutive ids 1..N

    def __len__(self) -> int:
        return len(self.crops)

    def subset(self, index: np.ndarray) -> Instances:
        """The instances at ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        label_map = None
        if self.label_map is not None:
            lut = np.zeros(len(self) + 1, dtype=np.int32)
            lut[index + 1] = np.arange(1, index.size + 1, dtype=np.int32)
            label_map = lut[self.label_map]
        return Instances(
            crops=tuple(self.crops[i] for i in index.tolist()),
            boxes=self.boxes[index].reshape(-1, 4),
            areas=self.areas[index],
            shape=self.shape,
            label_map=label_map,
        )

    def extent(self) -> tuple[int, int]:
        """The image shape, or the smallest one that holds every crop."""
        if self.shape is not None:
            return self.shape
        if len(self) == 0:
            return (0, 0)
        return (int(self.boxes[:, 2].max()), int(self.boxes[:, 3].max()))

    def paint(self, shape: tuple[int, int]) -> np.ndarray:
        """Union of all masks on an image of ``shape``."""
        out = np.zeros(shape, dtype=bool)
        for crop, (y0, x0, y1, x1) in zip(self.crops, self.boxes.tolist(), strict=True):
            out[y0:y1, x0:x1] |= crop
        return out


def _empty(shape: tuple[int, int] | None) -> Instances:
    return Instances(
        crops=(),
        boxes=np.zeros((0, 4), dtype=np.int64),
        areas=np.zeros(0, dtype=np.int64),
        shape=shape,
        label_map=None,
    )


def _tight(
    mask: np.ndarray, y0: int, x0: int, shape: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop ``mask`` (placed at y0, x0) to its pixels, clipped to the image."""
    h, w = mask.shape
    # Clip to the image (or to non-negative coordinates when its size is unknown).
    cy0, cx0 = max(0, -y0), max(0, -x0)
    cy1, cx1 = h, w
    if shape is not None:
        cy1 = min(h, shape[0] - y0)
        cx1 = min(w, shape[1] - x0)
    if cy1 <= cy0 or cx1 <= cx0:
        return np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)
    mask = mask[cy0:cy1, cx0:cx1]
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ty0 = y0 + cy0 + int(rows[0])
    tx0 = x0 + cx0 + int(cols[0])
    return crop, (ty0, tx0, ty0 + crop.shape[0], tx0 + crop.shape[1])


def _from_label_map(label_map: np.ndarray) -> Instances:
    lm = np.asarray(label_map)
    if lm.dtype == np.bool_:
        lm = lm.astype(np.int32)
    if not np.issubdtype(lm.dtype, np.integer):
        raise TypeError(f"a label map must hold integers, not {lm.dtype}")
    shape = (int(lm.shape[0]), int(lm.shape[1]))
    if lm.size == 0 or not lm.any():
        return _empty(shape)
    if lm.min() < 0:
        raise ValueError("label maps must not hold negative ids")
    top = int(lm.max())
    # Relabel to 1..N: bincount when ids are compact, a sort otherwise.
    if top <= 4 * lm.size:
        flat = lm.ravel().astype(np.intp, copy=False)  # bincount refuses uint64
        present = np.flatnonzero(np.bincount(flat, minlength=top + 1)[1:]) + 1
        lut = np.zeros(top + 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        consecutive = lut[lm]
        n = int(present.size)
    else:
        ids, inverse = np.unique(lm, return_inverse=True)
        consecutive = inverse.reshape(lm.shape).astype(np.int32)
        if ids[0] != 0:
            consecutive += 1
        n = int(consecutive.max())
    areas = np.bincount(consecutive.ravel(), minlength=n + 1)[1:].astype(np.int64)
    crops: list[np.ndarray] = []
    boxes = np.zeros((n, 4), dtype=np.int64)
    for k, sl in enumerate(ndi.find_objects(consecutive, max_label=n)):
        assert sl is not None  # every id in 1..n occurs
        crops.append(consecutive[sl] == k + 1)
        boxes[k] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return Instances(crops=tuple(crops), boxes=boxes, areas=areas, shape=shape, label_map=consecutive)


def _from_pieces(pieces: Sequence[tuple[np.ndarray, int, int]], shape: tuple[int, int] | None) -> Instances:
    crops: list[np.ndarray] = []
    boxes = np.zeros((len(pieces), 4), dtype=np.int64)
    for k, (mask, y0, x0) in enumerate(pieces):
        crop, box = _tight(np.asarray(mask, dtype=bool), y0, x0, shape)
        crops.append(crop)
        boxes[k] = box
    areas = np.array([np.count_nonzero(c) for c in crops], dtype=np.int64)
    return Instances(crops=tuple(crops), boxes=boxes, areas=areas, shape=shape, label_map=None)


def as_instances(value: InstancesLike | Instances) -> Instances:
    """Normalise any accepted instance form."""
    if isinstance(value, Instances):
        return value
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            return _from_label_map(value)
        if value.ndim == 3:
            shape = (int(value.shape[1]), int(value.shape[2]))
            return _from_pieces([(m, 0, 0) for m in value], shape)
        raise ValueError(f"expected a (H, W) label map or (N, H, W) masks, got {value.shape}")
    items: list[object] = list(value)
    if not items:
        return _empty(None)
    arrays = [item for item in items if isinstance(item, np.ndarray)]
    if len(arrays) == len(items):
        if len({m.shape for m in arrays}) != 1 or arrays[0].ndim != 2:
            raise ValueError("full-size masks must all be 2-D and of one shape")
        shape = (int(arrays[0].shape[0]), int(arrays[0].shape[1]))
        return _from_pieces([(m, 0, 0) for m in arrays], shape)
    if arrays:
        raise TypeError("do not mix full-size masks and cropped instances")
    pieces = [(np.asarray(c.mask), int(c.y0), int(c.x0)) for c in cast(list[CroppedMask], items)]
    return _from_pieces(pieces, None)


def with_shape(a: Instances, b: Instances) -> tuple[Instances, Instances]:
    """Check that two sets describe the same image; share a known shape."""
    if a.shape is not None and b.shape is not None and a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _intersections(a: Instances, b: Instances) -> np.ndarray:
    """(len(a), len(b)) int64 pixel counts of pairwise mask intersections."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.int64)
    if a.label_map is not None and b.label_map is not None and (n + 1) * (m + 1) <= 1 << 24:
        pair = a.label_map.astype(np.int64) * (m + 1) + b.label_map
        counts = np.bincount(pair.ravel(), minlength=(n + 1) * (m + 1))
        return counts.reshape(n + 1, m + 1)[1:, 1:].astype(np.int64)
    ab, bb = a.boxes, b.boxes
    # Only pairs whose boxes meet can intersect; compare crops on the shared window.
    meet = (
        (ab[:, None, 0] < bb[None, :, 2])
        & (bb[None, :, 0] < ab[:, None, 2])
        & (ab[:, None, 1] < bb[None, :, 3])
        & (bb[None, :, 1] < ab[:, None, 3])
    )
    out = np.zeros((n, m), dtype=np.int64)
    for i, j in zip(*np.nonzero(meet), strict=True):
        ay0, ax0 = int(ab[i, 0]), int(ab[i, 1])
        by0, bx0 = int(bb[j, 0]), int(bb[j, 1])
        y0, x0 = max(ay0, by0), max(ax0, bx0)
        y1, x1 = min(int(ab[i, 2]), int(bb[j, 2])), min(int(ab[i, 3]), int(bb[j, 3]))
        wa = a.crops[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
        wb = b.crops[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        out[i, j] = np.count_nonzero(wa & wb)
    return out


def iou_from_sets(a: Instances, b: Instances) -> np.ndarray:
    inter = _intersections(a, b).astype(np.float64)
    union = a.areas[:, None] + b.areas[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou


def ratio(num: float, den: float, nothing_to_do: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if nothing_to_do else 0.0


def per_instance(values: Any, n: int, *, default: float, dtype: Any, what: str) -> np.ndarray:
    """``values`` as a flat array of ``n`` entries (``default`` everywhere when None)."""
    if values is None:
        return np.full(n, default, dtype=dtype)
    out = np.asarray(values, dtype=dtype).reshape(-1)
    if out.size != n:
        raise ValueError(f"expected {n} {what}, got {out.size}")
    return out
