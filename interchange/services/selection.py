"""What an export contains: its options (parsed and validated from the query string) and the
queries that select images, classes and cells in batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from annotations.models import Bethesda, Cell, CellClass, Image, ImageStatus, Layer, Project, Split
from annotations.selectors import cells_in_box_filter
from core.errors import ServiceValidationError

logger = logging.getLogger(__name__)


EXPORT_ASYNC_CELL_THRESHOLD = 200_000


EXPORT_ASYNC_IMAGE_THRESHOLD = 1_000  # exports that carry image files (zip, nnU-Net, Cellpose)


EXPORT_JOB_TTL_HOURS = 24


IMAGE_BATCH = 500  # images per query


CELL_BATCH = 20_000  # cells per image batch (whole images; one image may exceed it)


CELL_CHUNK = 2_000  # rows per fetch of a cell query


EXPORT_CROP_SIZE = 1_024  # px: the side of the crops a tiled image's nnU-Net / Cellpose export is cut into


KINDS = ("coco", "coco_zip", "geojson", "nnunet", "cellpose")


IMAGE_KINDS = ("coco_zip", "nnunet", "cellpose")


def setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


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
    # images without selected cells too (COCO: on the verified layer, images nobody verified)
    include_empty: bool = False

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
    "coco": ("segmentation", "gzip", "include_empty"),
    "coco_zip": ("segmentation", "include_empty"),
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


def export_images(*, project: Project, filters: ExportFilters, include_empty: bool = True) -> QuerySet[Image]:
    """The images an export holds, by id. Without ``include_empty`` only those with a selected
    cell, and on the verified layer those verified with none (an empty ground truth is real
    there; an image nobody verified is not a ground truth at all)."""
    queryset = Image.objects.filter(project=project)
    if filters.splits:
        queryset = queryset.filter(split__in=filters.splits)
    if filters.bethesda:
        queryset = queryset.filter(bethesda__in=filters.bethesda)
    if filters.image_ids:
        queryset = queryset.filter(pk__in=filters.image_ids)
    if not include_empty:
        has_cells = Exists(Cell.objects.filter(_cell_filter(filters), image_id=OuterRef("pk")))
        if filters.layer == Layer.VERIFIED:
            queryset = queryset.filter(has_cells | Q(status=ImageStatus.VERIFIED))
        else:
            queryset = queryset.filter(has_cells)
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


def export_classes(project: Project, filters: ExportFilters) -> list[CellClass]:
    classes = project.classes.order_by("pk")
    if filters.class_ids:
        classes = classes.filter(pk__in=filters.class_ids)
    return list(classes)


def image_batches(
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


def cells_for(image_ids: Sequence[int], filters: ExportFilters, *fields: Any, **annotations: Any) -> Iterator[Any]:
    """``values_list`` rows of the selected cells of ``image_ids``, by (image, id), streamed."""
    queryset = Cell.objects.filter(_cell_filter(filters), image_id__in=image_ids)
    if annotations:
        queryset = queryset.annotate(**annotations)
    return queryset.order_by("image_id", "id").values_list(*fields).iterator(chunk_size=CELL_CHUNK)


def cells_in_box(image_id: int, filters: ExportFilters, box: tuple[float, float, float, float], *fields: Any) -> Any:
    """``values_list`` rows of the selected cells of one image whose bounding box meets ``box``
    (x0, y0, x1, y1, full-resolution pixels; the GiST index on PostgreSQL), by id (paint
    order), streamed."""
    selected = Cell.objects.filter(_cell_filter(filters), image_id=image_id)
    queryset = cells_in_box_filter(selected, image_id=image_id, box=box)
    return queryset.order_by("id").values_list(*fields).iterator(chunk_size=CELL_CHUNK)
