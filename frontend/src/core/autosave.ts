/**
 * Autosave controller: saves the whole annotation layer with
 * `PUT images/{id}/cells` ~800 ms after the last edit.
 *
 * - each save attempt carries the base revision and an `Idempotency-Key`; a
 *   failed attempt (network / 5xx / 429) is retried with the SAME payload and key
 *   (exponential backoff), so a save that reached the server but whose answer was
 *   lost is not applied twice; later edits go in the next save;
 * - 409: local edits are kept and a {@link Conflict} is exposed; the UI calls
 *   {@link AutosaveController.keepMine} or {@link AutosaveController.takeTheirs};
 * - 400 naming cells (`errors: {"cells.5": "..."}`): those cells are *refused*. The
 *   controller at once saves again with them held back (see `AnnotationStore.snapshot`:
 *   a cell the server has is sent as the server has it, a new one is left out), so one bad
 *   cell never blocks the doctor's other edits; the refused cells stay local, dirty, in the
 *   backup and marked (status `error`, `errorKeys`, `refused` with the server's reasons)
 *   until they are edited again (or `retryNow()`), when they are sent once more. Sending
 *   only the valid cells and keeping the rest local was chosen over mapping errors alone
 *   (nothing saved until the doctor finds and fixes the cell) because that lost every
 *   later split, merge and deletion whenever the page was closed;
 * - other 4xx: edits are kept, status `error` (field errors mapped to cell keys),
 *   the next edit or `retryNow()` tries again.
 */
import { ApiError, conflictState, deltaConflictState } from './api';
import { Emitter } from './events';
import { AnnotationStore, type Cell, type DeltaSnapshot, type SaveSnapshot } from './store';
import type { ApiCell, CellsResponse, DeltaBody, DeltaResponse, SaveCellsBody } from './types';

export type SaveStatus = 'saved' | 'saving' | 'unsaved' | 'offline' | 'conflict' | 'error';

export interface Conflict {
  detail: string;
  serverRevision: number;
  serverCells: ApiCell[];
  localCells: Cell[];
}

export interface AutosaveState {
  status: SaveStatus;
  conflict: Conflict | null;
  error: ApiError | null;
  /** Store keys of the cells named by a 400's field errors. */
  errorKeys: string[];
  /** Cells the server refused, by store key: the server's reason (see {@link refusalSentence}). */
  refused: ReadonlyMap<string, string>;
  /** When status is offline: the backoff delay of the next retry (ms) ... */
  retryInMs: number | null;
  /** ... and when it happens (ms timestamp, `now()` clock). */
  retryAt: number | null;
  lastSavedAt: number | null;
}

export interface SaveApi {
  saveCells(imageId: number, body: SaveCellsBody, idempotencyKey?: string): Promise<CellsResponse>;
  /** Needed in `delta` mode. */
  saveCellsDelta?(imageId: number, body: DeltaBody, idempotencyKey?: string): Promise<DeltaResponse>;
}

/** A 409 to a delta save, resolved by taking the server's version of the cells concerned. */
export interface DeltaConflictResolved {
  /** Store keys of the server's cells concerned (to show them). */
  keys: string[];
  /** How many of our edits were dropped. */
  dropped: number;
  detail: string;
  /** The edits were refused because they lie in a region under review or verified (not others' edits). */
  regionLocked: boolean;
}

export interface AutosaveOptions {
  api: SaveApi;
  store: AnnotationStore;
  imageId: number;
  debounceMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  newIdempotencyKey?: () => string;
  now?: () => number;
  /**
   * `layer` (default): every save is the whole layer (`PUT`). `delta` (large images, whose store
   * holds only the cells near the view): only the changed cells (`PATCH`); a 409 takes the
   * server's version of the cells it names and saves the rest again ({@link DeltaConflictResolved}).
   */
  mode?: 'layer' | 'delta';
}

interface Attempt {
  snap: SaveSnapshot | DeltaSnapshot;
  key: string;
}

function isDelta(snap: SaveSnapshot | DeltaSnapshot): snap is DeltaSnapshot {
  return 'addedKeys' in snap;
}

/** The store keys of a delta's items named by a 400 (`added.3.polygon`, `changed.0`), with the reason. */
export function deltaErrorsOf(fieldErrors: Record<string, unknown>, snap: DeltaSnapshot): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(fieldErrors)) {
    const m = /^(added|changed|deleted)\.(\d+)(?:\.|$)/.exec(k);
    if (!m) continue;
    const keys = m[1] === 'added' ? snap.addedKeys : m[1] === 'changed' ? snap.changedKeys : snap.deletedKeys;
    const key = keys[Number(m[2])];
    const text = Array.isArray(v) ? v.join('; ') : String(v);
    if (key) out.set(key, [out.get(key), text].filter(Boolean).join('; '));
  }
  return out;
}

export function randomKey(): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (c?.randomUUID) return c.randomUUID();
  let s = '';
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}

/**
 * The per-cell errors of a 400 by index into the saved cells: `{"cells.5": "..."}` (the
 * server's shape), `{"cells": {"5": ...}}` or `{"cells": [null, ...]}`.
 */
export function cellErrorsOf(fieldErrors: Record<string, unknown>): Map<number, string> {
  const out = new Map<number, string>();
  const text = (v: unknown): string =>
    typeof v === 'string' ? v : Array.isArray(v) ? v.map(text).filter(Boolean).join('; ') : v && typeof v === 'object' ? Object.values(v).map(text).filter(Boolean).join('; ') : '';
  for (const [k, v] of Object.entries(fieldErrors)) {
    const m = /^cells\.(\d+)(?:\.|$)/.exec(k);
    if (m) {
      const i = Number(m[1]);
      out.set(i, [out.get(i), text(v)].filter(Boolean).join('; '));
    } else if (k === 'cells' && v && typeof v === 'object') {
      for (const [i, x] of Object.entries(v as object)) {
        const msg = text(x);
        if (/^\d+$/.test(i) && msg) out.set(Number(i), msg);
      }
    }
  }
  return out;
}

/** A sentence a doctor understands for the server's reason to refuse a cell. */
export function refusalSentence(reason: string): string {
  const r = reason.toLowerCase();
  if (r.includes('outside the image')) return 'part of its outline lies outside the image — drag the points back onto the image';
  if (r.includes('self-intersect') || r.includes('simple polygon') || r.includes('cross')) return 'its outline crosses itself — move the points so that the outline does not cross';
  if (r.includes('zero area') || r.includes('distinct vertices') || r.includes('at least 3')) return 'its outline is too small or flat — draw it again';
  if (r.includes('class')) return 'its class no longer exists in this project — give it another class (1–9)';
  if (r.includes('vertices') && r.includes('limit')) return 'its outline has too many points — simplify it or draw it again';
  if (r.includes('appears twice')) return 'it was sent twice — reload the image';
  return `the server could not store it (${reason})`;
}

export class AutosaveController {
  readonly events = new Emitter<{ state: AutosaveState; refused: { keys: string[]; reasons: string[] }; deltaConflict: DeltaConflictResolved; behind: { revision: number } }>();
  readonly mode: 'layer' | 'delta';
  readonly debounceMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly api: SaveApi;
  private readonly store: AnnotationStore;
  private readonly imageId: number;
  private readonly newKey: () => string;
  private readonly now: () => number;

  private status: SaveStatus = 'saved';
  private conflict: Conflict | null = null;
  private error: ApiError | null = null;
  private errorKeys: string[] = [];
  /** Cells the server refused (key → reason): held back from the saves until edited again. */
  private readonly refused = new Map<string, string>();
  private retryInMs: number | null = null;
  private retryAt: number | null = null;
  private lastSavedAt: number | null = null;

  private debounceTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private inflight: Promise<void> | null = null;
  /** An attempt that failed transiently: retried as is. */
  private pending: Attempt | null = null;
  private failures = 0;
  private lockCount = 0;
  private unsubscribe: (() => void) | null = null;
  private stopped = false;

  constructor(opts: AutosaveOptions) {
    this.api = opts.api;
    this.store = opts.store;
    this.imageId = opts.imageId;
    this.debounceMs = opts.debounceMs ?? 800;
    this.backoffInitialMs = opts.backoffInitialMs ?? 1000;
    this.backoffMaxMs = opts.backoffMaxMs ?? 30000;
    this.newKey = opts.newIdempotencyKey ?? randomKey;
    this.now = opts.now ?? (() => Date.now());
    this.mode = opts.mode ?? 'layer';
  }

  private snapshot(): SaveSnapshot | DeltaSnapshot {
    return this.mode === 'delta' ? this.store.deltaSnapshot(this.heldKeys()) : this.store.snapshot(this.heldKeys());
  }

  /** Starts watching the store. */
  start(): this {
    this.stopped = false;
    this.unsubscribe?.();
    const offChange = this.store.events.on('change', (c) => {
      if (c.origin === 'server') return;
      // an edited (or deleted, or undone) refused cell gets another chance
      for (const k of [...c.added, ...c.updated, ...c.removed]) this.refused.delete(k);
      this.onEdit();
    });
    const offState = this.store.events.on('state', (s) => {
      if (s.dirty && this.status === 'saved') this.onEdit();
    });
    this.unsubscribe = () => {
      offChange();
      offState();
    };
    return this;
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.clearTimers();
  }

  get state(): AutosaveState {
    return {
      status: this.status,
      conflict: this.conflict,
      error: this.error,
      errorKeys: this.refused.size ? [...this.refused.keys()] : this.errorKeys,
      refused: new Map(this.refused),
      retryInMs: this.retryInMs,
      retryAt: this.retryAt,
      lastSavedAt: this.lastSavedAt,
    };
  }

  /** True while something would be lost by closing the page. */
  get hasUnsaved(): boolean {
    return this.store.isDirty || this.pending !== null || this.inflight !== null || this.conflict !== null;
  }

  private onEdit(): void {
    if (this.conflict) return; // wait for the user's decision
    if (this.status !== 'offline' && this.status !== 'saving') this.setStatus('unsaved');
    this.schedule();
  }

  /** (Re)starts the debounce timer; while a retry is pending the retry timer does the job. */
  schedule(delay = this.debounceMs): void {
    if (this.stopped || this.conflict) return;
    if (this.retryTimer) return;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = null;
      void this.save();
    }, delay);
  }

  /** Retries at once (e.g. on the browser's `online` event or a click on "retry"). */
  retryNow(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.status === 'error') {
      this.error = null;
      this.errorKeys = [];
      this.refused.clear();
    }
    return this.save();
  }

  /** Starts a save now unless one is running (then another follows it). */
  save(): Promise<void> {
    if (this.debounceTimer) {
      clearTimeout(this.debounceTimer);
      this.debounceTimer = null;
    }
    if (this.inflight) return this.inflight;
    if (this.conflict || this.lockCount > 0) return Promise.resolve();
    let attempt = this.pending;
    if (!attempt) {
      if (!this.store.isDirty) {
        if (this.status !== 'error') this.setStatus('saved');
        return Promise.resolve();
      }
      attempt = { snap: this.snapshot(), key: this.newKey() };
    }
    const run = this.run(attempt).finally(() => {
      this.inflight = null;
      if (this.stopped || this.conflict || this.lockCount > 0) return;
      if (this.status === 'unsaved' || (this.status === 'saved' && this.store.isDirty)) this.schedule();
    });
    this.inflight = run;
    return run;
  }

  private async run(attempt: Attempt): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryInMs = null;
    this.retryAt = null;
    this.setStatus('saving');
    try {
      const snap = attempt.snap;
      if (isDelta(snap)) {
        const empty = AnnotationStore.deltaEmpty(snap);
        if (!empty && !this.api.saveCellsDelta) throw new ApiError(0, 'this client cannot save by delta');
        const resp = empty ? null : await this.api.saveCellsDelta!(this.imageId, snap.body, attempt.key);
        if (!this.store.markDeltaSaved(snap, resp) && resp) this.events.emit('behind', { revision: resp.revision });
      } else {
        const resp = await this.api.saveCells(this.imageId, snap.body, attempt.key);
        this.store.markSaved(snap, resp);
      }
      this.pending = null;
      this.failures = 0;
      this.errorKeys = [];
      this.lastSavedAt = this.now();
      if (attempt.snap.held.length && this.refused.size) {
        // everything else is saved; the refused cells wait for an edit (no save loop)
        this.setStatus(this.store.version !== this.store.savedVersion ? 'unsaved' : 'error');
        return;
      }
      this.error = null;
      this.setStatus(this.store.isDirty ? 'unsaved' : 'saved');
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, String((e as Error)?.message ?? e));
      const deltaConflict = isDelta(attempt.snap) ? deltaConflictState(err) : null;
      const conflict = isDelta(attempt.snap) ? null : conflictState(err);
      if (deltaConflict && isDelta(attempt.snap)) {
        // edits that meet others' edits take the server's version; the rest is sent again
        this.pending = null;
        this.failures = 0;
        const taken = this.store.takeServerVersion(attempt.snap, deltaConflict.conflicts, deltaConflict.cells);
        this.events.emit('deltaConflict', { ...taken, detail: err.detail, regionLocked: deltaConflict.conflicts.some((c) => c.reason === 'region_locked') });
        this.setStatus(this.store.isDirty ? 'unsaved' : 'saved');
      } else if (conflict) {
        this.pending = null;
        this.failures = 0;
        this.conflict = {
          detail: err.detail,
          serverRevision: conflict.revision,
          serverCells: conflict.cells,
          localCells: [...this.store.all()],
        };
        this.setStatus('conflict');
      } else if (err.isTransient) {
        this.pending = attempt;
        this.failures += 1;
        const delay = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** (this.failures - 1));
        this.retryInMs = delay;
        this.retryAt = this.now() + delay;
        this.error = err;
        this.setStatus('offline');
        if (!this.stopped) {
          this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            void this.save();
          }, delay);
        }
      } else {
        this.pending = null;
        this.failures = 0;
        this.error = err;
        const fresh = err.status === 400 ? this.refuse(err, attempt.snap) : [];
        if (fresh.length) {
          this.events.emit('refused', { keys: fresh, reasons: fresh.map((k) => this.refused.get(k) ?? '') });
          // save the rest now, the refused cells held back (the set only grows: this ends)
          await this.run({ snap: this.snapshot(), key: this.newKey() });
          return;
        }
        this.errorKeys = this.keysOfFieldErrors(err, attempt.snap);
        this.setStatus('error');
      }
    }
  }

  private heldKeys(): Set<string> | undefined {
    return this.refused.size ? new Set(this.refused.keys()) : undefined;
  }

  /** Records the cells a 400 names as refused; returns the keys refused for the first time. */
  private refuse(err: ApiError, snap: SaveSnapshot | DeltaSnapshot): string[] {
    const fresh: string[] = [];
    if (isDelta(snap)) {
      for (const [k, reason] of deltaErrorsOf(err.fieldErrors, snap)) {
        if (this.refused.has(k) || !this.store.has(k)) continue;
        this.refused.set(k, reason);
        fresh.push(k);
      }
      return fresh;
    }
    for (const [i, reason] of cellErrorsOf(err.fieldErrors)) {
      const k = snap.keys[i];
      if (!k || this.refused.has(k) || !this.store.has(k)) continue;
      this.refused.set(k, reason);
      fresh.push(k);
    }
    return fresh;
  }

  private keysOfFieldErrors(err: ApiError, snap: SaveSnapshot | DeltaSnapshot): string[] {
    if (isDelta(snap)) return [...deltaErrorsOf(err.fieldErrors, snap).keys()];
    const keys: string[] = [];
    for (const i of cellErrorsOf(err.fieldErrors).keys()) {
      const k = snap.keys[i];
      if (k) keys.push(k);
    }
    return keys;
  }

  /**
   * Saves everything now and waits. Resolves true when the server has it all,
   * false when it could not (offline, conflict, error).
   */
  async flush(): Promise<boolean> {
    for (let i = 0; i < 5; i++) {
      if (this.inflight) {
        await this.inflight;
        continue;
      }
      if (this.conflict || this.status === 'error' || this.status === 'offline') return false;
      if (!this.store.isDirty && !this.pending) return true;
      await this.save();
      const st = this.status as SaveStatus;
      if (st === 'offline' || st === 'conflict' || st === 'error') return false;
    }
    return !this.store.isDirty && !this.pending;
  }

  /**
   * Runs a server operation that depends on the current revision (accepting
   * proposals, a workflow transition) after flushing, with autosave paused.
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const ok = await this.flush();
    if (!ok) {
      // not a network failure (status 0 reads "the server cannot be reached"): the server refused a cell
      if (!this.conflict && this.refused.size) throw new ApiError(400, 'a cell shown in red could not be saved — correct it first');
      throw new ApiError(0, this.conflict ? 'Resolve the conflict first' : 'Unsaved changes could not be saved');
    }
    this.lockCount += 1;
    try {
      return await fn();
    } finally {
      this.lockCount -= 1;
      if (this.store.isDirty) this.schedule();
    }
  }

  /** Shows a conflict found outside a save (e.g. a local backup on a newer server revision). */
  setConflict(conflict: Conflict): void {
    this.clearTimers();
    this.pending = null;
    this.conflict = conflict;
    this.setStatus('conflict');
  }

  /** Keep my cells: re-save them on top of the server's revision. */
  keepMine(): Promise<void> {
    return this.resolveAndSave((c) => this.store.rebase(c.serverRevision, c.serverCells));
  }

  /** Keep both: merge the server's cells into mine (see `AnnotationStore.mergeServer`) and save. */
  keepBoth(): Promise<void> {
    return this.resolveAndSave((c) => this.store.mergeServer(c.serverRevision, c.serverCells));
  }

  /** Ends the conflict by adopting the server's state into the store (`adopt`), then saves. */
  private resolveAndSave(adopt: (c: Conflict) => void): Promise<void> {
    const c = this.conflict;
    if (!c) return Promise.resolve();
    this.conflict = null;
    adopt(c);
    this.setStatus('unsaved');
    return this.save();
  }

  /** Take the server's cells: local edits are dropped (and the history cleared). */
  takeTheirs(): void {
    const c = this.conflict;
    if (!c) return;
    this.conflict = null;
    this.pending = null;
    this.clearTimers();
    this.store.load({ revision: c.serverRevision, cells: c.serverCells });
    this.setStatus('saved');
  }

  /** `beforeunload` warning while anything is unsaved. Returns the uninstaller. */
  installBeforeUnload(target: Pick<Window, 'addEventListener' | 'removeEventListener'> = window): () => void {
    const handler = (e: BeforeUnloadEvent) => {
      if (!this.hasUnsaved) return undefined;
      e.preventDefault();
      e.returnValue = '';
      return '';
    };
    target.addEventListener('beforeunload', handler as EventListener);
    return () => target.removeEventListener('beforeunload', handler as EventListener);
  }

  private clearTimers(): void {
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.debounceTimer = null;
    this.retryTimer = null;
    this.retryInMs = null;
    this.retryAt = null;
  }

  private setStatus(s: SaveStatus): void {
    this.status = s;
    this.events.emit('state', this.state);
  }
}
