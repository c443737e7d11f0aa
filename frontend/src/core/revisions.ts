/**
 * The history of an image's annotation layer in the editor (`GET images/{id}/history`,
 * `GET images/{id}/history/{revision}`, `POST .../restore`): each revision's action and
 * summary in words, and how a previewed revision differs from the cells shown now.
 * Framework free, unit tested.
 */
import type { HistoryEntry } from './types';

/** "Saved", "Restored revision 3", "Accepted proposals", "Imported". */
export function revisionAction(action: string): string {
  const restore = /^restore:(\d+)$/.exec(action);
  if (restore) return `Restored revision ${restore[1]}`;
  switch (action) {
    case 'replace':
      return 'Saved';
    case 'accept_proposals':
      return 'Accepted proposals';
    case 'import':
      return 'Imported';
    default:
      return action ? action.charAt(0).toUpperCase() + action.slice(1).replace(/_/g, ' ') : 'Change';
  }
}

export interface RevisionCounts {
  added: number;
  changed: number;
  deleted: number;
}

/** The server's summary (`{added, changed, deleted}`), tolerant of what it lacks. */
export function revisionCounts(summary: unknown): RevisionCounts {
  const s = summary && typeof summary === 'object' ? (summary as Record<string, unknown>) : {};
  const n = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  return { added: n(s.added), changed: n(s.changed), deleted: n(s.deleted) };
}

/** "+2 added · 1 changed · 3 removed", or "no cell changed". */
export function revisionSummary(summary: unknown): string {
  const c = revisionCounts(summary);
  const parts = [c.added ? `+${c.added} added` : '', c.changed ? `${c.changed} changed` : '', c.deleted ? `${c.deleted} removed` : ''].filter(Boolean);
  return parts.length ? parts.join(' · ') : 'no cell changed';
}

/** One row of the history list. */
export interface RevisionRow {
  revision: number;
  title: string;
  author: string;
  summary: string;
  createdAt: string;
  current: boolean;
}

export function revisionRows(entries: readonly HistoryEntry[], currentRevision: number): RevisionRow[] {
  return [...entries]
    .sort((a, b) => b.revision - a.revision)
    .map((e) => ({
      revision: e.revision,
      title: revisionAction(e.action),
      author: e.author || 'unknown',
      summary: revisionSummary(e.summary),
      createdAt: e.created_at,
      current: e.revision === currentRevision,
    }));
}

type Poly = readonly (readonly number[])[];

/** How a revision differs from the cells shown now (by server id): for the preview's banner. */
export function previewDiff(revision: readonly { id: number; class_id: number; polygon: Poly }[], now: readonly { id: number | undefined; class_id: number | null; polygon: Poly }[]): { cells: number; onlyThen: number; onlyNow: number; different: number } {
  const current = new Map<number, { class_id: number | null; polygon: Poly }>();
  let unsavedNow = 0;
  for (const c of now) {
    if (c.id === undefined) unsavedNow++;
    else current.set(c.id, c);
  }
  let onlyThen = 0;
  let different = 0;
  const seen = new Set<number>();
  for (const c of revision) {
    const other = current.get(c.id);
    if (!other) {
      onlyThen++;
      continue;
    }
    seen.add(c.id);
    if (other.class_id !== c.class_id || !samePolygon(other.polygon, c.polygon)) different++;
  }
  const onlyNow = unsavedNow + [...current.keys()].filter((id) => !seen.has(id)).length;
  return { cells: revision.length, onlyThen, onlyNow, different };
}

function samePolygon(a: Poly, b: Poly): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i][0] - b[i][0]) > 1e-6 || Math.abs(a[i][1] - b[i][1]) > 1e-6) return false;
  return true;
}

/** "Preview of revision 3 · 12 cells · 2 not in the current version · 1 different · 1 added since". */
export function previewSentence(revision: number, d: ReturnType<typeof previewDiff>): string {
  const parts = [`Preview of revision ${revision}`, `${d.cells} cell${d.cells === 1 ? '' : 's'}`];
  if (d.onlyThen) parts.push(`${d.onlyThen} not in the current version`);
  if (d.different) parts.push(`${d.different} different now`);
  if (d.onlyNow) parts.push(`${d.onlyNow} added since`);
  if (!d.onlyThen && !d.different && !d.onlyNow) parts.push('same as now');
  return parts.join(' · ');
}
