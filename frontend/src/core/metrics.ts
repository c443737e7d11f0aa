/**
 * Plain-language explanations of the evaluation metrics the registry, the
 * schedule's promotion gate and the gate's verdict show by abbreviation
 * (issue #17: "what is bAP50?"). One place, so a hover title, the legend
 * under a table and the tests read the same words. The definitions follow
 * cytoseg/metrics (cell-level matching by IoU, scored on the polygons as
 * pre-segmentation stores them).
 */
import { METRIC_LABELS } from './training';

/** The metrics the registry shows until "All metrics" is ticked. */
export const REGISTRY_KEY_METRICS = ['dice', 'iou', 'f1_50', 'f1_70', 'ranked_ap50', 'dsb', 'coco_AP', 'erythrocyte_fp_rate'];

const HIGHER = 'Higher is better.';

export const METRIC_HELP: Record<string, string> = {
  dice: `Pixel overlap of all predicted cells with all expert-drawn cells: 2 × shared area ÷ (predicted + drawn area), 0 to 1. ${HIGHER}`,
  iou: `Intersection over union of the cell pixels: shared area ÷ combined area, 0 to 1 (stricter than Dice). ${HIGHER}`,
  precision_50: `Share of predicted cells that match an expert cell with IoU ≥ 0.5 (each expert cell matched once). ${HIGHER}`,
  recall_50: `Share of expert cells found by a prediction with IoU ≥ 0.5. ${HIGHER}`,
  f1_50: `Balance of precision and recall when a cell counts as found at IoU ≥ 0.5. ${HIGHER}`,
  accuracy_50: `Matched cells ÷ (matched + extra + missed cells) at IoU ≥ 0.5. ${HIGHER}`,
  precision_70: `Share of predicted cells that match an expert cell with IoU ≥ 0.7 (a tighter outline). ${HIGHER}`,
  recall_70: `Share of expert cells found by a prediction with IoU ≥ 0.7. ${HIGHER}`,
  f1_70: `Balance of precision and recall when a cell counts as found only at IoU ≥ 0.7 (outlines must be close). ${HIGHER}`,
  accuracy_70: `Matched cells ÷ (matched + extra + missed cells) at IoU ≥ 0.7. ${HIGHER}`,
  best_match_precision_70: `Best-match precision: share of predicted cells whose best-overlapping expert cell has IoU ≥ 0.7 (not one-to-one; the published cytology benchmark's precision). ${HIGHER}`,
  ranked_ap50: `Average precision at IoU 0.5: predictions taken from most to least confident, precision averaged over recall. Rewards confident correct cells first. ${HIGHER}`,
  ranked_ap70: `Average precision with cells matched at IoU ≥ 0.7. ${HIGHER}`,
  boundary_ranked_ap50: `Boundary AP at 0.5: like AP50, but a cell matches only if its outline (a thin band along the contour) also overlaps the expert's — penalises sloppy borders. ${HIGHER}`,
  boundary_ranked_ap70: `Boundary AP at 0.7: outline and area must both overlap by 0.7. ${HIGHER}`,
  mean_boundary_iou: `Mean boundary IoU of matched cells: how closely the outlines follow the expert's contours. ${HIGHER}`,
  dsb: `Data Science Bowl 2018 score: matched ÷ (matched + extra + missed cells), averaged over IoU thresholds 0.50 to 0.95. ${HIGHER}`,
  coco_AP: `COCO mask AP: average precision averaged over IoU thresholds 0.50 to 0.95 (the standard COCO instance-segmentation score). ${HIGHER}`,
  coco_AP50: `COCO mask AP at IoU 0.5 only. ${HIGHER}`,
  coco_AP75: `COCO mask AP at IoU 0.75 only (precise outlines). ${HIGHER}`,
  coco_AP_S: `COCO AP on small cells (area under 32² pixels). ${HIGHER}`,
  coco_AP_M: `COCO AP on medium cells (32² to 96² pixels). ${HIGHER}`,
  coco_AP_L: `COCO AP on large cells (over 96² pixels). ${HIGHER}`,
  erythrocyte_fp: 'Erythrocyte false positives: red blood cells the model outlined as thyroid cells, counted over the test images. Lower is better.',
  erythrocyte_fp_rate: 'Share of the predicted thyroid cells that are really red blood cells (erythrocytes). Lower is better.',
};

/** The short name shown in a table head. */
export function metricLabel(key: string): string {
  return METRIC_LABELS[key] ?? key.replace(/_/g, ' ');
}

/** The explanation of a metric, or a neutral sentence for one this build does not know (a newer server). */
export function metricHelp(key: string): string {
  return METRIC_HELP[key] ?? `${metricLabel(key)}: an evaluation metric on the test split.`;
}

/** A stable element id for a metric's legend entry (aria-describedby targets it). */
export function metricHelpId(key: string, scope = 'metric'): string {
  return `${scope}-help-${key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}
