/**
 * Annotation store: the user's annotation layer of one image.
 *
 * - cells are keyed by a stable client key: `s<id>` for cells loaded from the
 *   server, `n<k>` (a local id) for cells drawn here; the key never changes, the
 *   server id is attached once a save assigns it (so undo history stays valid
 *   across saves);
 * - every user edit is a {@link Command} in {@link History}; server loads,
 *   conflict resolutions and accepted proposals write through
 *   {@link AnnotationStore.applyServerUpdate}/{@link AnnotationStore.load} and never
 *   enter the history;
 * - dirty tracking: `version` counts user changes, `savedVersion` is the version
 *   last acknowledged by the server; `dirtyKeys` the cells touched since;
 * - large images (slides): the store holds only the cells near the view
 *   ({@link AnnotationStore.applyRegion}, {@link AnnotationStore.dropOutside}) and saves by delta
 *   ({@link AnnotationStore.deltaSnapshot}, {@link AnnotationStore.markDeltaSaved},
 *   {@link AnnotationStore.takeServerVersion}).
 *
 * One module of ~850 lines on purpose: every path that writes cells (user edits, undo, server
 * loads, viewport reads, both save kinds, conflicts) shares the same private maps (server ids,
 * last-saved copies, dirty versions, revisions), and splitting them would expose those maps.
 */
import { Emitter } from './events';
import { clampRing, normalizeRing } from './geometry';
import { History, type Command } from './history';
import type { ApiCell, CellPayload, CellsResponse, DeltaBody, DeltaConflictItem, DeltaResponse, Point, Ring, SaveCellsBody } from './types';

export interface Cell {
  readonly key: string;
  readonly classId: number | null;
  readonly polygon: Ring;
}

export interface CellMeta {
  source?: string | null;
  score?: number | null;
  model_version?: string | number | null;
  author?: number | string | null;
  updated_at?: string;
  /** The layer's revision that last wrote the cell (what a delta save checks the edit against). */
  revision?: number;
}

export type ChangeOrigin = 'user' | 'undo' | 'redo' | 'server';

export interface StoreChange {
  added: string[];
  removed: string[];
  updated: string[];
  origin: ChangeOrigin;
}

export interface StoreEvents extends Record<string, unknown> {
  /** Incremental change: keys added / removed / updated. */
  change: StoreChange;
  /** Everything was replaced (server load, "take theirs"). */
  reset: { revision: number };
  /** Dirty flag or revision changed. */
  state: { dirty: boolean; revision: number; version: number };
}

/** What one save attempt sends; `keys[i]` is the store key of `body.cells[i]`. */
export interface SaveSnapshot {
  body: SaveCellsBody;
  keys: string[];
  version: number;
  /** Cells held back (see {@link AnnotationStore.snapshot}): still unsaved after this save. */
  held: string[];
}

/** What one delta save sends (`PATCH images/{id}/cells`); the keys of each list, in order. */
export interface DeltaSnapshot {
  body: DeltaBody;
  addedKeys: string[];
  changedKeys: string[];
  deletedKeys: string[];
  /** Keys whose changes cancel out (edited and undone): clean once this save succeeds. */
  unchangedKeys: string[];
  version: number;
  held: string[];
}

/** A box [x0, y0, x1, y1] in image pixels. */
export type Box = readonly [number, number, number, number];

type Patch = [key: string, cell: Cell | null][];

let localCounter = 0;
/** Per page load, so local keys from an earlier session (backups) never collide. */
const localPrefix = Math.floor(Math.random() * 36 ** 4).toString(36);

export function serverKey(id: number): string {
  return `s${id}`;
}

export class CellsCommand implements Command {
  constructor(
    private readonly store: AnnotationStore,
    readonly label: string,
    private readonly before: Patch,
    private readonly after: Patch,
  ) {}
  do(): void {
    this.store.writeCells(this.after, this.store.replaying ?? 'user');
  }
  /** The cells this command writes (kept in the store while it may be undone or redone). */
  keys(): string[] {
    return this.after.map(([k]) => k);
  }
  undo(): void {
    this.store.writeCells(this.before, 'undo');
  }
}

export class AnnotationStore {
  readonly events = new Emitter<StoreEvents>();
  readonly history: History;
  /** Base revision: the server revision our local state derives from. */
  revision = 0;
  version = 0;
  savedVersion = 0;
  /** @internal set while History.redo replays a command */
  replaying: ChangeOrigin | null = null;

  private cells = new Map<string, Cell>();
  private bounds: [width: number, height: number] | null = null;
  /** Per key, the version of the cell the server has (what a held-back cell is saved as). */
  private readonly lastSaved = new Map<string, Cell>();
  /** Keys held back by the last save: their local version is not on the server. */
  private held = new Set<string>();
  private readonly serverIdByKey = new Map<string, number>();
  private readonly keyByServerId = new Map<number, string>();
  /** Ids that exist in the server's annotation layer at `revision`. */
  private serverIds = new Set<number>();
  private readonly meta = new Map<string, CellMeta>();
  /** key -> version of its last user change */
  private readonly changedAt = new Map<string, number>();

  constructor(history = new History()) {
    this.history = history;
  }

  // ------------------------------------------------------------ reading
  get size(): number {
    return this.cells.size;
  }
  get(key: string): Cell | undefined {
    return this.cells.get(key);
  }
  has(key: string): boolean {
    return this.cells.has(key);
  }
  all(): IterableIterator<Cell> {
    return this.cells.values();
  }
  keys(): string[] {
    return [...this.cells.keys()];
  }
  getMeta(key: string): CellMeta | undefined {
    return this.meta.get(key);
  }
  serverIdOf(key: string): number | undefined {
    return this.serverIdByKey.get(key);
  }
  keyOfServerId(id: number): string | undefined {
    return this.keyByServerId.get(id);
  }
  get isDirty(): boolean {
    return this.version !== this.savedVersion || this.held.size > 0;
  }
  get dirtyKeys(): string[] {
    return [...this.changedAt.keys()];
  }

  /**
   * The image's size: once set, every vertex a user edit makes (draw, drag, split, merge,
   * restore) is clamped into [0, width] × [0, height], as the server refuses points outside
   * the image (a vertex dragged past the edge used to block every later save).
   */
  setBounds(width: number, height: number): void {
    this.bounds = [width, height];
  }

  private userRing(polygon: readonly (readonly number[])[]): Ring {
    const ring = normalizeRing(polygon);
    return this.bounds ? clampRing(ring, this.bounds[0], this.bounds[1]) : ring;
  }

  newLocalKey(): string {
    localCounter += 1;
    return `n${localPrefix}_${localCounter}`;
  }

  // ------------------------------------------------------------ user edits (undoable)

  addCell(polygon: Ring, classId: number | null, label = 'draw cell'): string {
    const key = this.newLocalKey();
    this.history.execute(new CellsCommand(this, label, [[key, null]], [[key, { key, classId, polygon: this.userRing(polygon) }]]));
    return key;
  }

  /** Several new cells in one undo step (e.g. the cells of a box prompt); returns their keys. */
  addCells(cells: { polygon: Ring; classId: number | null }[], label = 'add cells'): string[] {
    const keys = cells.map(() => this.newLocalKey());
    if (!keys.length) return [];
    this.history.execute(
      new CellsCommand(
        this,
        label,
        keys.map((k) => [k, null]),
        keys.map((k, i) => [k, { key: k, classId: cells[i].classId, polygon: this.userRing(cells[i].polygon) }]),
      ),
    );
    return keys;
  }

  updatePolygon(key: string, polygon: Ring, label = 'edit contour'): boolean {
    const old = this.cells.get(key);
    if (!old) return false;
    const next: Cell = { ...old, polygon: this.userRing(polygon) };
    this.history.execute(new CellsCommand(this, label, [[key, old]], [[key, next]]));
    return true;
  }

  /** Several polygons in one undo step (e.g. a multi-feature modify). */
  updatePolygons(updates: [key: string, polygon: Ring][], label = 'edit contour'): boolean {
    const before: Patch = [];
    const after: Patch = [];
    for (const [key, polygon] of updates) {
      const old = this.cells.get(key);
      if (!old) continue;
      before.push([key, old]);
      after.push([key, { ...old, polygon: this.userRing(polygon) }]);
    }
    if (!after.length) return false;
    this.history.execute(new CellsCommand(this, label, before, after));
    return true;
  }

  setClass(keys: Iterable<string>, classId: number | null, label = 'set class'): number {
    const before: Patch = [];
    const after: Patch = [];
    for (const key of keys) {
      const old = this.cells.get(key);
      if (!old || old.classId === classId) continue;
      before.push([key, old]);
      after.push([key, { ...old, classId }]);
    }
    if (after.length) this.history.execute(new CellsCommand(this, label, before, after));
    return after.length;
  }

  removeCells(keys: Iterable<string>, label = 'delete cell'): number {
    const before: Patch = [];
    const after: Patch = [];
    for (const key of new Set(keys)) {
      const old = this.cells.get(key);
      if (!old) continue;
      before.push([key, old]);
      after.push([key, null]);
    }
    if (after.length) this.history.execute(new CellsCommand(this, before.length > 1 ? `delete ${before.length} cells` : label, before, after));
    return after.length;
  }

  /** Replaces a cell by split pieces: the first (largest) keeps the cell's key. Returns the keys. */
  splitCell(key: string, pieces: Ring[]): string[] {
    const old = this.cells.get(key);
    if (!old || pieces.length < 2) return [];
    const keys = [key, ...pieces.slice(1).map(() => this.newLocalKey())];
    const before: Patch = keys.map((k, i) => [k, i === 0 ? old : null]);
    const after: Patch = keys.map((k, i) => [k, { key: k, classId: old.classId, polygon: this.userRing(pieces[i]) }]);
    this.history.execute(new CellsCommand(this, 'split cell', before, after));
    return keys;
  }

  /** Merges `b` into `a` with the union ring. */
  mergeCells(a: string, b: string, union: Ring): boolean {
    const ca = this.cells.get(a);
    const cb = this.cells.get(b);
    if (!ca || !cb || a === b) return false;
    this.history.execute(
      new CellsCommand(
        this,
        'merge cells',
        [
          [a, ca],
          [b, cb],
        ],
        [
          [a, { ...ca, classId: ca.classId ?? cb.classId, polygon: this.userRing(union) }],
          [b, null],
        ],
      ),
    );
    return true;
  }

  /** Makes the layer equal to `cells` in one undoable step; returns the number of changed cells. */
  replaceAll(cells: { key: string; classId: number | null; polygon: Ring }[], label: string): number {
    const before: Patch = [];
    const after: Patch = [];
    const seen = new Set<string>();
    for (const c of cells) {
      const polygon = this.userRing(c.polygon);
      if (polygon.length < 3 || seen.has(c.key)) continue;
      seen.add(c.key);
      const old = this.cells.get(c.key);
      if (old && old.classId === c.classId && sameRing(old.polygon, polygon)) continue;
      before.push([c.key, old ?? null]);
      after.push([c.key, { key: c.key, classId: c.classId, polygon }]);
    }
    for (const [key, old] of this.cells) {
      if (seen.has(key)) continue;
      before.push([key, old]);
      after.push([key, null]);
    }
    if (after.length) this.history.execute(new CellsCommand(this, label, before, after));
    return after.length;
  }

  undo(): Command | null {
    return this.history.undo();
  }

  redo(): Command | null {
    this.replaying = 'redo';
    try {
      return this.history.redo();
    } finally {
      this.replaying = null;
    }
  }

  /** @internal used by commands. */
  writeCells(patch: Patch, origin: ChangeOrigin): void {
    const change: StoreChange = { added: [], removed: [], updated: [], origin };
    for (const [key, cell] of patch) {
      const had = this.cells.has(key);
      if (cell) {
        this.cells.set(key, cell);
        (had ? change.updated : change.added).push(key);
      } else if (had) {
        this.cells.delete(key);
        change.removed.push(key);
      } else continue;
      if (origin !== 'server') this.changedAt.set(key, this.version + 1);
    }
    if (origin !== 'server') this.version += 1;
    this.events.emit('change', change);
    this.emitState();
  }

  // ------------------------------------------------------------ server side (never in history)

  /** Replaces everything with the server's layer and clears the history. */
  load(resp: CellsResponse): void {
    this.cells.clear();
    this.serverIdByKey.clear();
    this.keyByServerId.clear();
    this.meta.clear();
    this.changedAt.clear();
    this.lastSaved.clear();
    this.held = new Set();
    this.serverIds = new Set();
    for (const c of resp.cells) {
      const key = serverKey(c.id);
      const cell = this.cellFromApi(key, c);
      if (!cell) continue;
      this.cells.set(key, cell);
      this.lastSaved.set(key, cell);
      this.linkServerId(key, c.id);
      this.serverIds.add(c.id);
      this.meta.set(key, metaOf(c));
    }
    this.revision = resp.revision;
    this.version = 0;
    this.savedVersion = 0;
    this.history.clear();
    this.events.emit('reset', { revision: this.revision });
    this.emitState();
  }

  /**
   * Applies a server state that is not a user edit (accepted proposals, a
   * server-side change) without touching the history or the user's unsaved
   * edits. `full`: `cells` is the whole annotation layer; otherwise they are
   * upserted. When `full` is not given it is inferred: a response that contains
   * every cell we know on the server is the whole layer.
   */
  applyServerUpdate(resp: CellsResponse, full?: boolean): StoreChange {
    const ids = new Set(resp.cells.map((c) => c.id));
    const isFull = full ?? [...this.serverIds].every((id) => ids.has(id));
    const patch: Patch = [];
    for (const c of resp.cells) {
      let key = this.keyByServerId.get(c.id);
      if (key && this.changedAt.has(key)) {
        // the user changed it locally since: local edit wins, keep the link
        this.meta.set(key, metaOf(c));
        const server = this.cellFromApi(key, c);
        if (server) this.lastSaved.set(key, server);
        continue;
      }
      key ??= serverKey(c.id);
      const cell = this.cellFromApi(key, c);
      if (!cell) continue;
      this.linkServerId(key, c.id);
      this.meta.set(key, metaOf(c));
      const old = this.cells.get(key);
      if (!old || old.classId !== cell.classId || !sameRing(old.polygon, cell.polygon)) patch.push([key, cell]);
    }
    if (isFull) {
      for (const id of this.serverIds) {
        if (ids.has(id)) continue;
        const key = this.keyByServerId.get(id);
        if (key && this.cells.has(key) && !this.changedAt.has(key)) patch.push([key, null]);
      }
      this.serverIds = ids;
    } else {
      for (const id of ids) this.serverIds.add(id);
    }
    this.revision = resp.revision;
    const change = this.writeServerCells(patch);
    this.emitState();
    return change;
  }

  /**
   * "Keep mine" after a 409: adopt the server's revision as our base and
   * forget server ids that no longer exist there, leaving the local cells as
   * they are; the store becomes dirty so the autosave re-sends them.
   */
  rebase(serverRevision: number, serverCells: ApiCell[]): void {
    this.revision = serverRevision;
    this.serverIds = new Set(serverCells.map((c) => c.id));
    this.version += 1;
    this.emitState();
  }

  /**
   * "Keep both" after a 409: merge the server's layer into ours so that neither
   * side's work is lost, then rebase on the server's revision (the store becomes
   * dirty and the autosave sends the merged layer).
   *
   * - a server cell we never saw (the other person drew it) is added;
   * - a server cell we did not touch takes the server's geometry / class;
   * - a cell we edited or deleted keeps our edit / stays deleted;
   * - a cell the other person deleted goes, unless we edited it (then it is kept as new).
   *
   * Not an undoable user edit. Returns the keys added / updated / removed.
   */
  mergeServer(serverRevision: number, serverCells: ApiCell[]): StoreChange {
    const patch: Patch = [];
    const serverIdSet = new Set(serverCells.map((c) => c.id));
    for (const c of serverCells) {
      const key = this.keyByServerId.get(c.id);
      if (key === undefined) {
        const k = serverKey(c.id);
        const cell = this.cellFromApi(k, c);
        if (!cell) continue;
        this.linkServerId(k, c.id);
        this.meta.set(k, metaOf(c));
        patch.push([k, cell]);
        continue;
      }
      if (this.changedAt.has(key)) continue; // our edit (or deletion) wins
      const cell = this.cellFromApi(key, c);
      if (!cell) continue;
      this.meta.set(key, metaOf(c));
      const old = this.cells.get(key);
      if (!old || old.classId !== cell.classId || !sameRing(old.polygon, cell.polygon)) patch.push([key, cell]);
    }
    for (const id of this.serverIds) {
      if (serverIdSet.has(id)) continue;
      const key = this.keyByServerId.get(id);
      if (key && this.cells.has(key) && !this.changedAt.has(key)) patch.push([key, null]);
    }
    const change = this.writeServerCells(patch);
    this.rebase(serverRevision, serverCells);
    return change;
  }

  /** Writes the server's cells (outside the history, not marked as changed) and announces them. */
  private writeServerCells(patch: Patch): StoreChange {
    const change: StoreChange = { added: [], removed: [], updated: [], origin: 'server' };
    for (const [key, cell] of patch) {
      const had = this.cells.has(key);
      if (cell) {
        this.cells.set(key, cell);
        this.lastSaved.set(key, cell);
        (had ? change.updated : change.added).push(key);
      } else {
        this.cells.delete(key);
        this.lastSaved.delete(key);
        change.removed.push(key);
      }
    }
    if (patch.length) this.events.emit('change', change);
    return change;
  }

  // ------------------------------------------------------------ saving

  /**
   * The body of `PUT images/{id}/cells` for the current state.
   *
   * `hold`: cells the server refused. Their local version is held back so that it cannot
   * block the save of everything else: a cell the server has is sent as the server has it
   * (omitting it would delete it, the save is the whole layer), a new one is left out.
   * They stay local, dirty and in the backup ({@link SaveSnapshot.held}).
   */
  snapshot(hold?: ReadonlySet<string>): SaveSnapshot {
    const cells: CellPayload[] = [];
    const keys: string[] = [];
    const held: string[] = [];
    for (const local of this.cells.values()) {
      let cell = local;
      if (hold?.has(local.key)) {
        held.push(local.key);
        const sid = this.serverIdByKey.get(local.key);
        const saved = this.lastSaved.get(local.key);
        if (!saved || sid === undefined || !this.serverIds.has(sid)) continue;
        cell = saved;
      }
      const id = this.serverIdByKey.get(cell.key);
      const polygon = cell.polygon.map((p) => [p[0], p[1]] as Point);
      cells.push(id !== undefined && this.serverIds.has(id) ? { id, class_id: cell.classId, polygon } : { class_id: cell.classId, polygon });
      keys.push(cell.key);
    }
    return { body: { revision: this.revision, cells }, keys, version: this.version, held };
  }

  /**
   * A save of `snap` succeeded with `resp`. New cells get their server ids (by
   * position when the server kept the order, else by geometry); edits made
   * while the request was in flight stay dirty.
   */
  markSaved(snap: SaveSnapshot, resp: CellsResponse): void {
    const respIds = new Set(resp.cells.map((c) => c.id));
    const sentIds = new Set(snap.body.cells.map((c) => c.id).filter((x): x is number => x !== undefined));
    const sameOrder =
      resp.cells.length === snap.body.cells.length &&
      snap.body.cells.every((c, i) => c.id === undefined || c.id === resp.cells[i].id);
    const newKeys: number[] = []; // indexes into snap of cells sent without id
    snap.body.cells.forEach((c, i) => c.id === undefined && newKeys.push(i));
    const fresh = resp.cells.filter((c) => !sentIds.has(c.id));
    const assigned = new Map<number, ApiCell>(); // snap index -> response cell
    if (sameOrder) {
      for (const i of newKeys) assigned.set(i, resp.cells[i]);
    } else {
      // greedy nearest centroid match
      const pool = fresh.slice();
      for (const i of newKeys) {
        const c = centerOf(snap.body.cells[i].polygon);
        let best = -1;
        let bestD = Infinity;
        pool.forEach((r, j) => {
          const d = Math.hypot(centerOf(r.polygon)[0] - c[0], centerOf(r.polygon)[1] - c[1]);
          if (d < bestD) {
            bestD = d;
            best = j;
          }
        });
        if (best >= 0) assigned.set(i, pool.splice(best, 1)[0]);
      }
    }
    for (const [i, c] of assigned) {
      const key = snap.keys[i];
      this.linkServerId(key, c.id);
      this.meta.set(key, metaOf(c));
    }
    for (const c of resp.cells) {
      const key = this.keyByServerId.get(c.id);
      if (key) this.meta.set(key, metaOf(c));
    }
    this.serverIds = respIds;
    this.revision = resp.revision;
    this.savedVersion = Math.max(this.savedVersion, snap.version);
    const held = new Set(snap.held ?? []);
    for (const [key, v] of this.changedAt) if (v <= snap.version && !held.has(key)) this.changedAt.delete(key);
    this.held = held;
    // what the server has now: the cells as sent (a held-back cell as its saved version)
    const sentKeys = new Set(snap.keys);
    for (const key of [...this.lastSaved.keys()]) if (!sentKeys.has(key)) this.lastSaved.delete(key);
    snap.keys.forEach((key, i) => {
      const sent = snap.body.cells[i];
      this.lastSaved.set(key, { key, classId: sent.class_id ?? null, polygon: sent.polygon as Ring });
    });
    // cells the server added on its own (not expected from a PUT, but never drop data)
    const assignedIds = new Set([...assigned.values()].map((c) => c.id));
    const extra = resp.cells.filter((c) => !sentIds.has(c.id) && !assignedIds.has(c.id) && !this.keyByServerId.has(c.id));
    if (extra.length) this.applyServerUpdate({ revision: resp.revision, cells: extra }, false);
    this.emitState();
  }

  // ------------------------------------------------------------ large images: cells by viewport, saves by delta

  /**
   * Merges one viewport read (the cells whose box meets `box`, at `resp.revision`) without
   * touching the history or the user's unsaved edits: new and changed server cells come in (a
   * copy older than the one we know is ignored), and when `complete` (the read was not cut by
   * the page limit) a clean cell in the box that the server no longer has goes. The store's base
   * revision becomes the read's: what lies in view is now known as of it. Returns null (nothing
   * applied) for a read older than the store's revision (a save overtook it): read again.
   */
  applyRegion(resp: CellsResponse, box: Box, complete: boolean): StoreChange | null {
    if (resp.revision < this.revision) return null;
    const patch: Patch = [];
    const ids = new Set<number>();
    for (const c of resp.cells) {
      ids.add(c.id);
      const key = this.keyByServerId.get(c.id) ?? serverKey(c.id);
      const known = this.meta.get(key)?.revision;
      if (known !== undefined && c.revision !== undefined && c.revision < known) continue;
      const cell = this.cellFromApi(key, c);
      if (!cell) continue;
      this.linkServerId(key, c.id);
      this.serverIds.add(c.id);
      this.meta.set(key, metaOf(c));
      if (this.changedAt.has(key)) {
        this.lastSaved.set(key, cell); // the user's edit wins; its base is the server's copy
        continue;
      }
      const old = this.cells.get(key);
      if (!old || old.classId !== cell.classId || !sameRing(old.polygon, cell.polygon)) patch.push([key, cell]);
    }
    if (complete) {
      for (const [key, cell] of this.cells) {
        const id = this.serverIdByKey.get(key);
        if (id === undefined || ids.has(id) || !this.serverIds.has(id) || this.changedAt.has(key)) continue;
        if (!boxesMeet(ringBox(cell.polygon), box)) continue;
        patch.push([key, null]); // deleted on the server (or moved out of the box)
        this.serverIds.delete(id);
      }
    }
    this.revision = resp.revision;
    const change = this.writeServerCells(patch);
    this.emitState();
    return change;
  }

  /**
   * Forgets the clean cells lying wholly outside `keep` (far from the view), except `pinned`
   * ones (selected) and those the undo history may still write: the store stays small on a
   * slide, and a dropped cell comes back from the server when it is in view again.
   */
  dropOutside(keep: Box, pinned: Iterable<string> = []): number {
    const stay = new Set(pinned);
    for (const cmd of this.history.commands()) if (cmd instanceof CellsCommand) for (const k of cmd.keys()) stay.add(k);
    const patch: Patch = [];
    for (const [key, cell] of this.cells) {
      if (stay.has(key) || this.changedAt.has(key) || this.held.has(key)) continue;
      if (boxesMeet(ringBox(cell.polygon), keep)) continue;
      patch.push([key, null]);
    }
    this.writeServerCells(patch);
    for (const [key] of patch) {
      const id = this.serverIdByKey.get(key);
      if (id !== undefined) {
        this.serverIds.delete(id);
        this.keyByServerId.delete(id);
      }
      this.serverIdByKey.delete(key);
      this.meta.delete(key);
    }
    return patch.length;
  }

  /**
   * The body of a delta save (`PATCH images/{id}/cells`): only the cells changed since the last
   * save. `hold`: refused cells, left out (they stay dirty). A changed or deleted cell carries the
   * revision of its server copy, so a save never overwrites what another doctor saved meanwhile.
   */
  deltaSnapshot(hold?: ReadonlySet<string>): DeltaSnapshot {
    const snap: DeltaSnapshot = {
      body: { base_revision: this.revision, added: [], changed: [], deleted: [] },
      addedKeys: [],
      changedKeys: [],
      deletedKeys: [],
      unchangedKeys: [],
      version: this.version,
      held: [],
    };
    for (const key of this.changedAt.keys()) {
      if (hold?.has(key)) {
        snap.held.push(key);
        continue;
      }
      const cell = this.cells.get(key);
      const id = this.serverIdByKey.get(key);
      const onServer = id !== undefined && this.serverIds.has(id);
      const revision = this.meta.get(key)?.revision;
      const polygon = cell?.polygon.map((p) => [p[0], p[1]] as Point);
      if (cell && polygon && onServer) {
        const saved = this.lastSaved.get(key);
        if (saved && saved.classId === cell.classId && sameRing(saved.polygon, cell.polygon)) snap.unchangedKeys.push(key);
        else {
          snap.body.changed.push({ id: id!, ...(revision !== undefined ? { revision } : {}), class_id: cell.classId, polygon });
          snap.changedKeys.push(key);
        }
      } else if (cell && polygon) {
        snap.body.added.push({ class_id: cell.classId, polygon });
        snap.addedKeys.push(key);
      } else if (onServer) {
        snap.body.deleted.push(revision !== undefined ? { id: id!, revision } : id!);
        snap.deletedKeys.push(key);
      } else snap.unchangedKeys.push(key); // drawn and deleted before any save
    }
    return snap;
  }

  /** True when the delta sends nothing (its edits cancelled out): no request is needed. */
  static deltaEmpty(snap: DeltaSnapshot): boolean {
    return !snap.body.added.length && !snap.body.changed.length && !snap.body.deleted.length;
  }

  /**
   * A delta save of `snap` succeeded with `resp` (null: nothing had to be sent). New cells get
   * their ids (the answer keeps the request's order); edits made meanwhile stay dirty. Returns
   * false when others saved between our base and this save (`resp.revision` is not the next
   * one): the base revision then stays, and the caller reads the view again.
   */
  markDeltaSaved(snap: DeltaSnapshot, resp: DeltaResponse | null): boolean {
    if (resp) {
      snap.addedKeys.forEach((key, i) => {
        const c = resp.added[i];
        if (!c) return;
        this.linkServerId(key, c.id);
        this.serverIds.add(c.id);
        this.meta.set(key, metaOf(c));
        this.lastSaved.set(key, { key, classId: c.class_id ?? null, polygon: normalizeRing(c.polygon) });
      });
      snap.changedKeys.forEach((key, i) => {
        const c = resp.changed[i];
        if (!c) return;
        this.meta.set(key, metaOf(c));
        this.lastSaved.set(key, { key, classId: c.class_id ?? null, polygon: normalizeRing(c.polygon) });
      });
      for (const key of snap.deletedKeys) {
        const id = this.serverIdByKey.get(key);
        if (id !== undefined) this.serverIds.delete(id);
        this.lastSaved.delete(key);
      }
    }
    const sent = new Set([...snap.addedKeys, ...snap.changedKeys, ...snap.deletedKeys, ...snap.unchangedKeys]);
    for (const key of sent) if ((this.changedAt.get(key) ?? Infinity) <= snap.version) this.changedAt.delete(key);
    this.savedVersion = Math.max(this.savedVersion, snap.version);
    this.held = new Set(snap.held);
    const inStep = !resp || resp.revision === this.revision + 1;
    if (resp && inStep) this.revision = resp.revision;
    this.emitState();
    return inStep;
  }

  /**
   * After a 409 to a delta save: every cell of `snap` that a conflict names takes the server's
   * version (`cells`; gone when `deleted` or absent), our edit of it dropped (not undoable: a
   * server update); an added cell that overlapped another's new outline is removed, and that
   * outline comes in. The rest of our edits stay dirty and are sent again. Returns the keys of
   * the server's cells concerned (to show them) and how many edits were dropped.
   */
  takeServerVersion(snap: DeltaSnapshot, conflicts: readonly DeltaConflictItem[], cells: readonly ApiCell[]): { keys: string[]; dropped: number } {
    const byItem = (item: string): string | undefined => {
      const [list, index] = item.split('.');
      const keys = list === 'added' ? snap.addedKeys : list === 'changed' ? snap.changedKeys : list === 'deleted' ? snap.deletedKeys : [];
      return keys[Number(index)];
    };
    const patch: Patch = [];
    const dropped = new Set<string>();
    for (const c of conflicts) {
      const key = byItem(c.item);
      if (key === undefined || dropped.has(key)) continue;
      dropped.add(key);
      this.changedAt.delete(key);
      if (snap.addedKeys.includes(key)) patch.push([key, null]);
      else {
        // back to the copy we had from the server (the server's newer one follows where it has one)
        const saved = this.lastSaved.get(key);
        patch.push([key, saved ?? null]);
      }
    }
    const shown: string[] = [];
    const server = new Map(cells.map((c) => [c.id, c]));
    for (const c of conflicts) {
      if (c.id === null) continue; // an added cell refused in a locked region: dropped above
      const key = this.keyByServerId.get(c.id) ?? serverKey(c.id);
      const found = server.get(c.id);
      if (!found) {
        if (this.cells.has(key)) patch.push([key, null]);
        this.serverIds.delete(c.id);
        this.lastSaved.delete(key);
        continue;
      }
      const cell = this.cellFromApi(key, found);
      if (!cell) continue;
      this.linkServerId(key, c.id);
      this.serverIds.add(c.id);
      this.meta.set(key, metaOf(found));
      patch.push([key, cell]);
      shown.push(key);
    }
    // later entries win: the server's versions come after the reverted copies
    this.writeServerCells(dedupeLast(patch));
    this.emitState();
    return { keys: [...new Set(shown)], dropped: dropped.size };
  }

  // ------------------------------------------------------------ helpers

  private linkServerId(key: string, id: number): void {
    const oldId = this.serverIdByKey.get(key);
    if (oldId !== undefined && oldId !== id) this.keyByServerId.delete(oldId);
    this.serverIdByKey.set(key, id);
    this.keyByServerId.set(id, key);
  }

  private cellFromApi(key: string, c: ApiCell): Cell | null {
    const polygon = normalizeRing(c.polygon ?? []);
    if (polygon.length < 3) return null;
    return { key, classId: c.class_id ?? null, polygon };
  }

  private emitState(): void {
    this.events.emit('state', { dirty: this.isDirty, revision: this.revision, version: this.version });
  }
}

function metaOf(c: ApiCell): CellMeta {
  return { source: c.source, score: c.score, model_version: c.model_version, author: c.author, updated_at: c.updated_at, ...(c.revision !== undefined ? { revision: c.revision } : {}) };
}

/** The patch with each key once, at its last entry's value. */
function dedupeLast(patch: Patch): Patch {
  const last = new Map<string, Cell | null>();
  for (const [k, c] of patch) last.set(k, c);
  return [...last];
}

/** The bounding box [x0, y0, x1, y1] of a ring. */
export function ringBox(ring: readonly (readonly number[])[]): Box {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (const p of ring) {
    if (p[0] < x0) x0 = p[0];
    if (p[0] > x1) x1 = p[0];
    if (p[1] < y0) y0 = p[1];
    if (p[1] > y1) y1 = p[1];
  }
  return [x0, y0, x1, y1];
}

/** Whether two boxes meet (touching edges count, as the server's bbox read). */
export function boxesMeet(a: Box, b: Box): boolean {
  return a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3];
}

function sameRing(a: Ring, b: Ring): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i][0] !== b[i][0] || a[i][1] !== b[i][1]) return false;
  return true;
}

function centerOf(poly: readonly Point[]): Point {
  let x = 0;
  let y = 0;
  for (const p of poly) {
    x += p[0];
    y += p[1];
  }
  return poly.length ? [x / poly.length, y / poly.length] : [0, 0];
}
