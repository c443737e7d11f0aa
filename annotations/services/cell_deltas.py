"""Saves by delta (issue #14): the cells a client added, changed and deleted in the annotation
layer, based on a revision, merged with what others saved meanwhile unless the edits really meet.

A whole-layer PUT (``cells.cells_replace``) carries every cell; a slide of 100,000 cells cannot be
saved that way. A delta touches only its own cells: the image row is locked, the changed and
deleted cells are read by id, the cells written after the base revision are read by their
``revision`` column and box, and nothing else of the layer is loaded.

The conflict rule (docs/api.md, "Saves by delta"):
- a changed or deleted cell conflicts when the server's copy was written after the client's: after
  the item's own ``revision`` when it sends one (the cell's ``revision`` as the client read it),
  else after ``base_revision``; a cell deleted on the server meanwhile conflicts the same way;
- a new outline (an added cell, or a changed cell's new polygon) conflicts when it intersects,
  with a positive area, an outline that another save added or changed after ``base_revision``;
- everything else merges: two doctors working on different regions both succeed.
One conflict refuses the whole delta (409 with the server's current version of the cells
concerned); nothing is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from shapely import STRtree
from shapely.geometry import Polygon

from annotations import selectors
from annotations.models import AnnotationRevision, Cell, CellClass, CellSource, Image, Layer
from annotations.selectors import CELL_FIELDS
from annotations.services.cells import _snapshot, cell_geometry
from annotations.services.workflow import (
    annotation_write_check,
    annotation_write_started,
    region_locked_items,
    region_locked_message,
    regions_locked,
)
from core.errors import ConflictError, ServiceValidationError
from cytoseg.geometry import CleanPolygon, GeometryError, polygons_clean

# Below this area (px²) two outlines only touch: cells drawn edge to edge do not conflict.
OVERLAP_MIN_AREA = 1e-6


@dataclass
class _Added:
    index: int
    class_id: int
    polygon: CleanPolygon


@dataclass
class _Changed:
    index: int
    id: int
    known: int | None  # the cell's revision as the client read it
    class_id: int | None = None
    polygon: CleanPolygon | None = None


@dataclass
class _Deleted:
    index: int
    id: int
    known: int | None


@dataclass
class Delta:
    added: list[_Added] = field(default_factory=list)
    changed: list[_Changed] = field(default_factory=list)
    deleted: list[_Deleted] = field(default_factory=list)


@dataclass
class DeltaWrite:
    revision: int
    added: list[dict[str, Any]]  # rows (selectors.CELL_FIELDS) of the added cells, in request order
    changed: list[dict[str, Any]]  # rows of the changed cells, in request order
    deleted: list[int]
    summary: dict[str, int]


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _items(data: dict[str, Any], name: str, errors: dict[str, Any]) -> list[Any]:
    value = data.get(name, [])
    if value is None:
        return []
    if not isinstance(value, list):
        errors[name] = "must be a list"
        return []
    return value


def delta_parse(*, image: Image, data: object) -> Delta:
    """The delta of a PATCH body checked against the image (classes, polygons inside it); every
    problem is a 400 naming the item and field (``changed.3.polygon``); nothing is read but the
    project's classes."""
    if not isinstance(data, dict):
        raise ServiceValidationError("Expected a JSON object with base_revision, added, changed and deleted.")
    unknown = sorted(set(data) - {"base_revision", "revision", "added", "changed", "deleted"})
    if unknown:
        raise ServiceValidationError("Unknown fields.", dict.fromkeys(unknown, "unknown field"))
    errors: dict[str, Any] = {}
    added_raw = _items(data, "added", errors)
    changed_raw = _items(data, "changed", errors)
    deleted_raw = _items(data, "deleted", errors)
    if errors:
        raise ServiceValidationError("The delta is malformed; nothing was saved.", errors)
    total = len(added_raw) + len(changed_raw) + len(deleted_raw)
    if total == 0:
        raise ServiceValidationError("The delta changes nothing.", {"added": "send added, changed or deleted cells"})
    if total > settings.CELL_MAX_PER_IMAGE:
        raise ServiceValidationError(
            "The delta is too large.", {"added": f"at most {settings.CELL_MAX_PER_IMAGE} cells per delta"}
        )
    classes: dict[int, CellClass] = {c.pk: c for c in image.project.classes.all()}
    delta = Delta()
    seen: dict[int, str] = {}
    polygons: list[tuple[str, object, Any]] = []  # (key, raw polygon, item to fill)

    def check_id(key: str, raw: dict[str, Any]) -> tuple[int, int | None] | None:
        cell_id, known = raw.get("id"), raw.get("revision")
        if not _int(cell_id):
            errors[f"{key}.id"] = "must be the id of a cell of this image's annotation layer"
            return None
        if known is not None and not _int(known):
            errors[f"{key}.revision"] = "must be an integer (the cell's revision as you read it)"
            return None
        assert isinstance(cell_id, int)
        if cell_id in seen:
            errors[f"{key}.id"] = f"cell {cell_id} is also in {seen[cell_id]}"
            return None
        seen[cell_id] = key
        return cell_id, known if isinstance(known, int) else None

    for index, raw in enumerate(added_raw):
        key = f"added.{index}"
        if not isinstance(raw, dict):
            errors[key] = "must be an object with class_id and polygon"
            continue
        extra = sorted(set(raw) - {"class_id", "polygon"})
        if extra:
            errors[f"{key}.{extra[0]}"] = "unknown field (an added cell has no id: the server gives it one)"
            continue
        if raw.get("class_id") not in classes:
            errors[f"{key}.class_id"] = f"class_id {raw.get('class_id')!r} is not a class of this project"
            continue
        item = _Added(index=index, class_id=raw["class_id"], polygon=CleanPolygon([], 0, (0, 0, 0, 0), False))
        delta.added.append(item)
        polygons.append((f"{key}.polygon", raw.get("polygon"), item))
    for index, raw in enumerate(changed_raw):
        key = f"changed.{index}"
        if not isinstance(raw, dict):
            errors[key] = "must be an object with id and class_id and/or polygon"
            continue
        extra = sorted(set(raw) - {"id", "revision", "class_id", "polygon"})
        if extra:
            errors[f"{key}.{extra[0]}"] = "unknown field"
            continue
        ids = check_id(key, raw)
        if ids is None:
            continue
        if "class_id" not in raw and "polygon" not in raw:
            errors[key] = "send class_id and/or polygon"
            continue
        changed = _Changed(index=index, id=ids[0], known=ids[1])
        if "class_id" in raw:
            if raw["class_id"] not in classes:
                errors[f"{key}.class_id"] = f"class_id {raw['class_id']!r} is not a class of this project"
                continue
            changed.class_id = raw["class_id"]
        delta.changed.append(changed)
        if "polygon" in raw:
            polygons.append((f"{key}.polygon", raw["polygon"], changed))
    for index, raw in enumerate(deleted_raw):
        key = f"deleted.{index}"
        # a plain id, or {id, revision} to have the deletion checked against the copy read
        item_raw = raw if isinstance(raw, dict) else {"id": raw}
        if set(item_raw) - {"id", "revision"}:
            errors[key] = "must be a cell id or {id, revision}"
            continue
        ids = check_id(key, item_raw)
        if ids is not None:
            delta.deleted.append(_Deleted(index=index, id=ids[0], known=ids[1]))
    checked = polygons_clean(
        [p[1] for p in polygons], width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
    )
    for (key, _, item), polygon in zip(polygons, checked, strict=True):
        if isinstance(polygon, GeometryError):
            errors[key] = str(polygon)
        else:
            item.polygon = polygon
    if errors:
        raise ServiceValidationError("Some cells are invalid; nothing was saved.", errors)
    return delta


def _shape(points: list[list[float]]) -> Polygon:
    shape = Polygon(points)
    return shape if shape.is_valid else shape.buffer(0)


def _deleted_after(*, image: Image, since: int, ids: set[int]) -> dict[int, int]:
    """Of ``ids``, those a revision after ``since`` deleted: id -> that revision (the history's
    ``deleted`` lists only, never the upserted cells)."""
    found: dict[int, int] = {}
    rows = (
        AnnotationRevision.objects.filter(image_id=image.pk, revision__gt=since)
        .order_by("revision")
        .values_list("revision", "changes__deleted")
    )
    for revision, deleted in rows:
        for cell_id in deleted or []:
            if cell_id in ids:
                found[cell_id] = revision
    return found


def _conflicts(*, image: Image, delta: Delta, base: int, current: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    conflicts: list[dict[str, Any]] = []
    items: list[_Changed | _Deleted] = [*delta.changed, *delta.deleted]
    missing = {i.id for i in items if i.id not in current}
    deleted_at: dict[int, int] = {}
    if missing:
        known_min = min((i.known if i.known is not None else base) for i in items if i.id in missing)
        deleted_at = _deleted_after(image=image, since=known_min, ids=missing)
    errors: dict[str, str] = {}
    for item in items:
        key = f"{'changed' if isinstance(item, _Changed) else 'deleted'}.{item.index}"
        known = item.known if item.known is not None else base
        row = current.get(item.id)
        if row is None:
            if deleted_at.get(item.id, -1) > known:
                conflicts.append({"item": key, "id": item.id, "reason": "deleted", "revision": deleted_at[item.id]})
            else:
                errors[f"{key}.id"] = f"no cell {item.id} in this image's annotation layer"
        elif row["revision"] > known:
            conflicts.append({"item": key, "id": item.id, "reason": "changed", "revision": row["revision"]})
    if errors:
        raise ServiceValidationError("Some cells do not exist; nothing was saved.", errors)
    # new outlines against the outlines others wrote after base
    outlines: list[tuple[str, CleanPolygon]] = [(f"added.{a.index}", a.polygon) for a in delta.added]
    outlines += [(f"changed.{c.index}", c.polygon) for c in delta.changed if c.polygon is not None]
    if not outlines:
        return conflicts
    x0 = min(p.bbox[0] for _, p in outlines)
    y0 = min(p.bbox[1] for _, p in outlines)
    x1 = max(p.bbox[0] + p.bbox[2] for _, p in outlines)
    y1 = max(p.bbox[1] + p.bbox[3] for _, p in outlines)
    ours = {i.id for i in items}
    recent = list(
        selectors.cells_in_box_filter(
            Cell.objects.filter(image_id=image.pk, layer=Layer.ANNOTATION, revision__gt=base),
            image_id=image.pk,
            box=(x0, y0, x1, y1),
        )
        .exclude(pk__in=ours)
        .values_list("pk", "polygon", "revision")
    )
    if not recent:
        return conflicts
    shapes = [_shape(points) for _, points, _ in recent]
    tree = STRtree(shapes)
    for key, polygon in outlines:
        mine = _shape(polygon.points)
        for j in tree.query(mine, predicate="intersects"):
            if mine.intersection(shapes[j]).area > OVERLAP_MIN_AREA:
                pk, _, revision = recent[j]
                conflicts.append({"item": key, "id": pk, "reason": "overlaps", "revision": revision})
    return conflicts


def cells_delta_apply(*, image: Image, user: User, base_revision: int, data: object) -> DeltaWrite:
    """Apply a delta (``added``, ``changed``, ``deleted``) to the annotation layer of ``image``
    based on ``base_revision``: one new revision, all or nothing.

    Raises ServiceValidationError (400, keyed ``added.3.polygon``, ``changed.0.id`` ...) for bad
    items and ConflictError (409) for a locked image or edits that meet others' edits made after
    the base (the rule in this module's docstring); the 409 carries ``conflicts`` (item, id,
    reason, revision), ``cells`` (the server's current version of every cell concerned) and
    ``deleted`` (the ids concerned that no longer exist) and the layer's ``revision``.
    """
    delta = delta_parse(image=image, data=data)
    with transaction.atomic():
        locked = Image.objects.select_for_update().get(pk=image.pk)
        annotation_write_check(image=locked)  # the PUT's lock: submitted .. verified is 409
        if base_revision > locked.revision:
            raise ServiceValidationError(
                "The base revision is ahead of the server.",
                {"base_revision": f"the layer is at revision {locked.revision}"},
            )
        ids = [c.id for c in delta.changed] + [d.id for d in delta.deleted]
        current = {
            row["id"]: row
            for row in Cell.objects.filter(image_id=image.pk, layer=Layer.ANNOTATION, pk__in=ids).values(*CELL_FIELDS)
        }
        conflicts = _conflicts(image=image, delta=delta, base=base_revision, current=current)
        if conflicts:
            concerned = sorted({c["id"] for c in conflicts})
            server = json.loads(selectors.cells_by_ids_json(image=image, ids=concerned))
            present = {c["id"] for c in server}
            raise ConflictError(
                f"{len(conflicts)} of your edits meet edits saved meanwhile (after the copies you read; the "
                f"layer is now at revision {locked.revision}); nothing was saved. Take the server's version of "
                "those cells and send the rest again.",
                {
                    "revision": locked.revision,
                    "conflicts": conflicts,
                    "cells": server,
                    "deleted": [pk for pk in concerned if pk not in present],
                },
            )
        _regions_locked_check(image=image, locked=locked, delta=delta, current=current)
        return _write(image=image, locked=locked, user=user, delta=delta, base=base_revision, current=current)


def _regions_locked_check(*, image: Image, locked: Image, delta: Delta, current: dict[int, dict[str, Any]]) -> None:
    """Refuse the delta (409, shaped as a conflict so that the editor takes the server's version
    of those cells and saves the rest) when an item adds, changes or deletes a cell whose centroid
    lies in a region under review or verified (old or new outline). One query without one."""
    regions = regions_locked(image_id=image.pk)
    if not regions:
        return
    items: list[tuple[str, list[list[float]]]] = [(f"added.{a.index}", a.polygon.points) for a in delta.added]
    for c in delta.changed:
        items.append((f"changed.{c.index}", current[c.id]["polygon"]))
        if c.polygon is not None:
            items.append((f"changed.{c.index}", c.polygon.points))
    items += [(f"deleted.{d.index}", current[d.id]["polygon"]) for d in delta.deleted]
    hits = region_locked_items(locked=regions, items=items)
    if not hits:
        return
    ids = {f"changed.{c.index}": c.id for c in delta.changed} | {f"deleted.{d.index}": d.id for d in delta.deleted}
    concerned = sorted({ids[key] for key, _, _ in hits if key in ids})
    _, name, status = hits[0]
    raise ConflictError(
        region_locked_message(name, status),
        {
            "status": status,
            "region": name,
            "revision": locked.revision,
            "conflicts": [
                {"item": key, "id": ids.get(key), "reason": "region_locked", "revision": locked.revision}
                for key, _, _ in hits
            ],
            "cells": json.loads(selectors.cells_by_ids_json(image=image, ids=concerned)) if concerned else [],
            "deleted": [],
        },
    )


def _write(
    *, image: Image, locked: Image, user: User, delta: Delta, base: int, current: dict[int, dict[str, Any]]
) -> DeltaWrite:
    now = timezone.now()
    revision = locked.revision + 1  # base may be older: the delta merges onto the latest
    deleted = [d.id for d in delta.deleted]
    if deleted:
        Cell.objects.filter(pk__in=deleted).delete()
    changed_rows: list[dict[str, Any]] = []
    to_update: list[Cell] = []
    for item in delta.changed:
        row = dict(current[item.id])
        if item.class_id is not None:
            row["cell_class_id"] = item.class_id
        if item.polygon is not None:
            row.update(cell_geometry(item.polygon))
        row.update(revision=revision, updated_at=now)
        changed_rows.append(row)
        to_update.append(Cell(pk=item.id, **{f: row[f] for f in _UPDATE_FIELDS}))
    if to_update:
        Cell.objects.bulk_update(to_update, _UPDATE_FIELDS)
    new = [
        Cell(
            image_id=image.pk,
            layer=Layer.ANNOTATION,
            cell_class_id=a.class_id,
            **cell_geometry(a.polygon),
            source=CellSource.MANUAL,
            author_id=user.pk,
            revision=revision,
            created_at=now,
            updated_at=now,
        )
        for a in delta.added
    ]
    if new:
        Cell.objects.bulk_create(new)
    added_rows = [{f: getattr(c, f) for f in CELL_FIELDS} for c in new]
    Image.objects.filter(pk=image.pk).update(revision=revision, updated_at=now)
    annotation_write_started(image=locked, user=user)
    image.status, image.annotator_id, image.revision = locked.status, locked.annotator_id, revision
    summary = {"added": len(new), "changed": len(changed_rows), "deleted": len(deleted)}
    AnnotationRevision.objects.create(
        image_id=image.pk,
        revision=revision,
        author=user,
        action="delta",
        summary=summary,
        changes={"upserted": _snapshot([*added_rows, *changed_rows]), "deleted": deleted},
    )
    return DeltaWrite(revision=revision, added=added_rows, changed=changed_rows, deleted=deleted, summary=summary)


_UPDATE_FIELDS = [
    "cell_class_id",
    "polygon",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "area",
    "geometry_digest",
    "revision",
    "updated_at",
]
