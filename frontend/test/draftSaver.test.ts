import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from '../src/core/api';
import { DraftSaver } from '../src/core/draftSaver';
import type { DraftSource } from '../src/core/review';

function source(): DraftSource<{ v: number }> & { bump(): void } {
  const s = {
    version: 0,
    savedVersion: 0,
    payload: () => ({ v: s.version }),
    bump() {
      s.version += 1;
    },
  };
  return s;
}

describe('DraftSaver', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('saves the whole draft once, after the debounce', async () => {
    const src = source();
    const save = vi.fn(async () => undefined);
    const saver = new DraftSaver({ source: src, save, debounceMs: 500 });
    const states: string[] = [];
    saver.events.on('state', (s) => states.push(s.status));
    src.bump();
    saver.changed();
    src.bump();
    saver.changed();
    await vi.advanceTimersByTimeAsync(499);
    expect(save).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    expect(save).toHaveBeenCalledTimes(1);
    expect(save).toHaveBeenCalledWith({ v: 2 });
    expect(src.savedVersion).toBe(2);
    expect(saver.state.status).toBe('saved');
    expect(states).toEqual(['unsaved', 'unsaved', 'saving', 'saved']);
  });

  it('edits made during a save go in the next one', async () => {
    const src = source();
    let release!: () => void;
    const save = vi.fn(() => new Promise<void>((r) => (release = r)));
    const saver = new DraftSaver({ source: src, save, debounceMs: 100 });
    src.bump();
    saver.changed();
    await vi.advanceTimersByTimeAsync(100);
    src.bump();
    saver.changed();
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(src.savedVersion).toBe(1);
    expect(saver.state.status).toBe('unsaved');
    await vi.advanceTimersByTimeAsync(100);
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(save).toHaveBeenCalledTimes(2);
    expect(src.savedVersion).toBe(2);
  });

  it('retries network failures with backoff and includes later edits', async () => {
    const src = source();
    const save = vi.fn().mockRejectedValueOnce(new ApiError(0, 'offline')).mockRejectedValueOnce(new ApiError(503, 'busy')).mockResolvedValue(undefined);
    const saver = new DraftSaver({ source: src, save, debounceMs: 10, backoffInitialMs: 1000 });
    src.bump();
    saver.changed();
    await vi.advanceTimersByTimeAsync(10);
    expect(saver.state.status).toBe('offline');
    src.bump();
    saver.changed(); // stays offline, the retry timer saves it all
    expect(saver.state.status).toBe('offline');
    await vi.advanceTimersByTimeAsync(1000);
    expect(saver.state.status).toBe('offline');
    await vi.advanceTimersByTimeAsync(2000);
    expect(save).toHaveBeenCalledTimes(3);
    expect(save).toHaveBeenLastCalledWith({ v: 2 });
    expect(saver.state.status).toBe('saved');
  });

  it('409 locks the draft; other 4xx wait for the next edit', async () => {
    const src = source();
    const save = vi.fn().mockRejectedValueOnce(new ApiError(400, 'bad')).mockRejectedValueOnce(new ApiError(409, 'submitted'));
    const saver = new DraftSaver({ source: src, save, debounceMs: 10 });
    src.bump();
    saver.changed();
    await vi.advanceTimersByTimeAsync(10);
    expect(saver.state.status).toBe('error');
    await vi.advanceTimersByTimeAsync(60000);
    expect(save).toHaveBeenCalledTimes(1);
    src.bump();
    saver.changed();
    await vi.advanceTimersByTimeAsync(10);
    expect(saver.state.status).toBe('locked');
    src.bump();
    saver.changed();
    await vi.advanceTimersByTimeAsync(1000);
    expect(save).toHaveBeenCalledTimes(2);
    expect(await saver.flush()).toBe(false);
  });

  it('flush saves at once and reports success', async () => {
    const src = source();
    const save = vi.fn(async () => undefined);
    const saver = new DraftSaver({ source: src, save, debounceMs: 10000 });
    expect(await saver.flush()).toBe(true);
    src.bump();
    saver.changed();
    expect(saver.hasUnsaved).toBe(true);
    expect(await saver.flush()).toBe(true);
    expect(save).toHaveBeenCalledTimes(1);
    expect(saver.hasUnsaved).toBe(false);
    saver.lock();
    expect(saver.state.status).toBe('locked');
  });
});
