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

The package's modules: ``instances`` (the accepted forms), ``pixel``, ``matching`` (matching,
precision/recall/F1, best-match precision, AP, DSB), ``boundary``, ``coco``, ``erythrocytes``,
``summary`` (all of one image, aggregated over images). Everything public is importable from
``cytoseg.metrics`` itself.
"""

from cytoseg.metrics.boundary import boundary_average_precision, boundary_iou, boundary_iou_matrix
from cytoseg.metrics.coco import coco_mask_ap
from cytoseg.metrics.erythrocytes import ErythrocyteFalsePositives, erythrocyte_false_positives
from cytoseg.metrics.instances import CELL_LABEL, ERYTHROCYTE_LABEL, CroppedMask, InstancesLike
from cytoseg.metrics.matching import (
    DSB_THRESHOLDS,
    InstanceCounts,
    average_precision,
    best_match_precision,
    dsb_score,
    instance_prf,
    iou_matrix,
    match_one_to_one,
)
from cytoseg.metrics.pixel import pixel_dice, pixel_iou
from cytoseg.metrics.summary import aggregate, evaluate_image

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
