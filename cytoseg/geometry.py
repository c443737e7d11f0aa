"""Validation of cell polygons (Django-free).

A stored cell is a simple, valid polygon in image pixel coordinates with at least 3 distinct
vertices, inside the image. Self-intersections are repaired only when shapely's ``make_valid``
yields exactly one polygon; the caller is told that a repair happened.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.validation import explain_validity


class GeometryError(ValueError):
    """The polygon cannot be stored; the message says why in words a user understands."""


@dataclass(frozen=True)
class CleanPolygon:
    points: list[list[float]]
    area: float
    bbox: tuple[float, float, float, float]  # x, y, w, h
    repaired: bool
    digest: str = ""


def geometry_digest(points: object) -> str:
    """A short digest of a polygon's coordinates (as float64), equal for equal polygons."""
    array = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    return hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()


def _coerce_points(raw: object, max_vertices: int) -> list[tuple[float, float]]:
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise GeometryError("polygon must be a list of [x, y] points")
    if len(raw) > max_vertices:
        raise GeometryError(f"polygon has {len(raw)} vertices; the limit is {max_vertices}")
    points: list[tuple[float, float]] = []
    for index, point in enumerate(raw):
        if (
            not isinstance(point, Sequence)
            or isinstance(point, (str, bytes))
            or len(point) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
        ):
            raise GeometryError(f"point {index} must be a pair of numbers [x, y]")
        x, y = float(point[0]), float(point[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise GeometryError(f"point {index} has a non-finite coordinate")
        points.append((x, y))
    # A closing point equal to the first is allowed and dropped.
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    # Consecutive duplicates carry no shape.
    deduped = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    if len(set(deduped)) < 3:
        raise GeometryError("polygon needs at least 3 distinct vertices")
    return deduped


def _fast_points(raw: object, max_vertices: int) -> np.ndarray | None:
    """Vectorised parse for the common, well-formed case; None sends the caller to the slow path
    that explains exactly what is wrong."""
    if not isinstance(raw, list) or not 3 <= len(raw) <= max_vertices:
        return None
    # numpy would read true / false as 1 / 0: a boolean is not a coordinate (one such polygon,
    # once stored, used to make every COCO export of its project fail)
    if any(type(v) is bool for point in raw if isinstance(point, (list, tuple)) for v in point):
        return None
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        return None
    if (array[0] == array[-1]).all():
        array = array[:-1]
    if len(array) > 1:
        keep = np.ones(len(array), dtype=bool)
        keep[1:] = (array[1:] != array[:-1]).any(axis=1)
        array = array[keep]
    if len(array) < 3:
        return None
    return array


def polygon_clean(raw: object, *, width: int, height: int, max_vertices: int) -> CleanPolygon:
    """Validate one polygon against an image of ``width`` x ``height`` pixels.

    Raises GeometryError with the reason when the polygon cannot be stored.
    """
    array = _fast_points(raw, max_vertices)
    if array is not None:
        inside = (array[:, 0] >= 0) & (array[:, 0] <= width) & (array[:, 1] >= 0) & (array[:, 1] <= height)
        if inside.all():
            polygon = shapely.polygons(array)
            if shapely.is_valid(polygon) and polygon.area > 0:
                x0, y0 = array.min(axis=0)
                x1, y1 = array.max(axis=0)
                return CleanPolygon(
                    points=array.tolist(),
                    area=float(polygon.area),
                    bbox=(float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                    repaired=False,
                )
    points = _coerce_points(raw, max_vertices)
    outside = [(i, p) for i, p in enumerate(points) if not (0 <= p[0] <= width and 0 <= p[1] <= height)]
    if outside:
        index, (x, y) = outside[0]
        raise GeometryError(
            f"{len(outside)} point(s) lie outside the image ({width}x{height}); "
            f"first is point {index} at ({x:g}, {y:g})"
        )
    polygon = Polygon(points)
    if polygon.convex_hull.area <= 0:
        raise GeometryError("polygon has zero area (all points on one line)")
    repaired = False
    if not polygon.is_valid:
        reason = explain_validity(polygon)
        fixed = shapely.make_valid(polygon)
        polygons = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon) and g.area > 0]
        if len(polygons) != 1:
            raise GeometryError(f"polygon is not a valid simple polygon ({reason})")
        polygon = Polygon(polygons[0].exterior.coords)
        repaired = True
    if polygon.area <= 0:
        raise GeometryError("polygon has zero area")
    coords = list(polygon.exterior.coords)[:-1] if repaired else points
    x0, y0, x1, y1 = polygon.bounds
    return CleanPolygon(
        points=[[float(x), float(y)] for x, y in coords],
        area=float(polygon.area),
        bbox=(float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
        repaired=repaired,
    )


_NUMBERS = (int, float)


def _batch_parse(raws: list[object], max_vertices: int) -> tuple[np.ndarray, np.ndarray] | None:
    """All polygons' vertices in one float array plus each polygon's vertex count, when every
    polygon is a plain list of [x, y] number pairs; None otherwise (then each is parsed alone).

    One ``np.fromiter`` over all coordinates replaces a numpy conversion per cell: on a
    270-cell autosave that conversion overhead was the largest part of validation.
    """
    if not all(isinstance(r, list) and 3 <= len(r) <= max_vertices for r in raws):
        return None
    # Exact types: a bool is an int to Python and a number to numpy, but not a coordinate.
    if not all(
        type(point) is list and len(point) == 2 and type(point[0]) in _NUMBERS and type(point[1]) in _NUMBERS
        for r in raws
        for point in r  # type: ignore[attr-defined]
    ):
        return None
    sizes = np.fromiter((len(r) for r in raws), dtype=np.int64, count=len(raws))  # type: ignore[arg-type]
    try:
        flat = np.fromiter(
            chain.from_iterable(chain.from_iterable(raws)),  # type: ignore[arg-type]
            dtype=np.float64,
            count=int(sizes.sum()) * 2,
        )
    except (TypeError, ValueError):
        return None
    return flat.reshape(-1, 2), sizes


def polygons_clean(
    raws: list[object], *, width: int, height: int, max_vertices: int
) -> list[CleanPolygon | GeometryError]:
    """Validate many polygons at once: one vectorised shapely pass for the well-formed ones,
    and ``polygon_clean`` (which explains the problem or repairs) for the rest."""
    results: list[CleanPolygon | GeometryError | None] = [None] * len(raws)
    arrays: list[np.ndarray] = []
    positions: list[int] = []
    batch = _batch_parse(raws, max_vertices) if raws else None
    if batch is not None:
        coords, sizes = batch
        ends = np.cumsum(sizes)
        starts = ends - sizes
        point_ok = np.isfinite(coords).all(axis=1)
        point_ok &= (coords[:, 0] >= 0) & (coords[:, 0] <= width) & (coords[:, 1] >= 0) & (coords[:, 1] <= height)
        cell_ok = np.logical_and.reduceat(point_ok, starts)
        # Consecutive duplicates and explicit closing points need the per-cell clean-up path.
        repeats = np.zeros(len(coords), dtype=bool)
        repeats[1:] = (coords[1:] == coords[:-1]).all(axis=1)
        repeats[starts] = False
        cell_ok &= ~np.logical_or.reduceat(repeats, starts)
        cell_ok &= ~(coords[starts] == coords[ends - 1]).all(axis=1)
        for position in np.flatnonzero(cell_ok):
            arrays.append(coords[starts[position] : ends[position]])
            positions.append(int(position))
    else:
        for position, raw in enumerate(raws):
            array = _fast_points(raw, max_vertices)
            if (
                array is not None
                and (array >= 0).all()
                and (array[:, 0] <= width).all()
                and (array[:, 1] <= height).all()
            ):
                arrays.append(array)
                positions.append(position)
    if arrays:
        coords = np.concatenate(arrays)
        sizes = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        # Close each ring by repeating its first point, as linearrings() expects per index group.
        ends = np.cumsum(sizes)
        firsts = ends - sizes
        closed = np.insert(coords, ends, coords[firsts], axis=0)
        indices = np.repeat(np.arange(len(arrays)), sizes + 1)
        polygons = shapely.polygons(shapely.linearrings(closed, indices=indices))
        valid = shapely.is_valid(polygons)
        areas = shapely.area(polygons)
        mins = np.minimum.reduceat(coords, firsts)
        maxs = np.maximum.reduceat(coords, firsts)
        for k, position in enumerate(positions):
            if valid[k] and areas[k] > 0:
                array = arrays[k]
                (x0, y0), (x1, y1) = mins[k], maxs[k]
                raw = raws[position]
                # Reuse the client's list when parsing changed nothing (tolist() is the costliest
                # step of a 270-cell save); it is a list of number pairs, as parsing checked.
                unchanged = isinstance(raw, list) and len(raw) == len(array)
                results[position] = CleanPolygon(
                    points=raw if unchanged else array.tolist(),  # type: ignore[arg-type]
                    area=float(areas[k]),
                    bbox=(float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                    repaired=False,
                    digest=hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest(),
                )
    out: list[CleanPolygon | GeometryError] = []
    for position, result in enumerate(results):
        if result is None:
            try:
                result = polygon_clean(raws[position], width=width, height=height, max_vertices=max_vertices)
            except GeometryError as exc:
                result = exc
        out.append(result)
    return out


def polygon_is_numeric(points: object) -> bool:
    """Whether a stored polygon is what storage promises: a list of at least 3 ``[x, y]`` pairs of
    finite numbers (no booleans, no text). Readers of stored rows check it before trusting one:
    a row written before that rule held must not break an export."""
    if not isinstance(points, list) or len(points) < 3:
        return False
    for point in points:
        if type(point) is not list or len(point) != 2:
            return False
        for value in point:
            if type(value) not in _NUMBERS or not math.isfinite(value):
                return False
    return True
