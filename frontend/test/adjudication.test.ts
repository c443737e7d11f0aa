import { describe, expect, it } from 'vitest';
import { AdjudicationModel, EXPERT_COLORS, reasonText } from '../src/core/adjudication';
import type { Adjudication, Dispute, Point } from '../src/core/types';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

function dispute(id: number, over: Partial<Dispute> = {}): Dispute {
  return {
    id,
    reason: 'quorum',
    origin_cell_id: 100 + id,
    annotation: { polygon: sq(0, 0), class_id: 1 },
    versions: [
      { review_id: 11, reviewer_id: 5, username: 'bea', decision: 'edit', polygon: sq(1, 1), class_id: 1 },
      { review_id: 12, reviewer_id: 3, username: 'ali', decision: 'reject', polygon: null, class_id: null },
    ],
    candidate: sq(1, 0),
    candidate_class_id: 1,
    status: 'open',
    choice: '',
    polygon: null,
    class_id: null,
    resolved_by: null,
    resolved_at: null,
    ...over,
  };
}

function model(disputes: Dispute[]): AdjudicationModel {
  const m = new AdjudicationModel();
  const a: Adjudication = { image: 1, region: null, status: 'disputed', round: null, agreed: 4, disputes };
  m.load(a);
  return m;
}

describe('AdjudicationModel', () => {
  it('lists the choosable versions with a stable colour per expert', () => {
    const m = model([dispute(1), dispute(2, { versions: [{ review_id: 13, reviewer_id: 9, username: 'cy', decision: 'add', polygon: sq(5, 5), class_id: 2 }], annotation: null, candidate: null })]);
    const opts = m.options(m.get(1)!);
    expect(opts.map((o) => o.id)).toEqual(['11', 'annotation', 'candidate']);
    expect(opts[0]).toMatchObject({ kind: 'expert', label: 'bea', decision: 'edit' });
    // colours by reviewer id over the whole image: ali(3), bea(5), cy(9)
    expect(m.colorOf(3)).toBe(EXPERT_COLORS[0]);
    expect(m.colorOf(5)).toBe(EXPERT_COLORS[1]);
    expect(m.colorOf(9)).toBe(EXPERT_COLORS[2]);
    expect(m.experts().map((e) => e.username)).toEqual(['ali', 'bea', 'cy']);
    expect(m.nonOptions(m.get(1)!)).toEqual([{ username: 'ali', decision: 'reject', color: EXPERT_COLORS[0] }]);
    expect(m.options(m.get(2)!).map((o) => o.id)).toEqual(['13']);
    expect(reasonText('class')).toMatch(/class/);
  });

  it('builds the POST body: a review id, the candidate as own, reject, class refinements', () => {
    const m = model([dispute(1), dispute(2), dispute(3), dispute(4)]);
    m.choose(1, '11');
    m.choose(2, 'candidate');
    m.choose(3, 'reject');
    m.choose(4, 'annotation', { classId: 2 });
    const { decisions, errors } = m.payload();
    expect(errors).toEqual({});
    expect(decisions).toEqual([
      { dispute_id: 1, choice: '11' },
      { dispute_id: 2, choice: 'own', polygon: sq(1, 0), class_id: 1 },
      { dispute_id: 3, choice: 'reject' },
      { dispute_id: 4, choice: 'annotation', class_id: 2 },
    ]);
    expect(m.counts()).toEqual({ total: 4, resolved: 0, pending: 4, open: 0 });
  });

  it('own needs a contour; refining a chosen version sends its polygon', () => {
    const m = model([dispute(1), dispute(2)]);
    m.choose(1, 'own');
    m.choose(2, '11');
    m.refine(2, sq(2, 2));
    const { decisions, errors } = m.payload();
    expect(errors).toEqual({ 1: 'Draw a contour first' });
    expect(decisions).toEqual([{ dispute_id: 2, choice: '11', polygon: sq(2, 2) }]);
    m.choose(1, 'own', { polygon: sq(7, 7) });
    expect(m.payload().decisions[0]).toEqual({ dispute_id: 1, choice: 'own', polygon: sq(7, 7), class_id: 1 });
    expect(m.resolve(m.get(2)!, m.effective(2)!)).toEqual({ polygon: sq(2, 2), classId: 1 });
  });

  it('resolved disputes count as decided; navigation prefers undecided ones', () => {
    const m = model([dispute(1), dispute(2, { status: 'resolved', choice: 'reject' }), dispute(3)]);
    expect(m.isDecided(2)).toBe(true);
    expect(m.effective(2)).toEqual({ option: 'reject' });
    expect(m.counts()).toEqual({ total: 3, resolved: 1, pending: 0, open: 2 });
    expect(m.next(null)).toBe(1);
    expect(m.next(1)).toBe(3);
    expect(m.next(3)).toBe(1);
    m.choose(1, '11');
    expect(m.next(3)).toBe(1); // nothing else undecided: plain neighbour
    expect(m.undecided().map((d) => d.id)).toEqual([3]);
    m.clear(1);
    expect(m.hasPending).toBe(false);
    expect(m.next(3, -1)).toBe(1);
  });

  it('setClass keeps the chosen option and applies to the payload', () => {
    const m = model([dispute(1)]);
    m.setClass(1, 2); // nothing chosen yet: ignored
    expect(m.pendingOf(1)).toBeUndefined();
    m.choose(1, '11');
    m.setClass(1, 2);
    expect(m.payload().decisions).toEqual([{ dispute_id: 1, choice: '11', class_id: 2 }]);
    m.choose(1, 'reject');
    expect(m.pendingOf(1)).toEqual({ option: 'reject' });
  });
});

describe('refinements', () => {
  it('a resolved choice is a refinement only when its contour differs from the option’s', () => {
    const m = model([
      dispute(1, { status: 'resolved', choice: '11', polygon: sq(1.2, 1.1), class_id: 1 }),
      dispute(2, { status: 'resolved', choice: '11', polygon: sq(5, 5), class_id: 1 }),
    ]);
    expect(m.effective(1)).toEqual({ option: '11', polygon: undefined, classId: 1 });
    expect(m.isRefined(m.get(2)!, m.effective(2)!)).toBe(true);
    expect(m.isRefined(m.get(1)!, m.effective(1)!)).toBe(false);
  });
});
