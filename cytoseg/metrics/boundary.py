"""Boundary IoU (the IoU of the parts of two masks within d pixels of their contours) and the
average precision over it (paper C)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cytoseg.metrics.instances import Instances, InstancesLike, as_instances, iou_from_sets, ratio, with_shape
from cytoseg.metrics.matching import ap_from_iou, scores_for

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


def boundaries(inst: Instances, dilation: int) -> Instances:
    crops = tuple(_boundary_crop(c, dilation) for c in inst.crops)
    areas = np.array([np.count_nonzero(c) for c in crops], dtype=np.int64)
    return Instances(crops=crops, boxes=inst.boxes, areas=areas, shape=inst.shape, label_map=None)


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
    return ratio(inter, union, not a.any() and not b.any())


def boundary_iou_matrix(pred: InstancesLike, gt: InstancesLike, dilation: int = 2) -> np.ndarray:
    """(N_pred, N_gt) Boundary IoU of every predicted with every ground-truth instance."""
    if dilation < 1:
        raise ValueError("dilation must be at least 1")
    a, b = with_shape(as_instances(pred), as_instances(gt))
    return iou_from_sets(boundaries(a, dilation), boundaries(b, dilation))


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
    a, b = with_shape(as_instances(pred), as_instances(gt))
    biou = iou_from_sets(boundaries(a, dilation), boundaries(b, dilation))
    if with_mask_iou:
        biou = np.minimum(biou, iou_from_sets(a, b))
    return ap_from_iou(biou, scores_for(len(a), scores), threshold)
