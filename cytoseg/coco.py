"""COCO conversion (Django-free): cell polygons <-> COCO segmentations.

Coordinates: the platform's polygons are ``[[x, y], ...]`` in image pixels with (0, 0) the
top-left corner of the top-left pixel, which is also COCO's convention, so polygon
coordinates are written unchanged (flattened to ``[x1, y1, x2, y2, ...]``).

Areas are what pycocotools computes for the segmentation (``frPyObjects`` then ``area``: the
number of pixels of the rasterised polygon), not the geometric area of the polygon, so that
COCOeval's area ranges see exactly the numbers pycocotools itself would. RLE is pycocotools'
compressed RLE with ``counts`` as a string. Imported RLE masks become the outer contour of their
largest region (OpenCV, along pixel edges, holes filled; see :mod:`cytoseg.contours`), so
that the platform's rasteriser gives that region back exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cytoseg.contours import mask_to_polygon

__all__ = [
    "ImportedSegmentation",
    "SegmentationError",
    "csv_numbers",
    "flat_is_polygon",
    "flat_text_numbers",
    "flats_numbers",
    "polygon_flatten",
    "polygon_text_flat",
    "rle_areas",
    "rle_json",
    "rles_from_flat",
    "segmentation_area",
    "segmentation_points",
]


class SegmentationError(ValueError):
    """A COCO segmentation that cannot become a cell; the message says why."""


# --- export --------------------------------------------------------------------------------


_STRIP = str.maketrans("", "", "[] ")


_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_FLAT = re.compile(rf"{_NUMBER}(?:,{_NUMBER})*")


def flat_is_polygon(flat: str) -> bool:
    """Whether a flat list body (:func:`polygon_text_flat`) is at least 3 pairs of JSON numbers;
    a stored row that is not (``true``, text, an odd count) is skipped by the export, not fatal."""
    return bool(_FLAT.fullmatch(flat)) and flat.count(",") % 2 == 1 and flat.count(",") >= 5


def polygon_text_flat(text: str) -> str:
    """The JSON text of a stored polygon ``[[x, y], ...]`` as the body of COCO's flat list
    ``x,y,x,y,...`` (no brackets), without decoding the numbers."""
    return text.translate(_STRIP)


def flat_text_numbers(flat: str) -> np.ndarray:
    """The numbers of a flat list body ``x,y,x,y,...`` as float64."""
    return np.array(flat.split(","), dtype=np.float64)


_POW10 = 10.0 ** np.arange(23)  # exact doubles
_IPOW10 = 10 ** np.arange(19, dtype=np.int64)


def csv_numbers(text: str) -> np.ndarray:
    """The numbers of ``text`` (``x,y,x,y,...``, as JSON writes them) as float64, bit for bit what
    ``float()`` gives, parsed with array operations.

    A plain decimal of at most 15 digits is its integer mantissa M < 2**53 divided by 10**k
    (k <= 22): both are exact doubles and IEEE division rounds correctly, so the result is the
    correctly rounded value, as ``float()``'s. Anything else (more digits, exponents) goes
    through ``float()``.
    """
    try:
        buf = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        return flat_text_numbers(text)
    sep = buf == 44  # ,
    digit = (buf >= 48) & (buf <= 57)
    dot = buf == 46
    minus = buf == 45
    seps = np.flatnonzero(sep)
    starts = np.concatenate(([0], seps + 1))
    ends = np.concatenate((seps, [buf.size]))
    if buf.size == 0 or (ends <= starts).any() or not (sep | digit | dot | minus).all():
        return flat_text_numbers(text)  # empty numbers or exponents: the general path
    token = np.cumsum(sep) - sep  # the number each character belongs to
    digits_upto = np.cumsum(digit)
    digits_end = digits_upto[ends - 1]
    n_digits = digits_end - np.concatenate(([0], digits_upto[starts[1:] - 1]))
    power = np.minimum(digits_end[token] - digits_upto, 18)  # of each digit within its mantissa
    mantissa = np.add.reduceat(np.where(digit, (buf.astype(np.int64) - 48) * _IPOW10[power], 0), starts)
    decimals = np.zeros(starts.size, dtype=np.int64)
    dots = np.flatnonzero(dot)
    decimals[token[dots]] = digits_end[token[dots]] - digits_upto[dots]
    minuses = np.flatnonzero(minus)
    negative = np.zeros(starts.size, dtype=bool)
    negative[token[minuses]] = True
    general = (
        (n_digits == 0)
        | (n_digits > 15)
        | (np.bincount(token[dots], minlength=starts.size) > 1)
        | (np.bincount(token[minuses], minlength=starts.size) > 1)
    )
    misplaced = minuses[minuses != starts[token[minuses]]]
    general[token[misplaced]] = True
    values = mantissa.astype(np.float64) / _POW10[np.minimum(decimals, 22)]
    values[negative] *= -1.0
    if general.any():
        parts = text.split(",")
        indices = np.flatnonzero(general)
        values[indices] = np.array([parts[i] for i in indices], dtype=np.float64)
    return values


def flats_numbers(flats: Sequence[str]) -> list[np.ndarray]:
    """:func:`csv_numbers` of many flat list bodies at once (one parse), one array each."""
    if not flats:
        return []
    values = csv_numbers(",".join(flats))
    out = []
    start = 0
    for flat in flats:
        end = start + flat.count(",") + 1
        out.append(values[start:end])
        start = end
    return out


def polygon_flatten(points: Sequence[Sequence[float]]) -> list[float]:
    """``[[x, y], ...]`` -> ``[x, y, x, y, ...]`` (COCO's polygon layout)."""
    return [float(v) for point in points for v in point]


def rles_from_flat(
    polygons: Sequence[np.ndarray | Sequence[float]], *, height: int, width: int
) -> list[dict[str, Any]]:
    """Compressed RLE of each single-polygon segmentation, rasterised by pycocotools
    (one ``frPyObjects`` call for all of them; every polygon has at least 3 points)."""
    if not polygons:
        return []
    return list(mask_utils.frPyObjects(list(polygons), height, width))


def rle_areas(rles: Sequence[dict[str, Any]]) -> list[float]:
    """pycocotools' area (pixel count) of each RLE."""
    areas: list[float] = []
    # pycocotools' area() builds np.array((n,), dtype=np.uint8) internally, which NumPy 2
    # refuses for n > 255: ask for at most 255 at a time.
    for start in range(0, len(rles), 255):
        areas.extend(float(a) for a in mask_utils.area(list(rles[start : start + 255])))
    return areas


def segmentation_area(points: Sequence[Sequence[float]], *, height: int, width: int) -> float:
    """The area pycocotools gives the polygon ``points`` in a ``height`` x ``width`` image
    (what ``COCO.annToRLE`` + ``mask.area`` compute)."""
    rles = mask_utils.frPyObjects([polygon_flatten(points)], height, width)
    return float(mask_utils.area(mask_utils.merge(rles)))


def rle_json(rle: dict[str, Any]) -> dict[str, Any]:
    """A pycocotools RLE with ``counts`` as text, ready for JSON."""
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


# --- import --------------------------------------------------------------------------------


@dataclass
class ImportedSegmentation:
    points: list[list[float]]
    warnings: list[str] = field(default_factory=list)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flat_points(flat: object, label: str) -> list[list[float]]:
    if not isinstance(flat, list) or not all(_number(v) for v in flat):
        raise SegmentationError(
            f"{'a polygon' if label == 'polygon' else label} must be a list of numbers [x1, y1, x2, y2, ...]"
        )
    if len(flat) % 2:
        raise SegmentationError(f"{label} has an odd number of coordinates ({len(flat)})")
    if len(flat) < 6:
        raise SegmentationError(f"{label} has {len(flat) // 2} point(s); a cell needs at least 3")
    return [[float(flat[i]), float(flat[i + 1])] for i in range(0, len(flat), 2)]


def polygon_parts(segmentation: list[Any]) -> list[list[list[float]]]:
    """Each polygon of a COCO polygon segmentation (``[[x1, y1, ...], ...]``, or one flat list,
    which some tools write) as ``[[x, y], ...]``. Raises :class:`SegmentationError` naming the
    polygon (by index when there are several)."""
    if not segmentation:
        raise SegmentationError("segmentation is an empty list")
    if all(_number(v) for v in segmentation):
        # A flat list instead of a list of polygons; some tools write that.
        parts: list[Any] = [segmentation]
    else:
        parts = segmentation
    if len(parts) == 1:
        return [_flat_points(parts[0], "polygon")]
    return [_flat_points(flat, f"polygon {index}") for index, flat in enumerate(parts)]


def _polygon_points(segmentation: list[Any]) -> list[list[float]]:
    parts = polygon_parts(segmentation)
    if len(parts) != 1:
        raise SegmentationError(
            f"segmentation has {len(parts)} polygons; a cell is one polygon (split it into several annotations)"
        )
    return parts[0]


def _rle_points(segmentation: dict[str, Any], *, height: int, width: int) -> ImportedSegmentation:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise SegmentationError("RLE size must be [height, width]")
    if size != [height, width]:
        raise SegmentationError(f"RLE size {size} does not match the image ({height}x{width}, as [height, width])")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise SegmentationError("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise SegmentationError(f"uncompressed RLE counts sum to {sum(counts)}, not height x width")
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    elif isinstance(counts, str):
        rle = {"size": size, "counts": counts.encode("ascii", errors="replace")}
    else:
        raise SegmentationError("RLE counts must be a string (compressed) or a list of integers")
    try:
        mask = mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises bare exceptions on corrupt counts
        raise SegmentationError(f"RLE cannot be decoded ({exc})") from exc
    if mask.shape != (height, width) or not mask.any():
        raise SegmentationError("RLE mask is empty")
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    n_regions, _ = cv2.connectedComponents(crop, connectivity=8)
    polygon = mask_to_polygon(crop.astype(bool), x0=x0, y0=y0, tolerance=0.0)
    if polygon is None:
        raise SegmentationError("RLE mask has no region that makes a polygon")
    warnings = []
    if n_regions - 1 > 1:
        warnings.append(f"RLE mask has {n_regions - 1} separate regions; kept the largest")
    coords = list(polygon.exterior.coords)[:-1]
    return ImportedSegmentation(points=[[float(x), float(y)] for x, y in coords], warnings=warnings)


def segmentation_points(segmentation: object, *, height: int, width: int) -> ImportedSegmentation:
    """The outline of a COCO segmentation as ``[[x, y], ...]``: a polygon (``[[x1, y1, ...]]``,
    one part) as it is, an RLE (compressed or not) as the outer contour of its largest region.

    Raises :class:`SegmentationError` with the reason. The points are not yet validated against
    the image (the caller runs the platform's polygon validation).
    """
    if isinstance(segmentation, list):
        return ImportedSegmentation(points=_polygon_points(segmentation))
    if isinstance(segmentation, dict):
        return _rle_points(segmentation, height=height, width=width)
    raise SegmentationError("segmentation must be a list of polygons or an RLE object")
