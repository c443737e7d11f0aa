"""Cells from outlines of several parts (a COCO segmentation of several polygons, a GeoJSON
MultiPolygon): the one rule both imports follow, picked by their ``multipart`` option.

- ``merge`` (the default): parts that overlap or touch become one cell, their union. Parts
  closer than ``TOUCH_TOLERANCE`` pixels count as touching (float noise, parts meeting at a
  corner): they are joined by the sliver where the parts, each grown by the tolerance, overlap,
  so no vertex away from the contact moves. Parts that stay apart, or a union that encloses a
  hole, are refused, suggesting ``split``.
- ``split``: each part its own cell.
- ``refuse``: an outline of several parts is refused.

Every part is first validated like any cell (``cytoseg.geometry.polygon_clean``), then the
merged outline again, so a merge never stores what a cell write would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from cytoseg.geometry import CleanPolygon, GeometryError, polygon_clean

MULTIPART_CHOICES = ("merge", "split", "refuse")

TOUCH_TOLERANCE = 0.01  # pixels: parts closer than this touch


@dataclass(frozen=True)
class PartsOutcome:
    polygons: list[CleanPolygon]  # one per cell to write
    merged: bool = False  # several parts became one cell
    split: bool = False  # several parts became several cells


def _options_hint(word: str) -> str:
    return (
        f"send multipart=merge to join {word} that overlap or touch, or multipart=split to import each as its own cell"
    )


def parts_to_polygons(
    parts: Sequence[object], *, mode: str, width: int, height: int, max_vertices: int, word: str = "polygons"
) -> PartsOutcome:
    """The clean polygons (one per cell) that ``parts`` (raw ``[[x, y], ...]`` outlines of one
    object) become under ``mode``; raises GeometryError saying why they cannot (``word`` names
    the parts in the message: "polygons" for COCO, "parts" for a MultiPolygon)."""
    if mode not in MULTIPART_CHOICES:
        raise ValueError(f"unknown multipart mode {mode!r}")
    if not parts:
        raise GeometryError("has no polygon")
    if len(parts) == 1:
        return PartsOutcome([polygon_clean(parts[0], width=width, height=height, max_vertices=max_vertices)])
    if mode == "refuse":
        raise GeometryError(f"has {len(parts)} {word}; a cell is one polygon ({_options_hint(word)})")
    cleaned = []
    for index, raw in enumerate(parts):
        try:
            cleaned.append(polygon_clean(raw, width=width, height=height, max_vertices=max_vertices))
        except GeometryError as exc:
            raise GeometryError(f"polygon {index}: {exc}") from exc
    if mode == "split":
        return PartsOutcome(cleaned, split=True)
    merged = _merge(cleaned, width=width, height=height, word=word)
    try:
        polygon = polygon_clean(merged, width=width, height=height, max_vertices=max_vertices)
    except GeometryError as exc:
        raise GeometryError(f"its {len(parts)} {word} merged: {exc} (send multipart=split)") from exc
    return PartsOutcome([polygon], merged=True)


def _merge(parts: list[CleanPolygon], *, width: int, height: int, word: str) -> list[list[float]]:
    shapes = [Polygon(p.points) for p in parts]
    union = unary_union(shapes)
    if not isinstance(union, Polygon):
        # Not one piece exactly: bridge the parts that come within the tolerance of each other.
        grown = [s.buffer(TOUCH_TOLERANCE, join_style="mitre") for s in shapes]
        bridges = [a.intersection(b) for i, a in enumerate(grown) for b in grown[i + 1 :] if a.intersects(b)]
        # a bridge at the image's edge may stick out by the tolerance: the image bounds it
        union = unary_union([*shapes, *bridges]).intersection(box(0, 0, width, height))
    if not isinstance(union, Polygon) or union.is_empty:
        raise GeometryError(
            f"its {len(parts)} {word} do not overlap or touch, so they are not one cell "
            "(send multipart=split to import each as its own cell)"
        )
    if union.interiors:
        raise GeometryError(
            f"its {len(parts)} {word} join into an outline with a hole; a cell has none "
            "(send multipart=split to import each as its own cell)"
        )
    return [[float(x), float(y)] for x, y in list(union.exterior.coords)[:-1]]
