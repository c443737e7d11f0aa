"""Stain, illumination and optics augmentation (cytoseg.stain) and the rim label map."""

from __future__ import annotations

import numpy as np
import pytest

from cytoseg.datasets import BOUNDARY, boundary_label_map
from cytoseg.stain import augmented_copies, stain_augment
from cytoseg.synthetic import generate_field
from cytoseg.trainers.configs import CellposeTrainConfig, StainAugmentation, config_errors


def test_copies_are_deterministic_varied_and_keep_the_geometry() -> None:
    image = generate_field(seed=3, width=96, height=80).image
    config = StainAugmentation(copies=3, seed=5)
    first, again = augmented_copies([image], config), augmented_copies([image], config)
    assert len(first) == 3 and all(c.shape == image.shape and c.dtype == np.uint8 for c in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(c, image) for c in first)
    assert not np.array_equal(first[0], first[1])
    # another seed, another look
    assert not np.array_equal(augmented_copies([image], StainAugmentation(copies=1, seed=6))[0], first[0])
    # the look changes, not where things are: the darkest pixels stay where the nuclei are
    dark = image.min(axis=2) < np.percentile(image.min(axis=2), 5)
    for copy in first:
        darker = copy.astype(np.float32).mean(axis=2)
        assert darker[dark].mean() < darker[~dark].mean()
    assert augmented_copies([image], StainAugmentation(copies=0)) == []


def test_each_step_can_be_turned_off() -> None:
    image = generate_field(seed=4, width=64, height=64).image
    off = StainAugmentation(hed=0, hue=0, saturation=0, gradient=0, blur=0, p_jpeg=0)
    assert np.array_equal(stain_augment(image, np.random.default_rng(0), off), image)
    with pytest.raises(ValueError, match="uint8"):
        stain_augment(image.astype(np.float32), np.random.default_rng(0), off)


def test_stain_configuration_is_validated() -> None:
    errors = config_errors(
        CellposeTrainConfig, {"stain": {"copies": 99, "jpeg": [90, 40], "hue": 2, "colour": 1}}, "config.cellpose"
    )
    assert set(errors) == {
        "config.cellpose.stain.copies",
        "config.cellpose.stain.jpeg",
        "config.cellpose.stain.hue",
        "config.cellpose.stain.colour",
    }
    assert config_errors(CellposeTrainConfig, {"stain": {"copies": 2, "jpeg": [30, 95]}}, "c") == {}


def test_rim_label_map() -> None:
    semantic = np.zeros((20, 30), np.uint8)
    cells = np.zeros((20, 30), np.int32)
    semantic[2:12, 2:12] = 1
    cells[2:12, 2:12] = 1
    semantic[2:12, 12:22] = 1  # a second cell touching the first
    cells[2:12, 12:22] = 2
    semantic[15:19, 25:29] = 2  # an erythrocyte: no rim
    out = boundary_label_map(semantic, cells, width=1)
    assert out[7, 7] == 1 and out[2, 7] == BOUNDARY and out[7, 11] == BOUNDARY and out[7, 12] == BOUNDARY
    assert out[7, 13] == 1  # one pixel wide
    assert (out[15:19, 25:29] == 2).all() and out[0, 0] == 0
    # the image border is not a rim
    edge = np.ones((8, 8), np.uint8)
    assert (boundary_label_map(edge, edge.astype(np.int32), width=2) == 1).all()
    assert np.array_equal(boundary_label_map(semantic, cells, width=0), semantic)
    with pytest.raises(ValueError):
        boundary_label_map(semantic, cells[:5], width=1)
