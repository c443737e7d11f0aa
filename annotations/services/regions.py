"""Regions of interest (issue #14): create, change and delete an image's regions, find the cells
that belong to one, and read its pixels.

A region is drawn by anyone who may annotate the image. Its outline is fixed from submission
(its ``status`` in ``LOCKED_STATUSES``) until an admin reopens it, like an image's annotations:
verification and training refer to the cells inside it. The geometry rules (a valid simple
polygon of at least 3 points inside the image; a cell is in a region when its centroid is)
live in ``cytoseg.regions``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import RestrictedError

from annotations.models import LOCKED_STATUSES, Cell, Image, Region
from annotations.selectors import cells_in_box_filter
from annotations.services.audit import audit_record
from annotations.services.workflow import annotation_write_check, status_label
from core.errors import ConflictError, ServiceValidationError
from cytoseg.geometry import GeometryError
from cytoseg.regions import cells_inside, region_bbox, region_crop_mask, region_polygon_check
from cytoseg.tiled import region_reader

NAME_MAX = 100


def _name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ServiceValidationError("Invalid region.", {"name": "must be a non-empty string"})
    if len(raw.strip()) > NAME_MAX:
        raise ServiceValidationError("Invalid region.", {"name": f"at most {NAME_MAX} characters"})
    return raw.strip()


def _geometry(image: Image, raw: object) -> dict[str, Any]:
    try:
        points = region_polygon_check(raw, width=image.width, height=image.height)
    except GeometryError as exc:
        raise ServiceValidationError("Invalid region.", {"polygon": str(exc)}) from exc
    x0, y0, x1, y1 = region_bbox(points, width=image.width, height=image.height)
    return {"polygon": points, "bbox_x": x0, "bbox_y": y0, "bbox_w": x1 - x0, "bbox_h": y1 - y0}


def _writable(region: Region) -> None:
    if region.status in LOCKED_STATUSES:
        raise ConflictError(
            f"The region is {status_label(region.status)}; it is locked until an admin reopens it.",
            {"status": region.status},
        )


def region_create(*, image: Image, user: User | None, polygon: object, name: object = None) -> Region:
    """A new region on ``image`` (400 naming ``polygon`` or ``name`` when invalid; 409 when the
    image's annotations are locked). Without a name it is called "Region <n>"."""
    annotation_write_check(image=image)
    geometry = _geometry(image, polygon)
    with transaction.atomic():
        Image.objects.select_for_update().filter(pk=image.pk).first()  # numbering, one at a time
        label = _name(name) if name is not None else f"Region {image.regions.count() + 1}"
        region = Region.objects.create(image=image, name=label, created_by=user, **geometry)
        audit_record(
            project=image.project,
            actor=user,
            action="region.create",
            image=image,
            target=label,
            after={"region": region.pk, "polygon": region.polygon},
        )
    return region


def region_update(*, region: Region, user: User | None, data: dict[str, Any]) -> Region:
    """Rename a region or redraw its outline (fields ``name``, ``polygon``; others refused)."""
    unknown = sorted(set(data) - {"name", "polygon"})
    if unknown:
        raise ServiceValidationError("Invalid region.", {field: "unknown or read-only field" for field in unknown})
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["name"] = _name(data["name"])
    if "polygon" in data:
        changes.update(_geometry(region.image, data["polygon"]))
    with transaction.atomic():
        locked = Region.objects.select_for_update().get(pk=region.pk)
        _writable(locked)
        before = {"name": locked.name, "polygon": locked.polygon}
        for field, value in changes.items():
            setattr(locked, field, value)
        locked.save()
        audit_record(
            project=region.image.project,
            actor=user,
            action="region.update",
            image=region.image,
            target=locked.name,
            before=before,
            after={"name": locked.name, "polygon": locked.polygon},
        )
    locked.image = region.image
    return locked


def region_delete(*, region: Region, user: User | None) -> None:
    """Delete a region (its cells stay: they belong to the image). Refused while it is locked,
    and once it has been through verification: its reviews, disputes and agreement would go with
    it (the review app's rows protect it)."""
    with transaction.atomic():
        locked = Region.objects.select_for_update().get(pk=region.pk)
        _writable(locked)
        audit_record(
            project=region.image.project,
            actor=user,
            action="region.delete",
            image=region.image,
            target=locked.name,
            before={"region": locked.pk, "polygon": locked.polygon},
        )
        try:
            with transaction.atomic():
                locked.delete()
        except RestrictedError as exc:
            raise ConflictError(
                "The region has been through verification; its reviews are kept, so it cannot be deleted.",
                {"status": locked.status},
            ) from exc


def region_cell_ids(*, region: Region, layer: str, model_version_id: int | None = None) -> list[int]:
    """Ids of the cells of ``layer`` on the region's image whose centroid lies in the region."""
    queryset = Cell.objects.filter(image_id=region.image_id, layer=layer)
    if model_version_id is not None:
        queryset = queryset.filter(model_version_id=model_version_id)
    x0, y0, x1, y1 = region.crop
    rows = list(
        cells_in_box_filter(queryset, image_id=region.image_id, box=(x0, y0, x1, y1))
        .order_by("id")
        .values_list("id", "polygon")
    )
    inside = cells_inside(region.polygon, [polygon for _, polygon in rows])
    return [cell_id for (cell_id, _), keep in zip(rows, inside, strict=True) if keep]


@contextmanager
def _original_local(image: Image) -> Iterator[Path]:
    """The original on this host's disk: the stored file on disk storage, a temporary copy
    streamed from object storage (removed afterwards)."""
    name = str(image.original.name)
    try:
        local: str | None = default_storage.path(name)
    except NotImplementedError:
        local = None
    if local is not None:
        yield Path(local)
        return
    with tempfile.TemporaryDirectory(prefix="region-") as scratch:
        target = Path(scratch) / f"original{Path(name).suffix}"
        with default_storage.open(name, "rb") as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
        yield target


def image_crop_rgb(*, image: Image, crop: tuple[int, int, int, int], polygon: list[list[float]] | None) -> np.ndarray:
    """``crop`` (x0, y0, x1, y1) of the image read from the original at full resolution
    (OpenSlide or libvips: never the whole slide); white outside ``polygon`` (full-resolution
    pixels) when given."""
    with _original_local(image) as path:
        reader = region_reader(path)
        try:
            rgb = reader.read(crop)
        finally:
            reader.close()
    return rgb if polygon is None else region_crop_mask(rgb, polygon, crop)


def region_crop_rgb(*, region: Region) -> np.ndarray:
    """The region's bounding box at full resolution, white outside the region's polygon."""
    return image_crop_rgb(image=region.image, crop=region.crop, polygon=region.polygon)
