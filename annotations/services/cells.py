"""The polygon store: the annotation layer of an image, written whole against a revision, with
its history of per-write deltas and restore."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone
from shapely.geometry import Polygon

from annotations import selectors
from annotations.models import (
    AnnotationRevision,
    Cell,
    CellClass,
    CellSource,
    Image,
    Layer,
)
from annotations.selectors import CELL_FIELDS
from annotations.services.workflow import annotation_write_check, annotation_write_started, region_write_check
from core.errors import ConflictError, ServiceValidationError
from cytoseg.geometry import CleanPolygon, GeometryError, geometry_digest, polygons_clean


def _cell_payload_errors(
    cells: object, *, image: Image, classes: dict[int, CellClass]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not isinstance(cells, list):
        return [], {"cells": "must be a list of cells"}
    if len(cells) > settings.CELL_MAX_PER_IMAGE:
        return [], {"cells": f"at most {settings.CELL_MAX_PER_IMAGE} cells per image"}
    errors: dict[str, Any] = {}
    seen_ids: set[int] = set()
    candidates: list[tuple[int, int | None, int, object]] = []
    for index, raw in enumerate(cells):
        key = f"cells.{index}"
        if not isinstance(raw, dict):
            errors[key] = "must be an object with class_id and polygon"
            continue
        cell_id = raw.get("id")
        if cell_id is not None:
            if not isinstance(cell_id, int) or isinstance(cell_id, bool):
                errors[key] = "id must be an integer"
                continue
            if cell_id in seen_ids:
                errors[key] = f"id {cell_id} appears twice"
                continue
            seen_ids.add(cell_id)
        class_id = raw.get("class_id")
        if class_id not in classes:
            errors[key] = f"class_id {class_id!r} is not a class of this project"
            continue
        candidates.append((index, cell_id, class_id, raw.get("polygon")))
    checked = polygons_clean(
        [c[3] for c in candidates], width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
    )
    clean: list[dict[str, Any]] = []
    for (index, cell_id, class_id, _), polygon in zip(candidates, checked, strict=True):
        if isinstance(polygon, GeometryError):
            errors[f"cells.{index}"] = str(polygon)
        else:
            clean.append({"id": cell_id, "class_id": class_id, "polygon": polygon})
    return clean, errors


def _snapshot(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History form of cell rows: what a restore needs to re-create each cell exactly."""
    return [
        {
            "id": r["id"],
            "class_id": r["cell_class_id"],
            "polygon": r["polygon"],
            "source": r["source"],
            "score": r["score"],
            "model_version_id": r["model_version_id"],
            "author_id": r["author_id"],
            "provenance": r["provenance"],
        }
        for r in rows
    ]


def _conflict(image: Image) -> ConflictError:
    rows = json.loads(selectors.cells_json(image=image, layer=Layer.ANNOTATION))
    return ConflictError(
        f"The annotations changed on the server (now revision {image.revision}); reload or resolve the conflict.",
        {"revision": image.revision, "cells": rows},
    )


def cell_geometry(polygon: CleanPolygon) -> dict[str, Any]:
    """The stored geometry of a cell (polygon, bbox columns, area, digest) from a clean polygon."""
    x, y, w, h = polygon.bbox
    return {
        "polygon": polygon.points,
        "bbox_x": x,
        "bbox_y": y,
        "bbox_w": w,
        "bbox_h": h,
        "area": polygon.area,
        "geometry_digest": polygon.digest or geometry_digest(polygon.points),
    }


@dataclass
class LayerWrite:
    revision: int
    cells: list[dict[str, Any]]  # the written cells, in request order
    layer: list[dict[str, Any]]  # the whole layer after the write, by id
    summary: dict[str, Any]


def annotation_layer_write(
    *,
    image: Image,
    user: User | None,
    base_revision: int,
    desired: list[dict[str, Any]],
    action: str,
    keep_missing: bool = False,
) -> LayerWrite:
    """Make the annotation layer equal to ``desired`` (or add to it when ``keep_missing``).

    Each desired item: ``id`` (optional, kept if it is a cell of this layer, else a new cell is
    made), ``class_id``, ``polygon`` (a CleanPolygon) and optional ``source``, ``score``,
    ``model_version_id``, ``provenance``, ``restore_id`` (an id to re-create a deleted cell with).
    Runs under a row lock on the image; a stale ``base_revision`` raises ConflictError.
    """
    locked = Image.objects.select_for_update().get(pk=image.pk)
    annotation_write_check(image=locked)  # locked from submission until an admin reopens (409)
    if locked.revision != base_revision:
        raise _conflict(locked)
    now = timezone.now()
    # Existing cells as plain rows with the polygon as JSON text: comparing texts finds the
    # unchanged cells without decoding every stored vertex (the hot path of autosave).
    meta_fields = [f for f in CELL_FIELDS if f != "polygon"]
    existing: dict[int, dict[str, Any]] = {}
    for row in (
        Cell.objects.filter(image_id=image.pk, layer=Layer.ANNOTATION)
        .annotate(polygon_text=Cast("polygon", TextField()))
        .values_list(*meta_fields, "polygon_text")
    ):
        record = dict(zip(meta_fields, row, strict=False))
        record["polygon_text"] = row[-1]
        existing[record["id"]] = record
    kept: set[int] = set()
    order: list[dict[str, Any]] = []
    to_create: list[Cell] = []
    to_update: list[Cell] = []
    update_fields = [
        "polygon",
        "cell_class_id",
        "bbox_x",
        "bbox_y",
        "bbox_w",
        "bbox_h",
        "area",
        "geometry_digest",
        "revision",
        "updated_at",
    ]
    revision = base_revision + 1
    for item in desired:
        polygon = item["polygon"]
        found: dict[str, Any] | None = existing.get(item["id"]) if item.get("id") is not None else None
        if found is not None and found["id"] not in kept:
            record = found
            kept.add(record["id"])
            record["polygon"] = polygon.points
            digest = polygon.digest or geometry_digest(polygon.points)
            # Cells written before digests existed (or by other paths) compare by their JSON text.
            same_shape = (
                record["geometry_digest"] == digest
                if record["geometry_digest"]
                else record["polygon_text"] == json.dumps(polygon.points)
            )
            if not same_shape or record["cell_class_id"] != item["class_id"]:
                geometry = cell_geometry(polygon)
                del geometry["polygon"]
                record.update(cell_class_id=item["class_id"], **geometry, revision=revision, updated_at=now)
                fields = {f: record[f] for f in update_fields[1:]}
                to_update.append(Cell(pk=record["id"], polygon=polygon.points, **fields))
            order.append(record)
        else:
            cell = Cell(
                pk=item.get("restore_id"),
                image_id=image.pk,
                layer=Layer.ANNOTATION,
                cell_class_id=item["class_id"],
                **cell_geometry(polygon),
                score=item.get("score"),
                source=item.get("source", CellSource.MANUAL),
                model_version_id=item.get("model_version_id"),
                provenance=item.get("provenance") or {},
                author_id=item.get("author_id", user.pk if user else None),
                revision=revision,
                created_at=now,
                updated_at=now,
            )
            to_create.append(cell)
            order.append({"_new": cell})
    deleted = [] if keep_missing else [pk for pk in existing if pk not in kept]
    region_write_check(
        image_id=image.pk,
        polygons=(
            [c.polygon for c in (*to_update, *to_create)]
            + [json.loads(existing[pk]["polygon_text"]) for pk in (*deleted, *(c.pk for c in to_update))]
        ),
    )
    if deleted:
        Cell.objects.filter(pk__in=deleted).delete()
    if to_update:
        Cell.objects.bulk_update(to_update, update_fields)
    if to_create:
        Cell.objects.bulk_create(to_create)
    order = [{f: getattr(r["_new"], f) for f in CELL_FIELDS} if "_new" in r else r for r in order]
    untouched = [r for pk, r in existing.items() if pk not in kept and pk not in deleted]
    for record in untouched:
        record["polygon"] = json.loads(record["polygon_text"])
    rows = sorted(({f: r[f] for f in CELL_FIELDS} for r in [*untouched, *order]), key=lambda r: r["id"])
    summary = {"added": len(to_create), "changed": len(to_update), "deleted": len(deleted)}
    Image.objects.filter(pk=image.pk).update(revision=revision, updated_at=now)
    annotation_write_started(image=locked, user=user)  # first write: annotator recorded, status annotating
    image.status, image.annotator_id = locked.status, locked.annotator_id
    written = {c.pk for c in to_update} | {c.pk for c in to_create}
    AnnotationRevision.objects.create(
        image_id=image.pk,
        revision=revision,
        author=user,
        action=action,
        summary=summary,
        changes={"upserted": _snapshot([r for r in rows if r["id"] in written]), "deleted": deleted},
    )
    image.revision = revision
    by_pk = {r["id"]: r for r in rows}
    return LayerWrite(revision=revision, cells=[by_pk[r["id"]] for r in order], layer=rows, summary=summary)


def cells_replace(*, image: Image, user: User, base_revision: int, cells: object) -> LayerWrite:
    """Replace the whole annotation layer of ``image`` in one transaction.

    Cells that carry the id of a cell of this layer keep it; other cells are created; cells not
    sent are deleted. Validation errors are keyed ``cells.<index>``; a stale ``base_revision``
    raises ConflictError carrying the server's current cells. Returned cells follow request order.
    """
    classes = {c.pk: c for c in image.project.classes.all()}
    clean, errors = _cell_payload_errors(cells, image=image, classes=classes)
    if errors:
        raise ServiceValidationError("Some cells are invalid; nothing was saved.", errors)
    desired = [{"id": c["id"], "class_id": c["class_id"], "polygon": c["polygon"]} for c in clean]
    with transaction.atomic():
        return annotation_layer_write(
            image=image, user=user, base_revision=base_revision, desired=desired, action="replace"
        )


def revision_restore(*, image: Image, user: User, target_revision: int, base_revision: int) -> LayerWrite:
    """Make the annotation layer what it was at ``target_revision`` (a new revision; history kept)."""
    if target_revision != 0 and not image.history.filter(revision=target_revision).exists():
        raise ServiceValidationError("No such revision.", {"revision": f"revision {target_revision} does not exist"})
    snapshot = selectors.revision_state(image=image, revision=target_revision)
    existing_ids = set(Cell.objects.filter(image_id=image.pk).values_list("pk", flat=True))
    taken_elsewhere = set(
        Cell.objects.filter(pk__in=[c["id"] for c in snapshot]).exclude(image_id=image.pk).values_list("pk", flat=True)
    )
    classes = set(image.project.classes.values_list("pk", flat=True))
    desired = []
    for cell in snapshot:
        if cell["class_id"] not in classes:
            raise ConflictError(f"Revision {target_revision} uses a class that was deleted.")
        points = cell["polygon"]
        shape = Polygon(points)
        x0, y0, x1, y1 = shape.bounds
        desired.append(
            {
                "id": cell["id"],
                "restore_id": cell["id"]
                if cell["id"] not in existing_ids and cell["id"] not in taken_elsewhere
                else None,
                "class_id": cell["class_id"],
                "polygon": CleanPolygon(
                    points=points, area=shape.area, bbox=(x0, y0, x1 - x0, y1 - y0), repaired=False
                ),
                "source": cell["source"],
                "score": cell["score"],
                "model_version_id": cell["model_version_id"],
                "author_id": cell["author_id"],
                "provenance": cell["provenance"],
            }
        )
    with transaction.atomic():
        return annotation_layer_write(
            image=image, user=user, base_revision=base_revision, desired=desired, action=f"restore:{target_revision}"
        )
