import { describe, expect, it } from 'vitest';
import { LocalBackup, restoreBackup } from '../src/core/backup';
import { AnnotationStore } from '../src/core/store';
import type { Point } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

function memStorage() {
  const m = new Map<string, string>();
  return {
    getItem: (k: string) => m.get(k) ?? null,
    setItem: (k: string, v: string) => void m.set(k, v),
    removeItem: (k: string) => void m.delete(k),
    map: m,
  };
}

describe('LocalBackup', () => {
  it('mirrors unsaved edits and restores them into a fresh store as one undoable step', () => {
    const storage = memStorage();
    const a = new AnnotationStore();
    a.load({ revision: 4, cells: [{ id: 1, class_id: 1, polygon: sq(0, 0) }, { id: 2, class_id: 1, polygon: sq(20, 0) }] });
    a.updatePolygon('s1', sq(1, 1));
    a.removeCells(['s2']);
    a.addCell(sq(50, 50), 3);
    const b = new LocalBackup(storage, 7);
    expect(b.write(a, 123)).toBe(true);
    const saved = b.read()!;
    expect(saved.baseRevision).toBe(4);
    expect(saved.cells).toHaveLength(2);
    expect(saved.cells[0]).toEqual({ key: 's1', serverId: 1, class_id: 1, polygon: sq(1, 1) });

    // page reload: the server still has revision 4
    const fresh = new AnnotationStore();
    fresh.load({ revision: 4, cells: [{ id: 1, class_id: 1, polygon: sq(0, 0) }, { id: 2, class_id: 1, polygon: sq(20, 0) }] });
    const n = restoreBackup(fresh, saved);
    expect(n).toBe(3);
    expect(fresh.size).toBe(2);
    expect(fresh.get('s1')!.polygon).toEqual(sq(1, 1));
    expect(fresh.isDirty).toBe(true);
    const body = fresh.snapshot().body;
    expect(body.cells.map((c) => c.id)).toEqual([1, undefined]);
    fresh.undo();
    expect(fresh.size).toBe(2);
    expect(fresh.get('s1')!.polygon).toEqual(sq(0, 0));
  });

  it('update() debounces writes while dirty and clears when clean', async () => {
    const storage = memStorage();
    const s = new AnnotationStore();
    s.load({ revision: 1, cells: [] });
    const b = new LocalBackup(storage, 1, 10);
    s.addCell(sq(0, 0), 1);
    b.update(s);
    expect(storage.map.size).toBe(0);
    await new Promise((r) => setTimeout(r, 20));
    expect(storage.map.size).toBe(1);
    s.markSaved(s.snapshot(), { revision: 2, cells: [{ id: 5, class_id: 1, polygon: sq(0, 0) }] });
    b.update(s);
    expect(storage.map.size).toBe(0);
  });

  it('survives a broken or full storage', () => {
    const b = new LocalBackup(
      {
        getItem: () => '{not json',
        setItem: () => {
          throw new Error('QuotaExceededError');
        },
        removeItem: () => undefined,
      },
      1,
    );
    const s = new AnnotationStore();
    s.addCell(sq(0, 0), 1);
    expect(b.read()).toBeNull();
    expect(b.write(s)).toBe(false);
    expect(new LocalBackup(null, 1).read()).toBeNull();
  });
});
