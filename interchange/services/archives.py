"""Exports that are zip archives: COCO with the image files, QuPath GeoJSON per image, and the
nnU-Net raw dataset and Cellpose training data (writers shared with training, in cytoseg)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from django.core.files.storage import default_storage
from django.db.models import QuerySet

from annotations.models import CellClass, Image, Layer, Project
from core.streaming import ZipEntry, zip_stream
from cytoseg.geometry import polygon_is_numeric
from interchange.services.coco import ProgressFn, coco_export_stream, frozen, hex_rgb
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
    for batch in image_batches(images, counts, fields):
        with_cells = [row["id"] for row in batch if counts.get(row["id"])]
        rows = (
            cells_for(with_cells, filters, "image_id", "id", "cell_class_id", "polygon", "layer")
            if with_cells
            else iter(())
        )
        iterator = iter(rows)
        current = next(iterator, None)
        for image in batch:
            cells: list[tuple[Any, ...]] = []
            while current is not None and current[0] == image["id"]:
                if polygon_is_numeric(current[3]):
                    cells.append(current)
                else:  # written before the API refused such polygons: left out, not fatal
                    logger.warning("export of project %s skipped cell %s: malformed polygon", project.pk, current[1])
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
                    "classification": {"name": cell_class.name, "color": hex_rgb(cell_class.color)},
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
    from cytoseg.datasets import DatasetCase  # Django-free writers shared with training

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
