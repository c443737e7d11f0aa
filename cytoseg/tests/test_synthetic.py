"""Tests of the synthetic Diff-Quik field generator (no Django needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cytoseg.synthetic import (
    CELL,
    ERYTHROCYTE,
    HARD_MIN_VISIBLE,
    MIN_VISIBLE_FRACTION,
    SyntheticField,
    generate_dataset,
    generate_field,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def field() -> SyntheticField:
    # One full-size field is shared: rendering costs ~0.3 s.
    return generate_field(seed=7)


@pytest.fixture(scope="module")
def small() -> SyntheticField:
    return generate_field(seed=11, width=256, height=256, n_cells=20, n_erythrocytes=15)


def _labels(f: SyntheticField) -> np.ndarray:
    return np.array([c.label for c in f.cells])


def test_same_seed_gives_the_same_field() -> None:
    a = generate_field(seed=3, width=320, height=240)
    b = generate_field(seed=3, width=320, height=240)
    assert np.array_equal(a.image, b.image)
    assert len(a.cells) == len(b.cells)
    for ca, cb in zip(a.cells, b.cells, strict=True):
        assert (ca.label, ca.x0, ca.y0) == (cb.label, cb.x0, cb.y0)
        assert np.array_equal(ca.mask, cb.mask)


def test_other_seed_gives_another_field() -> None:
    a = generate_field(seed=3, width=320, height=240)
    b = generate_field(seed=4, width=320, height=240)
    assert not np.array_equal(a.image, b.image)


def test_shapes_and_dtypes(field: SyntheticField) -> None:
    assert field.image.shape == (768, 1024, 3)
    assert field.image.dtype == np.uint8
    lm = field.label_map()
    assert lm.shape == (768, 1024) and lm.dtype == np.int32
    sem = field.semantic_map()
    assert sem.shape == (768, 1024) and sem.dtype == np.uint8
    full = field.full_mask(0)
    assert full.shape == (768, 1024) and full.dtype == np.bool_
    for cell in field.cells:
        assert cell.label in (CELL, ERYTHROCYTE)
        assert cell.mask.dtype == np.bool_
        h, w = cell.mask.shape
        assert cell.x0 >= 0 and cell.y0 >= 0
        assert cell.x0 + w <= 1024 and cell.y0 + h <= 768
        # Crops are tight: every edge row and column holds a mask pixel.
        assert cell.mask[0].any() and cell.mask[-1].any()
        assert cell.mask[:, 0].any() and cell.mask[:, -1].any()


def test_non_default_size_and_small_images(small: SyntheticField) -> None:
    assert small.image.shape == (256, 256, 3)
    labels = _labels(small)
    assert (labels == CELL).sum() == 20
    assert (labels == ERYTHROCYTE).sum() == 15


def test_default_counts_scale_with_area() -> None:
    full = generate_field(seed=1)
    n_cells = int((_labels(full) == CELL).sum())
    assert 80 <= n_cells <= 270
    assert (_labels(full) == ERYTHROCYTE).sum() > 0
    # 256x256 is 1/12 of 1024x768: 80..270 cells become about 7..23.
    for seed in range(3):
        f = generate_field(seed=seed, width=256, height=256)
        n = int((_labels(f) == CELL).sum())
        assert 6 <= n <= 23


def test_explicit_counts_are_met() -> None:
    f = generate_field(seed=5, width=512, height=384, n_cells=60, n_erythrocytes=40)
    labels = _labels(f)
    assert (labels == CELL).sum() == 60
    assert (labels == ERYTHROCYTE).sum() == 40
    empty = generate_field(seed=5, width=64, height=64, n_cells=0, n_erythrocytes=0)
    assert empty.cells == []
    assert not empty.label_map().any()


def test_cell_sizes(field: SyntheticField) -> None:
    cell_r = [np.sqrt(c.area / np.pi) for c in field.cells if c.label == CELL]
    rbc_r = [np.sqrt(c.area / np.pi) for c in field.cells if c.label == ERYTHROCYTE]
    # Border cells are cut, so only the medians are held to the nominal ranges.
    assert 9 <= np.median(cell_r) <= 18
    assert 5 <= np.median(rbc_r) <= 8
    assert np.median(rbc_r) < np.median(cell_r)


def test_label_map_follows_paint_order(field: SyntheticField) -> None:
    lm = field.label_map()
    union = np.zeros(lm.shape, dtype=bool)
    for i, cell in enumerate(field.cells):
        full = field.full_mask(i)
        assert full.sum() == cell.mask.sum()
        # A visible pixel of i belongs to i's full mask and to no later instance.
        assert np.all(full[lm == i + 1])
        union |= full
    assert np.array_equal(union, lm > 0)
    # Pixels of i hidden in the label map are covered by a later instance.
    later = np.zeros(lm.shape, dtype=bool)
    for i in range(len(field.cells) - 1, -1, -1):
        full = field.full_mask(i)
        hidden = full & (lm != i + 1)
        assert np.all(later[hidden])
        later |= full


def test_semantic_map_classes(field: SyntheticField) -> None:
    sem = field.semantic_map()
    assert set(np.unique(sem).tolist()) == {0, 1, 2}
    lm = field.label_map()
    labels = np.concatenate(([0], _labels(field)))
    assert np.array_equal(sem, labels[lm])


def test_every_instance_stays_mostly_visible(field: SyntheticField) -> None:
    lm = field.label_map()
    visible = np.bincount(lm.ravel(), minlength=len(field.cells) + 1)[1:]
    full = np.array([c.area for c in field.cells])
    assert np.all(visible >= MIN_VISIBLE_FRACTION * full)
    # ... yet overlaps happen: some instances are partly hidden.
    assert np.any(visible < full)


def test_clusters_overlap_more_than_isolated_cells() -> None:
    def hidden_share(fraction: float) -> float:
        f = generate_field(seed=2, width=512, height=384, n_cells=60, n_erythrocytes=0, cluster_fraction=fraction)
        visible = np.bincount(f.label_map().ravel(), minlength=len(f.cells) + 1)[1:]
        full = np.array([c.area for c in f.cells])
        return float(1.0 - visible.sum() / full.sum())

    assert hidden_share(1.0) > hidden_share(0.0) + 0.02


def test_erythrocytes_are_redder_than_cells(field: SyntheticField) -> None:
    sem = field.semantic_map()
    rgb = field.image.astype(np.float64)
    redness = rgb[..., 0] - 0.5 * (rgb[..., 1] + rgb[..., 2])
    assert redness[sem == ERYTHROCYTE].mean() > redness[sem == CELL].mean() + 10
    # Cells are darker than the background, nuclei make them darker than erythrocytes.
    grey = rgb.mean(axis=2)
    assert grey[sem == CELL].mean() < grey[sem == 0].mean() - 30
    assert grey[sem == CELL].mean() < grey[sem == ERYTHROCYTE].mean()


def test_overlap_darkens() -> None:
    f = generate_field(seed=9, width=512, height=384, n_cells=80, n_erythrocytes=0, cluster_fraction=1.0)
    count = np.zeros((384, 512), dtype=np.int32)
    for i in range(len(f.cells)):
        count += f.full_mask(i)
    grey = f.image.astype(np.float64).mean(axis=2)
    single, stacked = grey[count == 1], grey[count >= 2]
    assert stacked.size > 0
    assert stacked.mean() < single.mean()


def test_faint_erythrocytes_are_paler() -> None:
    def rbc_darkness(faint: float) -> float:
        f = generate_field(
            seed=4,
            width=256,
            height=256,
            n_cells=0,
            n_erythrocytes=30,
            faint_erythrocyte_fraction=faint,
        )
        grey = f.image.astype(np.float64).mean(axis=2)
        sem = f.semantic_map()
        return float(grey[sem == 0].mean() - grey[sem == ERYTHROCYTE].mean())

    assert rbc_darkness(1.0) < 0.7 * rbc_darkness(0.0)


def test_background_is_light_and_uneven(field: SyntheticField) -> None:
    sem = field.semantic_map()
    bg = field.image[sem == 0].astype(np.float64)
    assert bg.mean() > 200
    # Pinkish-lilac: red and blue above green.
    assert bg[:, 0].mean() > bg[:, 1].mean() and bg[:, 2].mean() > bg[:, 1].mean()
    # Low-frequency variation: block means of the background differ.
    grey = field.image.astype(np.float64).mean(axis=2)
    blocks = [
        grey[y : y + 128, x : x + 128][sem[y : y + 128, x : x + 128] == 0].mean()
        for y in range(0, 768, 128)
        for x in range(0, 1024, 128)
    ]
    assert np.ptp(blocks) > 3


def test_generate_dataset_is_deterministic_and_varied() -> None:
    a = generate_dataset(seed=1, count=3, width=128, height=128)
    b = generate_dataset(seed=1, count=3, width=128, height=128)
    assert len(a) == 3
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.image, fb.image)
    assert not np.array_equal(a[0].image, a[1].image)
    assert generate_dataset(seed=1, count=0, width=128, height=128) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 4},
        {"cluster_fraction": 1.5},
        {"faint_erythrocyte_fraction": -0.1},
        {"n_cells": -1},
    ],
)
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        generate_field(seed=0, **kwargs)  # type: ignore[arg-type]


def test_module_does_not_import_django() -> None:
    code = "import sys, cytoseg.synthetic; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- hard mode ---------------------------------------------------------------------------------


def test_hard_mode_is_deterministic_with_exact_masks() -> None:
    a = generate_field(seed=5, width=256, height=256, difficulty="hard")
    b = generate_field(seed=5, width=256, height=256, difficulty="hard")
    assert np.array_equal(a.image, b.image) and len(a.cells) == len(b.cells)
    assert all(
        np.array_equal(x.mask, y.mask) and (x.x0, x.y0) == (y.x0, y.y0) for x, y in zip(a.cells, b.cells, strict=True)
    )
    # exact masks: the label map is the painted shapes, every instance keeps its visible share
    lm = a.label_map()
    visible = np.bincount(lm.ravel(), minlength=len(a.cells) + 1)[1:]
    full = np.array([c.area for c in a.cells])
    assert np.all(visible >= HARD_MIN_VISIBLE * full) and np.all(visible > 0)
    for k, cell in enumerate(a.cells):
        h, w = cell.mask.shape
        window = lm[cell.y0 : cell.y0 + h, cell.x0 : cell.x0 + w]
        assert np.all(cell.mask[window == k + 1]), "visible pixels lie inside the instance's own mask"


def test_hard_mode_is_harder_than_normal() -> None:
    hard = [generate_field(seed=s, width=256, height=256, difficulty="hard") for s in range(6)]
    normal = [generate_field(seed=s, width=256, height=256) for s in range(6)]

    def hidden(f: SyntheticField) -> float:
        visible = np.bincount(f.label_map().ravel(), minlength=len(f.cells) + 1)[1:]
        return float(1.0 - visible.sum() / sum(c.area for c in f.cells))

    cells = [int(np.sum(_labels(f) == CELL)) for f in hard]
    rbcs = [int(np.sum(_labels(f) == ERYTHROCYTE)) for f in hard]
    assert min(cells) >= 25 and min(rbcs) >= 30 and max(rbcs) <= 60
    assert np.mean([hidden(f) for f in hard]) > np.mean([hidden(f) for f in normal]) + 0.05  # denser clusters

    # palettes vary: the cells' hue (chromaticity) differs between fields far more
    def cell_hue(f: SyntheticField) -> np.ndarray:
        px = f.image[f.semantic_map() == CELL].astype(np.float64)
        return np.median(px / px.sum(axis=1, keepdims=True), axis=0)

    hard_hues = np.array([cell_hue(f) for f in hard]).std(axis=0).mean()
    assert hard_hues > 2 * np.array([cell_hue(f) for f in normal]).std(axis=0).mean()
    # JPEG at quality 40-65 leaves 8x8 block edges: neighbouring pixels across block borders
    # differ more than inside blocks
    g = hard[0].image.astype(np.float32).mean(axis=2)
    across = np.abs(g[:, 8::8] - g[:, 7:-1:8]).mean()
    inside = np.abs(g[:, 4::8] - g[:, 3:-1:8]).mean()
    assert across > inside


def test_unknown_difficulty_is_refused() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        generate_field(seed=1, width=64, height=64, difficulty="extreme")
