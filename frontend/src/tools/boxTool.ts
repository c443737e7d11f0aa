/**
 * Box prompt: drag a box around a cell or a small cluster; the server's instances inside it
 * (`POST images/{id}/segment/box`) are added as new cells, selected, in ONE undo step.
 *
 * Why new cells and not proposals: the proposal store mirrors the server's proposal layer
 * (pre-segmentation), whose accept / reject go through the server outside the undo history;
 * a box's instances exist only in the answer, and the doctor asked for them by dragging the
 * box, so they are the doctor's edit: Ctrl+Z takes the whole box back, Delete one cell.
 * Instances that repeat a cell already drawn (IoU ≥ 0.5) are left out and counted.
 */
import Feature from 'ol/Feature';
import { Polygon } from 'ol/geom';
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import PointerInteraction from 'ol/interaction/Pointer';
import { Fill, Stroke, Style } from 'ol/style';
import type { BBox } from '../core/geometry';
import { boxCellsToAdd, resultClass, sourceText } from '../core/interactive';
import type { Point } from '../core/types';
import { requestError, slowNotice } from './segmentTool';
import type { Tool, ToolContext } from './tool';

/** The smallest box (image pixels a side) worth asking about: a smaller drag is a slip. */
export const MIN_BOX = 4;

const boxStyle = new Style({ stroke: new Stroke({ color: '#fbbf24', width: 2, lineDash: [6, 4] }), fill: new Fill({ color: 'rgba(251,191,36,0.08)' }) });
const boxPendingStyle = new Style({ stroke: new Stroke({ color: '#fbbf24', width: 2, lineDash: [2, 4] }), fill: new Fill({ color: 'rgba(251,191,36,0.16)' }) });

class BoxInteraction extends PointerInteraction {
  constructor(private readonly tool: BoxTool) {
    super();
  }
  override handleEvent(e: MapBrowserEvent): boolean {
    if (e.type === 'dblclick') return false;
    return super.handleEvent(e);
  }
  protected override handleDownEvent(e: MapBrowserEvent): boolean {
    const oe = e.originalEvent as PointerEvent;
    const v = this.tool.view();
    if (!v || oe.button !== 0 || v.spaceDown || this.tool.busy) return false;
    this.tool.start(v.frame.toApi(e.coordinate));
    return true;
  }
  protected override handleDragEvent(e: MapBrowserEvent): void {
    const v = this.tool.view();
    if (v) this.tool.drag(v.frame.toApi(e.coordinate));
  }
  protected override handleUpEvent(e: MapBrowserEvent): boolean {
    const v = this.tool.view();
    if (v) void this.tool.finish(v.frame.toApi(e.coordinate));
    return false;
  }
}

export class BoxTool implements Tool {
  readonly id = 'box' as const;
  readonly label = 'Box prompt';
  readonly shortcut = 'Q';
  readonly hint = 'Drag a box around a cell or a small cluster: the cells found in it are added (one undo) · Esc: cancel · Space/middle-drag: pan';

  busy = false;
  private ctx: ToolContext | null = null;
  private interaction: BoxInteraction | null = null;
  private from: Point | null = null;
  private readonly sketch = new Feature<Polygon>();

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    v.leftDragPans = false;
    v.setCursor('crosshair');
    this.interaction = new BoxInteraction(this);
    v.map.addInteraction(this.interaction);
    this.sketch.setStyle(boxStyle);
    v.sketchSource.addFeature(this.sketch);
  }

  deactivate(): void {
    const v = this.ctx?.view;
    if (v) {
      if (this.interaction) v.map.removeInteraction(this.interaction);
      v.sketchSource.clear();
      v.leftDragPans = true;
      v.setCursor('');
    }
    this.interaction = null;
    this.from = null;
    this.ctx = null;
  }

  view() {
    return this.ctx?.view;
  }

  onKey(e: KeyboardEvent): boolean {
    if (e.key !== 'Escape' || !this.from) return false;
    this.from = null;
    this.sketch.setGeometry(undefined);
    return true;
  }

  start(pt: Point): void {
    this.from = pt;
    this.show([pt[0], pt[1], pt[0], pt[1]]);
  }

  drag(pt: Point): void {
    if (this.from) this.show(boxOf(this.from, pt));
  }

  async finish(pt: Point): Promise<void> {
    const from = this.from;
    this.from = null;
    if (!from) return;
    await this.ask(boxOf(from, pt));
  }

  /** Asks the server for the cells in `box` (API coordinates) and adds the new ones; returns their keys. */
  async ask(box0: BBox): Promise<string[]> {
    const ctx = this.ctx;
    if (!ctx) return [];
    const v = ctx.view;
    const box: BBox = v ? [Math.max(0, box0[0]), Math.max(0, box0[1]), Math.min(v.frame.width, box0[2]), Math.min(v.frame.height, box0[3])] : box0;
    if (box[2] - box[0] < MIN_BOX || box[3] - box[1] < MIN_BOX) {
      this.sketch.setGeometry(undefined);
      ctx.notify('Drag a box around a cell or a small cluster of cells', 'info');
      return [];
    }
    if (!ctx.segmenter) {
      this.sketch.setGeometry(undefined);
      ctx.notify('Box prompts are not available here', 'warn');
      return [];
    }
    this.busy = true;
    this.show(box);
    this.sketch.setStyle(boxPendingStyle);
    v?.setCursor('progress');
    const slow = slowNotice(ctx);
    try {
      const out = await ctx.segmenter.box(box);
      if (this.ctx !== ctx) return [];
      const { add, duplicates } = boxCellsToAdd(ctx.store.all(), out.cells);
      const already = duplicates ? ` (${duplicates} already drawn)` : '';
      if (!add.length) {
        ctx.notify(out.cells.length ? `No new cell in the box${already}` : `No cell found in the box by ${sourceText(out.source, out.modelVersion)}`, 'info');
        return [];
      }
      const fallback = ctx.activeClassId();
      const keys = ctx.store.addCells(
        add.map((c) => ({ polygon: c.polygon, classId: resultClass(ctx.palette, c, fallback) })),
        add.length === 1 ? 'add cell from a box' : `add ${add.length} cells from a box`,
      );
      ctx.selection.set(keys);
      ctx.notify(`Added ${keys.length} cell${keys.length === 1 ? '' : 's'} from the box${already}`, 'success');
      return keys;
    } catch (e) {
      if (this.ctx === ctx) ctx.notify(`Could not segment the box: ${requestError(e)}`, 'error');
      return [];
    } finally {
      clearTimeout(slow);
      this.busy = false;
      this.sketch.setGeometry(undefined);
      this.sketch.setStyle(boxStyle);
      if (this.ctx === ctx) v?.setCursor('crosshair');
    }
  }

  private show(b: BBox): void {
    const v = this.ctx?.view;
    if (!v) return;
    const ring = [
      [b[0], b[1]],
      [b[2], b[1]],
      [b[2], b[3]],
      [b[0], b[3]],
      [b[0], b[1]],
    ].map((p) => v.frame.toMap(p));
    this.sketch.setGeometry(new Polygon([ring]));
  }
}

function boxOf(a: Point, b: Point): BBox {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}
