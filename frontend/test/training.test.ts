import { describe, expect, it } from 'vitest';
import { bestByMetric, buildJobConfig, curveCharts, defaultJobForm, evaluationFraction, evaluationText, formatDuration, gateHeadline, gateRows, isLive, jobDuration, jobFraction, presegmentNote, progressText, stageFraction } from '../src/core/training';
import type { TrainingJob } from '../src/core/types';

describe('job configuration', () => {
  it('sends only what differs from the preset', () => {
    expect(buildJobConfig(defaultJobForm())).toEqual({ config: {}, errors: {} });
    const f = { ...defaultJobForm(), kind: 'cellpose', preset: 'tiny' as const, device: 'cpu' as const, epochs: { cellpose: 3 }, learningRate: { cellpose: 0.05 }, autoPromote: 'no' as const, synthetic: 20 };
    expect(buildJobConfig(f)).toEqual({
      config: { preset: 'tiny', device: 'cpu', auto_promote: false, synthetic: { count: 20 }, cellpose: { n_epochs: 3, learning_rate: 0.05 } },
      errors: {},
    });
  });

  it('passes the fast preset through', () => {
    expect(buildJobConfig({ ...defaultJobForm(), preset: 'fast' as const }).config).toEqual({ preset: 'fast' });
  });

  it('uses each trainer’s own keys and ignores stages the kind does not train', () => {
    const f = { ...defaultJobForm(), kind: 'two_stage', epochs: { nnunet: 5, cellpose: 7, refinement: 9 }, evaluate: false, source: 'annotation' as const };
    expect(buildJobConfig(f).config).toEqual({ evaluate: false, source: 'annotation', nnunet: { num_epochs: 5 }, cellpose: { n_epochs: 7 } });
  });

  it('validates numbers and merges the advanced JSON', () => {
    const bad = { ...defaultJobForm(), kind: 'nnunet', epochs: { nnunet: 0 }, learningRate: { nnunet: -1 }, extra: '{"nnunet": {"batch' };
    const r = buildJobConfig(bad);
    expect(Object.keys(r.errors).sort()).toEqual(['config.nnunet.initial_lr', 'config.nnunet.num_epochs', 'extra']);
    const ok = { ...defaultJobForm(), kind: 'cellpose', epochs: { cellpose: 3 }, extra: '{"cellpose": {"bsize": 64}, "device": "cpu"}' };
    expect(buildJobConfig(ok).config).toEqual({ cellpose: { n_epochs: 3, bsize: 64 }, device: 'cpu' });
    expect(buildJobConfig({ ...ok, extra: '[1]' }).errors.extra).toMatch(/object/);
    expect(buildJobConfig({ ...defaultJobForm(), kind: 'nope' }).errors.kind).toBeTruthy();
  });
});

function job(over: Partial<TrainingJob>): TrainingJob {
  return { id: 1, project: 1, kind: 'two_stage', status: 'running', trigger: 'manual', snapshot: 1, snapshot_number: 1, config: {}, created_by: 'ad', cancel_requested: false, cancelled_by: null, progress: {}, timings: {}, error: '', result: {}, model_versions: [], task_id: '', worker_host: '', worker_pid: null, heartbeat_at: null, artifact_dir: '', created_at: '2024-01-01T00:00:00Z', started_at: null, finished_at: null, ...over };
}

describe('job progress', () => {
  it('weights data, each training stage and evaluation', () => {
    expect(jobFraction(job({ status: 'queued' }))).toBeNull();
    expect(jobFraction(job({ progress: { stage: 'data', phase: 'prepare' } }))).toBeCloseTo(0.01);
    const half = jobFraction(job({ progress: { stage: 'nnunet', phase: 'train', epoch: 2, epochs: 4 } }))!;
    expect(half).toBeCloseTo(0.03 + 0.425 * 0.5);
    const second = jobFraction(job({ progress: { stage: 'cellpose', phase: 'train', epoch: 4, epochs: 4 } }))!;
    expect(second).toBeCloseTo(0.88);
    expect(jobFraction(job({ progress: { stage: 'evaluate' } }))).toBeCloseTo(0.94);
    expect(jobFraction(job({ progress: { stage: 'done' } }))).toBe(1);
    expect(jobFraction(job({ status: 'succeeded' }))).toBe(1);
    expect(jobFraction(job({ kind: 'cellpose', config: { evaluate: false }, progress: { stage: 'cellpose', epoch: 1, epochs: 1 } }))).toBeCloseTo(1);
    expect(jobFraction(job({ progress: { stage: 'mystery' } }))).toBeNull();
  });

  it('follows the evaluation stage version by version and image by image', () => {
    const p = { stage: 'evaluate', phase: 'evaluate', model_version: 7, version: 'Cellpose 3 v2', version_index: 2, versions: 2, image: 3, images: 12 };
    expect(evaluationText(p)).toBe('Evaluating Cellpose 3 v2: image 3 / 12 (model 2 of 2)');
    expect(evaluationText({ ...p, versions: 1, version_index: 1 })).toBe('Evaluating Cellpose 3 v2: image 3 / 12');
    expect(evaluationText({ ...p, image: null, images: null, versions: 1 })).toBe('Evaluating Cellpose 3 v2: loading the model');
    expect(evaluationText({ stage: 'evaluate', phase: 'evaluate', model_version: 4 })).toBe('Evaluating model #4: loading the model');
    expect(evaluationText({ stage: 'evaluate' })).toBe('Evaluating on the frozen test split');
    expect(evaluationText({ stage: 'evaluate', phase: 'gate', version: 'nnU-Net v1', image: 2, images: 5 })).toBe('Promotion gate: evaluating nnU-Net v1: image 2 / 5');
    expect(evaluationText({ stage: 'evaluate', phase: 'gate', version: 'Two-stage v3' })).toBe('Promotion gate: Two-stage v3 against the active model');
    // the second of two versions, 2 of 12 images done: (1 + 2/12) / 2
    expect(evaluationFraction(p)).toBeCloseTo(7 / 12);
    expect(evaluationFraction({ ...p, version_index: 1, image: 1 })).toBe(0);
    expect(evaluationFraction({ stage: 'evaluate' })).toBeNull();
    expect(evaluationFraction({ stage: 'cellpose' })).toBeNull();
    expect(evaluationFraction({ stage: 'evaluate', phase: 'gate', image: 3, images: 5 })).toBeCloseTo(0.4);
    // the overall bar moves through the evaluation's 12 % instead of sitting at 94 %
    const a = jobFraction(job({ progress: { ...p, version_index: 1, image: 1 } }))!;
    const b = jobFraction(job({ progress: p }))!;
    expect(a).toBeCloseTo(0.88);
    expect(b).toBeGreaterThan(a);
    expect(b).toBeLessThan(1);
    expect(progressText(job({ progress: p }))).toBe('Evaluating Cellpose 3 v2: image 3 / 12 (model 2 of 2)');
  });

  it('counts iterations inside the current epoch', () => {
    expect(stageFraction({ epoch: 2, epochs: 4, iteration: 5, iterations: 10 })).toBeCloseTo(0.375);
    expect(stageFraction({ epoch: 3, epochs: 4 })).toBeCloseTo(0.75);
    expect(stageFraction({ phase: 'prepare', epoch: 3, epochs: 4 })).toBe(0);
    expect(stageFraction({})).toBe(0);
  });

  it('describes the job in one line', () => {
    expect(progressText(job({ status: 'queued' }))).toBe('Waiting for a worker');
    expect(progressText(job({ progress: { stage: 'cellpose', phase: 'train', epoch: 2, epochs: 3, loss: 0.51234 } }))).toBe('Cellpose · epoch 2/3 · loss 0.5123');
    expect(progressText(job({ progress: { stage: 'nnunet', phase: 'prepare', step: 'plan_and_preprocess' } }))).toBe('nnU-Net: preparing (plan and preprocess)');
    expect(progressText(job({ status: 'failed' }))).toBe('Failed');
    expect(isLive('queued') && isLive('running') && !isLive('failed')).toBe(true);
  });

  it('splits curves into loss, metric and learning-rate charts', () => {
    const charts = curveCharts({ cellpose: [{ epoch: 0, epochs: 2, train_loss: 1, val_loss: 2, lr: 0.1 }, { epoch: 1, epochs: 2, train_loss: 0.5, val_loss: 1, lr: 0.05 }], nnunet: [{ epoch: 0, train_loss: 1, pseudo_dice: 0.3, epoch_time: 12 }], empty: [] });
    expect(charts.map((c) => c.stage)).toEqual(['cellpose', 'nnunet']);
    expect(charts[0].loss.map((s) => s.name)).toEqual(['train_loss', 'val_loss']);
    expect(charts[0].lr.map((s) => s.name)).toEqual(['lr']);
    expect(charts[1].metrics.map((s) => s.name)).toEqual(['pseudo_dice']);
    expect(curveCharts(undefined)).toEqual([]);
  });

  it('formats durations', () => {
    expect(formatDuration(42.4)).toBe('42 s');
    expect(formatDuration(185)).toBe('3 min 05 s');
    expect(formatDuration(3720)).toBe('1 h 02 min');
    expect(formatDuration(null)).toBe('—');
    expect(jobDuration(job({ started_at: '2024-01-01T00:00:00Z', finished_at: '2024-01-01T00:01:30Z' }))).toBe(90);
    expect(jobDuration(job({}))).toBeNull();
  });
});

describe('registry', () => {
  it('finds the best version per metric (lower is better for false positives)', () => {
    const rows = [
      { id: 1, metrics: { dice: 0.8, erythrocyte_fp: 4 } },
      { id: 2, metrics: { dice: 0.85, erythrocyte_fp: 2 } },
      { id: 3, metrics: null },
      { id: 4, metrics: { dice: 0.85, erythrocyte_fp: null } },
    ];
    const best = bestByMetric(rows, ['dice', 'erythrocyte_fp', 'iou']);
    expect([...best.get('dice')!]).toEqual([2, 4]);
    expect([...best.get('erythrocyte_fp')!]).toEqual([2]);
    expect(best.has('iou')).toBe(false);
  });
});

describe('promotion gate verdict', () => {
  const verdict = {
    metric: 'f1_50',
    guarded: ['dice', 'f1_50', 'erythrocyte_fp_rate'],
    regressions: { dice: -0.6 },
    candidate_metrics: { f1_50: 0, dice: 0, erythrocyte_fp_rate: 0.3 },
    baseline_metrics: { f1_50: 0.6, dice: 0.6, erythrocyte_fp_rate: 0.1 },
  };

  it('lists the primary metric first, then the guarded ones, direction-aware', () => {
    expect(gateRows(verdict)).toEqual([
      { metric: 'f1_50', candidate: 0, baseline: 0.6, primary: true, regressed: false, worse: true },
      { metric: 'dice', candidate: 0, baseline: 0.6, primary: false, regressed: true, worse: true },
      { metric: 'erythrocyte_fp_rate', candidate: 0.3, baseline: 0.1, primary: false, regressed: false, worse: true },
    ]);
    expect(gateRows({ ...verdict, baseline_metrics: null })[0]).toMatchObject({ baseline: null, worse: false });
  });

  it('says whether the gate would promote', () => {
    expect(gateHeadline({ promote: true, evaluated: true }).tone).toBe('good');
    expect(gateHeadline({ promote: false, evaluated: true })).toEqual({ tone: 'bad', text: 'The promotion gate would NOT promote this version' });
    expect(gateHeadline({ promote: false, evaluated: false }).tone).toBe('warn');
  });
});

describe('pre-segmentation note', () => {
  const img = { presegment_status: 'done' as const, presegment_error: '', presegment_model_label: 'Cellpose 3 v2', presegment_proposals: 0 };

  it('warns when a run made no proposal, naming the model', () => {
    expect(presegmentNote(img)).toEqual({ tone: 'warn', text: '0 proposals from Cellpose 3 v2' });
    expect(presegmentNote({ ...img, presegment_proposals: 1 })).toEqual({ tone: 'muted', text: '1 proposal from Cellpose 3 v2' });
    expect(presegmentNote({ ...img, presegment_proposals: 12 })?.text).toBe('12 proposals from Cellpose 3 v2');
  });

  it('reports failures, runs in progress and nothing for never pre-segmented images', () => {
    expect(presegmentNote({ ...img, presegment_status: 'failed', presegment_error: 'CUDA OOM' })).toEqual({ tone: 'bad', text: 'Failed — CUDA OOM' });
    expect(presegmentNote({ ...img, presegment_status: 'running', presegment_tiles_done: 3, presegment_tiles_total: 16 })?.text).toBe('Running — tile 3 / 16');
    expect(presegmentNote({ ...img, presegment_status: 'queued', presegment_tiles_done: 0, presegment_tiles_total: 16 })?.text).toBe('Queued — 16 tiles');
    expect(presegmentNote({ ...img, presegment_status: 'running', presegment_tiles_total: 0 })?.text).toBe('Running');
    expect(presegmentNote({ ...img, presegment_status: 'queued' })?.text).toBe('Queued');
    expect(presegmentNote({ ...img, presegment_status: 'none' })).toBeNull();
  });
});
