"""Training-format exports (nnU-Net, Cellpose) of large images and whole slides, as crops.

nnU-Net and Cellpose read every training image whole, so a tiled image (``Image.tiled``: a
whole slide or an image above ``TILED_MIN_SIDE``) is never one case: it is cut into the crops of
:func:`cytoseg.datasets.crop_grid`, squares of ``EXPORT_CROP_SIZE`` pixels (1024 by default)
from the top-left corner, row by row, the last column and row narrower where the image ends.

- Each crop's pixels are read from the original at full resolution
  (:func:`cytoseg.tiled.region_reader`: OpenSlide's ``read_region`` for scanner formats, a
  libvips crop otherwise, decoding only what the crop needs).
- Its masks are rasterised from the selected cells that have a pixel in it
  (:func:`cytoseg.datasets.crop_polygons`), each clipped to the crop: a cell cut by a crop
  border is in every crop it reaches, with its part there; paint order stays the cells' ids.
- A crop in which no selected cell has a pixel is left out, unless ``include_empty``.
- Cells are read one row of crops at a time (a bounding-box query per row), so neither the
  pixels nor the cells of a whole slide are ever in memory: one crop's pixels and one row's
  cells at most.
- Case ids are ``case_<image id>_x<x0>_y<y0>`` (the crop's top-left corner in full-resolution
  pixels), the split is the image's.

**Verified regions.** A tiled image with regions of interest (``annotations.Region``) whose
status is *verified* is exported as those regions only, by the rules of :mod:`cytoseg.regions`
that training follows: a region's crop is its bounding box (cut into crops of the same size,
from the box's corner, when it is larger), read at full resolution with the pixels outside the
region's polygon painted white (``OUTSIDE``: nobody annotated there); its cells are those whose
centroid lies inside the polygon, each whole where it has a pixel in the crop, clipped to the
crop. Case ids ``case_<image>_r<region>_x<x0>_y<y0>``. A tiled image without a verified region
is exported whole, as above.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage

from annotations.models import ImageStatus, Region
from cytoseg.datasets import Box, DatasetCase, crop_grid, crop_polygons
from cytoseg.geometry import polygon_is_numeric
from cytoseg.regions import cells_inside, region_crop_mask
from interchange.services.selection import EXPORT_CROP_SIZE, ExportFilters, cells_in_box, logger, setting


def crop_size() -> int:
    return max(64, setting("EXPORT_CROP_SIZE", EXPORT_CROP_SIZE))


@contextmanager
def original_local_path(name: str) -> Iterator[Path]:
    """The stored original as a file on this host: the file itself on disk storage; on object
    storage a streamed copy in ``SLIDE_SCRATCH_DIR``, removed afterwards."""
    try:
        local: str | None = default_storage.path(name)
    except NotImplementedError:
        local = None
    if local is not None:
        yield Path(local)
        return
    folder = Path(settings.SLIDE_SCRATCH_DIR) / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=Path(name).suffix) as copy:
        with default_storage.open(name, "rb") as source:
            shutil.copyfileobj(source, copy, 1024 * 1024)
        copy.flush()
        yield Path(copy.name)


def _area_cases(
    *,
    image: Mapping[str, Any],
    filters: ExportFilters,
    labels: Mapping[int, int],
    include_empty: bool,
    reader: Any,
    area: Box,
    size: int,
    prefix: str,
    region: list[list[float]] | None = None,
) -> Iterator[DatasetCase]:
    """The crops of ``area`` (the whole image, or a region's bounding box), one row of crops at
    a time: one cell query per row, one crop's pixels at a time."""
    ax0, ay0, ax1, ay1 = area
    grid = crop_grid(width=ax1 - ax0, height=ay1 - ay0, size=size)
    boxes = [(x0 + ax0, y0 + ay0, x1 + ax0, y1 + ay0) for x0, y0, x1, y1 in grid]
    split = image["split"] or "train"
    for top in range(ay0, ay1, size):
        row = [box for box in boxes if box[1] == top]
        band = (ax0, top, ax1, min(top + size, ay1))
        polygons: list[Any] = []
        classes: list[int] = []
        for cell_id, class_id, polygon in cells_in_box(image["id"], filters, band, "id", "cell_class_id", "polygon"):
            if polygon_is_numeric(polygon):
                polygons.append(polygon)
                classes.append(labels[class_id])
            else:  # written before the API refused such polygons: left out, not fatal
                logger.warning("export of image %s skipped cell %s: malformed polygon", image["id"], cell_id)
        if region is not None and polygons:  # the region's cells: centroid inside (cytoseg.regions)
            keep = cells_inside(region, polygons)
            polygons = [p for p, k in zip(polygons, keep, strict=True) if k]
            classes = [c for c, k in zip(classes, keep, strict=True) if k]
        for box in row:
            inside, inside_labels, _ = crop_polygons(polygons, classes, box)
            if not inside and not include_empty:
                continue
            x0, y0, x1, y1 = box
            pixels = reader.read(box)
            if region is not None:
                pixels = region_crop_mask(pixels, region, box)
            yield DatasetCase(
                case_id=f"{prefix}_x{x0}_y{y0}",
                split=split,
                image=pixels,
                height=y1 - y0,
                width=x1 - x0,
                polygons=inside,
                labels=inside_labels,
            )


def tiled_image_cases(
    *,
    image: Mapping[str, Any],
    filters: ExportFilters,
    labels: Mapping[int, int],
    include_empty: bool,
    size: int | None = None,
) -> Iterator[DatasetCase]:
    """The crops of one tiled image (``image``: a row with id, width, height, split and
    original) as data set cases: its verified regions' if it has any, else the whole image's
    (see the module docstring)."""
    from cytoseg.tiled import region_reader  # loads libvips / OpenSlide only when a slide is exported

    size = size or crop_size()
    width, height = int(image["width"]), int(image["height"])
    regions = list(
        Region.objects.filter(image_id=image["id"], status=ImageStatus.VERIFIED)
        .order_by("id")
        .values_list("id", "polygon", "bbox_x", "bbox_y", "bbox_w", "bbox_h")
    )
    base = f"case_{image['id']:06d}"
    with original_local_path(str(image["original"])) as path:
        reader = region_reader(path)
        try:
            if not regions:
                yield from _area_cases(
                    image=image, filters=filters, labels=labels, include_empty=include_empty, reader=reader,
                    area=(0, 0, width, height), size=size, prefix=base,
                )  # fmt: skip
            for region_id, polygon, x, y, w, h in regions:
                area = (x, y, min(x + w, width), min(y + h, height))
                yield from _area_cases(
                    image=image, filters=filters, labels=labels, include_empty=include_empty, reader=reader,
                    area=area, size=size, prefix=f"{base}_r{region_id}", region=polygon,
                )  # fmt: skip
        finally:
            reader.close()
