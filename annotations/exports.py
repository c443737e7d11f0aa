"""Exports (COCO, COCO + images zip, QuPath GeoJSON, nnU-Net raw dataset, Cellpose training data)
and the COCO import.

Exports stream: every kind is a generator of byte chunks that reads images in batches and cells
with ``.iterator()``, so memory does not grow with the number of cells. The same generator feeds
an HTTP response (``StreamingHttpResponse``) or, for a large export or on request, a Celery job
that writes it to a file under ``MEDIA_ROOT/exports`` which members may download until it expires.

Ids are stable: a COCO image id is the platform's ``Image.pk``, an annotation id ``Cell.pk``, a
category id ``CellClass.pk``.

The import appends cells to the annotation layer of each image through the revision mechanism
(``services._apply_layer``, one revision per image, action ``import``), after validating every
cell like any other (``annotations.geometry.polygon_clean``); it is atomic: on any error nothing
is stored, image files included.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import secrets
import tempfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import IO, Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, F, Max, Q, QuerySet, TextField
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast
from django.http import Http404
from django.utils import timezone

from annotations import coco
from annotations.errors import ConflictError, ServiceValidationError
from annotations.geometry import GeometryError, polygon_clean
from annotations.models import (
    Bethesda,
    Cell,
    CellClass,
    CellSource,
    ExportJob,
    ExportStatus,
    Image,
    Layer,
    Project,
    Split,
)
from annotations.selectors import UserLike, project_get_for_user
from annotations.services import METADATA_FIELDS, UploadLike, _apply_layer, audit_record, image_upload_many

logger = logging.getLogger(__name__)

# --- limits (settings override the defaults) -----------------------------------------------

EXPORT_ASYNC_CELL_THRESHOLD = 200_000
EXPORT_ASYNC_IMAGE_THRESHOLD = 1_000  # exports that carry image files (zip, nnU-Net, Cellpose)
EXPORT_JOB_TTL_HOURS = 24
COCO_IMPORT_MAX_BYTES = 100 * 1024 * 1024
COCO_IMPORT_MAX_ZIP_BYTES = 4 * 1024 * 1024 * 1024
IMPORT_MAX_ERRORS = 100

IMAGE_BATCH = 500  # images per query
CELL_BATCH = 20_000  # cells per image batch (whole images; one image may exceed it)
CELL_CHUNK = 2_000  # rows per fetch of a cell query
CHUNK_BYTES = 256 * 1024  # size of the chunks the generators yield

KINDS = ("coco", "coco_zip", "geojson", "nnunet", "cellpose")
IMAGE_KINDS = ("coco_zip", "nnunet", "cellpose")


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    """Which cells and images an export holds. Empty tuples mean "all"."""

    layer: str = Layer.ANNOTATION
    model_version_id: int | None = None
    splits: tuple[str, ...] = ()
    bethesda: tuple[str, ...] = ()
    class_ids: tuple[int, ...] = ()
    image_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ExportOptions:
    kind: str
    filters: ExportFilters = field(default_factory=ExportFilters)
    segmentation: str = "polygon"  # coco, coco_zip: polygon | rle
    gzip: bool = False  # coco: a .json.gz file
    object_type: str = ""  # geojson: annotation | detection ("" = by layer)
    dataset_id: int = 500  # nnunet
    include_empty: bool = False  # nnunet, cellpose: images without cells too

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportOptions:
        raw = dict(data)
        filters = dict(raw.pop("filters", {}))
        for key in ("splits", "bethesda", "class_ids", "image_ids"):
            filters[key] = tuple(filters.get(key, ()))
        return cls(filters=ExportFilters(**filters), **raw)


COMMON_PARAMS = ("layer", "model_version", "split", "bethesda", "class_ids", "image_ids", "async")
KIND_PARAMS: dict[str, tuple[str, ...]] = {
    "coco": ("segmentation", "gzip"),
    "coco_zip": ("segmentation",),
    "geojson": ("object_type",),
    "nnunet": ("dataset_id", "include_empty"),
    "cellpose": ("include_empty",),
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def _flag(value: str, name: str, errors: dict[str, str]) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered not in _FALSE:
        errors[name] = "must be 1 or 0"
    return False


def _id_list(value: str, name: str, errors: dict[str, str]) -> tuple[int, ...]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        errors[name] = "must be a comma-separated list of ids, e.g. 1,2,3"
        return ()
    return tuple(dict.fromkeys(int(p) for p in parts))


def _choice_list(value: str, name: str, allowed: Sequence[str], errors: dict[str, str]) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    bad = [p for p in parts if p not in allowed]
    if not parts or bad:
        errors[name] = f"must be one or more of {', '.join(allowed)} (comma-separated)"
    return parts


def export_options_parse(*, project: Project, kind: str, params: Mapping[str, str]) -> tuple[ExportOptions, bool]:
    """Validate the query parameters of an export; returns the options and whether the caller
    asked for a background job (``async=1``). Errors name the parameter (HTTP 400)."""
    if kind not in KINDS:
        raise ServiceValidationError("Unknown export.", {"kind": f"must be one of {', '.join(KINDS)}"})
    allowed = (*COMMON_PARAMS, *KIND_PARAMS[kind])
    errors: dict[str, str] = {name: "unknown parameter for this export" for name in params if name not in allowed}
    layer = params.get("layer") or Layer.ANNOTATION
    if layer == "proposals":
        layer = Layer.PROPOSAL
    if layer not in Layer.values:
        errors["layer"] = f"must be one of {', '.join(Layer.values)}"
    model_version_id: int | None = None
    raw_version = params.get("model_version", "")
    if raw_version:
        if not raw_version.isdigit():
            errors["model_version"] = "must be the id of a model version"
        elif layer != Layer.PROPOSAL:
            errors["model_version"] = "only applies to layer=proposal"
        else:
            from training.models import ModelVersion  # the registry lives in the training app

            model_version_id = int(raw_version)
            if not ModelVersion.objects.filter(pk=model_version_id, project=project).exists():
                errors["model_version"] = f"{model_version_id} is not a model version of this project"
    elif layer == Layer.PROPOSAL:
        errors["model_version"] = "required with layer=proposal (proposals are per model version)"
    splits = _choice_list(params["split"], "split", Split.values, errors) if params.get("split") else ()
    bethesda = _choice_list(params["bethesda"], "bethesda", Bethesda.values, errors) if params.get("bethesda") else ()
    class_ids: tuple[int, ...] = ()
    if "class_ids" in params:
        class_ids = _id_list(params["class_ids"], "class_ids", errors)
        unknown = sorted(set(class_ids) - set(project.classes.values_list("pk", flat=True)))
        if class_ids and unknown:
            errors["class_ids"] = f"not classes of this project: {unknown[:20]}"
    image_ids: tuple[int, ...] = ()
    if "image_ids" in params:
        image_ids = _id_list(params["image_ids"], "image_ids", errors)
        found = set(Image.objects.filter(project=project, pk__in=image_ids).values_list("pk", flat=True))
        unknown = sorted(set(image_ids) - found)
        if image_ids and unknown:
            errors["image_ids"] = f"not images of this project: {unknown[:20]}"
    segmentation = params.get("segmentation") or "polygon"
    if segmentation not in ("polygon", "rle"):
        errors["segmentation"] = "must be polygon or rle"
    object_type = params.get("object_type", "")
    if object_type not in ("", "annotation", "detection"):
        errors["object_type"] = "must be annotation or detection"
    dataset_id = 500
    if params.get("dataset_id"):
        raw_id = params["dataset_id"]
        if not raw_id.isdigit() or not 1 <= int(raw_id) <= 999:
            errors["dataset_id"] = "must be a number from 1 to 999"
        else:
            dataset_id = int(raw_id)
    gzip = _flag(params.get("gzip", ""), "gzip", errors)
    include_empty = _flag(params.get("include_empty", ""), "include_empty", errors)
    wants_async = _flag(params.get("async", ""), "async", errors)
    if errors:
        raise ServiceValidationError("Invalid export parameters.", errors)
    filters = ExportFilters(
        layer=layer,
        model_version_id=model_version_id,
        splits=splits,
        bethesda=bethesda,
        class_ids=class_ids,
        image_ids=image_ids,
    )
    options = ExportOptions(
        kind=kind,
        filters=filters,
        segmentation=segmentation,
        gzip=gzip,
        object_type=object_type,
        dataset_id=dataset_id,
        include_empty=include_empty,
    )
    return options, wants_async


# --- selection -----------------------------------------------------------------------------


def export_images(*, project: Project, filters: ExportFilters) -> QuerySet[Image]:
    """The images an export holds, by id."""
    queryset = Image.objects.filter(project=project)
    if filters.splits:
        queryset = queryset.filter(split__in=filters.splits)
    if filters.bethesda:
        queryset = queryset.filter(bethesda__in=filters.bethesda)
    if filters.image_ids:
        queryset = queryset.filter(pk__in=filters.image_ids)
    return queryset.order_by("pk")


def _cell_filter(filters: ExportFilters) -> Q:
    condition = Q(layer=filters.layer)
    if filters.model_version_id is not None:
        condition &= Q(model_version_id=filters.model_version_id)
    if filters.class_ids:
        condition &= Q(cell_class_id__in=filters.class_ids)
    return condition


def export_cell_counts(*, project: Project, filters: ExportFilters) -> dict[int, int]:
    """Number of exported cells per image id (images without cells are absent)."""
    rows = (
        Cell.objects.filter(_cell_filter(filters), image__in=export_images(project=project, filters=filters))
        .order_by()
        .values_list("image_id")
        .annotate(n=Count("id"))
    )
    return {int(image_id): int(n) for image_id, n in rows}


def _export_classes(project: Project, filters: ExportFilters) -> list[CellClass]:
    classes = project.classes.order_by("pk")
    if filters.class_ids:
        classes = classes.filter(pk__in=filters.class_ids)
    return list(classes)


def _image_batches(
    images: QuerySet[Image], counts: Mapping[int, int], fields: Sequence[str]
) -> Iterator[list[dict[str, Any]]]:
    """Image rows in id order, in batches of at most IMAGE_BATCH images and (whole images) about
    CELL_BATCH cells: keyset pagination, one query per IMAGE_BATCH images."""
    last = 0
    while True:
        rows = list(images.filter(pk__gt=last).values("id", *fields)[:IMAGE_BATCH])
        if not rows:
            return
        batch: list[dict[str, Any]] = []
        cells = 0
        for row in rows:
            n = counts.get(row["id"], 0)
            if batch and cells + n > CELL_BATCH:
                yield batch
                batch, cells = [], 0
            batch.append(row)
            cells += n
        if batch:
            yield batch
        last = rows[-1]["id"]


def _cells_for(image_ids: Sequence[int], filters: ExportFilters, *fields: Any, **annotations: Any) -> Iterator[Any]:
    """``values_list`` rows of the selected cells of ``image_ids``, by (image, id), streamed."""
    queryset = Cell.objects.filter(_cell_filter(filters), image_id__in=image_ids)
    if annotations:
        queryset = queryset.annotate(**annotations)
    return queryset.order_by("image_id", "id").values_list(*fields).iterator(chunk_size=CELL_CHUNK)


# --- chunking, gzip, zip -------------------------------------------------------------------


class _Chunks:
    """Collects text and hands it out in pieces of about CHUNK_BYTES."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    @property
    def full(self) -> bool:
        return self.size >= CHUNK_BYTES

    def take(self) -> bytes:
        data = "".join(self.parts).encode()
        self.parts, self.size = [], 0
        return data


def gzip_chunks(chunks: Iterable[bytes], level: int = 1) -> Iterator[bytes]:
    """A gzip stream (one member) of ``chunks``. Level 1 by default: for streamed JSON it costs a
    quarter of level 6's time for about 13% more bytes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        data = compressor.compress(chunk)
        if data:
            yield data
    yield compressor.flush()


class _ZipSink(io.RawIOBase):
    """A write-only, non-seekable file that zipfile writes into and the generator drains."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []
        self.size = 0
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.size += len(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        return data


_STORED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gz", ".zip")
ZipEntry = tuple[str, bytes | Iterable[bytes]]


def zip_stream(entries: Iterable[ZipEntry]) -> Iterator[bytes]:
    """A zip archive of ``(name, bytes or chunks)`` entries, streamed (entries with data
    descriptors, ZIP64). Compressed image files are stored, everything else deflated."""
    sink = _ZipSink()
    stamp = timezone.now().timetuple()[:6]
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:  # type: ignore[arg-type]
        for name, content in entries:
            info = zipfile.ZipInfo(name, date_time=stamp)
            stored = name.lower().endswith(_STORED_SUFFIXES)
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            if isinstance(content, bytes):
                archive.writestr(info, content)
            else:
                with archive.open(info, "w", force_zip64=True) as entry:
                    for chunk in content:
                        entry.write(chunk)
                        if sink.size >= CHUNK_BYTES:
                            yield sink.take()
            if sink.size >= CHUNK_BYTES:
                yield sink.take()
    yield sink.take()


# --- COCO ----------------------------------------------------------------------------------

ProgressFn = Callable[[int], None]


def _json_number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "null"
    return repr(float(value))


def _hex_rgb(color: str) -> list[int]:
    try:
        return [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    except (ValueError, IndexError):
        return [31, 119, 180]


def _coco_image(row: Mapping[str, Any], file_name: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "file_name": file_name,
        "width": row["width"],
        "height": row["height"],
        "license": 0,
        "date_captured": row["created_at"].isoformat() if row.get("created_at") else "",
        "bethesda": row["bethesda"],
        "split": row["split"],
        "stain": row["stain"],
        "magnification": row["magnification"],
        "slide_code": row["slide_code"],
        "status": row["status"],
        "sha256": row["sha256"],
    }


IMAGE_FIELDS = (
    "file_name",
    "width",
    "height",
    "created_at",
    "bethesda",
    "split",
    "stain",
    "magnification",
    "slide_code",
    "status",
    "sha256",
)
_COCO_CELL_FIELDS = (
    "id",
    "image_id",
    "cell_class_id",
    "polygon_text",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "score",
    "source",
    "model_version_id",
    "verified_by",
    "layer",
    "state",
)


def verified_by_of(provenance: Mapping[str, Any]) -> Any:
    """Who verified a cell of the verified layer: the provenance's ``verified_by`` if it has one,
    else the experts whose reviews endorsed the cell (accepted, edited or added it) and the
    adjudicator who resolved its dispute, as sorted user ids; None when nothing says."""
    if "verified_by" in provenance:
        return provenance["verified_by"]
    ids: set[int] = set()
    for key in ("accepted_by", "edited_by", "added_by"):
        value = provenance.get(key)
        if isinstance(value, list):
            ids.update(i for i in value if isinstance(i, int))
    adjudicator = provenance.get("adjudicated_by")
    if isinstance(adjudicator, int):
        ids.add(adjudicator)
    return sorted(ids) or None


def _coco_annotation_lines(
    rows: list[tuple[Any, ...]], *, height: int, width: int, rle: bool, sources: dict[str, str]
) -> list[str]:
    """The JSON of one image's annotations (areas and RLE through one pycocotools call)."""
    flats = [coco.polygon_text_flat(row[3]) for row in rows]
    numbers = coco.flats_numbers(flats)
    rles = coco.rles_from_flat(numbers, height=height, width=width)
    areas = coco.rle_areas(rles)
    lines = []
    for row, flat, rle_value, area in zip(rows, flats, rles, areas, strict=True):
        cell_id, image_id, class_id, _, x, y, w, h, score, source, version, verified_by, layer, state = row
        if source not in sources:
            sources[source] = json.dumps(source)
        if isinstance(verified_by, dict):  # the whole provenance of a verified cell
            verified_by = verified_by_of(verified_by)
        segmentation = json.dumps(coco.rle_json(rle_value)) if rle else f"[[{flat}]]"
        # Proposals carry their review state: open, accepted or rejected.
        extra = f',"state":{json.dumps(state or "open")}' if layer == Layer.PROPOSAL else ""
        lines.append(
            f'{{"id":{cell_id},"image_id":{image_id},"category_id":{class_id},"segmentation":{segmentation},'
            f'"area":{area!r},"bbox":[{x!r},{y!r},{w!r},{h!r}],"iscrowd":0,"score":{_json_number(score)},'
            f'"model_version":{"null" if version is None else int(version)},'
            f'"verified_by":{"null" if verified_by is None else json.dumps(verified_by)},'
            f'"source":{sources[source]}{extra}}}'
        )
    return lines


def _frozen(images: QuerySet[Image], upto_image_id: int | None = None) -> QuerySet[Image]:
    """``images`` without those created after this call (or after ``upto_image_id``)."""
    if upto_image_id is None:
        upto_image_id = images.aggregate(newest=Max("pk"))["newest"] or 0
    return images.filter(pk__lte=upto_image_id)


def _grouped(rows: Iterable[tuple[Any, ...]], limit: int = 250) -> Iterator[list[tuple[Any, ...]]]:
    """Consecutive rows of the same image (``row[1]``), at most ``limit`` at a time."""
    group: list[tuple[Any, ...]] = []
    for row in rows:
        if group and (row[1] != group[0][1] or len(group) >= limit):
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def coco_export_stream(
    *,
    project: Project,
    filters: ExportFilters,
    segmentation: str = "polygon",
    file_names: Mapping[int, str] | None = None,
    progress: ProgressFn | None = None,
    upto_image_id: int | None = None,
) -> Iterator[bytes]:
    """The COCO JSON of a project's selected cells as chunks of bytes (bounded memory).

    ``info``, ``licenses``, ``categories`` (the project's classes, id = CellClass.pk, with
    ``color`` and ``model_label``), ``images`` (id = Image.pk, file_name, width, height and the
    platform's metadata), ``annotations`` (id = Cell.pk; polygon or compressed RLE; ``area`` as
    pycocotools computes it; ``bbox`` [x, y, w, h]; ``iscrowd`` 0; extra keys ``score``,
    ``model_version``, ``verified_by``, ``source`` and, for proposals, ``state``). ``file_names``
    overrides image file names (the zip export makes them unique). ``progress`` gets the number
    of cells written so far after each batch. The images are those that exist when the stream
    starts (up to ``upto_image_id`` if given), so that both passes over them agree.
    """
    rle = segmentation == "rle"
    images = _frozen(export_images(project=project, filters=filters), upto_image_id)
    counts = export_cell_counts(project=project, filters=filters)
    categories = [
        {
            "id": c.pk,
            "name": c.name,
            "supercategory": "cell",
            "color": c.color,
            "model_label": c.model_label,
        }
        for c in _export_classes(project, filters)
    ]
    info = {
        "description": f"{project.name}: {filters.layer} layer",
        "version": "1.0",
        "year": timezone.now().year,
        "contributor": "cytoplatform",
        "url": "",
        "date_created": timezone.now().isoformat(),
        "project_id": project.pk,
        "layer": filters.layer,
        "model_version": filters.model_version_id,
        "segmentation": segmentation,
        "filters": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(filters).items()},
    }
    out = _Chunks()
    out.add(f'{{"info":{json.dumps(info)},"licenses":[{{"id":0,"name":"","url":""}}],')
    out.add(f'"categories":{json.dumps(categories)},"images":[')
    separator = ""
    for batch in _image_batches(images, counts, IMAGE_FIELDS):
        for row in batch:
            name = file_names.get(row["id"], row["file_name"]) if file_names else row["file_name"]
            out.add(separator + json.dumps(_coco_image(row, name)))
            separator = ","
        if out.full:
            yield out.take()
    out.add('],"annotations":[')
    separator = ""
    done = 0
    sources: dict[str, str] = {}
    polygon_text = Cast("polygon", TextField())
    # The verified layer's provenance says who verified a cell (verified_by_of); elsewhere only
    # an explicit verified_by key does, fetched alone.
    verified_by = F("provenance") if filters.layer == Layer.VERIFIED else KeyTransform("verified_by", "provenance")
    for batch in _image_batches(images, counts, ("width", "height")):
        sizes = {row["id"]: (row["height"], row["width"]) for row in batch if counts.get(row["id"])}
        if not sizes:
            continue
        rows = _cells_for(list(sizes), filters, *_COCO_CELL_FIELDS, polygon_text=polygon_text, verified_by=verified_by)
        for group in _grouped(rows):
            height, width = sizes[group[0][1]]
            for line in _coco_annotation_lines(group, height=height, width=width, rle=rle, sources=sources):
                out.add(separator + line)
                separator = ","
                if out.full:
                    yield out.take()
            done += len(group)
        if progress is not None:
            progress(done)
    out.add("]}")
    yield out.take()


# --- zip with images, GeoJSON, nnU-Net, Cellpose ---------------------------------------------


def _unique_names(images: QuerySet[Image]) -> dict[int, str]:
    """A file name per image, unique within the export (``name-<id>.ext`` on collisions)."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for image_id, file_name in images.values_list("pk", "file_name").iterator(chunk_size=IMAGE_BATCH):
        name = file_name.replace("/", "_") or f"image-{image_id}"
        if name.lower() in taken:
            path = PurePosixPath(name)
            name = f"{path.stem}-{image_id}{path.suffix}"
        taken.add(name.lower())
        names[image_id] = name
    return names


def _read(stored: Any) -> bytes:
    with stored.open("rb") as handle:
        return bytes(handle.read())


def coco_zip_stream(
    *, project: Project, filters: ExportFilters, segmentation: str = "polygon", progress: ProgressFn | None = None
) -> Iterator[bytes]:
    """A zip with ``annotations.json`` (COCO) and ``images/<file_name>`` (the original files)."""
    images = _frozen(export_images(project=project, filters=filters))
    names = _unique_names(images)
    upto = max(names, default=0)

    def entries() -> Iterator[ZipEntry]:
        yield (
            "annotations.json",
            coco_export_stream(
                project=project, filters=filters, segmentation=segmentation, file_names=names, upto_image_id=upto
            ),
        )
        done = 0
        for image in images.filter(pk__lte=upto).only("pk", "original").iterator(chunk_size=50):
            yield f"images/{names[image.pk]}", _read(image.original)
            done += 1
            if progress is not None:
                progress(done)

    return zip_stream(entries())


def _image_cells(
    project: Project, filters: ExportFilters, fields: Sequence[str], *, include_empty: bool = True
) -> Iterator[tuple[dict[str, Any], list[tuple[Any, ...]]]]:
    """(image row, its selected cells as ``values_list`` rows of ``cell_class_id, polygon`` + ...)
    per image, in id order; cells by id (paint order)."""
    images = export_images(project=project, filters=filters)
    counts = export_cell_counts(project=project, filters=filters)
    for batch in _image_batches(images, counts, fields):
        with_cells = [row["id"] for row in batch if counts.get(row["id"])]
        rows = (
            _cells_for(with_cells, filters, "image_id", "id", "cell_class_id", "polygon", "layer")
            if with_cells
            else iter(())
        )
        iterator = iter(rows)
        current = next(iterator, None)
        for image in batch:
            cells: list[tuple[Any, ...]] = []
            while current is not None and current[0] == image["id"]:
                cells.append(current)
                current = next(iterator, None)
            if cells or include_empty:
                yield image, cells


def geojson_feature_collection(
    cells: Iterable[tuple[Any, ...]], classes: Mapping[int, CellClass], object_type: str
) -> dict[str, Any]:
    """QuPath's GeoJSON for one image: a FeatureCollection of Polygon features with
    ``properties.objectType`` and ``properties.classification`` ``{name, color: [r, g, b]}``."""
    features = []
    for _, cell_id, class_id, polygon, layer in cells:
        ring = [list(p) for p in polygon]
        ring.append(list(polygon[0]))
        cell_class = classes[class_id]
        kind = object_type or ("detection" if layer == Layer.PROPOSAL else "annotation")
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cytoplatform:cell:{cell_id}")),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": kind,
                    "classification": {"name": cell_class.name, "color": _hex_rgb(cell_class.color)},
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def geojson_zip_stream(
    *, project: Project, filters: ExportFilters, object_type: str = "", progress: ProgressFn | None = None
) -> Iterator[bytes]:
    """A zip with one ``<image stem>.geojson`` per image, in the layout QuPath imports."""
    classes = {c.pk: c for c in project.classes.all()}

    def entries() -> Iterator[ZipEntry]:
        done = 0
        taken: set[str] = set()
        for image, cells in _image_cells(project, filters, ("file_name",)):
            stem = PurePosixPath(image["file_name"].replace("/", "_")).stem or "image"
            if stem.lower() in taken:
                stem = f"{stem}-{image['id']}"
            taken.add(stem.lower())
            collection = geojson_feature_collection(cells, classes, object_type)
            yield f"{stem}.geojson", json.dumps(collection).encode()
            done += len(cells)
            if progress is not None:
                progress(done)

    return zip_stream(entries())


def _dataset_cases(
    project: Project, filters: ExportFilters, *, include_empty: bool, progress: ProgressFn | None
) -> Iterator[Any]:
    from training.datasets import DatasetCase  # Django-free writers shared with training

    labels = dict(project.classes.values_list("pk", "model_label"))
    done = 0
    for image, cells in _image_cells(
        project, filters, ("width", "height", "split", "display"), include_empty=include_empty
    ):
        with default_storage.open(image["display"], "rb") as handle:
            display = bytes(handle.read())
        yield DatasetCase(
            case_id=f"case_{image['id']:06d}",
            split=image["split"] or "train",
            image=display,
            height=image["height"],
            width=image["width"],
            polygons=[c[3] for c in cells],
            labels=[labels[c[2]] for c in cells],
        )
        done += 1
        if progress is not None:
            progress(done)


def _dataset_name(project: Project) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "_", project.name).strip("_")[:40]
    return name or f"Project{project.pk}"


def nnunet_zip_stream(
    *, project: Project, options: ExportOptions, progress: ProgressFn | None = None
) -> Iterator[bytes]:
    """A zip of the nnU-Net v2 raw dataset (training.datasets.nnunet_raw_dataset_files)."""
    from training.datasets import nnunet_raw_dataset_files

    cases = _dataset_cases(project, options.filters, include_empty=options.include_empty, progress=progress)
    return zip_stream(
        nnunet_raw_dataset_files(dataset_id=options.dataset_id, dataset_name=_dataset_name(project), cases=cases)
    )


def cellpose_zip_stream(
    *, project: Project, options: ExportOptions, progress: ProgressFn | None = None
) -> Iterator[bytes]:
    """A zip of Cellpose training data (training.datasets.cellpose_dataset_files)."""
    from training.datasets import cellpose_dataset_files

    cases = _dataset_cases(project, options.filters, include_empty=options.include_empty, progress=progress)
    return zip_stream(cellpose_dataset_files(cases=cases))


# --- dispatch: stream or job ----------------------------------------------------------------


@dataclass
class ExportStream:
    chunks: Iterator[bytes]
    file_name: str
    content_type: str
    content_encoding: str | None = None


def export_stream(
    *,
    project: Project,
    options: ExportOptions,
    accept_gzip: bool = False,
    progress: ProgressFn | None = None,
    gzip_level: int = 1,
) -> ExportStream:
    """The bytes of an export (lazily), with the name and content type to offer them under.
    A COCO export is a ``.json.gz`` file with ``gzip``, or gzip content-encoded when the client
    accepts it (``accept_gzip``); ``gzip_level`` 1 suits streaming, a stored file may take more."""
    filters = options.filters
    base = f"project-{project.pk}-{filters.layer}"
    if filters.model_version_id is not None:
        base += f"-model-{filters.model_version_id}"
    kind = options.kind
    if kind == "coco":
        chunks = coco_export_stream(
            project=project, filters=filters, segmentation=options.segmentation, progress=progress
        )
        if options.gzip:
            return ExportStream(gzip_chunks(chunks, gzip_level), f"{base}-coco.json.gz", "application/gzip")
        if accept_gzip:
            return ExportStream(gzip_chunks(chunks, gzip_level), f"{base}-coco.json", "application/json", "gzip")
        return ExportStream(chunks, f"{base}-coco.json", "application/json")
    if kind == "coco_zip":
        chunks = coco_zip_stream(project=project, filters=filters, segmentation=options.segmentation, progress=progress)
        return ExportStream(chunks, f"{base}-coco.zip", "application/zip")
    if kind == "geojson":
        chunks = geojson_zip_stream(
            project=project, filters=filters, object_type=options.object_type, progress=progress
        )
        return ExportStream(chunks, f"{base}-geojson.zip", "application/zip")
    if kind == "nnunet":
        return ExportStream(
            nnunet_zip_stream(project=project, options=options, progress=progress),
            f"{base}-nnunet.zip",
            "application/zip",
        )
    return ExportStream(
        cellpose_zip_stream(project=project, options=options, progress=progress),
        f"{base}-cellpose.zip",
        "application/zip",
    )


def _export_size(project: Project, options: ExportOptions) -> tuple[int, int]:
    """(cells, images) an export holds."""
    counts = export_cell_counts(project=project, filters=options.filters)
    return sum(counts.values()), export_images(project=project, filters=options.filters).count()


def export_request(
    *, project: Project, user: User, kind: str, params: Mapping[str, str], accept_gzip: bool = False
) -> ExportStream | ExportJob:
    """Start an export: validate the parameters, then stream it, or (``async=1``, or more than
    EXPORT_ASYNC_CELL_THRESHOLD cells, or more than EXPORT_ASYNC_IMAGE_THRESHOLD images for the
    kinds that carry image files) queue a job."""
    options, wants_async = export_options_parse(project=project, kind=kind, params=params)
    if not wants_async:
        cells, images = _export_size(project, options)
        wants_async = cells > _setting("EXPORT_ASYNC_CELL_THRESHOLD", EXPORT_ASYNC_CELL_THRESHOLD) or (
            kind in IMAGE_KINDS and images > _setting("EXPORT_ASYNC_IMAGE_THRESHOLD", EXPORT_ASYNC_IMAGE_THRESHOLD)
        )
    if wants_async:
        return export_job_create(project=project, user=user, options=options)
    return export_stream(project=project, options=options, accept_gzip=accept_gzip)


def export_job_create(*, project: Project, user: User | None, options: ExportOptions) -> ExportJob:
    """Record an export job and run it on the ``default`` queue once the transaction commits."""
    from annotations.tasks import export_run  # tasks import this module

    cells, images = _export_size(project, options)
    job = ExportJob.objects.create(
        project=project,
        created_by=user,
        kind=options.kind,
        params=options.to_dict(),
        items_total=cells if options.kind in ("coco", "geojson") else images,
    )
    job_id = job.pk
    transaction.on_commit(lambda: export_run.delay(job_id))
    return job


def export_job_run(*, job_id: int) -> ExportJob:
    """Write a queued export to ``MEDIA_ROOT/exports/<project>/`` (the Celery task's body).

    Progress is saved at most once a second; a failure is recorded on the job, not raised.
    Running a job that already finished (a duplicate delivery) does nothing.
    """
    # Queued, or running when a worker died and the broker redelivered the task (acks_late).
    claimed = ExportJob.objects.filter(pk=job_id, status__in=(ExportStatus.QUEUED, ExportStatus.RUNNING)).update(
        status=ExportStatus.RUNNING, started_at=timezone.now()
    )
    job = ExportJob.objects.select_related("project").get(pk=job_id)
    if not claimed:
        return job
    options = ExportOptions.from_dict(job.params)
    last_saved = [0.0]

    def progress(done: int) -> None:
        now = time.monotonic()
        if now - last_saved[0] >= 1.0:
            last_saved[0] = now
            ExportJob.objects.filter(pk=job_id).update(items_done=done)

    try:
        stream = export_stream(project=job.project, options=options, progress=progress, gzip_level=6)
        suffix = "".join(PurePosixPath(stream.file_name).suffixes[-2:]) or ".bin"
        path = f"exports/{job.project_id}/{job.pk}-{secrets.token_hex(8)}{suffix}"
        size = 0
        with tempfile.TemporaryFile() as handle:
            for chunk in stream.chunks:
                handle.write(chunk)
                size += len(chunk)
            handle.seek(0)
            stored = default_storage.save(path, File(handle, name=stream.file_name))
    except Exception as exc:
        logger.exception("export job %s failed", job_id)
        ExportJob.objects.filter(pk=job_id).update(
            status=ExportStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
    else:
        now = timezone.now()
        ttl = timedelta(hours=_setting("EXPORT_JOB_TTL_HOURS", EXPORT_JOB_TTL_HOURS))
        ExportJob.objects.filter(pk=job_id).update(
            status=ExportStatus.DONE,
            file=stored,
            file_name=stream.file_name,
            content_type=stream.content_type,
            size_bytes=size,
            items_done=job.items_total,
            finished_at=now,
            expires_at=now + ttl,
        )
    job.refresh_from_db()
    return job


def export_job_get_for_user(*, user: UserLike, project_id: int, job_id: int) -> ExportJob:
    """A project's export job, for a user who may view the project (404/403 as for projects)."""
    project = project_get_for_user(user=user, project_id=project_id, capability="view")
    job = ExportJob.objects.filter(project=project, pk=job_id).first()
    if job is None:
        raise Http404("No such export job.")
    return job


def export_job_list(*, project: Project) -> QuerySet[ExportJob]:
    return ExportJob.objects.filter(project=project).order_by("-id")


def export_job_expired(job: ExportJob, now: datetime | None = None) -> bool:
    return job.expires_at is not None and job.expires_at <= (now or timezone.now())


class ExportGone(Exception):
    """The export's file expired (HTTP 410)."""


def export_job_open(*, job: ExportJob) -> IO[bytes]:
    """The job's file, open for reading. ConflictError (409) while it is not done, ExportGone
    (410) once it expired."""
    if job.status != ExportStatus.DONE:
        raise ConflictError(f"The export is {job.status}; there is nothing to download yet.", {"status": job.status})
    if export_job_expired(job) or not job.file:
        raise ExportGone("This export expired; start a new one.")
    try:
        return default_storage.open(job.file, "rb")
    except FileNotFoundError as exc:
        raise ExportGone("This export's file is gone; start a new one.") from exc


def export_jobs_prune() -> int:
    """Delete the files of expired exports (the jobs stay, as history); returns how many."""
    expired = ExportJob.objects.filter(expires_at__lte=timezone.now()).exclude(file="")
    count = 0
    for job in expired.iterator():
        default_storage.delete(job.file)
        ExportJob.objects.filter(pk=job.pk).update(file="")
        count += 1
    return count


# --- COCO import ---------------------------------------------------------------------------


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
            "repaired": self.repaired,
            "per_image": self.per_image,
            "warnings": self.warnings,
        }


class _Errors(dict[str, str]):
    """Error messages by key, at most IMPORT_MAX_ERRORS of them."""

    dropped = 0

    def add(self, key: str, message: str) -> None:
        if key in self:
            self[key] += f"; {message}"
        elif len(self) < IMPORT_MAX_ERRORS:
            self[key] = message
        else:
            self.dropped += 1

    def raise_if_any(self, detail: str) -> None:
        if self:
            errors = dict(self)
            if self.dropped:
                errors["more"] = f"{self.dropped} more problem(s) not listed"
            raise ServiceValidationError(detail, errors)


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
    limit = _setting("COCO_IMPORT_MAX_BYTES", COCO_IMPORT_MAX_BYTES)
    if coco_file.size is not None and coco_file.size > limit:
        raise ServiceValidationError(
            "The COCO file is too large.", {"file": f"{coco_file.size} bytes exceeds the limit of {limit} bytes"}
        )
    data = coco_file.read(limit + 1)
    if len(data) > limit:
        raise ServiceValidationError("The COCO file is too large.", {"file": f"exceeds the limit of {limit} bytes"})
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise ServiceValidationError("The COCO file is not JSON.", {"file": f"not UTF-8 text ({exc.reason})"}) from exc
    except json.JSONDecodeError as exc:
        raise ServiceValidationError(
            "The COCO file is not JSON.", {"file": f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}
        ) from exc


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


def _parse_images(raw: list[Any], errors: _Errors) -> list[_CocoImage]:
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


def _parse_categories(raw: list[Any], errors: _Errors) -> list[_Category]:
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
    project: Project, categories: list[_Category], unknown_categories: str, errors: _Errors
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
    limit = _setting("COCO_IMPORT_MAX_ZIP_BYTES", COCO_IMPORT_MAX_ZIP_BYTES)
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
    project: Project, images: list[_CocoImage], archive: zipfile.ZipFile | None, errors: _Errors
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
    errors: _Errors,
) -> None:
    """Validate every annotation like any cell and attach it to its image."""
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
            result.skipped_crowd += 1
            continue
        try:
            outline = coco.segmentation_points(item["segmentation"], height=image.height, width=image.width)
            polygon = polygon_clean(outline.points, width=image.width, height=image.height, max_vertices=max_vertices)
        except (coco.SegmentationError, GeometryError) as exc:
            errors.add(key, f"{where}: {exc}")
            continue
        result.warnings.extend(f"{where}: {w}" for w in outline.warnings[:1] if len(result.warnings) < 100)
        result.repaired += int(polygon.repaired)
        image.cells.append({"annotation_id": ann_id, "category": category, "polygon": polygon})


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
) -> CocoImportResult:
    """Import a COCO file into the annotation layer of a project's images.

    Images are matched by file name within the project, else uploaded from ``images_zip``
    (through ``image_upload_many``); categories are mapped to classes by name (unknown ones
    rejected, or created with ``unknown_categories="create"``); polygons and RLE (its outer
    contour) are accepted, every cell is validated like any other, and each image's cells are
    appended to its annotation layer as one revision (action ``import``, source ``import``).

    Atomic: any error raises ServiceValidationError (errors keyed ``images.<i>``,
    ``categories.<i>``, ``annotations.<i>``, naming the image and annotation id and the reason)
    and nothing is stored, image files included. ``dry_run`` does everything, reports what would
    happen, then rolls it all back.
    """
    if unknown_categories not in ("reject", "create"):
        raise ServiceValidationError("Invalid import options.", {"unknown_categories": "must be reject or create"})
    raw_images, raw_categories, raw_annotations = _parse_top(_load_json(coco_file))
    errors = _Errors()
    result = CocoImportResult(dry_run=dry_run)
    images = _parse_images(raw_images, errors)
    categories = _parse_categories(raw_categories, errors)
    to_create = _resolve_categories(project, categories, unknown_categories, errors)
    archive = _open_zip(images_zip)
    _resolve_images(project, images, archive, errors)
    _parse_annotations(
        raw_annotations, {i.coco_id: i for i in images}, {c.coco_id: c for c in categories}, result, errors
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
        _delete_files(written)
        raise
    finally:
        if archive is not None:
            archive.close()
    if dry_run:
        _delete_files(written)
        result.created_images = []
        for entry in result.per_image:
            if entry["action"] == "uploaded":
                entry["image_id"] = None
    return result


def _delete_files(paths: list[str]) -> None:
    for path in paths:
        default_storage.delete(path)


def _import_write(
    project: Project,
    user: User,
    images: list[_CocoImage],
    to_create: list[_Category],
    archive: zipfile.ZipFile | None,
    result: CocoImportResult,
    written: list[str],
) -> None:
    from annotations.services import cell_class_create

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
                "provenance": {"import": "coco", "coco_annotation_id": cell["annotation_id"]},
            }
            for cell in item.cells
        ]
        _apply_layer(
            image=image, user=user, base_revision=image.revision, desired=desired, action="import", keep_missing=True
        )
        result.cells += len(desired)
    audit_record(
        project=project, actor=user, action="coco.import", after=result.as_dict() | {"per_image": len(result.per_image)}
    )


__all__ = [
    "KINDS",
    "CocoImportResult",
    "ExportFilters",
    "ExportGone",
    "ExportOptions",
    "ExportStream",
    "coco_export_stream",
    "coco_import",
    "export_job_create",
    "export_job_get_for_user",
    "export_job_open",
    "export_job_run",
    "export_jobs_prune",
    "export_options_parse",
    "export_request",
    "export_stream",
]
