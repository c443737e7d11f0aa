"""The scripted doctor's operation accounting (bench/effort_bench.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from shapely.affinity import translate
from shapely.geometry import Point, Polygon

from cytoseg.backends.base import Instance

# bench/ is not a package: the script is loaded from its file
_SPEC = importlib.util.spec_from_file_location(
    "effort_bench", Path(__file__).resolve().parents[2] / "bench" / "effort_bench.py"
)
assert _SPEC is not None and _SPEC.loader is not None
eb = importlib.util.module_from_spec(_SPEC)
sys.modules["effort_bench"] = eb  # dataclasses look their module up by name
_SPEC.loader.exec_module(eb)


def _disk(cx: float, cy: float, r: float, label: int = 1, size: int = 64) -> eb.Cell:
    yy, xx = np.mgrid[:size, :size]
    mask = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) <= r
    rows, cols = np.nonzero(mask)
    y0, x0 = int(rows.min()), int(cols.min())
    return eb.Cell(x0=x0, y0=y0, mask=mask[y0 : rows.max() + 1, x0 : cols.max() + 1], label=label)


def _field(cells: list[eb.Cell], proposals: list[tuple[Polygon, int]]) -> eb.Field:
    return eb.Field(image=np.full((64, 64, 3), 230, np.uint8), cells=cells, proposals=proposals)


def _instance(cell: eb.Cell, *, shrink: int = 0) -> Instance:
    mask = cell.mask.copy()
    if shrink:
        from scipy import ndimage as ndi

        mask = ndi.binary_erosion(mask, iterations=shrink)
    return Instance(x0=cell.x0, y0=cell.y0, mask=mask, label=cell.label, score=1.0)


def _no_click(pos: Sequence[tuple[float, float]], neg: Sequence[tuple[float, float]]) -> Instance | None:
    raise AssertionError("no click expected")


def test_perfect_proposal_costs_one_accept() -> None:
    cell = _disk(30, 30, 9)
    f = _field([cell], [(eb.drawn_polygon(cell), 1)])
    for tally in (eb.mode_edit(f), eb.mode_click(f, _no_click)):
        assert dict(tally.ops) == {"accept": 1}
        assert tally.seconds == pytest.approx(eb.M + eb.K)


def test_wrong_class_costs_a_class_key() -> None:
    cell = _disk(30, 30, 9, label=2)
    tally = eb.mode_edit(_field([cell], [(eb.drawn_polygon(cell), 1)]))
    assert dict(tally.ops) == {"accept": 1, "class": 1}


def test_missed_cell_costs_its_vertices() -> None:
    cell = _disk(30, 30, 9)
    n = len(eb.vertices(eb.drawn_polygon(cell)))
    assert 6 <= n <= 20
    f = _field([cell], [])
    for tally in (eb.mode_draw(f), eb.mode_edit(f)):
        assert dict(tally.ops) == {"vertex": n, "close": 1}
        assert tally.seconds == pytest.approx(eb.M + n * (eb.P + 2 * eb.B) + eb.K)
    assert eb.cell_iou(eb.drawn_polygon(cell), cell) >= eb.REACH_IOU


def test_false_positive_costs_one_reject() -> None:
    cell = _disk(20, 20, 8)
    stray = Point(50, 50).buffer(6)
    tally = eb.mode_edit(_field([cell], [(eb.drawn_polygon(cell), 1), (stray, 1)]))
    assert dict(tally.ops) == {"accept": 1, "reject": 1}


def test_shifted_proposal_is_edited_with_vertex_moves() -> None:
    cell = _disk(30, 30, 10)
    shifted = translate(eb.drawn_polygon(cell), 2.5, 0)
    assert eb.MATCH_IOU <= eb.cell_iou(shifted, cell) < eb.REACH_IOU
    poly, tally = eb.fix_by_editing(shifted, cell, label=1)
    assert eb.cell_iou(poly, cell) >= eb.REACH_IOU
    assert tally.ops["move"] >= 1 and tally.ops["vertex"] == 0  # edited, not redrawn
    assert tally.total < len(eb.vertices(eb.drawn_polygon(cell))) + 2


def test_click_path_uses_clicks() -> None:
    cells = [_disk(20, 20, 8), _disk(45, 45, 9)]
    calls: list[tuple[list[tuple[float, float]], list[tuple[float, float]]]] = []

    def click(pos: Sequence[tuple[float, float]], neg: Sequence[tuple[float, float]]) -> Instance | None:
        calls.append((list(pos), list(neg)))
        x, y = pos[0]
        for cell in cells:
            if cell.mask[int(y) - cell.y0, int(x) - cell.x0] if _inside(cell, x, y) else False:
                return _instance(cell)
        return None

    # the first cell proposed as it is, the second missed: one accept, one click
    tally = eb.mode_click(_field(cells, [(eb.drawn_polygon(cells[0]), 1)]), click)
    assert dict(tally.ops) == {"accept": 1, "click": 1}
    x, y = calls[0][0][0]
    assert cells[1].mask[int(y) - cells[1].y0, int(x) - cells[1].x0]  # clicked inside the cell
    # a bad proposal is rejected, then clicked
    bad = translate(eb.drawn_polygon(cells[1]), 3.5, 0)
    tally = eb.mode_click(_field(cells, [(eb.drawn_polygon(cells[0]), 1), (bad, 1)]), click)
    assert dict(tally.ops) == {"accept": 1, "reject": 1, "click": 1}


def _inside(cell: eb.Cell, x: float, y: float) -> bool:
    h, w = cell.mask.shape
    return 0 <= int(y) - cell.y0 < h and 0 <= int(x) - cell.x0 < w


def test_click_short_of_the_cell_is_finished_by_more_clicks_or_the_brush() -> None:
    cell = _disk(30, 30, 12)

    def click(pos: Sequence[tuple[float, float]], neg: Sequence[tuple[float, float]]) -> Instance | None:
        return _instance(cell, shrink=3)  # always too small: further clicks do not help

    poly, tally = eb.click_to_truth(cell, click, (64, 64))
    assert eb.cell_iou(poly, cell) >= eb.REACH_IOU
    assert tally.ops["click"] == 2 and tally.ops["undo"] == 1  # the second click changed nothing
    assert 1 <= tally.ops["stroke"] <= eb.MAX_STROKES
    assert tally.ops["vertex"] == 0
    # a stroke costs its drag time on top of P + BB
    assert tally.seconds > 2 * eb.SECONDS["click"] + eb.SECONDS["undo"] + tally.ops["stroke"] * eb.SECONDS["stroke"]


def test_click_that_finds_nothing_falls_back() -> None:
    cell = _disk(30, 30, 9)
    poly, tally = eb.click_to_truth(cell, lambda pos, neg: None, (64, 64))
    assert eb.cell_iou(poly, cell) >= eb.REACH_IOU
    assert tally.ops["click"] == 2  # the first and one extra, undone
    assert set(tally.ops) <= set(eb.OPERATIONS)


def test_brush_adds_and_removes_one_valid_polygon() -> None:
    square = Polygon([(10, 10), (30, 10), (30, 30), (10, 30)])
    added = eb.brush(square, [(30, 15), (30, 25)], 3.0, add=True)
    assert added is not None and added.is_valid and added.area > square.area
    removed = eb.brush(square, [(5, 20), (35, 20)], 2.0, add=False)  # cuts the square in two
    assert removed is not None and removed.is_valid and removed.geom_type == "Polygon"
    assert removed.area < square.area / 2 + 1
    assert eb.brush(None, [(5, 5)], 2.0, add=False) is None
    assert eb.brush(None, [(5, 5)], 2.0, add=True) is not None


def test_ground_truth_keeps_the_largest_part_and_drops_small_ones() -> None:
    mask = np.zeros((20, 40), bool)
    mask[2:12, 2:12] = True
    mask[2:6, 30:34] = True  # a second, smaller part
    tiny = Instance(x0=0, y0=0, mask=np.ones((3, 3), bool), label=1, score=1.0)
    (cell,) = eb.ground_truth([Instance(x0=5, y0=5, mask=mask, label=2, score=1.0), tiny])
    assert cell.label == 2 and np.count_nonzero(cell.mask) == 100


def test_bad_proposal_one_vertex_off_is_edited_in_c() -> None:
    cell = _disk(30, 30, 6)
    pts = eb.vertices(eb.drawn_polygon(cell))
    x, y = pts[0]
    pts[0] = (30 + (x - 30) * 3, 30 + (y - 30) * 3)  # one vertex dragged far out
    bad = Polygon(pts)
    assert eb.MATCH_IOU <= eb.cell_iou(bad, cell) < eb.REACH_IOU
    tally = eb.mode_click(_field([cell], [(bad, 1)]), lambda pos, neg: None)
    assert dict(tally.ops) == {"move": 1}


@pytest.mark.parametrize("grow", [1.0, -1.0])
def test_outline_off_by_a_pixel_all_round_is_fixed_by_one_stroke_along_the_edge(grow: float) -> None:
    cell = _disk(30, 30, 7, label=2)  # an erythrocyte: one pixel all round misses REACH_IOU
    bad = eb.drawn_polygon(cell).buffer(grow, quad_segs=8)
    assert eb.MATCH_IOU <= eb.cell_iou(bad, cell) < eb.REACH_IOU
    region, missing = eb._largest_error(bad, cell)
    assert missing == (grow < 0)
    tally = eb.Tally()
    fixed, score = eb.strokes_to_truth(bad, eb.cell_iou(bad, cell), cell, tally)
    assert score >= eb.REACH_IOU and dict(tally.ops) == {"stroke": 1}
    # the brush's edge ran along the cell's edge: erasing took (almost) nothing of the cell, adding
    # spilled (almost) nothing out of it
    target, got = eb.cell_target(cell), eb.raster(fixed, cell.window)
    assert np.count_nonzero(target & ~got if grow > 0 else got & ~target) <= 0.05 * np.count_nonzero(target)
    # the stroke went all round the cell and back to where it began
    path, radius = eb.stroke_path(region, cell, missing, eb.cell_target(cell) ^ eb.raster(bad, cell.window))
    assert path[0] == path[-1] and radius == pytest.approx(1.5)
