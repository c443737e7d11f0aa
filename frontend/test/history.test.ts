import { describe, expect, it } from 'vitest';
import { History, type Command } from '../src/core/history';
import { AnnotationStore } from '../src/core/store';
import type { Point } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

describe('History (command pattern)', () => {
  it('undoes and redoes commands in order; a new command clears redo', () => {
    const log: string[] = [];
    const cmd = (n: string): Command => ({ label: n, do: () => log.push(`do ${n}`), undo: () => log.push(`undo ${n}`) });
    const h = new History();
    h.execute(cmd('a'));
    h.execute(cmd('b'));
    expect(h.state()).toEqual({ canUndo: true, canRedo: false, undoLabel: 'b', redoLabel: null });
    h.undo();
    h.undo();
    expect(h.undo()).toBeNull();
    h.redo();
    expect(h.state().redoLabel).toBe('b');
    h.execute(cmd('c'));
    expect(h.canRedo).toBe(false);
    expect(log).toEqual(['do a', 'do b', 'undo b', 'undo a', 'do a', 'do c']);
  });

  it('respects the size limit', () => {
    const h = new History(3);
    for (let i = 0; i < 5; i++) h.execute({ label: String(i), do() {}, undo() {} });
    expect(h.size).toBe(3);
  });
});

describe('undo/redo of store edits', () => {
  function store() {
    const s = new AnnotationStore();
    s.load({ revision: 1, cells: [{ id: 1, class_id: 1, polygon: sq(0, 0) }] });
    return s;
  }

  it('undo/redo restore geometry, class and existence', () => {
    const s = store();
    const k = s.addCell(sq(50, 50), 2);
    s.updatePolygon('s1', sq(5, 5));
    s.setClass([k], 3);
    s.removeCells(['s1']);
    s.undo();
    expect(s.get('s1')!.polygon).toEqual(sq(5, 5));
    s.undo();
    expect(s.get(k)!.classId).toBe(2);
    s.undo();
    expect(s.get('s1')!.polygon).toEqual(sq(0, 0));
    s.undo();
    expect(s.has(k)).toBe(false);
    s.redo();
    s.redo();
    expect(s.get(k)!.classId).toBe(2);
    expect(s.get('s1')!.polygon).toEqual(sq(5, 5));
  });

  it('undo and redo are user changes (dirty, origin undo/redo)', () => {
    const s = store();
    s.addCell(sq(50, 50), 2);
    const origins: string[] = [];
    s.events.on('change', (c) => origins.push(c.origin));
    s.undo();
    s.redo();
    expect(origins).toEqual(['undo', 'redo']);
    expect(s.isDirty).toBe(true);
  });

  it('server loads never enter the history and clear it', () => {
    const s = store();
    s.addCell(sq(50, 50), 2);
    expect(s.history.canUndo).toBe(true);
    s.load({ revision: 2, cells: [] });
    expect(s.history.canUndo).toBe(false);
    expect(s.history.canRedo).toBe(false);
  });

  it('server updates (accepted proposals) are not undoable and survive undo of user edits', () => {
    const s = store();
    const k = s.addCell(sq(50, 50), 2);
    expect(s.history.size).toBe(1);
    s.applyServerUpdate({ revision: 2, cells: [{ id: 1, class_id: 1, polygon: sq(0, 0) }, { id: 77, class_id: 4, polygon: sq(200, 200) }] });
    expect(s.history.size).toBe(1);
    s.undo(); // undoes the drawn cell only
    expect(s.has(k)).toBe(false);
    expect(s.has('s77')).toBe(true);
    expect(s.undo()).toBeNull();
    expect(s.has('s77')).toBe(true);
  });

  it('conflict resolutions do not enter the history: rebase keeps it, taking the server state clears it', () => {
    const s = store();
    s.addCell(sq(50, 50), 2);
    s.rebase(5, []);
    expect(s.history.size).toBe(1);
    s.load({ revision: 5, cells: [] }); // "take theirs"
    expect(s.history.size).toBe(0);
  });
});
