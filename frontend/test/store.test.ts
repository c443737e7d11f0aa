import { describe, expect, it } from 'vitest';
import { AnnotationStore, serverKey } from '../src/core/store';
import type { ApiCell, Point } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];
const apiCell = (id: number, x: number, classId: number | null = 1): ApiCell => ({ id, class_id: classId, polygon: sq(x, 0) });

function loaded(): AnnotationStore {
  const s = new AnnotationStore();
  s.load({ revision: 5, cells: [apiCell(10, 0), apiCell(11, 20), apiCell(12, 40, 2)] });
  return s;
}

describe('AnnotationStore', () => {
  it('loads server cells keyed by server id, clean, without history', () => {
    const s = loaded();
    expect(s.size).toBe(3);
    expect(s.revision).toBe(5);
    expect(s.has(serverKey(10))).toBe(true);
    expect(s.serverIdOf('s11')).toBe(11);
    expect(s.isDirty).toBe(false);
    expect(s.history.canUndo).toBe(false);
  });

  it('accepts closed rings from the server and drops degenerate cells', () => {
    const s = new AnnotationStore();
    s.load({
      revision: 1,
      cells: [
        { id: 1, class_id: null, polygon: [...sq(0, 0), [0, 0]] },
        { id: 2, class_id: null, polygon: [[0, 0], [1, 1]] },
      ],
    });
    expect(s.size).toBe(1);
    expect(s.get('s1')!.polygon).toHaveLength(4);
  });

  it('tracks dirty state and dirty keys for user edits', () => {
    const s = loaded();
    const k = s.addCell(sq(100, 100), 2);
    expect(k.startsWith('n')).toBe(true);
    expect(s.isDirty).toBe(true);
    s.updatePolygon('s10', sq(1, 1));
    s.setClass(['s11'], 3);
    s.removeCells(['s12']);
    expect(new Set(s.dirtyKeys)).toEqual(new Set([k, 's10', 's11', 's12']));
  });

  it('emits incremental change events with added/updated/removed keys', () => {
    const s = loaded();
    const events: unknown[] = [];
    s.events.on('change', (c) => events.push(c));
    const k = s.addCell(sq(0, 50), null);
    s.updatePolygon(k, sq(0, 60));
    s.removeCells([k]);
    expect(events).toEqual([
      { added: [k], removed: [], updated: [], origin: 'user' },
      { added: [], removed: [], updated: [k], origin: 'user' },
      { added: [], removed: [k], updated: [], origin: 'user' },
    ]);
  });

  it('builds the PUT payload: ids for server cells, none for new cells', () => {
    const s = loaded();
    s.addCell(sq(100, 100), 2);
    s.removeCells(['s12']);
    const snap = s.snapshot();
    expect(snap.body.revision).toBe(5);
    expect(snap.body.cells).toEqual([
      { id: 10, class_id: 1, polygon: sq(0, 0) },
      { id: 11, class_id: 1, polygon: sq(20, 0) },
      { class_id: 2, polygon: sq(100, 100) },
    ]);
    expect(snap.keys).toHaveLength(3);
  });

  it('markSaved assigns server ids to new cells (by order) and keeps later edits dirty', () => {
    const s = loaded();
    const k = s.addCell(sq(100, 100), 2);
    const snap = s.snapshot();
    // an edit made while the request is in flight
    s.updatePolygon('s10', sq(2, 2));
    s.markSaved(snap, {
      revision: 6,
      cells: [...snap.body.cells.map((c, i) => ({ ...c, id: c.id ?? 99 + i }))] as ApiCell[],
    });
    expect(s.revision).toBe(6);
    expect(s.serverIdOf(k)).toBe(102);
    expect(s.keyOfServerId(102)).toBe(k);
    expect(s.isDirty).toBe(true);
    expect(s.dirtyKeys).toEqual(['s10']);
    // next payload uses the new id
    expect(s.snapshot().body.cells.find((c) => c.id === 102)).toBeTruthy();
  });

  it('markSaved matches new cells by geometry when the server reorders', () => {
    const s = new AnnotationStore();
    s.load({ revision: 1, cells: [] });
    const a = s.addCell(sq(0, 0), 1);
    const b = s.addCell(sq(500, 500), 1);
    const snap = s.snapshot();
    s.markSaved(snap, {
      revision: 2,
      cells: [
        { id: 8, class_id: 1, polygon: sq(500, 500) },
        { id: 7, class_id: 1, polygon: sq(0, 0) },
        { id: 9, class_id: 1, polygon: sq(900, 900) }, // unexpected extra: kept, never dropped
      ],
    });
    expect(s.serverIdOf(a)).toBe(7);
    expect(s.serverIdOf(b)).toBe(8);
    expect(s.isDirty).toBe(false);
    expect(s.size).toBe(3);
  });

  it('sends a cell without id when its server id no longer exists on the server', () => {
    const s = loaded();
    s.removeCells(['s10']);
    const snap = s.snapshot();
    s.markSaved(snap, { revision: 6, cells: [apiCell(11, 20), apiCell(12, 40, 2)] });
    s.undo(); // the cell comes back, but id 10 was deleted on the server
    const body = s.snapshot().body;
    const restored = body.cells.find((c) => c.polygon[0][0] === 0)!;
    expect(restored.id).toBeUndefined();
  });

  it('applyServerUpdate (accepted proposals) adds cells without dirtying or history', () => {
    const s = loaded();
    const before = s.history.size;
    const change = s.applyServerUpdate({ revision: 7, cells: [apiCell(10, 0), apiCell(11, 20), apiCell(12, 40, 2), apiCell(50, 200, 3)] });
    expect(change.added).toEqual(['s50']);
    expect(s.revision).toBe(7);
    expect(s.isDirty).toBe(false);
    expect(s.history.size).toBe(before);
  });

  it('applyServerUpdate with the full layer removes cells deleted on the server, but never a locally edited one', () => {
    const s = loaded();
    s.updatePolygon('s11', sq(21, 1)); // local edit
    s.applyServerUpdate({ revision: 8, cells: [apiCell(10, 0)] }, true);
    expect(s.has('s12')).toBe(false); // deleted on server, untouched here
    expect(s.has('s11')).toBe(true); // edited here: kept
    expect(s.get('s11')!.polygon).toEqual(sq(21, 1));
  });

  it('applyServerUpdate does not overwrite a locally edited cell', () => {
    const s = loaded();
    s.updatePolygon('s10', sq(5, 5));
    s.applyServerUpdate({ revision: 9, cells: [{ ...apiCell(10, 300) }] }, false);
    expect(s.get('s10')!.polygon).toEqual(sq(5, 5));
  });

  it('split and merge are single undoable steps', () => {
    const s = loaded();
    const keys = s.splitCell('s10', [
      [
        [0, 0],
        [5, 0],
        [5, 10],
        [0, 10],
      ],
      [
        [5, 0],
        [10, 0],
        [10, 10],
        [5, 10],
      ],
    ]);
    expect(keys[0]).toBe('s10');
    expect(s.size).toBe(4);
    expect(s.get(keys[1])!.classId).toBe(1);
    s.undo();
    expect(s.size).toBe(3);
    expect(s.get('s10')!.polygon).toEqual(sq(0, 0));
    expect(s.mergeCells('s10', 's11', sq(0, 0, 30))).toBe(true);
    expect(s.size).toBe(2);
    s.undo();
    expect(s.size).toBe(3);
  });

  it('replaceAll makes the layer equal to the given cells in one step', () => {
    const s = loaded();
    const n = s.replaceAll(
      [
        { key: 's10', classId: 1, polygon: sq(0, 0) }, // unchanged
        { key: 's11', classId: 4, polygon: sq(20, 0) }, // class changed
        { key: 'nX', classId: null, polygon: sq(300, 300) }, // new
      ],
      'restore',
    );
    expect(n).toBe(3); // s11 changed, nX added, s12 removed
    expect(s.history.size).toBe(1);
    s.undo();
    expect(s.size).toBe(3);
    expect(s.get('s11')!.classId).toBe(1);
  });

  it('rebase adopts the server revision, forgets vanished ids and stays dirty', () => {
    const s = loaded();
    s.rebase(9, [apiCell(11, 20)]);
    expect(s.revision).toBe(9);
    expect(s.isDirty).toBe(true);
    const body = s.snapshot().body;
    expect(body.revision).toBe(9);
    expect(body.cells.map((c) => c.id)).toEqual([undefined, 11, undefined]);
  });
});

describe('image bounds', () => {
  it('clamps every vertex a user edit makes into the image', () => {
    const s = new AnnotationStore();
    s.setBounds(100, 80);
    const k = s.addCell(
      [
        [-5, 10],
        [50, -3],
        [120, 40],
        [50, 90],
      ],
      1,
    );
    expect(s.get(k)!.polygon).toEqual([
      [0, 10],
      [50, 0],
      [100, 40],
      [50, 80],
    ]);
    s.updatePolygon(k, [
      [10, 10],
      [89.9, -4.9],
      [60, 60],
    ]);
    expect(s.get(k)!.polygon[1]).toEqual([89.9, 0]);
  });
});
