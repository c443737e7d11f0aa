import { describe, expect, it, vi } from 'vitest';
import { ApiError } from '../src/core/api';
import { AutosaveController } from '../src/core/autosave';
import { AnnotationStore } from '../src/core/store';
import type { ApiCell, Point } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];
const cell = (id: number, x: number, classId: number | null = 1, s = 10): ApiCell => ({ id, class_id: classId, polygon: sq(x, 0, s) });

describe('keep both (merge after a conflict)', () => {
  it('adds the other person’s cells, keeps my edits and deletions, takes their untouched changes', () => {
    const s = new AnnotationStore();
    s.load({ revision: 3, cells: [cell(1, 0), cell(2, 20), cell(3, 40), cell(4, 60)] });
    s.updatePolygon('s1', sq(0, 0, 12)); // I edit 1
    s.removeCells(['s2']); // I delete 2
    const mine = s.addCell(sq(100, 100), 1); // I draw a new one
    // the server meanwhile: 1 and 3 changed, 4 deleted, 5 added by the other person
    const server = [cell(1, 0, 1, 15), cell(2, 20), cell(3, 40, 2), cell(5, 80)];
    s.mergeServer(7, server);
    expect(s.revision).toBe(7);
    expect(s.get('s1')!.polygon).toEqual(sq(0, 0, 12)); // my edit wins
    expect(s.has('s2')).toBe(false); // my deletion stays
    expect(s.get('s3')!.classId).toBe(2); // their change to an untouched cell
    expect(s.has('s4')).toBe(false); // their deletion of an untouched cell
    expect(s.get('s5')!.polygon).toEqual(sq(80, 0)); // their new cell
    expect(s.has(mine)).toBe(true);
    expect(s.isDirty).toBe(true);
    const body = s.snapshot().body;
    expect(body.revision).toBe(7);
    expect(body.cells.map((c) => c.id ?? 'new').sort()).toEqual([1, 3, 5, 'new'].sort());
    expect(s.history.size).toBe(3); // the merge is not an undo step
  });

  it('AutosaveController.keepBoth merges and saves on the server’s revision', async () => {
    const store = new AnnotationStore();
    store.load({ revision: 1, cells: [] });
    const server = { revision: 2, cells: [cell(9, 50)] };
    const saveCells = vi
      .fn()
      .mockRejectedValueOnce(new ApiError(409, 'Stale revision', {}, { detail: 'Stale revision', ...server }))
      .mockImplementation(async (_id: number, body: { revision: number; cells: { id?: number; class_id: number | null; polygon: Point[] }[] }) => ({
        revision: body.revision + 1,
        cells: body.cells.map((c, i) => ({ id: c.id ?? 100 + i, class_id: c.class_id, polygon: c.polygon })),
      }));
    const as = new AutosaveController({ api: { saveCells }, store, imageId: 1, debounceMs: 5 }).start();
    store.addCell(sq(0, 0), 1);
    await as.save();
    expect(as.state.status).toBe('conflict');
    await as.keepBoth();
    expect(as.state.status).toBe('saved');
    const sent = saveCells.mock.calls[1][1];
    expect(sent.revision).toBe(2);
    expect(sent.cells).toHaveLength(2);
    expect(sent.cells.some((c: { id?: number }) => c.id === 9)).toBe(true);
    as.stop();
  });
});
