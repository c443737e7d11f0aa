import { describe, expect, it } from 'vitest';
import { previewDiff, previewSentence, revisionAction, revisionRows, revisionSummary } from '../src/core/revisions';

const sq = (x: number) => [
  [x, 0],
  [x + 5, 0],
  [x + 5, 5],
];

describe('image history', () => {
  it('words each revision', () => {
    expect(revisionAction('replace')).toBe('Saved');
    expect(revisionAction('restore:3')).toBe('Restored revision 3');
    expect(revisionAction('accept_proposals')).toBe('Accepted proposals');
    expect(revisionAction('import')).toBe('Imported');
    expect(revisionAction('bulk_fix')).toBe('Bulk fix');
    expect(revisionSummary({ added: 2, changed: 1, deleted: 3 })).toBe('+2 added · 1 changed · 3 removed');
    expect(revisionSummary({ added: 0, changed: 0, deleted: 0 })).toBe('no cell changed');
    expect(revisionSummary(null)).toBe('no cell changed');
  });

  it('lists the newest first and marks the current one', () => {
    const rows = revisionRows(
      [
        { revision: 1, author: 'ana', action: 'replace', summary: { added: 1 }, created_at: '2026-01-01T10:00:00Z' },
        { revision: 2, author: '', action: 'restore:1', summary: {}, created_at: '2026-01-01T11:00:00Z' },
      ],
      2,
    );
    expect(rows.map((r) => [r.revision, r.title, r.author, r.summary, r.current])).toEqual([
      [2, 'Restored revision 1', 'unknown', 'no cell changed', true],
      [1, 'Saved', 'ana', '+1 added', false],
    ]);
  });

  it('compares a previewed revision with the cells shown now', () => {
    const then = [
      { id: 1, class_id: 1, polygon: sq(0) },
      { id: 2, class_id: 1, polygon: sq(10) },
      { id: 3, class_id: 1, polygon: sq(20) },
    ];
    const now = [
      { id: 1, class_id: 1, polygon: sq(0) }, // same
      { id: 2, class_id: 2, polygon: sq(10) }, // class changed
      { id: 4, class_id: 1, polygon: sq(30) }, // saved later
      { id: undefined, class_id: 1, polygon: sq(40) }, // not saved yet
    ];
    const d = previewDiff(then, now);
    expect(d).toEqual({ cells: 3, onlyThen: 1, onlyNow: 2, different: 1 });
    expect(previewSentence(4, d)).toBe('Preview of revision 4 · 3 cells · 1 not in the current version · 1 different now · 2 added since');
    expect(previewSentence(1, previewDiff([then[0]], [now[0]]))).toBe('Preview of revision 1 · 1 cell · same as now');
  });
});
