"""The COCO export, streamed: stable ids (image, cell and class primary keys), polygons or RLE,
pycocotools-exact areas, extra keys (score, model version, who verified)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from django.db.models import F, Max, QuerySet, TextField
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast
from django.utils import timezone

from annotations.models import Image, Layer, Project
from core.streaming import ChunkBuffer
from cytoseg import coco
from interchange.services.selection import (
    ExportFilters,
    cells_for,
    export_cell_counts,
    export_classes,
    export_images,
    image_batches,
)

ProgressFn = Callable[[int], None]

logger = logging.getLogger(__name__)


def _json_number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "null"
    return repr(float(value))


def hex_rgb(color: str) -> list[int]:
    try:
        return [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    except (ValueError, IndexError):
        return [31, 119, 180]


def _coco_image(row: Mapping[str, Any], file_name: str) -> dict[str, Any]:
    """An image entry: ``width`` and ``height`` are always the full-resolution (level 0) size,
    the pixels the annotations' coordinates are in, also for a whole slide; ``mpp_x``,
    ``mpp_y`` (microns per pixel) and ``objective_power`` only where the file's metadata said."""
    entry = {
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
    for key in ("mpp_x", "mpp_y", "objective_power"):
        if row.get(key) is not None:
            entry[key] = row[key]
    return entry


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
    "mpp_x",
    "mpp_y",
    "objective_power",
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
    rows: list[tuple[Any, ...]],
    *,
    height: int,
    width: int,
    rle: bool,
    sources: dict[str, str],
    skipped: list[int],
) -> list[str]:
    """The JSON of one image's annotations (areas and RLE through one pycocotools call). A row
    whose polygon is not numbers (written before the API refused such polygons) is left out and
    its id added to ``skipped``: one bad row must not fail the whole export."""
    flats = [coco.polygon_text_flat(row[3]) for row in rows]
    if not all(coco.flat_is_polygon(flat) for flat in flats):
        keep = [coco.flat_is_polygon(flat) for flat in flats]
        skipped.extend(int(row[0]) for row, ok in zip(rows, keep, strict=True) if not ok)
        rows = [row for row, ok in zip(rows, keep, strict=True) if ok]
        flats = [flat for flat, ok in zip(flats, keep, strict=True) if ok]
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


def frozen(images: QuerySet[Image], upto_image_id: int | None = None) -> QuerySet[Image]:
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
    include_empty: bool = False,
) -> Iterator[bytes]:
    """The COCO JSON of a project's selected cells as chunks of bytes (bounded memory).

    ``info``, ``licenses``, ``categories`` (the project's classes, id = CellClass.pk, with
    ``color`` and ``model_label``), ``images`` (id = Image.pk, file_name, width, height and the
    platform's metadata), ``annotations`` (id = Cell.pk; polygon or compressed RLE; ``area`` as
    pycocotools computes it; ``bbox`` [x, y, w, h]; ``iscrowd`` 0; extra keys ``score``,
    ``model_version``, ``verified_by``, ``source`` and, for proposals, ``state``), and
    ``skipped_cells`` (ids of stored cells whose polygon is malformed, left out) when there are any. ``file_names``
    overrides image file names (the zip export makes them unique). ``progress`` gets the number
    of cells written so far after each batch. The images are those that exist when the stream
    starts (up to ``upto_image_id`` if given), so that both passes over them agree; only those
    with selected cells (or verified, on the verified layer) unless ``include_empty``: COCOeval
    scores a listed image without annotations as an empty ground truth.
    """
    rle = segmentation == "rle"
    images = frozen(export_images(project=project, filters=filters, include_empty=include_empty), upto_image_id)
    counts = export_cell_counts(project=project, filters=filters)
    categories = [
        {
            "id": c.pk,
            "name": c.name,
            "supercategory": "cell",
            "color": c.color,
            "model_label": c.model_label,
        }
        for c in export_classes(project, filters)
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
    out = ChunkBuffer()
    out.add(f'{{"info":{json.dumps(info)},"licenses":[{{"id":0,"name":"","url":""}}],')
    out.add(f'"categories":{json.dumps(categories)},"images":[')
    separator = ""
    for batch in image_batches(images, counts, IMAGE_FIELDS):
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
    skipped: list[int] = []
    polygon_text = Cast("polygon", TextField())
    # The verified layer's provenance says who verified a cell (verified_by_of); elsewhere only
    # an explicit verified_by key does, fetched alone.
    verified_by = F("provenance") if filters.layer == Layer.VERIFIED else KeyTransform("verified_by", "provenance")
    for batch in image_batches(images, counts, ("width", "height")):
        sizes = {row["id"]: (row["height"], row["width"]) for row in batch if counts.get(row["id"])}
        if not sizes:
            continue
        rows = cells_for(list(sizes), filters, *_COCO_CELL_FIELDS, polygon_text=polygon_text, verified_by=verified_by)
        for group in _grouped(rows):
            height, width = sizes[group[0][1]]
            lines = _coco_annotation_lines(group, height=height, width=width, rle=rle, sources=sources, skipped=skipped)
            for line in lines:
                out.add(separator + line)
                separator = ","
                if out.full:
                    yield out.take()
            done += len(group)
        if progress is not None:
            progress(done)
    if skipped:
        logger.warning("COCO export of project %s skipped cells with malformed polygons: %s", project.pk, skipped)
        out.add(f'],"skipped_cells":{json.dumps(skipped)}}}')
    else:
        out.add("]}")
    yield out.take()
