/**
 * Tools that act on the cell clicked: merge (two cells), delete, classify.
 * Their decisions live in `pick(key)` so they are unit tested without a map.
 */
import type { EventsKey } from 'ol/events';
import { unByKey } from 'ol/Observable';
import { mergePolygons } from '../core/geometry';
import type { Tool, ToolContext, ToolId } from './tool';

abstract class ClickTool implements Tool {
  abstract readonly id: ToolId;
  abstract readonly label: string;
  abstract readonly shortcut: string;
  abstract readonly hint: string;
  protected ctx: ToolContext | null = null;
  private keys: EventsKey[] = [];
  protected cursor = 'pointer';

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (v) {
      v.leftDragPans = true;
      v.setCursor(this.cursor);
      this.keys.push(
        v.map.on('click', (e) => {
          const key = v.keysAtPixel(e.pixel, { proposals: false })[0];
          this.pick(key ?? null);
        }),
      );
    }
    this.onActivate(ctx);
  }

  deactivate(): void {
    unByKey(this.keys);
    this.keys = [];
    this.onDeactivate();
    this.ctx = null;
  }

  protected onActivate(_ctx: ToolContext): void {}
  protected onDeactivate(): void {}

  /** The user clicked cell `key` (null: empty space, which no click tool acts on). */
  pick(key: string | null): void {
    if (this.ctx && key) this.pickCell(this.ctx, key);
  }

  protected abstract pickCell(ctx: ToolContext, key: string): void;
}

export class MergeTool extends ClickTool {
  readonly id = 'merge' as const;
  readonly label = 'Merge cells';
  readonly shortcut = 'M';
  readonly hint = 'Click two overlapping or touching cells to merge them (with two cells selected, M merges at once) · Esc: restart';
  first: string | null = null;

  protected override onActivate(ctx: ToolContext): void {
    const cells = ctx.selection.cells();
    this.first = null;
    if (cells.length === 2) {
      this.merge(cells[0], cells[1]);
    } else if (cells.length === 1) {
      this.first = cells[0];
    } else {
      ctx.selection.clear();
    }
  }

  protected override onDeactivate(): void {
    this.first = null;
  }

  protected pickCell(ctx: ToolContext, key: string): void {
    if (!this.first || !ctx.store.has(this.first)) {
      this.first = key;
      ctx.selection.set([key]);
      ctx.notify('Now click the cell to merge it with', 'info');
    } else if (key === this.first) {
      this.first = null;
      ctx.selection.clear();
    } else {
      this.merge(this.first, key);
    }
  }

  merge(a: string, b: string): boolean {
    const ctx = this.ctx;
    if (!ctx) return false;
    const ca = ctx.store.get(a);
    const cb = ctx.store.get(b);
    if (!ca || !cb) return false;
    const ring = mergePolygons(ca.polygon, cb.polygon);
    if (!ring) {
      ctx.notify('These cells neither overlap nor touch — not merged', 'warn');
      this.first = a;
      ctx.selection.set([a]);
      return false;
    }
    ctx.store.mergeCells(a, b, ring);
    this.first = null;
    ctx.selection.set([a]);
    ctx.notify('Merged 2 cells', 'success');
    return true;
  }

  onKey(e: KeyboardEvent): boolean {
    if (e.key === 'Escape' && this.first) {
      this.first = null;
      this.ctx?.selection.clear();
      return true;
    }
    return false;
  }
}

export class DeleteTool extends ClickTool {
  readonly id = 'delete' as const;
  readonly label = 'Delete cells';
  readonly shortcut = 'E';
  readonly hint = 'Click a cell to delete it (Ctrl+Z brings it back)';
  protected override cursor = 'not-allowed';

  protected pickCell(ctx: ToolContext, key: string): void {
    if (ctx.store.removeCells([key])) ctx.selection.remove([key]);
  }
}

export class ClassifyTool extends ClickTool {
  readonly id = 'classify' as const;
  readonly label = 'Paint class';
  readonly shortcut = 'C';
  readonly hint = 'Click cells to give them the current class (choose it with 1–9)';
  protected override cursor = 'copy';

  protected pickCell(ctx: ToolContext, key: string): void {
    const classId = ctx.activeClassId();
    if (ctx.store.setClass([key], classId)) ctx.notify(`→ ${ctx.palette.name(classId)}`, 'info');
  }
}
