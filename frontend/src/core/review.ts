/**
 * An expert's review draft of one image (docs/api.md "Reviews"), framework free.
 *
 * The annotator's cells are loaded into an {@link AnnotationStore} (keys
 * `s<cell id>`) so the editor's view and tools work unchanged: dragging a
 * vertex or changing a class of an annotation cell makes it an *edit*, drawing
 * adds a *missed cell* (local key). Accept / reject are marks kept here. Every
 * change — marks included — is an undoable command in the store's history.
 *
 * Decision of an annotation cell (in this order):
 *   rejected mark -> `reject`; polygon or class differs from the annotator's -> `edit`;
 *   accepted mark -> `accept`; otherwise undecided.
 */
import { Emitter } from './events';
import { normalizeRing } from './geometry';
import type { Command } from './history';
import { CellsCommand, serverKey, type AnnotationStore, type Cell } from './store';
import type { ApiCell, Point, Review, ReviewCommentIO, ReviewDecisionIO, ReviewDraftBody, Ring } from './types';

export type Mark = 'accept' | 'reject';
export type CellReviewState = 'undecided' | 'accepted' | 'rejected' | 'edited' | 'added';

export interface OriginalCell {
  id: number;
  classId: number | null;
  polygon: Ring;
}

export interface ReviewCounts {
  total: number;
  accepted: number;
  rejected: number;
  edited: number;
  added: number;
  undecided: number;
}

export interface DraftSource<T> {
  readonly version: number;
  savedVersion: number;
  payload(): T;
}

class MarksCommand implements Command {
  constructor(
    private readonly draft: ReviewDraft,
    readonly label: string,
    private readonly before: [number, Mark | null][],
    private readonly after: [number, Mark | null][],
  ) {}
  get size(): number {
    return this.after.length;
  }
  do(): void {
    this.draft.writeMarks(this.after);
  }
  undo(): void {
    this.draft.writeMarks(this.before);
  }
}

/** Several commands as one undo step. */
class CompositeCommand implements Command {
  constructor(
    readonly label: string,
    private readonly parts: Command[],
  ) {}
  do(): void {
    for (const p of this.parts) p.do();
  }
  undo(): void {
    for (let i = this.parts.length - 1; i >= 0; i--) this.parts[i].undo();
  }
}

function sameRing(a: Ring, b: Ring): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i][0] - b[i][0]) > 1e-6 || Math.abs(a[i][1] - b[i][1]) > 1e-6) return false;
  return true;
}

export class ReviewDraft implements DraftSource<ReviewDraftBody> {
  /** `keys`: store keys whose review state may have changed (empty: everything). */
  readonly events = new Emitter<{ change: { keys: string[] }; comments: null }>();
  private originals = new Map<number, OriginalCell>();
  private marks = new Map<number, Mark>();
  private comments: ReviewCommentIO[] = [];
  version = 0;
  savedVersion = 0;
  /** Class given to added cells drawn without one (the API needs a class). */
  defaultClassId: number | null = null;
  private readonly off: () => void;

  constructor(readonly store: AnnotationStore) {
    this.off = this.store.events.on('change', (c) => {
      if (c.origin === 'server') return;
      this.version += 1;
      this.events.emit('change', { keys: [...c.added, ...c.removed, ...c.updated] });
    });
  }

  dispose(): void {
    this.off();
  }

  get isDirty(): boolean {
    return this.version !== this.savedVersion;
  }

  // ------------------------------------------------------------ loading

  /**
   * The annotator's cells plus the expert's saved draft (edits applied to the
   * polygons, added cells, marks, comments). Nothing here enters the history.
   */
  load(annotation: ApiCell[], review: Pick<Review, 'decisions' | 'added' | 'comments'> | null): void {
    this.originals = new Map();
    this.marks = new Map();
    const edits = new Map<number, Review["decisions"][number]>();
    for (const d of review?.decisions ?? []) {
      if (d.decision === 'edit') edits.set(d.cell_id, d);
      else this.marks.set(d.cell_id, d.decision);
    }
    const shown: ApiCell[] = [];
    for (const c of annotation) {
      const polygon = normalizeRing(c.polygon ?? []);
      if (polygon.length < 3) continue;
      this.originals.set(c.id, { id: c.id, classId: c.class_id ?? null, polygon });
      const e = edits.get(c.id);
      shown.push(e ? { ...c, polygon: e.polygon ?? c.polygon, class_id: e.class_id ?? c.class_id } : c);
    }
    this.store.load({ revision: 0, cells: shown });
    const added: [string, Cell][] = [];
    for (const a of review?.added ?? []) {
      const key = this.store.newLocalKey();
      const polygon = normalizeRing(a.polygon);
      if (polygon.length >= 3) added.push([key, { key, classId: a.class_id ?? null, polygon }]);
    }
    if (added.length) this.store.writeCells(added, 'server');
    this.comments = (review?.comments ?? []).map((c) => ({ cell_id: c.cell_id ?? null, text: c.text, created_at: c.created_at }));
    this.version = 0;
    this.savedVersion = 0;
    this.events.emit('change', { keys: [] });
    this.events.emit('comments', null);
  }

  // ------------------------------------------------------------ reading

  cellIdOf(key: string): number | null {
    if (!key.startsWith('s')) return null;
    const id = Number(key.slice(1));
    return this.originals.has(id) ? id : null;
  }

  original(key: string): OriginalCell | undefined {
    const id = this.cellIdOf(key);
    return id === null ? undefined : this.originals.get(id);
  }

  /** Keys of the annotator's cells (the cells that need a decision). */
  annotationKeys(): string[] {
    return [...this.originals.keys()].map(serverKey);
  }

  isAdded(key: string): boolean {
    return this.store.has(key) && this.cellIdOf(key) === null;
  }

  markOf(key: string): Mark | null {
    const id = this.cellIdOf(key);
    return id === null ? null : (this.marks.get(id) ?? null);
  }

  /** True when the expert changed the annotator's polygon or class. */
  isEdited(key: string): boolean {
    const o = this.original(key);
    const c = this.store.get(key);
    if (!o || !c) return false;
    return c.classId !== o.classId || !sameRing(c.polygon, o.polygon);
  }

  stateOf(key: string): CellReviewState {
    const id = this.cellIdOf(key);
    if (id === null) return 'added';
    const mark = this.marks.get(id);
    if (mark === 'reject' || !this.store.has(key)) return 'rejected';
    if (this.isEdited(key)) return 'edited';
    if (mark === 'accept') return 'accepted';
    return 'undecided';
  }

  isUndecided(key: string): boolean {
    return this.cellIdOf(key) !== null && this.stateOf(key) === 'undecided';
  }

  undecidedKeys(): string[] {
    return this.annotationKeys().filter((k) => this.stateOf(k) === 'undecided');
  }

  counts(): ReviewCounts {
    const out: ReviewCounts = { total: this.originals.size, accepted: 0, rejected: 0, edited: 0, added: 0, undecided: 0 };
    for (const key of this.annotationKeys()) {
      const s = this.stateOf(key);
      if (s === 'accepted') out.accepted++;
      else if (s === 'rejected') out.rejected++;
      else if (s === 'edited') out.edited++;
      else out.undecided++;
    }
    for (const c of this.store.all()) if (this.cellIdOf(c.key) === null) out.added++;
    return out;
  }

  getComments(): readonly ReviewCommentIO[] {
    return this.comments;
  }

  commentsOf(key: string | null): ReviewCommentIO[] {
    const id = key === null ? null : this.cellIdOf(key);
    if (key !== null && id === null) return [];
    return this.comments.filter((c) => (c.cell_id ?? null) === id);
  }

  // ------------------------------------------------------------ decisions (undoable)

  /** @internal used by commands */
  writeMarks(patch: [number, Mark | null][]): void {
    for (const [id, m] of patch) {
      if (m) this.marks.set(id, m);
      else this.marks.delete(id);
    }
    this.version += 1;
    this.events.emit('change', { keys: patch.map(([id]) => serverKey(id)) });
  }

  private markCommand(keys: Iterable<string>, mark: Mark | null, label: string): MarksCommand | null {
    const before: [number, Mark | null][] = [];
    const after: [number, Mark | null][] = [];
    for (const key of keys) {
      const id = this.cellIdOf(key);
      if (id === null) continue;
      const cur = this.marks.get(id) ?? null;
      if (cur === mark) continue;
      before.push([id, cur]);
      after.push([id, mark]);
    }
    return after.length ? new MarksCommand(this, label, before, after) : null;
  }

  /** Accepts annotator's cells (an edited cell stays edited: the expert's contour is what they accept). */
  accept(keys: Iterable<string>): number {
    const cmd = this.markCommand(keys, 'accept', 'accept cell');
    if (!cmd) return 0;
    this.store.history.execute(cmd);
    return cmd.size;
  }

  /** Rejects annotator's cells; added cells are removed instead. Returns how many changed. */
  reject(keys: Iterable<string>): number {
    const list = [...keys];
    const added = list.filter((k) => this.isAdded(k));
    const parts: Command[] = [];
    const markCmd = this.markCommand(list, 'reject', 'reject cell');
    if (markCmd) parts.push(markCmd);
    if (added.length) {
      const before: [string, Cell | null][] = [];
      const after: [string, Cell | null][] = [];
      for (const k of added) {
        const c = this.store.get(k);
        if (!c) continue;
        before.push([k, c]);
        after.push([k, null]);
      }
      if (after.length) parts.push(new CellsCommand(this.store, 'remove added cell', before, after));
    }
    if (!parts.length) return 0;
    this.store.history.execute(parts.length === 1 ? parts[0] : new CompositeCommand('reject cells', parts));
    return list.length;
  }

  /** Back to the annotator's contour and class, and undecided. */
  reset(keys: Iterable<string>): number {
    const list = [...keys];
    const parts: Command[] = [];
    const markCmd = this.markCommand(list, null, 'clear decision');
    if (markCmd) parts.push(markCmd);
    const before: [string, Cell | null][] = [];
    const after: [string, Cell | null][] = [];
    for (const key of list) {
      const o = this.original(key);
      const c = this.store.get(key);
      if (!o || !c || !this.isEdited(key)) continue;
      before.push([key, c]);
      after.push([key, { key, classId: o.classId, polygon: o.polygon }]);
    }
    if (after.length) parts.push(new CellsCommand(this.store, 'revert edit', before, after));
    if (!parts.length) return 0;
    this.store.history.execute(parts.length === 1 ? parts[0] : new CompositeCommand('reset decision', parts));
    return list.length;
  }

  // ------------------------------------------------------------ comments (not in the undo history)

  addComment(key: string | null, text: string): ReviewCommentIO | null {
    const t = text.trim();
    if (!t) return null;
    const id = key === null ? null : this.cellIdOf(key);
    const c: ReviewCommentIO = { cell_id: id, text: t, created_at: new Date().toISOString() };
    this.comments = [...this.comments, c];
    this.version += 1;
    this.events.emit('comments', null);
    return c;
  }

  removeComment(c: ReviewCommentIO): void {
    const next = this.comments.filter((x) => x !== c);
    if (next.length === this.comments.length) return;
    this.comments = next;
    this.version += 1;
    this.events.emit('comments', null);
  }

  // ------------------------------------------------------------ saving

  /**
   * The `PUT images/{id}/reviews/mine` body. Added cells without a class get
   * `defaultClassId` (the API needs a class for them).
   */
  payload(defaultClassId: number | null = this.defaultClassId): ReviewDraftBody {
    const decisions: ReviewDecisionIO[] = [];
    for (const o of this.originals.values()) {
      const key = serverKey(o.id);
      const s = this.stateOf(key);
      if (s === 'accepted') decisions.push({ cell_id: o.id, decision: 'accept' });
      else if (s === 'rejected') decisions.push({ cell_id: o.id, decision: 'reject' });
      else if (s === 'edited') {
        const c = this.store.get(key)!;
        const d: ReviewDecisionIO = { cell_id: o.id, decision: 'edit', polygon: c.polygon.map((p) => [p[0], p[1]] as Point) };
        if (c.classId !== o.classId && c.classId !== null) d.class_id = c.classId;
        decisions.push(d);
      }
    }
    const added = [];
    for (const c of this.store.all()) {
      if (this.cellIdOf(c.key) !== null) continue;
      const classId = c.classId ?? defaultClassId;
      if (classId === null) continue;
      added.push({ class_id: classId, polygon: c.polygon.map((p) => [p[0], p[1]] as Point) });
    }
    const comments = this.comments.map((c) => ({ cell_id: c.cell_id ?? null, text: c.text }));
    return { decisions, added, comments };
  }
}

// ------------------------------------------------------------------ cell navigation (N / Tab)

export interface OrderItem {
  key: string;
  polygon: readonly Point[];
}

/**
 * Reading order: rows of cells top to bottom (a row is as tall as the median
 * cell), left to right within a row. Stable for ties.
 */
export function readingOrder(items: OrderItem[]): string[] {
  if (!items.length) return [];
  const boxes = items.map((it) => {
    let minX = Infinity;
    let minY = Infinity;
    let maxX = -Infinity;
    let maxY = -Infinity;
    for (const [x, y] of it.polygon) {
      if (x < minX) minX = x;
      if (y < minY) minY = y;
      if (x > maxX) maxX = x;
      if (y > maxY) maxY = y;
    }
    return { key: it.key, cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, h: maxY - minY };
  });
  const heights = boxes.map((b) => b.h).sort((a, b) => a - b);
  const band = Math.max(1, heights[Math.floor(heights.length / 2)]);
  return boxes
    .map((b, i) => ({ ...b, i, row: Math.floor(b.cy / band) }))
    .sort((a, b) => a.row - b.row || a.cx - b.cx || a.i - b.i)
    .map((b) => b.key);
}

/**
 * The key after (dir 1) or before (dir -1) `current` in `order` that satisfies
 * `prefer`, wrapping around; when none does, simply the neighbour in the order.
 * Null for an empty order.
 */
export function nextKey(order: string[], current: string | null, dir: 1 | -1 = 1, prefer?: (key: string) => boolean): string | null {
  const n = order.length;
  if (!n) return null;
  const start = current === null ? -1 : order.indexOf(current);
  const from = start < 0 ? (dir === 1 ? -1 : n) : start;
  if (prefer) {
    for (let step = 1; step <= n; step++) {
      const k = order[(((from + dir * step) % n) + n) % n];
      if (k !== current && prefer(k)) return k;
    }
  }
  return order[(((from + dir) % n) + n) % n];
}
