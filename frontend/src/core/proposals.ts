/**
 * Model proposals of one image (`GET images/{id}/cells?layer=proposal`).
 * Updates here never touch the undo history.
 */
import { Emitter } from './events';
import { isOpenProposal } from './editorState';
import { bbox, bboxIntersects, normalizeRing, ringIntersectsBox, type BBox } from './geometry';
import { nextKey, readingOrder } from './review';
import type { ApiCell, Ring } from './types';

export interface Proposal {
  id: number;
  classId: number | null;
  polygon: Ring;
  score: number | null;
  label: string | null;
  modelVersion: string | number | null;
  bbox: BBox;
}

export class ProposalStore {
  private readonly items = new Map<number, Proposal>();
  readonly events = new Emitter<{ reset: null; removed: number[] }>();

  /** Keeps the open proposals: the server also lists the accepted and rejected ones (`state`). */
  load(cells: ApiCell[]): void {
    this.items.clear();
    for (const c of cells) {
      if (!isOpenProposal(c)) continue;
      const polygon = normalizeRing(c.polygon ?? []);
      if (polygon.length < 3) continue;
      this.items.set(c.id, {
        id: c.id,
        classId: c.class_id ?? null,
        polygon,
        score: c.score ?? null,
        label: c.label ?? null,
        modelVersion: c.model_version ?? null,
        bbox: bbox(polygon),
      });
    }
    this.events.emit('reset', null);
  }

  remove(ids: Iterable<number>): number[] {
    const removed: number[] = [];
    for (const id of ids) if (this.items.delete(id)) removed.push(id);
    if (removed.length) this.events.emit('removed', removed);
    return removed;
  }

  get(id: number): Proposal | undefined {
    return this.items.get(id);
  }
  get size(): number {
    return this.items.size;
  }
  all(): IterableIterator<Proposal> {
    return this.items.values();
  }
  ids(): number[] {
    return [...this.items.keys()];
  }

  /**
   * The proposal after (dir 1) or before (dir -1) `current` in reading order (rows top to
   * bottom, left to right: the review screen's order of cells), wrapping around; null when
   * none is open. `current` null or gone: the first (or last) one.
   */
  next(current: number | null, dir: 1 | -1 = 1): number | null {
    const order = readingOrder([...this.items.values()].map((p) => ({ key: String(p.id), polygon: p.polygon })));
    const k = nextKey(order, current !== null && this.items.has(current) ? String(current) : null, dir);
    return k === null ? null : Number(k);
  }

  /**
   * Proposals "in view": every proposal whose outline intersects `extent` (API pixel
   * coordinates), including those only partly visible at the edge of the view: the
   * doctor sees them on screen, so "accept all in view" takes them too.
   */
  idsInExtent(extent: BBox): number[] {
    const out: number[] = [];
    for (const p of this.items.values()) {
      if (bboxIntersects(p.bbox, extent) && ringIntersectsBox(p.polygon, extent)) out.push(p.id);
    }
    return out;
  }
}
