import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiClient, ApiError } from '../src/core/api';
import { AutosaveController, cellErrorsOf, refusalSentence } from '../src/core/autosave';
import { AnnotationStore } from '../src/core/store';
import type { ApiCell, CellsResponse, Point, SaveCellsBody } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

interface Call {
  body: SaveCellsBody;
  key: string | undefined;
}

/** A fake server for PUT images/{id}/cells with a scripted sequence of outcomes. */
function fakeServer(initial: ApiCell[] = []) {
  const state = { revision: 1, cells: initial, nextId: 100 };
  const calls: Call[] = [];
  const script: ('ok' | 'network' | '500' | '409' | '400')[] = [];
  const seenKeys = new Map<string, CellsResponse>();
  const api = {
    saveCells: vi.fn(async (_id: number, body: SaveCellsBody, key?: string): Promise<CellsResponse> => {
      calls.push({ body: structuredClone(body), key });
      const outcome = script.shift() ?? 'ok';
      if (outcome === 'network') throw new ApiError(0, 'Network error');
      if (outcome === '500') throw new ApiError(500, 'Server error');
      if (outcome === '400') throw new ApiError(400, 'Invalid', { cells: { '1': ['self-intersecting'] } });
      if (key && seenKeys.has(key)) return seenKeys.get(key)!;
      if (outcome === '409' || body.revision !== state.revision) {
        throw new ApiError(409, 'Stale revision', {}, { detail: 'Stale revision', revision: state.revision, cells: state.cells });
      }
      state.revision += 1;
      state.cells = body.cells.map((c) => ({ id: c.id ?? state.nextId++, class_id: c.class_id, polygon: c.polygon }));
      const resp = { revision: state.revision, cells: state.cells };
      if (key) seenKeys.set(key, resp);
      return resp;
    }),
  };
  return { api, state, calls, script };
}

function setup(initial: ApiCell[] = []) {
  const server = fakeServer(initial);
  const store = new AnnotationStore();
  store.load({ revision: 1, cells: initial });
  let n = 0;
  const ctl = new AutosaveController({ api: server.api, store, imageId: 3, newIdempotencyKey: () => `key-${++n}` }).start();
  return { server, store, ctl };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('AutosaveController', () => {
  it('debounces: one save 800 ms after the last of several quick edits', async () => {
    const { server, store, ctl } = setup();
    store.addCell(sq(0, 0), 1);
    await vi.advanceTimersByTimeAsync(500);
    store.addCell(sq(20, 0), 1);
    await vi.advanceTimersByTimeAsync(500);
    store.addCell(sq(40, 0), 1);
    expect(ctl.state.status).toBe('unsaved');
    await vi.advanceTimersByTimeAsync(799);
    expect(server.calls).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.calls).toHaveLength(1);
    expect(server.calls[0].body.cells).toHaveLength(3);
    expect(server.calls[0].body.revision).toBe(1);
    expect(server.calls[0].key).toBe('key-1');
    expect(ctl.state.status).toBe('saved');
    expect(store.isDirty).toBe(false);
    expect(store.revision).toBe(2);
  });

  it('saves the full layer with server ids once assigned', async () => {
    const { server, store } = setup([{ id: 5, class_id: 2, polygon: sq(0, 0) }]);
    const k = store.addCell(sq(50, 50), 1);
    await vi.advanceTimersByTimeAsync(800);
    store.updatePolygon(k, sq(51, 51));
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls[1].body).toEqual({
      revision: 2,
      cells: [
        { id: 5, class_id: 2, polygon: sq(0, 0) },
        { id: 100, class_id: 1, polygon: sq(51, 51) },
      ],
    });
  });

  it('offline: keeps edits, reports offline, retries the SAME payload with the SAME idempotency key with backoff', async () => {
    const { server, store, ctl } = setup();
    server.script.push('network', '500');
    store.addCell(sq(0, 0), 1);
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls).toHaveLength(1);
    expect(ctl.state.status).toBe('offline');
    expect(ctl.state.retryInMs).toBe(1000);
    expect(store.isDirty).toBe(true);
    // an edit while offline does not trigger an early retry
    store.addCell(sq(30, 0), 2);
    await vi.advanceTimersByTimeAsync(999);
    expect(server.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.calls).toHaveLength(2);
    expect(server.calls[1].key).toBe(server.calls[0].key);
    expect(server.calls[1].body).toEqual(server.calls[0].body);
    expect(ctl.state.retryInMs).toBe(2000); // backoff doubled after the 500
    await vi.advanceTimersByTimeAsync(2000);
    expect(server.calls[2].key).toBe('key-1'); // third try of the same attempt succeeds
    expect(server.calls[2].body.cells).toHaveLength(1);
    // then the edit made while offline goes in a new save with a new key
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls[3].key).toBe('key-2');
    expect(server.calls[3].body.cells).toHaveLength(2);
    expect(server.calls[3].body.revision).toBe(2);
    expect(ctl.state.status).toBe('saved');
    expect(store.isDirty).toBe(false);
  });

  it('a retried save that had reached the server is not applied twice (idempotency)', async () => {
    const { server, store, ctl } = setup();
    // first attempt reaches the server but the answer is lost
    const real = server.api.saveCells.getMockImplementation()!;
    server.api.saveCells.mockImplementationOnce(async (id, body, key) => {
      await real(id, body, key);
      throw new ApiError(0, 'connection reset');
    });
    store.addCell(sq(0, 0), 1);
    await vi.advanceTimersByTimeAsync(800);
    expect(ctl.state.status).toBe('offline');
    await vi.advanceTimersByTimeAsync(1000);
    expect(ctl.state.status).toBe('saved');
    expect(server.state.revision).toBe(2);
    expect(server.state.cells).toHaveLength(1);
    expect(store.revision).toBe(2);
  });

  it('409: keeps local edits and exposes the conflict; "keep mine" re-saves on the server revision', async () => {
    const { server, store, ctl } = setup([{ id: 5, class_id: 2, polygon: sq(0, 0) }]);
    // someone else saved meanwhile
    server.state.revision = 4;
    server.state.cells = [{ id: 5, class_id: 2, polygon: sq(0, 0) }, { id: 6, class_id: 1, polygon: sq(80, 80) }];
    const k = store.addCell(sq(50, 50), 1);
    await vi.advanceTimersByTimeAsync(800);
    const st = ctl.state;
    expect(st.status).toBe('conflict');
    expect(st.conflict!.serverRevision).toBe(4);
    expect(st.conflict!.serverCells).toHaveLength(2);
    expect(st.conflict!.localCells.map((c) => c.key)).toEqual(['s5', k]);
    expect(store.has(k)).toBe(true);
    expect(store.isDirty).toBe(true);
    // no automatic saving while the conflict is open
    store.addCell(sq(90, 90), 1);
    await vi.advanceTimersByTimeAsync(5000);
    expect(server.calls).toHaveLength(1);
    expect(ctl.hasUnsaved).toBe(true);
    await ctl.keepMine();
    expect(server.calls).toHaveLength(2);
    expect(server.calls[1].body.revision).toBe(4);
    expect(server.calls[1].body.cells.map((c) => c.id)).toEqual([5, undefined, undefined]);
    expect(ctl.state.status).toBe('saved');
    expect(store.revision).toBe(5);
  });

  it('409: "take theirs" replaces local cells by the server state, outside the undo history', async () => {
    const { server, store, ctl } = setup();
    server.state.revision = 3;
    server.state.cells = [{ id: 9, class_id: 1, polygon: sq(0, 0) }];
    store.addCell(sq(50, 50), 1);
    await vi.advanceTimersByTimeAsync(800);
    expect(ctl.state.status).toBe('conflict');
    ctl.takeTheirs();
    expect(ctl.state.status).toBe('saved');
    expect(store.keys()).toEqual(['s9']);
    expect(store.revision).toBe(3);
    expect(store.isDirty).toBe(false);
    expect(store.history.canUndo).toBe(false);
    await vi.advanceTimersByTimeAsync(5000);
    expect(server.calls).toHaveLength(1);
  });

  it('400: saves the other cells at once, keeps the refused one local and marked, retries it on its next edit', async () => {
    const { server, store, ctl } = setup();
    const good = store.addCell(sq(0, 0), 1);
    const bad = store.addCell(sq(20, 0), 1);
    const refused = vi.fn();
    ctl.events.on('refused', refused);
    server.script.push('400');
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls).toHaveLength(2); // the refused save, then the others at once
    expect(server.calls[1].body.cells).toHaveLength(1);
    expect(store.serverIdOf(good)).toBeDefined();
    expect(ctl.state.status).toBe('error');
    expect(ctl.state.errorKeys).toEqual([bad]);
    expect(ctl.state.refused.get(bad)).toBe('self-intersecting');
    expect(refused).toHaveBeenCalledTimes(1);
    expect(store.isDirty).toBe(true); // the refused cell is not on the server
    expect(ctl.hasUnsaved).toBe(true);
    await vi.advanceTimersByTimeAsync(10000);
    expect(server.calls).toHaveLength(2); // no blind retry loop
    store.updatePolygon(bad, sq(20, 0, 12));
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls).toHaveLength(3);
    expect(server.calls[2].body.cells).toHaveLength(2);
    expect(ctl.state.status).toBe('saved');
    expect(ctl.state.errorKeys).toEqual([]);
    expect(store.isDirty).toBe(false);
  });

  it("400 in the server's shape: a refused cell the server has is sent as saved, the edits made after it are saved", async () => {
    const initial = [0, 20, 40, 60].map((x, i) => ({ id: i + 1, class_id: 1, polygon: sq(x, 10) }));
    const { server, store, ctl } = setup(initial);
    // a vertex dragged off the image (the store has no bounds here, as before the clamp)
    store.updatePolygon('s2', [[20, 10], [30, -4.9], [30, 20], [20, 20]]);
    store.removeCells(['s3']);
    store.setClass(['s4'], 2);
    const outside = '1 point(s) lie outside the image (640x480); first is point 1 at (30, -4.9)';
    server.api.saveCells.mockImplementationOnce(async (_id, body) => {
      server.calls.push({ body: structuredClone(body), key: undefined });
      throw new ApiError(400, 'Invalid cells', { 'cells.1': outside });
    });
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls).toHaveLength(2);
    const saved = server.calls[1].body.cells;
    expect(saved.map((c) => c.id)).toEqual([1, 2, 4]); // 3 deleted; 2 kept, as the server had it
    expect(saved[1].polygon).toEqual(sq(20, 10));
    expect(saved[2].class_id).toBe(2);
    expect(server.state.cells.map((c) => c.id)).toEqual([1, 2, 4]);
    expect(ctl.state.errorKeys).toEqual(['s2']);
    expect(store.get('s2')!.polygon[1]).toEqual([30, -4.9]); // the doctor's edit is kept locally
    // a later edit elsewhere saves too, the refused cell still held back
    store.removeCells(['s1']);
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls).toHaveLength(3);
    expect(server.calls[2].body.cells.map((c) => c.id)).toEqual([2, 4]);
    expect(server.calls[2].body.cells[0].polygon).toEqual(sq(20, 10));
    expect(ctl.state.status).toBe('error');
    expect(ctl.state.errorKeys).toEqual(['s2']);
    // a submit (or accepting proposals) waits for the correction, and says why (not "offline")
    const run = vi.fn(async () => 'done');
    const refusedRun = ctl.exclusive(run);
    await expect(refusedRun).rejects.toMatchObject({ status: 400, detail: expect.stringContaining('shown in red') });
    expect(run).not.toHaveBeenCalled();
  });

  it('edits made during an in-flight save are saved right after it', async () => {
    const { server, store, ctl } = setup();
    let release!: () => void;
    const real = server.api.saveCells.getMockImplementation()!;
    server.api.saveCells.mockImplementationOnce(async (id, body, key) => {
      await new Promise<void>((r) => (release = r));
      return real(id, body, key);
    });
    store.addCell(sq(0, 0), 1);
    await vi.advanceTimersByTimeAsync(800);
    expect(ctl.state.status).toBe('saving');
    store.addCell(sq(20, 0), 1);
    await vi.advanceTimersByTimeAsync(800);
    expect(server.api.saveCells).toHaveBeenCalledTimes(1); // no second request while one is in flight
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(store.isDirty).toBe(true);
    await vi.advanceTimersByTimeAsync(800);
    expect(server.calls).toHaveLength(2);
    expect(server.calls[1].body.cells).toHaveLength(2);
    expect(server.calls[1].body.revision).toBe(2);
    expect(ctl.state.status).toBe('saved');
  });

  it('flush saves at once; exclusive runs an operation after the flush with saving paused', async () => {
    const { server, store, ctl } = setup();
    store.addCell(sq(0, 0), 1);
    const ok = await ctl.flush();
    expect(ok).toBe(true);
    expect(server.calls).toHaveLength(1);
    store.addCell(sq(20, 0), 1);
    const seen = await ctl.exclusive(async () => store.revision);
    expect(seen).toBe(3); // the second edit was saved before the operation ran
    expect(server.calls).toHaveLength(2);
  });

  it('flush reports failure when offline', async () => {
    const { server, store, ctl } = setup();
    server.script.push('network');
    store.addCell(sq(0, 0), 1);
    expect(await ctl.flush()).toBe(false);
    await expect(ctl.exclusive(async () => 1)).rejects.toBeInstanceOf(ApiError);
  });

  it('warns on beforeunload only while something is unsaved', async () => {
    const { store, ctl } = setup();
    const listeners: Record<string, EventListener> = {};
    const target = {
      addEventListener: (t: string, fn: EventListener) => (listeners[t] = fn),
      removeEventListener: vi.fn(),
    } as unknown as Window;
    const off = ctl.installBeforeUnload(target);
    const ev = () => {
      const e = { preventDefault: vi.fn(), returnValue: undefined as unknown };
      listeners.beforeunload(e as unknown as Event);
      return e;
    };
    expect(ev().preventDefault).not.toHaveBeenCalled();
    store.addCell(sq(0, 0), 1);
    const e = ev();
    expect(e.preventDefault).toHaveBeenCalled();
    expect(e.returnValue).toBe('');
    await vi.advanceTimersByTimeAsync(800);
    expect(ev().preventDefault).not.toHaveBeenCalled();
    off();
  });

  it('works end to end through ApiClient (Idempotency-Key header, 409 body)', async () => {
    const requests: { url: string; init: RequestInit }[] = [];
    let status = 409;
    const fetch = vi.fn(async (url: string, init?: RequestInit) => {
      requests.push({ url, init: init! });
      const body = status === 409 ? { detail: 'Stale', revision: 7, cells: [] } : { revision: 8, cells: [{ id: 1, class_id: 1, polygon: sq(0, 0) }] };
      return new Response(JSON.stringify(body), { status });
    });
    const api = new ApiClient({ fetch, getCookies: () => 'csrftoken=abc' });
    const store = new AnnotationStore();
    store.load({ revision: 6, cells: [] });
    const ctl = new AutosaveController({ api, store, imageId: 42, newIdempotencyKey: () => 'K1' }).start();
    store.addCell(sq(0, 0), 1);
    await vi.advanceTimersByTimeAsync(800);
    expect(requests[0].url).toBe('/api/v1/images/42/cells');
    expect(requests[0].init.method).toBe('PUT');
    expect((requests[0].init.headers as Record<string, string>)['Idempotency-Key']).toBe('K1');
    expect(ctl.state.status).toBe('conflict');
    expect(ctl.state.conflict!.serverRevision).toBe(7);
    status = 200;
    await ctl.keepMine();
    expect(JSON.parse(String(requests[1].init.body)).revision).toBe(7);
    expect(store.revision).toBe(8);
  });
});

describe('refused cells', () => {
  it('reads per-cell errors in every shape', () => {
    expect([...cellErrorsOf({ 'cells.5': 'bad', detail: 'x' })]).toEqual([[5, 'bad']]);
    expect([...cellErrorsOf({ cells: { '2': ['a', 'b'] } })]).toEqual([[2, 'a; b']]);
    expect([...cellErrorsOf({ 'cells.1.polygon': ['x'], revision: 'stale' })]).toEqual([[1, 'x']]);
    expect(cellErrorsOf({ revision: 'stale' }).size).toBe(0);
  });

  it("words the server's reasons for a doctor", () => {
    const s = refusalSentence('1 point(s) lie outside the image (640x480); first is point 1 at (89.9, -4.9)');
    expect(s).toContain('outside the image');
    expect(s).not.toContain('point 1');
    expect(refusalSentence('polygon is not a valid simple polygon (Self-intersection[1 2])')).toContain('crosses itself');
    expect(refusalSentence('class_id 7 is not a class of this project')).toContain('class');
  });
});
