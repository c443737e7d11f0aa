import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from '../src/core/api';
import { AutosaveController, deltaErrorsOf } from '../src/core/autosave';
import { AnnotationStore, boxesMeet, ringBox, serverKey, type Box } from '../src/core/store';
import type { DeltaBody, DeltaResponse, Point, ServerCell } from '../src/core/types';
import { ViewportLoader, widen } from '../src/core/viewportCells';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

interface Row {
  id: number;
  class_id: number;
  polygon: Point[];
  revision: number;
}

/**
 * A fake server for GET cells?bbox= and PATCH cells with the documented rule: a changed or
 * deleted cell conflicts when written after its sent revision (or the base); a new outline
 * conflicts when its box meets a cell added or changed after the base (boxes stand in for
 * polygons here).
 */
function fakeServer(rows: Row[], revision = 1) {
  // `locked`: a region under review (a box here): items with a cell inside it are refused as `region_locked`
  const state = { revision, rows: new Map(rows.map((r) => [r.id, r])), nextId: 1000, deletedAt: new Map<number, number>(), locked: null as Box | null };
  const reads: Box[] = [];
  const deltas: DeltaBody[] = [];
  const cell = (r: Row): ServerCell =>
    ({ ...r, bbox: [0, 0, 0, 0], layer: 'annotation', source: 'manual', score: null, model_version: null, author: null, area: 1, provenance: {}, state: '', created_at: '', updated_at: '' }) as ServerCell;
  const api = {
    getCellsInBox: vi.fn(async (_id: number, bbox: readonly number[], opts: { layer?: string; limit?: number } = {}) => {
      reads.push(bbox as unknown as Box);
      if (opts.layer === 'proposal') return { revision: state.revision, cells: [] };
      const hits = [...state.rows.values()].filter((r) => boxesMeet(ringBox(r.polygon), bbox as unknown as Box)).sort((a, b) => a.id - b.id);
      const limit = opts.limit ?? 5000;
      return { revision: state.revision, cells: hits.slice(0, limit).map(cell), next_after: hits.length > limit ? hits[limit - 1].id : null };
    }),
    saveCells: vi.fn(),
    saveCellsDelta: vi.fn(async (_id: number, body: DeltaBody): Promise<DeltaResponse> => {
      deltas.push(structuredClone(body));
      const conflicts: { item: string; id: number | null; reason: 'changed' | 'deleted' | 'overlaps' | 'region_locked'; revision: number }[] = [];
      const locked = state.locked;
      if (locked) {
        const inside = (p: Point[]) => boxesMeet(ringBox(p), locked);
        body.added.forEach((a, i) => inside(a.polygon) && conflicts.push({ item: `added.${i}`, id: null, reason: 'region_locked', revision: state.revision }));
        body.changed.forEach((c, i) => (inside(c.polygon) || inside(state.rows.get(c.id)!.polygon)) && conflicts.push({ item: `changed.${i}`, id: c.id, reason: 'region_locked', revision: state.revision }));
        if (conflicts.length) {
          const ids = conflicts.map((c) => c.id).filter((id): id is number => id !== null);
          throw new ApiError(409, 'locked', {}, { detail: "The region 'A' is in review; the cells inside it are locked until an admin reopens it.", revision: state.revision, conflicts, cells: ids.map((id) => cell(state.rows.get(id)!)), deleted: [] });
        }
      }
      const check = (list: string, i: number, id: number, known: number | undefined) => {
        const row = state.rows.get(id);
        const since = known ?? body.base_revision;
        if (!row) conflicts.push({ item: `${list}.${i}`, id, reason: 'deleted', revision: state.deletedAt.get(id) ?? 0 });
        else if (row.revision > since) conflicts.push({ item: `${list}.${i}`, id, reason: 'changed', revision: row.revision });
      };
      body.changed.forEach((c, i) => check('changed', i, c.id, c.revision));
      body.deleted.forEach((d, i) => (typeof d === 'number' ? check('deleted', i, d, undefined) : check('deleted', i, d.id, d.revision)));
      body.added.forEach((a, i) => {
        for (const r of state.rows.values())
          if (r.revision > body.base_revision && boxesMeet(ringBox(r.polygon), ringBox(a.polygon))) conflicts.push({ item: `added.${i}`, id: r.id, reason: 'overlaps', revision: r.revision });
      });
      if (conflicts.length) {
        const ids = [...new Set(conflicts.map((c) => c.id!))];
        const cells = ids.filter((id) => state.rows.has(id)).map((id) => cell(state.rows.get(id)!));
        throw new ApiError(409, 'conflict', {}, { detail: 'conflict', revision: state.revision, conflicts, cells, deleted: ids.filter((id) => !state.rows.has(id)) });
      }
      state.revision += 1;
      const r = state.revision;
      const added = body.added.map((a) => ({ id: state.nextId++, class_id: a.class_id!, polygon: a.polygon, revision: r }));
      for (const a of added) state.rows.set(a.id, a);
      const changed = body.changed.map((c) => ({ id: c.id, class_id: c.class_id!, polygon: c.polygon, revision: r }));
      for (const c of changed) state.rows.set(c.id, c);
      const deleted = body.deleted.map((d) => (typeof d === 'number' ? d : d.id));
      for (const id of deleted) {
        state.rows.delete(id);
        state.deletedAt.set(id, r);
      }
      return { revision: r, added: added.map(cell), changed: changed.map(cell), deleted };
    }),
    /** Another doctor's save: one cell rewritten. */
    other(id: number, polygon: Point[]) {
      state.revision += 1;
      state.rows.set(id, { id, class_id: 1, polygon, revision: state.revision });
    },
  };
  return { api, state, reads, deltas };
}

/** 100 cells, 10 x 10, 1000 px apart on a 10,000 px image: a small "slide". */
function grid(): Row[] {
  const rows: Row[] = [];
  for (let i = 0; i < 100; i++) rows.push({ id: i + 1, class_id: 1, polygon: sq(100 + (i % 10) * 1000, 100 + Math.floor(i / 10) * 1000, 50), revision: 1 });
  return rows;
}

function setup() {
  const server = fakeServer(grid());
  const store = new AnnotationStore();
  store.load({ revision: 1, cells: [] });
  const selected: string[] = [];
  const loader = new ViewportLoader({ api: server.api, store, imageId: 1, width: 10000, height: 10000, debounceMs: 50, pinned: () => selected });
  let n = 0;
  const autosave = new AutosaveController({ api: server.api as never, store, imageId: 1, mode: 'delta', newIdempotencyKey: () => `k${++n}` }).start();
  return { server, store, loader, autosave, selected };
}

async function viewAt(loader: ViewportLoader, box: Box): Promise<void> {
  loader.viewChanged(box);
  await vi.advanceTimersByTimeAsync(60);
  await loader.current;
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('cells by viewport', () => {
  it('reads the view plus a margin, and drops far cells when the view moves', async () => {
    const { server, store, loader } = setup();
    await viewAt(loader, [0, 0, 2000, 2000]);
    expect(server.reads[0]).toEqual([0, 0, 3000, 3000]); // half the view's size beyond each side, cut to the image
    expect(store.size).toBe(9); // 3 x 3 cells in the read box
    expect(store.has(serverKey(1))).toBe(true);
    await viewAt(loader, [6000, 6000, 8000, 8000]);
    expect(store.has(serverKey(1))).toBe(false); // far away: dropped
    expect(store.has(serverKey(78))).toBe(true);
    await viewAt(loader, [0, 0, 2000, 2000]);
    expect(store.has(serverKey(1))).toBe(true); // back in view, same key
  });

  it('keeps unsaved, selected and undoable cells; undo works after the cell left and came back', async () => {
    const { store, loader, selected, autosave, server } = setup();
    autosave.stop(); // saves by hand in this test
    await viewAt(loader, [0, 0, 2000, 2000]);
    store.updatePolygon(serverKey(1), sq(110, 110, 40));
    store.updatePolygon(serverKey(2), sq(1110, 110, 40));
    selected.push(serverKey(12));
    await viewAt(loader, [6000, 6000, 8000, 8000]);
    expect(store.has(serverKey(1)) && store.has(serverKey(2)) && store.has(serverKey(12))).toBe(true);
    expect(store.has(serverKey(13))).toBe(false);
    // saved, then undone once the cell came back into view: the undo is sent as a change of it
    await autosave.save();
    expect(server.deltas[0].changed.map((c) => c.id).sort()).toEqual([1, 2]);
    await viewAt(loader, [0, 0, 2000, 2000]);
    store.undo();
    expect(store.get(serverKey(2))!.polygon).toEqual(sq(1100, 100, 50));
    await autosave.save();
    expect(server.deltas[1].changed).toEqual([{ id: 2, revision: 2, class_id: 1, polygon: sq(1100, 100, 50) }]);
    expect(server.state.rows.get(2)!.polygon).toEqual(sq(1100, 100, 50));
  });

  it('removes a cell the server deleted, only when the read was complete', async () => {
    const { server, store, loader } = setup();
    await viewAt(loader, [0, 0, 2000, 2000]);
    server.state.rows.delete(1);
    server.state.revision += 1;
    await viewAt(loader, [0, 0, 2000, 2001]);
    expect(store.has(serverKey(1))).toBe(false);
    expect(store.revision).toBe(2);
  });

  it('a view holding more cells than one read shows none and says so', async () => {
    const server = fakeServer(grid());
    const store = new AnnotationStore();
    store.load({ revision: 1, cells: [] });
    const loads: boolean[] = [];
    const loader = new ViewportLoader({ api: server.api, store, imageId: 1, width: 10000, height: 10000, debounceMs: 10, limit: 20, onLoad: (l) => loads.push(l.complete) });
    await viewAt(loader, [0, 0, 2000, 2000]);
    expect(store.size).toBe(9);
    await viewAt(loader, [0, 0, 10000, 10000]);
    expect(store.size).toBe(0); // not a band of the first 20 cells by id
    expect(loads).toEqual([true, false]);
  });

  it('a read overtaken by a save is made again', async () => {
    const { server, store, loader } = setup();
    await viewAt(loader, [0, 0, 2000, 2000]);
    store.revision = 5; // as if a save of ours made revision 5 while the read of revision 1 was on its way
    server.state.revision = 5;
    const first = server.api.getCellsInBox.mock.calls.length;
    server.api.getCellsInBox.mockImplementationOnce(async () => ({ revision: 1, cells: [], next_after: null }));
    await viewAt(loader, [0, 0, 2000, 2001]);
    expect(server.api.getCellsInBox.mock.calls.length).toBe(first + 2);
    expect(store.size).toBe(9);
  });

  it('widen cuts to the image', () => {
    expect(widen([100, 100, 300, 200], 1, 350, 1000)).toEqual([0, 0, 350, 300]);
  });
});

describe('saves by delta', () => {
  it('sends only the changed cells and links the new ones', async () => {
    const { server, store, loader, autosave } = setup();
    await viewAt(loader, [0, 0, 2000, 2000]);
    const key = store.addCell(sq(500, 500, 20), 1);
    store.removeCells([serverKey(11)]);
    store.setClass([serverKey(12)], 2);
    await vi.advanceTimersByTimeAsync(900);
    await autosave.flush();
    expect(server.deltas).toHaveLength(1);
    const d = server.deltas[0];
    expect(d.base_revision).toBe(1);
    expect(d.added).toEqual([{ class_id: 1, polygon: sq(500, 500, 20) }]);
    expect(d.changed).toEqual([{ id: 12, revision: 1, class_id: 2, polygon: sq(1100, 1100, 50) }]);
    expect(d.deleted).toEqual([{ id: 11, revision: 1 }]);
    expect(store.serverIdOf(key)).toBe(1000);
    expect(store.revision).toBe(2);
    expect(store.isDirty).toBe(false);
    expect(autosave.state.status).toBe('saved');
  });

  it('a 409 takes the server version of the conflicting cell and saves the rest', async () => {
    const { server, store, loader, autosave } = setup();
    const conflicts: number[] = [];
    autosave.events.on('deltaConflict', (c) => conflicts.push(c.dropped));
    await viewAt(loader, [0, 0, 2000, 2000]);
    server.api.other(1, sq(150, 150, 30)); // another doctor reshaped cell 1 meanwhile
    store.updatePolygon(serverKey(1), sq(100, 100, 60));
    store.updatePolygon(serverKey(2), sq(1100, 100, 60));
    await vi.advanceTimersByTimeAsync(900);
    await autosave.flush();
    expect(conflicts).toEqual([1]);
    expect(store.get(serverKey(1))!.polygon).toEqual(sq(150, 150, 30)); // the server's version
    expect(server.state.rows.get(1)!.polygon).toEqual(sq(150, 150, 30));
    expect(server.state.rows.get(2)!.polygon).toEqual(sq(1100, 100, 60)); // the other edit was saved
    expect(store.isDirty).toBe(false);
  });

  it('a 409: a new cell over another doctor\'s new cell goes, a cell deleted meanwhile goes, and the rest is saved', async () => {
    const { server, store, loader, autosave } = setup();
    const seen: { keys: string[]; dropped: number }[] = [];
    autosave.events.on('deltaConflict', (c) => seen.push({ keys: c.keys, dropped: c.dropped }));
    await viewAt(loader, [0, 0, 2000, 2000]);
    // meanwhile another doctor adds a cell at (500, 500) and deletes cell 12
    server.state.revision += 1;
    server.state.rows.set(500, { id: 500, class_id: 1, polygon: sq(500, 500, 30), revision: server.state.revision });
    server.state.rows.delete(12);
    server.state.deletedAt.set(12, server.state.revision);
    const mine = store.addCell(sq(510, 510, 30), 1);
    store.setClass([serverKey(12)], 2);
    store.updatePolygon(serverKey(2), sq(1100, 100, 70));
    await vi.advanceTimersByTimeAsync(900);
    await autosave.flush();
    expect(seen).toEqual([{ keys: [serverKey(500)], dropped: 2 }]);
    expect(store.has(mine)).toBe(false);
    expect(store.get(serverKey(500))!.polygon).toEqual(sq(500, 500, 30));
    expect(store.has(serverKey(12))).toBe(false);
    expect(server.state.rows.get(2)!.polygon).toEqual(sq(1100, 100, 70));
    expect(store.isDirty).toBe(false);
    // the history is left as it was: undoing the class change brings the (deleted) cell back as a new one
    store.undo();
    store.undo();
    expect(store.has(serverKey(12))).toBe(true);
  });

  it('a 409 for a region under review: the edits inside it undone (an added cell dropped), the rest saved', async () => {
    const { server, store, loader, autosave } = setup();
    const seen: { keys: string[]; dropped: number; regionLocked: boolean; detail: string }[] = [];
    autosave.events.on('deltaConflict', (c) => seen.push({ keys: c.keys, dropped: c.dropped, regionLocked: c.regionLocked, detail: c.detail }));
    await viewAt(loader, [0, 0, 2000, 2000]);
    server.state.locked = [0, 0, 500, 500]; // cell 1 (100, 100) lies in a region now in review
    const mine = store.addCell(sq(300, 300, 30), 1);
    store.updatePolygon(serverKey(1), sq(100, 100, 70));
    store.updatePolygon(serverKey(2), sq(1100, 100, 70));
    await vi.advanceTimersByTimeAsync(900);
    await autosave.flush();
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ keys: [serverKey(1)], dropped: 2, regionLocked: true });
    expect(seen[0].detail).toContain('locked');
    expect(store.has(mine)).toBe(false);
    expect(store.get(serverKey(1))!.polygon).toEqual(sq(100, 100, 50)); // the server's version
    expect(server.state.rows.get(2)!.polygon).toEqual(sq(1100, 100, 70)); // the other edit was saved
    expect(store.isDirty).toBe(false);
    expect(autosave.state.status).toBe('saved');
  });

  it('two editors in different regions both save', async () => {
    const a = setup();
    const server = a.server;
    const storeB = new AnnotationStore();
    storeB.load({ revision: 1, cells: [] });
    const loaderB = new ViewportLoader({ api: server.api, store: storeB, imageId: 1, width: 10000, height: 10000, debounceMs: 10 });
    const b = new AutosaveController({ api: server.api as never, store: storeB, imageId: 1, mode: 'delta' }).start();
    await viewAt(a.loader, [0, 0, 2000, 2000]);
    await viewAt(loaderB, [7000, 7000, 9000, 9000]);
    a.store.updatePolygon(serverKey(1), sq(100, 100, 70));
    storeB.updatePolygon(serverKey(100), sq(9100, 9100, 70));
    storeB.addCell(sq(8500, 8500, 20), 1);
    await vi.advanceTimersByTimeAsync(900);
    await a.autosave.flush();
    await b.flush();
    expect(server.state.revision).toBe(3);
    expect(a.store.isDirty || storeB.isDirty).toBe(false);
    expect(server.deltas.map((d) => d.base_revision)).toEqual([1, 1]);
  });

  it('maps field errors of a delta to store keys', () => {
    const store = new AnnotationStore();
    store.load({ revision: 1, cells: [{ id: 5, class_id: 1, polygon: sq(0, 0) }] });
    const k = store.addCell(sq(20, 20), 1);
    store.updatePolygon(serverKey(5), sq(1, 1));
    const snap = store.deltaSnapshot();
    expect(deltaErrorsOf({ 'added.0.polygon': 'outside the image', 'changed.0.class_id': ['bad'] }, snap)).toEqual(
      new Map([
        [k, 'outside the image'],
        [serverKey(5), 'bad'],
      ]),
    );
  });
});
