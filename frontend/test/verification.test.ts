import { describe, expect, it } from 'vitest';
import { adjudicatorChoices, namedUsers, checkDraft, consensusSentence, draftChanged, draftFrom, serverFieldErrors, toggleAdjudicator } from '../src/core/verification';
import type { Member, VerificationSettings } from '../src/core/types';

const stored: VerificationSettings = { experts_required: 2, quorum: null, match_iou: 0.5, adjudicators: [7], active_learning_order: 'none' };
const member = (id: number, username: string, role: Member['role']): Member => ({ id: id + 100, user: id, username, role, created_at: '2026-01-01T00:00:00Z' });

describe('verification settings form', () => {
  it('starts from the stored settings and sends every field once checked', () => {
    const d = draftFrom(stored);
    expect(d).toEqual({ experts_required: '2', quorum: '', match_iou: '0.5', adjudicators: [7], active_learning_order: 'none' });
    expect(draftChanged(d, stored)).toBe(false);
    const edited = { ...d, experts_required: '3', quorum: '2', match_iou: '0,6', active_learning_order: 'uncertainty' as const };
    expect(draftChanged(edited, stored)).toBe(true);
    expect(checkDraft(edited)).toEqual({ ok: true, body: { experts_required: 3, quorum: 2, match_iou: 0.6, adjudicators: [7], active_learning_order: 'uncertainty' } });
    // an empty quorum is null: every reviewer
    expect(checkDraft(d)).toMatchObject({ ok: true, body: { quorum: null } });
  });

  it('names each field that is wrong, as the server would', () => {
    const bad = checkDraft({ ...draftFrom(stored), experts_required: '0', quorum: 'x', match_iou: '1.5' });
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(Object.keys(bad.errors).sort()).toEqual(['experts_required', 'match_iou', 'quorum']);
    const over = checkDraft({ ...draftFrom(stored), experts_required: '3', quorum: '4' });
    expect(over).toEqual({ ok: false, errors: { quorum: 'At most the number of reviewers (3).' } });
    expect(checkDraft({ ...draftFrom(stored), match_iou: '0' }).ok).toBe(false);
    expect(checkDraft({ ...draftFrom(stored), experts_required: '2.5' }).ok).toBe(false);
    expect(checkDraft({ ...draftFrom(stored), experts_required: '11' }).ok).toBe(false);
  });

  it('puts the server\'s 400 under its field', () => {
    const { fields, other } = serverFieldErrors({ quorum: 'must not exceed experts_required (2)', adjudicators: ['not experts or admins of this project: [9]'], colour: 'cannot be changed here' });
    expect(fields).toEqual({ quorum: 'Must not exceed experts_required (2).', adjudicators: 'Not experts or admins of this project: [9].' });
    expect(other).toEqual(['colour: cannot be changed here']);
  });

  it('names the users the server lists by id', () => {
    expect(namedUsers('Not experts or admins of this project: [9, 3].', [member(3, 'boss', 'admin')], { 9: 'kim' })).toBe('Not experts or admins of this project: kim, boss.');
    expect(namedUsers('Not experts: [4].', [])).toBe('Not experts: user 4.');
  });

  it('offers experts as adjudicators, admins always adjudicate, annotators never', () => {
    const members = [member(1, 'zoe', 'expert'), member(2, 'ann', 'annotator'), member(3, 'boss', 'admin'), member(7, 'eve', 'expert')];
    expect(adjudicatorChoices(members, [7])).toEqual([
      { user: 3, username: 'boss', role: 'admin', always: true, chosen: true },
      { user: 7, username: 'eve', role: 'expert', always: false, chosen: true },
      { user: 1, username: 'zoe', role: 'expert', always: false, chosen: false },
    ]);
    expect(toggleAdjudicator([7], 1, true)).toEqual([1, 7]);
    expect(toggleAdjudicator([1, 7], 7, false)).toEqual([1]);
    expect(toggleAdjudicator([1], 1, true)).toEqual([1]);
  });

  it('says the consensus rule in words', () => {
    expect(consensusSentence(draftFrom(stored))).toBe('Each submitted image goes to 2 experts; all 2 reviewers must support a cell, contours matching at IoU ≥ 0.50.');
    expect(consensusSentence({ ...draftFrom(stored), experts_required: '3', quorum: '2' })).toContain('2 of 3 reviewers');
    expect(consensusSentence({ ...draftFrom(stored), experts_required: 'x' })).toBe('');
  });
});
