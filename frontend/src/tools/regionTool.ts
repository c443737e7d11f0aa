/**
 * Region of interest (issue #14): draw a polygon like a cell outline (clicks place vertices, a
 * drag traces freehand; PolygonDrawMachine), and it becomes a region of the image on the
 * server — not a cell: it never enters the undo history. The editor lists the regions with
 * their actions (pre-segment only this region, delete).
 */
import Feature from 'ol/Feature';
import { LineString, Polygon } from 'ol/geom';
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import { ApiError } from '../core/api';
import type { Point, Ring } from '../core/types';
import { PolygonDrawInteraction } from './drawInteraction';
import { PolygonDrawMachine, type PointerInput } from './polygonMachine';
import type { Tool, ToolContext } from './tool';

export class RegionTool implements Tool {
  readonly id = 'region' as const;
  readonly label = 'Region of interest';
  readonly shortcut = 'G';
  readonly hint = 'Draw a region of interest: click vertices or drag freehand · close: click the first point, double-click or Enter · Esc: cancel';

  readonly machine: PolygonDrawMachine;
  private ctx: ToolContext | null = null;
  private interaction: PolygonDrawInteraction | null = null;
  private lastRes = 1;
  private readonly sketchArea = new Feature<Polygon>();
  private readonly sketchPath = new Feature<LineString>();

  constructor() {
    this.machine = new PolygonDrawMachine({
      onFinish: (ring) => void this.commit(ring),
      onChange: () => this.renderSketch(),
    });
  }

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    if (!ctx.regions) ctx.notify('Regions cannot be drawn on this screen', 'warn');
    v.leftDragPans = false;
    v.setCursor('crosshair');
    this.sketchArea.setStyle(v.styles.sketchFill);
    this.sketchPath.setStyle(v.styles.sketchLine);
    this.interaction = new PolygonDrawInteraction(this);
    v.map.addInteraction(this.interaction);
  }

  deactivate(): void {
    const v = this.ctx?.view;
    this.machine.reset();
    if (v) {
      if (this.interaction) v.map.removeInteraction(this.interaction);
      v.sketchSource.clear();
      v.leftDragPans = true;
    }
    this.interaction = null;
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
    this.machine.down(this.input(e));
    return true;
  }
  onMove(e: MapBrowserEvent): void {
    if (this.ctx?.view) this.machine.move(this.input(e));
  }
  onUp(e: MapBrowserEvent): void {
    if (this.ctx?.view) this.machine.up(this.input(e));
  }
  onKey(e: KeyboardEvent): boolean {
    return this.machine.key(e.key);
  }

  /** Creates the region on the server (public for tests / scripting); its id, or null when refused. */
  async commit(ring: Ring): Promise<number | null> {
    const ctx = this.ctx;
    if (!ctx?.regions) return null;
    try {
      const made = await ctx.regions.create(ring);
      if (typeof made === 'string') {
        ctx.notify(made, 'warn');
        return null;
      }
      ctx.notify(`${made.name} added`, 'success');
      return made.id;
    } catch (e) {
      const why = e instanceof ApiError ? String(e.fieldErrors.polygon ?? e.fieldErrors.name ?? e.detail) : String(e);
      ctx.notify(`The region was not saved: ${why}`, 'error');
      return null;
    }
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
    if (!v.sketchSource.getFeatures().length) v.sketchSource.addFeatures([this.sketchArea, this.sketchPath]);
  }
}
