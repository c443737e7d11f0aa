"""The COCO import: a COCO JSON file (and optionally a zip of the images), validated like any
other cell and applied atomically, each image's cells appended to its annotation layer as one
revision (action ``import``); a dry run reports what would be imported. Segmentations of several
polygons follow the ``multipart`` option (``interchange.services.parts``); crowd annotations are
not imported and are listed in the report."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count

from annotations.models import Cell, CellClass, CellSource, Image, Layer, Project
from annotations.services.audit import audit_record
from annotations.services.cells import annotation_layer_write
from annotations.services.images import METADATA_FIELDS, UploadLike, image_upload_many, stored_files_delete
from core.errors import ServiceValidationError
from cytoseg import coco
from cytoseg.geometry import GeometryError, polygon_clean
from interchange.services.imports import ImportErrors, json_upload_load
from interchange.services.parts import MULTIPART_CHOICES, parts_to_polygons
from interchange.services.selection import setting

COCO_IMPORT_MAX_BYTES = 100 * 1024 * 1024


COCO_IMPORT_MAX_ZIP_BYTES = 4 * 1024 * 1024 * 1024


IMPORT_MAX_SKIPPED = 1000  # entries of the report's ``skipped`` list (``skipped_crowd`` counts all)


@dataclass
class _CocoImage:
    index: int
    coco_id: int
    file_name: str
    width: int
    height: int
    metadata: dict[str, str]
    image: Image | None = None  # matched or uploaded platform image
    zip_member: str | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CocoImportResult:
    dry_run: bool
    images_matched: int = 0
    images_uploaded: int = 0
    categories_created: list[str] = field(default_factory=list)
    cells: int = 0
    skipped_crowd: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    multipart_merged: int = 0
    multipart_split: int = 0
    repaired: int = 0
    per_image: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created_images: list[Image] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "images": {"matched": self.images_matched, "uploaded": self.images_uploaded},
            "categories_created": self.categories_created,
            "cells": self.cells,
            "skipped_crowd": self.skipped_crowd,
            "skipped": self.skipped,
            "multipart": {"merged": self.multipart_merged, "split": self.multipart_split},
            "repaired": self.repaired,
            "per_image": self.per_image,
            "warnings": self.warnings,
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Rollback(Exception):
    """Ends a dry run: everything it wrote is rolled back."""


@dataclass
class _ZipUpload:
    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, size: int = -1) -> bytes:
        return self.data if size < 0 else self.data[:size]


def _load_json(coco_file: UploadLike) -> Any:
    return json_upload_load(
        coco_file, what="The COCO file", limit=setting("COCO_IMPORT_MAX_BYTES", COCO_IMPORT_MAX_BYTES)
    )


def _parse_top(data: object) -> tuple[list[Any], list[Any], list[Any]]:
    if not isinstance(data, dict):
        raise ServiceValidationError(
            "Not a COCO file.", {"file": "must be a JSON object with images, annotations and categories"}
        )
    errors = {}
    for key in ("images", "annotations", "categories"):
        if key not in data:
            errors[key] = "required key is missing"
        elif not isinstance(data[key], list):
            errors[key] = "must be a list"
    if errors:
        raise ServiceValidationError("Not a COCO file.", errors)
    return data["images"], data["categories"], data["annotations"]


def _parse_images(raw: list[Any], errors: ImportErrors) -> list[_CocoImage]:
    images: list[_CocoImage] = []
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, item in enumerate(raw):
        key = f"images.{index}"
        if not isinstance(item, dict):
            errors.add(key, "must be an object with id, file_name, width and height")
            continue
        missing = [k for k in ("id", "file_name", "width", "height") if k not in item]
        if missing:
            errors.add(key, f"image {item.get('id')!r}: missing key(s) {', '.join(missing)}")
            continue
        coco_id, file_name, width, height = item["id"], item["file_name"], item["width"], item["height"]
        problems = []
        if not _is_int(coco_id):
            problems.append("id must be an integer")
        if not isinstance(file_name, str) or not file_name.strip():
            problems.append("file_name must be a non-empty text")
        if not (_is_int(width) and width > 0 and _is_int(height) and height > 0):
            problems.append("width and height must be positive integers")
        if problems:
            errors.add(key, f"image {coco_id!r}: " + "; ".join(problems))
            continue
        if coco_id in ids:
            errors.add(key, f"image id {coco_id} collides with images.{ids[coco_id]}")
            continue
        base = PurePosixPath(file_name.replace("\\", "/")).name
        if base in names:
            errors.add(key, f"image {coco_id}: file name {base!r} is also used by images.{names[base]}")
            continue
        ids[coco_id], names[base] = index, index
        metadata = {k: item[k] for k in METADATA_FIELDS if isinstance(item.get(k), str) and item[k]}
        images.append(_CocoImage(index, coco_id, file_name.replace("\\", "/"), width, height, metadata))
    return images


@dataclass
class _Category:
    index: int
    coco_id: int
    name: str
    color: str
    model_label: int
    cell_class: CellClass | None = None


def _parse_categories(raw: list[Any], errors: ImportErrors) -> list[_Category]:
    categories: list[_Category] = []
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, item in enumerate(raw):
        key = f"categories.{index}"
        if not isinstance(item, dict) or "id" not in item or "name" not in item:
            errors.add(key, "must be an object with id and name")
            continue
        coco_id, name = item["id"], item["name"]
        if not _is_int(coco_id):
            errors.add(key, f"category {coco_id!r}: id must be an integer")
            continue
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100:
            errors.add(key, f"category {coco_id}: name must be a text of 1 to 100 characters")
            continue
        name = name.strip()
        if coco_id in ids:
            errors.add(key, f"category id {coco_id} collides with categories.{ids[coco_id]}")
            continue
        if name in names:
            errors.add(key, f"category {coco_id}: name {name!r} is also used by categories.{names[name]}")
            continue
        ids[coco_id], names[name] = index, index
        color = item.get("color")
        if not (isinstance(color, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", color)):
            color = "#1f77b4"
        label = item.get("model_label")
        if label not in (1, 2):
            label = 2 if "erythro" in name.lower() else 1
        categories.append(_Category(index, coco_id, name, color, label))
    return categories


def _resolve_categories(
    project: Project, categories: list[_Category], unknown_categories: str, errors: ImportErrors
) -> list[_Category]:
    """Map categories to the project's classes by name; returns those to create."""
    classes = {c.name: c for c in project.classes.all()}
    to_create = []
    for category in categories:
        category.cell_class = classes.get(category.name)
        if category.cell_class is None:
            if unknown_categories == "create":
                to_create.append(category)
            else:
                errors.add(
                    f"categories.{category.index}",
                    f"category {category.coco_id} {category.name!r} is not a class of this project "
                    "(send unknown_categories=create to create it)",
                )
    return to_create


def _zip_members(archive: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], dict[str, list[zipfile.ZipInfo]]]:
    by_path: dict[str, zipfile.ZipInfo] = {}
    by_name: dict[str, list[zipfile.ZipInfo]] = {}
    for info in archive.infolist():
        path = PurePosixPath(info.filename)
        if info.is_dir() or path.name.startswith("._") or "__MACOSX" in path.parts:
            continue
        by_path[str(path)] = info
        by_name.setdefault(path.name, []).append(info)
    return by_path, by_name


def _open_zip(images_zip: UploadLike | None) -> zipfile.ZipFile | None:
    if images_zip is None:
        return None
    limit = setting("COCO_IMPORT_MAX_ZIP_BYTES", COCO_IMPORT_MAX_ZIP_BYTES)
    if images_zip.size is not None and images_zip.size > limit:
        raise ServiceValidationError(
            "The image zip is too large.", {"images": f"{images_zip.size} bytes exceeds the limit of {limit} bytes"}
        )
    try:
        return zipfile.ZipFile(cast(IO[bytes], images_zip))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ServiceValidationError(
            "The image zip is not a zip file.", {"images": f"not a valid zip file ({exc})"}
        ) from exc


def _resolve_images(
    project: Project, images: list[_CocoImage], archive: zipfile.ZipFile | None, errors: ImportErrors
) -> None:
    """Match each COCO image to a project image by file name, else to a member of the zip."""
    by_path, by_name = _zip_members(archive) if archive is not None else ({}, {})
    bases = [PurePosixPath(i.file_name).name for i in images]
    existing: dict[str, list[Image]] = {}
    for start in range(0, len(bases), 1000):
        for image in project.images.filter(file_name__in=bases[start : start + 1000]):
            existing.setdefault(image.file_name, []).append(image)
    max_bytes = settings.IMAGE_MAX_UPLOAD_BYTES
    for item, base in zip(images, bases, strict=True):
        key = f"images.{item.index}"
        label = f"image {item.coco_id} {item.file_name!r}"
        matches = existing.get(base, [])
        if len(matches) > 1:
            errors.add(key, f"{label}: {len(matches)} images of this project have that file name")
        elif matches:
            item.image = matches[0]
            if (item.image.width, item.image.height) != (item.width, item.height):
                errors.add(
                    key,
                    f"{label} is {item.image.width}x{item.image.height} in the project but "
                    f"{item.width}x{item.height} in the COCO file",
                )
        else:
            member = by_path.get(item.file_name)
            candidates = [member] if member is not None else by_name.get(base, [])
            if not candidates:
                where = (
                    "in this project or in the image zip"
                    if archive is not None
                    else "in this project (send the images as a zip)"
                )
                errors.add(key, f"{label}: no image of that name {where}")
            elif len(candidates) > 1:
                errors.add(key, f"{label}: {len(candidates)} files of that name in the image zip")
            elif candidates[0].file_size > max_bytes:
                errors.add(key, f"{label}: {candidates[0].file_size} bytes exceeds the limit of {max_bytes}")
            else:
                item.zip_member = candidates[0].filename


def _parse_annotations(
    raw: list[Any],
    images: Mapping[int, _CocoImage],
    categories: Mapping[int, _Category],
    result: CocoImportResult,
    errors: ImportErrors,
    multipart: str = "merge",
) -> None:
    """Validate every annotation like any cell and attach it to its image (each part its own
    cell when ``multipart`` splits a segmentation of several polygons)."""
    seen: dict[int, int] = {}
    max_vertices = settings.CELL_MAX_VERTICES
    for index, item in enumerate(raw):
        key = f"annotations.{index}"
        if not isinstance(item, dict):
            errors.add(key, "must be an object with id, image_id, category_id and segmentation")
            continue
        ann_id: Any = item.get("id")
        missing = [k for k in ("id", "image_id", "category_id", "segmentation") if k not in item]
        if missing:
            errors.add(key, f"annotation {ann_id!r}: missing key(s) {', '.join(missing)}")
            continue
        wrong = [k for k in ("id", "image_id", "category_id") if not _is_int(item[k])]
        if wrong:
            errors.add(key, f"annotation {ann_id!r}: {', '.join(wrong)} must be integer(s)")
            continue
        if ann_id in seen:
            errors.add(key, f"annotation id {ann_id} collides with annotations.{seen[ann_id]}")
            continue
        seen[ann_id] = index
        image = images.get(item["image_id"])
        if image is None:
            errors.add(key, f"annotation {ann_id}: image_id {item['image_id']} is not an image of this file")
            continue
        where = f"annotation {ann_id} on image {image.coco_id} {image.file_name!r}"
        category = categories.get(item["category_id"])
        if category is None:
            errors.add(key, f"{where}: category_id {item['category_id']} is not a category of this file")
            continue
        crowd = item.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, bool):
            errors.add(key, f"{where}: iscrowd must be 0 or 1")
            continue
        if crowd == 1:
            # A crowd region outlines a group of objects, not one cell: reported, not imported.
            result.skipped_crowd += 1
            if len(result.skipped) < IMPORT_MAX_SKIPPED:
                result.skipped.append(
                    {
                        "annotation": ann_id,
                        "image": image.coco_id,
                        "reason": "iscrowd=1: a crowd region is not one cell",
                    }
                )
            continue
        segmentation = item["segmentation"]
        try:
            if isinstance(segmentation, list):
                outcome = parts_to_polygons(
                    coco.polygon_parts(segmentation),
                    mode=multipart,
                    width=image.width,
                    height=image.height,
                    max_vertices=max_vertices,
                )
                polygons, warnings = outcome.polygons, []
                result.multipart_merged += int(outcome.merged)
                result.multipart_split += int(outcome.split)
            else:
                outline = coco.segmentation_points(segmentation, height=image.height, width=image.width)
                polygons = [
                    polygon_clean(outline.points, width=image.width, height=image.height, max_vertices=max_vertices)
                ]
                warnings = outline.warnings
        except (coco.SegmentationError, GeometryError) as exc:
            errors.add(key, f"{where}: {exc}")
            continue
        result.warnings.extend(f"{where}: {w}" for w in warnings[:1] if len(result.warnings) < 100)
        for part, polygon in enumerate(polygons):
            result.repaired += int(polygon.repaired)
            image.cells.append(
                {
                    "annotation_id": ann_id,
                    "part": part if len(polygons) > 1 else None,
                    "category": category,
                    "polygon": polygon,
                }
            )


def _upload_from_zip(
    project: Project, item: _CocoImage, archive: zipfile.ZipFile, user: User, written: list[str]
) -> Image:
    assert item.zip_member is not None
    limit = settings.IMAGE_MAX_UPLOAD_BYTES
    with archive.open(item.zip_member) as member:
        data = member.read(limit + 1)
    name = PurePosixPath(item.file_name).name
    key = f"images.{item.index}"
    if len(data) > limit:
        raise ServiceValidationError("Import rejected; nothing was stored.", {key: f"{name}: exceeds {limit} bytes"})
    try:
        image = image_upload_many(
            project=project, files=[_ZipUpload(name, data)], metadata=item.metadata, uploaded_by=user
        )[0]
    except ServiceValidationError as exc:
        reasons = "; ".join(f"{k}: {v}" if not k.startswith("files") else str(v) for k, v in exc.errors.items())
        raise ServiceValidationError("Import rejected; nothing was stored.", {key: reasons or exc.detail}) from exc
    written.extend(f.name for f in (image.original, image.display, image.thumbnail) if f.name)
    if (image.width, image.height) != (item.width, item.height):
        raise ServiceValidationError(
            "Import rejected; nothing was stored.",
            {key: f"{name} is {image.width}x{image.height} but {item.width}x{item.height} in the COCO file"},
        )
    return image


def coco_import(
    *,
    project: Project,
    user: User,
    coco_file: UploadLike,
    images_zip: UploadLike | None = None,
    dry_run: bool = False,
    unknown_categories: str = "reject",
    multipart: str = "merge",
) -> CocoImportResult:
    """Import a COCO file into the annotation layer of a project's images.

    Images are matched by file name within the project, else uploaded from ``images_zip``
    (through ``image_upload_many``); categories are mapped to classes by name (unknown ones
    rejected, or created with ``unknown_categories="create"``); polygons and RLE (its outer
    contour) are accepted, every cell is validated like any other, and each image's cells are
    appended to its annotation layer as one revision (action ``import``, source ``import``).
    A segmentation of several polygons is one cell when they overlap or touch, several cells, or
    refused, by ``multipart`` (``merge``, ``split``, ``refuse``; see interchange.services.parts).
    Crowd annotations (``iscrowd: 1``) are not imported; the result lists them in ``skipped``.

    Atomic: any error raises ServiceValidationError (errors keyed ``images.<i>``,
    ``categories.<i>``, ``annotations.<i>``, naming the image and annotation id and the reason)
    and nothing is stored, image files included. ``dry_run`` does everything, reports what would
    happen, then rolls it all back.
    """
    if unknown_categories not in ("reject", "create"):
        raise ServiceValidationError("Invalid import options.", {"unknown_categories": "must be reject or create"})
    if multipart not in MULTIPART_CHOICES:
        raise ServiceValidationError("Invalid import options.", {"multipart": "must be merge, split or refuse"})
    raw_images, raw_categories, raw_annotations = _parse_top(_load_json(coco_file))
    errors = ImportErrors()
    result = CocoImportResult(dry_run=dry_run)
    images = _parse_images(raw_images, errors)
    categories = _parse_categories(raw_categories, errors)
    to_create = _resolve_categories(project, categories, unknown_categories, errors)
    archive = _open_zip(images_zip)
    _resolve_images(project, images, archive, errors)
    _parse_annotations(
        raw_annotations, {i.coco_id: i for i in images}, {c.coco_id: c for c in categories}, result, errors, multipart
    )
    limit = settings.CELL_MAX_PER_IMAGE
    existing_counts = dict(
        Cell.objects.filter(image_id__in=[i.image.pk for i in images if i.image is not None], layer=Layer.ANNOTATION)
        .order_by()
        .values_list("image_id")
        .annotate(n=Count("id"))
    )
    for item in images:
        total = len(item.cells) + (existing_counts.get(item.image.pk, 0) if item.image is not None else 0)
        if total > limit:
            errors.add(
                f"images.{item.index}",
                f"image {item.coco_id} {item.file_name!r}: {total} cells exceed the limit of {limit} per image",
            )
    errors.raise_if_any("The COCO file cannot be imported; nothing was stored.")

    written: list[str] = []
    try:
        with transaction.atomic():
            _import_write(project, user, images, to_create, archive, result, written)
            if dry_run:
                raise _Rollback
    except _Rollback:
        pass
    except BaseException:
        stored_files_delete(written)
        raise
    finally:
        if archive is not None:
            archive.close()
    if dry_run:
        stored_files_delete(written)
        result.created_images = []
        for entry in result.per_image:
            if entry["action"] == "uploaded":
                entry["image_id"] = None
    return result


def _import_write(
    project: Project,
    user: User,
    images: list[_CocoImage],
    to_create: list[_Category],
    archive: zipfile.ZipFile | None,
    result: CocoImportResult,
    written: list[str],
) -> None:
    from annotations.services.projects import cell_class_create

    for category in to_create:
        category.cell_class = cell_class_create(
            project=project, name=category.name, color=category.color, model_label=category.model_label
        )
        result.categories_created.append(category.name)
    for item in images:
        if item.image is None:
            assert archive is not None
            item.image = _upload_from_zip(project, item, archive, user, written)
            result.created_images.append(item.image)
            result.images_uploaded += 1
            action = "uploaded"
        else:
            result.images_matched += 1
            action = "matched"
        result.per_image.append(
            {
                "coco_id": item.coco_id,
                "file_name": item.file_name,
                "image_id": item.image.pk,
                "action": action,
                "cells": len(item.cells),
            }
        )
    targets = [i for i in images if i.cells]
    locked = {
        image.pk: image
        for image in Image.objects.select_for_update().filter(pk__in=[i.image.pk for i in targets if i.image])
    }
    for item in sorted(targets, key=lambda i: i.image.pk if i.image else 0):
        assert item.image is not None
        image = locked[item.image.pk]
        desired = [
            {
                "id": None,
                "class_id": cell["category"].cell_class.pk,
                "polygon": cell["polygon"],
                "source": CellSource.IMPORT,
                "provenance": {"import": "coco", "coco_annotation_id": cell["annotation_id"]}
                | ({"coco_part": cell["part"]} if cell["part"] is not None else {}),
            }
            for cell in item.cells
        ]
        annotation_layer_write(
            image=image, user=user, base_revision=image.revision, desired=desired, action="import", keep_missing=True
        )
        result.cells += len(desired)
    audit_record(
        project=project,
        actor=user,
        action="coco.import",
        after=result.as_dict() | {"per_image": len(result.per_image), "skipped": len(result.skipped)},
    )
