/**
 * Split: draw a line across a cell (click points, double-click or Enter to
 * finish; Shift+drag draws it freehand). The selected cell(s) are split, or,
 * with nothing selected, the smallest cell the line crosses right through.
 * The geometry is done in the core (splitPolygon).
 */
import { shiftKeyOnly, noModifierKeys } from 'ol/events/condition';
import { Draw } from 'ol/interaction';
import type { DrawEvent } from 'ol/interaction/Draw';
import type { LineString } from 'ol/geom';
import { area, bbox, bboxIntersects, countCrossings, splitPolygon } from '../core/geometry';
import type { Point } from '../core/types';
import type { Tool, ToolContext } from './tool';

export class SplitTool implements Tool {
  readonly id = 'split' as const;
  readonly label = 'Split cell';
  readonly shortcut = 'X';
  readonly hint =
    'Click points of a cut line across the cell, double-click or Enter to cut · Shift+drag: freehand cut · Esc: cancel';

  private ctx: ToolContext | null = null;
  private draw: Draw | null = null;
  private drawing = false;

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    v.leftDragPans = true;
    v.setCursor('crosshair');
    this.draw = new Draw({
      type: 'LineString',
      style: v.styles.splitLine,
      condition: (e) => noModifierKeys(e) || shiftKeyOnly(e),
      freehandCondition: shiftKeyOnly,
      stopClick: true,
    });
    this.draw.on('drawstart', () => (this.drawing = true));
    this.draw.on('drawabort', () => (this.drawing = false));
    this.draw.on('drawend', (e: DrawEvent) => {
      this.drawing = false;
      const g = e.feature.getGeometry() as LineString;
      this.splitWith(g.getCoordinates().map((c) => v.frame.toApi(c)));
    });
    v.map.addInteraction(this.draw);
  }

  deactivate(): void {
    const v = this.ctx?.view;
    if (v && this.draw) {
      this.draw.abortDrawing();
      v.map.removeInteraction(this.draw);
    }
    this.draw = null;
    this.drawing = false;
    this.ctx = null;
  }

  onKey(e: KeyboardEvent): boolean {
    if (!this.draw || !this.drawing) return false;
    if (e.key === 'Escape') this.draw.abortDrawing();
    else if (e.key === 'Enter') this.draw.finishDrawing();
    else if (e.key === 'Backspace') this.draw.removeLastPoint();
    else return false;
    return true;
  }

  /** Splits by a line in API coordinates. Returns the keys of all pieces. */
  splitWith(line: Point[]): string[] {
    const ctx = this.ctx;
    if (!ctx || line.length < 2) return [];
    const selected = ctx.selection.cells();
    let targets: string[];
    if (selected.length) {
      targets = selected;
    } else {
      const lb = bbox(line);
      const crossed: { key: string; area: number }[] = [];
      for (const c of ctx.store.all()) {
        if (!bboxIntersects(bbox(c.polygon), lb)) continue;
        if (countCrossings(line, c.polygon) >= 2) crossed.push({ key: c.key, area: area(c.polygon) });
      }
      crossed.sort((a, b) => a.area - b.area);
      targets = crossed.slice(0, 1).map((c) => c.key);
    }
    const out: string[] = [];
    for (const key of targets) {
      const cell = ctx.store.get(key);
      if (!cell) continue;
      const pieces = splitPolygon(cell.polygon, line);
      if (pieces) out.push(...ctx.store.splitCell(key, pieces));
    }
    if (out.length) ctx.notify(`Split into ${out.length} cells`, 'success');
    else ctx.notify(selected.length ? 'The line does not cut the selected cell' : 'Draw the line right across a cell', 'warn');
    return out;
  }
}
