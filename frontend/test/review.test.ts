import { describe, expect, it } from 'vitest';
import { nextKey, readingOrder, ReviewDraft } from '../src/core/review';
import { AnnotationStore } from '../src/core/store';
import type { ApiCell, Point, Review } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];
const cells: ApiCell[] = [
  { id: 1, class_id: 7, polygon: sq(0, 0) },
  { id: 2, class_id: 7, polygon: sq(20, 0) },
  { id: 3, class_id: 8, polygon: sq(40, 0) },
];

function draft(review: Partial<Review> | null = null): ReviewDraft {
  const d = new ReviewDraft(new AnnotationStore());
  d.load(cells, review ? ({ decisions: [], added: [], comments: [], ...review } as Review) : null);
  return d;
}

describe('ReviewDraft', () => {
  it('starts with every annotation cell undecided and nothing to save', () => {
    const d = draft();
    expect(d.counts()).toEqual({ total: 3, accepted: 0, rejected: 0, edited: 0, added: 0, undecided: 3 });
    expect(d.isDirty).toBe(false);
    expect(d.payload()).toEqual({ decisions: [], added: [], comments: [] });
    expect(d.undecidedKeys()).toEqual(['s1', 's2', 's3']);
  });

  it('accepts and rejects through the undo history', () => {
    const d = draft();
    d.accept(['s1']);
    d.reject(['s2']);
    expect(d.stateOf('s1')).toBe('accepted');
    expect(d.stateOf('s2')).toBe('rejected');
    expect(d.isDirty).toBe(true);
    expect(d.payload().decisions).toEqual([
      { cell_id: 1, decision: 'accept' },
      { cell_id: 2, decision: 'reject' },
    ]);
    d.store.undo();
    expect(d.stateOf('s2')).toBe('undecided');
    d.store.redo();
    expect(d.stateOf('s2')).toBe('rejected');
    expect(d.store.history.size).toBe(2);
  });

  it('a changed contour or class is an edit, sent with the polygon and the corrected class', () => {
    const d = draft();
    d.store.updatePolygon('s1', sq(0, 0, 12));
    d.store.setClass(['s3'], 7);
    expect(d.stateOf('s1')).toBe('edited');
    expect(d.stateOf('s3')).toBe('edited');
    const p = d.payload();
    expect(p.decisions[0]).toEqual({ cell_id: 1, decision: 'edit', polygon: sq(0, 0, 12) });
    expect(p.decisions[1]).toEqual({ cell_id: 3, decision: 'edit', polygon: sq(40, 0), class_id: 7 });
    // accepting an edited cell keeps the edit; rejecting wins over it
    d.accept(['s1']);
    expect(d.stateOf('s1')).toBe('edited');
    d.reject(['s1']);
    expect(d.payload().decisions[0]).toEqual({ cell_id: 1, decision: 'reject' });
  });

  it('reset goes back to the original contour and undecided in one undo step', () => {
    const d = draft();
    d.store.updatePolygon('s2', sq(21, 1));
    d.accept(['s2']);
    d.reset(['s2']);
    expect(d.stateOf('s2')).toBe('undecided');
    expect(d.store.get('s2')!.polygon).toEqual(sq(20, 0));
    d.store.undo();
    expect(d.stateOf('s2')).toBe('edited');
  });

  it('added cells need a class; rejecting one removes it', () => {
    const d = draft();
    d.defaultClassId = 8;
    const k = d.store.addCell(sq(100, 100), null);
    expect(d.stateOf(k)).toBe('added');
    expect(d.isAdded(k)).toBe(true);
    expect(d.payload().added).toEqual([{ class_id: 8, polygon: sq(100, 100) }]);
    expect(d.counts().added).toBe(1);
    d.reject([k]);
    expect(d.store.has(k)).toBe(false);
    expect(d.payload().added).toEqual([]);
  });

  it('comments on a cell or the image; comments on added cells are refused', () => {
    const d = draft();
    d.addComment('s2', '  nucleus cut  ');
    d.addComment(null, 'out of focus on the left');
    const k = d.store.addCell(sq(100, 100), 7);
    expect(d.addComment(k, 'x')).toMatchObject({ cell_id: null });
    expect(d.addComment('s1', '   ')).toBeNull();
    expect(d.commentsOf('s2').map((c) => c.text)).toEqual(['nucleus cut']);
    expect(d.payload().comments).toEqual([
      { cell_id: 2, text: 'nucleus cut' },
      { cell_id: null, text: 'out of focus on the left' },
      { cell_id: null, text: 'x' },
    ]);
    d.removeComment(d.commentsOf('s2')[0]);
    expect(d.commentsOf('s2')).toEqual([]);
  });

  it('loads a saved draft: marks, edits applied to the contours, added cells, comments — clean', () => {
    const d = draft({
      decisions: [
        { cell_id: 1, decision: 'accept' },
        { cell_id: 2, decision: 'edit', polygon: sq(22, 2), class_id: 8 },
        { cell_id: 3, decision: 'reject' },
      ],
      added: [{ id: 99, class_id: 7, polygon: sq(60, 60) }],
      comments: [{ cell_id: null, text: 'hi', created_at: '2024-01-01T00:00:00Z' }],
    });
    expect(d.isDirty).toBe(false);
    expect(d.store.history.canUndo).toBe(false);
    expect(d.counts()).toEqual({ total: 3, accepted: 1, rejected: 1, edited: 1, added: 1, undecided: 0 });
    expect(d.store.get('s2')).toMatchObject({ classId: 8, polygon: sq(22, 2) });
    const p = d.payload();
    expect(p.decisions).toEqual([
      { cell_id: 1, decision: 'accept' },
      { cell_id: 2, decision: 'edit', polygon: sq(22, 2), class_id: 8 },
      { cell_id: 3, decision: 'reject' },
    ]);
    expect(p.added).toEqual([{ class_id: 7, polygon: sq(60, 60) }]);
    expect(p.comments).toEqual([{ cell_id: null, text: 'hi' }]);
  });

  it('emits the keys whose state changed', () => {
    const d = draft();
    const seen: string[][] = [];
    d.events.on('change', (e) => seen.push(e.keys));
    d.accept(['s1', 's3']);
    d.store.updatePolygon('s2', sq(20, 0, 11));
    expect(seen).toEqual([['s1', 's3'], ['s2']]);
  });
});

describe('cell navigation', () => {
  it('orders cells in reading order: rows top to bottom, left to right', () => {
    const order = readingOrder([
      { key: 'c', polygon: sq(50, 52) },
      { key: 'a', polygon: sq(80, 0) },
      { key: 'b', polygon: sq(10, 3) },
      { key: 'd', polygon: sq(0, 50) },
    ]);
    expect(order).toEqual(['b', 'a', 'd', 'c']);
    expect(readingOrder([])).toEqual([]);
  });

  it('finds the next / previous preferred key, wrapping, else the neighbour', () => {
    const order = ['a', 'b', 'c', 'd'];
    const undecided = new Set(['a', 'c']);
    const want = (k: string) => undecided.has(k);
    expect(nextKey(order, null, 1, want)).toBe('a');
    expect(nextKey(order, 'a', 1, want)).toBe('c');
    expect(nextKey(order, 'c', 1, want)).toBe('a');
    expect(nextKey(order, 'a', -1, want)).toBe('c');
    expect(nextKey(order, null, -1, want)).toBe('c');
    undecided.clear();
    expect(nextKey(order, 'b', 1, want)).toBe('c');
    expect(nextKey(order, 'd', 1, want)).toBe('a');
    expect(nextKey(order, 'a', -1)).toBe('d');
    expect(nextKey([], null)).toBeNull();
    // the only preferred key is the current one: move on anyway
    expect(nextKey(['a', 'b'], 'a', 1, (k) => k === 'a')).toBe('b');
  });
});
