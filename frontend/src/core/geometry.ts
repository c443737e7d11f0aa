/**
 * Polygon geometry in API pixel coordinates (framework free, unit tested).
 * Rings are open (first point not repeated).
 */
import polygonClipping from 'polygon-clipping';
import type { MultiPolygon as PcMulti, Polygon as PcPolygon } from 'polygon-clipping';
import type { Point, Ring } from './types';

export type BBox = [minX: number, minY: number, maxX: number, maxY: number];

const EPS = 1e-9;

export function round(v: number, decimals = 2): number {
  const f = 10 ** decimals;
  return Math.round(v * f) / f;
}

/** Drops the closing point, consecutive duplicates and non-finite points; rounds to 1/100 px. */
export function normalizeRing(poly: readonly (readonly number[])[], decimals = 2): Ring {
  const out = normalizeLine(poly, decimals);
  while (out.length > 1 && out[0][0] === out[out.length - 1][0] && out[0][1] === out[out.length - 1][1]) out.pop();
  return out;
}

/** Like normalizeRing for an open polyline (a closing point is kept). */
export function normalizeLine(line: readonly (readonly number[])[], decimals = 2): Point[] {
  const out: Point[] = [];
  for (const p of line) {
    if (!p || p.length < 2 || !Number.isFinite(p[0]) || !Number.isFinite(p[1])) continue;
    const q: Point = [round(p[0], decimals), round(p[1], decimals)];
    const last = out[out.length - 1];
    if (last && last[0] === q[0] && last[1] === q[1]) continue;
    out.push(q);
  }
  return out;
}

/** Shoelace; positive for counter-clockwise in a y-up frame (clockwise on screen). */
export function signedArea(ring: readonly Point[]): number {
  let s = 0;
  for (let i = 0, n = ring.length; i < n; i++) {
    const a = ring[i];
    const b = ring[(i + 1) % n];
    s += a[0] * b[1] - b[0] * a[1];
  }
  return s / 2;
}

export function area(ring: readonly Point[]): number {
  return Math.abs(signedArea(ring));
}

export function bbox(points: readonly Point[]): BBox {
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  for (const [x, y] of points) {
    if (x < minX) minX = x;
    if (y < minY) minY = y;
    if (x > maxX) maxX = x;
    if (y > maxY) maxY = y;
  }
  return [minX, minY, maxX, maxY];
}

export function bboxIntersects(a: BBox, b: BBox): boolean {
  return a[0] <= b[2] && a[2] >= b[0] && a[1] <= b[3] && a[3] >= b[1];
}

export function centroid(ring: readonly Point[]): Point {
  const a = signedArea(ring);
  if (Math.abs(a) < EPS) {
    const [x0, y0, x1, y1] = bbox(ring);
    return [(x0 + x1) / 2, (y0 + y1) / 2];
  }
  let cx = 0;
  let cy = 0;
  for (let i = 0, n = ring.length; i < n; i++) {
    const p = ring[i];
    const q = ring[(i + 1) % n];
    const f = p[0] * q[1] - q[0] * p[1];
    cx += (p[0] + q[0]) * f;
    cy += (p[1] + q[1]) * f;
  }
  return [cx / (6 * a), cy / (6 * a)];
}

/** Even-odd point in polygon test. */
export function pointInRing(pt: Point, ring: readonly Point[]): boolean {
  const [x, y] = pt;
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i];
    const [xj, yj] = ring[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

export function dist(a: Point, b: Point): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1]);
}

function orient(a: Point, b: Point, c: Point): number {
  return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
}

/** Proper or touching intersection of segments ab and cd. */
export function segmentsIntersect(a: Point, b: Point, c: Point, d: Point): boolean {
  const d1 = orient(c, d, a);
  const d2 = orient(c, d, b);
  const d3 = orient(a, b, c);
  const d4 = orient(a, b, d);
  if (((d1 > EPS && d2 < -EPS) || (d1 < -EPS && d2 > EPS)) && ((d3 > EPS && d4 < -EPS) || (d3 < -EPS && d4 > EPS))) return true;
  const on = (p: Point, q: Point, r: Point) =>
    Math.min(p[0], q[0]) - EPS <= r[0] && r[0] <= Math.max(p[0], q[0]) + EPS &&
    Math.min(p[1], q[1]) - EPS <= r[1] && r[1] <= Math.max(p[1], q[1]) + EPS;
  if (Math.abs(d1) <= EPS && on(c, d, a)) return true;
  if (Math.abs(d2) <= EPS && on(c, d, b)) return true;
  if (Math.abs(d3) <= EPS && on(a, b, c)) return true;
  if (Math.abs(d4) <= EPS && on(a, b, d)) return true;
  return false;
}

/** True when no two non-adjacent edges of the ring touch (a valid simple polygon). */
export function isSimple(ring: readonly Point[]): boolean {
  const n = ring.length;
  if (n < 3) return false;
  for (let i = 0; i < n; i++) {
    const a = ring[i];
    const b = ring[(i + 1) % n];
    for (let j = i + 1; j < n; j++) {
      // skip adjacent edges
      if (j === i + 1 || (i === 0 && j === n - 1)) continue;
      if (segmentsIntersect(a, b, ring[j], ring[(j + 1) % n])) return false;
    }
  }
  return true;
}

/** A ring the server will accept: >= 3 distinct points, non-zero area, simple. */
export function isValidRing(ring: readonly Point[], minArea = 1): boolean {
  return ring.length >= 3 && area(ring) >= minArea && isSimple(ring);
}

function perpDist(p: Point, a: Point, b: Point): number {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = Math.hypot(dx, dy);
  if (len < EPS) return dist(p, a);
  return Math.abs(dy * p[0] - dx * p[1] + b[0] * a[1] - b[1] * a[0]) / len;
}

/** Douglas-Peucker on an open polyline. */
export function simplifyLine(points: readonly Point[], tolerance: number): Point[] {
  if (points.length <= 2 || tolerance <= 0) return points.slice();
  const keep = new Uint8Array(points.length);
  keep[0] = keep[points.length - 1] = 1;
  const stack: [number, number][] = [[0, points.length - 1]];
  while (stack.length) {
    const [s, e] = stack.pop()!;
    let maxD = -1;
    let idx = -1;
    for (let i = s + 1; i < e; i++) {
      const d = perpDist(points[i], points[s], points[e]);
      if (d > maxD) {
        maxD = d;
        idx = i;
      }
    }
    if (idx > 0 && maxD > tolerance) {
      keep[idx] = 1;
      stack.push([s, idx], [idx, e]);
    }
  }
  return points.filter((_, i) => keep[i]);
}

/** Douglas-Peucker on a closed ring (keeps at least 3 points). */
export function simplifyRing(ring: readonly Point[], tolerance: number): Ring {
  if (ring.length <= 4) return ring.slice();
  // split at the point farthest from the first one so both halves are well conditioned
  let far = 1;
  let farD = -1;
  for (let i = 1; i < ring.length; i++) {
    const d = dist(ring[0], ring[i]);
    if (d > farD) {
      farD = d;
      far = i;
    }
  }
  const a = simplifyLine(ring.slice(0, far + 1), tolerance);
  const b = simplifyLine([...ring.slice(far), ring[0]], tolerance);
  const out = [...a, ...b.slice(1, -1)];
  return out.length >= 3 ? out : ring.slice();
}

// ---------------------------------------------------------------- clipping

function toPc(ring: readonly Point[]): PcPolygon {
  const r = ring.map((p) => [p[0], p[1]] as [number, number]);
  r.push([ring[0][0], ring[0][1]]);
  return [r];
}

function outerRings(mp: PcMulti): Ring[] {
  return mp.map((poly) => normalizeRing(poly[0])).filter((r) => r.length >= 3);
}

/**
 * Turns a possibly self-intersecting ring (e.g. a freehand lasso that crossed itself)
 * into a valid simple ring: the largest piece of its union, without holes.
 */
export function makeValid(ring: readonly Point[]): Ring | null {
  const r = normalizeRing(ring);
  if (r.length < 3) return null;
  if (isSimple(r)) return area(r) > 0 ? r : null;
  try {
    const pieces = outerRings(polygonClipping.union(toPc(r)));
    pieces.sort((p, q) => area(q) - area(p));
    const best = pieces[0];
    return best && isSimple(best) ? best : null;
  } catch {
    return null;
  }
}

/** Union of two cells; null when they neither overlap nor touch (the union is not one polygon). */
export function mergePolygons(a: readonly Point[], b: readonly Point[]): Ring | null {
  try {
    const u = polygonClipping.union(toPc(a), toPc(b));
    if (u.length !== 1) return null;
    // holes (two cells forming a ring) are dropped: a cell contour has none
    const r = normalizeRing(u[0][0]);
    return r.length >= 3 ? r : null;
  } catch {
    return null;
  }
}

/** Point where the ray from `from` through `to` (which lies inside `box`) leaves the box. */
function rayToBox(from: Point, to: Point, box: BBox): Point {
  const dx = to[0] - from[0];
  const dy = to[1] - from[1];
  let s = Infinity;
  if (dx > EPS) s = Math.min(s, (box[2] - to[0]) / dx);
  if (dx < -EPS) s = Math.min(s, (box[0] - to[0]) / dx);
  if (dy > EPS) s = Math.min(s, (box[3] - to[1]) / dy);
  if (dy < -EPS) s = Math.min(s, (box[1] - to[1]) / dy);
  if (!Number.isFinite(s)) return [to[0], to[1]];
  const p: Point = [to[0] + s * dx, to[1] + s * dy];
  // snap exactly onto the box edge (floating error)
  p[0] = Math.min(box[2], Math.max(box[0], p[0]));
  p[1] = Math.min(box[3], Math.max(box[1], p[1]));
  return p;
}

/** Position of a boundary point along the box perimeter (counter-clockwise from minX,minY). */
function perimeterParam(p: Point, box: BBox): number {
  const [x0, y0, x1, y1] = box;
  const w = x1 - x0;
  const h = y1 - y0;
  const tol = 1e-6 * (w + h);
  if (Math.abs(p[1] - y0) <= tol) return p[0] - x0;
  if (Math.abs(p[0] - x1) <= tol) return w + (p[1] - y0);
  if (Math.abs(p[1] - y1) <= tol) return w + h + (x1 - p[0]);
  return 2 * w + h + (y1 - p[1]);
}

/** Number of times a polyline crosses a ring's boundary. */
export function countCrossings(line: readonly Point[], ring: readonly Point[]): number {
  let n = 0;
  for (let i = 0; i + 1 < line.length; i++) {
    for (let j = 0; j < ring.length; j++) {
      if (segmentsIntersect(line[i], line[i + 1], ring[j], ring[(j + 1) % ring.length])) n++;
    }
  }
  return n;
}

/** Clamps every point into [0,w] x [0,h]. */
/**
 * Whether the polygon `ring` and the rectangle `box` overlap (share any area or touch):
 * a vertex inside the box, a box corner inside the ring, or an edge crossing a box side.
 */
export function ringIntersectsBox(ring: readonly Point[], box: BBox): boolean {
  const [x0, y0, x1, y1] = box;
  if (ring.some(([x, y]) => x >= x0 && x <= x1 && y >= y0 && y <= y1)) return true;
  const corners: Point[] = [
    [x0, y0],
    [x1, y0],
    [x1, y1],
    [x0, y1],
  ];
  if (corners.some((c) => pointInRing(c, ring))) return true;
  for (let i = 0; i < ring.length; i++) {
    const a = ring[i];
    const b = ring[(i + 1) % ring.length];
    for (let j = 0; j < 4; j++) if (segmentsIntersect(a, b, corners[j], corners[(j + 1) % 4])) return true;
  }
  return false;
}

export function clampRing(ring: readonly Point[], width: number, height: number): Ring {
  return ring.map(([x, y]) => [Math.min(width, Math.max(0, x)), Math.min(height, Math.max(0, y))] as Point);
}

function polylineCrossesRing(line: readonly Point[], ring: readonly Point[]): boolean {
  for (let i = 0; i + 1 < line.length; i++) {
    for (let j = 0; j < ring.length; j++) {
      if (segmentsIntersect(line[i], line[i + 1], ring[j], ring[(j + 1) % ring.length])) return true;
    }
  }
  return false;
}

/**
 * Splits a cell by a polyline drawn across it. The ends of the line are extended
 * straight until they leave the cell, so a stroke that stops just short of the
 * contour still cuts it (the stroke must cross the contour or lie inside the cell). Returns the pieces (largest first) or null when the
 * line does not cut the cell into at least two pieces of at least `minArea` px².
 */
export function splitPolygon(ring: readonly Point[], line: readonly Point[], minArea = 4): Ring[] | null {
  const cell = normalizeRing(ring);
  const path0 = normalizeLine(line);
  if (cell.length < 3 || path0.length < 2) return null;
  // the stroke must touch the cell: cross its contour or lie (partly) inside it
  if (!polylineCrossesRing(path0, cell) && !path0.some((p) => pointInRing(p, cell))) return null;

  const [x0, y0, x1, y1] = bbox([...cell, ...path0]);
  const m = Math.max(x1 - x0, y1 - y0, 1) + 10;
  const box: BBox = [x0 - m, y0 - m, x1 + m, y1 + m];
  const n = path0.length;
  const start = rayToBox(path0[1], path0[0], box);
  const end = rayToBox(path0[n - 2], path0[n - 1], box);
  const side: Point[] = [start, ...path0, end];

  // close the "left" region along the box boundary, from end back to start
  const [bx0, by0, bx1, by1] = box;
  const w = bx1 - bx0;
  const h = by1 - by0;
  const per = 2 * (w + h);
  const corners: [number, Point][] = [
    [0, [bx0, by0]],
    [w, [bx1, by0]],
    [w + h, [bx1, by1]],
    [2 * w + h, [bx0, by1]],
  ];
  const tEnd = perimeterParam(end, box);
  const tStart = perimeterParam(start, box);
  let span = (tStart - tEnd + per) % per;
  if (span < EPS) span = per; // same point: go all the way round
  const walk: [number, Point][] = corners
    .map(([t, p]) => [(t - tEnd + per) % per, p] as [number, Point])
    .filter(([d]) => d > EPS && d < span - EPS)
    .sort((a, b) => a[0] - b[0]);
  for (const [, p] of walk) side.push(p);

  try {
    const sidePoly = toPc(side);
    const cellPoly = toPc(cell);
    const a = outerRings(polygonClipping.intersection(cellPoly, sidePoly));
    const b = outerRings(polygonClipping.difference(cellPoly, sidePoly));
    const pieces = [...a, ...b].filter((r) => area(r) >= minArea);
    if (pieces.length < 2) return null;
    pieces.sort((p, q) => area(q) - area(p));
    return pieces;
  } catch {
    return null;
  }
}

/** Insert point into ring after index i (used by tools). */
export function insertVertex(ring: readonly Point[], afterIndex: number, p: Point): Ring {
  const r = ring.slice();
  r.splice(afterIndex + 1, 0, p);
  return r;
}

/** Remove vertex i; null when fewer than 3 would remain. */
export function removeVertex(ring: readonly Point[], index: number): Ring | null {
  if (ring.length <= 3) return null;
  const r = ring.slice();
  r.splice(index, 1);
  return r;
}
