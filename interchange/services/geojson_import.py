"""The GeoJSON import: QuPath's objects (a FeatureCollection of Polygon and MultiPolygon
features) into the annotation layer of one image, validated like every cell write and written
through the polygon store (``annotation_layer_write``) as one revision, action ``import``, so
revisions, history, the annotation lock and the audit log work as for any save. Atomic: every
feature is written or none. A dry run does everything, reports, then rolls back.

The shape read is what QuPath writes (0.2 to 0.5), and what our own GeoJSON export writes:
- the file: a ``FeatureCollection``; also QuPath's plain export (a JSON list of features) or a
  single ``Feature``;
- coordinates: image pixels, origin at the top-left corner, y down (QuPath's convention and the
  export's), so an export imports into an image of the same pixels unchanged;
- the object type: ``properties.objectType`` (0.4+), ``properties.object_type`` (0.3), the
  feature's ``id`` (0.2: ``PathAnnotationObject`` ...); annotations, detections and cells are
  imported, tiles, TMA cores and the root are skipped and reported; a cell's ``nucleusGeometry``
  is not a cell of ours (its ``geometry``, the cell boundary, is imported);
- the class: ``properties.classification`` ``{"name", "color"}`` (0.4+), ``{"names": [...]}``
  (a derived class, joined as QuPath shows it: ``Tumor: Positive``), ``{"name", "colorRGB",
  "parentClass"}`` (0.2/0.3) or a plain name.
Our cells are simple polygons: a polygon with holes is refused naming the feature (``holes=refuse``,
the default) or imported as its outer ring (``holes=fill``, counted in the report). A MultiPolygon
follows the ``multipart`` option as a COCO segmentation of several polygons does
(``interchange.services.parts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from annotations.models import Cell, CellClass, CellSource, Image, Layer
from annotations.services.audit import audit_record
from annotations.services.cells import annotation_layer_write
from annotations.services.images import UploadLike
from core.errors import ServiceValidationError
from cytoseg.geometry import GeometryError
from interchange.services.imports import ImportErrors, json_upload_load
from interchange.services.parts import MULTIPART_CHOICES, parts_to_polygons
from interchange.services.selection import setting

GEOJSON_IMPORT_MAX_BYTES = 100 * 1024 * 1024


MODES = ("append", "replace")


HOLES = ("refuse", "fill")


MAX_WARNINGS = 100


# QuPath's object types (and the class names 0.2 wrote into the feature's id) that outline a
# cell or a region someone drew; anything else QuPath names (unknown types included) it reads
# as an annotation, and so do we.
_SKIPPED_TYPES = {
    "tile": "tile",
    "PathTileObject": "tile",
    "tma_core": "TMA core",
    "TMACoreObject": "TMA core",
    "root": "root object",
    "PathRootObject": "root object",
}
_LEGACY_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    **{name: name for name in ("PathTileObject", "TMACoreObject", "PathRootObject")},
}


@dataclass
class GeoJsonImportResult:
    dry_run: bool
    image_id: int
    mode: str
    revision: int = 0
    features: int = 0
    cells: int = 0
    deleted: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    multipart_merged: int = 0
    multipart_split: int = 0
    holes_filled: int = 0
    nuclei_ignored: int = 0
    repaired: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "image": self.image_id,
            "mode": self.mode,
            "revision": self.revision,
            "features": self.features,
            "cells": self.cells,
            "deleted": self.deleted,
            "classes": self.classes,
            "skipped": self.skipped,
            "multipart": {"merged": self.multipart_merged, "split": self.multipart_split},
            "holes_filled": self.holes_filled,
            "nuclei_ignored": self.nuclei_ignored,
            "repaired": self.repaired,
            "warnings": self.warnings,
        }


class _Rollback(Exception):
    """Ends a dry run: everything it wrote is rolled back."""


@dataclass
class _Classes:
    """Classification names to the project's classes: ``class_map`` first, then the names of
    the project's classes (case-insensitively), then ``default_class``."""

    by_name: dict[str, CellClass]
    mapped: dict[str, CellClass | None]  # lower-cased name -> class, or None: skip the feature
    default: CellClass | None

    def resolve(self, name: str | None) -> tuple[bool, CellClass | None]:
        """(known, class): known and None means the class map says to skip the feature."""
        if name is not None:
            key = name.strip().lower()
            if key in self.mapped:
                return True, self.mapped[key]
            if key in self.by_name:
                return True, self.by_name[key]
        return self.default is not None, self.default


def _class_ref(value: object, *, classes: Mapping[int, CellClass], by_name: Mapping[str, CellClass]) -> CellClass | str:
    """A project class named by id (an integer, or digits sent as form text) or name; or why not."""
    if isinstance(value, int) and not isinstance(value, bool):
        return classes.get(value) or f"{value} is not a class id of this project"
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.isdigit() and int(text) in classes:
            return classes[int(text)]
        return by_name.get(text.lower()) or f"{text!r} is not a class of this project"
    return "must be a class id or name of this project"


def _classes_resolve(
    image: Image, class_map: Mapping[str, Any] | None, default_class: object, errors: ImportErrors
) -> _Classes:
    classes = {c.pk: c for c in image.project.classes.all()}
    by_name = {c.name.strip().lower(): c for c in classes.values()}
    mapped: dict[str, CellClass | None] = {}
    for key, value in (class_map or {}).items():
        norm = str(key).strip().lower()
        if norm in mapped:
            errors.add(f"class_map.{key}", "names the same classification as another key (case is ignored)")
        elif value is None:
            mapped[norm] = None
        else:
            ref = _class_ref(value, classes=classes, by_name=by_name)
            if isinstance(ref, str):
                errors.add(f"class_map.{key}", ref)
            else:
                mapped[norm] = ref
    default = None
    if default_class is not None and default_class != "":
        ref = _class_ref(default_class, classes=classes, by_name=by_name)
        if isinstance(ref, str):
            errors.add("default_class", ref)
        else:
            default = ref
    return _Classes(by_name, mapped, default)


def _features(data: object, source: str) -> list[Any]:
    """The features of a FeatureCollection, of QuPath's plain list export, or a single Feature."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if isinstance(features, list):
                return features
            raise ServiceValidationError("Not a GeoJSON FeatureCollection.", {"features": "must be a list of features"})
        if kind == "Feature":
            return [data]
        got = f"type {kind!r}" if isinstance(kind, str) else "no type"
    else:
        got = f"a JSON {type(data).__name__}"
    raise ServiceValidationError(
        "Not a GeoJSON FeatureCollection.",
        {source: f"must be a GeoJSON FeatureCollection (or a Feature, or a list of features); got {got}"},
    )


def _classification_name(raw: object) -> str | None:
    """The class name of QuPath's ``classification`` in any of its versions' shapes; None when
    unclassified; ValueError when it is none of them."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.strip() or None
    if isinstance(raw, dict):
        names = raw.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(n.strip() for n in names)
        name = raw.get("name")
        if isinstance(name, str) and name.strip():
            parent = raw.get("parentClass")
            if parent is not None:  # 0.2/0.3 derived class: Tumor -> Positive is "Tumor: Positive"
                parent_name = _classification_name(parent)
                return f"{parent_name}: {name.strip()}" if parent_name else name.strip()
            return name.strip()
    raise ValueError("must be an object with name (or names), or a class name")


def _object_type(feature: dict[str, Any], properties: dict[str, Any]) -> str:
    for key in ("objectType", "object_type", "type"):
        value = properties.get(key)
        if isinstance(value, str) and value:
            return _LEGACY_TYPES.get(value, value)
    legacy = feature.get("id")
    if isinstance(legacy, str) and legacy in _LEGACY_TYPES:
        return _LEGACY_TYPES[legacy]
    return "annotation"


def _position(point: object) -> object:
    # GeoJSON allows an altitude as a third number; a flat image has none to keep.
    if isinstance(point, list) and len(point) == 3:
        return point[:2]
    return point


@dataclass
class _Options:
    multipart: str
    holes: str
    width: int
    height: int


def _outlines(geometry: object, options: _Options, result: GeoJsonImportResult) -> tuple[list[object], str]:
    """The outer rings of a Polygon or MultiPolygon (holes per ``holes``) and what to call them;
    GeometryError saying why not."""
    if geometry is None:
        raise GeometryError("missing: a feature without a geometry is not a cell")
    if not isinstance(geometry, dict):
        raise GeometryError("must be a GeoJSON geometry object")
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons, word = [coordinates], "polygons"
    elif kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            raise GeometryError("MultiPolygon coordinates must be a non-empty list of polygons")
        polygons, word = coordinates, "parts"
    else:
        raise GeometryError(f"{kind!r} is not a cell outline; only Polygon and MultiPolygon geometries are imported")
    rings: list[object] = []
    for index, polygon in enumerate(polygons):
        where = f"part {index}: " if kind == "MultiPolygon" else ""
        if not isinstance(polygon, list) or not polygon or not isinstance(polygon[0], list):
            raise GeometryError(f"{where}polygon coordinates must be a list of rings of [x, y] positions")
        if len(polygon) > 1:
            if options.holes == "refuse":
                raise GeometryError(
                    f"{where}polygon has {len(polygon) - 1} hole(s); a cell is a simple polygon without holes "
                    "(send holes=fill to import its outer ring)"
                )
            result.holes_filled += 1
        rings.append([_position(p) for p in polygon[0]])
    return rings, word


def _parse_features(
    features: list[Any],
    options: _Options,
    classes: _Classes,
    result: GeoJsonImportResult,
    errors: ImportErrors,
) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Each feature validated like any cell: the desired cells, and the unknown class names with
    the features that carry them."""
    desired: list[dict[str, Any]] = []
    unknown: dict[str, list[int]] = {}
    for index, feature in enumerate(features):
        key = f"features.{index}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            errors.add(key, "must be a GeoJSON Feature object")
            continue
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            errors.add(f"{key}.properties", "must be an object")
            continue
        object_type = _object_type(feature, properties)
        if object_type in _SKIPPED_TYPES:
            result.skipped.append({"feature": index, "reason": f"a QuPath {_SKIPPED_TYPES[object_type]} is not a cell"})
            continue
        children = properties.get("childObjects")
        if isinstance(children, list) and children and len(result.warnings) < MAX_WARNINGS:
            result.warnings.append(
                f"{key}: {len(children)} child object(s) nested in properties.childObjects were not imported "
                "(export them from QuPath as features of their own)"
            )
        cell_class: CellClass | None = None
        try:
            name = _classification_name(properties.get("classification"))
        except ValueError as exc:
            errors.add(f"{key}.properties.classification", str(exc))
            name = None
        else:
            known, cell_class = classes.resolve(name)
            if known and cell_class is None:  # the class map skips these (a tissue region, say)
                result.skipped.append({"feature": index, "reason": f"class_map skips {name!r}"})
                continue
            if not known and name is not None:
                unknown.setdefault(name, []).append(index)
                errors.add(
                    f"{key}.properties.classification",
                    f"{name!r} is not a class of this project (map it with class_map or send default_class)",
                )
            elif not known:
                errors.add(
                    f"{key}.properties.classification",
                    "missing: the object is unclassified (send default_class to import unclassified objects)",
                )
        try:
            rings, word = _outlines(feature.get("geometry"), options, result)
            outcome = parts_to_polygons(
                rings,
                mode=options.multipart,
                width=options.width,
                height=options.height,
                max_vertices=settings.CELL_MAX_VERTICES,
                word=word,
            )
        except GeometryError as exc:
            errors.add(f"{key}.geometry", str(exc))
            continue
        if cell_class is None:
            continue
        result.multipart_merged += int(outcome.merged)
        result.multipart_split += int(outcome.split)
        if feature.get("nucleusGeometry") is not None:
            result.nuclei_ignored += 1
        provenance: dict[str, Any] = {"import": "geojson", "feature": index, "object_type": object_type}
        if isinstance(feature.get("id"), str) and feature["id"] not in _LEGACY_TYPES:
            provenance["qupath_id"] = feature["id"][:100]
        if name is not None:
            provenance["classification"] = name[:200]
        for part, polygon in enumerate(outcome.polygons):
            result.repaired += int(polygon.repaired)
            desired.append(
                {
                    "id": None,
                    "class_id": cell_class.pk,
                    "polygon": polygon,
                    "source": CellSource.IMPORT,
                    "provenance": provenance | ({"part": part} if len(outcome.polygons) > 1 else {}),
                }
            )
            result.classes[cell_class.name] = result.classes.get(cell_class.name, 0) + 1
    return desired, unknown


def geojson_import(
    *,
    image: Image,
    user: User,
    geojson_file: UploadLike | None = None,
    geojson: object = None,
    base_revision: int | None,
    mode: str = "append",
    layer: str = Layer.ANNOTATION,
    class_map: Mapping[str, Any] | None = None,
    default_class: int | str | None = None,
    multipart: str = "merge",
    holes: str = "refuse",
    dry_run: bool = False,
) -> GeoJsonImportResult:
    """Import a GeoJSON FeatureCollection (QuPath's objects) into ``image``'s annotation layer.

    The document comes as an uploaded file (``geojson_file``) or already parsed (``geojson``).
    ``mode``: ``append`` adds the features' cells to the layer, ``replace`` makes the layer
    exactly them. Classification names map to the project's classes by ``class_map`` (name ->
    class id or name, or None to skip those features), else by the classes' names, ignoring
    case; what stays unknown is refused, or goes to ``default_class`` when given (unclassified
    objects too). ``multipart`` rules MultiPolygons, ``holes`` polygons with holes (see the
    module's docstring). Only the annotation layer is written (``layer``): proposals come from
    the models, the verified layer from review.

    ``base_revision`` is the layer's revision the import is based on (a stale one raises
    ConflictError, 409, as for a cell save); a dry run may leave it out. Atomic: any invalid
    feature raises ServiceValidationError keyed ``features.<index>...`` with the reason, and
    nothing is written. ``dry_run`` validates and writes everything, reports, and rolls back.
    """
    errors = ImportErrors()
    if mode not in MODES:
        errors.add("mode", "must be append or replace")
    if layer != Layer.ANNOTATION:
        errors.add(
            "layer",
            "only the annotation layer is imported into (proposals come from models, verified cells from review)",
        )
    if multipart not in MULTIPART_CHOICES:
        errors.add("multipart", "must be merge, split or refuse")
    if holes not in HOLES:
        errors.add("holes", "must be refuse or fill")
    if (geojson_file is None) == (geojson is None):
        errors.add("file", "send the GeoJSON as the file field (multipart) or as geojson (JSON body), one of them")
    if base_revision is None and not dry_run:
        errors.add("revision", "send the revision field or an If-Match header")
    errors.raise_if_any("Invalid import options.")

    source = "file"
    if geojson_file is not None:
        limit = setting("GEOJSON_IMPORT_MAX_BYTES", GEOJSON_IMPORT_MAX_BYTES)
        geojson = json_upload_load(geojson_file, what="The GeoJSON file", limit=limit)
    else:
        source = "geojson"
    features = _features(geojson, source)
    result = GeoJsonImportResult(dry_run=dry_run, image_id=image.pk, mode=mode, features=len(features))
    classes = _classes_resolve(image, class_map, default_class, errors)
    options = _Options(multipart=multipart, holes=holes, width=image.width, height=image.height)
    desired, unknown = _parse_features(features, options, classes, result, errors)
    limit = settings.CELL_MAX_PER_IMAGE
    kept = Cell.objects.filter(image_id=image.pk, layer=Layer.ANNOTATION).count() if mode == "append" else 0
    if len(desired) + kept > limit:
        errors.add("features", f"{len(desired) + kept} cells would exceed the limit of {limit} per image")
    if unknown:
        names = ", ".join(repr(n) for n in sorted(unknown))
        errors.raise_if_any(
            f"Unknown classification name(s) {names}: map them with class_map or send default_class; "
            "nothing was imported."
        )
    errors.raise_if_any("The GeoJSON cannot be imported; nothing was written.")

    try:
        with transaction.atomic():
            # a dry run without a revision is based on whatever is there now
            base: int = (
                base_revision
                if base_revision is not None
                else Image.objects.select_for_update().values_list("revision", flat=True).get(pk=image.pk)
            )
            write = annotation_layer_write(
                image=image,
                user=user,
                base_revision=base,
                desired=desired,
                action="import",
                keep_missing=mode == "append",
            )
            result.cells = write.summary["added"]
            result.deleted = write.summary["deleted"]
            result.revision = write.revision
            audit_record(
                project=image.project,
                actor=user,
                action="geojson.import",
                image=image,
                after=result.as_dict() | {"skipped": len(result.skipped), "warnings": len(result.warnings)},
            )
            if dry_run:
                raise _Rollback
    except _Rollback:
        result.revision = base
        image.refresh_from_db()
    return result
