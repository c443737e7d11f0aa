"""Masks -> polygons -> masks: the polygon convention must give the masks back.

The staircase method is exact (pixel edges); the smooth one (the default) keeps every cell's
rasterised IoU >= MIN_IOU with far fewer vertices."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon

from cytoseg.backends.base import Instance
from cytoseg.contours import (
    MIN_IOU,
    ContourResult,
    instances_as_stored,
    instances_to_polygons,
    mask_to_polygon,
    mask_to_smooth_polygon,
    polygon_rasterize,
)
from cytoseg.synthetic import generate_field


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _star_blob(
    rng: np.random.Generator,
    height: int,
    width: int,
    cx: float,
    cy: float,
    radius: float,
    wobble: float,
) -> np.ndarray:
    """A star-shaped blob: an ellipse with low-harmonic wobble (cells look like this)."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    theta = np.arctan2(yy - cy, xx - cx)
    aspect = rng.uniform(0.5, 1.0)
    rot = rng.uniform(0, np.pi)
    a, b = radius / np.sqrt(aspect), radius * np.sqrt(aspect)
    ct, st = np.cos(theta - rot), np.sin(theta - rot)
    r = a * b / np.sqrt((b * ct) ** 2 + (a * st) ** 2)
    for k in (2, 3, 4, 5):
        r = r * (1 + rng.uniform(0, wobble / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)))
    return np.hypot(xx - cx, yy - cy) <= r


def _roundtrip(inst: Instance, *, height: int, width: int, tolerance: float = 0.5, method: str = "staircase") -> float:
    res = instances_to_polygons([inst], min_area=0.0, tolerance=tolerance, method=method)  # type: ignore[arg-type]
    assert len(res) == 1
    back = polygon_rasterize(res[0].points, height=height, width=width)
    return _iou(back, inst.full_mask(height=height, width=width))


def _crop_instance(mask: np.ndarray) -> Instance:
    rows, cols = np.nonzero(mask)
    y0, x0 = int(rows.min()), int(cols.min())
    crop = mask[y0 : rows.max() + 1, x0 : cols.max() + 1]
    return Instance(x0=x0, y0=y0, mask=crop, label=1, score=1.0)


def test_square_polygon_runs_along_pixel_edges() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:4, 2:5] = True  # rows 1..3, cols 2..4
    poly = mask_to_polygon(mask, tolerance=0.0)
    assert poly is not None
    assert sorted(poly.exterior.coords[:-1]) == [(2, 1), (2, 4), (5, 1), (5, 4)]
    assert poly.area == pytest.approx(9.0)


def test_offset_bbox_area_and_types() -> None:
    mask = np.ones((3, 4), dtype=bool)
    inst = Instance(x0=10, y0=20, mask=mask, label=2, score=0.75)
    (res,) = instances_to_polygons([inst], min_area=1.0, method="staircase")
    assert isinstance(res, ContourResult)
    assert res.bbox == (10.0, 20.0, 14.0, 23.0)
    assert res.area == pytest.approx(12.0)
    assert res.label == 2 and res.score == pytest.approx(0.75) and res.index == 0
    assert all(isinstance(x, float) and isinstance(y, float) for x, y in res.points)
    assert res.points[0] != res.points[-1]  # open ring
    assert Polygon(res.points).is_valid


def test_smooth_offset_bbox_and_types() -> None:
    inst = Instance(x0=10, y0=20, mask=np.ones((3, 4), dtype=bool), label=2, score=0.75)
    (res,) = instances_to_polygons([inst], min_area=1.0)
    assert res.label == 2 and res.score == pytest.approx(0.75) and res.index == 0
    assert np.allclose(res.bbox, (10.0, 20.0, 14.0, 23.0), atol=0.5)
    assert res.points[0] != res.points[-1]
    assert Polygon(res.points).is_valid
    assert np.array_equal(polygon_rasterize(res.points, height=30, width=30), inst.full_mask(height=30, width=30))


@pytest.mark.parametrize("method", ["staircase", "smooth"])
def test_single_pixel_and_one_pixel_line(method: str) -> None:
    for mask in (np.ones((1, 1), bool), np.ones((1, 9), bool), np.ones((7, 1), bool)):
        inst = Instance(x0=3, y0=4, mask=mask, label=1, score=1.0)
        assert _roundtrip(inst, height=16, width=16, method=method) == 1.0


@pytest.mark.parametrize("method", ["staircase", "smooth"])
def test_holes_are_dropped(method: str) -> None:
    mask = np.ones((9, 9), dtype=bool)
    mask[3:6, 3:6] = False
    inst = Instance(x0=0, y0=0, mask=mask, label=1, score=1.0)
    (res,) = instances_to_polygons([inst], min_area=0.0, method=method)  # type: ignore[arg-type]
    back = polygon_rasterize(res.points, height=9, width=9)
    assert Polygon(res.points).is_valid and len(Polygon(res.points).interiors) == 0
    if method == "staircase":
        assert back.all()  # the outline is filled
        assert res.area == pytest.approx(81.0)
    else:  # filled too, up to the rounded corners
        assert np.count_nonzero(back) / 81 >= MIN_IOU


def test_largest_component_kept() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:12, 2:12] = True  # 100 px
    mask[15:18, 20:23] = True  # 9 px, separate
    mask[12, 12] = True  # touches the big square only at a corner
    (res,) = instances_to_polygons([Instance(0, 0, mask, 1, 1.0)], min_area=0.0, method="staircase")
    back = polygon_rasterize(res.points, height=20, width=30)
    assert np.count_nonzero(back) == 100
    assert back[2:12, 2:12].all()
    assert Polygon(res.points).is_valid


def test_min_area_drops_fragments_and_index_maps_back() -> None:
    big = Instance(0, 0, np.ones((10, 10), bool), 1, 0.9)
    tiny = Instance(20, 20, np.ones((1, 2), bool), 1, 0.9)
    empty = Instance(5, 5, np.zeros((3, 3), bool), 1, 0.9)
    other = Instance(30, 0, np.ones((5, 5), bool), 2, 0.4)
    for method in ("staircase", "smooth"):
        res = instances_to_polygons([big, tiny, empty, other], min_area=4.0, method=method)  # type: ignore[arg-type]
        assert [r.index for r in res] == [0, 3]
        assert [r.label for r in res] == [1, 2]


def test_rasterize_uses_pixel_centres() -> None:
    # Centres at 0.5, 1.5, 2.5 lie inside [0.4, 2.6]; 3.5 does not.
    square = [(0.4, 0.4), (2.6, 0.4), (2.6, 2.6), (0.4, 2.6)]
    out = polygon_rasterize(square, height=5, width=5)
    expected = np.zeros((5, 5), bool)
    expected[0:3, 0:3] = True
    assert np.array_equal(out, expected)
    # A sliver that contains no pixel centre rasterises to nothing.
    sliver = [(0.0, 0.0), (5.0, 0.0), (5.0, 0.4), (0.0, 0.4)]
    assert not polygon_rasterize(sliver, height=5, width=5).any()


def test_rasterize_clips_and_handles_degenerate_input() -> None:
    big = [(-10.0, -10.0), (50.0, -10.0), (50.0, 50.0), (-10.0, 50.0)]
    assert polygon_rasterize(big, height=4, width=6).all()
    assert not polygon_rasterize([], height=4, width=4).any()
    assert not polygon_rasterize([(0, 0), (3, 3)], height=4, width=4).any()
    triangle = [(0.0, 0.0), (8.0, 0.0), (0.0, 8.0)]
    out = polygon_rasterize(triangle, height=8, width=8)
    rr, cc = np.mgrid[:8, :8]
    assert np.array_equal(out, (cc + 0.5) + (rr + 0.5) < 8.0)


def test_roundtrip_exact_without_simplification() -> None:
    rng = np.random.default_rng(1)
    for _ in range(40):
        mask = _star_blob(rng, 48, 48, *rng.uniform(14, 34, 2), rng.uniform(4, 14), 0.3)
        assert _roundtrip(_crop_instance(mask), height=48, width=48, tolerance=0.0) == 1.0


@pytest.mark.parametrize("method", ["staircase", "smooth"])
def test_roundtrip_random_blobs(method: str) -> None:
    """Rasterised polygons give the masks back: IoU >= 0.95 each, mean >= 0.98."""
    rng = np.random.default_rng(0)
    height, width = 64, 80
    ious: list[float] = []
    for k in range(200):
        kind = k % 4
        cx, cy = rng.uniform(15, width - 15), rng.uniform(15, height - 15)
        radius = rng.uniform(4, 16)
        if kind == 0:  # ellipse
            mask = _star_blob(rng, height, width, cx, cy, radius, 0.0)
        elif kind == 1:  # irregular
            mask = _star_blob(rng, height, width, cx, cy, radius, 0.35)
        elif kind == 2:  # cut by the image border
            cx = rng.choice([rng.uniform(-radius / 2, 2), rng.uniform(width - 2, width + radius / 2)])
            mask = _star_blob(rng, height, width, cx, cy, radius, 0.2)
        else:  # one-pixel-wide appendage
            mask = _star_blob(rng, height, width, cx, cy, radius, 0.1)
            r, c = int(cy), int(cx)
            if rng.random() < 0.5:
                mask[r, c : min(c + int(radius) + 6, width)] = True
            else:
                mask[r : min(r + int(radius) + 6, height), c] = True
        if np.count_nonzero(mask) < 10:
            continue
        ious.append(_roundtrip(_crop_instance(mask), height=height, width=width, method=method))
    assert len(ious) > 150
    assert min(ious) >= 0.95
    assert float(np.mean(ious)) >= 0.98


def test_roundtrip_synthetic_field() -> None:
    synthetic = pytest.importorskip("cytoseg.synthetic")
    field = synthetic.generate_field(seed=3, width=256, height=256)
    labels = field.label_map()
    instances: list[Instance] = []
    for i in range(len(field.cells)):
        visible = labels == i + 1
        if np.count_nonzero(visible) >= 10:
            instances.append(_crop_instance(visible))
    results = instances_to_polygons(instances, min_area=0.0)
    ious = []
    for res in results:
        inst = instances[res.index]
        back = polygon_rasterize(res.points, height=256, width=256)
        # Cells on top can split or hole a visible part; the polygon keeps the
        # outline of the largest piece, hence the median below.
        ious.append(_iou(back, inst.full_mask(height=256, width=256)))
    assert len(results) == len(instances) > 10
    assert float(np.median(ious)) >= 0.98


# --- the smooth method -----------------------------------------------------------------


def _field_instances(seed: int, difficulty: str) -> list[Instance]:
    field = generate_field(seed=seed, width=256, height=256, difficulty=difficulty)
    labels = field.label_map()
    out = []
    for i, cell in enumerate(field.cells):
        visible = labels == i + 1
        if np.count_nonzero(visible) >= 10:
            crop = _crop_instance(visible)
            out.append(Instance(crop.x0, crop.y0, crop.mask, cell.label, 1.0))
    return out


def _outline(inst: Instance) -> np.ndarray:
    """What a polygon can stand for: the staircase outline (largest part, holes filled)."""
    exact = mask_to_polygon(inst.mask, tolerance=0.0)
    assert exact is not None
    h, w = inst.mask.shape
    return polygon_rasterize(list(exact.exterior.coords)[:-1], height=h, width=w)


def _vertices_and_ious(instances: list[Instance], method: str) -> tuple[list[int], list[float]]:
    results = instances_to_polygons(instances, min_area=0.0, method=method)  # type: ignore[arg-type]
    assert [r.index for r in results] == list(range(len(instances)))
    vertices, ious = [], []
    for res in results:
        inst = instances[res.index]
        poly = Polygon(res.points)
        assert poly.is_valid and poly.geom_type == "Polygon" and not poly.interiors
        h, w = inst.mask.shape
        back = polygon_rasterize(np.asarray(res.points) - (inst.x0, inst.y0), height=h, width=w)
        vertices.append(len(res.points))
        ious.append(_iou(back, _outline(inst)))
    return vertices, ious


@pytest.mark.parametrize("difficulty", ["normal", "hard"])
def test_smooth_synthetic_fields_per_cell_iou_and_few_vertices(difficulty: str) -> None:
    instances = [inst for seed in (11, 12, 13) for inst in _field_instances(seed, difficulty)]
    assert len(instances) > 40
    smooth_v, smooth_iou = _vertices_and_ious(instances, "smooth")
    stair_v, _ = _vertices_and_ious(instances, "staircase")
    assert min(smooth_iou) >= MIN_IOU  # per cell, not on average
    assert float(np.mean(smooth_iou)) >= 0.97
    # Clearly below the staircase: under half its vertices on average.
    assert float(np.mean(smooth_v)) < 0.5 * float(np.mean(stair_v))


def test_smooth_full_synthetic_masks_against_the_mask_itself() -> None:
    """The generator's whole (unoccluded) cells are single blobs: IoU with the mask itself."""
    cells = [*generate_field(seed=21, width=256, height=256).cells]
    cells += generate_field(seed=22, width=256, height=256, difficulty="hard").cells
    instances = [Instance(c.x0, c.y0, c.mask, c.label, 1.0) for c in cells]
    results = instances_to_polygons(instances, min_area=0.0)
    assert len(results) == len(instances)
    for res in results:
        inst = instances[res.index]
        h, w = inst.mask.shape
        back = polygon_rasterize(np.asarray(res.points) - (inst.x0, inst.y0), height=h, width=w)
        assert _iou(back, inst.mask) >= MIN_IOU


def test_small_erythrocyte_has_few_vertices() -> None:
    """A 15 px erythrocyte: about 30 staircase vertices, a dozen smooth ones."""
    rng = np.random.default_rng(5)
    smooth_v, stair_v = [], []
    for _ in range(20):
        mask = _star_blob(rng, 24, 24, *rng.uniform(11.5, 12.5, 2), 7.5, 0.05)
        inst = _crop_instance(mask)
        (smooth,) = instances_to_polygons([inst], min_area=0.0)
        (stair,) = instances_to_polygons([inst], min_area=0.0, method="staircase")
        back = polygon_rasterize(smooth.points, height=24, width=24)
        assert _iou(back, mask) >= MIN_IOU
        smooth_v.append(len(smooth.points))
        stair_v.append(len(stair.points))
    assert float(np.mean(stair_v)) >= 20
    assert float(np.mean(smooth_v)) <= 14
    assert max(smooth_v) < min(stair_v)


def test_smooth_is_deterministic() -> None:
    instances = _field_instances(31, "hard")
    first = instances_to_polygons(instances, min_area=0.0)
    second = instances_to_polygons(instances, min_area=0.0)
    assert [r.points for r in first] == [r.points for r in second]


def test_smooth_lowers_the_tolerance_per_cell() -> None:
    """A tolerance far too coarse for a cell is lowered until the cell keeps MIN_IOU; a
    stricter min_iou keeps more vertices; min_iou 1.0 gives the mask back exactly."""
    rng = np.random.default_rng(8)
    mask = _star_blob(rng, 40, 40, 20, 20, 9, 0.3)
    coarse = mask_to_smooth_polygon(mask, tolerance=6.0)
    strict = mask_to_smooth_polygon(mask, tolerance=6.0, min_iou=0.99)
    exact = mask_to_smooth_polygon(mask, tolerance=6.0, min_iou=1.0)
    assert coarse is not None and strict is not None and exact is not None
    pts = [list(p.exterior.coords)[:-1] for p in (coarse, strict, exact)]
    ious = [_iou(polygon_rasterize(p, height=40, width=40), mask) for p in pts]
    assert ious[0] >= MIN_IOU and ious[1] >= 0.99 and ious[2] == 1.0
    assert len(pts[0]) <= len(pts[1]) <= len(pts[2])


def test_invalid_arguments_are_refused() -> None:
    inst = Instance(0, 0, np.ones((4, 4), bool), 1, 1.0)
    for kwargs in (
        {"tolerance": -0.1},
        {"tolerance": float("nan")},
        {"tolerance": float("inf")},
        {"method": "spline"},
        {"min_iou": 0.0},
        {"min_iou": 1.5},
    ):
        with pytest.raises(ValueError):
            instances_to_polygons([inst], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mask_to_polygon(inst.mask, tolerance=-1.0)
    with pytest.raises(ValueError):
        mask_to_smooth_polygon(inst.mask, sigma=-1.0)


def test_instances_as_stored_uses_the_method() -> None:
    instances = _field_instances(41, "normal")
    smooth = instances_as_stored(instances, 256, 256, min_area=20.0)
    stair = instances_as_stored(instances, 256, 256, min_area=20.0, method="staircase")
    assert len(smooth) == len(stair) > 5
    for a, b in zip(smooth, stair, strict=True):
        ious = _iou(a.full_mask(height=256, width=256), b.full_mask(height=256, width=256))
        assert ious >= MIN_IOU
