"""Outlines of several parts (COCO segmentations of several polygons, GeoJSON MultiPolygons):
merge, split and refuse (interchange.services.parts), without the database."""

from __future__ import annotations

import pytest
from shapely.geometry import Polygon
from shapely.ops import unary_union

from cytoseg.geometry import GeometryError
from interchange.services.parts import TOUCH_TOLERANCE, parts_to_polygons

W, H = 100, 80


def square(x: float, y: float, size: float = 10) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size]]


def run(parts: list[list[list[float]]], mode: str = "merge") -> list[Polygon]:
    outcome = parts_to_polygons(parts, mode=mode, width=W, height=H, max_vertices=1000)
    assert outcome.merged == (mode == "merge" and len(parts) > 1)
    assert outcome.split == (mode == "split" and len(parts) > 1)
    return [Polygon(p.points) for p in outcome.polygons]


def test_one_part_is_one_cell_whatever_the_mode() -> None:
    for mode in ("merge", "split", "refuse"):
        (cell,) = run([square(5, 5)], mode)
        assert cell.equals(Polygon(square(5, 5)))


def test_overlapping_parts_merge_into_their_union() -> None:
    parts = [square(10, 10, 20), square(20, 20, 20)]
    (cell,) = run(parts)
    assert cell.equals(unary_union([Polygon(p) for p in parts]))
    assert cell.area == pytest.approx(20 * 20 * 2 - 10 * 10)


def test_parts_sharing_an_edge_merge_exactly() -> None:
    (cell,) = run([square(10, 10), square(20, 10)])
    assert cell.equals(Polygon([[10, 10], [30, 10], [30, 20], [10, 20]]))


@pytest.mark.parametrize("gap", [0.0, TOUCH_TOLERANCE / 2])
def test_parts_meeting_at_a_corner_or_nearly_touching_merge_with_a_sliver(gap: float) -> None:
    a, b = square(10, 10), square(20 + gap, 20 + gap)
    (cell,) = run([a, b])
    assert cell.is_valid and not cell.interiors
    assert cell.area == pytest.approx(200, abs=0.01)  # the bridge adds next to nothing
    assert cell.buffer(1e-9).contains(Polygon(a)) and cell.buffer(1e-9).contains(Polygon(b))
    # Vertices away from the contact stay where they were.
    coords = {tuple(map(float, c)) for c in cell.exterior.coords}
    assert {(10.0, 10.0), (30 + gap, 30 + gap)} <= coords


def test_a_bridge_at_the_image_edge_stays_inside_the_image() -> None:
    (cell,) = run([square(0, 0), square(10, 10)])
    x0, y0, _, _ = cell.bounds
    assert (x0, y0) == (0, 0)


def test_disjoint_parts_are_refused_under_merge_suggesting_split() -> None:
    with pytest.raises(GeometryError, match=r"do not overlap or touch.*multipart=split"):
        run([square(10, 10), square(40, 40)])
    with pytest.raises(GeometryError, match="do not overlap or touch"):
        run([square(10, 10), square(20 + 3 * TOUCH_TOLERANCE, 10)])


def test_parts_enclosing_a_hole_are_refused_under_merge() -> None:
    ring = [[[10, 10], [40, 10], [40, 15], [10, 15]], [[10, 35], [40, 35], [40, 40], [10, 40]]]
    ring += [[[10, 10], [15, 10], [15, 40], [10, 40]], [[35, 10], [40, 10], [40, 40], [35, 40]]]
    with pytest.raises(GeometryError, match="hole"):
        run(ring)


def test_split_and_refuse() -> None:
    cells = run([square(10, 10), square(40, 40)], "split")
    assert [c.equals(Polygon(p)) for c, p in zip(cells, [square(10, 10), square(40, 40)], strict=True)] == [True, True]
    with pytest.raises(GeometryError, match="has 2 polygons; a cell is one polygon"):
        run([square(10, 10), square(15, 15)], "refuse")


def test_each_part_is_validated_like_a_cell() -> None:
    with pytest.raises(GeometryError, match=r"polygon 1: .*outside the image"):
        run([square(10, 10), square(95, 10)])
    with pytest.raises(GeometryError, match=r"polygon 0: .*not a valid simple polygon"):
        run([[[0, 0], [10, 10], [10, 0], [0, 10]], square(40, 40)], "split")
