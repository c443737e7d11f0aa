/**
 * Members and roles of a project (the admins' Members tab): the roles with what
 * each may do, the order members are listed in, and which changes would leave
 * the project without an admin (the server refuses them with 409).
 */
import type { Member, Role } from './types';

export const ROLES: { role: Role; label: string; can: string }[] = [
  { role: 'annotator', label: 'Annotator', can: 'annotates images and submits them for review' },
  { role: 'expert', label: 'Expert', can: 'reviews submitted images (blind), may be named an adjudicator' },
  { role: 'admin', label: 'Admin', can: 'everything: members, assignments, training, models, webhooks' },
];

export function roleLabel(role: string): string {
  return ROLES.find((r) => r.role === role)?.label ?? role;
}

/** Admins first, then experts, then annotators; by name within a role. */
export function membersSorted(members: readonly Member[]): Member[] {
  const rank = (r: string) => ({ admin: 0, expert: 1, annotator: 2 })[r] ?? 3;
  return [...members].sort((a, b) => rank(a.role) - rank(b.role) || a.username.localeCompare(b.username));
}

/** Why ``member`` may not be demoted or removed (the last admin), else null. */
export function lastAdminReason(members: readonly Member[], member: Pick<Member, 'id' | 'role'>): string | null {
  if (member.role !== 'admin') return null;
  return members.some((m) => m.role === 'admin' && m.id !== member.id) ? null : 'A project must keep at least one admin.';
}

/** The invite form's check before asking the server: a username or an e-mail address. */
export function inviteProblem(login: string): string | null {
  const v = login.trim();
  if (!v) return 'Enter a username or an e-mail address.';
  if (/\s/.test(v)) return 'A username or an e-mail address has no spaces.';
  return null;
}
