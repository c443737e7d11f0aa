/**
 * Personal API tokens (`auth/tokens`): their state, the expiry choices and the
 * create form's body. The secret is shown once, when the token is created.
 */
import type { ApiToken } from './types';

export type TokenState = 'active' | 'expired' | 'revoked';

export function tokenState(t: Pick<ApiToken, 'expires_at' | 'revoked_at'>, now = Date.now()): TokenState {
  if (t.revoked_at) return 'revoked';
  if (t.expires_at && Date.parse(t.expires_at) <= now) return 'expired';
  return 'active';
}

/** Active tokens first (newest first), then expired and revoked ones. */
export function tokensSorted(tokens: readonly ApiToken[], now = Date.now()): ApiToken[] {
  const rank = (t: ApiToken) => (tokenState(t, now) === 'active' ? 0 : 1);
  return [...tokens].sort((a, b) => rank(a) - rank(b) || Date.parse(b.created_at) - Date.parse(a.created_at));
}

export const EXPIRY_CHOICES: { days: number | null; label: string }[] = [
  { days: 7, label: '7 days' },
  { days: 30, label: '30 days' },
  { days: 90, label: '90 days' },
  { days: 365, label: '1 year' },
  { days: null, label: 'Never' },
];

export interface TokenForm {
  name: string;
  /** Project id, or null for every project the user belongs to. */
  project: number | null;
  expiresInDays: number | null;
}

/** The POST body and the form's errors (a name is required, at most 100 characters). */
export function tokenBody(form: TokenForm): { body: { name: string; project?: number; expires_in_days?: number } | null; errors: Partial<Record<'name', string>> } {
  const name = form.name.trim();
  if (!name) return { body: null, errors: { name: 'Give the token a name, e.g. the script that uses it.' } };
  if (name.length > 100) return { body: null, errors: { name: 'At most 100 characters.' } };
  const body: { name: string; project?: number; expires_in_days?: number } = { name };
  if (form.project != null) body.project = form.project;
  if (form.expiresInDays != null) body.expires_in_days = form.expiresInDays;
  return { body, errors: {} };
}
