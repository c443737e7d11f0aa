/**
 * Brush and eraser geometry in API pixel coordinates (framework free, unit tested).
 *
 * A stroke is the polyline the pointer followed, buffered by the brush radius: the union
 * of one "capsule" (a segment with round ends) per segment of the path. The brush adds
 * it to a cell (polygon union), the eraser removes it (polygon difference), both through
 * polygon-clipping. The result must stay ONE simple polygon without holes (a cell
 * contour has none); otherwise the cell is left as it was and {@link BrushResult.reason}
 * says why in a sentence for the doctor.
 */
import polygonClipping from 'polygon-clipping';
import type { MultiPolygon as PcMulti, Polygon as PcPolygon } from 'polygon-clipping';
import { area, isValidRing, normalizeLine, normalizeRing, simplifyLine, simplifyRing } from './geometry';
import type { Point, Ring } from './types';

export type BrushMode = 'add' | 'erase';

/** The outcome of one stroke on one cell: the new contour, or why the cell stays as it was. */
export type BrushResult = { ok: true; ring: Ring } | { ok: false; reason: string };

export const MIN_BRUSH_RADIUS = 1;
export const MAX_BRUSH_RADIUS = 200;
/** One wheel notch or one [ / ] press scales the radius by this factor. */
export const BRUSH_RADIUS_STEP = 1.2;

/** The next radius after `steps` notches (positive: larger), rounded to 0.5 px and clamped. */
export function stepRadius(radius: number, steps: number): number {
  const r = radius * BRUSH_RADIUS_STEP ** steps;
  // at small radii a 20 % step rounds back to the same half pixel: move at least half a pixel
  const next = Math.round(r * 2) / 2;
  const moved = next === radius ? radius + Math.sign(steps) * 0.5 : next;
  return Math.min(MAX_BRUSH_RADIUS, Math.max(MIN_BRUSH_RADIUS, moved));
}

/** Vertices of a full circle of the stroke polygon: enough to look round at every radius. */
function circleSegments(radius: number): number {
  return Math.max(16, Math.min(64, Math.ceil(radius * 2)));
}

/** A segment a→b with round ends of `radius`, as one convex polygon (a circle when a = b). */
export function capsule(a: Point, b: Point, radius0: number): Ring {
  const n = circleSegments(radius0);
  // the polygon's vertices lie slightly outside the circle so that its area is the circle's
  const radius = radius0 * Math.sqrt((2 * Math.PI) / (n * Math.sin((2 * Math.PI) / n)));
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = Math.hypot(dx, dy);
  const out: Ring = [];
  if (len < 1e-6) {
    for (let i = 0; i < n; i++) {
      const t = (2 * Math.PI * i) / n;
      out.push([a[0] + radius * Math.cos(t), a[1] + radius * Math.sin(t)]);
    }
    return out;
  }
  const theta = Math.atan2(dy, dx);
  const half = Math.ceil(n / 2);
  // half circle around b from -90° to +90° of the direction, then around a from +90° to +270°
  for (let i = 0; i <= half; i++) {
    const t = theta - Math.PI / 2 + (Math.PI * i) / half;
    out.push([b[0] + radius * Math.cos(t), b[1] + radius * Math.sin(t)]);
  }
  for (let i = 0; i <= half; i++) {
    const t = theta + Math.PI / 2 + (Math.PI * i) / half;
    out.push([a[0] + radius * Math.cos(t), a[1] + radius * Math.sin(t)]);
  }
  return out;
}

function toPc(ring: readonly Point[]): PcPolygon {
  const r = ring.map((p) => [p[0], p[1]] as [number, number]);
  r.push([ring[0][0], ring[0][1]]);
  return [r];
}

/**
 * The area a stroke covers: the path (image pixels) buffered by `radius`. The path is first
 * thinned (points closer than a fifth of the radius and Douglas-Peucker at a twentieth add
 * nothing visible) so that a long, slow stroke stays a few dozen capsules. A multipolygon in
 * polygon-clipping's form (a stroke may cross itself and enclose a hole).
 */
export function strokeArea(path: readonly Point[], radius: number): PcMulti {
  const pts = thinPath(path, radius);
  if (!pts.length || !(radius > 0)) return [];
  if (pts.length === 1) return [toPc(capsule(pts[0], pts[0], radius))];
  const parts: PcPolygon[] = [];
  for (let i = 0; i + 1 < pts.length; i++) parts.push(toPc(capsule(pts[i], pts[i + 1], radius)));
  try {
    return polygonClipping.union(parts[0], ...parts.slice(1));
  } catch {
    return [];
  }
}

function thinPath(path: readonly Point[], radius: number): Point[] {
  const line = normalizeLine(path);
  if (line.length <= 2) return line;
  const minStep = radius / 5;
  const spaced: Point[] = [line[0]];
  for (let i = 1; i < line.length - 1; i++) {
    const last = spaced[spaced.length - 1];
    if (Math.hypot(line[i][0] - last[0], line[i][1] - last[1]) >= minStep) spaced.push(line[i]);
  }
  spaced.push(line[line.length - 1]);
  return simplifyLine(spaced, Math.max(0.1, radius / 20));
}

/** The outer ring of a stroke that is one piece (a new cell painted with the brush), or why not. */
export function strokeCell(path: readonly Point[], radius: number, minArea = 4, bounds?: readonly [number, number]): BrushResult {
  const s = clipTo(strokeArea(path, radius), bounds);
  if (!s.length) return { ok: false, reason: 'The stroke is empty' };
  // a stroke is connected by construction; several pieces only come from clipping noise
  const pieces = s.map((p) => normalizeRing(p[0])).sort((a, b) => area(b) - area(a));
  return finish(pieces[0], radius, minArea, 'The stroke is too small to make a cell');
}

/**
 * Applies a stroke to a cell: `add` = union (brush), `erase` = difference (eraser).
 * Holes are filled for the brush (a stroke that loops back encloses part of the image the
 * doctor painted around: the cell now covers it), but refused for the eraser (rubbing out
 * the inside of a cell cannot give a contour). Pieces the eraser cuts off that are smaller
 * than `crumb` px² (slivers at the edge of a stroke) are dropped; a real second part is refused.
 */
export function applyStroke(
  cell: readonly Point[],
  path: readonly Point[],
  radius: number,
  mode: BrushMode,
  opts: { minArea?: number; crumb?: number; bounds?: readonly [width: number, height: number] } = {},
): BrushResult {
  const minArea = opts.minArea ?? 4;
  const ring = normalizeRing(cell);
  if (ring.length < 3) return { ok: false, reason: 'The cell has no contour' };
  const stroke = strokeArea(path, radius);
  if (!stroke.length) return { ok: false, reason: 'The stroke is empty' };
  let result: PcMulti;
  try {
    const inter = polygonClipping.intersection(toPc(ring), stroke);
    if (!inter.length) {
      return { ok: false, reason: mode === 'add' ? 'The stroke does not touch the cell — paint from inside the cell outwards' : 'The eraser did not touch the cell' };
    }
    result = mode === 'add' ? polygonClipping.union(toPc(ring), stroke) : polygonClipping.difference(toPc(ring), stroke);
    result = clipTo(result, opts.bounds);
  } catch {
    return { ok: false, reason: 'The stroke could not be applied to this contour' };
  }
  if (mode === 'add') {
    if (result.length !== 1) return { ok: false, reason: 'The stroke does not touch the cell — paint from inside the cell outwards' };
    return finish(normalizeRing(result[0][0]), radius, minArea, 'The result is too small to be a cell');
  }
  const crumb = opts.crumb ?? Math.max(minArea, Math.PI * radius * radius * 0.05);
  const parts = result.filter((p) => polyArea(p) >= crumb);
  if (!parts.length) return { ok: false, reason: 'The eraser would remove the whole cell — delete it with Del instead' };
  if (parts.length > 1) return { ok: false, reason: 'The eraser would cut the cell in two — use the split tool (X) to divide a cell' };
  const [only] = parts;
  if (only.slice(1).some((hole) => area(normalizeRing(hole)) >= crumb)) {
    return { ok: false, reason: 'The eraser would make a hole inside the cell — erase from the edge of the cell' };
  }
  return finish(normalizeRing(only[0]), radius, minArea, 'The result is too small to be a cell');
}

/**
 * Cut to the image `[0, w] × [0, h]`: a stroke past the edge must not leave vertices outside
 * (the store would clamp them onto the edge, folding the outline onto itself there).
 */
function clipTo(m: PcMulti, bounds: readonly [number, number] | undefined): PcMulti {
  if (!bounds || !m.length) return m;
  const [w, h] = bounds;
  try {
    return polygonClipping.intersection(m, [
      [
        [0, 0],
        [w, 0],
        [w, h],
        [0, h],
        [0, 0],
      ],
    ]);
  } catch {
    return m;
  }
}

function polyArea(p: PcPolygon): number {
  const outer = area(normalizeRing(p[0]));
  return p.slice(1).reduce((s, hole) => s - area(normalizeRing(hole)), outer);
}

/**
 * Simplifies the result (the union of many capsules has hundreds of vertices, most of them
 * on circle arcs): Douglas-Peucker at a tolerance that grows with the radius but stays below
 * half a pixel, and again more coarsely when the contour would still exceed `maxVertices`.
 */
export function simplifyStrokeResult(ring: Ring, radius: number, maxVertices = 600): Ring {
  let tol = Math.min(0.5, Math.max(0.1, radius / 40));
  let out = normalizeRing(simplifyRing(ring, tol));
  while (out.length > maxVertices && tol < 4) {
    tol *= 2;
    out = normalizeRing(simplifyRing(ring, tol));
  }
  return out;
}

function finish(ring: Ring, radius: number, minArea: number, tooSmall: string): BrushResult {
  if (ring.length < 3 || area(ring) < minArea) return { ok: false, reason: tooSmall };
  const simple = simplifyStrokeResult(ring, radius);
  if (isValidRing(simple, minArea)) return { ok: true, ring: simple };
  // simplification can make a narrow neck touch itself: keep the exact outline then
  if (isValidRing(ring, minArea)) return { ok: true, ring };
  return { ok: false, reason: 'The result would not be a valid contour (it touches itself)' };
}
