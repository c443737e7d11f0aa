"""Every metric of one image at once, and their aggregation over images (what evaluations store)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from cytoseg.metrics.boundary import boundaries
from cytoseg.metrics.erythrocytes import erythrocyte_fp_from_sets, labels_for
from cytoseg.metrics.instances import CELL_LABEL, InstancesLike, as_instances, iou_from_sets, ratio, with_shape
from cytoseg.metrics.matching import (
    ap_from_iou,
    best_match_from_iou,
    counts_from_iou,
    dsb_from_iou,
    match_one_to_one,
    scores_for,
)
from cytoseg.metrics.pixel import pixel_counts

# Keys of ``evaluate_image`` results that ``aggregate`` sums instead of averaging.
COUNT_KEYS = frozenset({"n_pred", "n_gt", "tp", "fp", "fn", "erythrocyte_fp"})


def _percent(t: float) -> int:
    return round(t * 100)


def evaluate_image(
    pred: InstancesLike,
    gt: InstancesLike,
    *,
    pred_scores: Sequence[float] | np.ndarray | None = None,
    pred_labels: Sequence[int] | np.ndarray | None = None,
    gt_labels: Sequence[int] | np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
    iou_threshold: float = 0.5,
    best_match_threshold: float = 0.7,
    ap_thresholds: Sequence[float] = (0.5, 0.7),
    boundary_dilation: int = 2,
) -> dict[str, float]:
    """All per-image metrics as a flat ``{name: value}`` dict.

    Cell metrics use the instances labelled 1 on each side (all instances when labels are
    not given). Keys: ``n_pred``, ``n_gt``; pixel ``dice`` and ``iou`` of the cell
    foregrounds; ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` at
    ``iou_threshold`` (one-to-one, ``>=``); ``best_match_precision`` (paper A, at
    ``best_match_threshold``); ``mean_matched_iou`` and ``mean_boundary_iou`` of the
    matched pairs (NaN without any); ``ranked_ap{t}`` and ``boundary_ranked_ap{t}`` (score-ranked
    AP) for every ``ap_thresholds`` entry, in percent (``ranked_ap50``, ``ranked_ap70``);
    ``accuracy`` = TP/(TP+FP+FN) at ``iou_threshold``; ``dsb``; and
    ``erythrocyte_fp`` and ``erythrocyte_fp_rate`` (NaN unless ``gt_labels`` is given).
    ``shape`` is the image shape, needed only when both sides are cropped instances.
    """
    a, b = with_shape(as_instances(pred), as_instances(gt))
    p_labels = labels_for(len(a), pred_labels, CELL_LABEL)
    g_labels = labels_for(len(b), gt_labels, CELL_LABEL)
    scores = scores_for(len(a), pred_scores)
    if shape is None:
        shape = a.shape or b.shape
    if shape is None:
        ah, aw = a.extent()
        bh, bw = b.extent()
        shape = (max(ah, bh), max(aw, bw))

    pred_cells = a.subset(np.flatnonzero(p_labels == CELL_LABEL))
    gt_cells = b.subset(np.flatnonzero(g_labels == CELL_LABEL))
    cell_scores = scores[p_labels == CELL_LABEL]

    out: dict[str, float] = {"n_pred": float(len(pred_cells)), "n_gt": float(len(gt_cells))}
    tp_px, fp_px, fn_px = pixel_counts(pred_cells.paint(shape), gt_cells.paint(shape))
    out["dice"] = ratio(2 * tp_px, 2 * tp_px + fp_px + fn_px, True)
    out["iou"] = ratio(tp_px, tp_px + fp_px + fn_px, True)

    iou = iou_from_sets(pred_cells, gt_cells)
    counts = counts_from_iou(iou, iou_threshold, strict=False)
    out.update(
        precision=counts.precision,
        recall=counts.recall,
        f1=counts.f1,
        tp=float(counts.tp),
        fp=float(counts.fp),
        fn=float(counts.fn),
    )
    out["best_match_precision"] = best_match_from_iou(iou, best_match_threshold)

    biou = iou_from_sets(boundaries(pred_cells, boundary_dilation), boundaries(gt_cells, boundary_dilation))
    pi, gi = match_one_to_one(iou, iou_threshold)
    out["mean_matched_iou"] = float(np.mean(iou[pi, gi])) if pi.size else math.nan
    out["mean_boundary_iou"] = float(np.mean(biou[pi, gi])) if pi.size else math.nan
    combined = np.minimum(biou, iou)
    # Score-ranked AP (COCO's recipe for one threshold: precision integrated over recall as the
    # predictions are taken in score order), not to be confused with TP/(TP+FP+FN) (accuracy).
    for t in ap_thresholds:
        out[f"ranked_ap{_percent(t)}"] = ap_from_iou(iou, cell_scores, t)
        out[f"boundary_ranked_ap{_percent(t)}"] = ap_from_iou(combined, cell_scores, t)
    # TP / (TP + FP + FN) at ``iou_threshold``: what the StarDist and DSB literature call accuracy
    # (or AP) at one threshold; ``dsb`` is its mean over 0.50:0.95.
    out["accuracy"] = ratio(counts.tp, counts.tp + counts.fp + counts.fn, len(pred_cells) == len(gt_cells) == 0)
    out["dsb"] = dsb_from_iou(iou)

    if gt_labels is None:
        out["erythrocyte_fp"] = math.nan
        out["erythrocyte_fp_rate"] = math.nan
    else:
        ery = erythrocyte_fp_from_sets(a, b, iou_from_sets(a, b), p_labels, g_labels, 0.5, 0.5)
        out["erythrocyte_fp"] = float(ery.false_positives)
        out["erythrocyte_fp_rate"] = ery.rate
    return out


def _summarise(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys: list[str] = []
    for r in results:
        keys.extend(k for k in r if k not in keys)
    out: dict[str, float] = {"n_images": float(len(results))}
    for key in keys:
        values = np.array([r.get(key, math.nan) for r in results], dtype=np.float64)
        finite = values[~np.isnan(values)]
        if key in COUNT_KEYS:
            out[key] = float(finite.sum()) if finite.size else math.nan
        else:
            out[key] = float(finite.mean()) if finite.size else math.nan
    if {"tp", "fp", "fn"} <= set(keys):
        tp, fp, fn = out["tp"], out["fp"], out["fn"]
        nothing = tp + fp + fn == 0
        out["micro_precision"] = ratio(tp, tp + fp, nothing)
        out["micro_recall"] = ratio(tp, tp + fn, nothing)
        out["micro_f1"] = ratio(2 * tp, 2 * tp + fp + fn, nothing)
        out["micro_accuracy"] = ratio(tp, tp + fp + fn, nothing)
    return out


def aggregate(
    results: Sequence[Mapping[str, float]], groups: Sequence[Hashable] | None = None
) -> dict[str, dict[str, float]]:
    """Combine :func:`evaluate_image` results over images, overall and per group.

    Returns ``{"all": summary, str(group): summary, ...}``, groups in first-seen order
    (e.g. Bethesda categories, one per image). In a summary, counts (``n_pred``,
    ``n_gt``, ``tp``, ``fp``, ``fn``, ``erythrocyte_fp``) are summed, every other metric is
    the mean over images ignoring NaN, and ``micro_precision``, ``micro_recall``,
    ``micro_f1``, ``micro_accuracy`` are recomputed from the summed counts; ``n_images`` is the
    image count.
    """
    out = {"all": _summarise(results)}
    if groups is None:
        return out
    if len(groups) != len(results):
        raise ValueError("need one group per result")
    members: dict[str, list[Mapping[str, float]]] = {}
    for group, result in zip(groups, results, strict=True):
        name = str(group)
        if name == "all":
            raise ValueError('"all" is reserved for the overall summary')
        members.setdefault(name, []).append(result)
    for name, rs in members.items():
        out[name] = _summarise(rs)
    return out
