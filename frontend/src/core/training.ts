/**
 * Training jobs (training/api): the start form's configuration, job progress,
 * loss-curve series. Framework free, unit tested.
 */
import { numericKeys, seriesFromPoints, type Series } from './chart';
import type { CurvePoint, GateVerdict, ImageInfo, JobProgress, TrainingJob } from './types';

export type Stage = 'nnunet' | 'cellpose' | 'refinement';

export interface KindInfo {
  kind: string;
  label: string;
  description: string;
  stages: Stage[];
}

export const JOB_KINDS: KindInfo[] = [
  { kind: 'two_stage', label: 'nnU-Net + Cellpose', description: 'Semantic nnU-Net, then Cellpose instances: the two-stage pre-segmentation bundle.', stages: ['nnunet', 'cellpose'] },
  { kind: 'nnunet', label: 'nnU-Net v2', description: 'Semantic segmentation (cell / erythrocyte / background).', stages: ['nnunet'] },
  { kind: 'cellpose', label: 'Cellpose 3', description: 'Instance segmentation of touching cells.', stages: ['cellpose'] },
  { kind: 'refinement', label: 'Refinement net', description: 'Refines the active nnU-Net’s probabilities.', stages: ['refinement'] },
];

/** Model kinds of the registry that are not trained here. */
const OTHER_KINDS: Record<string, string> = { watershed: 'Watershed baseline', region_growing: 'Region growing baseline' };

export function kindInfo(kind: string): KindInfo {
  return JOB_KINDS.find((k) => k.kind === kind) ?? { kind, label: OTHER_KINDS[kind] ?? kind.replace(/_/g, ' '), description: '', stages: [] };
}

export const STAGE_LABELS: Record<string, string> = { nnunet: 'nnU-Net', cellpose: 'Cellpose', refinement: 'Refinement', data: 'Data', evaluate: 'Evaluation', done: 'Done' };

/** Hyper-parameter names per trainer section (the server's schema). */
export const EPOCH_KEY: Record<Stage, string> = { nnunet: 'num_epochs', cellpose: 'n_epochs', refinement: 'max_epochs' };
export const LR_KEY: Record<Stage, string> = { nnunet: 'initial_lr', cellpose: 'learning_rate', refinement: 'learning_rate' };

export interface JobForm {
  kind: string;
  preset: 'default' | 'fast' | 'tiny';
  device: 'auto' | 'cpu' | 'cuda';
  /** per stage; null = the preset's */
  epochs: Partial<Record<Stage, number | null>>;
  learningRate: Partial<Record<Stage, number | null>>;
  evaluate: boolean;
  autoPromote: 'policy' | 'yes' | 'no';
  source: 'verified' | 'annotation';
  /** synthetic cluster augmentation: number of synthetic images (0/null = off) */
  synthetic: number | null;
  /** extra JSON merged over the rest (advanced) */
  extra: string;
}

export function defaultJobForm(): JobForm {
  return { kind: 'two_stage', preset: 'default', device: 'auto', epochs: {}, learningRate: {}, evaluate: true, autoPromote: 'policy', source: 'verified', synthetic: null, extra: '' };
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
        ? deepMerge(cur as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/**
 * The `config` of `POST projects/{id}/training/jobs` for the form, with only
 * the keys the user set (the server fills in the preset). Errors are keyed like
 * the server's (`config.cellpose.n_epochs`).
 */
export function buildJobConfig(form: JobForm): { config: Record<string, unknown>; errors: Record<string, string> } {
  const errors: Record<string, string> = {};
  let config: Record<string, unknown> = {};
  const stages = kindInfo(form.kind).stages;
  if (!stages.length) errors.kind = 'Choose what to train';
  if (form.preset !== 'default') config.preset = form.preset;
  if (form.device !== 'auto') config.device = form.device;
  if (!form.evaluate) config.evaluate = false;
  if (form.autoPromote !== 'policy') config.auto_promote = form.autoPromote === 'yes';
  if (form.source !== 'verified') config.source = form.source;
  if (form.synthetic != null && form.synthetic !== 0) {
    if (!Number.isInteger(form.synthetic) || form.synthetic < 0) errors['config.synthetic.count'] = 'Must be a whole number ≥ 0';
    else config.synthetic = { count: form.synthetic };
  }
  for (const stage of stages) {
    const section: Record<string, unknown> = {};
    const e = form.epochs[stage];
    if (e != null) {
      if (!Number.isInteger(e) || e < 1) errors[`config.${stage}.${EPOCH_KEY[stage]}`] = 'Must be a whole number ≥ 1';
      else section[EPOCH_KEY[stage]] = e;
    }
    const lr = form.learningRate[stage];
    if (lr != null) {
      if (!(lr > 0) || !Number.isFinite(lr)) errors[`config.${stage}.${LR_KEY[stage]}`] = 'Must be a positive number';
      else section[LR_KEY[stage]] = lr;
    }
    if (Object.keys(section).length) config[stage] = section;
  }
  if (form.extra.trim()) {
    try {
      const extra = JSON.parse(form.extra) as unknown;
      if (!extra || typeof extra !== 'object' || Array.isArray(extra)) errors.extra = 'Must be a JSON object';
      else config = deepMerge(config, extra as Record<string, unknown>);
    } catch (e) {
      errors.extra = `Not valid JSON: ${(e as Error).message}`;
    }
  }
  return { config, errors };
}

export function isLive(status: string | null | undefined): boolean {
  return status === 'queued' || status === 'running';
}

/**
 * Overall progress in [0, 1] of a job (null: unknown, e.g. queued). The data
 * step counts 3 %, the training stages share 85 % equally (by epochs and
 * iterations), evaluation the last 12 %.
 */
export function jobFraction(job: Pick<TrainingJob, 'kind' | 'status' | 'progress' | 'config'>): number | null {
  if (job.status === 'succeeded') return 1;
  const p: JobProgress = job.progress ?? {};
  const stages = kindInfo(job.kind).stages as string[];
  const evaluates = (job.config as { evaluate?: unknown } | undefined)?.evaluate !== false;
  const trainShare = evaluates ? 0.85 : 0.97;
  if (!p.stage) return job.status === 'queued' ? null : 0;
  if (p.stage === 'done') return 1;
  if (p.stage === 'data') return 0.01;
  if (p.stage === 'evaluate') return evaluates ? 0.03 + trainShare + (1 - 0.03 - trainShare) * (evaluationFraction(p) ?? 0.5) : 0.99;
  const i = stages.indexOf(p.stage);
  if (i < 0) return null;
  const per = trainShare / stages.length;
  return Math.min(1, 0.03 + per * i + per * stageFraction(p));
}

/**
 * Progress in [0, 1] of the evaluation stage from the version and test image
 * being scored (the image being predicted counts as not yet done); null when
 * the runner did not say (older workers, or the gate's comparison).
 */
export function evaluationFraction(p: JobProgress): number | null {
  if (p.stage !== 'evaluate') return null;
  const images = Number(p.images) || 0;
  const image = Number(p.image) || 0;
  const versions = Number(p.versions) || 0;
  const index = Number(p.version_index) || 0;
  if (p.phase === 'gate') return images && image ? Math.max(0, Math.min(1, (image - 1) / images)) : null;
  if (!versions || !index) return null;
  const within = images && image ? (image - 1) / images : 0;
  return Math.max(0, Math.min(1, (index - 1 + within) / versions));
}

/** What the evaluation stage is doing, e.g. "Evaluating Cellpose v2: image 3 / 12". */
export function evaluationText(p: JobProgress): string {
  const name = p.version || (p.model_version != null ? `model #${p.model_version}` : '');
  const image = p.image != null && p.image > 0 ? `image ${p.image}${p.images ? ` / ${p.images}` : ''}` : '';
  const of = p.versions && p.versions > 1 && p.version_index ? ` (model ${p.version_index} of ${p.versions})` : '';
  if (p.phase === 'gate') return image ? `Promotion gate: evaluating ${name || 'the active model'}: ${image}` : `Promotion gate${name ? `: ${name} against the active model` : ''}`;
  if (!name) return 'Evaluating on the frozen test split';
  return `Evaluating ${name}: ${image || 'loading the model'}${of}`;
}

/** Progress within a training stage from its epoch / iteration counters. */
export function stageFraction(p: JobProgress): number {
  if (p.phase === 'prepare') return 0;
  const epochs = Number(p.epochs) || 0;
  const epoch = Number(p.epoch) || 0;
  if (!epochs) return 0;
  const its = Number(p.iterations) || 0;
  const it = Number(p.iteration);
  // during an epoch `epoch` is the 1-based current epoch; after one it is the number done
  const within = its && Number.isFinite(it) && p.iteration != null ? Math.min(1, it / its) : 1;
  const done = its && p.iteration != null ? epoch - 1 + within : epoch;
  return Math.max(0, Math.min(1, done / epochs));
}

/** One line describing where a job is. */
export function progressText(job: Pick<TrainingJob, 'status' | 'progress' | 'cancel_requested'>): string {
  const p = job.progress ?? {};
  if (job.status === 'queued') return job.cancel_requested ? 'Cancelling…' : 'Waiting for a worker';
  if (job.status !== 'running') return statusLabel(job.status);
  const stage = STAGE_LABELS[p.stage ?? ''] ?? p.stage ?? '';
  if (job.cancel_requested) return `Cancelling… (${stage})`;
  if (p.phase === 'prepare') return `${stage}: preparing${p.step ? ` (${String(p.step).replace(/_/g, ' ')})` : ''}`;
  if (p.stage === 'evaluate') return evaluationText(p);
  const parts = [stage];
  if (p.epoch != null && p.epochs) parts.push(`epoch ${p.epoch}/${p.epochs}`);
  if (p.iteration != null && p.iterations) parts.push(`iteration ${p.iteration}/${p.iterations}`);
  if (typeof p.loss === 'number') parts.push(`loss ${p.loss.toFixed(4)}`);
  return parts.join(' · ');
}

export function statusLabel(s: string): string {
  return ({ queued: 'Queued', running: 'Running', succeeded: 'Succeeded', failed: 'Failed', cancelled: 'Cancelled' } as Record<string, string>)[s] ?? s;
}

/**
 * The curves of a job per stage, split into the loss chart (keys containing
 * "loss") and the metric chart (the rest, learning rate aside).
 */
export function curveCharts(curves: Record<string, CurvePoint[]> | undefined): { stage: string; loss: Series[]; metrics: Series[]; lr: Series[] }[] {
  const out: { stage: string; loss: Series[]; metrics: Series[]; lr: Series[] }[] = [];
  for (const [stage, points] of Object.entries(curves ?? {})) {
    if (!Array.isArray(points) || !points.length) continue;
    const keys = numericKeys(points as Record<string, unknown>[]);
    const lossKeys = keys.filter((k) => /loss/i.test(k));
    const lrKeys = keys.filter((k) => /^lr$|learning_rate/i.test(k));
    const metricKeys = keys.filter((k) => !lossKeys.includes(k) && !lrKeys.includes(k) && !/time|seconds|iteration/i.test(k));
    out.push({
      stage,
      loss: seriesFromPoints(points as Record<string, unknown>[], lossKeys),
      metrics: seriesFromPoints(points as Record<string, unknown>[], metricKeys),
      lr: seriesFromPoints(points as Record<string, unknown>[], lrKeys),
    });
  }
  return out;
}

/** "1 h 02 min", "3 min 05 s", "42 s". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  const hh = Math.floor(m / 60);
  if (hh < 48) return `${hh} h ${String(m % 60).padStart(2, '0')} min`;
  return `${Math.floor(hh / 24)} d ${hh % 24} h`;
}

export function jobDuration(job: Pick<TrainingJob, 'started_at' | 'finished_at'>, now = Date.now()): number | null {
  if (!job.started_at) return null;
  const start = Date.parse(job.started_at);
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return Number.isFinite(start) && Number.isFinite(end) ? Math.max(0, (end - start) / 1000) : null;
}

/** Metrics where lower is better (the server's LOWER_IS_BETTER). */
export const LOWER_IS_BETTER = new Set(['erythrocyte_fp', 'erythrocyte_fp_rate']);

/** Per metric, the id of the best row (ties: all), ignoring missing values. */
export function bestByMetric(rows: { id: number; metrics: Record<string, number | null> | null }[], metrics: string[]): Map<string, Set<number>> {
  const out = new Map<string, Set<number>>();
  for (const m of metrics) {
    let best: number | null = null;
    let ids = new Set<number>();
    const lower = LOWER_IS_BETTER.has(m);
    for (const r of rows) {
      const v = r.metrics?.[m];
      if (v == null || !Number.isFinite(v)) continue;
      if (best === null || (lower ? v < best - 1e-12 : v > best + 1e-12)) {
        best = v;
        ids = new Set([r.id]);
      } else if (Math.abs(v - best) <= 1e-12) ids.add(r.id);
    }
    if (ids.size) out.set(m, ids);
  }
  return out;
}

export const METRIC_LABELS: Record<string, string> = {
  dice: 'Dice',
  iou: 'IoU',
  precision_50: 'P@50',
  recall_50: 'R@50',
  f1_50: 'F1@50',
  accuracy_50: 'Acc@50',
  precision_70: 'P@70',
  recall_70: 'R@70',
  f1_70: 'F1@70',
  accuracy_70: 'Acc@70',
  best_match_precision_70: 'BM-P@70',
  ranked_ap50: 'AP50',
  ranked_ap70: 'AP70',
  boundary_ranked_ap50: 'bAP50',
  boundary_ranked_ap70: 'bAP70',
  mean_boundary_iou: 'bIoU',
  dsb: 'DSB',
  coco_AP: 'COCO AP',
  coco_AP50: 'AP₅₀',
  coco_AP75: 'AP₇₅',
  coco_AP_S: 'AP S',
  coco_AP_M: 'AP M',
  coco_AP_L: 'AP L',
  erythrocyte_fp: 'Ery FP',
  erythrocyte_fp_rate: 'Ery FP rate',
};

/** One metric of a gate verdict: the version's value against the pre-segmenter's. */
export interface GateRow {
  metric: string;
  candidate: number | null;
  baseline: number | null;
  /** The gate's primary metric (the one that must improve by the margin). */
  primary: boolean;
  /** A guarded metric that regresses beyond the tolerance (vetoes the promotion). */
  regressed: boolean;
  /** Worse than the pre-segmenter (direction-aware), whether or not beyond the tolerance. */
  worse: boolean;
}

type Verdict = Pick<GateVerdict, 'metric' | 'guarded' | 'regressions' | 'candidate_metrics' | 'baseline_metrics'>;

/** The rows a promotion dialog shows: the primary metric first, then the guarded ones. */
export function gateRows(v: Verdict): GateRow[] {
  const names = [v.metric, ...v.guarded.filter((m) => m !== v.metric)];
  return names.map((metric) => {
    const candidate = v.candidate_metrics?.[metric] ?? null;
    const baseline = v.baseline_metrics?.[metric] ?? null;
    const worse = candidate != null && baseline != null && (LOWER_IS_BETTER.has(metric) ? candidate > baseline : candidate < baseline);
    return { metric, candidate, baseline, primary: metric === v.metric, regressed: metric in v.regressions, worse };
  });
}

/** The headline of a gate verdict. */
export function gateHeadline(v: Pick<GateVerdict, 'promote' | 'evaluated'>): { tone: 'good' | 'warn' | 'bad'; text: string } {
  if (v.promote) return { tone: 'good', text: 'The promotion gate would promote this version' };
  if (!v.evaluated) return { tone: 'warn', text: 'The promotion gate cannot judge this version yet' };
  return { tone: 'bad', text: 'The promotion gate would NOT promote this version' };
}

/**
 * What to say about an image's last pre-segmentation: a run that made no proposal is a
 * warning naming the model ("0 proposals from Cellpose 3 v2"), not a plain "done".
 * Null when it was never pre-segmented. A tiled image's run says how many of its tiles are done.
 */
export function presegmentNote(img: Pick<ImageInfo, 'presegment_status' | 'presegment_error' | 'presegment_model_label' | 'presegment_proposals'> & Partial<Pick<ImageInfo, 'presegment_tiles_done' | 'presegment_tiles_total'>>): { tone: 'warn' | 'bad' | 'muted'; text: string } | null {
  const model = img.presegment_model_label ?? 'the model';
  // a large image or slide goes tile by tile: its progress
  const tiles = img.presegment_tiles_total ?? 0;
  const done = img.presegment_tiles_done ?? 0;
  switch (img.presegment_status) {
    case 'done': {
      const n = img.presegment_proposals;
      if (n == null) return { tone: 'muted', text: 'Done' };
      if (n === 0) return { tone: 'warn', text: `0 proposals from ${model}` };
      return { tone: 'muted', text: `${n} proposal${n === 1 ? '' : 's'} from ${model}` };
    }
    case 'failed':
      return { tone: 'bad', text: `Failed${img.presegment_error ? ` — ${img.presegment_error}` : ''}` };
    case 'queued':
      return { tone: 'muted', text: tiles ? `Queued — ${tiles} tiles` : 'Queued' };
    case 'running':
      return { tone: 'muted', text: tiles ? `Running — tile ${done} / ${tiles}` : 'Running' };
    default:
      return null;
  }
}
