/**
 * The workers & queue view (`GET admin/queue`, staff): how each worker, its
 * device and what it runs are shown, in which order, and how the queue counts
 * are summed up. DOM-free; the panel is ui/admin/workers.ts.
 */
import type { AdminQueue, PresegmentProjectCounts, WorkerInfo, WorkerState, WorkerTask } from './types';

/** How often the open panel asks again (the workers beat every 10 s by default). */
export const QUEUE_REFRESH_MS = 10_000;

export const WORKER_STATE_LABELS: Record<WorkerState, string> = { alive: 'Alive', stale: 'Not responding', stopped: 'Stopped' };
/** The pill tone (`pill-<tone>`) of each state. */
export const WORKER_STATE_TONES: Record<WorkerState, string> = { alive: 'good', stale: 'bad', stopped: 'neutral' };
const STATE_ORDER: Record<WorkerState, number> = { alive: 0, stale: 1, stopped: 2 };

/** Alive workers first (a gone one is worth seeing next), then by name. */
export function sortWorkers(workers: readonly WorkerInfo[]): WorkerInfo[] {
  return [...workers].sort((a, b) => STATE_ORDER[a.state] - STATE_ORDER[b.state] || a.name.localeCompare(b.name));
}

/** `CPU`, `cuda:0 · NVIDIA H100`, or a dash while the worker has not found out yet. */
export function deviceLabel(w: Pick<WorkerInfo, 'device' | 'device_name'>): string {
  if (!w.device) return '—';
  const device = w.device === 'cpu' ? 'CPU' : w.device;
  return w.device_name ? `${device} · ${w.device_name}` : device;
}

/** Whether the worker computes on a GPU (the device column is highlighted). */
export function onGpu(w: Pick<WorkerInfo, 'device'>): boolean {
  return w.device.startsWith('cuda');
}

/** `12 s ago`, `3 min ago`, `2 h ago`, `4 d ago` (never negative: clocks differ a little). */
export function agoText(iso: string | null | undefined, now: number): string {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '—';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172_800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} d ago`;
}

/** How long the worker has been up: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`. */
export function uptimeText(startedIso: string, now: number): string {
  const t = Date.parse(startedIso);
  if (!Number.isFinite(t)) return '—';
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const ids = (args: string): number[] => (args.match(/\d+/g) ?? []).map(Number);

/** What a task is doing, in words: `Pre-segmenting image 5`, `Training job 12`, else its name. */
export function taskText(t: Pick<WorkerTask, 'name' | 'args'>): string {
  const [first] = ids(t.args);
  switch (t.name) {
    case 'inference.presegment_image':
      return first != null ? `Pre-segmenting image ${first}` : 'Pre-segmenting';
    case 'inference.presegment_tiles':
      return first != null ? `Pre-segmenting image ${first} (tiles)` : 'Pre-segmenting tiles';
    case 'inference.presegment_stitch':
      return first != null ? `Stitching image ${first}'s tiles` : 'Stitching tiles';
    case 'training.run_job':
      return first != null ? `Training job ${first}` : 'Training';
    case 'interchange.export_run':
      return first != null ? `Export ${first}` : 'Export';
    default:
      return t.args && t.args !== '()' && t.args !== '[]' ? `${t.name} ${t.args}` : t.name;
  }
}

export interface QueueSummary {
  /** Workers alive / all reported. */
  alive: number;
  total: number;
  /** Alive workers consuming the `gpu` queue (pre-segmentation). */
  presegmenters: number;
  /** Alive workers consuming the `training` queue. */
  trainers: number;
  /** Something waits and no alive worker takes it: the admin should look. */
  warnings: string[];
}

export function queueSummary(q: AdminQueue): QueueSummary {
  const alive = q.workers.filter((w) => w.alive);
  const consuming = (queue: string) => alive.filter((w) => w.queues.includes(queue)).length;
  const presegmenters = consuming('gpu');
  const trainers = consuming('training');
  const warnings: string[] = [];
  const waiting = q.presegment.queued + q.presegment.running;
  if (waiting && !presegmenters) warnings.push(`${waiting} pre-segmentation${waiting === 1 ? '' : 's'} waiting, but no worker on the gpu queue is alive.`);
  const jobs = q.training.queued + q.training.running;
  if (jobs && !trainers) warnings.push(`${jobs} training job${jobs === 1 ? '' : 's'} waiting, but no worker on the training queue is alive.`);
  if (q.outbox.waiting) warnings.push(`${q.outbox.waiting} task${q.outbox.waiting === 1 ? '' : 's'} not yet handed to the broker (is it reachable?).`);
  const stale = q.workers.filter((w) => w.state === 'stale').length;
  if (stale) warnings.push(`${stale} worker${stale === 1 ? ' has' : 's have'} stopped reporting.`);
  return { alive: alive.length, total: q.workers.length, presegmenters, trainers, warnings };
}

/** The projects of the per-project table: the current one first, then by what waits. */
export function projectRows(rows: readonly PresegmentProjectCounts[], currentProjectId: number | null): PresegmentProjectCounts[] {
  const load = (r: PresegmentProjectCounts) => r.queued + r.running;
  return [...rows].sort((a, b) => Number(b.project === currentProjectId) - Number(a.project === currentProjectId) || load(b) - load(a) || b.failed - a.failed || a.project - b.project);
}
