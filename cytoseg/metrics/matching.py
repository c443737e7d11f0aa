"""Instance metrics from mask IoU: one-to-one matching, precision/recall/F1 at a threshold,
best-match precision (paper A), average precision (papers C and E) and the DSB score (paper D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from cytoseg.metrics.instances import InstancesLike, as_instances, iou_from_sets, per_instance, ratio, with_shape

DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


class InstanceCounts(NamedTuple):
    """Detection quality at one IoU threshold with one-to-one matching."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def iou_matrix(pred: InstancesLike, gt: InstancesLike) -> np.ndarray:
    """(N_pred, N_gt) float64 mask IoU of every predicted with every ground-truth instance.

    Two label maps are compared by counting label pairs in one ``bincount``; other forms
    compare only the crops whose bounding boxes meet.
    """
    a, b = with_shape(as_instances(pred), as_instances(gt))
    return iou_from_sets(a, b)


def match_one_to_one(iou: np.ndarray, threshold: float, *, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of predictions (rows) to ground truth (columns).

    A pair is eligible when its IoU is ``>= threshold`` (``strict=False``, the COCO and
    paper A/C convention) or ``> threshold`` (``strict=True``, the Data Science Bowl
    convention used by :func:`dsb_score`); pairs without any overlap never match. Among
    the eligible pairs the assignment (``scipy.optimize.linear_sum_assignment``) first
    maximises the number of matches, then their total IoU. For thresholds of 0.5 and
    above the matching is unique whenever the instances of each side do not overlap.

    Returns ``(pred_index, gt_index)`` int arrays of equal length, sorted by prediction.
    """
    scores = np.asarray(iou, dtype=np.float64)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if scores.ndim != 2 or scores.size == 0:
        return empty
    eligible = (scores > threshold if strict else scores >= threshold) & (scores > 0)
    rows = np.flatnonzero(eligible.any(axis=1))
    cols = np.flatnonzero(eligible.any(axis=0))
    if rows.size == 0:
        return empty
    sub_ok = eligible[np.ix_(rows, cols)]
    sub_iou = np.where(sub_ok, scores[np.ix_(rows, cols)], 0.0)
    # Each match is worth 1; the IoU term sums to < 0.5 and so only breaks ties.
    cost = -(sub_ok.astype(np.float64) + sub_iou / (2.0 * min(rows.size, cols.size)))
    r, c = linear_sum_assignment(cost)
    keep = sub_ok[r, c]
    pred_index, gt_index = rows[r[keep]], cols[c[keep]]
    order = np.argsort(pred_index, kind="stable")
    return pred_index[order].astype(np.int64), gt_index[order].astype(np.int64)


def counts_from_iou(iou: np.ndarray, threshold: float, strict: bool) -> InstanceCounts:
    n_pred, n_gt = iou.shape
    tp = int(match_one_to_one(iou, threshold, strict=strict)[0].size)
    fp, fn = n_pred - tp, n_gt - tp
    nothing = n_pred == 0 and n_gt == 0
    return InstanceCounts(
        precision=ratio(tp, tp + fp, nothing),
        recall=ratio(tp, tp + fn, nothing),
        f1=ratio(2 * tp, 2 * tp + fp + fn, nothing),
        tp=tp,
        fp=fp,
        fn=fn,
    )


def instance_prf(
    pred: InstancesLike, gt: InstancesLike, threshold: float = 0.5, *, strict: bool = False
) -> InstanceCounts:
    """Instance precision, recall and F1 with optimal one-to-one matching at ``threshold``.

    See :func:`match_one_to_one` for ``>=`` versus ``>`` (``strict``).
    """
    return counts_from_iou(iou_matrix(pred, gt), threshold, strict)


def best_match_from_iou(iou: np.ndarray, threshold: float) -> float:
    n_pred, n_gt = iou.shape
    if n_pred == 0:
        return 1.0 if n_gt == 0 else 0.0
    if n_gt == 0:
        return 0.0
    return float(np.mean(iou.max(axis=1) >= threshold))


def best_match_precision(pred: InstancesLike, gt: InstancesLike, threshold: float = 0.7) -> float:
    """Paper A's instance precision: the share of predictions whose best gt IoU >= threshold.

    Each predicted cell is paired with the ground-truth cell of highest IoU; it is correct
    when that IoU is at least ``threshold``. This is not one-to-one: two predictions may
    both count as correct on one ground-truth cell (impossible above 0.5 for
    non-overlapping predictions). No predictions: 1.0 if there is no ground truth either,
    else 0.0.
    """
    return best_match_from_iou(iou_matrix(pred, gt), threshold)


def ap_from_iou(iou: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """AP for one image: greedy matching by descending score, all-point interpolation."""
    n_pred, n_gt = iou.shape
    if n_gt == 0:
        return 1.0 if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    if scores.shape != (n_pred,):
        raise ValueError(f"expected {n_pred} scores, got shape {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    taken = np.zeros(n_gt, dtype=bool)
    hit = np.zeros(n_pred, dtype=bool)
    for rank, i in enumerate(order.tolist()):
        # As in COCO: the free gt of highest IoU at or above the threshold.
        candidates = np.where(taken | (iou[i] < threshold) | (iou[i] <= 0), -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= 0:
            taken[j] = True
            hit[rank] = True
    tp = np.cumsum(hit)
    fp = np.cumsum(~hit)
    recall = tp / n_gt
    precision = tp / (tp + fp)
    # All-point interpolation: precision at recall r is the best precision at recall >= r.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def scores_for(n_pred: int, scores: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """One score per prediction (all 1.0 without scores)."""
    return per_instance(scores, n_pred, default=1.0, dtype=np.float64, what="scores")


def average_precision(
    pred: InstancesLike,
    gt: InstancesLike,
    scores: Sequence[float] | np.ndarray | None,
    threshold: float = 0.5,
) -> float:
    """Average precision over mask IoU for one image (paper C's AP^mask at ``threshold``).

    Predictions are ranked by ``scores`` (one per predicted instance, in instance order;
    ``None`` ranks them as given) and greedily matched, COCO-style, to the free
    ground-truth instance of highest IoU ``>= threshold``. AP is the area under the
    precision-recall curve with all-point interpolation (precision made monotone, summed
    over every recall step). No ground truth: 1.0 without predictions, else 0.0.
    """
    iou = iou_matrix(pred, gt)
    return ap_from_iou(iou, scores_for(iou.shape[0], scores), threshold)


def dsb_from_iou(iou: np.ndarray) -> float:
    n_pred, n_gt = iou.shape
    if n_pred == 0 and n_gt == 0:
        return 1.0
    per_threshold = []
    for t in DSB_THRESHOLDS:
        tp = int(match_one_to_one(iou, t, strict=True)[0].size)
        per_threshold.append(tp / (n_pred + n_gt - tp))
    return float(np.mean(per_threshold))


def dsb_score(pred: InstancesLike, gt: InstancesLike) -> float:
    """2018 Data Science Bowl score for one image.

    Mean over t = 0.50, 0.55, ..., 0.95 of TP / (TP + FP + FN), with one-to-one matching
    at IoU strictly greater than t. Both empty gives 1.0. Averaging over images is left
    to :func:`aggregate`.
    """
    return dsb_from_iou(iou_matrix(pred, gt))
