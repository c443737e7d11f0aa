"""Exports that are zip archives: COCO with the image files, QuPath GeoJSON per image, and the
nnU-Net raw dataset and Cellpose training data (writers shared with training, in cytoseg)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from django.core.files.storage import default_storage
from django.db.models import QuerySet

from annotations.models import CellClass, Image, Layer, Project
from core.streaming import ChunkBuffer, ZipEntry, zip_stream
from cytoseg.geometry import polygon_is_numeric
from interchange.services.coco import ProgressFn, coco_export_stream, frozen, hex_rgb
from interchange.services.crops import tiled_image_cases
from interchange.services.selection import (
    IMAGE_BATCH,
    ExportFilters,
    ExportOptions,
    cells_for,
    export_cell_counts,
    export_images,
    image_batches,
)

logger = logging.getLogger(__name__)


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


def _read_chunks(name: str, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A stored file in chunks: a whole slide's original never sits in memory."""
    with default_storage.open(name, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def coco_zip_stream(
    *,
    project: Project,
    filters: ExportFilters,
    segmentation: str = "polygon",
    progress: ProgressFn | None = None,
    include_empty: bool = False,
) -> Iterator[bytes]:
    """A zip with ``annotations.json`` (COCO) and ``images/<file_name>`` (the original files of
    the images it lists)."""
    images = frozen(export_images(project=project, filters=filters, include_empty=include_empty))
    names = _unique_names(images)
    upto = max(names, default=0)

    def entries() -> Iterator[ZipEntry]:
        yield (
            "annotations.json",
            coco_export_stream(
                project=project,
                filters=filters,
                segmentation=segmentation,
                file_names=names,
                upto_image_id=upto,
                include_empty=include_empty,
            ),
        )
        done = 0
        for image in images.filter(pk__lte=upto).only("pk", "original", "tiled").iterator(chunk_size=50):
            name = f"images/{names[image.pk]}"
            # a whole slide's original (gigabytes) streams through; small files as before
            yield name, (_read_chunks(str(image.original.name)) if image.tiled else _read(image.original))
            done += 1
            if progress is not None:
                progress(done)

    return zip_stream(entries())


class _CellCursor:
    """One streamed cell query (``image_id, id, ...`` rows by image, then id) shared by the
    images of a batch: :meth:`cells` hands out one image's rows as they come."""

    def __init__(self, rows: Iterable[tuple[Any, ...]], project_id: int) -> None:
        self._rows = iter(rows)
        self._next = next(self._rows, None)
        self._project_id = project_id

    def cells(self, image_id: int) -> Iterator[tuple[Any, ...]]:
        # rows of an earlier image its consumer did not read to the end are passed over
        while self._next is not None and self._next[0] < image_id:
            self._next = next(self._rows, None)
        while self._next is not None and self._next[0] == image_id:
            row, self._next = self._next, next(self._rows, None)
            if polygon_is_numeric(row[3]):
                yield row
            else:  # written before the API refused such polygons: left out, not fatal
                logger.warning("export of project %s skipped cell %s: malformed polygon", self._project_id, row[1])


def _image_cell_streams(
    project: Project, filters: ExportFilters, fields: Sequence[str], *, whole: bool = True
) -> Iterator[tuple[dict[str, Any], Iterator[tuple[Any, ...]]]]:
    """(image row, its selected cells as ``values_list`` rows of ``image_id, id, cell_class_id,
    polygon, layer``, streamed) per image, in id order; cells by id (paint order). One query per
    image batch; read an image's cells before asking for the next image. ``whole=False`` leaves
    out the cells of tiled images (exported by crops, each with its own queries)."""
    images = export_images(project=project, filters=filters)
    counts = export_cell_counts(project=project, filters=filters)
    for batch in image_batches(images, counts, (*fields, "tiled")):
        with_cells = [row["id"] for row in batch if counts.get(row["id"]) and (whole or not row["tiled"])]
        rows = (
            cells_for(with_cells, filters, "image_id", "id", "cell_class_id", "polygon", "layer")
            if with_cells
            else iter(())
        )
        cursor = _CellCursor(rows, project.pk)
        for image in batch:
            image["cell_count"] = counts.get(image["id"], 0)
            yield image, cursor.cells(image["id"])


def _image_cells(
    project: Project, filters: ExportFilters, fields: Sequence[str], *, include_empty: bool = True
) -> Iterator[tuple[dict[str, Any], list[tuple[Any, ...]]]]:
    """As :func:`_image_cell_streams` (tiled images left out of the query, their lists empty),
    each image's cells as a list; images without cells only with ``include_empty`` (a tiled
    image without selected cells is not even opened)."""
    for image, stream in _image_cell_streams(project, filters, fields, whole=False):
        cells = list(stream)
        if cells or include_empty or (image["tiled"] and image["cell_count"]):
            yield image, cells


def geojson_feature(cell: tuple[Any, ...], classes: Mapping[int, CellClass], object_type: str) -> dict[str, Any]:
    """QuPath's GeoJSON Feature of one cell row (``image_id, id, cell_class_id, polygon, layer``):
    a Polygon in the image's full-resolution pixels with ``properties.objectType`` and
    ``properties.classification`` ``{name, color: [r, g, b]}``."""
    _, cell_id, class_id, polygon, layer = cell
    ring = [list(p) for p in polygon]
    ring.append(list(polygon[0]))
    cell_class = classes[class_id]
    kind = object_type or ("detection" if layer == Layer.PROPOSAL else "annotation")
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cytoplatform:cell:{cell_id}")),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": kind,
            "classification": {"name": cell_class.name, "color": hex_rgb(cell_class.color)},
            "isLocked": False,
        },
    }


def geojson_feature_collection(
    cells: Iterable[tuple[Any, ...]], classes: Mapping[int, CellClass], object_type: str
) -> dict[str, Any]:
    """QuPath's GeoJSON for one image: a FeatureCollection of :func:`geojson_feature`."""
    return {"type": "FeatureCollection", "features": [geojson_feature(c, classes, object_type) for c in cells]}


def geojson_chunks(
    cells: Iterable[tuple[Any, ...]],
    classes: Mapping[int, CellClass],
    object_type: str,
    counted: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The bytes of :func:`geojson_feature_collection` (the same text), written feature by
    feature: a slide's 250,000 cells never sit in memory. ``counted`` gets the number of
    features written after each chunk and at the end."""
    out = ChunkBuffer()
    out.add('{"type": "FeatureCollection", "features": [')
    separator, count = "", 0
    for cell in cells:
        out.add(separator + json.dumps(geojson_feature(cell, classes, object_type)))
        separator = ", "
        count += 1
        if out.full:
            if counted is not None:
                counted(count)
            yield out.take()
    out.add("]}")
    if counted is not None:
        counted(count)
    yield out.take()


def geojson_zip_stream(
    *, project: Project, filters: ExportFilters, object_type: str = "", progress: ProgressFn | None = None
) -> Iterator[bytes]:
    """A zip with one ``<image stem>.geojson`` per image, in the layout QuPath imports,
    each streamed (bounded memory whatever the number of cells of an image)."""
    classes = {c.pk: c for c in project.classes.all()}

    def entries() -> Iterator[ZipEntry]:
        done = [0, 0]  # cells of the images finished, cells of the current one

        def counted(count: int) -> None:
            done[1] = count
            if progress is not None:
                progress(done[0] + count)

        taken: set[str] = set()
        for image, cells in _image_cell_streams(project, filters, ("file_name",)):
            stem = PurePosixPath(image["file_name"].replace("/", "_")).stem or "image"
            if stem.lower() in taken:
                stem = f"{stem}-{image['id']}"
            taken.add(stem.lower())
            done[1] = 0
            yield f"{stem}.geojson", geojson_chunks(cells, classes, object_type, counted)
            done[0] += done[1]

    return zip_stream(entries())


def _dataset_cases(
    project: Project, filters: ExportFilters, *, include_empty: bool, progress: ProgressFn | None
) -> Iterator[Any]:
    from cytoseg.datasets import DatasetCase  # Django-free writers shared with training

    labels = dict(project.classes.values_list("pk", "model_label"))
    done = 0
    for image, cells in _image_cells(
        project, filters, ("width", "height", "split", "display", "original"), include_empty=include_empty
    ):
        if image["tiled"]:  # a whole slide: crops read at full resolution (interchange.services.crops)
            yield from tiled_image_cases(image=image, filters=filters, labels=labels, include_empty=include_empty)
        else:
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
    """A zip of the nnU-Net v2 raw dataset (cytoseg.datasets.nnunet_raw_dataset_files)."""
    from cytoseg.datasets import nnunet_raw_dataset_files

    cases = _dataset_cases(project, options.filters, include_empty=options.include_empty, progress=progress)
    return zip_stream(
        nnunet_raw_dataset_files(dataset_id=options.dataset_id, dataset_name=_dataset_name(project), cases=cases)
    )


def cellpose_zip_stream(
    *, project: Project, options: ExportOptions, progress: ProgressFn | None = None
) -> Iterator[bytes]:
    """A zip of Cellpose training data (cytoseg.datasets.cellpose_dataset_files)."""
    from cytoseg.datasets import cellpose_dataset_files

    cases = _dataset_cases(project, options.filters, include_empty=options.include_empty, progress=progress)
    return zip_stream(cellpose_dataset_files(cases=cases))
