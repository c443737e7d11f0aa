"""Region-growing backend (erosion seeds at moment centroids, grown back into the mask)."""

from __future__ import annotations

import numpy as np
import pytest

from cytoseg.backends import BackendError, backend_class
from cytoseg.backends.region_growing import (
    RegionGrowingBackend,
    RegionGrowingSettings,
    _seed_points,
    region_growing_split,
)

BACKGROUND = (240, 230, 238)
PURPLE = (150, 105, 190)
RED = (225, 130, 150)
H, W = 80, 120


def _disc_mask(cx: float, cy: float, r: float, height: int = H, width: int = W) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _paint(masks_colours: list[tuple[np.ndarray, tuple[int, int, int]]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((H, W, 3), np.float32)
    img[:] = BACKGROUND
    for m, colour in masks_colours:
        img[m] = colour
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def _backend(**settings: object) -> RegionGrowingBackend:
    return RegionGrowingBackend(artifacts=None, settings=settings, device="cpu")


def test_registered_under_its_name() -> None:
    assert backend_class("region_growing") is RegionGrowingBackend


def test_seed_is_the_moment_centroid() -> None:
    m = np.zeros((30, 40), np.uint8)
    m[5:16, 10:31] = 1  # 11 x 21 rectangle, centroid (row 10, col 20)
    assert _seed_points(m) == [(10, 20)]


def test_seed_of_non_convex_component_lies_inside() -> None:
    ring = _disc_mask(20, 20, 12, 40, 40) & ~_disc_mask(20, 20, 7, 40, 40)
    ring[18:23, 20:] = False  # a "C": the centroid falls in the hole
    (seed,) = _seed_points(ring.astype(np.uint8))
    assert ring[seed]


def test_touching_discs_are_split_and_grown_back() -> None:
    a = _disc_mask(40, 40, 12)
    b = _disc_mask(64, 40, 12)  # centres 24 apart: a one-pixel neck
    fg = a | b
    pred = _backend(erythrocyte_filter="off").predict_from_mask(_paint([]), fg)
    assert len(pred.instances) == 2
    fulls = [i.full_mask(height=H, width=W) for i in pred.instances]
    # Grown back into the original mask: nothing outside it, all of it covered.
    union = np.logical_or.reduce(fulls)
    assert np.array_equal(union, fg)
    assert min(max(_iou(f, t) for f in fulls) for t in (a, b)) >= 0.9
    assert set(pred.timings) >= {"foreground", "seeds", "grow", "instances", "total"}
    assert all(i.score == 1.0 for i in pred.instances)  # a given mask is certain


def test_erosion_depth_controls_splitting() -> None:
    fg = _disc_mask(40, 40, 14) | _disc_mask(66, 40, 14)  # neck ~13 px wide
    assert len(_backend(erythrocyte_filter="off").predict_from_mask(_paint([]), fg).instances) == 1
    deep = _backend(erythrocyte_filter="off", erosion_radius=8)
    assert len(deep.predict_from_mask(_paint([]), fg).instances) == 2


def test_unseeded_small_components() -> None:
    fg = _disc_mask(40, 40, 12)
    fg[60:63, 90:110] = True  # 3 px thick bar: erosion by r=2 removes it entirely
    cfg_keep = RegionGrowingSettings(erosion_radius=2, opening_radius=0, min_area=10)
    labels, _ = region_growing_split(fg, cfg_keep)
    assert labels.max() == 2 and np.array_equal(labels > 0, fg)
    cfg_drop = RegionGrowingSettings(erosion_radius=2, opening_radius=0, keep_unseeded=False)
    labels, _ = region_growing_split(fg, cfg_drop)
    assert labels.max() == 1 and not labels[61, 100]


def test_colour_image_with_erythrocyte() -> None:
    cells = [_disc_mask(25, 25, 11), _disc_mask(80, 22, 13), _disc_mask(30, 60, 10)]
    red = _disc_mask(90, 60, 7)
    image = _paint([(m, PURPLE) for m in cells] + [(red, RED)])
    pred = _backend().predict(image)
    assert pred.semantic is not None and pred.semantic.dtype == np.uint8
    assert sorted(i.label for i in pred.instances) == [1, 1, 1, 2]
    (ery,) = [i for i in pred.instances if i.label == 2]
    assert _iou(ery.full_mask(height=H, width=W), red) >= 0.8
    assert all(0.5 < i.score <= 1.0 for i in pred.instances)
    assert len(_backend(erythrocyte_filter="drop").predict(image).instances) == 3


def test_semantic_mask_decides_classes() -> None:
    semantic = np.zeros((H, W), np.uint8)
    semantic[_disc_mask(30, 30, 12)] = 1
    semantic[_disc_mask(80, 40, 8)] = 2
    # The image is blank: the classes can only come from the semantic map.
    pred = _backend().predict_from_mask(_paint([]), semantic)
    assert sorted(i.label for i in pred.instances) == [1, 2]
    assert pred.semantic is not None and np.array_equal(pred.semantic, semantic)
    pred_off = _backend(erythrocyte_filter="off").predict_from_mask(_paint([]), semantic)
    assert [i.label for i in pred_off.instances] == [1, 1]


def test_empty_mask_and_bad_shapes() -> None:
    pred = _backend().predict_from_mask(_paint([]), np.zeros((H, W), bool))
    assert pred.instances == [] and pred.semantic is not None and not pred.semantic.any()
    with pytest.raises(BackendError):
        _backend().predict_from_mask(_paint([]), np.zeros((H, W + 1), bool))
    with pytest.raises(BackendError):
        _backend(erosion_radius=-1)


def test_synthetic_field_quality() -> None:
    synthetic = pytest.importorskip("cytoseg.synthetic")
    from cytoseg.metrics import best_match_precision, pixel_dice

    field = synthetic.generate_field(seed=6, width=256, height=256)
    semantic = field.semantic_map()
    backend = _backend()
    pred = backend.predict(field.image)
    assert pred.semantic is not None
    assert pixel_dice(pred.semantic > 0, semantic > 0) >= 0.9  # measured 0.965
    assert best_match_precision(pred.instances, field.label_map(), threshold=0.7) >= 0.6  # 0.81
    # From the true semantic map (an oracle nnU-Net), the masks are the truth's.
    oracle = backend.predict_from_mask(field.image, semantic)
    assert oracle.semantic is not None
    assert pixel_dice(oracle.semantic > 0, semantic > 0) >= 0.98
    assert np.mean(oracle.semantic[semantic > 0] == semantic[semantic > 0]) >= 0.9
