/**
 * State machine of the polygon drawing tool, free of OpenLayers and of the DOM
 * so it is unit tested. Coordinates are API pixels; every pointer input also
 * carries `res` (image pixels per screen pixel) so tolerances are in screen px.
 *
 * - click, click, click ... : vertices; close by clicking the first vertex,
 *   double-click (two clicks at the same place within 400 ms) or Enter; Backspace removes the last vertex; Escape cancels.
 * - press and drag: freehand. A drag that starts a polygon is a lasso: release
 *   closes it. A drag after some clicked vertices appends a freehand stretch,
 *   and clicking continues.
 */
import type { Point, Ring } from '../core/types';

export type DrawMode = 'idle' | 'clicking' | 'freehand';

export interface PointerInput {
  pt: Point;
  /** image pixels per screen pixel */
  res: number;
  /** event time in ms (double-click detection) */
  time?: number;
}

export interface DrawMachineOptions {
  /** movement (screen px) below which a press is a click */
  clickTolerancePx?: number;
  /** clicking within this distance (screen px) of the first vertex closes */
  closeTolerancePx?: number;
  /** min spacing of freehand samples (screen px) */
  freehandSpacingPx?: number;
  /** max delay between the two clicks of a double-click */
  doubleClickMs?: number;
  onFinish?: (ring: Ring, how: 'click-first' | 'dblclick' | 'enter' | 'lasso') => void;
  onCancel?: () => void;
  onChange?: () => void;
}

export class PolygonDrawMachine {
  mode: DrawMode = 'idle';
  points: Point[] = [];
  /** Position of the pointer (rubber band preview) */
  cursor: Point | null = null;

  private pressed = false;
  private downPt: Point | null = null;
  private lassoFromStart = false;
  /** the previous click, to recognise a double-click (same place, quick) */
  private lastClick: { pt: Point; time: number } | null = null;
  private readonly dblClickMs: number;
  private readonly clickTol: number;
  private readonly closeTol: number;
  private readonly spacing: number;

  constructor(private readonly opts: DrawMachineOptions = {}) {
    this.clickTol = opts.clickTolerancePx ?? 5;
    this.closeTol = opts.closeTolerancePx ?? 9;
    this.spacing = opts.freehandSpacingPx ?? 3;
    this.dblClickMs = opts.doubleClickMs ?? 400;
  }

  get isDrawing(): boolean {
    return this.points.length > 0 || this.mode === 'freehand';
  }

  /** The rubber-band preview: placed vertices plus the cursor. */
  preview(): Point[] {
    return this.cursor && this.mode !== 'freehand' ? [...this.points, this.cursor] : this.points.slice();
  }

  /** True when the pointer is close enough to the first vertex to close. */
  nearFirst(p: PointerInput): boolean {
    return this.points.length >= 3 && distPx(p.pt, this.points[0], p.res) <= this.closeTol;
  }

  down(p: PointerInput): void {
    this.pressed = true;
    this.downPt = p.pt;
  }

  move(p: PointerInput): void {
    this.cursor = p.pt;
    if (this.pressed && this.downPt) {
      if (this.mode !== 'freehand') {
        if (distPx(p.pt, this.downPt, p.res) > this.clickTol) {
          this.lassoFromStart = this.points.length === 0;
          this.mode = 'freehand';
          this.pushPoint(this.downPt, p.res, true);
          this.pushPoint(p.pt, p.res);
        }
      } else {
        this.pushPoint(p.pt, p.res);
      }
    }
    this.changed();
  }

  up(p: PointerInput): void {
    if (!this.pressed) return;
    this.pressed = false;
    this.downPt = null;
    if (this.mode === 'freehand') {
      this.pushPoint(p.pt, p.res, true);
      this.mode = 'clicking';
      if (this.lassoFromStart) {
        this.lassoFromStart = false;
        this.finish('lasso');
        return;
      }
      if (this.nearFirst(p) && this.points.length > 3) {
        this.finish('click-first');
        return;
      }
      this.changed();
      return;
    }
    // a click
    const prev = this.lastClick;
    this.lastClick = p.time !== undefined ? { pt: p.pt, time: p.time } : null;
    if (
      prev &&
      p.time !== undefined &&
      p.time - prev.time <= this.dblClickMs &&
      distPx(prev.pt, p.pt, p.res) <= this.clickTol &&
      this.points.length >= 3
    ) {
      // second click of a double-click (OpenLayers' own dblclick pairs any two quick clicks, wherever they are)
      this.finish('dblclick');
      return;
    }
    if (this.nearFirst(p)) {
      this.finish('click-first');
      return;
    }
    this.mode = 'clicking';
    this.pushPoint(p.pt, p.res, true);
    this.changed();
  }

  /** Closes the polygon (a double-click; see `up` for how one is recognised). */
  dblclick(): void {
    if (this.mode === 'freehand') return;
    this.finish('dblclick');
  }

  /** Returns true when the key was used. */
  key(key: string): boolean {
    if (key === 'Escape') {
      if (!this.isDrawing) return false;
      this.cancel();
      return true;
    }
    if (key === 'Enter') {
      if (!this.isDrawing) return false;
      this.finish('enter');
      return true;
    }
    if (key === 'Backspace') {
      if (!this.points.length || this.mode === 'freehand') return false;
      this.points.pop();
      if (!this.points.length) this.mode = 'idle';
      this.changed();
      return true;
    }
    return false;
  }

  cancel(): void {
    const was = this.isDrawing;
    this.reset();
    if (was) this.opts.onCancel?.();
    this.changed();
  }

  reset(): void {
    this.lastClick = null;
    this.mode = 'idle';
    this.points = [];
    this.pressed = false;
    this.downPt = null;
    this.lassoFromStart = false;
  }

  private finish(how: 'click-first' | 'dblclick' | 'enter' | 'lasso'): void {
    const ring = dedupe(this.points);
    this.reset();
    if (ring.length >= 3) this.opts.onFinish?.(ring, how);
    else this.opts.onCancel?.();
    this.changed();
  }

  private pushPoint(pt: Point, res: number, force = false): void {
    const last = this.points[this.points.length - 1];
    if (last) {
      const d = distPx(pt, last, res);
      if (d < 0.5 || (!force && d < this.spacing)) return;
    }
    this.points.push([pt[0], pt[1]]);
  }

  private changed(): void {
    this.opts.onChange?.();
  }
}

function distPx(a: Point, b: Point, res: number): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1]) / (res || 1);
}

function dedupe(points: Point[]): Ring {
  const out: Ring = [];
  for (const p of points) {
    const l = out[out.length - 1];
    if (l && Math.abs(l[0] - p[0]) < 1e-9 && Math.abs(l[1] - p[1]) < 1e-9) continue;
    out.push(p);
  }
  while (out.length > 1 && out[0][0] === out[out.length - 1][0] && out[0][1] === out[out.length - 1][1]) out.pop();
  return out;
}
