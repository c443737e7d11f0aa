"""Erythrocytes counted as cells: paper A's main false positive."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cytoseg.metrics.instances import (
    CELL_LABEL,
    ERYTHROCYTE_LABEL,
    Instances,
    InstancesLike,
    as_instances,
    iou_from_sets,
    per_instance,
    with_shape,
)


class ErythrocyteFalsePositives(NamedTuple):
    """Predicted cells that are really erythrocytes (paper A's main false positive)."""

    false_positives: int
    n_predicted_cells: int
    rate: float  # false_positives / n_predicted_cells, 0.0 without predicted cells
    indices: tuple[int, ...]  # indices into the prediction's instances


def erythrocyte_fp_from_sets(
    pred: Instances,
    gt: Instances,
    iou: np.ndarray,
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    match_threshold: float,
    cover_fraction: float,
) -> ErythrocyteFalsePositives:
    cell_index = np.flatnonzero(pred_labels == CELL_LABEL)
    ery = np.flatnonzero(gt_labels == ERYTHROCYTE_LABEL)
    hits: list[int] = []
    if cell_index.size and ery.size:
        shape = pred.shape or gt.shape
        if shape is None:
            ph, pw = pred.extent()
            gh, gw = gt.extent()
            shape = (max(ph, gh), max(pw, gw))
        ery_fg = gt.subset(ery).paint(shape)
        for i in cell_index.tolist():
            row = iou[i]
            j = int(np.argmax(row)) if row.size else -1
            if j >= 0 and row[j] >= match_threshold:
                if gt_labels[j] == ERYTHROCYTE_LABEL:
                    hits.append(i)
                continue
            area = int(pred.areas[i])
            if area == 0:
                continue
            y0, x0, y1, x1 = pred.boxes[i].tolist()
            on_ery = int(np.count_nonzero(ery_fg[y0:y1, x0:x1] & pred.crops[i]))
            if on_ery >= cover_fraction * area:
                hits.append(i)
    n_cells = int(cell_index.size)
    return ErythrocyteFalsePositives(
        false_positives=len(hits),
        n_predicted_cells=n_cells,
        rate=len(hits) / n_cells if n_cells else 0.0,
        indices=tuple(hits),
    )


def labels_for(n: int, labels: Sequence[int] | np.ndarray | None, default: int) -> np.ndarray:
    """One label per instance (all ``default`` without labels)."""
    return per_instance(labels, n, default=default, dtype=np.int64, what="labels")


def erythrocyte_false_positives(
    pred: InstancesLike,
    gt: InstancesLike,
    *,
    gt_labels: Sequence[int] | np.ndarray,
    pred_labels: Sequence[int] | np.ndarray | None = None,
    match_threshold: float = 0.5,
    cover_fraction: float = 0.5,
) -> ErythrocyteFalsePositives:
    """Predicted cells (label 1) that are erythrocytes in the ground truth.

    A predicted cell counts when its best ground-truth match (highest IoU, at least
    ``match_threshold``) is an erythrocyte (label 2), or when it matches nothing at that
    threshold but at least ``cover_fraction`` of its pixels lie on ground-truth
    erythrocytes. Labels are given per instance, in instance order; ``pred_labels=None``
    treats every prediction as a cell (class-agnostic models).
    """
    a, b = with_shape(as_instances(pred), as_instances(gt))
    return erythrocyte_fp_from_sets(
        a,
        b,
        iou_from_sets(a, b),
        labels_for(len(a), pred_labels, CELL_LABEL),
        labels_for(len(b), gt_labels, CELL_LABEL),
        match_threshold,
        cover_fraction,
    )
