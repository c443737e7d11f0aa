"""Tiled pre-segmentation: the plan, region reads, ownership and stitching across tile borders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon

from cytoseg.backends import backend_get
from cytoseg.backends.base import Instance
from cytoseg.contours import instances_to_polygons
from cytoseg.slide_synthetic import SyntheticSlide, slide_synthetic, slide_write
from cytoseg.tiled import (
    ArrayReader,
    TileCell,
    TilePlan,
    cells_stitch,
    margin_for,
    region_reader,
    stitch_stream,
    stitch_summary,
    tile_cells,
    tiled_predict,
    tiles_segment,
)

SIDE, TILE, MARGIN = 1024, 256, 64


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=SIDE, height=SIDE, field_width=512, field_height=512, distinct=4, seed=3)


@pytest.fixture(scope="module")
def rgb(slide: SyntheticSlide) -> np.ndarray:
    return slide.region(0, 0, SIDE, SIDE)


def _poly(points: list[tuple[float, float]]) -> Polygon:
    poly = Polygon(points)
    return poly if poly.is_valid else poly.buffer(0)


def _iou(a: Polygon, b: Polygon) -> float:
    inter = a.intersection(b).area
    return inter / (a.area + b.area - inter) if inter else 0.0


def _matches(target: Polygon, cells: list[TileCell], threshold: float) -> int:
    x0, y0, x1, y1 = target.bounds
    near = [c for c in cells if c.bbox[0] <= x1 and c.bbox[2] >= x0 and c.bbox[1] <= y1 and c.bbox[3] >= y0]
    return sum(1 for c in near if _iou(target, _poly(c.points)) >= threshold)


def test_plan_cores_partition_the_image_and_reads_add_the_margin() -> None:
    plan = TilePlan(1000, 600, tile=256, margin=64)
    assert (plan.columns, plan.rows, plan.count) == (4, 3, 12)
    covered = np.zeros((600, 1000), dtype=np.int32)
    for index in range(plan.count):
        x0, y0, x1, y1 = plan.core(index)
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()
    assert plan.core(5) == (256, 256, 512, 512)
    assert plan.read_box(5) == (192, 192, 576, 576)
    assert plan.read_box(0) == (0, 0, 320, 320)  # cut at the image's edge
    assert plan.read_box(11) == (704, 448, 1000, 600)
    assert plan.crosses_border((250, 10, 260, 20)) and not plan.crosses_border((10, 10, 250, 250))
    assert margin_for(40) == 80 and margin_for(None) == 80 and margin_for(5) == 32
    with pytest.raises(ValueError):
        TilePlan(100, 100, tile=64, margin=65)
    with pytest.raises(ValueError):
        plan.core(12)


def _gt_instances(slide: SyntheticSlide, box: tuple[int, int, int, int]) -> list[Instance]:
    """The ground truth as a perfect model would see it in ``box``: every instance cut to it."""
    x0, y0, x1, y1 = box
    out = []
    for gt in slide.instances():
        h, w = gt.mask.shape
        ax0, ay0, ax1, ay1 = max(x0, gt.x0), max(y0, gt.y0), min(x1, gt.x0 + w), min(y1, gt.y0 + h)
        if ax0 >= ax1 or ay0 >= ay1:
            continue
        mask = gt.mask[ay0 - gt.y0 : ay1 - gt.y0, ax0 - gt.x0 : ax1 - gt.x0]
        if mask.any():
            out.append(Instance(x0=ax0 - x0, y0=ay0 - y0, mask=mask, label=gt.label, score=1.0))
    return out


def test_every_ground_truth_cell_across_a_border_is_kept_once_and_whole(slide: SyntheticSlide) -> None:
    """Ownership and stitching alone, with the ground truth as the model: a cell that crosses a
    core line is seen (cut or whole) by up to four reads and kept exactly once, whole."""
    plan = TilePlan(SIDE, SIDE, tile=TILE, margin=MARGIN)
    kept: list[TileCell] = []
    for index in range(plan.count):
        kept.extend(tile_cells(plan, index, _gt_instances(slide, plan.read_box(index)), min_area=1))
    cells = cells_stitch(kept)
    truth = list(slide.instances())
    assert len(cells) == len(truth)
    assert stitch_summary(cells)["cut"] == 0  # every synthetic cell is smaller than the margin
    crossing = [
        gt for gt in truth if plan.crosses_border((gt.x0, gt.y0, gt.x0 + gt.mask.shape[1], gt.y0 + gt.mask.shape[0]))
    ]
    assert len(crossing) > 30
    for gt in crossing:
        (contour,) = instances_to_polygons([Instance(gt.x0, gt.y0, gt.mask, gt.label, 1.0)], min_area=1)
        target = _poly(contour.points)
        assert _matches(target, cells, 0.9) == 1, (gt.x0, gt.y0)
        assert _matches(target, cells, 0.5) == 1, (gt.x0, gt.y0)


def test_tiled_watershed_matches_the_single_pass_reference_across_borders(rgb: np.ndarray) -> None:
    """The classical backend tiled against the same backend on the whole image: every reference
    cell that crosses a core line and fits in the margin is found once with IoU >= 0.9, and the
    tiled result has no duplicates anywhere."""
    backend = backend_get(name="watershed", artifacts=None, settings={}, device="cpu")
    reference = instances_to_polygons(backend.predict(rgb).instances, min_area=20)
    plan = TilePlan(SIDE, SIDE, tile=TILE, margin=MARGIN)
    cells = tiled_predict(backend, ArrayReader(rgb), plan, batch=3)
    assert abs(len(cells) - len(reference)) <= 0.03 * len(reference)
    checked = 0
    for ref in reference:
        box = tuple(int(v) for v in ref.bbox)
        if not plan.crosses_border(box) or max(box[2] - box[0], box[3] - box[1]) > MARGIN:
            continue  # cells larger than the margin may be cut (documented)
        target = _poly(ref.points)
        assert _matches(target, cells, 0.9) == 1, ref.bbox
        assert _matches(target, cells, 0.5) == 1, ref.bbox
        checked += 1
    assert checked > 20
    polys = [_poly(c.points) for c in cells]
    for i, a in enumerate(polys):
        for b in polys[i + 1 :]:
            if a.bounds[0] <= b.bounds[2] and b.bounds[0] <= a.bounds[2] and a.bounds[1] <= b.bounds[3]:
                if b.bounds[1] <= a.bounds[3]:
                    assert _iou(a, b) < 0.5


def test_a_cell_larger_than_the_margin_is_merged_from_its_fragments() -> None:
    plan = TilePlan(512, 256, tile=256, margin=16)
    yy, xx = np.mgrid[0:512, 0:512]
    disc = (xx - 250) ** 2 + (yy - 128) ** 2 < 60**2  # 120 px across, centroid in tile 0
    kept = []
    for index in range(plan.count):
        x0, y0, x1, y1 = plan.read_box(index)
        mask = disc[y0:y1, x0:x1]
        kept.extend(tile_cells(plan, index, [Instance(0, 0, mask, 1, 1.0)], min_area=1))
    assert sum(c.cut for c in kept) == 2  # each read owns a fragment (its centroid in its core)
    cells = cells_stitch(kept)
    assert len(cells) == 1 and cells[0].cut
    assert stitch_summary(cells) == {"cells": 1, "border": 0, "cut": 1}
    (whole,) = instances_to_polygons([Instance(0, 0, disc, 1, 1.0)], min_area=1)
    assert _iou(_poly(cells[0].points), _poly(whole.points)) > 0.97  # the two reads together hold it whole


def test_a_fragment_of_a_cell_another_tile_holds_whole_is_dropped() -> None:
    plan = TilePlan(512, 256, tile=256, margin=48)
    yy, xx = np.mgrid[0:256, 0:512]
    disc = (xx - 230) ** 2 + (yy - 128) ** 2 < 40**2  # whole in tile 0's read (0..304); cut in tile 1's (208..)
    kept = []
    for index in range(plan.count):
        x0, y0, x1, y1 = plan.read_box(index)
        kept.extend(tile_cells(plan, index, [Instance(0, 0, disc[y0:y1, x0:x1], 1, 1.0)], min_area=1))
    cells = cells_stitch(kept)
    assert len(cells) == 1 and cells[0].tile == 0 and not cells[0].cut


def test_tile_cells_survive_json() -> None:
    cell = TileCell(3, 1, 0.9, 12.5, (1.0, 2.0, 5.0, 6.0), [(1.0, 2.0), (5.0, 2.0), (5.0, 6.0)], -1.5, True, False)
    assert TileCell.from_json(cell.to_json()) == cell


@pytest.mark.parametrize("kind", ["pyramidal-tiff", "svs", "jpeg"])
def test_region_reader_reads_full_resolution_regions(slide: SyntheticSlide, tmp_path: Path, kind: str) -> None:
    path = slide_write(slide, tmp_path / f"slide.{kind}", kind=kind, quality=95)
    reader = region_reader(path)
    try:
        assert (reader.width, reader.height) == (SIDE, SIDE)
        box = (300, 500, 620, 740)
        got = reader.read(box).astype(np.int16)
        want = slide.region(*box).astype(np.int16)
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < 4  # JPEG-compressed
    finally:
        reader.close()


def test_tiles_segment_reports_each_tile_as_it_finishes(rgb: np.ndarray) -> None:
    backend = backend_get(name="watershed", artifacts=None, settings={}, device="cpu")
    plan = TilePlan(SIDE, SIDE, tile=512, margin=MARGIN)
    seen: list[int] = []
    out = list(tiles_segment(backend, ArrayReader(rgb), plan, [3, 1], batch=1, on_tile=lambda i, c: seen.append(i)))
    assert seen == [3, 1] and [i for i, _ in out] == [3, 1]
    x0, _, x1, _ = plan.core(3)
    for cell in out[0][1]:
        cx = (cell.bbox[0] + cell.bbox[2]) / 2
        assert x0 - MARGIN <= cx <= x1 + MARGIN


def test_a_border_copy_of_a_cell_another_tile_keeps_inside_its_core_is_dropped() -> None:
    """Two reads may place one cell's centroid a few pixels apart: the copy that lands just
    outside its own core (kept as a border candidate) gives way to the one deep in its core,
    and the result streams in two passes over the same source."""
    square = [(240.0, 100.0), (262.0, 100.0), (262.0, 122.0), (240.0, 122.0)]
    inner = TileCell(0, 1, 0.9, 484.0, (240.0, 100.0, 262.0, 122.0), square, 9.0, False, False)
    shifted = [(x + 1.0, y) for x, y in square]
    copy = TileCell(1, 1, 0.9, 484.0, (241.0, 100.0, 263.0, 122.0), shifted, -3.0, True, False)
    other = TileCell(
        1, 1, 0.9, 484.0, (300.0, 100.0, 322.0, 122.0), [(x + 60.0, y) for x, y in square], -2.0, True, False
    )
    calls = []

    def source() -> list[TileCell]:
        calls.append(1)
        return [copy, inner, other]

    kept = list(stitch_stream(source))
    assert len(calls) == 2
    assert kept == [inner, other]
