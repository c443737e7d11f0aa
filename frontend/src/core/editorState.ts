/**
 * What the annotator's editor derives from the image's workflow state: whether
 * the annotation layer is locked (read-only, and why), whether a proposal is
 * still open, and the summary shown before "Submit for review".
 */
import type { ApiCell } from './types';

/** From submission until an admin reopens the image, the server refuses annotation writes. */
export const LOCKED_STATUSES: readonly string[] = ['submitted', 'in_review', 'disputed', 'adjudication', 'verified'];

const LOCK_LABEL: Record<string, string> = {
  submitted: 'Submitted for review',
  in_review: 'In review',
  disputed: 'Disputed',
  adjudication: 'In adjudication',
  verified: 'Verified',
};

/** Why the annotation layer cannot change in this state (null: editable). */
export function lockReason(status: string | null | undefined): string | null {
  if (!status || !LOCKED_STATUSES.includes(status)) return null;
  return `${LOCK_LABEL[status] ?? status} — read only. An admin can reopen it.`;
}

/** A proposal still waiting for a decision: the server keeps accepted and rejected ones, marked by `state`. */
export function isOpenProposal(c: Pick<ApiCell, 'state'>): boolean {
  return !c.state;
}

export interface SubmitFacts {
  cells: number;
  openProposals: number;
  unsaved: boolean;
}

export interface SubmitLine {
  key: 'cells' | 'proposals' | 'unsaved';
  text: string;
  warn: boolean;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** The lines of the summary shown before submitting (warnings first need the annotator's attention). */
export function submitSummary(f: SubmitFacts): SubmitLine[] {
  return [
    { key: 'cells', text: f.cells ? `${plural(f.cells, 'cell')} will be submitted` : 'This image has no cells', warn: f.cells === 0 },
    {
      key: 'proposals',
      text: f.openProposals ? `${plural(f.openProposals, 'open model proposal')} left untouched (neither accepted nor rejected)` : 'Every model proposal was accepted or rejected',
      warn: f.openProposals > 0,
    },
    { key: 'unsaved', text: f.unsaved ? 'Unsaved changes: they are saved before submitting' : 'All changes are saved', warn: f.unsaved },
  ];
}
