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
 * - other 4xx: edits are kept, status `error` (field errors mapped to cell keys),
 *   the next edit or `retryNow()` tries again.
 */
import { ApiError, conflictState } from './api';
import { Emitter } from './events';
import type { AnnotationStore, Cell, SaveSnapshot } from './store';
import type { ApiCell, CellsResponse, SaveCellsBody } from './types';

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
  /** When status is offline: the backoff delay of the next retry (ms) ... */
  retryInMs: number | null;
  /** ... and when it happens (ms timestamp, `now()` clock). */
  retryAt: number | null;
  lastSavedAt: number | null;
}

export interface SaveApi {
  saveCells(imageId: number, body: SaveCellsBody, idempotencyKey?: string): Promise<CellsResponse>;
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
}

interface Attempt {
  snap: SaveSnapshot;
  key: string;
}

export function randomKey(): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (c?.randomUUID) return c.randomUUID();
  let s = '';
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}

export class AutosaveController {
  readonly events = new Emitter<{ state: AutosaveState }>();
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
  }

  /** Starts watching the store. */
  start(): this {
    this.stopped = false;
    this.unsubscribe?.();
    const offChange = this.store.events.on('change', (c) => {
      if (c.origin !== 'server') this.onEdit();
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
      errorKeys: this.errorKeys,
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
      attempt = { snap: this.store.snapshot(), key: this.newKey() };
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
      const resp = await this.api.saveCells(this.imageId, attempt.snap.body, attempt.key);
      this.pending = null;
      this.failures = 0;
      this.error = null;
      this.errorKeys = [];
      this.store.markSaved(attempt.snap, resp);
      this.lastSavedAt = this.now();
      this.setStatus(this.store.isDirty ? 'unsaved' : 'saved');
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, String((e as Error)?.message ?? e));
      const conflict = conflictState(err);
      if (conflict) {
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
        this.errorKeys = this.keysOfFieldErrors(err, attempt.snap);
        this.setStatus('error');
      }
    }
  }

  private keysOfFieldErrors(err: ApiError, snap: SaveSnapshot): string[] {
    const cells = (err.fieldErrors as { cells?: unknown }).cells;
    if (!cells || typeof cells !== 'object') return [];
    const keys: string[] = [];
    for (const idx of Object.keys(cells as object)) {
      const k = snap.keys[Number(idx)];
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
    if (!ok) throw new ApiError(0, this.conflict ? 'Resolve the conflict first' : 'Unsaved changes could not be saved');
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
