/** Cell classes of a project: colours, digit shortcuts (1-9). */
import type { CellClass } from './types';

export const UNCLASSIFIED_COLOR = '#e8e8e8';
const FALLBACK = ['#e6194b', '#3cb44b', '#ffe119', '#4363d8', '#f58231', '#911eb4', '#46f0f0', '#f032e6', '#bcf60c'];

export type RGB = [number, number, number];

export function parseColor(color: string | null | undefined, fallback: RGB = [232, 232, 232]): RGB {
  const c = (color ?? '').trim();
  let m = /^#?([0-9a-f]{6})$/i.exec(c);
  if (m) {
    const n = parseInt(m[1], 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  m = /^#?([0-9a-f]{3})$/i.exec(c);
  if (m) {
    const [r, g, b] = m[1].split('').map((h) => parseInt(h + h, 16));
    return [r, g, b];
  }
  m = /^rgba?\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)/i.exec(c);
  if (m) return [Number(m[1]), Number(m[2]), Number(m[3])];
  return fallback;
}

export function rgba([r, g, b]: RGB, a: number): string {
  return `rgba(${r},${g},${b},${a})`;
}

export class ClassPalette {
  readonly ordered: CellClass[];
  private readonly byId = new Map<number, CellClass>();

  constructor(classes: CellClass[]) {
    this.ordered = [...classes].sort((a, b) => a.order - b.order || a.id - b.id);
    this.ordered.forEach((c, i) => {
      const raw = (c.color ?? '').trim();
      const color = /^([0-9a-f]{3}|[0-9a-f]{6})$/i.test(raw)
        ? `#${raw}`
        : /^#([0-9a-f]{3}|[0-9a-f]{6})$|^rgba?\(/i.test(raw)
          ? raw
          : FALLBACK[i % FALLBACK.length];
      this.byId.set(c.id, { ...c, color });
    });
  }

  get(id: number | null | undefined): CellClass | undefined {
    return id == null ? undefined : this.byId.get(id);
  }
  color(id: number | null | undefined): string {
    return this.get(id)?.color ?? UNCLASSIFIED_COLOR;
  }
  name(id: number | null | undefined): string {
    return this.get(id)?.name ?? 'Unclassified';
  }
  /** Class bound to digit key 1-9 (by order). */
  byDigit(digit: number): CellClass | undefined {
    const c = this.ordered[digit - 1];
    return c ? this.byId.get(c.id) : undefined;
  }
  digitOf(id: number | null): number | null {
    const i = this.ordered.findIndex((c) => c.id === id);
    return i >= 0 && i < 9 ? i + 1 : null;
  }
  /** Proposal label -> class (by `model_label`, then by name). */
  byLabel(label: string | null | undefined): CellClass | undefined {
    if (!label) return undefined;
    const l = label.toLowerCase();
    // model_label is the model's output index (an integer): compared as text with the proposal's label
    const c = this.ordered.find((x) => String(x.model_label ?? '').toLowerCase() === l) ?? this.ordered.find((x) => x.name.toLowerCase() === l);
    return c ? this.byId.get(c.id) : undefined;
  }
}
