import { describe, expect, it } from 'vitest';
import { ApiError } from '../src/core/api';
import { statusesFromLists, etaSeconds, formatEta, isLocked, presegmentLabel, progressText, refusalSentence, RunTracker, versionChoices } from '../src/core/presegment';
import type { Registry } from '../src/core/types';

const row = (id: number, kind: string, number: number, status = 'candidate') => ({ id, kind, number, name: '', status, job: null, snapshot: null, replaced: null, promoted_at: null, created_at: '', metrics: null, per_bethesda: null, intervals: null, raw_metrics: null, presegmenter: false }) as unknown as Registry['versions'][number];

describe('model versions to choose from', () => {
  it('default first (naming the pre-segmenter), failed and refinement left out, newest first', () => {
    const reg = { presegmenter: 2, versions: [row(1, 'watershed', 1, 'active'), row(2, 'cellpose', 1, 'active'), row(3, 'cellpose', 2, 'failed'), row(4, 'refinement', 1), row(5, 'nnunet', 3)] };
    const c = versionChoices(reg);
    expect(c[0]).toEqual({ id: null, label: 'Project default (Cellpose 3 v1)' });
    expect(c.map((x) => x.id)).toEqual([null, 5, 2, 1]);
    expect(c[2].label).toBe('Cellpose 3 v1 (pre-segmenter)');
    expect(versionChoices(null)).toEqual([{ id: null, label: 'Project default' }]);
  });
});

describe('a project run', () => {
  it('counts per status, fraction and ETA from the completion rate', () => {
    const t = new RunTracker([1, 2, 3, 4], 0);
    let p = t.progress(10_000);
    expect(p).toMatchObject({ total: 4, queued: 4, finished: 0, fraction: 0, eta: null, complete: false });
    t.update([
      { id: 1, presegment_status: 'done', presegment_error: '' },
      { id: 2, presegment_status: 'failed', presegment_error: 'out of memory' },
      { id: 3, presegment_status: 'running', presegment_error: '' },
      { id: 99, presegment_status: 'done', presegment_error: '' },
    ]);
    p = t.progress(20_000);
    expect(p).toMatchObject({ done: 1, failed: 1, running: 1, queued: 1, finished: 2, fraction: 0.5, eta: 20 });
    expect(t.status(2)).toEqual({ status: 'failed', error: 'out of memory' });
    expect(progressText(p)).toBe('2 of 4 images · 1 running · 1 queued · 1 failed');
    t.update([{ id: 3, presegment_status: 'done', presegment_error: '' }, { id: 4, presegment_status: 'done', presegment_error: '' }]);
    expect(t.progress(30_000)).toMatchObject({ complete: true, eta: 0, fraction: 1 });
  });
  it('ETA wording', () => {
    expect(etaSeconds(0, 10, 5)).toBeNull();
    expect(etaSeconds(5, 10, 50)).toBe(50);
    expect(formatEta(null)).toBe('estimating time left…');
    expect(formatEta(30)).toBe('less than a minute left');
    expect(formatEta(600)).toBe('about 10 min left');
    expect(formatEta(3900)).toBe('about 1 h 5 min left');
  });
  it('labels and locks', () => {
    expect(presegmentLabel('running')).toBe('Running');
    expect(presegmentLabel(null)).toBe('Not run');
    expect(isLocked('verified')).toBe(true);
    expect(isLocked('annotating')).toBe(false);
  });
});

describe('refusals as sentences', () => {
  it('409 takes the server’s sentence, 403 / 400 / network are explained', () => {
    expect(refusalSentence(new ApiError(409, 'The image is Verified; its annotations are locked until an admin reopens it.', { status: 'verified' }), 'image')).toBe('The image is Verified; its annotations are locked until an admin reopens it.');
    expect(refusalSentence(new ApiError(403, 'Permission denied'), 'project')).toMatch(/admins/);
    expect(refusalSentence(new ApiError(400, 'Unknown model version.', { model_version: 'not a model version of this project' }), 'image')).toMatch(/not one of this project/);
    expect(refusalSentence(new ApiError(0, 'x'), 'project')).toMatch(/cannot be reached/);
    expect(refusalSentence(new ApiError(500, 'Server error'), 'project')).toBe('Server error.');
  });
});

describe('statuses from the queued / running / failed lists', () => {
  it('an image of the run in none of them is done; others are ignored', () => {
    const out = statusesFromLists([1, 2, 3, 4], { queued: [{ id: 1 }], running: [{ id: 2 }], failed: [{ id: 3, presegment_error: 'boom' }, { id: 9, presegment_error: 'old' }] });
    expect(out).toEqual([
      { id: 1, presegment_status: 'queued', presegment_error: '' },
      { id: 2, presegment_status: 'running', presegment_error: '' },
      { id: 3, presegment_status: 'failed', presegment_error: 'boom' },
      { id: 4, presegment_status: 'done', presegment_error: '' },
    ]);
  });
});
