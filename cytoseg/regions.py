"""Regions of interest on large images and slides (Django-free).

A region is a simple polygon in full-resolution image pixels. Its rules, shared by the
platform's pre-segmentation, verification and training snapshots:

* a cell belongs to a region when its centroid lies inside the region's polygon (on the edge
  counts as inside), so every cell belongs to at most one of two regions that do not overlap;
* the tiles of a :class:`cytoseg.tiled.TilePlan` a region needs are those whose core meets the
  polygon: a cell whose centroid is in the region is owned by one of them;
* a region's training crop is its bounding box read at full resolution, with the pixels outside
  the polygon painted ``OUTSIDE`` (glass-white): nobody annotated there, and white background
  teaches the model "no cells" rather than cells it is never told about.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from PIL import Image as PILImage
from PIL import ImageDraw
from shapely.geometry import Polygon, box
from shapely.validation import explain_validity

from cytoseg.geometry import GeometryError

MAX_VERTICES = 2000
OUTSIDE = 255  # the value painted outside the region in a crop (white, like empty glass)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, exclusive ends


def region_polygon_check(raw: object, *, width: int, height: int) -> list[list[float]]:
    """The region's points as ``[[x, y], ...]`` when ``raw`` is a valid simple polygon of at
    least 3 points inside a ``width`` x ``height`` image; raises GeometryError saying why not.
    Unlike a cell's outline, a self-intersecting region is refused rather than repaired: which
    part the doctor meant is not ours to guess."""
    if not isinstance(raw, list | tuple):
        raise GeometryError("must be a list of [x, y] points")
    if len(raw) < 3:
        raise GeometryError("a region needs at least 3 points")
    if len(raw) > MAX_VERTICES:
        raise GeometryError(f"at most {MAX_VERTICES} points")
    points: list[list[float]] = []
    for index, point in enumerate(raw):
        if (
            not isinstance(point, list | tuple)
            or len(point) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
            or not all(math.isfinite(float(v)) for v in point)
        ):
            raise GeometryError(f"point {index} is not a pair of finite numbers [x, y]")
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= width and 0 <= y <= height):
            raise GeometryError(f"point {index} at ({x:g}, {y:g}) lies outside the image ({width}x{height})")
        points.append([x, y])
    if len(points) > 3 and points[0] == points[-1]:
        points = points[:-1]  # a closed ring: the last point repeats the first
    polygon = Polygon(points)
    if polygon.convex_hull.area <= 0:
        raise GeometryError("the region has zero area (all points on one line)")
    if not polygon.is_valid or polygon.area <= 0:
        raise GeometryError(f"not a simple polygon ({explain_validity(polygon)})")
    return points


def region_bbox(points: Sequence[Sequence[float]], *, width: int, height: int) -> Box:
    """The whole pixels that cover the region, cut to the image."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = min(width, math.ceil(max(xs))), min(height, math.ceil(max(ys)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def polygon_centroid(points: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The area centroid of a polygon (the mean of its vertices when it has no area)."""
    array = np.asarray(points, dtype=np.float64)
    x, y = array[:, 0], array[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-9:
        return float(x.mean()), float(y.mean())
    return float(((x + xn) * cross).sum() / (6 * area)), float(((y + yn) * cross).sum() / (6 * area))


def cells_inside(region: Sequence[Sequence[float]], cells: Iterable[Sequence[Sequence[float]]]) -> list[bool]:
    """For each cell outline, whether its centroid lies inside ``region`` (edge included)."""
    centroids = [polygon_centroid(points) for points in cells]
    if not centroids:
        return []
    area = Polygon(region)
    shapely.prepare(area)
    return [bool(v) for v in shapely.intersects_xy(area, [c[0] for c in centroids], [c[1] for c in centroids])]


def tiles_for_region(
    columns: int, rows: int, tile: int, width: int, height: int, region: Sequence[Sequence[float]]
) -> list[int]:
    """The indices (row by row) of a tile grid's cores that meet ``region``."""
    area = Polygon(region)
    shapely.prepare(area)
    x0, y0, x1, y1 = area.bounds
    out: list[int] = []
    for row in range(max(0, int(y0 // tile)), min(rows, int(y1 // tile) + 1)):
        for col in range(max(0, int(x0 // tile)), min(columns, int(x1 // tile) + 1)):
            core = box(col * tile, row * tile, min((col + 1) * tile, width), min((row + 1) * tile, height))
            if area.intersects(core):
                out.append(row * columns + col)
    return out


def region_mask(points: Sequence[Sequence[float]], crop: Box) -> np.ndarray:
    """A boolean mask of ``crop`` (its height x width): True inside the region's polygon."""
    x0, y0, x1, y1 = crop
    canvas = PILImage.new("1", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon([(x - x0, y - y0) for x, y in points], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def region_crop_mask(rgb: np.ndarray, points: Sequence[Sequence[float]], crop: Box) -> np.ndarray:
    """``rgb`` (the pixels of ``crop``) with everything outside the region painted ``OUTSIDE``."""
    out = np.array(rgb[:, :, :3], dtype=np.uint8, copy=True)
    out[~region_mask(points, crop)] = OUTSIDE
    return out
