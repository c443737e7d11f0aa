/**
 * Polygon drawing: clicks place vertices, a drag traces freehand (see
 * PolygonDrawMachine). Middle button or Space+drag pans while drawing.
 */
import Feature from 'ol/Feature';
import { LineString, MultiPoint, Point as OlPoint, Polygon } from 'ol/geom';
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import type { Snap } from 'ol/interaction';
import type { Point, Ring } from '../core/types';
import { finalizeDrawnRing } from './finalize';
import { PolygonDrawInteraction } from './drawInteraction';
import { PolygonDrawMachine, type PointerInput } from './polygonMachine';
import { addSnap, type Tool, type ToolContext } from './tool';

export class DrawPolygonTool implements Tool {
  readonly id = 'draw' as const;
  readonly label = 'Draw cell';
  readonly shortcut = 'D';
  readonly hint =
    'Click vertices or drag freehand · close: click the first point, double-click or Enter · Backspace: remove last vertex · Esc: cancel · Space/middle-drag: pan';

  readonly machine: PolygonDrawMachine;
  private ctx: ToolContext | null = null;
  private interaction: PolygonDrawInteraction | null = null;
  private snap: Snap | null = null;
  private usedFreehand = false;
  private lastRes = 1;
  private readonly sketchArea = new Feature<Polygon>();
  private readonly sketchPath = new Feature<LineString>();
  private readonly sketchClose = new Feature<LineString>();
  private readonly sketchVertices = new Feature<MultiPoint>();
  private readonly sketchFirst = new Feature<OlPoint>();

  constructor() {
    this.machine = new PolygonDrawMachine({
      onFinish: (ring) => this.commit(ring),
      onChange: () => this.renderSketch(),
    });
  }

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    v.leftDragPans = false;
    v.setCursor('crosshair');
    this.sketchArea.setStyle(v.styles.sketchFill);
    this.sketchPath.setStyle(v.styles.sketchLine);
    this.sketchClose.setStyle(v.styles.sketchGuide);
    this.sketchVertices.setStyle(v.styles.sketchVertex);
    this.sketchFirst.setStyle(v.styles.sketchFirstVertex);
    this.interaction = new PolygonDrawInteraction(this);
    v.map.addInteraction(this.interaction);
    this.snap = addSnap(ctx, v);
  }

  deactivate(): void {
    const v = this.ctx?.view;
    this.machine.reset();
    if (v) {
      if (this.interaction) v.map.removeInteraction(this.interaction);
      if (this.snap) v.map.removeInteraction(this.snap);
      v.sketchSource.clear();
      v.leftDragPans = true;
    }
    this.interaction = this.snap = null;
    this.ctx = null;
  }

  private input(e: MapBrowserEvent): PointerInput {
    const v = this.ctx!.view!;
    this.lastRes = v.view.getResolution() ?? 1;
    return { pt: v.frame.toApi(e.coordinate), res: this.lastRes, time: (e.originalEvent as Event | undefined)?.timeStamp ?? performance.now() };
  }

  onDown(e: MapBrowserEvent<PointerEvent>): boolean {
    const v = this.ctx?.view;
    if (!v || e.originalEvent.button !== 0 || v.spaceDown) return false;
    if (!this.machine.isDrawing) this.usedFreehand = false;
    this.machine.down(this.input(e));
    return true;
  }
  onMove(e: MapBrowserEvent): void {
    if (!this.ctx?.view) return;
    const wasFreehand = this.machine.mode === 'freehand';
    this.machine.move(this.input(e));
    if (!wasFreehand && this.machine.mode === 'freehand') this.usedFreehand = true;
  }
  onUp(e: MapBrowserEvent): void {
    if (!this.ctx?.view) return;
    this.machine.up(this.input(e));
  }

  onKey(e: KeyboardEvent): boolean {
    return this.machine.key(e.key);
  }

  /** Adds the finished outline as a new cell (public for tests / scripting). */
  commit(raw: Ring, res = this.lastRes): string | null {
    const ctx = this.ctx;
    if (!ctx) return null;
    const v = ctx.view;
    const r = finalizeDrawnRing(raw, {
      res,
      width: v?.frame.width ?? Infinity,
      height: v?.frame.height ?? Infinity,
      freehand: this.usedFreehand,
    });
    this.usedFreehand = false;
    if (!r.ok) {
      ctx.notify(r.reason, 'warn');
      return null;
    }
    return ctx.store.addCell(r.ring, ctx.activeClassId());
  }

  private renderSketch(): void {
    const v = this.ctx?.view;
    if (!v) return;
    const pts = this.machine.preview();
    if (!pts.length) {
      v.sketchSource.clear();
      return;
    }
    const map = pts.map((p: Point) => v.frame.toMap(p));
    this.sketchArea.setGeometry(map.length >= 3 ? new Polygon([[...map, map[0]]]) : undefined);
    this.sketchPath.setGeometry(map.length >= 2 ? new LineString(map) : undefined);
    // dashed edge back to the first vertex: where the polygon will close
    this.sketchClose.setGeometry(map.length >= 3 ? new LineString([map[map.length - 1], map[0]]) : undefined);
    this.sketchVertices.setGeometry(
      this.machine.mode === 'freehand' ? undefined : new MultiPoint(this.machine.points.map((p) => v.frame.toMap(p))),
    );
    const first = this.machine.points[0];
    const closable = this.machine.cursor && this.machine.nearFirst({ pt: this.machine.cursor, res: this.lastRes });
    this.sketchFirst.setGeometry(first && closable ? new OlPoint(v.frame.toMap(first)) : undefined);
    if (!v.sketchSource.getFeatures().length) {
      v.sketchSource.addFeatures([this.sketchArea, this.sketchClose, this.sketchPath, this.sketchVertices, this.sketchFirst]);
    }
  }
}
