"""Evaluation metrics against hand-computed cases, and the promotion gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cytoseg.augment import PlacedCell
from cytoseg.evaluation import (
    DEFAULT_GUARDED,
    EvalCase,
    EvalImage,
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
    assert m["ap50"] == pytest.approx(1.0)
    assert m["ap70"] == pytest.approx(0.5)
    assert m["boundary_ap50"] <= m["ap50"] + 1e-9
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
