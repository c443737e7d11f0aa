import { describe, expect, it } from 'vitest';
import { parseRoute, routeHash } from '../src/core/router';
import type { AdminQueue, WorkerInfo } from '../src/core/types';
import { agoText, deviceLabel, onGpu, projectRows, queueSummary, sortWorkers, taskText, uptimeText } from '../src/core/workers';

const NOW = Date.parse('2026-03-01T12:00:00Z');
const iso = (secondsAgo: number) => new Date(NOW - secondsAgo * 1000).toISOString();

const worker = (over: Partial<WorkerInfo> = {}): WorkerInfo => ({
  name: 'gpu@node1',
  host: 'node1',
  pid: 41,
  queues: ['default', 'gpu'],
  device: 'cuda:0',
  device_name: 'NVIDIA H100 80GB HBM3',
  concurrency: 1,
  state: 'alive',
  alive: true,
  tasks: [],
  started_at: iso(3 * 3600 + 5 * 60),
  last_seen: iso(4),
  stopped_at: null,
  ...over,
});

const queue = (over: Partial<AdminQueue> = {}): AdminQueue => ({
  presegment: { queued: 0, running: 0, failed: 0, by_project: [] },
  training: { queued: 0, running: 0 },
  outbox: { waiting: 0, oldest: null },
  workers: [worker(), worker({ name: 'training@node2', queues: ['training'], device: 'cpu', device_name: '' })],
  ...over,
});

describe('workers & queue: how a worker is shown', () => {
  it('names the device, the GPU when there is one', () => {
    expect(deviceLabel(worker())).toBe('cuda:0 · NVIDIA H100 80GB HBM3');
    expect(deviceLabel(worker({ device: 'cpu', device_name: '' }))).toBe('CPU');
    expect(deviceLabel(worker({ device: '', device_name: '' }))).toBe('—'); // not found out yet
    expect(deviceLabel(worker({ device: 'cuda:1', device_name: 'CUDA not available' }))).toBe('cuda:1 · CUDA not available');
    expect(onGpu(worker())).toBe(true);
    expect(onGpu(worker({ device: 'cpu' }))).toBe(false);
  });

  it('lists alive workers first, then the ones that stopped reporting, then the stopped', () => {
    const sorted = sortWorkers([
      worker({ name: 'b', state: 'stopped', alive: false }),
      worker({ name: 'z', state: 'alive' }),
      worker({ name: 'c', state: 'stale', alive: false }),
      worker({ name: 'a', state: 'alive' }),
    ]);
    expect(sorted.map((w) => w.name)).toEqual(['a', 'z', 'c', 'b']);
  });

  it('says what a task does in words', () => {
    expect(taskText({ name: 'inference.presegment_image', args: '[5, 2]' })).toBe('Pre-segmenting image 5');
    expect(taskText({ name: 'inference.presegment_tiles', args: '[5, 2, 7]' })).toBe('Pre-segmenting image 5 (tiles)');
    expect(taskText({ name: 'inference.presegment_stitch', args: '[5, 2]' })).toBe("Stitching image 5's tiles");
    expect(taskText({ name: 'training.run_job', args: '(12,)' })).toBe('Training job 12');
    expect(taskText({ name: 'interchange.export_run', args: '[3]' })).toBe('Export 3');
    expect(taskText({ name: 'core.outbox_dispatch', args: '()' })).toBe('core.outbox_dispatch');
    expect(taskText({ name: 'x.y', args: "['a']" })).toBe("x.y ['a']");
  });

  it('tells times relative to now, never negative', () => {
    expect(agoText(iso(4), NOW)).toBe('4 s ago');
    expect(agoText(iso(-2), NOW)).toBe('0 s ago'); // the server's clock a little ahead
    expect(agoText(iso(600), NOW)).toBe('10 min ago');
    expect(agoText(iso(3 * 3600), NOW)).toBe('3 h ago');
    expect(agoText(iso(3 * 86400), NOW)).toBe('3 d ago');
    expect(agoText(null, NOW)).toBe('—');
    expect(uptimeText(iso(45), NOW)).toBe('45 s');
    expect(uptimeText(iso(3 * 3600 + 5 * 60), NOW)).toBe('3 h 5 min');
    expect(uptimeText(iso(2 * 86400 + 4 * 3600), NOW)).toBe('2 d 4 h');
  });
});

describe('workers & queue: the summary', () => {
  it('counts alive workers per queue', () => {
    const s = queueSummary(queue({ workers: [worker(), worker({ name: 'old', state: 'stopped', alive: false })] }));
    expect(s).toMatchObject({ alive: 1, total: 2, presegmenters: 1, trainers: 0 });
    expect(s.warnings).toEqual([]);
  });

  it('warns when work waits and nobody takes it', () => {
    const s = queueSummary(
      queue({
        presegment: { queued: 3, running: 0, failed: 1, by_project: [] },
        training: { queued: 1, running: 0 },
        outbox: { waiting: 2, oldest: iso(60) },
        workers: [worker({ state: 'stale', alive: false })],
      }),
    );
    expect(s.alive).toBe(0);
    expect(s.warnings).toEqual([
      '3 pre-segmentations waiting, but no worker on the gpu queue is alive.',
      '1 training job waiting, but no worker on the training queue is alive.',
      '2 tasks not yet handed to the broker (is it reachable?).',
      '1 worker has stopped reporting.',
    ]);
  });

  it('puts the current project first, then the busiest', () => {
    const row = (project: number, queued: number, running = 0, failed = 0) => ({ project, name: `P${project}`, queued, running, failed });
    const rows = [row(1, 1), row(2, 5), row(3, 0, 0, 4), row(4, 2, 3)];
    expect(projectRows(rows, 3).map((r) => r.project)).toEqual([3, 2, 4, 1]);
    expect(projectRows(rows, null).map((r) => r.project)).toEqual([2, 4, 1, 3]);
  });

  it('has a route of its own among the admin tabs', () => {
    expect(parseRoute('#/projects/2/admin/workers')).toEqual({ name: 'admin', projectId: 2, tab: 'workers' });
    expect(routeHash({ name: 'admin', projectId: 2, tab: 'workers' })).toBe('#/projects/2/admin/workers');
  });
});
