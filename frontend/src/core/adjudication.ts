/**
 * Adjudication of one image's disputed cells (docs/api.md "Adjudication"),
 * framework free: the options of each dispute (every expert's version, the
 * annotator's cell, the fused candidate, the adjudicator's own contour,
 * reject), the adjudicator's pending choices and the POST body.
 */
import { Emitter } from './events';
import type { Adjudication, AdjudicationDecisionIO, Dispute, Point, Ring } from './types';

/** Outline colours per expert (readable on pink/purple stained cytology images). */
export const EXPERT_COLORS = ['#22d3ee', '#fb923c', '#a3e635', '#f472b6', '#60a5fa', '#c084fc', '#facc15', '#2dd4bf'];
export const ANNOTATION_COLOR = '#e2e8f0';
export const CANDIDATE_COLOR = '#fde047';
export const OWN_COLOR = '#ffffff';

export type OptionKind = 'expert' | 'annotation' | 'candidate' | 'own';

export interface DisputeOption {
  /** `choice` sent to the API: a review id, `annotation` or `own` (the candidate is sent as `own`). */
  id: string;
  kind: OptionKind;
  label: string;
  /** accept / edit / add for experts; absent or reject versions have no polygon and are not options */
  decision: string;
  polygon: Ring;
  classId: number | null;
  color: string;
  reviewerId?: number;
}

export interface PendingChoice {
  /** option id: a review id, `annotation`, `candidate`, `own`, or `reject` */
  option: string;
  /** own contour, or a refined version of the chosen option */
  polygon?: Ring;
  /** a class other than the option's */
  classId?: number | null;
}

/** Same contour within half a pixel per vertex (server-side cleaning may round coordinates). */
export function ringsClose(a: readonly Point[] | null | undefined, b: readonly Point[] | null | undefined, tol = 0.5): boolean {
  if (!a || !b) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i][0] - b[i][0]) > tol || Math.abs(a[i][1] - b[i][1]) > tol) return false;
  return true;
}

export function reasonText(reason: string): string {
  if (reason === 'quorum') return 'Not enough experts kept this cell';
  if (reason === 'added') return 'Added by an expert, not confirmed';
  if (reason === 'class') return 'Same contour, different class';
  return reason;
}

export class AdjudicationModel {
  readonly events = new Emitter<{ change: { disputeId: number | null } }>();
  disputes: Dispute[] = [];
  status = '';
  agreed = 0;
  private pending = new Map<number, PendingChoice>();
  private colors = new Map<number, string>();

  load(a: Adjudication): void {
    this.disputes = [...a.disputes].sort((x, y) => x.id - y.id);
    this.status = a.status;
    this.agreed = a.agreed;
    this.pending = new Map();
    const reviewers = new Map<number, string>();
    for (const d of this.disputes) for (const v of d.versions) reviewers.set(v.reviewer_id, v.username);
    this.colors = new Map([...reviewers.keys()].sort((a, b) => a - b).map((id, i) => [id, EXPERT_COLORS[i % EXPERT_COLORS.length]]));
    this.events.emit('change', { disputeId: null });
  }

  /** Experts of this image with their colours (legend). */
  experts(): { reviewerId: number; username: string; color: string }[] {
    const names = new Map<number, string>();
    for (const d of this.disputes) for (const v of d.versions) names.set(v.reviewer_id, v.username);
    return [...this.colors.entries()].map(([reviewerId, color]) => ({ reviewerId, username: names.get(reviewerId) ?? `#${reviewerId}`, color }));
  }

  colorOf(reviewerId: number): string {
    return this.colors.get(reviewerId) ?? EXPERT_COLORS[0];
  }

  get(id: number): Dispute | undefined {
    return this.disputes.find((d) => d.id === id);
  }

  /** The choosable contours of a dispute, experts first (in reviewer order). */
  options(d: Dispute): DisputeOption[] {
    const out: DisputeOption[] = [];
    const versions = [...d.versions].sort((a, b) => a.reviewer_id - b.reviewer_id);
    for (const v of versions) {
      if (!v.polygon || v.polygon.length < 3) continue;
      out.push({
        id: String(v.review_id),
        kind: 'expert',
        label: v.username || `expert ${v.reviewer_id}`,
        decision: v.decision,
        polygon: v.polygon,
        classId: v.class_id,
        color: this.colorOf(v.reviewer_id),
        reviewerId: v.reviewer_id,
      });
    }
    if (d.annotation?.polygon && d.annotation.polygon.length >= 3) {
      out.push({ id: 'annotation', kind: 'annotation', label: "Annotator's cell", decision: 'annotation', polygon: d.annotation.polygon, classId: d.annotation.class_id, color: ANNOTATION_COLOR });
    }
    if (d.candidate && d.candidate.length >= 3) {
      out.push({ id: 'candidate', kind: 'candidate', label: 'Fused candidate', decision: 'majority vote', polygon: d.candidate, classId: d.candidate_class_id, color: CANDIDATE_COLOR });
    }
    return out;
  }

  /** Versions that are not contours (the expert rejected the cell or never drew it). */
  nonOptions(d: Dispute): { username: string; decision: string; color: string }[] {
    return d.versions.filter((v) => !v.polygon || v.polygon.length < 3).map((v) => ({ username: v.username, decision: v.decision, color: this.colorOf(v.reviewer_id) }));
  }

  // ------------------------------------------------------------ choices

  choose(disputeId: number, option: string, extra: { polygon?: Ring; classId?: number | null } = {}): void {
    const cur = this.pending.get(disputeId);
    const next: PendingChoice = { option };
    if (extra.polygon) next.polygon = extra.polygon;
    const classId = extra.classId !== undefined ? extra.classId : cur?.classId;
    if (classId !== undefined && option !== 'reject') next.classId = classId;
    this.pending.set(disputeId, next);
    this.events.emit('change', { disputeId });
  }

  setClass(disputeId: number, classId: number | null): void {
    const cur = this.pending.get(disputeId) ?? this.serverChoice(disputeId);
    if (!cur || cur.option === 'reject') return;
    this.pending.set(disputeId, { ...cur, classId });
    this.events.emit('change', { disputeId });
  }

  /** A refined contour for the chosen option (vertex edits on the map). */
  refine(disputeId: number, polygon: Ring): void {
    const cur = this.pending.get(disputeId) ?? this.serverChoice(disputeId);
    if (!cur || cur.option === 'reject') return;
    this.pending.set(disputeId, { ...cur, polygon });
    this.events.emit('change', { disputeId });
  }

  clear(disputeId: number): void {
    if (this.pending.delete(disputeId)) this.events.emit('change', { disputeId });
  }

  pendingOf(disputeId: number): PendingChoice | undefined {
    return this.pending.get(disputeId);
  }

  /** A resolved dispute's decision, as a choice (its polygon only when it differs from the option's). */
  serverChoice(disputeId: number): PendingChoice | undefined {
    const d = this.get(disputeId);
    if (!d || d.status !== 'resolved' || !d.choice) return undefined;
    if (d.choice === 'reject') return { option: 'reject' };
    const opt = this.options(d).find((o) => o.id === d.choice);
    const polygon = d.polygon && !(opt && ringsClose(opt.polygon, d.polygon)) ? d.polygon : undefined;
    return { option: d.choice, polygon, classId: d.class_id };
  }

  /** True when the choice carries a contour different from its option's (a refinement). */
  isRefined(d: Dispute, c: PendingChoice): boolean {
    if (!c.polygon || c.option === 'own' || c.option === 'reject') return false;
    const opt = this.options(d).find((o) => o.id === c.option);
    return !!opt && !ringsClose(opt.polygon, c.polygon);
  }

  /** What counts now: the pending choice, else the server's decision. */
  effective(disputeId: number): PendingChoice | undefined {
    return this.pending.get(disputeId) ?? this.serverChoice(disputeId);
  }

  isDecided(disputeId: number): boolean {
    return this.effective(disputeId) !== undefined;
  }

  /** The polygon and class a choice stands for (null for reject). */
  resolve(d: Dispute, c: PendingChoice): { polygon: Ring; classId: number | null } | null {
    if (c.option === 'reject') return null;
    const opt = this.options(d).find((o) => o.id === c.option);
    const polygon = c.polygon ?? opt?.polygon ?? null;
    if (!polygon) return null;
    const classId = c.classId !== undefined ? c.classId : (opt?.classId ?? d.candidate_class_id ?? null);
    return { polygon, classId };
  }

  counts(): { total: number; resolved: number; pending: number; open: number } {
    let resolved = 0;
    let pending = 0;
    for (const d of this.disputes) {
      if (this.pending.has(d.id)) pending++;
      else if (d.status === 'resolved') resolved++;
    }
    return { total: this.disputes.length, resolved, pending, open: this.disputes.length - resolved - pending };
  }

  /** Open disputes with no pending choice. */
  undecided(): Dispute[] {
    return this.disputes.filter((d) => !this.isDecided(d.id));
  }

  get hasPending(): boolean {
    return this.pending.size > 0;
  }

  /**
   * The POST body for the pending choices. The candidate goes as `own` with its
   * polygon; a class or contour differing from the option's is sent explicitly.
   * Errors name the disputes that cannot be sent (`own` without a contour).
   */
  payload(): { decisions: AdjudicationDecisionIO[]; errors: Record<number, string> } {
    const decisions: AdjudicationDecisionIO[] = [];
    const errors: Record<number, string> = {};
    for (const d of this.disputes) {
      const c = this.pending.get(d.id);
      if (!c) continue;
      if (c.option === 'reject') {
        decisions.push({ dispute_id: d.id, choice: 'reject' });
        continue;
      }
      const opt = this.options(d).find((o) => o.id === c.option);
      if (c.option === 'own' || c.option === 'candidate') {
        const polygon = c.polygon ?? opt?.polygon;
        if (!polygon || polygon.length < 3) {
          errors[d.id] = 'Draw a contour first';
          continue;
        }
        const item: AdjudicationDecisionIO = { dispute_id: d.id, choice: 'own', polygon: polygon.map((p) => [p[0], p[1]] as Point) };
        const classId = c.classId !== undefined ? c.classId : (opt?.classId ?? d.candidate_class_id);
        if (classId != null) item.class_id = classId;
        decisions.push(item);
        continue;
      }
      if (!opt) {
        errors[d.id] = 'That version is no longer available';
        continue;
      }
      const item: AdjudicationDecisionIO = { dispute_id: d.id, choice: c.option };
      if (c.polygon) item.polygon = c.polygon.map((p) => [p[0], p[1]] as Point);
      if (c.classId !== undefined && c.classId !== null && c.classId !== opt.classId) item.class_id = c.classId;
      decisions.push(item);
    }
    return { decisions, errors };
  }

  /** Next dispute (dir 1) or previous (-1), undecided ones first, wrapping. */
  next(currentId: number | null, dir: 1 | -1 = 1): number | null {
    const ids = this.disputes.map((d) => d.id);
    if (!ids.length) return null;
    const n = ids.length;
    const start = currentId === null ? (dir === 1 ? -1 : n) : ids.indexOf(currentId);
    for (let step = 1; step <= n; step++) {
      const id = ids[(((start + dir * step) % n) + n) % n];
      if (id !== currentId && !this.isDecided(id)) return id;
    }
    return ids[(((start + dir) % n) + n) % n];
  }
}
