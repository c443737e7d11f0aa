"""Evaluation metrics against hand-computed cases, and the promotion gate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cytoseg.augment import PlacedCell
from cytoseg.evaluation import (
    DEFAULT_GUARDED,
    EvalCase,
    EvalImage,
    bootstrap_intervals,
    evaluate_backend,
    evaluate_cases,
    gate_decide,
    image_metrics,
)


def _box(r0: int, r1: int, c0: int, c1: int, label: int = 1) -> PlacedCell:
    """Rows r0..r1-1, columns c0..c1-1."""
    return PlacedCell(x0=c0, y0=r0, mask=np.ones((r1 - r0, c1 - c0), bool), label=label)


# Ground truth on a 10x10 image: cells A and B (16 px each), erythrocyte E (6 px).
A, B, E = _box(0, 4, 0, 4), _box(5, 9, 5, 9), _box(0, 2, 7, 10, label=2)
# Prediction: P1 = A exactly, P2 = B shifted one column (IoU 12/20 = 0.6), P3 = E taken for a cell.
P1, P2, P3 = _box(0, 4, 0, 4), _box(5, 9, 6, 10), _box(0, 2, 7, 10)


def _case(key: str = "1", group: str = "IV") -> EvalCase:
    return EvalCase(
        key=key,
        group=group,
        height=10,
        width=10,
        gt=[A, B, E],
        gt_labels=[1, 1, 2],
        pred=[P1, P2, P3],
        pred_labels=[1, 1, 1],
        pred_scores=[0.9, 0.8, 0.7],
    )


def _perfect(key: str = "2", group: str = "V") -> EvalCase:
    return EvalCase(
        key=key,
        group=group,
        height=10,
        width=10,
        gt=[A, B],
        gt_labels=[1, 1],
        pred=[A, B],
        pred_labels=[1, 1],
        pred_scores=[1.0, 1.0],
    )


def test_image_metrics_hand_computed() -> None:
    m = image_metrics(_case())
    assert (m["n_pred"], m["n_gt"]) == (3, 2)
    # pixels: prediction 38, truth 32, overlap 16 + 12 = 28 -> FP 10, FN 4
    assert m["dice"] == pytest.approx(2 * 28 / (2 * 28 + 10 + 4))  # 0.8
    assert m["iou"] == pytest.approx(28 / 42)
    # IoU >= 0.5, one-to-one: P1-A, P2-B -> TP 2, FP 1 (P3), FN 0
    assert (m["tp_50"], m["fp_50"], m["fn_50"]) == (2, 1, 0)
    assert m["precision_50"] == pytest.approx(2 / 3)
    assert m["recall_50"] == pytest.approx(1.0)
    assert m["f1_50"] == pytest.approx(0.8)
    # IoU >= 0.7: only P1-A
    assert (m["tp_70"], m["fp_70"], m["fn_70"]) == (1, 2, 1)
    assert m["precision_70"] == pytest.approx(1 / 3)
    assert m["recall_70"] == pytest.approx(1 / 2)
    assert m["f1_70"] == pytest.approx(0.4)
    # paper A: best match of P1 1.0 (ok), P2 0.6, P3 0 -> 1/3
    assert m["best_match_precision_70"] == pytest.approx(1 / 3)
    # DSB: t = 0.50, 0.55 -> 2/(3+2-2); t = 0.60 ... 0.95 (IoU must exceed t) -> 1/(3+2-1)
    assert m["dsb"] == pytest.approx((2 * (2 / 3) + 8 * 0.25) / 10)
    # AP by score: P1 hit, P2 hit at 0.5 (miss at 0.7), P3 miss
    assert m["ranked_ap50"] == pytest.approx(1.0)
    assert m["ranked_ap70"] == pytest.approx(0.5)
    assert m["boundary_ranked_ap50"] <= m["ranked_ap50"] + 1e-9
    assert m["mean_matched_iou"] == pytest.approx((1.0 + 0.6) / 2)
    # P3 lies on the erythrocyte
    assert m["erythrocyte_fp"] == 1 and m["erythrocyte_fp_rate"] == pytest.approx(1 / 3)


def test_empty_prediction_and_empty_truth() -> None:
    nothing = EvalCase(
        key="x", group="", height=8, width=8, gt=[], gt_labels=[], pred=[], pred_labels=[], pred_scores=[]
    )
    m = image_metrics(nothing)
    assert m["dice"] == 1.0 and m["precision_50"] == 1.0 and m["f1_70"] == 1.0 and m["dsb"] == 1.0
    missed = EvalCase(
        key="y", group="", height=10, width=10, gt=[A], gt_labels=[1], pred=[], pred_labels=[], pred_scores=[]
    )
    m = image_metrics(missed)
    assert m["dice"] == 0.0 and m["recall_50"] == 0.0 and m["recall_70"] == 0.0 and m["fn_70"] == 1


def test_overall_and_per_bethesda_with_coco() -> None:
    result = evaluate_cases([_case("1", "IV"), _perfect("2", "V"), _perfect("3", "V")])
    overall = result.overall
    assert overall["n_images"] == 3
    assert overall["tp_50"] == 6 and overall["fp_50"] == 1 and overall["fn_50"] == 0
    assert overall["micro_precision_50"] == pytest.approx(6 / 7)
    assert overall["precision_50"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert overall["tp_70"] == 5 and overall["fn_70"] == 1
    assert overall["micro_recall_70"] == pytest.approx(5 / 6)
    assert overall["erythrocyte_fp"] == 1
    assert set(result.per_group) == {"IV", "V"}
    iv = result.per_group["IV"]
    assert iv["n_images"] == 1 and iv["dsb"] == pytest.approx(1 / 3)
    # COCO (pycocotools, 101-point interpolation): AP50 1.0; AP75 only P1 matches -> recall 0.5
    assert iv["coco_AP50"] == pytest.approx(1.0)
    assert iv["coco_AP75"] == pytest.approx(51 / 101)
    assert iv["coco_AP_S"] == pytest.approx(iv["coco_AP"])  # every cell is small (< 32^2 px)
    assert iv["coco_AP_L"] is None  # undefined: stored as null, not NaN
    v = result.per_group["V"]
    assert v["coco_AP"] == pytest.approx(1.0) and v["dice"] == 1.0 and v["f1_70"] == 1.0
    assert [row["image"] for row in result.per_image] == ["1", "2", "3"]
    assert result.per_image[0]["group"] == "IV"


def test_evaluate_backend_runs_the_model_on_each_image() -> None:
    class Backend:
        def __init__(self) -> None:
            self.calls = 0

        def predict(self, image: np.ndarray) -> object:
            self.calls += 1
            from cytoseg.backends.base import Instance, Prediction

            return Prediction(
                instances=[Instance(x0=0, y0=0, mask=np.ones((4, 4), bool), label=1, score=0.5)], semantic=None
            )

    backend = Backend()
    images = [
        EvalImage(key=str(i), group="VI", image=np.zeros((10, 10, 3), np.uint8), gt=[A, B], gt_labels=[1, 1])
        for i in range(2)
    ]
    result = evaluate_backend(backend, images)
    assert backend.calls == 2
    assert result.overall["precision_50"] == 1.0 and result.overall["recall_50"] == 0.5
    assert result.timings["images"] == 2


def test_evaluate_backend_reports_progress_before_each_image() -> None:
    from cytoseg.backends.base import Instance, Prediction

    seen: list[tuple[int, int | None]] = []

    class Backend:
        def predict(self, image: np.ndarray) -> object:
            # the callback for this image came before its (slow) prediction
            assert seen and seen[-1][0] == len(seen)
            return Prediction(
                instances=[Instance(x0=0, y0=0, mask=np.ones((4, 4), bool), label=1, score=0.5)], semantic=None
            )

    images = [
        EvalImage(key=str(i), group="VI", image=np.zeros((10, 10, 3), np.uint8), gt=[A], gt_labels=[1])
        for i in range(3)
    ]
    evaluate_backend(Backend(), images, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    # a generator has no length: the count comes from ``total``, or is unknown
    seen.clear()
    evaluate_backend(Backend(), (x for x in images), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, None), (2, None), (3, None)]
    seen.clear()
    evaluate_backend(Backend(), (x for x in images), progress=lambda i, n: seen.append((i, n)), total=3)
    assert seen[-1] == (3, 3)


def test_gate_promotes_only_with_margin_and_no_regression() -> None:
    base = {"dsb": 0.50, "dice": 0.80, "f1_50": 0.70, "erythrocyte_fp_rate": 0.10}
    better = {"dsb": 0.55, "dice": 0.79, "f1_50": 0.71, "erythrocyte_fp_rate": 0.11}
    d = gate_decide(candidate=better, baseline=base, metric="dsb", margin=0.02, tolerance=0.02)
    assert d.promote and d.improvement == pytest.approx(0.05)
    d = gate_decide(candidate=better, baseline=base, metric="dsb", margin=0.06, tolerance=0.02)
    assert not d.promote and "margin" in d.reason
    worse_dice = dict(better, dice=0.70)
    d = gate_decide(candidate=worse_dice, baseline=base, metric="dsb", margin=0.02, tolerance=0.02)
    assert not d.promote and set(d.regressions) == {"dice"} and d.regressions["dice"] == pytest.approx(-0.10)
    # lower is better for erythrocyte false positives
    more_fp = dict(better, erythrocyte_fp_rate=0.20)
    d = gate_decide(candidate=more_fp, baseline=base, metric="dsb", margin=0.02, tolerance=0.02)
    assert not d.promote and "erythrocyte_fp_rate" in d.regressions
    d = gate_decide(
        candidate=dict(base, erythrocyte_fp_rate=0.05),
        baseline=base,
        metric="erythrocyte_fp_rate",
        margin=0.02,
        tolerance=0.0,
    )
    assert d.promote and d.improvement == pytest.approx(0.05)
    # undefined values: never promote on a missing gate metric, skip missing guarded ones
    assert not gate_decide(candidate={"dsb": None}, baseline=base, metric="dsb", margin=0, tolerance=0).promote
    assert not gate_decide(candidate=better, baseline=None, metric="dsb", margin=0, tolerance=0).promote
    d = gate_decide(candidate={"dsb": 0.6, "dice": None}, baseline=base, metric="dsb", margin=0, tolerance=0)
    assert d.promote
    assert "dsb" in DEFAULT_GUARDED and not math.isnan(d.to_dict()["candidate"])


def test_gate_tolerances_use_confidence_intervals() -> None:
    base = {"f1_50": 0.60, "boundary_ranked_ap50": 0.70, "erythrocyte_fp_rate": 0.02}
    cand = {"f1_50": 0.75, "boundary_ranked_ap50": 0.57, "erythrocyte_fp_rate": 0.06}
    guarded = ("boundary_ranked_ap50", "erythrocyte_fp_rate")
    wide_base = {"boundary_ranked_ap50": [0.40, 0.95], "erythrocyte_fp_rate": [0.0, 0.05]}
    wide_cand = {"boundary_ranked_ap50": [0.30, 0.85], "erythrocyte_fp_rate": [0.01, 0.12]}

    def decide(ci_cand: object, ci_base: object) -> object:
        return gate_decide(
            candidate=cand,
            baseline=base,
            metric="f1_50",
            margin=0.01,
            tolerance=0.02,
            guarded=guarded,
            candidate_intervals=ci_cand,  # type: ignore[arg-type]
            baseline_intervals=ci_base,  # type: ignore[arg-type]
        )

    # overlapping intervals: the drops are noise on this test set
    d = decide(wide_cand, wide_base)
    assert d.promote and d.regressions == {}  # type: ignore[attr-defined]
    assert "boundary_ranked_ap50, erythrocyte_fp_rate within the confidence intervals" in d.reason  # type: ignore[attr-defined]
    # without intervals (or with only one side's) the point values decide, as before
    for ci_cand, ci_base in ((None, None), (wide_cand, None), ({}, wide_base)):
        d = decide(ci_cand, ci_base)
        assert not d.promote and set(d.regressions) == set(guarded)  # type: ignore[attr-defined]
    # separated intervals: a real regression, direction-aware (FP rate: lower is better)
    apart_cand = {"boundary_ranked_ap50": [0.30, 0.37], "erythrocyte_fp_rate": [0.08, 0.12]}
    d = decide(apart_cand, wide_base)
    assert not d.promote and set(d.regressions) == set(guarded)  # type: ignore[attr-defined]
    # apart, but by less than the tolerance: not a veto
    d = decide({"boundary_ranked_ap50": [0.30, 0.39], "erythrocyte_fp_rate": [0.06, 0.07]}, wide_base)
    assert d.promote  # type: ignore[attr-defined]
    # malformed stored intervals count as none
    d = decide({"boundary_ranked_ap50": [None, 0.9], "erythrocyte_fp_rate": "x"}, wide_base)
    assert set(d.regressions) == set(guarded)  # type: ignore[attr-defined]


def test_bootstrap_intervals_are_deterministic_and_bracket_the_summary() -> None:
    rng = np.random.default_rng(3)
    rows = [
        {
            "f1_50": float(v),
            "dice": float(d),
            "tp_50": int(t),
            "fp_50": 1,
            "fn_50": 2,
            "tp_70": 1,
            "fp_70": 0,
            "fn_70": 1,
        }
        for v, d, t in zip(rng.uniform(0.3, 0.9, 12), rng.uniform(0.7, 0.95, 12), rng.integers(3, 9, 12), strict=True)
    ]
    first, again = bootstrap_intervals(rows), bootstrap_intervals(rows)
    assert first == again
    mean = float(np.mean([r["f1_50"] for r in rows]))
    low, high = first["f1_50"]
    assert low < mean < high and high - low < 0.3
    assert first["micro_f1_50"][0] < first["micro_f1_50"][1]
    # one image: nothing to resample, the interval is the value itself
    one = bootstrap_intervals(rows[:1])
    assert one["f1_50"] == [rows[0]["f1_50"]] * 2
    assert bootstrap_intervals([]) == {}
    # evaluate_cases attaches them to the summary
    result = evaluate_cases([_case("1"), _case("2")])
    assert result.intervals["f1_50"][0] <= result.overall["f1_50"] <= result.intervals["f1_50"][1]


def test_stored_polygons_are_scored_and_raw_masks_kept_beside() -> None:
    """What doctors receive is scored; ``raw`` keeps the masks before they were stored."""
    from cytoseg.backends.base import Instance, Prediction
    from cytoseg.contours import instances_as_stored

    class Backend:
        def predict(self, image: np.ndarray) -> Prediction:
            return Prediction(
                instances=[Instance(x0=c.x0, y0=c.y0, mask=c.mask, label=1, score=1.0) for c in (P1, P2)],
                semantic=None,
            )

    def stored(instances: Any, height: int, width: int) -> list[Any]:
        # storage drops the shifted cell (as it drops a polygon under the minimum area)
        return [i for i in instances if i.x0 == 0]

    images = [EvalImage(key="1", group="VI", image=np.zeros((10, 10, 3), np.uint8), gt=[A, B], gt_labels=[1, 1])]
    result = evaluate_backend(Backend(), images, stored=stored)
    assert result.raw["recall_50"] == 1.0 and result.overall["recall_50"] == 0.5
    assert evaluate_backend(Backend(), images).raw == {}
    # the platform's own storage step: polygons rasterised back keep these square cells whole
    kept = instances_as_stored(Backend().predict(images[0].image).instances, 10, 10, min_area=4)
    assert sorted(int(i.mask.sum()) for i in kept) == [16, 16]
    assert instances_as_stored(Backend().predict(images[0].image).instances, 10, 10, min_area=20) == []
