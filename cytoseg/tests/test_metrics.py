"""Tests of cytoseg.metrics against small hand-computed cases (no Django needed)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cytoseg.metrics import (
    DSB_THRESHOLDS,
    InstancesLike,
    aggregate,
    average_precision,
    best_match_precision,
    boundary_average_precision,
    boundary_iou,
    boundary_iou_matrix,
    coco_mask_ap,
    dsb_score,
    erythrocyte_false_positives,
    evaluate_image,
    instance_prf,
    iou_matrix,
    match_one_to_one,
    pixel_dice,
    pixel_iou,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Crop:
    """Stand-in for backends.Instance / SyntheticCell: a crop at (x0, y0)."""

    x0: int
    y0: int
    mask: np.ndarray


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------


def test_pixel_dice_and_iou_by_hand() -> None:
    pred = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    gt = np.array(
        [
            [0, 1, 1, 0],
            [0, 1, 1, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    # TP = 2 (column 1), FP = 2 (column 0), FN = 2 (column 2).
    assert pixel_dice(pred, gt) == pytest.approx(4 / 8)  # 2TP / (2TP + FP + FN)
    assert pixel_iou(pred, gt) == pytest.approx(2 / 6)  # TP / (TP + FP + FN)
    assert pixel_dice(gt, gt) == 1.0


def test_pixel_metrics_empty_cases() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    some = box((4, 4), slice(0, 2), slice(0, 2))
    assert pixel_dice(empty, empty) == 1.0
    assert pixel_iou(empty, empty) == 1.0
    assert pixel_dice(empty, some) == 0.0
    assert pixel_iou(some, empty) == 0.0
    with pytest.raises(ValueError):
        pixel_dice(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------------------
# IoU matrix and its input forms
# --------------------------------------------------------------------------------------

# gt: instance 1 is a 3x3 square (area 9), instance 2 a 2x2 square (area 4).
GT_6 = np.array(
    [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 2, 2, 0],
        [0, 0, 0, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
    ]
)
# pred: id 5 is a 2x2 square inside gt 1 (IoU 4/9); id 7 is 2x3 over gt 2 (IoU 4/6).
PRED_6 = np.array(
    [
        [5, 5, 0, 0, 0, 0],
        [5, 5, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 7, 7, 7],
        [0, 0, 0, 7, 7, 7],
        [0, 0, 0, 0, 0, 0],
    ]
)
IOU_6 = np.array([[4 / 9, 0.0], [0.0, 4 / 6]])


def test_iou_matrix_label_maps() -> None:
    np.testing.assert_allclose(iou_matrix(PRED_6, GT_6), IOU_6)
    np.testing.assert_allclose(iou_matrix(GT_6, PRED_6), IOU_6.T)


def test_iou_matrix_same_for_every_input_form() -> None:
    masks = [PRED_6 == 5, PRED_6 == 7]
    crops = [Crop(0, 0, np.ones((2, 2), bool)), Crop(3, 3, np.ones((2, 3), bool))]
    # Crops with empty margins and ids far apart (relabelled by sorting) change nothing.
    padded = [Crop(2, 2, np.pad(np.ones((2, 3), bool), 1)), Crop(0, 0, np.ones((2, 2), bool))]
    huge_ids = np.where(GT_6 == 1, 10**9, np.where(GT_6 == 2, 3 * 10**9, 0)).astype(np.int64)
    np.testing.assert_allclose(iou_matrix(masks, GT_6), IOU_6)
    np.testing.assert_allclose(iou_matrix(np.stack(masks), GT_6), IOU_6)
    np.testing.assert_allclose(iou_matrix(crops, GT_6), IOU_6)
    np.testing.assert_allclose(iou_matrix(crops, huge_ids), IOU_6)
    np.testing.assert_allclose(iou_matrix(padded, [GT_6 == 1, GT_6 == 2]), IOU_6[::-1])


def test_iou_matrix_overlapping_predictions() -> None:
    gt = box((6, 6), slice(0, 2), slice(0, 4))  # area 8
    a = gt.copy()  # identical: IoU 1
    b = box((6, 6), slice(0, 2), slice(0, 3))  # area 6 inside gt: IoU 6/8
    np.testing.assert_allclose(iou_matrix([a, b], gt.astype(int)), [[1.0], [0.75]])


def test_iou_matrix_empty_and_mismatched() -> None:
    empty = np.zeros((6, 6), dtype=int)
    assert iou_matrix(empty, GT_6).shape == (0, 2)
    assert iou_matrix(PRED_6, empty).shape == (2, 0)
    assert iou_matrix([], []).shape == (0, 0)
    with pytest.raises(ValueError):
        iou_matrix(PRED_6, np.zeros((5, 6), dtype=int))


# --------------------------------------------------------------------------------------
# One-to-one matching, P/R/F1, best match
# --------------------------------------------------------------------------------------


def test_match_one_to_one_maximises_matches() -> None:
    # Greedy by IoU would take (0, 0) = 0.9 and leave prediction 1 alone; the optimum
    # matches (0, 1) = 0.6 and (1, 0) = 0.8: two matches.
    iou = np.array([[0.9, 0.6], [0.8, 0.0]])
    p, g = match_one_to_one(iou, 0.5)
    assert p.tolist() == [0, 1] and g.tolist() == [1, 0]


def test_match_one_to_one_threshold_conventions() -> None:
    iou = np.array([[0.5]])
    assert match_one_to_one(iou, 0.5)[0].tolist() == [0]  # >= by default
    assert match_one_to_one(iou, 0.5, strict=True)[0].tolist() == []  # DSB: >
    # No overlap never matches, even at threshold 0.
    assert match_one_to_one(np.array([[0.0]]), 0.0)[0].tolist() == []
    assert match_one_to_one(np.zeros((0, 3)), 0.5)[0].size == 0


def test_instance_prf_by_hand() -> None:
    # At 0.5 only pred 7 (IoU 0.667) matches: TP 1, FP 1, FN 1.
    r = instance_prf(PRED_6, GT_6, 0.5)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.precision == pytest.approx(0.5)
    assert r.recall == pytest.approx(0.5)
    assert r.f1 == pytest.approx(0.5)
    # At 0.4 pred 5 (IoU 0.444) matches too.
    r = instance_prf(PRED_6, GT_6, 0.4)
    assert (r.tp, r.fp, r.fn, r.f1) == (2, 0, 0, 1.0)


def test_instance_prf_empty_cases() -> None:
    empty = np.zeros((6, 6), dtype=int)
    assert tuple(instance_prf(empty, empty)) == (1.0, 1.0, 1.0, 0, 0, 0)
    assert tuple(instance_prf(empty, GT_6)) == (0.0, 0.0, 0.0, 0, 0, 2)
    assert tuple(instance_prf(PRED_6, empty)) == (0.0, 0.0, 0.0, 0, 2, 0)


def test_best_match_differs_from_one_to_one() -> None:
    gt = box((6, 6), slice(0, 2), slice(0, 4)).astype(int)
    a = box((6, 6), slice(0, 2), slice(0, 4))  # IoU 1.0
    b = box((6, 6), slice(0, 2), slice(0, 3))  # IoU 0.75
    # Paper A: both predictions' best match clears 0.7, so both count as correct.
    assert best_match_precision([a, b], gt, 0.7) == 1.0
    # One-to-one: the gt cell is used once, so one prediction is a false positive.
    r = instance_prf([a, b], gt, 0.7)
    assert (r.tp, r.fp, r.fn, r.precision) == (1, 1, 0, 0.5)
    # On PRED_6 only pred 7 (0.667) clears 0.6; pred 5 (0.444) does not.
    assert best_match_precision(PRED_6, GT_6, 0.6) == 0.5
    assert best_match_precision(PRED_6, GT_6, 0.7) == 0.0


def test_best_match_empty_cases() -> None:
    empty = np.zeros((6, 6), dtype=int)
    assert best_match_precision(empty, empty) == 1.0
    assert best_match_precision(empty, GT_6) == 0.0
    assert best_match_precision(PRED_6, empty) == 0.0


# --------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------

# Two gt squares; predictions: p0 = gt a, p1 = nowhere near any gt, p2 = gt b.
AP_SHAPE = (6, 6)
GT_A = box(AP_SHAPE, slice(0, 2), slice(0, 2))
GT_B = box(AP_SHAPE, slice(4, 6), slice(4, 6))
FAR = box(AP_SHAPE, slice(0, 2), slice(4, 6))


def test_average_precision_known_ranking() -> None:
    gt = [GT_A, GT_B]
    pred = [GT_A, FAR, GT_B]
    # Ranked p0 (TP), p1 (FP), p2 (TP): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # All-point: 0.5 * max(1, 1/2, 2/3) + 0.5 * 2/3 = 0.5 + 1/3.
    assert average_precision(pred, gt, [0.9, 0.8, 0.7], 0.5) == pytest.approx(0.5 + 1 / 3)
    # The false positive ranked last does not cost anything: TP, TP, FP.
    assert average_precision(pred, gt, [0.9, 0.6, 0.7], 0.5) == pytest.approx(1.0)
    # Ranked first: FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> 2/3.
    assert average_precision(pred, gt, [0.1, 0.9, 0.2], 0.5) == pytest.approx(2 / 3)


def test_average_precision_duplicates_and_thresholds() -> None:
    gt = GT_6
    # pred 5 has IoU 0.444: a hit at 0.4, a miss at 0.5.
    assert average_precision(PRED_6, gt, [0.9, 0.8], 0.4) == pytest.approx(1.0)
    # At 0.5: ranked p5 (FP), p7 (TP): precision 0, 1/2 at recall 0, 1/2 -> 0.25.
    assert average_precision(PRED_6, gt, [0.9, 0.8], 0.5) == pytest.approx(0.25)
    # A duplicate of a matched cell is a false positive.
    single = GT_A.astype(int)
    assert average_precision([GT_A, GT_A], single, [0.9, 0.8], 0.5) == pytest.approx(1.0)
    assert average_precision([GT_A, GT_A], single, None, 0.5) == pytest.approx(1.0)


def test_average_precision_empty_cases() -> None:
    empty = np.zeros(AP_SHAPE, dtype=int)
    assert average_precision(empty, empty, [], 0.5) == 1.0
    assert average_precision([GT_A], empty, [1.0], 0.5) == 0.0
    assert average_precision(empty, GT_6, [], 0.5) == 0.0
    with pytest.raises(ValueError):
        average_precision([GT_A], [GT_A], [0.1, 0.2], 0.5)


# --------------------------------------------------------------------------------------
# Boundary IoU
# --------------------------------------------------------------------------------------


def test_boundary_iou_by_hand() -> None:
    a = box((6, 6), slice(1, 5), slice(1, 5))  # 4x4: band of width 1 = 12-pixel ring
    b = box((6, 6), slice(1, 5), slice(1, 4))  # 4x3: band = 12 - 2 inner pixels = 10
    # Shared band pixels: rows 1 and 4 at columns 1-3 (6) and column 1 at rows 2-3 (2).
    # IoU = 8 / (12 + 10 - 8) = 8 / 14, while mask IoU is 12 / 16.
    assert boundary_iou(a, b, dilation=1) == pytest.approx(8 / 14)
    assert boundary_iou(a, a, dilation=1) == 1.0
    # With dilation 2 both masks are all band: boundary IoU equals mask IoU.
    assert boundary_iou(a, b, dilation=2) == pytest.approx(12 / 16)


def test_boundary_iou_image_border_is_contour() -> None:
    full = np.ones((4, 4), dtype=bool)
    ring = full.copy()
    ring[1:3, 1:3] = False
    # The border counts as contour, so the full mask's band is the same 12-pixel ring.
    assert boundary_iou(full, ring, dilation=1) == 1.0
    assert boundary_iou(np.zeros((4, 4)), np.zeros((4, 4)), dilation=1) == 1.0
    assert boundary_iou(full, np.zeros((4, 4)), dilation=1) == 0.0


def test_boundary_iou_matrix_matches_pairwise() -> None:
    a = box((6, 6), slice(1, 5), slice(1, 5))
    b = box((6, 6), slice(1, 5), slice(1, 4))
    far = box((6, 6), slice(0, 1), slice(5, 6))
    got = boundary_iou_matrix([a, far], [b, a], dilation=1)
    np.testing.assert_allclose(got, [[8 / 14, 1.0], [0.0, 0.0]])
    crops = [Crop(1, 1, np.ones((4, 4), bool))]
    np.testing.assert_allclose(boundary_iou_matrix(crops, [b], dilation=1), [[8 / 14]])


def test_boundary_average_precision() -> None:
    full = np.ones((4, 4), dtype=bool)
    ring = full.copy()
    ring[1:3, 1:3] = False
    # Boundary IoU 1.0 but mask IoU 12/16: with the mask term the pair fails at 0.8.
    assert boundary_average_precision([ring], [full], [1.0], 0.8, dilation=1) == 0.0
    assert boundary_average_precision([ring], [full], [1.0], 0.8, dilation=1, with_mask_iou=False) == 1.0
    a = box((6, 6), slice(1, 5), slice(1, 5))
    b = box((6, 6), slice(1, 5), slice(1, 4))
    # min(mask 0.75, boundary 0.571) = 0.571: a hit at 0.5, a miss at 0.6.
    assert boundary_average_precision([b], [a], [1.0], 0.5, dilation=1) == 1.0
    assert boundary_average_precision([b], [a], [1.0], 0.6, dilation=1) == 0.0


# --------------------------------------------------------------------------------------
# DSB score
# --------------------------------------------------------------------------------------


def test_dsb_thresholds() -> None:
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_dsb_score_known_counts() -> None:
    gt = np.zeros((6, 6), dtype=int)
    gt[0, 0:4] = 1  # A, area 4
    gt[2:4, 0:2] = 2  # B, area 4
    gt[5, 0:2] = 3  # C, area 2: never found (FN)
    pred = np.zeros((6, 6), dtype=int)
    pred[0, 0:4] = 1  # = A: IoU 1
    pred[2:4, 0:3] = 2  # over B: IoU 4/6
    pred[2:4, 4:6] = 3  # D: on nothing (FP)
    # t = 0.50..0.65 (4 thresholds): TP 2, FP 1, FN 1 -> 2/4.
    # t = 0.70..0.95 (6 thresholds): TP 1, FP 2, FN 2 -> 1/5.
    assert dsb_score(pred, gt) == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)


def test_dsb_score_is_strict() -> None:
    gt = np.zeros((4, 4), dtype=int)
    gt[0, 0:2] = 1  # area 2
    pred = np.zeros((4, 4), dtype=int)
    pred[0, 0:4] = 1  # area 4 holding gt: IoU exactly 0.5
    # IoU 0.5 is not > 0.5: no threshold matches, TP/(TP+FP+FN) = 0/2 everywhere.
    assert dsb_score(pred, gt) == 0.0
    assert instance_prf(pred, gt, 0.5).tp == 1  # while >= 0.5 matches


def test_dsb_score_empty_cases() -> None:
    empty = np.zeros((4, 4), dtype=int)
    assert dsb_score(empty, empty) == 1.0
    assert dsb_score(empty, GT_6[:4, :4]) == 0.0
    assert dsb_score(GT_6, GT_6) == 1.0


# --------------------------------------------------------------------------------------
# COCO mask AP
# --------------------------------------------------------------------------------------


def _coco_gt() -> list[np.ndarray]:
    small = np.zeros((64, 64), dtype=int)
    small[2:6, 2:6] = 1  # area 16: small
    small[10:14, 20:26] = 2  # area 24: small
    mixed = np.zeros((64, 64), dtype=int)
    mixed[5:45, 5:45] = 4  # area 1600: medium
    mixed[50:54, 50:54] = 9  # small
    return [small, mixed]


def test_coco_mask_ap_identical_is_perfect() -> None:
    gts = _coco_gt()
    result = coco_mask_ap(gts, gts)
    for key in ("AP", "AP50", "AP75", "AP_S", "AP_M"):
        assert result[key] == pytest.approx(1.0), key
    assert math.isnan(result["AP_L"])  # no large gt: COCO's -1
    # The same through crops, scores and COCOeval's own matching loop.
    first: list[Crop] = [Crop(2, 2, np.ones((4, 4), bool)), Crop(20, 10, np.ones((4, 6), bool))]
    crops: list[InstancesLike] = [first, gts[1]]
    slow = coco_mask_ap(crops, gts, scores_per_image=[[0.3, 0.9], None], fast=False)
    assert slow["AP"] == pytest.approx(1.0)


def test_coco_mask_ap_misses_and_empty() -> None:
    gts = _coco_gt()
    # Only the first image's cells are found: recall 2/4 at every threshold.
    half = coco_mask_ap([gts[0], np.zeros((64, 64), dtype=int)], gts)
    assert 0.0 < half["AP"] < 1.0
    assert half["AP_M"] == 0.0
    nothing = coco_mask_ap([np.zeros((64, 64), dtype=int)] * 2, gts)
    assert nothing["AP"] == 0.0 and nothing["AP_M"] == 0.0 and math.isnan(nothing["AP_L"])
    no_gt = coco_mask_ap([gts[0]], [np.zeros((64, 64), dtype=int)])
    assert math.isnan(no_gt["AP"])


def test_coco_fast_matching_equals_pycocotools() -> None:
    rng = np.random.default_rng(0)
    gts: list[np.ndarray] = []
    preds: list[list[np.ndarray]] = []
    scores: list[np.ndarray] = []
    for _ in range(3):
        gt = np.zeros((96, 96), dtype=int)
        pred: list[np.ndarray] = []
        for k in range(12):
            y, x = rng.integers(0, 80, size=2)
            h, w = rng.integers(3, 16, size=2)
            gt[y : y + h, x : x + w] = k + 1
            # Jittered, sometimes duplicated copies and a few strays.
            for _ in range(int(rng.integers(0, 3))):
                dy, dx = rng.integers(-2, 3, size=2)
                pred.append(
                    box(
                        (96, 96),
                        slice(max(y + dy, 0), y + dy + h),
                        slice(max(x + dx, 0), x + dx + w),
                    )
                )
        gts.append(gt)
        preds.append(pred)
        scores.append(rng.random(len(pred)))
    fast = coco_mask_ap(preds, gts, scores_per_image=scores, fast=True)
    slow = coco_mask_ap(preds, gts, scores_per_image=scores, fast=False)
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, nan_ok=True), key
    assert 0.0 < fast["AP"] < 1.0


# --------------------------------------------------------------------------------------
# Erythrocyte false positives, evaluate_image, aggregate
# --------------------------------------------------------------------------------------

ERY_SHAPE = (6, 6)
# gt instance order: cell (label 1), erythrocyte (2), erythrocyte (2).
ERY_GT = [
    box(ERY_SHAPE, slice(0, 2), slice(0, 2)),  # cell
    box(ERY_SHAPE, slice(0, 2), slice(3, 5)),  # erythrocyte, area 4
    box(ERY_SHAPE, slice(4, 6), slice(0, 3)),  # erythrocyte, area 6
]
ERY_GT_LABELS = [1, 2, 2]
ERY_PRED = [
    ERY_GT[0],  # p0 cell on the gt cell: fine
    ERY_GT[1],  # p1 "cell" matching an erythrocyte (IoU 1): false positive
    box(ERY_SHAPE, slice(4, 6), slice(0, 1)),  # p2: IoU 2/6 < 0.5, all on an erythrocyte: FP
    ERY_GT[2],  # p3 predicted as erythrocyte: not a cell prediction
    box(ERY_SHAPE, slice(2, 4), slice(4, 6)),  # p4 "cell" on nothing: an FP, not an erythrocyte
]
ERY_PRED_LABELS = [1, 1, 1, 2, 1]


def test_erythrocyte_false_positives_by_hand() -> None:
    r = erythrocyte_false_positives(ERY_PRED, ERY_GT, gt_labels=ERY_GT_LABELS, pred_labels=ERY_PRED_LABELS)
    assert r.false_positives == 2
    assert r.indices == (1, 2)
    assert r.n_predicted_cells == 4
    assert r.rate == pytest.approx(0.5)
    # Class-agnostic predictions: p3 now is a "cell" matching an erythrocyte too.
    r = erythrocyte_false_positives(ERY_PRED, ERY_GT, gt_labels=ERY_GT_LABELS)
    assert r.indices == (1, 2, 3)
    assert r.rate == pytest.approx(3 / 5)
    none = erythrocyte_false_positives([], ERY_GT, gt_labels=ERY_GT_LABELS)
    assert (none.false_positives, none.rate) == (0, 0.0)


def test_evaluate_image_by_hand() -> None:
    r = evaluate_image(
        ERY_PRED,
        ERY_GT,
        pred_labels=ERY_PRED_LABELS,
        gt_labels=ERY_GT_LABELS,
        pred_scores=[0.9, 0.8, 0.7, 0.6, 0.5],
    )
    # Cells only: predictions p0, p1, p2, p4 against the one gt cell.
    assert (r["n_pred"], r["n_gt"]) == (4, 1)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 3, 0)
    assert r["precision"] == pytest.approx(0.25)
    assert r["recall"] == 1.0
    assert r["f1"] == pytest.approx(2 / 5)
    # Foreground: pred 4 + 4 + 2 + 4 = 14 px, gt 4 px, all gt pixels found.
    assert r["dice"] == pytest.approx(8 / 18)
    assert r["iou"] == pytest.approx(4 / 14)
    assert r["best_match_precision"] == pytest.approx(0.25)
    assert r["ranked_ap50"] == 1.0  # the true cell is ranked first
    assert r["boundary_ranked_ap50"] == 1.0
    assert r["mean_matched_iou"] == 1.0
    # DSB: TP 1, FP 3, FN 0 at every threshold.
    assert r["dsb"] == pytest.approx(1 / 4)
    assert r["erythrocyte_fp"] == 2
    assert r["erythrocyte_fp_rate"] == pytest.approx(0.5)


def test_evaluate_image_without_labels_and_empty() -> None:
    r = evaluate_image(PRED_6, GT_6)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert math.isnan(r["erythrocyte_fp"])
    empty = np.zeros((6, 6), dtype=int)
    r = evaluate_image(empty, empty)
    assert r["dice"] == r["f1"] == r["dsb"] == r["ranked_ap50"] == 1.0
    assert math.isnan(r["mean_matched_iou"])
    # Crops on both sides need no image shape.
    crops = [Crop(0, 0, np.ones((2, 2), bool))]
    assert evaluate_image(crops, crops)["dice"] == 1.0


def test_aggregate_means_sums_and_groups() -> None:
    a = {"dice": 1.0, "tp": 3.0, "fp": 1.0, "fn": 0.0, "erythrocyte_fp": math.nan}
    b = {"dice": 0.5, "tp": 1.0, "fp": 1.0, "fn": 2.0, "erythrocyte_fp": 2.0}
    c = {"dice": 0.0, "tp": 0.0, "fp": 0.0, "fn": 1.0, "erythrocyte_fp": 1.0}
    out = aggregate([a, b, c], groups=["B4", "B5", "B4"])
    overall = out["all"]
    assert overall["n_images"] == 3
    assert overall["dice"] == pytest.approx(0.5)
    assert (overall["tp"], overall["fp"], overall["fn"]) == (4, 2, 3)
    assert overall["erythrocyte_fp"] == 3  # NaN skipped
    assert overall["micro_precision"] == pytest.approx(4 / 6)
    assert overall["micro_recall"] == pytest.approx(4 / 7)
    assert overall["micro_f1"] == pytest.approx(8 / 13)
    assert out["B4"]["dice"] == pytest.approx(0.5)
    assert out["B4"]["n_images"] == 2
    assert out["B5"]["tp"] == 1
    assert list(out) == ["all", "B4", "B5"]
    with pytest.raises(ValueError):
        aggregate([a], groups=["all"])
    with pytest.raises(ValueError):
        aggregate([a, b], groups=["B4"])


def test_module_does_not_import_django() -> None:
    code = "import sys, cytoseg.metrics; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
