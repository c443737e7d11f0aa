"""Pixel metrics of a foreground: Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN) (paper A)."""

from __future__ import annotations

import numpy as np

from cytoseg.metrics.instances import ratio


def pixel_counts(pred_fg: np.ndarray, gt_fg: np.ndarray) -> tuple[int, int, int]:
    p = np.asarray(pred_fg).astype(bool, copy=False)
    g = np.asarray(gt_fg).astype(bool, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"foreground shapes differ: {p.shape} vs {g.shape}")
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


def pixel_dice(pred_fg: np.ndarray, gt_fg: np.ndarray) -> float:
    """Pixel Dice 2TP / (2TP + FP + FN) of two foreground masks (nonzero = foreground).

    Both empty gives 1.0.
    """
    tp, fp, fn = pixel_counts(pred_fg, gt_fg)
    return ratio(2 * tp, 2 * tp + fp + fn, True)


def pixel_iou(pred_fg: np.ndarray, gt_fg: np.ndarray) -> float:
    """Pixel IoU (Jaccard) TP / (TP + FP + FN) of two foreground masks. Both empty: 1.0."""
    tp, fp, fn = pixel_counts(pred_fg, gt_fg)
    return ratio(tp, tp + fp + fn, True)
