import type { Point } from '../src/core/types';
import { describe, expect, it } from 'vitest';
import { isOpenProposal, lockReason, submitSummary } from '../src/core/editorState';
import { ProposalStore } from '../src/core/proposals';

const square: Point[] = [
  [0, 0],
  [10, 0],
  [10, 10],
  [0, 10],
];

describe('proposals on load', () => {
  it('keeps only the open ones (the server lists accepted and rejected ones too)', () => {
    const p = new ProposalStore();
    p.load([
      { id: 1, class_id: 1, polygon: square, state: '' },
      { id: 2, class_id: 1, polygon: square, state: 'accepted' },
      { id: 3, class_id: 1, polygon: square, state: 'rejected' },
      { id: 4, class_id: 1, polygon: square },
    ]);
    expect(p.ids().sort()).toEqual([1, 4]);
    expect(isOpenProposal({ state: 'accepted' })).toBe(false);
    expect(isOpenProposal({})).toBe(true);
  });
});

describe('lock', () => {
  it('is read only from submission on, with the reason', () => {
    for (const s of ['new', 'pre_segmented', 'annotating', null, undefined]) expect(lockReason(s)).toBeNull();
    expect(lockReason('verified')).toBe('Verified — read only. An admin can reopen it.');
    expect(lockReason('in_review')).toMatch(/^In review — read only/);
    for (const s of ['submitted', 'disputed', 'adjudication']) expect(lockReason(s)).toMatch(/read only/);
  });
});

describe('submit summary', () => {
  it('counts cells, untouched proposals and unsaved changes', () => {
    const lines = submitSummary({ cells: 12, openProposals: 139, unsaved: true });
    expect(lines.map((l) => [l.key, l.warn])).toEqual([
      ['cells', false],
      ['proposals', true],
      ['unsaved', true],
    ]);
    expect(lines[0].text).toBe('12 cells will be submitted');
    expect(lines[1].text).toMatch(/^139 open model proposals left untouched/);
  });
  it('warns on an empty image and says when everything is done', () => {
    const lines = submitSummary({ cells: 0, openProposals: 0, unsaved: false });
    expect(lines[0]).toMatchObject({ text: 'This image has no cells', warn: true });
    expect(lines[1].warn).toBe(false);
    expect(lines[2]).toMatchObject({ text: 'All changes are saved', warn: false });
    expect(submitSummary({ cells: 1, openProposals: 1, unsaved: false })[1].text).toMatch(/^1 open model proposal left/);
  });
});
