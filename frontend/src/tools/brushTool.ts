/**
 * Brush and eraser: paint on a cell to add area to it (union) or remove area from it
 * (difference). The geometry is in the core (core/brush.ts); here: the pointer, the
 * circle cursor, the live preview of the stroke and the radius.
 *
 * Target: the selected cell (exactly one), else the cell under the start of the stroke
 * (it becomes selected). With no cell there the brush starts a NEW cell from the stroke
 * (active class); the eraser says it needs a cell. One stroke = one undo step. A result that
 * is not one valid polygon leaves the cell as it was and the tool says why (a toast).
 *
 * Radius in image pixels, shared by brush and eraser: [ and ] or Ctrl / Alt / Shift + wheel
 * while the tool is active (the plain wheel keeps zooming: a doctor zooms while painting far
 * more often than resizing the brush); shown as a circle around the pointer with its size.
 */
import Feature from 'ol/Feature';
import { LineString, Point as OlPoint } from 'ol/geom';
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import PointerInteraction from 'ol/interaction/Pointer';
import { unByKey } from 'ol/Observable';
import type { EventsKey } from 'ol/events';
import { Circle, Fill, Stroke, Style, Text } from 'ol/style';
import { applyStroke, stepRadius, strokeCell, type BrushMode } from '../core/brush';
import { pointInRing } from '../core/geometry';
import { isProposalKey } from '../core/selection';
import type { Point } from '../core/types';
import type { Tool, ToolContext } from './tool';

/** The radius both tools paint with (image pixels); one object so brush and eraser share it. */
export const brushSettings = { radius: 8 };

class BrushInteraction extends PointerInteraction {
  constructor(private readonly tool: PaintTool) {
    super();
  }
  override handleEvent(e: MapBrowserEvent): boolean {
    if (e.type === 'wheel') return this.tool.onWheel(e);
    // a double-click while painting is two dabs, never a zoom
    if (e.type === 'dblclick') return false;
    if (e.type === 'pointermove' && !this.tool.painting) this.tool.onHover(e);
    return super.handleEvent(e);
  }
  protected override handleDownEvent(e: MapBrowserEvent): boolean {
    return this.tool.onDown(e as MapBrowserEvent<PointerEvent>);
  }
  protected override handleDragEvent(e: MapBrowserEvent): void {
    this.tool.onDrag(e);
  }
  protected override handleUpEvent(e: MapBrowserEvent): boolean {
    this.tool.onUp(e);
    return false;
  }
}

abstract class PaintTool implements Tool {
  abstract readonly id: 'brush' | 'eraser';
  abstract readonly label: string;
  abstract readonly shortcut: string;
  abstract readonly hint: string;
  protected abstract readonly mode: BrushMode;
  protected abstract readonly color: string;

  painting = false;
  private ctx: ToolContext | null = null;
  private interaction: BrushInteraction | null = null;
  private path: Point[] = [];
  private readonly cursor = new Feature<OlPoint>();
  private readonly trail = new Feature<LineString>();
  private keys: EventsKey[] = [];

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    v.leftDragPans = false;
    v.setCursor('crosshair');
    this.interaction = new BrushInteraction(this);
    v.map.addInteraction(this.interaction);
    this.cursor.setStyle(() => this.cursorStyle());
    this.trail.setStyle(() => this.trailStyle());
    v.sketchSource.addFeatures([this.trail, this.cursor]);
    // the pointer leaving the map hides the circle
    this.keys.push(v.map.on('change:size', () => this.cursor.changed()));
    const vp = v.map.getViewport() as HTMLElement | undefined;
    const leave = () => {
      if (!this.painting) this.cursor.setGeometry(undefined);
    };
    vp?.addEventListener('pointerleave', leave);
    this.offLeave = () => vp?.removeEventListener('pointerleave', leave);
  }

  private offLeave: (() => void) | null = null;

  deactivate(): void {
    const v = this.ctx?.view;
    if (v) {
      if (this.interaction) v.map.removeInteraction(this.interaction);
      v.sketchSource.clear();
      v.leftDragPans = true;
    }
    unByKey(this.keys);
    this.keys = [];
    this.offLeave?.();
    this.offLeave = null;
    this.interaction = null;
    this.painting = false;
    this.path = [];
    this.ctx = null;
  }

  // ------------------------------------------------------------ pointer

  onDown(e: MapBrowserEvent<PointerEvent>): boolean {
    const v = this.ctx?.view;
    if (!v || e.originalEvent.button !== 0 || v.spaceDown) return false;
    this.painting = true;
    this.path = [v.frame.toApi(e.coordinate)];
    this.showTrail();
    return true;
  }

  onDrag(e: MapBrowserEvent): void {
    const v = this.ctx?.view;
    if (!v || !this.painting) return;
    this.path.push(v.frame.toApi(e.coordinate));
    this.cursor.setGeometry(new OlPoint(e.coordinate));
    this.showTrail();
  }

  onUp(e: MapBrowserEvent): void {
    const v = this.ctx?.view;
    if (!v || !this.painting) return;
    this.path.push(v.frame.toApi(e.coordinate));
    const path = this.path;
    this.painting = false;
    this.path = [];
    this.trail.setGeometry(undefined);
    this.stroke(path);
  }

  onHover(e: MapBrowserEvent): void {
    this.cursor.setGeometry(new OlPoint(e.coordinate));
  }

  /** Ctrl / Alt / Shift + wheel: radius (consumed); the plain wheel goes on to zoom. */
  onWheel(e: MapBrowserEvent): boolean {
    const we = e.originalEvent as WheelEvent;
    if (!(we.ctrlKey || we.altKey || we.shiftKey || we.metaKey)) return true;
    we.preventDefault();
    // Shift+wheel scrolls sideways in some browsers: deltaX instead of deltaY
    const d = we.deltaY || we.deltaX;
    if (d) this.setRadius(stepRadius(brushSettings.radius, d < 0 ? 1 : -1));
    return false;
  }

  onKey(e: KeyboardEvent): boolean {
    if (e.ctrlKey || e.metaKey || e.altKey) return false;
    if (e.key === ']') this.setRadius(stepRadius(brushSettings.radius, 1));
    else if (e.key === '[') this.setRadius(stepRadius(brushSettings.radius, -1));
    else if (e.key === 'Escape' && this.painting) {
      this.painting = false;
      this.path = [];
      this.trail.setGeometry(undefined);
    } else return false;
    return true;
  }

  setRadius(r: number): void {
    brushSettings.radius = r;
    this.cursor.changed();
    this.trail.changed();
  }

  // ------------------------------------------------------------ the stroke (public for tests)

  /**
   * Applies a finished stroke (API coordinates). Returns the key of the cell changed or
   * created, or null when nothing changed (the reason was shown).
   */
  stroke(path: Point[], radius = brushSettings.radius): string | null {
    const ctx = this.ctx;
    if (!ctx || !path.length) return null;
    const selected = ctx.selection.values().filter((k) => !isProposalKey(k));
    if (selected.length > 1) {
      ctx.notify(`Select one cell to ${this.mode === 'add' ? 'paint on' : 'erase from'} (${selected.length} are selected)`, 'warn');
      return null;
    }
    let key: string | null = selected[0] ?? null;
    if (!key) {
      key = this.cellAt(ctx, path[0]);
      if (key) ctx.selection.set([key]);
    }
    if (!key) {
      if (this.mode === 'erase') {
        ctx.notify('Start the eraser on a cell, or select the cell to erase from', 'warn');
        return null;
      }
      const r = strokeCell(path, radius, 4, this.bounds());
      if (!r.ok) {
        ctx.notify(r.reason, 'warn');
        return null;
      }
      const created = ctx.store.addCell(r.ring, ctx.activeClassId(), 'paint cell');
      ctx.selection.set([created]);
      return created;
    }
    const cell = ctx.store.get(key);
    if (!cell) return null;
    const r = applyStroke(cell.polygon, path, radius, this.mode, { bounds: this.bounds() });
    if (!r.ok) {
      ctx.notify(`${r.reason} — the cell is unchanged`, 'warn');
      return null;
    }
    ctx.store.updatePolygon(key, r.ring, this.mode === 'add' ? 'brush' : 'erase');
    return key;
  }

  /** The image's size (strokes are cut to it); unknown without a map (unit tests). */
  private bounds(): [number, number] | undefined {
    const f = this.ctx?.view?.frame;
    return f ? [f.width, f.height] : undefined;
  }

  /** The smallest cell containing `pt` (nested cells: the inner one is meant). */
  private cellAt(ctx: ToolContext, pt: Point): string | null {
    let best: string | null = null;
    let bestArea = Infinity;
    for (const c of ctx.store.all()) {
      if (!pointInRing(pt, c.polygon)) continue;
      let minX = Infinity;
      let minY = Infinity;
      let maxX = -Infinity;
      let maxY = -Infinity;
      for (const [x, y] of c.polygon) {
        minX = Math.min(minX, x);
        minY = Math.min(minY, y);
        maxX = Math.max(maxX, x);
        maxY = Math.max(maxY, y);
      }
      const a = (maxX - minX) * (maxY - minY);
      if (a < bestArea) {
        bestArea = a;
        best = c.key;
      }
    }
    return best;
  }

  // ------------------------------------------------------------ drawing

  private showTrail(): void {
    const v = this.ctx?.view;
    if (!v) return;
    this.trail.setGeometry(new LineString(this.path.map((p) => v.frame.toMap(p))));
  }

  private resolution(): number {
    return this.ctx?.view?.view.getResolution() ?? 1;
  }

  private cursorStyle(): Style {
    const px = Math.max(1, brushSettings.radius / this.resolution());
    const r = Math.round(brushSettings.radius * 2) / 2;
    return new Style({
      image: new Circle({ radius: px, stroke: new Stroke({ color: this.color, width: 1.5 }), fill: new Fill({ color: 'rgba(255,255,255,0.06)' }) }),
      text: new Text({
        text: `${r} px`,
        offsetY: -px - 9,
        font: '600 11px system-ui, sans-serif',
        fill: new Fill({ color: '#fff' }),
        stroke: new Stroke({ color: 'rgba(0,0,0,0.7)', width: 3 }),
      }),
    });
  }

  private trailStyle(): Style {
    // the stroke as it will be applied: a line as wide as the brush, round ends
    return new Style({
      stroke: new Stroke({ color: this.mode === 'add' ? 'rgba(34,211,238,0.35)' : 'rgba(248,113,113,0.4)', width: (2 * brushSettings.radius) / this.resolution(), lineCap: 'round', lineJoin: 'round' }),
    });
  }
}

export class BrushTool extends PaintTool {
  readonly id = 'brush' as const;
  readonly label = 'Brush';
  readonly shortcut = 'B';
  readonly hint =
    'Paint from inside the selected cell outwards to add to it (no cell: paints a new one) · [ ]: radius (also Ctrl/Alt+wheel) · wheel: zoom · one stroke = one undo';
  protected readonly mode = 'add' as const;
  protected readonly color = '#22d3ee';
}

export class EraserTool extends PaintTool {
  readonly id = 'eraser' as const;
  readonly label = 'Eraser';
  readonly shortcut = 'U';
  readonly hint = 'Rub out part of the selected cell from its edge · [ ]: radius (also Ctrl/Alt+wheel) · wheel: zoom · one stroke = one undo';
  protected readonly mode = 'erase' as const;
  protected readonly color = '#f87171';
}
