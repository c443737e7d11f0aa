/**
 * Chart maths for the small SVG charts of the admin screens (loss curves,
 * bars): nice ticks, linear scales, SVG paths with gaps. Framework free.
 */

export interface Scale {
  (v: number): number;
  domain: [number, number];
  range: [number, number];
  invert(px: number): number;
}

export function linearScale(domain: [number, number], range: [number, number]): Scale {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  const span = d1 - d0;
  const f = ((v: number) => (span === 0 ? (r0 + r1) / 2 : r0 + ((v - d0) / span) * (r1 - r0))) as Scale;
  f.domain = [d0, d1];
  f.range = [r0, r1];
  f.invert = (px: number) => (r1 === r0 ? d0 : d0 + ((px - r0) / (r1 - r0)) * span);
  return f;
}

/** A "nice" step (1, 2, 2.5 or 5 × 10^k) giving about `count` intervals over `span`. */
export function niceStep(span: number, count = 5): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  return nice * mag;
}

export interface Ticks {
  min: number;
  max: number;
  step: number;
  ticks: number[];
}

/**
 * Ticks covering [min, max], extended outward to whole steps. A flat range is
 * widened so that it still gets an axis.
 */
export function niceTicks(min: number, max: number, count = 5): Ticks {
  if (!Number.isFinite(min) || !Number.isFinite(max)) {
    min = 0;
    max = 1;
  }
  if (min > max) [min, max] = [max, min];
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    min -= pad;
    max += pad;
  }
  const step = niceStep(max - min, count);
  const lo = Math.floor(min / step + 1e-9) * step;
  const hi = Math.ceil(max / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let v = lo; v <= hi + step * 1e-6; v += step) ticks.push(roundTo(v, step));
  return { min: roundTo(lo, step), max: roundTo(hi, step), step, ticks };
}

/** Decimals needed to write multiples of `step` exactly (0.25 -> 2, 0.5 -> 1, 20 -> 0). */
export function decimalsOf(step: number): number {
  for (let d = 0; d <= 10; d++) {
    const m = step * 10 ** d;
    if (Math.abs(Math.round(m) - m) < 1e-6) return d;
  }
  return 10;
}

function roundTo(v: number, step: number): number {
  const d = decimalsOf(step) + 1;
  return Number(v.toFixed(d));
}

/** Tick label with as many decimals as the step needs (e.g. 0.25 -> "0.25", 20 -> "20"). */
export function formatTick(v: number, step: number): string {
  if (Math.abs(v) >= 10000) return `${roundTo(v / 1000, step / 1000)}k`;
  const d = step >= 1 ? 0 : decimalsOf(step);
  const s = v.toFixed(d);
  return /^-0(\.0*)?$/.test(s) ? s.slice(1) : s;
}

export type XY = [number, number | null | undefined];

/** Extent of the finite values; null when there are none. */
export function extent(values: Iterable<number | null | undefined>): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v === null || v === undefined || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo === Infinity ? null : [lo, hi];
}

/** An SVG path through the points; missing / non-finite values leave a gap. */
export function linePath(points: XY[], sx: (v: number) => number, sy: (v: number) => number): string {
  let d = '';
  let pen = false;
  for (const [x, y] of points) {
    if (y === null || y === undefined || !Number.isFinite(y) || !Number.isFinite(x)) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
    pen = true;
  }
  return d;
}

/**
 * Keeps at most `max` points (every k-th, always the last) so long curves
 * stay cheap to draw.
 */
export function thin<T>(points: T[], max = 400): T[] {
  if (points.length <= max) return points;
  const k = Math.ceil(points.length / max);
  const out = points.filter((_, i) => i % k === 0);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

export interface Series {
  name: string;
  points: XY[];
}

/** Series of numeric fields of per-epoch points (x = `xKey`, 0-based epochs become 1-based). */
export function seriesFromPoints(points: Record<string, unknown>[], keys: string[], xKey = 'epoch', oneBased = true): Series[] {
  return keys.map((name) => ({
    name,
    points: points.map((p, i) => {
      const xRaw = p[xKey];
      const x = typeof xRaw === 'number' && Number.isFinite(xRaw) ? xRaw + (oneBased ? 1 : 0) : i + 1;
      const y = p[name];
      return [x, typeof y === 'number' ? y : null] as XY;
    }),
  }));
}

/** Numeric fields of the points except the x / bookkeeping ones. */
export function numericKeys(points: Record<string, unknown>[], exclude: string[] = ['epoch', 'epochs']): string[] {
  const keys = new Set<string>();
  for (const p of points) for (const [k, v] of Object.entries(p)) if (typeof v === 'number' && !exclude.includes(k)) keys.add(k);
  return [...keys];
}

export interface ChartLayout {
  width: number;
  height: number;
  margin: { top: number; right: number; bottom: number; left: number };
}

/** Scales and ticks of a line chart of `series` in `layout`. */
export function lineChartScales(series: Series[], layout: ChartLayout, opts: { yMin?: number; xTicks?: number; yTicks?: number } = {}) {
  const xs = extent(series.flatMap((s) => s.points.map((p) => p[0])));
  const ys = extent(series.flatMap((s) => s.points.map((p) => p[1])));
  const xr = xs ?? [0, 1];
  let yr = ys ?? [0, 1];
  if (opts.yMin !== undefined) yr = [Math.min(opts.yMin, yr[0]), yr[1]];
  const xt = niceTicks(xr[0], xr[1] === xr[0] ? xr[0] + 1 : xr[1], opts.xTicks ?? 6);
  // integer epochs: never fractional ticks
  if (xt.step < 1) Object.assign(xt, niceTicks(xr[0], Math.max(xr[1], xr[0] + 1), Math.max(1, Math.min(opts.xTicks ?? 6, Math.round(xr[1] - xr[0])))));
  let yt = niceTicks(yr[0], yr[1], opts.yTicks ?? 5);
  // non-negative data (losses, learning rates) never gets a negative axis
  if (yr[0] >= 0 && yt.min < 0) yt = niceTicks(0, yr[1] > 0 ? yr[1] : 1, opts.yTicks ?? 5);
  const { width, height, margin } = layout;
  const sx = linearScale([xt.min, xt.max], [margin.left, width - margin.right]);
  const sy = linearScale([yt.min, yt.max], [height - margin.bottom, margin.top]);
  return { sx, sy, xTicks: xt, yTicks: yt, empty: !ys };
}
