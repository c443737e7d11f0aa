"""Segmentation metrics shared by benchmarks, training and the API (Django-free).

Instances can be given in three forms, all accepted wherever ``InstancesLike`` appears:

* an instance label map, (H, W) integer array, 0 = background (ids need not be
  consecutive; instances are ordered by increasing id; a 2-D bool array is one instance);
* a sequence of (H, W) boolean masks, or an (N, H, W) boolean array (masks may overlap,
  as the predictions of detection models do);
* a sequence of objects with ``x0``, ``y0`` and a boolean crop ``mask`` (the backends'
  ``Instance`` and the synthetic generator's ``SyntheticCell``), so that a field with
  hundreds of cells never needs hundreds of full-size masks.

Instance-to-instance overlaps are counted on mask crops whose bounding boxes meet, or by
pair counting over two label maps, so nothing of size N x M x H x W is ever built.

Conventions: a ratio whose denominator is zero is 1.0 when there was nothing to find and
nothing was predicted, and 0.0 otherwise. Methods follow the papers: A (pixel Dice/IoU,
best-match precision at IoU >= 0.7), C (AP over mask IoU and over Boundary IoU),
D (DSB score), E (COCO mask AP).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias, cast

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

__all__ = [
    "CELL_LABEL",
    "DSB_THRESHOLDS",
    "ERYTHROCYTE_LABEL",
    "CroppedMask",
    "ErythrocyteFalsePositives",
    "InstanceCounts",
    "InstancesLike",
    "aggregate",
    "average_precision",
    "best_match_precision",
    "boundary_average_precision",
    "boundary_iou",
    "boundary_iou_matrix",
    "coco_mask_ap",
    "dsb_score",
    "erythrocyte_false_positives",
    "evaluate_image",
    "instance_prf",
    "iou_matrix",
    "match_one_to_one",
    "pixel_dice",
    "pixel_iou",
]

CELL_LABEL = 1
ERYTHROCYTE_LABEL = 2
DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))

# Keys of ``evaluate_image`` results that ``aggregate`` sums instead of averaging.
COUNT_KEYS = frozenset({"n_pred", "n_gt", "tp", "fp", "fn", "erythrocyte_fp"})


class CroppedMask(Protocol):
    """A boolean crop placed at column ``x0``, row ``y0`` of its image."""

    @property
    def x0(self) -> int: ...

    @property
    def y0(self) -> int: ...

    @property
    def mask(self) -> np.ndarray: ...


InstancesLike: TypeAlias = np.ndarray | Sequence[np.ndarray] | Sequence[CroppedMask]


class InstanceCounts(NamedTuple):
    """Detection quality at one IoU threshold with one-to-one matching."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


class ErythrocyteFalsePositives(NamedTuple):
    """Predicted cells that are really erythrocytes (paper A's main false positive)."""

    false_positives: int
    n_predicted_cells: int
    rate: float  # false_positives / n_predicted_cells, 0.0 without predicted cells
    indices: tuple[int, ...]  # indices into the prediction's instances


# --------------------------------------------------------------------------------------
# Internal instance representation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instances:
    """Instances as tight boolean crops; ``label_map`` is kept when the input had one."""

    crops: tuple[np.ndarray, ...]
    boxes: np.ndarray  # (N, 4) int64: y0, x0, y1, x1 (exclusive)
    areas: np.ndarray  # (N,) int64
    shape: tuple[int, int] | None
    label_map: np.ndarray | None  # (H, W) int32 with consecutive ids 1..N

    def __len__(self) -> int:
        return len(self.crops)

    def subset(self, index: np.ndarray) -> _Instances:
        """The instances at ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        label_map = None
        if self.label_map is not None:
            lut = np.zeros(len(self) + 1, dtype=np.int32)
            lut[index + 1] = np.arange(1, index.size + 1, dtype=np.int32)
            label_map = lut[self.label_map]
        return _Instances(
            crops=tuple(self.crops[i] for i in index.tolist()),
            boxes=self.boxes[index].reshape(-1, 4),
            areas=self.areas[index],
            shape=self.shape,
            label_map=label_map,
        )

    def extent(self) -> tuple[int, int]:
        """The image shape, or the smallest one that holds every crop."""
        if self.shape is not None:
            return self.shape
        if len(self) == 0:
            return (0, 0)
        return (int(self.boxes[:, 2].max()), int(self.boxes[:, 3].max()))

    def paint(self, shape: tuple[int, int]) -> np.ndarray:
        """Union of all masks on an image of ``shape``."""
        out = np.zeros(shape, dtype=bool)
        for crop, (y0, x0, y1, x1) in zip(self.crops, self.boxes.tolist(), strict=True):
            out[y0:y1, x0:x1] |= crop
        return out


def _empty(shape: tuple[int, int] | None) -> _Instances:
    return _Instances(
        crops=(),
        boxes=np.zeros((0, 4), dtype=np.int64),
        areas=np.zeros(0, dtype=np.int64),
        shape=shape,
        label_map=None,
    )


def _tight(
    mask: np.ndarray, y0: int, x0: int, shape: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop ``mask`` (placed at y0, x0) to its pixels, clipped to the image."""
    h, w = mask.shape
    # Clip to the image (or to non-negative coordinates when its size is unknown).
    cy0, cx0 = max(0, -y0), max(0, -x0)
    cy1, cx1 = h, w
    if shape is not None:
        cy1 = min(h, shape[0] - y0)
        cx1 = min(w, shape[1] - x0)
    if cy1 <= cy0 or cx1 <= cx0:
        return np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)
    mask = mask[cy0:cy1, cx0:cx1]
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ty0 = y0 + cy0 + int(rows[0])
    tx0 = x0 + cx0 + int(cols[0])
    return crop, (ty0, tx0, ty0 + crop.shape[0], tx0 + crop.shape[1])


def _from_label_map(label_map: np.ndarray) -> _Instances:
    lm = np.asarray(label_map)
    if lm.dtype == np.bool_:
        lm = lm.astype(np.int32)
    if not np.issubdtype(lm.dtype, np.integer):
        raise TypeError(f"a label map must hold integers, not {lm.dtype}")
    shape = (int(lm.shape[0]), int(lm.shape[1]))
    if lm.size == 0 or not lm.any():
        return _empty(shape)
    if lm.min() < 0:
        raise ValueError("label maps must not hold negative ids")
    top = int(lm.max())
    # Relabel to 1..N: bincount when ids are compact, a sort otherwise.
    if top <= 4 * lm.size:
        flat = lm.ravel().astype(np.intp, copy=False)  # bincount refuses uint64
        present = np.flatnonzero(np.bincount(flat, minlength=top + 1)[1:]) + 1
        lut = np.zeros(top + 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        consecutive = lut[lm]
        n = int(present.size)
    else:
        ids, inverse = np.unique(lm, return_inverse=True)
        consecutive = inverse.reshape(lm.shape).astype(np.int32)
        if ids[0] != 0:
            consecutive += 1
        n = int(consecutive.max())
    areas = np.bincount(consecutive.ravel(), minlength=n + 1)[1:].astype(np.int64)
    crops: list[np.ndarray] = []
    boxes = np.zeros((n, 4), dtype=np.int64)
    for k, sl in enumerate(ndi.find_objects(consecutive, max_label=n)):
        assert sl is not None  # every id in 1..n occurs
        crops.append(consecutive[sl] == k + 1)
        boxes[k] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return _Instances(
        crops=tuple(crops), boxes=boxes, areas=areas, shape=shape, label_map=consecutive
    )


def _from_pieces(
    pieces: Sequence[tuple[np.ndarray, int, int]], shape: tuple[int, int] | None
) -> _Instances:
    crops: list[np.ndarray] = []
    boxes = np.zeros((len(pieces), 4), dtype=np.int64)
    for k, (mask, y0, x0) in enumerate(pieces):
        crop, box = _tight(np.asarray(mask, dtype=bool), y0, x0, shape)
        crops.append(crop)
        boxes[k] = box
    areas = np.array([np.count_nonzero(c) for c in crops], dtype=np.int64)
    return _Instances(crops=tuple(crops), boxes=boxes, areas=areas, shape=shape, label_map=None)


def _as_instances(value: InstancesLike | _Instances) -> _Instances:
    """Normalise any accepted instance form."""
    if isinstance(value, _Instances):
        return value
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            return _from_label_map(value)
        if value.ndim == 3:
            shape = (int(value.shape[1]), int(value.shape[2]))
            return _from_pieces([(m, 0, 0) for m in value], shape)
        raise ValueError(f"expected a (H, W) label map or (N, H, W) masks, got {value.shape}")
    items: list[object] = list(value)
    if not items:
        return _empty(None)
    arrays = [item for item in items if isinstance(item, np.ndarray)]
    if len(arrays) == len(items):
        if len({m.shape for m in arrays}) != 1 or arrays[0].ndim != 2:
            raise ValueError("full-size masks must all be 2-D and of one shape")
        shape = (int(arrays[0].shape[0]), int(arrays[0].shape[1]))
        return _from_pieces([(m, 0, 0) for m in arrays], shape)
    if arrays:
        raise TypeError("do not mix full-size masks and cropped instances")
    pieces = [(np.asarray(c.mask), int(c.y0), int(c.x0)) for c in cast(list[CroppedMask], items)]
    return _from_pieces(pieces, None)


def _with_shape(a: _Instances, b: _Instances) -> tuple[_Instances, _Instances]:
    """Check that two sets describe the same image; share a known shape."""
    if a.shape is not None and b.shape is not None and a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _intersections(a: _Instances, b: _Instances) -> np.ndarray:
    """(len(a), len(b)) int64 pixel counts of pairwise mask intersections."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.int64)
    if a.label_map is not None and b.label_map is not None and (n + 1) * (m + 1) <= 1 << 24:
        pair = a.label_map.astype(np.int64) * (m + 1) + b.label_map
        counts = np.bincount(pair.ravel(), minlength=(n + 1) * (m + 1))
        return counts.reshape(n + 1, m + 1)[1:, 1:].astype(np.int64)
    ab, bb = a.boxes, b.boxes
    # Only pairs whose boxes meet can intersect; compare crops on the shared window.
    meet = (
        (ab[:, None, 0] < bb[None, :, 2])
        & (bb[None, :, 0] < ab[:, None, 2])
        & (ab[:, None, 1] < bb[None, :, 3])
        & (bb[None, :, 1] < ab[:, None, 3])
    )
    out = np.zeros((n, m), dtype=np.int64)
    for i, j in zip(*np.nonzero(meet), strict=True):
        ay0, ax0 = int(ab[i, 0]), int(ab[i, 1])
        by0, bx0 = int(bb[j, 0]), int(bb[j, 1])
        y0, x0 = max(ay0, by0), max(ax0, bx0)
        y1, x1 = min(int(ab[i, 2]), int(bb[j, 2])), min(int(ab[i, 3]), int(bb[j, 3]))
        wa = a.crops[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
        wb = b.crops[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        out[i, j] = np.count_nonzero(wa & wb)
    return out


def _iou_from_sets(a: _Instances, b: _Instances) -> np.ndarray:
    inter = _intersections(a, b).astype(np.float64)
    union = a.areas[:, None] + b.areas[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou


def _ratio(num: float, den: float, nothing_to_do: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if nothing_to_do else 0.0


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------


def _pixel_counts(pred_fg: np.ndarray, gt_fg: np.ndarray) -> tuple[int, int, int]:
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
    tp, fp, fn = _pixel_counts(pred_fg, gt_fg)
    return _ratio(2 * tp, 2 * tp + fp + fn, True)


def pixel_iou(pred_fg: np.ndarray, gt_fg: np.ndarray) -> float:
    """Pixel IoU (Jaccard) TP / (TP + FP + FN) of two foreground masks. Both empty: 1.0."""
    tp, fp, fn = _pixel_counts(pred_fg, gt_fg)
    return _ratio(tp, tp + fp + fn, True)


# --------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------


def iou_matrix(pred: InstancesLike, gt: InstancesLike) -> np.ndarray:
    """(N_pred, N_gt) float64 mask IoU of every predicted with every ground-truth instance.

    Two label maps are compared by counting label pairs in one ``bincount``; other forms
    compare only the crops whose bounding boxes meet.
    """
    a, b = _with_shape(_as_instances(pred), _as_instances(gt))
    return _iou_from_sets(a, b)


def match_one_to_one(
    iou: np.ndarray, threshold: float, *, strict: bool = False
) -> tuple[np.ndarray, np.ndarray]:
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


def _counts_from_iou(iou: np.ndarray, threshold: float, strict: bool) -> InstanceCounts:
    n_pred, n_gt = iou.shape
    tp = int(match_one_to_one(iou, threshold, strict=strict)[0].size)
    fp, fn = n_pred - tp, n_gt - tp
    nothing = n_pred == 0 and n_gt == 0
    return InstanceCounts(
        precision=_ratio(tp, tp + fp, nothing),
        recall=_ratio(tp, tp + fn, nothing),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, nothing),
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
    return _counts_from_iou(iou_matrix(pred, gt), threshold, strict)


def _best_match_from_iou(iou: np.ndarray, threshold: float) -> float:
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
    return _best_match_from_iou(iou_matrix(pred, gt), threshold)


# --------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------


def _ap_from_iou(iou: np.ndarray, scores: np.ndarray, threshold: float) -> float:
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


def _scores_for(n_pred: int, scores: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if scores is None:
        return np.ones(n_pred, dtype=np.float64)
    out = np.asarray(scores, dtype=np.float64).reshape(-1)
    if out.size != n_pred:
        raise ValueError(f"expected {n_pred} scores, got {out.size}")
    return out


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
    return _ap_from_iou(iou, _scores_for(iou.shape[0], scores), threshold)


# --------------------------------------------------------------------------------------
# Boundary IoU (paper C, after Cheng et al. 2021)
# --------------------------------------------------------------------------------------

_KERNEL = np.ones((3, 3), dtype=np.uint8)


def _boundary_crop(crop: np.ndarray, dilation: int) -> np.ndarray:
    """Mask pixels within ``dilation`` px of the contour (outside counts as background)."""
    if crop.size == 0:
        return crop
    # One ring of zeros so that mask pixels on the crop (or image) edge are boundary,
    # as in the reference implementation, which pads the whole image the same way.
    padded = np.pad(crop.astype(np.uint8), 1)
    eroded = cv2.erode(padded, _KERNEL, iterations=dilation)[1:-1, 1:-1]
    return crop & (eroded == 0)


def _boundaries(inst: _Instances, dilation: int) -> _Instances:
    crops = tuple(_boundary_crop(c, dilation) for c in inst.crops)
    areas = np.array([np.count_nonzero(c) for c in crops], dtype=np.int64)
    return _Instances(crops=crops, boxes=inst.boxes, areas=areas, shape=inst.shape, label_map=None)


def boundary_iou(mask_a: np.ndarray, mask_b: np.ndarray, dilation: int = 2) -> float:
    """Boundary IoU of two same-shaped masks: IoU of their inner bands of ``dilation`` px.

    Each mask's band is the mask minus its erosion by a 3x3 square ``dilation`` times,
    with the image border counting as contour (Cheng et al., "Boundary IoU", 2021).
    Both masks empty gives 1.0.
    """
    a = np.asarray(mask_a).astype(bool, copy=False)
    b = np.asarray(mask_b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if dilation < 1:
        raise ValueError("dilation must be at least 1")
    ba, bb = _boundary_crop(a, dilation), _boundary_crop(b, dilation)
    inter = int(np.count_nonzero(ba & bb))
    union = int(np.count_nonzero(ba | bb))
    return _ratio(inter, union, not a.any() and not b.any())


def boundary_iou_matrix(pred: InstancesLike, gt: InstancesLike, dilation: int = 2) -> np.ndarray:
    """(N_pred, N_gt) Boundary IoU of every predicted with every ground-truth instance."""
    if dilation < 1:
        raise ValueError("dilation must be at least 1")
    a, b = _with_shape(_as_instances(pred), _as_instances(gt))
    return _iou_from_sets(_boundaries(a, dilation), _boundaries(b, dilation))


def boundary_average_precision(
    pred: InstancesLike,
    gt: InstancesLike,
    scores: Sequence[float] | np.ndarray | None,
    threshold: float = 0.5,
    *,
    dilation: int = 2,
    with_mask_iou: bool = True,
) -> float:
    """AP over Boundary IoU for one image (paper C's AP^boundary), otherwise as
    :func:`average_precision`.

    With ``with_mask_iou`` (the default, as in the Boundary IoU API's Boundary AP) the
    matching score is ``min(mask IoU, boundary IoU)``, so that a prediction cannot score
    by its outline alone; ``False`` uses Boundary IoU by itself.
    """
    a, b = _with_shape(_as_instances(pred), _as_instances(gt))
    biou = _iou_from_sets(_boundaries(a, dilation), _boundaries(b, dilation))
    if with_mask_iou:
        biou = np.minimum(biou, _iou_from_sets(a, b))
    return _ap_from_iou(biou, _scores_for(len(a), scores), threshold)


# --------------------------------------------------------------------------------------
# DSB score (paper D)
# --------------------------------------------------------------------------------------


def _dsb_from_iou(iou: np.ndarray) -> float:
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
    return _dsb_from_iou(iou_matrix(pred, gt))


# --------------------------------------------------------------------------------------
# COCO mask AP (paper E)
# --------------------------------------------------------------------------------------

_COCO_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


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
        p, g = _with_shape(_as_instances(pred), _as_instances(gt))
        ph, pw = p.extent()
        gh, gw = g.extent()
        height, width = g.shape or p.shape or (max(ph, gh, 1), max(pw, gw, 1))
        image_id = k + 1
        images.append({"id": image_id, "height": height, "width": width})
        scores = _scores_for(len(p), None if scores_per_image is None else scores_per_image[k])
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


_COCO_AREAS = ((0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))


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


def _encode(
    inst: _Instances, height: int, width: int
) -> list[tuple[dict[str, object], float, list[float], int]]:
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


# --------------------------------------------------------------------------------------
# Erythrocytes taken for cells (paper A)
# --------------------------------------------------------------------------------------


def _erythrocyte_fp_from_sets(
    pred: _Instances,
    gt: _Instances,
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


def _labels_for(n: int, labels: Sequence[int] | np.ndarray | None, default: int) -> np.ndarray:
    if labels is None:
        return np.full(n, default, dtype=np.int64)
    out = np.asarray(labels, dtype=np.int64).reshape(-1)
    if out.size != n:
        raise ValueError(f"expected {n} labels, got {out.size}")
    return out


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
    a, b = _with_shape(_as_instances(pred), _as_instances(gt))
    return _erythrocyte_fp_from_sets(
        a,
        b,
        _iou_from_sets(a, b),
        _labels_for(len(a), pred_labels, CELL_LABEL),
        _labels_for(len(b), gt_labels, CELL_LABEL),
        match_threshold,
        cover_fraction,
    )


# --------------------------------------------------------------------------------------
# Everything for one image, and the mean over images
# --------------------------------------------------------------------------------------


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
    matched pairs (NaN without any); ``ap{t}`` and ``boundary_ap{t}`` for every
    ``ap_thresholds`` entry, in percent (``ap50``, ``ap70``); ``dsb``; and
    ``erythrocyte_fp`` and ``erythrocyte_fp_rate`` (NaN unless ``gt_labels`` is given).
    ``shape`` is the image shape, needed only when both sides are cropped instances.
    """
    a, b = _with_shape(_as_instances(pred), _as_instances(gt))
    p_labels = _labels_for(len(a), pred_labels, CELL_LABEL)
    g_labels = _labels_for(len(b), gt_labels, CELL_LABEL)
    scores = _scores_for(len(a), pred_scores)
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
    tp_px, fp_px, fn_px = _pixel_counts(pred_cells.paint(shape), gt_cells.paint(shape))
    out["dice"] = _ratio(2 * tp_px, 2 * tp_px + fp_px + fn_px, True)
    out["iou"] = _ratio(tp_px, tp_px + fp_px + fn_px, True)

    iou = _iou_from_sets(pred_cells, gt_cells)
    counts = _counts_from_iou(iou, iou_threshold, strict=False)
    out.update(
        precision=counts.precision,
        recall=counts.recall,
        f1=counts.f1,
        tp=float(counts.tp),
        fp=float(counts.fp),
        fn=float(counts.fn),
    )
    out["best_match_precision"] = _best_match_from_iou(iou, best_match_threshold)

    biou = _iou_from_sets(
        _boundaries(pred_cells, boundary_dilation), _boundaries(gt_cells, boundary_dilation)
    )
    pi, gi = match_one_to_one(iou, iou_threshold)
    out["mean_matched_iou"] = float(np.mean(iou[pi, gi])) if pi.size else math.nan
    out["mean_boundary_iou"] = float(np.mean(biou[pi, gi])) if pi.size else math.nan
    combined = np.minimum(biou, iou)
    for t in ap_thresholds:
        out[f"ap{_percent(t)}"] = _ap_from_iou(iou, cell_scores, t)
        out[f"boundary_ap{_percent(t)}"] = _ap_from_iou(combined, cell_scores, t)
    out["dsb"] = _dsb_from_iou(iou)

    if gt_labels is None:
        out["erythrocyte_fp"] = math.nan
        out["erythrocyte_fp_rate"] = math.nan
    else:
        ery = _erythrocyte_fp_from_sets(a, b, _iou_from_sets(a, b), p_labels, g_labels, 0.5, 0.5)
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
        out["micro_precision"] = _ratio(tp, tp + fp, nothing)
        out["micro_recall"] = _ratio(tp, tp + fn, nothing)
        out["micro_f1"] = _ratio(2 * tp, 2 * tp + fp + fn, nothing)
    return out


def aggregate(
    results: Sequence[Mapping[str, float]], groups: Sequence[Hashable] | None = None
) -> dict[str, dict[str, float]]:
    """Combine :func:`evaluate_image` results over images, overall and per group.

    Returns ``{"all": summary, str(group): summary, ...}``, groups in first-seen order
    (e.g. Bethesda categories, one per image). In a summary, counts (``n_pred``,
    ``n_gt``, ``tp``, ``fp``, ``fn``, ``erythrocyte_fp``) are summed, every other metric is
    the mean over images ignoring NaN, and ``micro_precision``, ``micro_recall``,
    ``micro_f1`` are recomputed from the summed counts; ``n_images`` is the image count.
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
