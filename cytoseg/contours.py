"""Instance masks <-> polygons (Django-free).

Two ways to outline a mask (``instances_to_polygons(method=...)``):

* ``"smooth"`` (the default, what pre-segmentation stores): marching squares
  (``skimage.measure.find_contours`` at level 0.5) on the mask blurred by a Gaussian of
  ``SMOOTH_SIGMA`` pixels, then Douglas-Peucker simplification. A cell comes out as a
  sub-pixel outline with few vertices (a 15 px erythrocyte: about 10 instead of 30), which
  is what a doctor edits. Per cell the tolerance is lowered (then the blur dropped, then the
  pixel-edge outline taken) until the rasterised polygon has IoU >= ``min_iou`` with the
  outline it stands for (the mask's largest part with its holes filled).
* ``"staircase"``: the pixel-edge ("crack") outline, simplified by ``tolerance``. Exact
  before simplification (``tolerance=0`` gives the mask back), so exports and training
  data use it through :func:`mask_to_polygon`.

Coordinate convention (shared with the frontend and the polygon store):
points are ``(x, y)`` in image pixel units where pixel ``(row r, col c)``
covers the unit square ``[c, c + 1] x [r, r + 1]``; its centre is
``(c + 0.5, r + 0.5)``. A pixel belongs to a polygon when its centre lies
inside it. The polygon of a mask therefore runs along pixel edges (the
"crack" boundary), so that rasterising it gives the mask back exactly before
simplification.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.polygon import orient
from skimage import measure

from cytoseg.backends.base import Instance

__all__ = [
    "CONTOUR_METHODS",
    "MIN_IOU",
    "SMOOTH_SIGMA",
    "ContourMethod",
    "ContourResult",
    "instances_as_stored",
    "instances_to_polygons",
    "mask_to_polygon",
    "mask_to_smooth_polygon",
    "polygon_crop",
    "polygon_rasterize",
]

ContourMethod = Literal["smooth", "staircase"]
CONTOUR_METHODS: tuple[ContourMethod, ...] = ("smooth", "staircase")
# Rasterised IoU every smooth outline keeps with what it outlines (per cell, not on average).
MIN_IOU = 0.95
# Blur before marching squares: enough to round the pixel staircase off, little enough that a
# 5 px erythrocyte keeps its size (a wider blur shrinks convex outlines at level 0.5).
SMOOTH_SIGMA = 0.7


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
    _check_tolerance(tolerance)
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


def _centres_inside(poly: Polygon, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask of the pixels of a ``shape`` crop whose centre lies inside ``poly`` (crop
    coordinates): the rule of :func:`polygon_rasterize`, vectorised for the IoU checks."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return shapely.contains_xy(poly, xx.ravel() + 0.5, yy.ravel() + 0.5).reshape(h, w)


def _marching_ring(mask: np.ndarray, sigma: float) -> Polygon | None:
    """The largest level-0.5 contour of ``mask`` blurred by ``sigma`` (crop coordinates)."""
    pad = math.ceil(3 * sigma) + 2  # background all round: every contour closes
    field = np.pad(mask.astype(np.float64), pad)
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma)
    rings = [c for c in measure.find_contours(field, 0.5) if len(c) >= 4]
    if not rings:
        return None
    # find_contours gives (row, col) of pixel centres; this module's x, y put centres at +0.5.
    polys = [Polygon(np.stack([c[:, 1] - pad + 0.5, c[:, 0] - pad + 0.5], axis=1)) for c in rings]
    return _largest_polygon(shapely.make_valid(max(polys, key=lambda p: abs(p.area))))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _check_tolerance(tolerance: float) -> None:
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")


def mask_to_smooth_polygon(
    mask: np.ndarray,
    *,
    x0: float = 0.0,
    y0: float = 0.0,
    tolerance: float = 0.5,
    min_iou: float = MIN_IOU,
    sigma: float = SMOOTH_SIGMA,
) -> Polygon | None:
    """Smooth sub-pixel outline of the largest component of a bool ``mask``, shifted by (x0, y0).

    Marching squares on the mask blurred by ``sigma``, simplified by Douglas-Peucker with
    ``tolerance`` pixels (topology preserved), made valid (one simple polygon, no holes) and
    oriented as :func:`mask_to_polygon`'s. The outline it stands for is the staircase one
    (:func:`mask_to_polygon` without simplification: the largest part, holes filled); when
    the rasterised result has IoU below ``min_iou`` with it, the next of these is tried:
    half the tolerance, a quarter, none; then the same without blur; then the staircase
    itself, which is exact. So every result reaches ``min_iou``. Deterministic; None when
    nothing is left.
    """
    _check_tolerance(tolerance)
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must lie in (0, 1], got {min_iou!r}")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    m = np.asarray(mask, dtype=bool)
    exact = mask_to_polygon(m, tolerance=0.0)
    if exact is None:
        return None
    # The reference is rasterised on the crop grid plus one pixel all round (a blurred outline
    # may reach past the crop by a fraction of a pixel, never by a whole one).
    shape = (m.shape[0] + 2, m.shape[1] + 2)
    reference = _centres_inside(shapely.affinity.translate(exact, 1, 1), shape)
    tolerances = sorted({tolerance, tolerance / 2, tolerance / 4, 0.0}, reverse=True)
    best = exact
    for s in sorted({sigma, 0.0}, reverse=True):
        ring = _marching_ring(m, s)
        if ring is None:
            continue
        found = None
        for tol in tolerances:
            simplified = ring.simplify(tol, preserve_topology=True) if tol else ring
            candidate = _largest_polygon(shapely.make_valid(simplified))
            if candidate is None or not candidate.is_valid:
                continue
            raster = _centres_inside(shapely.affinity.translate(candidate, 1, 1), shape)
            if _iou(raster, reference) >= min_iou:
                found = candidate
                break
        if found is not None:
            best = found
            break
    if x0 or y0:
        best = shapely.affinity.translate(best, xoff=x0, yoff=y0)
    return orient(best, sign=1.0)


def instances_to_polygons(
    instances: Iterable[Instance],
    *,
    min_area: float = 4.0,
    tolerance: float = 0.5,
    method: ContourMethod = "smooth",
    min_iou: float = MIN_IOU,
) -> list[ContourResult]:
    """Polygons of instances in image coordinates (see the module docstring).

    Per instance: the outer contour of its largest component, holes dropped,
    simplified by ``tolerance`` pixels, made valid; ``method`` ``"smooth"``
    (:func:`mask_to_smooth_polygon`, rasterised IoU >= ``min_iou`` per instance)
    or ``"staircase"`` (:func:`mask_to_polygon`, pixel edges). Instances whose
    polygon is smaller than ``min_area`` square pixels are left out;
    ``ContourResult.index`` tells which instance each result came from.
    Raises ValueError on a negative or non-finite ``tolerance``, an unknown
    ``method`` or ``min_iou`` outside (0, 1].
    """
    _check_tolerance(tolerance)
    if method not in CONTOUR_METHODS:
        raise ValueError(f"method must be one of {', '.join(CONTOUR_METHODS)}, got {method!r}")
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must lie in (0, 1], got {min_iou!r}")
    out: list[ContourResult] = []
    for i, inst in enumerate(instances):
        if method == "smooth":
            poly = mask_to_smooth_polygon(inst.mask, x0=inst.x0, y0=inst.y0, tolerance=tolerance, min_iou=min_iou)
        else:
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
    instances: Sequence[Instance],
    height: int,
    width: int,
    *,
    min_area: float = 20.0,
    tolerance: float = 0.5,
    method: ContourMethod = "smooth",
) -> list[Instance]:
    """The instances as a polygon store keeps them and a doctor sees them: their polygons
    (:func:`instances_to_polygons` with ``method``, simplified by ``tolerance``, under
    ``min_area`` dropped) rasterised back into masks. Scoring these, not the raw masks,
    measures what is delivered."""
    out: list[Instance] = []
    for contour in instances_to_polygons(instances, min_area=min_area, tolerance=tolerance, method=method):
        crop = polygon_crop(contour.points, height=height, width=width)
        if crop is not None:
            x0, y0, mask = crop
            out.append(Instance(x0=x0, y0=y0, mask=mask, label=contour.label, score=contour.score))
    return out
