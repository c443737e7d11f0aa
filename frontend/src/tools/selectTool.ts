/**
 * Select / modify: click selects the cell or proposal under the pointer
 * (smallest first; clicking again inside overlapping cells cycles through them,
 * Shift adds/removes). The selected cells' vertices can be dragged, dragging an
 * edge inserts a vertex, Alt-click or Delete (while hovering) removes one.
 */
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import type { EventsKey } from 'ol/events';
import { altKeyOnly, click, shiftKeyOnly } from 'ol/events/condition';
import { Interaction, Modify, Select, type Snap } from 'ol/interaction';
import type { ModifyEvent } from 'ol/interaction/Modify';
import { unByKey } from 'ol/Observable';
import type { Polygon } from 'ol/geom';
import { clampRing, isValidRing, normalizeRing } from '../core/geometry';
import type { Ring } from '../core/types';
import type { CellFeature } from '../view/editorMap';
import { addSnap, type Tool, type ToolContext } from './tool';

export class SelectTool implements Tool {
  readonly id = 'select' as const;
  readonly label = 'Select & edit';
  readonly shortcut = 'V';
  readonly hint =
    'Click: select (again: next overlapping cell) · Shift-click: add · drag a vertex / an edge to reshape · Alt-click or Del on a vertex removes it';

  private ctx: ToolContext | null = null;
  private select: Select | null = null;
  private modify: Modify | null = null;
  private snap: Snap | null = null;
  private clamp: ClampToImage | null = null;
  private keys: EventsKey[] = [];
  private pickTarget: CellFeature | null = null;

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    v.leftDragPans = true;
    v.setCursor('default');
    this.select = new Select({
      condition: click,
      toggleCondition: shiftKeyOnly,
      layers: [v.cellLayer, v.activeLayer, v.proposalLayer],
      features: v.selectedFeatures,
      style: null,
      hitTolerance: 2,
      filter: (f) => this.pickTarget === null || f === this.pickTarget,
    });
    this.select.on('select', () => {
      ctx.selection.set(v.selectedFeatures.getArray().map((f) => String(f.getId())));
    });
    this.modify = new Modify({
      features: v.editableFeatures,
      style: v.styles.modifyVertex,
      pixelTolerance: 8,
      deleteCondition: (e) => altKeyOnly(e) && click(e),
    });
    this.modify.on('modifyend', (e) => this.commit(e));
    // map listeners run before the interactions: decide which feature the click picks
    this.keys.push(v.map.on('click', (e) => this.choosePick(e)));
    v.map.addInteraction(this.select);
    v.map.addInteraction(this.modify);
    // added after Modify, so it sees the pointer first (Snap, added last, before it)
    this.clamp = new ClampToImage(v.frame.extent);
    v.map.addInteraction(this.clamp);
    this.snap = addSnap(ctx, v);
  }

  deactivate(): void {
    const v = this.ctx?.view;
    unByKey(this.keys);
    this.keys = [];
    for (const i of [this.snap, this.clamp, this.modify, this.select]) if (i && v) v.map.removeInteraction(i);
    this.select = this.modify = this.snap = this.clamp = null;
    this.ctx = null;
  }

  private choosePick(e: MapBrowserEvent): void {
    const ctx = this.ctx;
    const v = ctx?.view;
    if (!ctx || !v) return;
    const keys = v.keysAtPixel(e.pixel);
    if (!keys.length) {
      this.pickTarget = null;
      return;
    }
    const current = ctx.selection.values();
    let key = keys[0];
    if (!shiftKeyOnly(e) && current.length === 1 && keys.includes(current[0])) {
      const cur = v.feature(current[0]);
      const res = v.view.getResolution() ?? 1;
      const g = cur?.getGeometry() as Polygon | undefined;
      const near = g ? distToBoundary(g, e.coordinate) / res <= 9 : false;
      // a click on the selected cell's contour is an edit, not a re-pick
      key = near ? current[0] : keys[(keys.indexOf(current[0]) + 1) % keys.length];
    }
    this.pickTarget = v.feature(key) ?? null;
  }

  private commit(e: ModifyEvent): void {
    const ctx = this.ctx;
    const v = ctx?.view;
    if (!ctx || !v) return;
    const updates: [string, Ring][] = [];
    for (const f of e.features.getArray() as CellFeature[]) {
      const key = String(f.getId());
      const cell = ctx.store.get(key);
      if (!cell) continue;
      // the drag is clamped already (ClampToImage); this also covers a vertex inserted on an edge
      const ring = clampRing(normalizeRing(v.featureRing(f)), v.frame.width, v.frame.height);
      if (!isValidRing(ring)) {
        v.resetFeature(key);
        ctx.notify('That edit would make the contour cross itself — reverted', 'warn');
        continue;
      }
      updates.push([key, ring]);
    }
    if (updates.length) ctx.store.updatePolygons(updates, 'edit contour');
  }

  onKey(e: KeyboardEvent): boolean {
    const ctx = this.ctx;
    if (!ctx) return false;
    if (e.key === 'Delete' || e.key === 'Backspace') {
      // the vertex under the pointer (Modify tracks the hover)
      const hovered = this.modify?.getPoint();
      if (hovered && this.modify?.removePoint(hovered)) return true;
      const cells = ctx.selection.cells();
      if (cells.length) {
        ctx.store.removeCells(cells);
        ctx.notify(cells.length > 1 ? `Deleted ${cells.length} cells` : 'Deleted cell', 'info');
        return true;
      }
      return false;
    }
    if (e.key === 'Escape' && ctx.selection.size) {
      ctx.selection.clear();
      return true;
    }
    return false;
  }
}

/**
 * Keeps a dragged vertex on the image: the pointer's map coordinate is clamped to the image
 * extent before Modify moves the vertex there, so the outline follows the edge of the image
 * while the pointer goes past it (the server refuses points outside the image).
 */
class ClampToImage extends Interaction {
  constructor(private readonly extent: readonly number[]) {
    super();
  }
  override handleEvent(e: MapBrowserEvent): boolean {
    if (e.type === 'pointerdrag' || e.type === 'pointerup') {
      const [x0, y0, x1, y1] = this.extent;
      const c = e.coordinate;
      e.coordinate = [Math.min(x1, Math.max(x0, c[0])), Math.min(y1, Math.max(y0, c[1]))];
    }
    return true;
  }
}

function distToBoundary(g: Polygon, c: number[]): number {
  const ring = g.getLinearRing(0);
  if (!ring) return Infinity;
  const p = ring.getClosestPoint(c);
  return Math.hypot(p[0] - c[0], p[1] - c[1]);
}
