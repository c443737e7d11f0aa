/**
 * Click-to-segment and box prompts, the framework-free part (unit tested): what the tools
 * get from the server (`POST images/{id}/segment/click` and `.../segment/box`, in the
 * client's shapes), which class a result gets, and which cells of a box are new.
 */
import polygonClipping from 'polygon-clipping';
import type { ClassPalette } from './classes';
import { area, bbox, bboxIntersects, isValidRing, makeValid, normalizeRing, type BBox } from './geometry';
import type { Point, Ring, SegmentBoxBody, SegmentBoxResult, SegmentClickBody, SegmentClickResult } from './types';

/** One cell the server outlined. */
export interface SegmentedCell {
  polygon: Ring;
  classId: number | null;
  /** The model's class label (1 thyroid cell, 2 erythrocyte), when it classifies. */
  label: number | null;
}

/** The answer to a click prompt: a contour, or null with the server's reason. */
export interface ClickOutcome {
  polygon: Ring | null;
  classId: number | null;
  label: number | null;
  /** 'model' (the project's model) or 'baseline' (classical, no model yet). */
  source: string;
  modelVersion: number | null;
  reason: string | null;
}

export interface BoxOutcome {
  cells: SegmentedCell[];
  source: string;
  modelVersion: number | null;
}

/** The server side of the two tools (the editor binds it to its image; tests fake it). */
export interface Segmenter {
  /** All points of the current prompt: positive = in the cell, negative = outside it. */
  click(positive: Point[], negative: Point[]): Promise<ClickOutcome>;
  /** A box [x0, y0, x1, y1] in image pixels. */
  box(box: BBox): Promise<BoxOutcome>;
}

/** The adapter calls the tools need (`ApiClient.segmentClick` / `segmentBox`). */
export interface SegmentApi {
  segmentClick(imageId: number, body: SegmentClickBody): Promise<SegmentClickResult>;
  segmentBox(imageId: number, body: SegmentBoxBody): Promise<SegmentBoxResult>;
}

/** Most points of each kind one prompt may send (the server refuses more). */
export const MAX_PROMPT_POINTS = 20;

const pt2 = (p: Point): Point => [Math.round(p[0] * 100) / 100, Math.round(p[1] * 100) / 100];

/** The {@link Segmenter} of one image over the API, in the client's shapes. */
export function apiSegmenter(api: SegmentApi, imageId: number): Segmenter {
  return {
    async click(positive, negative) {
      const r = await api.segmentClick(imageId, { positive: positive.map(pt2), negative: negative.map(pt2) });
      return {
        polygon: r.polygon ? normalizeRing(r.polygon) : null,
        classId: r.class_id,
        label: r.label,
        source: r.source,
        modelVersion: r.model_version,
        reason: r.reason,
      };
    },
    async box(b) {
      const r = await api.segmentBox(imageId, { box: b.map((v) => Math.round(v * 100) / 100) });
      return {
        cells: r.cells.map((c) => ({ polygon: normalizeRing(c.polygon), classId: c.class_id, label: c.label })),
        source: r.source,
        modelVersion: r.model_version,
      };
    },
  };
}

/**
 * The class of a segmented cell: the one the server names (its class id, else the class
 * of its model label) — the model tells a thyroid cell from an erythrocyte — otherwise the
 * active class the doctor chose.
 */
export function resultClass(palette: ClassPalette, cell: { classId: number | null; label: number | null }, fallback: number | null): number | null {
  if (cell.classId != null && palette.get(cell.classId)) return cell.classId;
  if (cell.label != null) {
    const c = palette.byLabel(String(cell.label));
    if (c) return c.id;
  }
  return fallback;
}

/** A contour from the server as a ring the store accepts, or null (too small, degenerate). */
export function serverRing(polygon: readonly (readonly number[])[] | null | undefined): Ring | null {
  if (!polygon) return null;
  const r = normalizeRing(polygon);
  if (r.length < 3) return null;
  if (isValidRing(r)) return r;
  const fixed = makeValid(r);
  return fixed && isValidRing(fixed) ? fixed : null;
}

function toPc(ring: readonly Point[]): [number, number][][] {
  const r = ring.map((p) => [p[0], p[1]] as [number, number]);
  r.push([ring[0][0], ring[0][1]]);
  return [r];
}

/** Intersection over union of two simple rings (0 when they do not overlap). */
export function iou(a: readonly Point[], b: readonly Point[]): number {
  if (!bboxIntersects(bbox(a), bbox(b))) return 0;
  try {
    const inter = polygonClipping.intersection(toPc(a), toPc(b));
    let i = 0;
    for (const poly of inter) {
      i += area(normalizeRing(poly[0]));
      for (const hole of poly.slice(1)) i -= area(normalizeRing(hole));
    }
    const u = area(a) + area(b) - i;
    return u > 0 ? i / u : 0;
  } catch {
    return 0;
  }
}

/**
 * The cells of a box prompt worth adding: valid contours that do not repeat a cell already
 * drawn (IoU with it at least `maxIou`: the box was dragged over cells that are done).
 */
export function boxCellsToAdd(existing: Iterable<{ polygon: Ring }>, found: readonly SegmentedCell[], maxIou = 0.5): { add: SegmentedCell[]; duplicates: number; invalid: number } {
  const have = [...existing].map((c) => ({ polygon: c.polygon, box: bbox(c.polygon) }));
  const add: SegmentedCell[] = [];
  let duplicates = 0;
  let invalid = 0;
  for (const cell of found) {
    const ring = serverRing(cell.polygon);
    if (!ring) {
      invalid++;
      continue;
    }
    const b = bbox(ring);
    if (have.some((h) => bboxIntersects(h.box, b) && iou(h.polygon, ring) >= maxIou)) {
      duplicates++;
      continue;
    }
    add.push({ ...cell, polygon: ring });
    have.push({ polygon: ring, box: b });
  }
  return { add, duplicates, invalid };
}

/** Where a contour came from, for the doctor: "the model (v3)" or "the classical baseline". */
export function sourceText(source: string, modelVersion: number | null): string {
  if (source === 'baseline') return 'the classical baseline (no model trained yet)';
  return modelVersion != null ? `the model (v${modelVersion})` : 'the model';
}
