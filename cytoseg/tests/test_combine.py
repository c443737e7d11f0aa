"""The two-stage combination on constructed cases (cytoseg.backends.combine)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cytoseg.backends.base import Instance
from cytoseg.backends.combine import AssignParams, combine_assign, erythrocytes_split

H, W = 48, 72
YY, XX = np.mgrid[:H, :W]


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    return (XX - cx) ** 2 + (YY - cy) ** 2 <= r * r


def masks(instances: list[Instance], label: int = 1) -> list[np.ndarray]:
    out = []
    for inst in instances:
        if inst.label != label:
            continue
        full = np.zeros((H, W), bool)
        h, w = inst.mask.shape
        full[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w] = inst.mask
        out.append(full)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def best_iou(found: list[np.ndarray], truth: np.ndarray) -> float:
    return max((iou(f, truth) for f in found), default=0.0)


# three cells: A and B touch, C stands alone
A, B, C = disc(14, 14, 9), disc(31, 14, 9), disc(52, 32, 8)
SEMANTIC = np.zeros((H, W), np.uint8)
SEMANTIC[A | B | C] = 1


def test_a_cell_nnunet_sees_and_cellpose_misses_comes_out_as_an_instance() -> None:
    cellpose = np.zeros((H, W), np.int32)
    cellpose[A] = 1
    cellpose[B & ~A] = 2  # C: missed
    found = masks(combine_assign(cellpose, SEMANTIC))
    assert len(found) == 3
    assert best_iou(found, C) > 0.95
    # but a sliver of foreground (no cell's shape or size) does not become one
    semantic = SEMANTIC.copy()
    semantic[40:42, 0:30] = 1
    found = masks(combine_assign(cellpose, semantic))
    assert len(found) == 3 and not any(f[41, 5] for f in found)


def test_a_cellpose_mask_spilling_onto_background_is_cut() -> None:
    cellpose = np.zeros((H, W), np.int32)
    cellpose[disc(14, 17, 12) & ~B] = 1  # too big, and off-centre onto the background
    cellpose[B] = 2
    cellpose[C] = 3
    found = masks(combine_assign(cellpose, SEMANTIC))
    assert len(found) == 3
    spilled = next(f for f in found if f[14, 14])
    assert not (spilled & (SEMANTIC == 0)).any()
    assert iou(spilled, A & ~B) > 0.95
    # nnU-Net's foreground is what is covered: Dice of the union is 1
    assert (np.logical_or.reduce(found) == (SEMANTIC == 1)).all()


def test_two_touching_cells_stay_two() -> None:
    cellpose = np.zeros((H, W), np.int32)
    cellpose[disc(14, 14, 7)] = 1  # Cellpose's masks a little small: growth fills the rest
    cellpose[disc(31, 14, 7)] = 2
    cellpose[C] = 3
    found = masks(combine_assign(cellpose, SEMANTIC))
    assert len(found) == 3
    assert best_iou(found, A & ~B) > 0.85 and best_iou(found, B & ~A) > 0.85


def test_cellpose_mask_over_two_cells_is_split_at_nnunet_interiors() -> None:
    """With a rim class, two interiors under one Cellpose mask are two cells."""
    cellpose = np.zeros((H, W), np.int32)
    cellpose[A | B] = 1  # merged
    cellpose[C] = 2
    rim = np.zeros((H, W), np.float32)
    for cell in (A & ~B, B, C):
        rim[cell & ~ndi.binary_erosion(cell, iterations=2)] = 0.9
    probability = (SEMANTIC == 1).astype(np.float32)
    found = masks(combine_assign(cellpose, SEMANTIC, cell_probability=probability, boundary=rim))
    assert len(found) == 3
    assert best_iou(found, A & ~B) > 0.8 and best_iou(found, B) > 0.8
    # without the rim class the merged mask stays one cell (nothing says otherwise)
    assert len(masks(combine_assign(cellpose, SEMANTIC))) == 2


def test_erythrocytes_come_from_nnunet_split_by_their_size() -> None:
    semantic = SEMANTIC.copy()
    pair = disc(10, 38, 4) | disc(17, 38, 4)  # two touching erythrocytes
    semantic[pair] = 2
    cellpose = np.zeros((H, W), np.int32)
    cellpose[A] = 1
    cellpose[B & ~A] = 2
    cellpose[C] = 3
    cellpose[pair] = 4  # Cellpose takes the pair for one cell: the class map decides
    out = combine_assign(cellpose, semantic)
    cells, ery = masks(out, 1), masks(out, 2)
    assert len(cells) == 3 and not any((c & pair).any() for c in cells)
    assert len(ery) == 2
    assert erythrocytes_split(np.zeros((5, 5), bool), radius=4, min_area=1).max() == 0


def test_params_are_used() -> None:
    cellpose = np.zeros((H, W), np.int32)
    cellpose[C & disc(52, 32, 4)] = 1  # a seed in the middle of C only
    strict = {"new_min_area": 10**6, "leftover": "drop"}
    near = masks(combine_assign(cellpose, SEMANTIC, params=AssignParams(grow_radius=1.0, **strict)))
    far = masks(combine_assign(cellpose, SEMANTIC, params=AssignParams(grow_radius=5.0, **strict)))
    small = next(f for f in near if f[32, 52]).sum()
    large = next(f for f in far if f[32, 52]).sum()
    assert small < large and large == C.sum()
    # A and B, claimed by nobody: one blob of two cells is not one cell's shape. Left alone
    # it is dropped; cut at its distance peaks it is two cells
    assert len(far) == 1
    lone = AssignParams(split_radius=0, leftover="drop", new_min_solidity=0.9)
    assert len(masks(combine_assign(cellpose, SEMANTIC, params=lone))) == 1
    cut = masks(combine_assign(cellpose, SEMANTIC))
    assert len(cut) == 3 and best_iou(cut, A & ~B) > 0.8 and best_iou(cut, B & ~A) > 0.8
    # with "attach", slivers left between cells go to a neighbour: nnU-Net's foreground is covered
    sliver = SEMANTIC.copy()
    sliver[18:24, 22:24] = 1  # a thin spur below the A/B contact
    seeds = np.zeros((H, W), np.int32)
    seeds[A] = 1
    seeds[B & ~A] = 2
    seeds[C] = 3
    attached = masks(combine_assign(seeds, sliver, params=AssignParams(grow_radius=0.0)))
    assert (np.logical_or.reduce(attached) == (sliver == 1)).all()


def test_nnunet_alone_grows_its_cells_from_its_core_class() -> None:
    """``instances: "seeds"``: two touching cells nnU-Net sees as one component are two when
    its core class has two cores."""
    from cytoseg.backends.nnunet import NnUNetMaps, nnunet_seeded_instances

    probabilities = np.zeros((3, H, W), np.float32)
    probabilities[1][SEMANTIC == 1] = 1.0
    probabilities[0][SEMANTIC == 0] = 1.0
    core = np.zeros((H, W), np.float32)
    for cx, cy in ((14, 14), (31, 14), (52, 32)):
        core[disc(cx, cy, 4)] = 0.9
    found = masks(nnunet_seeded_instances(NnUNetMaps(SEMANTIC, probabilities, core=core)))
    assert len(found) == 3
    assert min(best_iou(found, truth) for truth in (A & ~B, B & ~A, C)) > 0.8
