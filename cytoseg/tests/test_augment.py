"""Synthetic cluster augmentation (paper C): isolated cells, jitter, clusters, darkened overlaps."""

from __future__ import annotations

import numpy as np
import pytest

from cytoseg.augment import (
    AugmentConfig,
    CellPatch,
    PlacedCell,
    cells_from_polygons,
    isolated_cells,
    synthesize,
    synthetic_images,
)
from cytoseg.synthetic import generate_field


def _square(x0: int, y0: int, size: int, label: int = 1) -> PlacedCell:
    return PlacedCell(x0=x0, y0=y0, mask=np.ones((size, size), bool), label=label)


def test_isolated_cells_skips_touching_and_border_cells() -> None:
    image = np.full((40, 40, 3), 200, np.uint8)
    cells = [
        _square(2, 2, 6),  # alone
        _square(20, 20, 5),  # touches the next one (within the margin)
        _square(26, 20, 5),
        _square(0, 30, 5),  # on the border
    ]
    patches = isolated_cells(image, cells, margin=2, min_area=4)
    assert len(patches) == 1
    assert patches[0].mask.shape == (6, 6) and patches[0].label == 1


def test_cells_from_polygons_rasterise_pixel_centres() -> None:
    cells = cells_from_polygons([[[1, 1], [4, 1], [4, 3], [1, 3]]], [2], height=10, width=10)
    assert len(cells) == 1
    assert (cells[0].x0, cells[0].y0, cells[0].mask.shape, cells[0].label) == (1, 1, (2, 3), 2)


def test_overlapping_pixels_are_darkened_and_labels_come_for_free() -> None:
    background = np.full((30, 30, 3), 240, np.uint8)
    bg_cells = [_square(10, 10, 10)]
    background[10:20, 10:20] = 120
    patch = CellPatch(image=np.full((8, 8, 3), 100, np.uint8), mask=np.ones((8, 8), bool), label=1)
    cfg = AugmentConfig(
        count=1,
        fill_fraction=0.3,
        cluster_size=(1, 1),
        rotation_deg=(0, 0),
        colour_jitter=0.0,
        brightness=(1.0, 1.0),
        noise_sigma=(0.0, 0.0),
        darken=(2.0, 2.0),
        max_overlap=1.0,
        min_area=4,
    )
    synth = synthesize(background, bg_cells, [patch], rng=np.random.default_rng(3), config=cfg)
    assert synth.pasted >= 1
    assert synth.cells[0] is bg_cells[0]  # the background's own cell stays first
    labels = synth.label_map()
    for index, cell in enumerate(synth.cells[1:], start=2):
        h, w = cell.mask.shape
        window = (slice(cell.y0, cell.y0 + h), slice(cell.x0, cell.x0 + w))
        visible = cell.mask & (labels[window] == index)
        pixels = synth.image[window][visible]
        assert set(np.unique(pixels)) <= {100, 50}  # pasted value, or halved where it overlapped
    # where a pasted cell covers the background cell, the pixels were divided by the factor
    first = synth.cells[1]
    h, w = first.mask.shape
    overlap = np.zeros((30, 30), bool)
    overlap[first.y0 : first.y0 + h, first.x0 : first.x0 + w] = first.mask
    overlap &= np.pad(np.ones((10, 10), bool), ((10, 10), (10, 10)))
    if overlap.any():
        assert np.all(synth.image[overlap & (labels == 2)] == 50)
    assert (synth.semantic_map() > 0).mean() >= 0.3 - 1e-9 or synth.pasted == cfg.max_cells_per_image


def test_synthetic_images_fill_clusters_deterministically() -> None:
    fields = []
    for seed in range(2):
        fld = generate_field(seed=seed, width=128, height=128, n_cells=8, n_erythrocytes=3, cluster_fraction=0.0)
        fields.append((fld.image, [PlacedCell(c.x0, c.y0, c.mask, c.label) for c in fld.cells]))
    cfg = AugmentConfig(count=3, seed=7, fill_fraction=0.35)
    first = list(synthetic_images(fields, cfg))
    second = list(synthetic_images(fields, cfg))
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.image, b.image) and len(a.cells) == len(b.cells)
    for synth, (image, _cells) in zip(first, fields + fields[:1], strict=True):
        assert synth.pasted > 0
        assert synth.image.shape == image.shape
        assert (synth.label_map() > 0).mean() >= 0.35 - 0.05
        # labels for free: the polygons rasterise back onto the label map
        polygons, labels = synth.polygons()
        assert len(polygons) == len(synth.cells) and set(labels) <= {1, 2}
        redrawn = cells_from_polygons(polygons, labels, height=128, width=128)
        for orig, back in zip(synth.cells, redrawn, strict=True):
            assert np.array_equal(orig.mask, back.mask) and (orig.x0, orig.y0) == (back.x0, back.y0)
    # clusters: pasted cells touch or overlap other cells
    synth = first[0]
    union = np.zeros((128, 128), np.int32)
    for c in synth.cells:
        h, w = c.mask.shape
        union[c.y0 : c.y0 + h, c.x0 : c.x0 + w] += c.mask
    assert (union > 1).sum() > 0


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(KeyError, match="colour"):
        AugmentConfig.from_dict({"colour": 0.1})
    with pytest.raises(ValueError, match="darken"):
        AugmentConfig.from_dict({"darken": [0.5, 2.0]})
    assert AugmentConfig.from_dict(AugmentConfig(count=2).to_dict()) == AugmentConfig(count=2)
