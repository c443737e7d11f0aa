"""Dataset snapshots: which verified images and cells a training job uses, frozen.

Sources (``DatasetSource``):

* ``verified`` (default): images whose status is ``verified`` (the expert verification
  workflow), with their cells of the ``verified`` layer;
* ``annotation`` (fallback for projects without expert verification): images an admin marked
  complete (``ImageCompletion``, ``POST projects/{id}/training/completion``), with their
  annotation layer as it is when the snapshot is built.

A snapshot stores one ``SnapshotItem`` per image with the split, the annotation revision and
a copy of the cells (polygon, semantic label), so later edits never change what a job trained
or was evaluated on.

A whole slide (a tiled image) is never one item: it is trained on by its regions of interest
(issue #14), one item per region that the source takes (``verified``: the regions the experts
verified; ``annotation``: the regions of a slide marked complete): the region's bounding box
read from the original at full resolution, white outside the region's outline, with the cells
whose centroid lies inside it, so a slide with three verified regions trains on those three
regions only.

The frozen test split: the first time an image lands in a snapshot's test split it is added to
``FrozenTestImage`` for good; from then on it is always test and never feeds training, whatever
its ``split`` says later. The test split only grows, and never with an image that an earlier
snapshot put into train or validation (such an image is left out and listed in ``excluded``).

The files (nnU-Net v2 raw dataset, Cellpose folders) are written by ``cytoseg.datasets``; this
module turns snapshots into its ``DatasetCase`` objects and into training arrays, adding the
synthetic cluster images of ``cytoseg.augment`` when the snapshot asks for them.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, QuerySet
from PIL import Image as PILImage

from annotations.models import Cell, Image, ImageStatus, Layer, Project, Region, Split
from annotations.services.audit import audit_record
from annotations.services.regions import image_crop_rgb, region_cell_ids
from core.errors import ServiceValidationError
from core.streaming import ZipEntry, zip_stream
from cytoseg.augment import AugmentConfig, SyntheticImage, cells_from_polygons, synthetic_images
from cytoseg.datasets import (
    DatasetCase,
    cellpose_dataset_files,
    instance_label_map,
    nnunet_raw_dataset_files,
    semantic_label_map,
)
from cytoseg.imaging import read_rgb
from training.models import DatasetSnapshot, DatasetSource, FrozenTestImage, ImageCompletion, SnapshotItem

__all__ = [
    "LoadedCase",
    "SnapshotData",
    "dataset_snapshot_create",
    "eligible_images",
    "snapshot_cases",
    "snapshot_item_rgb",
    "snapshot_load",
    "snapshot_zip_stream",
    "source_layer",
]

TRAINING_SPLITS = (Split.TRAIN, Split.VALIDATION)


def source_layer(source: str) -> str:
    """The cell layer a source takes its cells from."""
    return Layer.VERIFIED if source == DatasetSource.VERIFIED else Layer.ANNOTATION


def eligible_images(*, project: Project, source: str) -> QuerySet[Image]:
    """Images of ``project`` that ``source`` takes into a snapshot. Not whole slides (tiled
    images): training reads an image whole, a slide only by its regions (``_regions_eligible``)."""
    images = project.images.exclude(tiled=True)
    if source == DatasetSource.VERIFIED:
        return images.filter(status=ImageStatus.VERIFIED)
    return images.filter(training_completion__isnull=False)


def _cells_sha(cells: list[dict[str, Any]]) -> str:
    payload = [[c["label"], c["polygon"]] for c in cells]
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


_MOVED_TO_TEST = "moved to test after it was used for training; left out"


def _regions_eligible(
    *, project: Project, source: str, frozen: set[int], trained: set[int]
) -> list[tuple[Region, str | None]]:
    """The regions of the project's slides (tiled images) that ``source`` takes, each with its
    split (the image's, under the frozen test rule; None: left out). ``verified``: the regions
    verified by the experts; ``annotation``: every region of a slide an admin marked complete."""
    regions = Region.objects.filter(image__project=project, image__tiled=True).select_related("image")
    if source == DatasetSource.VERIFIED:
        regions = regions.filter(status=ImageStatus.VERIFIED)
    else:
        regions = regions.filter(image__training_completion__isnull=False)
    out: list[tuple[Region, str | None]] = []
    for region in regions.order_by("image_id", "id"):
        image = region.image
        if image.pk in frozen:
            out.append((region, Split.TEST))
        elif image.split == Split.TEST:
            out.append((region, None if image.pk in trained else Split.TEST))
        else:
            out.append((region, image.split))
    return out


def _region_item(*, snapshot: DatasetSnapshot, region: Region, split: str, layer: str) -> SnapshotItem:
    """A slide's region as a snapshot item: the cells of ``layer`` whose centroid lies inside it,
    in the coordinates of its bounding box."""
    x0, y0, x1, y1 = region.crop
    ids = region_cell_ids(region=region, layer=layer)
    rows = (
        Cell.objects.filter(pk__in=ids)
        .order_by("id")
        .values_list("id", "polygon", "cell_class_id", "cell_class__model_label")
    )
    cells = [
        {"id": cell_id, "polygon": [[x - x0, y - y0] for x, y in polygon], "label": label, "class_id": class_id}
        for cell_id, polygon, class_id, label in rows
    ]
    image = region.image
    return SnapshotItem(
        snapshot=snapshot,
        image=image,
        image_sha256=image.sha256,
        file_name=f"{image.file_name} / {region.name}",
        split=split,
        bethesda=image.bethesda,
        width=x1 - x0,
        height=y1 - y0,
        revision=image.revision,
        cells=cells,
        cells_sha256=_cells_sha(cells),
        region=region,
        crop=[x0, y0, x1, y1],
        mask=[[x - x0, y - y0] for x, y in region.polygon],
    )


def dataset_snapshot_create(
    *,
    project: Project,
    user: User | None,
    source: str = DatasetSource.VERIFIED,
    synthetic: dict[str, Any] | None = None,
) -> DatasetSnapshot:
    """Freeze the project's current training data into a new snapshot (see the module docstring).

    ``synthetic`` is a ``cytoseg.augment.AugmentConfig`` as a dict (``count`` > 0 turns the
    cluster augmentation on); the synthetic images are generated from the snapshot's training
    images when a job loads it, deterministically for the config's seed.
    """
    errors: dict[str, str] = {}
    if source not in DatasetSource.values:
        errors["source"] = f"must be one of {', '.join(DatasetSource.values)}"
    options: dict[str, Any] = {}
    if synthetic:
        if not isinstance(synthetic, dict):
            errors["synthetic"] = "must be an object"
        else:
            problems = AugmentConfig.from_dict_errors(synthetic, prefix="synthetic", unknown="unknown option")
            errors.update(problems)
            if not problems:
                options["synthetic"] = AugmentConfig.from_dict(synthetic).to_dict()
    if errors:
        raise ServiceValidationError("Invalid dataset snapshot.", errors)

    layer = source_layer(source)
    with transaction.atomic():
        # One snapshot at a time per project: numbering and the frozen test split.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        images = list(eligible_images(project=project, source=source).order_by("id"))
        frozen = set(FrozenTestImage.objects.filter(project=project).values_list("image_id", flat=True))
        trained = set(
            SnapshotItem.objects.filter(snapshot__project=project, split__in=TRAINING_SPLITS).values_list(
                "image_id", flat=True
            )
        )
        cells_by_image: dict[int, list[dict[str, Any]]] = {image.pk: [] for image in images}
        rows = (
            Cell.objects.filter(image__in=[i.pk for i in images], layer=layer)
            .order_by("image_id", "id")
            .values_list("id", "image_id", "polygon", "cell_class_id", "cell_class__model_label")
        )
        for cell_id, image_id, polygon, class_id, label in rows:
            cells_by_image[image_id].append({"id": cell_id, "polygon": polygon, "label": label, "class_id": class_id})

        last = DatasetSnapshot.objects.filter(project=project).aggregate(top=Max("number"))["top"] or 0
        snapshot = DatasetSnapshot.objects.create(
            project=project, number=last + 1, source=source, options=options, created_by=user
        )
        items: list[SnapshotItem] = []
        excluded: list[dict[str, Any]] = []
        newly_frozen: list[FrozenTestImage] = []
        for image in images:
            split: str
            if image.pk in frozen:
                split = Split.TEST
            elif image.split == Split.TEST:
                if image.pk in trained:
                    excluded.append({"image": image.pk, "reason": _MOVED_TO_TEST})
                    continue
                split = Split.TEST
                newly_frozen.append(FrozenTestImage(project=project, image=image))
            else:
                split = image.split
            cells = cells_by_image[image.pk]
            items.append(
                SnapshotItem(
                    snapshot=snapshot,
                    image=image,
                    image_sha256=image.sha256,
                    file_name=image.file_name,
                    split=split,
                    bethesda=image.bethesda,
                    width=image.width,
                    height=image.height,
                    revision=image.revision,
                    cells=cells,
                    cells_sha256=_cells_sha(cells),
                )
            )
        for region, region_split in _regions_eligible(project=project, source=source, frozen=frozen, trained=trained):
            if region_split is None:
                excluded.append({"image": region.image_id, "region": region.pk, "reason": _MOVED_TO_TEST})
                continue
            if region_split == Split.TEST and region.image_id not in frozen:
                frozen.add(region.image_id)
                newly_frozen.append(FrozenTestImage(project=project, image_id=region.image_id))
            items.append(_region_item(snapshot=snapshot, region=region, split=region_split, layer=layer))
        if not items:
            what = "verified images" if source == DatasetSource.VERIFIED else "images marked complete"
            raise ServiceValidationError("Nothing to snapshot.", {"source": f"the project has no {what}"})
        SnapshotItem.objects.bulk_create(items, batch_size=200)
        FrozenTestImage.objects.bulk_create(newly_frozen)
        counts: dict[str, dict[str, int]] = {s: {"images": 0, "cells": 0} for s in Split.values}
        digest = hashlib.sha256()
        for item in items:
            counts[item.split]["images"] += 1
            counts[item.split]["cells"] += len(item.cells)
            where = "" if item.crop is None else f"@{item.region_id}:{item.crop}"
            digest.update(f"{item.image_id}{where}:{item.split}:{item.image_sha256}:{item.cells_sha256};".encode())
        snapshot.counts = counts
        snapshot.excluded = excluded
        snapshot.sha256 = digest.hexdigest()
        snapshot.save(update_fields=["counts", "excluded", "sha256"])
    return snapshot


# --- reading a snapshot back ---------------------------------------------------------------


def _case_id(item: SnapshotItem) -> str:
    if item.crop is not None:
        return f"image_{item.image_id}_region_{item.region_id}"
    return f"image_{item.image_id}"


def snapshot_item_rgb(item: SnapshotItem) -> np.ndarray:
    """The item's pixels: the display image, or a region's crop of the original (white outside
    the region) read at full resolution."""
    if item.crop is None:
        return read_rgb(_image_bytes(item))
    if item.image is None:
        raise ValueError(f"image {item.file_name!r} of snapshot {item.snapshot_id} was deleted")
    x0, y0, x1, y1 = (int(v) for v in item.crop)
    mask = None if item.mask is None else [[x + x0, y + y0] for x, y in item.mask]
    return image_crop_rgb(image=item.image, crop=(x0, y0, x1, y1), polygon=mask)


def _image_bytes(item: SnapshotItem) -> bytes:
    if item.image is None:
        raise ValueError(f"image {item.file_name!r} of snapshot {item.snapshot_id} was deleted")
    if item.crop is not None:
        out = io.BytesIO()
        PILImage.fromarray(snapshot_item_rgb(item)).save(out, format="PNG")
        return out.getvalue()
    with item.image.display.open("rb") as handle:
        return handle.read()


def _items(snapshot: DatasetSnapshot, splits: Iterable[str]) -> list[SnapshotItem]:
    return list(snapshot.items.filter(split__in=list(splits)).select_related("image").order_by("id"))


def _synthetic_config(snapshot: DatasetSnapshot) -> AugmentConfig | None:
    raw = (snapshot.options or {}).get("synthetic")
    if not raw:
        return None
    cfg = AugmentConfig.from_dict(raw)
    return cfg if cfg.count > 0 else None


def _synthetic(snapshot: DatasetSnapshot, train: list[tuple[np.ndarray, SnapshotItem]]) -> Iterator[SyntheticImage]:
    cfg = _synthetic_config(snapshot)
    if cfg is None or not train:
        return iter(())
    fields = []
    for rgb, item in train:
        polygons = [c["polygon"] for c in item.cells]
        labels = [c["label"] for c in item.cells]
        fields.append((rgb, cells_from_polygons(polygons, labels, height=item.height, width=item.width)))
    return synthetic_images(fields, cfg)


def snapshot_cases(
    snapshot: DatasetSnapshot, *, splits: Iterable[str] = tuple(Split.values), synthetic: bool = True
) -> Iterator[DatasetCase]:
    """The snapshot as ``cytoseg.datasets.DatasetCase`` objects, one image at a time; the
    synthetic images (split ``train``, ids ``synthetic_NNNN`` from 0001) come last when ``synthetic``."""
    wanted = list(splits)
    train_for_synthetic: list[tuple[np.ndarray, SnapshotItem]] = []
    with_synthetic = synthetic and Split.TRAIN in wanted and _synthetic_config(snapshot) is not None
    for item in _items(snapshot, wanted):
        data = _image_bytes(item)
        if with_synthetic and item.split == Split.TRAIN:
            train_for_synthetic.append((read_rgb(data), item))
        yield DatasetCase(
            case_id=_case_id(item),
            split=item.split,
            image=data,
            height=item.height,
            width=item.width,
            polygons=[c["polygon"] for c in item.cells],
            labels=[c["label"] for c in item.cells],
        )
    if with_synthetic:
        for k, synth in enumerate(_synthetic(snapshot, train_for_synthetic)):
            polygons, labels = synth.polygons()
            yield DatasetCase(
                case_id=f"synthetic_{k + 1:04d}",
                split=Split.TRAIN,
                image=synth.image,
                height=synth.height,
                width=synth.width,
                polygons=polygons,
                labels=labels,
            )


@dataclass
class LoadedCase:
    """One image of a snapshot as training arrays; the label maps are rasterised from the
    polygons on first use (a job needs some of them only)."""

    key: str
    split: str
    group: str
    image: np.ndarray  # (H, W, 3) uint8
    polygons: list[Any]
    labels: list[int]
    _semantic: np.ndarray | None = None
    _instances: np.ndarray | None = None
    _cell_instances: np.ndarray | None = None

    @property
    def semantic(self) -> np.ndarray:
        """(H, W) uint8: 0 background, 1 cell, 2 erythrocyte (the topmost cell)."""
        if self._semantic is None:
            height, width = self.image.shape[:2]
            self._semantic = semantic_label_map(polygons=self.polygons, labels=self.labels, height=height, width=width)
        return self._semantic

    @property
    def instances(self) -> np.ndarray:
        """(H, W) int32 instance labels of cells and erythrocytes (paint order)."""
        if self._instances is None:
            height, width = self.image.shape[:2]
            self._instances = instance_label_map(polygons=self.polygons, height=height, width=width)
        return self._instances

    @property
    def cell_instances(self) -> np.ndarray:
        """(H, W) int32 instance labels of the cells only (erythrocytes are background)."""
        if self._cell_instances is None:
            height, width = self.image.shape[:2]
            cells = [p for p, label in zip(self.polygons, self.labels, strict=True) if label == 1]
            self._cell_instances = instance_label_map(polygons=cells, height=height, width=width)
        return self._cell_instances


@dataclass
class SnapshotData:
    train: list[LoadedCase]
    validation: list[LoadedCase]
    test: list[LoadedCase]
    synthetic: int  # how many of ``train`` are synthetic


def snapshot_load(snapshot: DatasetSnapshot, *, splits: Iterable[str] = tuple(Split.values)) -> SnapshotData:
    """Training arrays of the snapshot's images (plus its synthetic images in ``train``)."""
    data = SnapshotData(train=[], validation=[], test=[], synthetic=0)
    train_sources: list[tuple[np.ndarray, SnapshotItem]] = []
    for item in _items(snapshot, splits):
        rgb = snapshot_item_rgb(item)
        if rgb.shape[:2] != (item.height, item.width):
            raise ValueError(
                f"image {item.file_name!r} is {rgb.shape[:2]}, the snapshot says {item.height}x{item.width}"
            )
        polygons = [c["polygon"] for c in item.cells]
        labels = [int(c["label"]) for c in item.cells]
        case = LoadedCase(
            key=_case_id(item).removeprefix("image_"),
            split=item.split,
            group=item.bethesda,
            image=rgb,
            polygons=polygons,
            labels=labels,
        )
        getattr(data, item.split).append(case)
        if item.split == Split.TRAIN:
            train_sources.append((rgb, item))
    for k, synth in enumerate(_synthetic(snapshot, train_sources)):
        cells_only = SyntheticImage(image=synth.image, cells=[c for c in synth.cells if c.label == 1], pasted=0)
        data.train.append(
            LoadedCase(
                key=f"synthetic_{k + 1:04d}",
                split=Split.TRAIN,
                group="",
                image=synth.image,
                polygons=[],
                labels=[c.label for c in synth.cells],
                _semantic=synth.semantic_map(),
                _instances=synth.label_map(),
                _cell_instances=cells_only.label_map(),
            )
        )
        data.synthetic += 1
    return data


# --- downloads -----------------------------------------------------------------------------


def snapshot_zip_stream(snapshot: DatasetSnapshot, *, fmt: str, dataset_id: int = 501) -> Iterator[bytes]:
    """The snapshot as a zip, produced file by file: ``fmt="nnunet"`` (an nnU-Net v2 raw dataset
    ``DatasetNNN_ProjectPSnapshotS/``) or ``"cellpose"`` (``train/``, ``validation/``, ``test/``
    with ``*_masks.png``). Synthetic images are included in ``train``, as a job trains on them."""
    cases = snapshot_cases(snapshot)
    if fmt == "nnunet":
        name = f"Project{snapshot.project_id}Snapshot{snapshot.number}"
        files = nnunet_raw_dataset_files(dataset_id=dataset_id, dataset_name=name, cases=cases)
    elif fmt == "cellpose":
        files = cellpose_dataset_files(cases=cases)
    else:
        raise ValueError(f"unknown format {fmt!r}")

    def entries() -> Iterator[ZipEntry]:
        yield from files
        manifest = {
            "snapshot": snapshot.pk,
            "number": snapshot.number,
            "project": snapshot.project_id,
            "source": snapshot.source,
            "sha256": snapshot.sha256,
            "counts": snapshot.counts,
            "options": snapshot.options,
            "items": list(snapshot.items.values("image_id", "file_name", "split", "revision", "cells_sha256")),
        }
        yield "snapshot.json", json.dumps(manifest, indent=1, default=str).encode()

    return zip_stream(entries(), date_time=snapshot.created_at)


# --- marking images complete (the fallback source) -----------------------------------------


def image_completion_set(*, project: Project, image_ids: list[int], complete: bool, user: User) -> int:
    """Mark (or unmark) images whose annotation layer an admin considers complete for training."""
    images = list(project.images.filter(pk__in=image_ids))
    missing = sorted(set(image_ids) - {i.pk for i in images})
    if missing:
        raise ServiceValidationError(
            "Unknown images.", {"images": f"not images of this project: {', '.join(map(str, missing))}"}
        )
    with transaction.atomic():
        if complete:
            for image in images:
                ImageCompletion.objects.update_or_create(
                    image=image, defaults={"revision": image.revision, "marked_by": user}
                )
        else:
            ImageCompletion.objects.filter(image__in=images).delete()
        audit_record(
            project=project,
            actor=user,
            action="training.images_complete" if complete else "training.images_incomplete",
            target=f"{len(images)} images",
            after={"images": [i.pk for i in images]},
        )
    return len(images)
