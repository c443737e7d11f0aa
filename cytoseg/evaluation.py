"""Evaluation of a segmentation model on a test split, and the promotion gate (Django-free).

Every number comes from the shared metric module ``cytoseg.metrics``; this module only
decides what is computed, names it, and groups it. Per image (:func:`image_metrics`):

* ``dice``, ``iou``: pixel Dice and IoU of the cell foregrounds (paper A);
* ``precision_50``/``recall_50``/``f1_50`` (and ``tp_50``/``fp_50``/``fn_50``) and the same
  at ``_70``: instance detection with optimal one-to-one matching at IoU >= 0.5 / 0.7;
* ``accuracy_50``, ``accuracy_70``: TP / (TP + FP + FN) at those thresholds, what the StarDist
  and DSB literature report (often called "AP" there);
* ``best_match_precision_70``: paper A's precision (each prediction paired with its best
  ground-truth cell, correct at IoU >= 0.7);
* ``ranked_ap50``, ``ranked_ap70``: COCO-style average precision (predictions ranked by score,
  precision integrated over recall) over mask IoU; ``boundary_ranked_ap50``/``_70`` over
  Boundary IoU; ``mean_boundary_iou`` of the pairs matched at 0.5 (paper C);
* ``dsb``: the Data Science Bowl score, the mean accuracy over IoU 0.50:0.95 (paper D);
* ``erythrocyte_fp`` / ``erythrocyte_fp_rate``: predicted cells that are erythrocytes.

Cell metrics use the instances labelled 1 (cell) on both sides; erythrocytes (label 2) only
enter the erythrocyte false positives. Over images (:func:`evaluate_cases`), overall and per
group (the Bethesda category): counts are summed, every other metric averaged over images
(``cytoseg.metrics.aggregate``), ``micro_*`` recomputed from the summed counts, and COCO mask
AP (``coco_AP``, ``coco_AP50``, ``coco_AP75``, ``coco_AP_S``/``_M``/``_L``, paper E) computed
over the group's images with pycocotools. Values are plain floats, None where undefined.
``intervals`` gives a 95% bootstrap confidence interval of every summary metric but COCO's,
from resampling the test images (:func:`bootstrap_intervals`): a test set of a few images
is noisy, and the gate reads these intervals rather than the point values alone.

What is scored is what doctors receive: :func:`evaluate_backend` converts the predicted masks
the way pre-segmentation stores them (``stored``: polygons, simplified, small ones dropped)
before scoring; the raw masks' summary is kept beside (``raw``).

:func:`gate_decide` is the promotion rule: a candidate replaces the active model when it is
better by ``margin`` on one metric and worse by more than ``tolerance`` on none of the guarded
ones, both measured on the same frozen test split.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cytoseg.crops import Crop
from cytoseg.metrics import aggregate, coco_mask_ap, evaluate_image, instance_prf

__all__ = [
    "DEFAULT_GUARDED",
    "LOWER_IS_BETTER",
    "METRICS",
    "EvalCase",
    "EvalImage",
    "EvalProgressFn",
    "EvaluationResult",
    "GateDecision",
    "bootstrap_intervals",
    "evaluate_backend",
    "evaluate_cases",
    "gate_decide",
    "image_metrics",
    "json_safe",
]

UNGROUPED = "unassigned"

# Summary metrics, in the order a table shows them.
METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision_50",
    "recall_50",
    "f1_50",
    "accuracy_50",
    "precision_70",
    "recall_70",
    "f1_70",
    "accuracy_70",
    "best_match_precision_70",
    "ranked_ap50",
    "ranked_ap70",
    "boundary_ranked_ap50",
    "boundary_ranked_ap70",
    "mean_boundary_iou",
    "dsb",
    "coco_AP",
    "coco_AP50",
    "coco_AP75",
    "coco_AP_S",
    "coco_AP_M",
    "coco_AP_L",
    "erythrocyte_fp",
    "erythrocyte_fp_rate",
)
LOWER_IS_BETTER = frozenset({"erythrocyte_fp", "erythrocyte_fp_rate"})
# Metrics a promoted model may not be worse on by more than the tolerance.
DEFAULT_GUARDED: tuple[str, ...] = (
    "dice",
    "iou",
    "f1_50",
    "f1_70",
    "best_match_precision_70",
    "ranked_ap50",
    "dsb",
    "erythrocyte_fp_rate",
)
_RENAME_50 = {
    "precision": "precision_50",
    "recall": "recall_50",
    "f1": "f1_50",
    "accuracy": "accuracy_50",
    "tp": "tp_50",
    "fp": "fp_50",
    "fn": "fn_50",
}
# Metrics whose summary is recomputed from summed counts, not averaged over images.
_MICRO = ("micro_precision", "micro_recall", "micro_f1", "micro_accuracy")


@dataclass
class EvalCase:
    """One test image: ground truth and prediction as crops with labels (and scores)."""

    key: str
    group: str
    height: int
    width: int
    gt: Sequence[Crop]
    gt_labels: Sequence[int]
    pred: Sequence[Crop]
    pred_labels: Sequence[int]
    pred_scores: Sequence[float]


@dataclass
class EvaluationResult:
    """``overall`` and ``per_group`` summaries, ``per_image`` rows (``image``, ``group``, metrics),
    ``intervals`` (``{metric: [low, high]}``, 95% bootstrap over the images) and ``raw`` (the
    overall summary of the raw masks, when what was scored are the stored polygons)."""

    overall: dict[str, float | None]
    per_group: dict[str, dict[str, float | None]]
    per_image: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float | None]] = field(default_factory=dict)
    raw: dict[str, float | None] = field(default_factory=dict)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None and numpy scalars made Python (JSON columns)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cells(items: Sequence[Crop], labels: Sequence[int]) -> list[Crop]:
    return [item for item, label in zip(items, labels, strict=True) if int(label) == 1]


def image_metrics(case: EvalCase) -> dict[str, float]:
    """The per-image metrics of the module docstring (NaN where undefined)."""
    base = evaluate_image(
        list(case.pred),
        list(case.gt),
        pred_scores=np.asarray(case.pred_scores, dtype=np.float64),
        pred_labels=np.asarray(case.pred_labels, dtype=np.int64),
        gt_labels=np.asarray(case.gt_labels, dtype=np.int64),
        shape=(case.height, case.width),
        iou_threshold=0.5,
        best_match_threshold=0.7,
        ap_thresholds=(0.5, 0.7),
    )
    out = {_RENAME_50.get(k, k): v for k, v in base.items()}
    out["best_match_precision_70"] = out.pop("best_match_precision")
    pred_cells, gt_cells = _cells(case.pred, case.pred_labels), _cells(case.gt, case.gt_labels)
    if pred_cells and gt_cells:
        counts = instance_prf(pred_cells, gt_cells, 0.7)
        p70, r70, f70, tp70 = counts.precision, counts.recall, counts.f1, counts.tp
    else:
        # instance_prf needs the image shape when a side is empty; the counts are trivial
        tp70 = 0
        nothing = not pred_cells and not gt_cells
        p70 = 1.0 if nothing else 0.0
        r70 = f70 = p70
    fp70, fn70 = len(pred_cells) - tp70, len(gt_cells) - tp70
    out.update(
        precision_70=float(p70),
        recall_70=float(r70),
        f1_70=float(f70),
        accuracy_70=_ratio(tp70, tp70 + fp70 + fn70, not pred_cells and not gt_cells),
        tp_70=float(tp70),
        fp_70=float(len(pred_cells) - tp70),
        fn_70=float(len(gt_cells) - tp70),
    )
    return out


def _ratio(num: float, den: float, nothing: bool) -> float:
    return num / den if den > 0 else (1.0 if nothing else 0.0)


def _finish_summary(summary: Mapping[str, float], rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``aggregate``'s summary with the detection counts summed (not averaged) and the micro
    precision / recall / F1 recomputed from the sums, at both IoU thresholds."""
    out = dict(summary)
    for suffix in ("50", "70"):
        tp, fp, fn = (float(sum(r[f"{k}_{suffix}"] for r in rows)) for k in ("tp", "fp", "fn"))
        out.update({f"tp_{suffix}": tp, f"fp_{suffix}": fp, f"fn_{suffix}": fn})
        nothing = tp + fp + fn == 0
        out[f"micro_precision_{suffix}"] = _ratio(tp, tp + fp, nothing)
        out[f"micro_recall_{suffix}"] = _ratio(tp, tp + fn, nothing)
        out[f"micro_f1_{suffix}"] = _ratio(2 * tp, 2 * tp + fp + fn, nothing)
        out[f"micro_accuracy_{suffix}"] = _ratio(tp, tp + fp + fn, nothing)
    return out


def _coco(cases: Sequence[EvalCase]) -> dict[str, float]:
    if not cases:
        return {}
    preds: list[Any] = []
    gts: list[Any] = []
    scores: list[np.ndarray] = []
    for case in cases:
        keep = [i for i, label in enumerate(case.pred_labels) if int(label) == 1]
        preds.append([case.pred[i] for i in keep])
        scores.append(np.asarray([case.pred_scores[i] for i in keep], dtype=np.float64))
        gts.append(_cells(case.gt, case.gt_labels))
    # pycocotools needs the image size: a label map of the right shape carries it when a side is empty
    preds = [p if p else np.zeros((c.height, c.width), np.int32) for p, c in zip(preds, cases, strict=True)]
    gts = [g if g else np.zeros((c.height, c.width), np.int32) for g, c in zip(gts, cases, strict=True)]
    result = coco_mask_ap(preds, gts, scores_per_image=scores)
    return {f"coco_{k}": v for k, v in result.items()}


def evaluate_cases(cases: Sequence[EvalCase]) -> EvaluationResult:
    """Per-image metrics, then the overall and per-group summaries (see the module docstring)."""
    rows = [image_metrics(case) for case in cases]
    groups = [case.group or UNGROUPED for case in cases]
    summaries = aggregate(rows, groups) if rows else {"all": {"n_images": 0.0}}
    overall: dict[str, float] = dict(summaries["all"])
    per_group: dict[str, dict[str, float]] = {}
    if rows:
        overall = _finish_summary(summaries["all"], rows) | _coco(cases)
        for name in dict.fromkeys(groups):
            members = [i for i, g in enumerate(groups) if g == name]
            per_group[name] = _finish_summary(summaries[name], [rows[i] for i in members]) | _coco(
                [cases[i] for i in members]
            )
    per_image = [{"image": case.key, "group": case.group, **row} for case, row in zip(cases, rows, strict=True)]
    return EvaluationResult(
        overall=json_safe(overall),
        per_group=json_safe(per_group),
        per_image=json_safe(per_image),
        intervals=json_safe(bootstrap_intervals(rows)),
    )


def bootstrap_intervals(
    rows: Sequence[Mapping[str, float]], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the summary metrics over the test images.

    The images are resampled with replacement ``resamples`` times; each resample's summary is
    computed as :func:`evaluate_cases` computes it (per-image metrics averaged, ignoring NaN;
    ``micro_*`` and counts from the summed counts). COCO AP is left out (it would have to be
    recomputed from the masks). Deterministic for a ``seed``. One image gives ``[v, v]``.
    """
    if not rows:
        return {}
    n = len(rows)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    alpha = (1.0 - level) / 2.0
    out: dict[str, list[float]] = {}

    def interval(samples: np.ndarray) -> list[float]:
        finite = samples[np.isfinite(samples)]
        if finite.size == 0:
            return [math.nan, math.nan]
        return [float(np.quantile(finite, alpha)), float(np.quantile(finite, 1.0 - alpha))]

    for name in METRICS:
        if name.startswith("coco_") or not any(name in r for r in rows):
            continue
        values = np.array([r.get(name, math.nan) for r in rows], dtype=np.float64)
        draws = values[picks]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(draws, axis=1) if name not in ("erythrocyte_fp",) else np.nansum(draws, axis=1)
        out[name] = interval(means)
    for suffix in ("50", "70"):
        if not all(f"tp_{suffix}" in r for r in rows):
            continue
        tp, fp, fn = (
            np.array([r[f"{k}_{suffix}"] for r in rows], dtype=np.float64)[picks].sum(axis=1)
            for k in ("tp", "fp", "fn")
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"micro_precision_{suffix}"] = interval(np.where(tp + fp > 0, tp / (tp + fp), np.nan))
            out[f"micro_recall_{suffix}"] = interval(np.where(tp + fn > 0, tp / (tp + fn), np.nan))
            out[f"micro_f1_{suffix}"] = interval(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan))
            out[f"micro_accuracy_{suffix}"] = interval(np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan))
    return out


class _Backend(Protocol):
    def predict(self, image: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class EvalImage:
    """A test image and its ground-truth cells (crops with labels, e.g. ``augment.PlacedCell``
    or ``cytoseg.synthetic.SyntheticCell``)."""

    key: str
    group: str
    image: np.ndarray
    gt: Sequence[Any]
    gt_labels: Sequence[int]


# How predictions become what is stored: (instances, height, width) -> stored instances.
StoredFn = Callable[[Sequence[Any], int, int], Sequence[Any]]
# progress(image, images): image 1-based, images None when the count is unknown
EvalProgressFn = Callable[[int, int | None], None]


def _case(item: EvalImage, instances: Sequence[Any]) -> EvalCase:
    height, width = item.image.shape[:2]
    return EvalCase(
        key=item.key,
        group=item.group,
        height=height,
        width=width,
        gt=list(item.gt),
        gt_labels=[int(v) for v in item.gt_labels],
        pred=list(instances),
        pred_labels=[int(i.label) for i in instances],
        pred_scores=[float(i.score) for i in instances],
    )


def evaluate_backend(
    backend: _Backend,
    images: Iterable[EvalImage],
    *,
    stored: StoredFn | None = None,
    progress: EvalProgressFn | None = None,
    total: int | None = None,
) -> EvaluationResult:
    """Run ``backend.predict`` on every test image and evaluate (``timings``: predict / metrics seconds).

    With ``stored`` (e.g. :func:`cytoseg.contours.instances_as_stored`), the scored predictions
    are what storage keeps of them, and ``raw`` holds the overall summary of the raw masks.
    ``progress(image, images)`` is called before each image is predicted (``image`` 1-based;
    ``images`` is ``total``, else ``len(images)`` when it has one, else None): prediction is
    what takes minutes, so callers can say which image is being scored.
    """
    if total is None and isinstance(images, Sized):
        total = len(images)
    cases: list[EvalCase] = []
    raw_cases: list[EvalCase] = []
    predict_seconds = 0.0
    for index, item in enumerate(images, start=1):
        if progress is not None:
            progress(index, total)
        started = time.perf_counter()
        prediction = backend.predict(item.image)
        predict_seconds += time.perf_counter() - started
        instances = list(prediction.instances)
        height, width = item.image.shape[:2]
        if stored is not None:
            raw_cases.append(_case(item, instances))
            instances = list(stored(instances, height, width))
        cases.append(_case(item, instances))
    started = time.perf_counter()
    result = evaluate_cases(cases)
    if raw_cases:
        result.raw = evaluate_cases(raw_cases).overall
    result.timings = {"predict": predict_seconds, "metrics": time.perf_counter() - started, "images": len(cases)}
    return result


@dataclass
class GateDecision:
    """Outcome of :func:`gate_decide`; ``reason`` says why in one sentence."""

    promote: bool
    metric: str
    candidate: float | None
    baseline: float | None
    improvement: float | None
    margin: float
    tolerance: float
    regressions: dict[str, float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return json_safe(self.__dict__)


def _value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    if metrics is None:
        return None
    value = metrics.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _gain(name: str, candidate: float, baseline: float) -> float:
    """How much better the candidate is (positive = better), whatever the metric's direction."""
    return baseline - candidate if name in LOWER_IS_BETTER else candidate - baseline


def _interval(intervals: Mapping[str, Any] | None, name: str) -> tuple[float, float] | None:
    if not intervals:
        return None
    pair = intervals.get(name)
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return None
    low, high = _value({"v": pair[0]}, "v"), _value({"v": pair[1]}, "v")
    return None if low is None or high is None else (low, high)


def _confidently_worse(
    name: str,
    tolerance: float,
    candidate: tuple[float, float] | None,
    baseline: tuple[float, float] | None,
) -> bool:
    """Whether the candidate's interval lies wholly on the worse side of the baseline's, by more
    than ``tolerance``. Without both intervals there is nothing to say it is noise: True."""
    if candidate is None or baseline is None:
        return True
    if name in LOWER_IS_BETTER:
        return candidate[0] - baseline[1] > tolerance
    return baseline[0] - candidate[1] > tolerance


def gate_decide(
    *,
    candidate: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    metric: str,
    margin: float,
    tolerance: float,
    guarded: Sequence[str] = DEFAULT_GUARDED,
    candidate_intervals: Mapping[str, Any] | None = None,
    baseline_intervals: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Promote when ``candidate[metric]`` beats ``baseline[metric]`` by at least ``margin`` and no
    guarded metric regresses.

    A guarded metric regresses when the candidate is worse by more than ``tolerance`` *and*, where
    both sides have bootstrap intervals (``{metric: [low, high]}`` over the test images), the
    candidate's interval lies wholly below the baseline's by more than ``tolerance`` too, so a
    drop that a handful of test images cannot tell from noise does not veto a better model.
    Without intervals the point values decide. A guarded metric undefined on either side is not
    compared. Direction-aware: for ``LOWER_IS_BETTER`` metrics lower values win.
    """
    cand, base = _value(candidate, metric), _value(baseline, metric)
    decision = GateDecision(
        promote=False,
        metric=metric,
        candidate=cand,
        baseline=base,
        improvement=None,
        margin=margin,
        tolerance=tolerance,
        regressions={},
        reason="",
    )
    if cand is None:
        decision.reason = f"the candidate has no value for {metric}"
        return decision
    if baseline is None or base is None:
        decision.reason = f"the active model has no value for {metric} on this test split"
        return decision
    decision.improvement = _gain(metric, cand, base)
    noise: list[str] = []
    for name in guarded:
        c, b = _value(candidate, name), _value(baseline, name)
        if c is None or b is None or _gain(name, c, b) >= -tolerance:
            continue
        if _confidently_worse(
            name, tolerance, _interval(candidate_intervals, name), _interval(baseline_intervals, name)
        ):
            decision.regressions[name] = _gain(name, c, b)
        else:
            noise.append(name)
    if decision.improvement < margin:
        decision.reason = (
            f"{metric} {cand:.4f} vs {base:.4f}: improvement {decision.improvement:+.4f} < margin {margin}"
        )
    elif decision.regressions:
        worst = ", ".join(f"{k} {v:+.4f}" for k, v in sorted(decision.regressions.items()))
        decision.reason = f"regresses beyond the tolerance {tolerance}: {worst}"
    else:
        decision.promote = True
        decision.reason = f"{metric} {cand:.4f} vs {base:.4f} ({decision.improvement:+.4f} >= margin {margin})"
        if noise:
            decision.reason += f"; lower {', '.join(sorted(noise))} within the confidence intervals"
    return decision
