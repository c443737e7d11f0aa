"""cytoseg.regions: the rules every user of a region of interest shares."""

from __future__ import annotations

import numpy as np
import pytest

from cytoseg.geometry import GeometryError
from cytoseg.regions import (
    OUTSIDE,
    cells_inside,
    polygon_centroid,
    region_bbox,
    region_crop_mask,
    region_polygon_check,
    tiles_for_region,
)
from cytoseg.tiled import TilePlan

L_SHAPE = [[40, 40], [500, 40], [500, 200], [200, 200], [200, 500], [40, 500]]


def test_a_valid_region_is_kept_as_given_and_a_closed_ring_opened() -> None:
    assert region_polygon_check([[0, 0], [10, 0], [10, 10]], width=10, height=10) == [[0, 0], [10, 0], [10, 10]]
    ring = [[0, 0], [10, 0], [10, 10], [0, 0]]
    assert region_polygon_check(ring, width=10, height=10) == [[0, 0], [10, 0], [10, 10]]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ([[0, 0], [1, 1]], "at least 3"),
        ([[0, 0], [11, 0], [0, 5]], "outside the image"),
        ([[0, 0], [float("nan"), 0], [0, 5]], "point 1"),
        ([[0, 0], [True, 0], [0, 5]], "point 1"),
        ([[0, 0], [5, 5], [9, 9]], "zero area"),
        ([[0, 0], [10, 10], [10, 0], [0, 10]], "not a simple polygon"),
        ({"x": 1}, "list"),
    ],
)
def test_an_invalid_region_says_why(raw: object, words: str) -> None:
    with pytest.raises(GeometryError, match=words):
        region_polygon_check(raw, width=10, height=10)


def test_a_cell_is_in_a_region_when_its_centroid_is() -> None:
    # the centroid decides, not the overlap: both squares overlap the L's inner corner
    straddling = [[180, 180], [230, 180], [230, 230], [180, 230]]  # centroid (205, 205): outside the L
    hugging = [[150, 150], [215, 150], [215, 215], [150, 215]]  # centroid (182.5, 182.5): inside
    notch = [[300, 300], [320, 300], [320, 320], [300, 320]]  # in the L's bbox, not in the L
    assert cells_inside(L_SHAPE, [straddling, hugging, notch]) == [False, True, False]
    assert cells_inside(L_SHAPE, []) == []
    assert polygon_centroid([[0, 0], [4, 0], [4, 2], [0, 2]]) == (2.0, 1.0)


def test_a_region_needs_only_the_tiles_whose_core_it_meets() -> None:
    plan = TilePlan(1024, 1024, tile=256, margin=64)
    tiles = tiles_for_region(plan.columns, plan.rows, plan.tile, plan.width, plan.height, L_SHAPE)
    assert tiles == [0, 1, 4]  # not 5, inside the L's bounding box
    whole = [[0, 0], [1024, 0], [1024, 1024], [0, 1024]]
    assert tiles_for_region(plan.columns, plan.rows, plan.tile, plan.width, plan.height, whole) == list(range(16))


def test_a_crop_is_white_outside_the_region() -> None:
    triangle = [[10, 10], [50, 10], [30, 40]]
    crop = region_bbox(triangle, width=100, height=100)
    assert crop == (10, 10, 50, 40)
    rgb = np.full((30, 40, 3), 80, dtype=np.uint8)
    out = region_crop_mask(rgb, triangle, crop)
    assert (out[-1, 0] == OUTSIDE).all() and (out[-1, -1] == OUTSIDE).all()
    assert (out[5, 20] == 80).all()
    assert (rgb == 80).all()  # the input is not changed
