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

from cytoseg.datasets import DatasetCase, crop_grid, crop_polygons
from cytoseg.geometry import polygon_is_numeric
from interchange.services.selection import EXPORT_CROP_SIZE, ExportFilters, cells_in_band, logger, setting


def crop_size() -> int:
    return max(64, setting("EXPORT_CROP_SIZE", EXPORT_CROP_SIZE))


@contextmanager
def original_local_path(name: str) -> Iterator[Path]:
    """The stored original as a file on this host: the file itself on disk storage; on object
    storage a streamed copy in ``SLIDE_SCRATCH_DIR``, removed afterwards."""
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    folder = Path(settings.SLIDE_SCRATCH_DIR) / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=Path(name).suffix) as copy:
        with default_storage.open(name, "rb") as source:
            shutil.copyfileobj(source, copy, 1024 * 1024)
        copy.flush()
        yield Path(copy.name)


def tiled_image_cases(
    *,
    image: Mapping[str, Any],
    filters: ExportFilters,
    labels: Mapping[int, int],
    include_empty: bool,
    size: int | None = None,
) -> Iterator[DatasetCase]:
    """The crops of one tiled image (``image``: a row with id, width, height, split and
    original) as data set cases, row by row (see the module docstring)."""
    from cytoseg.tiled import region_reader  # loads libvips / OpenSlide only when a slide is exported

    size = size or crop_size()
    width, height = int(image["width"]), int(image["height"])
    boxes = crop_grid(width=width, height=height, size=size)
    split = image["split"] or "train"
    with original_local_path(str(image["original"])) as path:
        reader = region_reader(path)
        try:
            for y0 in range(0, height, size):
                row = [box for box in boxes if box[1] == y0]
                polygons: list[Any] = []
                classes: list[int] = []
                for cell_id, class_id, polygon in cells_in_band(
                    image["id"], filters, y0, y0 + size, "id", "cell_class_id", "polygon"
                ):
                    if polygon_is_numeric(polygon):
                        polygons.append(polygon)
                        classes.append(labels[class_id])
                    else:  # written before the API refused such polygons: left out, not fatal
                        logger.warning("export of image %s skipped cell %s: malformed polygon", image["id"], cell_id)
                for box in row:
                    inside, inside_labels, _ = crop_polygons(polygons, classes, box)
                    if not inside and not include_empty:
                        continue
                    x0, y0_, x1, y1 = box
                    yield DatasetCase(
                        case_id=f"case_{image['id']:06d}_x{x0}_y{y0_}",
                        split=split,
                        image=reader.read(box),
                        height=y1 - y0_,
                        width=x1 - x0,
                        polygons=inside,
                        labels=inside_labels,
                    )
        finally:
            reader.close()
