/**
 * Debounced autosave of a whole draft (the expert's review: `PUT
 * images/{id}/reviews/mine` replaces the draft, so every save sends it all).
 *
 * - `changed()` after each edit; the draft is saved `debounceMs` later;
 * - network failure / 5xx / 429: status `offline`, retried with exponential
 *   backoff (edits made meanwhile are included: the payload is rebuilt);
 * - 409 (review submitted elsewhere, image left review): status `locked`, no more saves;
 * - other 4xx: status `error`, the next edit or `retryNow()` tries again.
 */
import { ApiError } from './api';
import { Emitter } from './events';
import type { DraftSource } from './review';

export type DraftStatus = 'saved' | 'saving' | 'unsaved' | 'offline' | 'error' | 'locked';

export interface DraftSaverState {
  status: DraftStatus;
  error: ApiError | null;
  retryAt: number | null;
  lastSavedAt: number | null;
}

export interface DraftSaverOptions<T> {
  source: DraftSource<T>;
  save: (payload: T) => Promise<unknown>;
  debounceMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  now?: () => number;
}

export class DraftSaver<T> {
  readonly events = new Emitter<{ state: DraftSaverState }>();
  private readonly source: DraftSource<T>;
  private readonly saveFn: (payload: T) => Promise<unknown>;
  readonly debounceMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly now: () => number;
  private status: DraftStatus = 'saved';
  private error: ApiError | null = null;
  private retryAt: number | null = null;
  private lastSavedAt: number | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inflight: Promise<void> | null = null;
  private failures = 0;
  private stopped = false;

  constructor(opts: DraftSaverOptions<T>) {
    this.source = opts.source;
    this.saveFn = opts.save;
    this.debounceMs = opts.debounceMs ?? 900;
    this.backoffInitialMs = opts.backoffInitialMs ?? 1000;
    this.backoffMaxMs = opts.backoffMaxMs ?? 30000;
    this.now = opts.now ?? (() => Date.now());
  }

  get state(): DraftSaverState {
    return { status: this.status, error: this.error, retryAt: this.retryAt, lastSavedAt: this.lastSavedAt };
  }

  get hasUnsaved(): boolean {
    return this.source.version !== this.source.savedVersion || this.inflight !== null;
  }

  /** Call after every change of the draft. */
  changed(): void {
    if (this.stopped || this.status === 'locked') return;
    if (this.status === 'offline') return; // the retry timer saves everything
    if (this.status !== 'saving') this.set('unsaved');
    this.schedule(this.debounceMs);
  }

  private schedule(delay: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.save();
    }, delay);
  }

  retryNow(): Promise<void> {
    if (this.status === 'locked') return Promise.resolve();
    if (this.status === 'error') this.error = null;
    return this.save();
  }

  save(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.inflight) return this.inflight;
    if (this.stopped || this.status === 'locked') return Promise.resolve();
    if (this.source.version === this.source.savedVersion) {
      if (this.status !== 'error') this.set('saved');
      return Promise.resolve();
    }
    const run = this.run().finally(() => {
      this.inflight = null;
      if (!this.stopped && this.status === 'unsaved') this.schedule(this.debounceMs);
    });
    this.inflight = run;
    return run;
  }

  private async run(): Promise<void> {
    const version = this.source.version;
    const payload = this.source.payload();
    this.retryAt = null;
    this.set('saving');
    try {
      await this.saveFn(payload);
      this.failures = 0;
      this.error = null;
      this.source.savedVersion = Math.max(this.source.savedVersion, version);
      this.lastSavedAt = this.now();
      this.set(this.source.version === this.source.savedVersion ? 'saved' : 'unsaved');
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, String((e as Error)?.message ?? e));
      this.error = err;
      if (err.status === 409) {
        this.set('locked');
      } else if (err.isTransient) {
        this.failures += 1;
        const delay = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** (this.failures - 1));
        this.retryAt = this.now() + delay;
        this.set('offline');
        if (!this.stopped) this.schedule(delay);
      } else {
        this.failures = 0;
        this.set('error');
      }
    }
  }

  /** Saves now and waits; true when the server has everything. */
  async flush(): Promise<boolean> {
    for (let i = 0; i < 5; i++) {
      if (this.inflight) {
        await this.inflight;
        continue;
      }
      if (this.status === 'locked') return false;
      if (this.source.version === this.source.savedVersion) return true;
      await this.save();
      const st = this.status as DraftStatus;
      if (st === 'offline' || st === 'error' || st === 'locked') return false;
    }
    return this.source.version === this.source.savedVersion;
  }

  /** No more saves (e.g. the review was submitted). */
  lock(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.set('locked');
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private set(s: DraftStatus): void {
    this.status = s;
    this.events.emit('state', this.state);
  }
}
