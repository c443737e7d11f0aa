/**
 * The project's verification settings (admins' Verification tab,
 * `GET/PATCH projects/{id}/verification`): the form's draft, its checks before
 * asking the server (the same rules as the server's, which still decides), the
 * PATCH body, the server's 400 per field, who may be named an adjudicator, and
 * the active-learning orders with what each does. Framework free, unit tested.
 */
import type { Member, VerificationSettings, VerificationSettingsUpdate } from './types';

export type ActiveLearningOrder = VerificationSettings['active_learning_order'];
export type VerificationField = 'experts_required' | 'quorum' | 'match_iou' | 'adjudicators' | 'active_learning_order';

export const VERIFICATION_FIELDS: readonly VerificationField[] = ['experts_required', 'quorum', 'match_iou', 'adjudicators', 'active_learning_order'];

export const ORDERS: { order: ActiveLearningOrder; label: string; help: string }[] = [
  { order: 'none', label: 'Upload order', help: 'Images waiting for annotation come in the order they were uploaded.' },
  { order: 'uncertainty', label: 'Most uncertain first', help: 'Lowest mean proposal score first: the model is least sure there (images without proposals last).' },
  { order: 'disagreement', label: 'Most disputed first', help: 'Lowest past expert agreement first: the image’s own earlier rounds, else its slide’s other images (no history last).' },
];

/** The form as typed: numbers stay text until checked. */
export interface VerificationDraft {
  experts_required: string;
  /** Empty: every assigned expert must agree. */
  quorum: string;
  match_iou: string;
  adjudicators: number[];
  active_learning_order: ActiveLearningOrder;
}

export function draftFrom(s: VerificationSettings): VerificationDraft {
  return {
    experts_required: String(s.experts_required),
    quorum: s.quorum == null ? '' : String(s.quorum),
    match_iou: String(s.match_iou),
    adjudicators: [...s.adjudicators].sort((a, b) => a - b),
    active_learning_order: s.active_learning_order,
  };
}

const INT = /^\s*\d+\s*$/;

export type DraftCheck = { ok: true; body: Required<VerificationSettingsUpdate> } | { ok: false; errors: Partial<Record<VerificationField, string>> };

/** The server's rules (annotations/services/projects.py, review/services/settings.py), checked before sending. */
export function checkDraft(d: VerificationDraft): DraftCheck {
  const errors: Partial<Record<VerificationField, string>> = {};
  const k = INT.test(d.experts_required) ? Number(d.experts_required) : NaN;
  if (!Number.isInteger(k) || k < 1 || k > 10) errors.experts_required = 'Enter a whole number from 1 to 10.';
  let quorum: number | null = null;
  if (d.quorum.trim() !== '') {
    quorum = INT.test(d.quorum) ? Number(d.quorum) : NaN;
    if (!Number.isInteger(quorum) || quorum < 1) errors.quorum = 'Enter a whole number of at least 1, or leave empty for all reviewers.';
    else if (Number.isInteger(k) && quorum > k) errors.quorum = `At most the number of reviewers (${k}).`;
  }
  const iouText = d.match_iou.trim().replace(',', '.');
  const iou = iouText === '' ? NaN : Number(iouText);
  if (!Number.isFinite(iou) || iou <= 0 || iou > 1) errors.match_iou = 'Enter a number above 0 and at most 1 (e.g. 0.5).';
  if (!ORDERS.some((o) => o.order === d.active_learning_order)) errors.active_learning_order = 'Choose an order.';
  if (Object.keys(errors).length) return { ok: false, errors };
  return { ok: true, body: { experts_required: k, quorum, match_iou: iou, adjudicators: [...d.adjudicators].sort((a, b) => a - b), active_learning_order: d.active_learning_order } };
}

/** True when the draft differs from the stored settings. */
export function draftChanged(d: VerificationDraft, s: VerificationSettings): boolean {
  const a = draftFrom(s);
  return (
    a.experts_required !== d.experts_required.trim() ||
    a.quorum !== d.quorum.trim() ||
    Number(a.match_iou) !== Number(d.match_iou.trim().replace(',', '.')) ||
    a.active_learning_order !== d.active_learning_order ||
    a.adjudicators.join(',') !== [...d.adjudicators].sort((x, y) => x - y).join(',')
  );
}

/** The server's 400 (`errors: {field: message}`) per form field; what no field shows under `other`. */
export function serverFieldErrors(fieldErrors: Record<string, unknown>): { fields: Partial<Record<VerificationField, string>>; other: string[] } {
  const fields: Partial<Record<VerificationField, string>> = {};
  const other: string[] = [];
  for (const [key, value] of Object.entries(fieldErrors)) {
    const text = Array.isArray(value) ? value.map(String).join(' ') : String(value);
    const msg = text ? text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? '' : '.') : 'Invalid.';
    if ((VERIFICATION_FIELDS as readonly string[]).includes(key)) fields[key as VerificationField] = msg;
    else other.push(`${key}: ${text}`);
  }
  return { fields, other };
}

/** The server names users by id (`not experts or admins of this project: [9]`): say their names. */
export function namedUsers(message: string, members: readonly Pick<Member, 'user' | 'username'>[], known: Record<number, string> = {}): string {
  return message.replace(/\[(\d+(?:,\s*\d+)*)\]/g, (_, ids: string) =>
    ids
      .split(',')
      .map((x) => Number(x.trim()))
      .map((id) => members.find((m) => m.user === id)?.username ?? known[id] ?? `user ${id}`)
      .join(', '),
  );
}

export interface AdjudicatorChoice {
  user: number;
  username: string;
  role: Member['role'];
  /** Admins always adjudicate: shown ticked, not a choice. */
  always: boolean;
  chosen: boolean;
}

/** Who may be named: the project's experts (a choice) and admins (always). Annotators never. */
export function adjudicatorChoices(members: readonly Member[], chosen: readonly number[]): AdjudicatorChoice[] {
  return members
    .filter((m) => m.role === 'expert' || m.role === 'admin')
    .map((m) => ({ user: m.user, username: m.username, role: m.role, always: m.role === 'admin', chosen: m.role === 'admin' || chosen.includes(m.user) }))
    .sort((a, b) => Number(b.always) - Number(a.always) || a.username.localeCompare(b.username));
}

/** Adds or removes an expert from the adjudicators. */
export function toggleAdjudicator(chosen: readonly number[], user: number, on: boolean): number[] {
  const rest = chosen.filter((u) => u !== user);
  return (on ? [...rest, user] : rest).sort((a, b) => a - b);
}

/** The consensus rule in words: "2 of 3 reviewers must agree on a cell (IoU ≥ 0.50)". */
export function consensusSentence(d: VerificationDraft): string {
  const check = checkDraft(d);
  if (!check.ok) return '';
  const { experts_required: k, quorum, match_iou: iou } = check.body;
  const q = quorum ?? k;
  const who = q === k ? (k === 1 ? 'The reviewer' : `All ${k} reviewers`) : `${q} of ${k} reviewers`;
  return `Each submitted image goes to ${k} expert${k === 1 ? '' : 's'}; ${who.charAt(0).toLowerCase() + who.slice(1)} must support a cell, contours matching at IoU ≥ ${iou.toFixed(2)}.`;
}
