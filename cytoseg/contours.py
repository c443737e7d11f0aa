"""Instance masks <-> polygons (Django-free).

Coordinate convention (shared with the frontend and the polygon store):
points are ``(x, y)`` in image pixel units where pixel ``(row r, col c)``
covers the unit square ``[c, c + 1] x [r, r + 1]``; its centre is
``(c + 0.5, r + 0.5)``. A pixel belongs to a polygon when its centre lies
inside it. The polygon of a mask therefore runs along pixel edges (the
"crack" boundary), so that rasterising it gives the mask back exactly before
simplification.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.polygon import orient

from cytoseg.backends.base import Instance

__all__ = [
    "ContourResult",
    "instances_as_stored",
    "instances_to_polygons",
    "mask_to_polygon",
    "polygon_crop",
    "polygon_rasterize",
]


@dataclass
class ContourResult:
    """The polygon of one instance in image coordinates.

    ``points`` is the open exterior ring (first point not repeated), ``area``
    the polygon area in square pixels, ``bbox`` ``(x_min, y_min, x_max, y_max)``
    of the polygon, and ``index`` the position of the source instance in the
    list given to :func:`instances_to_polygons`.
    """

    points: list[tuple[float, float]]
    label: int
    score: float
    area: float
    bbox: tuple[float, float, float, float]
    index: int = -1


def _crack_ring(mask: np.ndarray) -> np.ndarray | None:
    """Pixel-edge outline of the largest outer contour of ``mask``, as (N, 2) x, y.

    OpenCV traces the centres of boundary pixels, which would put the outline
    half a pixel inside the cell (a one-pixel-wide appendage would collapse to
    a line). Tracing the mask upsampled by two and mapping each sub-pixel
    centre onto the nearest pixel corner gives the exact edge outline: in the
    upsampled grid, sub-pixel ``2r`` is the upper half of pixel ``r`` (edge
    ``y = r``) and ``2r + 1`` its lower half (edge ``y = r + 1``).
    """
    up = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    # Pad so that contours of masks touching the crop border are closed.
    up = np.pad(up, 1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    pts = best.reshape(-1, 2).astype(np.int64) - 1  # undo the padding
    xy = (pts + 1) // 2
    # Mapping to corners repeats points (both halves of a corner land on it).
    keep = np.ones(len(xy), dtype=bool)
    keep[1:] = np.any(xy[1:] != xy[:-1], axis=1)
    xy = xy[keep]
    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]
    return xy.astype(np.float64)


def _largest_polygon(geom: shapely.Geometry) -> Polygon | None:
    """The largest polygon in ``geom`` (after make_valid), without holes."""
    polys: list[Polygon] = []
    if isinstance(geom, Polygon):
        polys = [geom]
    elif isinstance(geom, MultiPolygon):
        polys = list(geom.geoms)
    elif hasattr(geom, "geoms"):  # GeometryCollection from make_valid
        for g in geom.geoms:
            if isinstance(g, Polygon):
                polys.append(g)
            elif isinstance(g, MultiPolygon):
                polys.extend(g.geoms)
    polys = [p for p in polys if not p.is_empty and p.area > 0]
    if not polys:
        return None
    best = max(polys, key=lambda p: p.area)
    return Polygon(best.exterior)


def mask_to_polygon(mask: np.ndarray, *, x0: float = 0.0, y0: float = 0.0, tolerance: float = 0.5) -> Polygon | None:
    """Outer polygon of the largest component of a bool ``mask``, shifted by (x0, y0).

    Holes are dropped (cells are annotated by their outline). The result is
    simplified with ``tolerance`` (pixels, topology preserved), made valid and
    oriented counter-clockwise in (x, y) with y pointing down as stored.
    Returns None when nothing is left.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        return None
    ring = _crack_ring(m)
    if ring is None or len(ring) < 3:
        return None
    poly: shapely.Geometry = Polygon(ring)
    if not poly.is_valid:
        # Pixels that touch only diagonally give a ring that touches itself.
        poly = shapely.make_valid(poly)
    largest = _largest_polygon(poly)
    if largest is None:
        return None
    if tolerance > 0:
        simplified = largest.simplify(tolerance, preserve_topology=True)
        if not simplified.is_valid:
            simplified = shapely.make_valid(simplified)
        largest = _largest_polygon(simplified)
        if largest is None:
            return None
    if x0 or y0:
        largest = shapely.affinity.translate(largest, xoff=x0, yoff=y0)
    return orient(largest, sign=1.0)


def instances_to_polygons(
    instances: Iterable[Instance], *, min_area: float = 4.0, tolerance: float = 0.5
) -> list[ContourResult]:
    """Polygons of instances in image coordinates (see the module docstring).

    Per instance: the outer contour of its largest component, holes dropped,
    simplified by ``tolerance`` pixels, made valid. Instances whose polygon is
    smaller than ``min_area`` square pixels are left out; ``ContourResult.index``
    tells which instance each result came from.
    """
    out: list[ContourResult] = []
    for i, inst in enumerate(instances):
        poly = mask_to_polygon(inst.mask, x0=inst.x0, y0=inst.y0, tolerance=tolerance)
        if poly is None or poly.area < min_area:
            continue
        coords = list(poly.exterior.coords)[:-1]
        minx, miny, maxx, maxy = poly.bounds
        out.append(
            ContourResult(
                points=[(float(x), float(y)) for x, y in coords],
                label=int(inst.label),
                score=float(inst.score),
                area=float(poly.area),
                bbox=(float(minx), float(miny), float(maxx), float(maxy)),
                index=i,
            )
        )
    return out


def polygon_rasterize(points: Sequence[Sequence[float]] | np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Bool (height, width) mask of the pixels whose centre lies inside the polygon.

    ``points`` are ``(x, y)`` in the convention of this module (pixel ``(r, c)``
    has its centre at ``(c + 0.5, r + 0.5)``). Uses the even-odd rule.
    """
    out = np.zeros((height, width), dtype=bool)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3 or height <= 0 or width <= 0:
        return out
    # Scan-line fill evaluated at pixel centres: for each row centre y, find the
    # crossings of the polygon edges and fill the columns whose centre lies
    # between pairs of crossings. Exact for the centre rule, unlike
    # cv2.fillPoly, which also fills every pixel the outline touches.
    xs, ys = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(xs, -1), np.roll(ys, -1)
    r0 = max(int(np.floor(ys.min() - 0.5)), 0)
    r1 = min(int(np.ceil(ys.max() - 0.5)), height - 1)
    for r in range(r0, r1 + 1):
        yc = r + 0.5
        # Half-open rule (y0 <= yc < y1) so a vertex on the scan line counts once.
        cross = ((ys <= yc) & (yn > yc)) | ((yn <= yc) & (ys > yc))
        if not cross.any():
            continue
        xa, ya, xb, yb = xs[cross], ys[cross], xn[cross], yn[cross]
        xi = np.sort(xa + (yc - ya) * (xb - xa) / (yb - ya))
        for left, right in zip(xi[0::2], xi[1::2], strict=False):
            # Columns c with left < c + 0.5 < right. A centre exactly on an edge
            # cannot occur for unsimplified polygons (edges lie on integers).
            c0 = max(int(np.floor(left - 0.5)) + 1, 0)
            c1 = min(int(np.ceil(right - 0.5)) - 1, width - 1)
            if c1 >= c0:
                out[r, c0 : c1 + 1] = True
    return out


def polygon_crop(
    points: Sequence[Sequence[float]] | np.ndarray, *, height: int, width: int
) -> tuple[int, int, np.ndarray] | None:
    """``(x0, y0, mask)``: the polygon rasterised on its bounding box, clipped to the image
    (pixel-centre rule, as :func:`polygon_rasterize`); None when it covers no pixel."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return None
    x0 = max(int(np.floor(pts[:, 0].min())), 0)
    y0 = max(int(np.floor(pts[:, 1].min())), 0)
    x1 = min(int(np.ceil(pts[:, 0].max())), width)
    y1 = min(int(np.ceil(pts[:, 1].max())), height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = polygon_rasterize(pts - (x0, y0), height=y1 - y0, width=x1 - x0)
    return (x0, y0, mask) if mask.any() else None


def instances_as_stored(
    instances: Sequence[Instance], height: int, width: int, *, min_area: float = 20.0, tolerance: float = 0.5
) -> list[Instance]:
    """The instances as a polygon store keeps them and a doctor sees them: their polygons
    (:func:`instances_to_polygons`, simplified by ``tolerance``, under ``min_area`` dropped)
    rasterised back into masks. Scoring these, not the raw masks, measures what is delivered."""
    out: list[Instance] = []
    for contour in instances_to_polygons(instances, min_area=min_area, tolerance=tolerance):
        crop = polygon_crop(contour.points, height=height, width=width)
        if crop is not None:
            x0, y0, mask = crop
            out.append(Instance(x0=x0, y0=y0, mask=mask, label=contour.label, score=contour.score))
    return out
