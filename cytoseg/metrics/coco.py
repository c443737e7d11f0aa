"""COCO mask AP, AP50, AP75 and AP by size (paper E), through pycocotools' own evaluation."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cytoseg.metrics.instances import CELL_LABEL, Instances, InstancesLike, as_instances, with_shape
from cytoseg.metrics.matching import scores_for

_COCO_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
_COCO_AREAS = ((0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))


def coco_mask_ap(
    pred_instances_per_image: Sequence[InstancesLike],
    gt_instances_per_image: Sequence[InstancesLike],
    *,
    scores_per_image: Sequence[Sequence[float] | np.ndarray | None] | None = None,
    max_dets: int = 1000,
    fast: bool = True,
) -> dict[str, float]:
    """Standard COCO mask metrics through ``pycocotools`` COCOeval (``iouType="segm"``).

    Returns AP (IoU 0.50:0.95), AP50, AP75, and AP for small (< 32^2 px), medium and
    large ground truth, over all images, with one category. Scores default to 1.0.
    ``max_dets`` replaces COCO's 100 detections per image, which a field of 270 cells
    would exceed; the summary is read from the accumulated precision array, because
    ``COCOeval.summarize`` hard-codes 100 for the headline AP. A value is NaN where
    COCO gives -1 (no ground truth in that size range).

    ``fast`` swaps COCOeval's per-image matching loop (pure Python over thresholds x
    detections x ground truth, about a second per 270-cell image) for a vectorised
    equivalent that gives identical matches; ``fast=False`` runs the original.
    """
    if len(pred_instances_per_image) != len(gt_instances_per_image):
        raise ValueError("need one prediction and one ground truth per image")
    if scores_per_image is not None and len(scores_per_image) != len(gt_instances_per_image):
        raise ValueError("need one score sequence per image")

    images: list[dict[str, int]] = []
    gt_anns: list[dict[str, object]] = []
    dt_anns: list[dict[str, object]] = []
    gt_areas: list[float] = []
    pairs = zip(pred_instances_per_image, gt_instances_per_image, strict=True)
    for k, (pred, gt) in enumerate(pairs):
        p, g = with_shape(as_instances(pred), as_instances(gt))
        ph, pw = p.extent()
        gh, gw = g.extent()
        height, width = g.shape or p.shape or (max(ph, gh, 1), max(pw, gw, 1))
        image_id = k + 1
        images.append({"id": image_id, "height": height, "width": width})
        scores = scores_for(len(p), None if scores_per_image is None else scores_per_image[k])
        for inst, sink, inst_scores in ((g, gt_anns, None), (p, dt_anns, scores)):
            for rle, area, bbox, i in _encode(inst, height, width):
                ann: dict[str, object] = {
                    "image_id": image_id,
                    "category_id": CELL_LABEL,
                    "segmentation": rle,
                }
                if inst_scores is None:
                    # Ids start at 1: COCOeval treats id 0 as "unmatched".
                    ann.update(id=len(sink) + 1, area=area, bbox=bbox, iscrowd=0)
                    gt_areas.append(area)
                else:
                    ann["score"] = float(inst_scores[i])
                sink.append(ann)

    result = {key: math.nan for key in _COCO_KEYS}
    if not gt_anns:
        return result
    if not dt_anns:
        # pycocotools cannot load an empty result list; every AP with ground truth is 0.
        areas = np.array(gt_areas)
        result.update(AP=0.0, AP50=0.0, AP75=0.0)
        for key, (lo, hi) in zip(("AP_S", "AP_M", "AP_L"), _COCO_AREAS, strict=True):
            if np.any((areas >= lo) & (areas <= hi)):
                result[key] = 0.0
        return result

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": gt_anns,
            "categories": [{"id": CELL_LABEL, "name": "cell"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = (_FastCOCOeval if fast else COCOeval)(coco_gt, coco_dt, iouType="segm")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()

    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    iou_thrs = evaluator.params.iouThrs

    def summary(area_index: int, iou_thr: float | None = None) -> float:
        p = precision[:, :, :, area_index, -1]
        if iou_thr is not None:
            p = p[np.flatnonzero(np.isclose(iou_thrs, iou_thr))]
        p = p[p > -1]
        return float(np.mean(p)) if p.size else math.nan

    result.update(
        AP=summary(0),
        AP50=summary(0, 0.5),
        AP75=summary(0, 0.75),
        AP_S=summary(1),
        AP_M=summary(2),
        AP_L=summary(3),
    )
    return result


class _FastCOCOeval(COCOeval):  # type: ignore[misc]  # pycocotools ships no types
    """COCOeval whose ``evaluateImg`` vectorises the greedy matching over ground truth.

    The original walks the ground truth (sorted: regular first, ignored last) for every
    threshold and detection, keeping the last one with the highest IoU >= t among those
    not yet taken (crowd ones may be taken again), and stops at the ignored ones once a
    regular one matched. The same choice is made here with array operations.
    """

    def evaluateImg(  # the pycocotools name, overridden
        self, imgId: int, catId: int, aRng: Sequence[float], maxDet: int
    ) -> dict[str, object] | None:
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 and len(dt) == 0:
            return None
        for g in gt:
            g["_ignore"] = int(bool(g["ignore"]) or g["area"] < aRng[0] or g["area"] > aRng[1])
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dtind = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dtind[0:maxDet]]
        crowd = np.array([bool(o["iscrowd"]) for o in gt], dtype=bool)
        ious = self.ious[imgId, catId]
        ious = ious[:, gtind] if len(ious) > 0 else ious
        n_t, n_g, n_d = len(p.iouThrs), len(gt), len(dt)
        gtm = np.zeros((n_t, n_g))
        dtm = np.zeros((n_t, n_d))
        gt_ig = np.array([g["_ignore"] for g in gt])
        dt_ig = np.zeros((n_t, n_d))
        gt_ids = np.array([g["id"] for g in gt])
        regular = gt_ig == 0
        if len(ious) != 0:
            for tind, t in enumerate(p.iouThrs):
                floor = min(t, 1 - 1e-10)
                for dind, d in enumerate(dt):
                    row = ious[dind]
                    ok = ((gtm[tind] == 0) | crowd) & (row >= floor)
                    cand = np.flatnonzero(ok & regular)
                    if cand.size == 0:
                        cand = np.flatnonzero(ok & ~regular)
                        if cand.size == 0:
                            continue
                    vals = row[cand]
                    m = int(cand[cand.size - 1 - int(np.argmax(vals[::-1]))])
                    dt_ig[tind, dind] = gt_ig[m]
                    dtm[tind, dind] = gt_ids[m]
                    gtm[tind, m] = d["id"]
        outside = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt])
        dt_ig = np.logical_or(dt_ig, np.logical_and(dtm == 0, np.repeat(outside[None], n_t, 0)))
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dt],
            "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": [d["score"] for d in dt],
            "gtIgnore": gt_ig,
            "dtIgnore": dt_ig,
        }


def _encode(inst: Instances, height: int, width: int) -> list[tuple[dict[str, object], float, list[float], int]]:
    """RLE, area, bbox and index of every instance (one reused Fortran buffer)."""
    out: list[tuple[dict[str, object], float, list[float], int]] = []
    buffer = np.zeros((height, width), dtype=np.uint8, order="F")
    for i, (crop, (y0, x0, y1, x1)) in enumerate(zip(inst.crops, inst.boxes.tolist(), strict=True)):
        buffer[y0:y1, x0:x1] = crop
        rle = mask_utils.encode(buffer)
        buffer[y0:y1, x0:x1] = 0
        area = float(np.count_nonzero(crop))
        out.append((rle, area, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], i))
    return out
