/**
 * Small SVG / HTML charts (no chart library): line charts for loss curves,
 * horizontal bars, stacked bars, a heat-map cell colour.
 */
import { formatTick, lineChartScales, linePath, thin, type ChartLayout, type Series } from '../core/chart';
import { h } from './dom';

const SVG = 'http://www.w3.org/2000/svg';

function s<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}, ...children: (SVGElement | string)[]): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

export const SERIES_COLORS = ['#5b9cff', '#f59e0b', '#34d399', '#f472b6', '#a78bfa', '#22d3ee', '#fb7185', '#a3e635'];

export function seriesColor(name: string, i: number): string {
  if (/^train[_ ]?loss$/i.test(name)) return '#5b9cff';
  if (/^val(idation)?[_ ]?loss$/i.test(name)) return '#f59e0b';
  return SERIES_COLORS[i % SERIES_COLORS.length];
}

export function prettyName(name: string): string {
  if (/^lr$/i.test(name)) return 'Learning rate';
  return name.replace(/_/g, ' ').replace(/\bval\b/i, 'validation').replace(/^./, (c) => c.toUpperCase());
}

export interface LineChartOptions {
  width?: number;
  height?: number;
  xLabel?: string;
  yMin?: number;
  title?: string;
  /** e.g. "loss" → shown in the empty state */
  empty?: string;
}

/** A responsive line chart (viewBox scaled to its container's width). */
export function lineChart(series: Series[], o: LineChartOptions = {}): HTMLElement {
  const width = o.width ?? 560;
  const height = o.height ?? 220;
  const layout: ChartLayout = { width, height, margin: { top: 12, right: 16, bottom: 30, left: 52 } };
  const shown = series.filter((x) => x.points.some((p) => p[1] != null && Number.isFinite(p[1] as number)));
  const wrap = h('div', { class: 'chart' });
  if (o.title) wrap.append(h('div', { class: 'chart-title' }, o.title));
  if (!shown.length) {
    wrap.append(h('div', { class: 'chart-empty' }, o.empty ?? 'No data yet'));
    return wrap;
  }
  const { sx, sy, xTicks, yTicks } = lineChartScales(shown, layout, { yMin: o.yMin });
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart-svg', role: 'img' });
  const m = layout.margin;
  for (const t of yTicks.ticks) {
    const y = sy(t);
    svg.append(s('line', { x1: m.left, x2: width - m.right, y1: y, y2: y, class: 'grid' }));
    svg.append(s('text', { x: m.left - 8, y: y + 4, class: 'tick', 'text-anchor': 'end' }, formatTick(t, yTicks.step)));
  }
  for (const t of xTicks.ticks) {
    const x = sx(t);
    svg.append(s('line', { x1: x, x2: x, y1: height - m.bottom, y2: height - m.bottom + 4, class: 'axis' }));
    svg.append(s('text', { x, y: height - m.bottom + 17, class: 'tick', 'text-anchor': 'middle' }, formatTick(t, xTicks.step)));
  }
  svg.append(s('line', { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom, class: 'axis' }));
  if (o.xLabel) svg.append(s('text', { x: width - m.right, y: height - 2, class: 'axis-label', 'text-anchor': 'end' }, o.xLabel));
  shown.forEach((ser, i) => {
    const color = seriesColor(ser.name, i);
    const pts = thin(ser.points, 500);
    svg.append(s('path', { d: linePath(pts, sx, sy), class: 'line', stroke: color }));
    const last = [...pts].reverse().find((p) => p[1] != null && Number.isFinite(p[1] as number));
    if (last) svg.append(s('circle', { cx: sx(last[0]), cy: sy(last[1] as number), r: 3.2, fill: color, class: 'last' }, s('title', {}, `${prettyName(ser.name)}: ${(last[1] as number).toPrecision(4)} (epoch ${last[0]})`)));
    if (pts.length <= 60) {
      for (const p of pts) {
        if (p[1] == null || !Number.isFinite(p[1])) continue;
        svg.append(s('circle', { cx: sx(p[0]), cy: sy(p[1] as number), r: 2, fill: color, class: 'pt' }, s('title', {}, `${prettyName(ser.name)} · epoch ${p[0]}: ${(p[1] as number).toPrecision(4)}`)));
      }
    }
  });
  wrap.append(
    h(
      'div',
      { class: 'chart-legend' },
      shown.map((ser, i) => {
        const last = [...ser.points].reverse().find((p) => p[1] != null && Number.isFinite(p[1] as number));
        return h('span', { class: 'legend-item' }, h('i', { class: 'legend-swatch', style: { background: seriesColor(ser.name, i) } }), prettyName(ser.name), last ? h('b', null, ` ${(last[1] as number).toPrecision(3)}`) : null);
      }),
    ),
    svg,
  );
  return wrap;
}

/** A horizontal bar in [0, max] with its label and value text. */
export function hbar(label: string | Node, value: number | null, opts: { max?: number; color?: string; text?: string; title?: string; href?: string } = {}): HTMLElement {
  const max = opts.max ?? 1;
  const pct = value == null || !Number.isFinite(value) ? 0 : Math.max(0, Math.min(100, (value / max) * 100));
  const labelEl = opts.href ? h('a', { class: 'hbar-label', href: opts.href, title: opts.title ?? '' }, label) : h('span', { class: 'hbar-label', title: opts.title ?? '' }, label);
  return h(
    'div',
    { class: 'hbar' },
    labelEl,
    h('span', { class: 'hbar-track' }, h('span', { class: 'hbar-fill', style: { width: `${pct}%`, background: opts.color ?? 'var(--accent)' } })),
    h('span', { class: 'hbar-value' }, opts.text ?? (value == null ? '—' : value.toFixed(2))),
  );
}

/** A stacked horizontal bar of parts (fractions of their sum). */
export function stackedBar(parts: { label: string; value: number; color: string }[], opts: { height?: number } = {}): HTMLElement {
  const total = parts.reduce((a, p) => a + (p.value > 0 ? p.value : 0), 0);
  return h(
    'div',
    { class: 'stacked', style: { height: `${opts.height ?? 12}px` } },
    parts
      .filter((p) => p.value > 0)
      .map((p) => h('span', { class: 'stacked-part', title: `${p.label}: ${p.value}${total ? ` (${Math.round((p.value / total) * 100)}%)` : ''}`, style: { width: `${total ? (p.value / total) * 100 : 0}%`, background: p.color } })),
  );
}

/** Colour of a heat-map cell for a value in [0, 1] (red → amber → green). */
export function heat(value: number | null | undefined): string {
  if (value == null || !Number.isFinite(value)) return 'transparent';
  const v = Math.max(0, Math.min(1, value));
  const hue = v * 130; // 0 red … 130 green
  return `hsla(${hue.toFixed(0)}, 65%, 42%, 0.85)`;
}

export function pct(v: number | null | undefined, digits = 0): string {
  return v == null || !Number.isFinite(v) ? '—' : `${(v * 100).toFixed(digits)}%`;
}

export function num(v: number | null | undefined, digits = 3): string {
  return v == null || !Number.isFinite(v) ? '—' : v.toFixed(digits);
}
