import { describe, expect, it } from 'vitest';
import { inviteProblem, lastAdminReason, membersSorted, roleLabel } from '../src/core/members';
import type { Member } from '../src/core/types';

const m = (id: number, username: string, role: Member['role']): Member => ({ id, user: id, username, role, created_at: '2026-01-01T00:00:00Z' });

describe('members', () => {
  const members = [m(1, 'zoe', 'annotator'), m(2, 'dr.kim', 'expert'), m(3, 'head', 'admin'), m(4, 'ana', 'annotator')];

  it('lists admins, experts, then annotators, by name', () => {
    expect(membersSorted(members).map((x) => x.username)).toEqual(['head', 'dr.kim', 'ana', 'zoe']);
    expect(roleLabel('expert')).toBe('Expert');
  });

  it('keeps the last admin', () => {
    expect(lastAdminReason(members, members[2])).toBe('A project must keep at least one admin.');
    expect(lastAdminReason(members, members[0])).toBeNull();
    expect(lastAdminReason([...members, m(5, 'second', 'admin')], members[2])).toBeNull();
  });

  it('checks the invite field', () => {
    expect(inviteProblem('  ')).toMatch(/username or an e-mail/);
    expect(inviteProblem('a b')).toMatch(/no spaces/);
    expect(inviteProblem(' kim@clinic.example ')).toBeNull();
  });
});
