/**
 * Pre-segmentation runs (`POST images/{id}/presegment`, `POST projects/{id}/presegment`, both
 * with an optional `model_version`): the model versions to choose from, the progress of a
 * project run (polled image statuses → counts, fraction and an ETA from the completion rate),
 * and refusals as sentences.
 */
import { ApiError } from './api';
import { kindInfo } from './training';
import type { ImageInfo, Registry, RegistryRow } from './types';

export type PresegmentStatus = 'none' | 'queued' | 'running' | 'done' | 'failed';

export const PRESEGMENT_LABELS: Record<PresegmentStatus, string> = { none: 'Not run', queued: 'Queued', running: 'Running', done: 'Done', failed: 'Failed' };

/** Statuses whose annotation layer and proposals are locked (annotations/models.py LOCKED_STATUSES): a project run skips them. */
export const LOCKED_STATUSES = ['submitted', 'in_review', 'disputed', 'adjudication', 'verified'];

export function isLocked(status: string | null | undefined): boolean {
  return !!status && LOCKED_STATUSES.includes(status);
}

export function presegmentLabel(s: string | null | undefined): string {
  return PRESEGMENT_LABELS[(s ?? 'none') as PresegmentStatus] ?? s ?? 'Not run';
}

export interface VersionChoice {
  /** null: the project's pre-segmenter (the server picks it) */
  id: number | null;
  label: string;
}

export function versionLabel(v: Pick<RegistryRow, 'kind' | 'number' | 'name'>): string {
  const kind = kindInfo(v.kind).label.replace(/ baseline$/, '');
  return `${kind} v${v.number}${v.name && v.name !== `${kind} v${v.number}` ? ` — ${v.name}` : ''}`;
}

/**
 * The versions a run can use: the default (the project's pre-segmenter) first, then every
 * version that did not fail, newest first. Refinement nets only refine another model's output.
 */
export function versionChoices(reg: Pick<Registry, 'presegmenter' | 'versions'> | null): VersionChoice[] {
  const current = reg?.versions.find((v) => v.id === reg.presegmenter);
  const out: VersionChoice[] = [{ id: null, label: current ? `Project default (${versionLabel(current)})` : 'Project default' }];
  if (!reg) return out;
  const rows = reg.versions.filter((v) => v.status !== 'failed' && v.kind !== 'refinement').sort((a, b) => b.id - a.id);
  for (const v of rows) out.push({ id: v.id, label: `${versionLabel(v)}${v.id === reg.presegmenter ? ' (pre-segmenter)' : v.status === 'active' ? ' (active)' : ''}` });
  return out;
}

export interface RunProgress {
  total: number;
  queued: number;
  running: number;
  done: number;
  failed: number;
  finished: number;
  /** 0..1 */
  fraction: number;
  /** seconds left; null while unknown (nothing finished yet) */
  eta: number | null;
  complete: boolean;
}

/** Follows one project run: the images it covers and when it started. */
export class RunTracker {
  readonly started: number;
  readonly ids: number[];
  private readonly statuses = new Map<number, { status: string; error: string }>();

  constructor(ids: number[], started: number) {
    this.ids = ids;
    this.started = started;
    for (const id of ids) this.statuses.set(id, { status: 'queued', error: '' });
  }

  /** Takes the images of a poll (those outside the run are ignored). */
  update(images: Pick<ImageInfo, 'id' | 'presegment_status' | 'presegment_error'>[]): void {
    for (const img of images) if (this.statuses.has(img.id)) this.statuses.set(img.id, { status: img.presegment_status ?? 'queued', error: img.presegment_error ?? '' });
  }

  status(id: number): { status: string; error: string } | undefined {
    return this.statuses.get(id);
  }

  progress(now: number): RunProgress {
    const p: RunProgress = { total: this.ids.length, queued: 0, running: 0, done: 0, failed: 0, finished: 0, fraction: 0, eta: null, complete: false };
    for (const { status } of this.statuses.values()) {
      if (status === 'done') p.done++;
      else if (status === 'failed') p.failed++;
      else if (status === 'running') p.running++;
      else p.queued++;
    }
    p.finished = p.done + p.failed;
    p.fraction = p.total ? p.finished / p.total : 1;
    p.complete = p.finished === p.total;
    p.eta = etaSeconds(p.finished, p.total, (now - this.started) / 1000);
    return p;
  }
}

/**
 * The statuses of a run's images from the (small) lists of images queued, running and failed:
 * an image of the run in none of them has finished (done). Polling these three lists costs far
 * less than the whole image list of a large project.
 */
export function statusesFromLists(ids: number[], lists: { queued: Pick<ImageInfo, 'id'>[]; running: Pick<ImageInfo, 'id'>[]; failed: Pick<ImageInfo, 'id' | 'presegment_error'>[] }): Pick<ImageInfo, 'id' | 'presegment_status' | 'presegment_error'>[] {
  const status = new Map<number, { s: string; e: string }>();
  for (const img of lists.failed) status.set(img.id, { s: 'failed', e: img.presegment_error ?? '' });
  for (const img of lists.queued) status.set(img.id, { s: 'queued', e: '' });
  for (const img of lists.running) status.set(img.id, { s: 'running', e: '' });
  return ids.map((id) => ({ id, presegment_status: (status.get(id)?.s ?? 'done') as ImageInfo['presegment_status'], presegment_error: status.get(id)?.e ?? '' }));
}

/** Seconds left at the rate so far (finished / elapsed); null before the first finished image. */
export function etaSeconds(finished: number, total: number, elapsedSeconds: number): number | null {
  if (finished >= total) return 0;
  if (finished <= 0 || elapsedSeconds <= 0) return null;
  return ((total - finished) * elapsedSeconds) / finished;
}

export function formatEta(seconds: number | null): string {
  if (seconds == null) return 'estimating time left…';
  if (seconds <= 0) return 'finished';
  if (seconds < 60) return 'less than a minute left';
  if (seconds < 3600) return `about ${Math.round(seconds / 60)} min left`;
  const hours = Math.floor(seconds / 3600);
  const min = Math.round((seconds % 3600) / 60);
  return `about ${hours} h ${min} min left`;
}

export function progressText(p: RunProgress): string {
  const parts = [`${p.finished} of ${p.total} images`];
  if (p.running) parts.push(`${p.running} running`);
  if (p.queued) parts.push(`${p.queued} queued`);
  if (p.failed) parts.push(`${p.failed} failed`);
  return parts.join(' · ');
}

/** A refused run as a sentence (409 locked image, 403 role, 400 version, network). */
export function refusalSentence(err: unknown, scope: 'image' | 'project'): string {
  if (!(err instanceof ApiError)) return String(err);
  if (err.status === 0) return 'The server cannot be reached: nothing was started. Try again when you are back online.';
  if (err.status === 403) return scope === 'project' ? 'Only the project’s admins can pre-segment every image of the project.' : 'You may not pre-segment images of this project.';
  if (err.status === 404) return scope === 'project' ? 'This project no longer exists, or you are no longer a member.' : 'This image no longer exists.';
  if (err.status === 409) return err.detail && err.detail !== 'Conflict' ? err.detail : 'The image is locked for review: pre-segmenting it again is refused until an admin reopens it.';
  const version = err.fieldErrors?.model_version;
  if (version) return 'That model version is not one of this project’s: choose another one.';
  const detail = err.detail?.trim();
  if (detail && /no (active|usable)|no model/i.test(detail)) return detail.endsWith('.') ? detail : `${detail}.`;
  return detail ? (detail.endsWith('.') ? detail : `${detail}.`) : 'The pre-segmentation was refused.';
}
