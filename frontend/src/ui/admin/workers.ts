/**
 * Administration, workers & queue tab (staff): pre-segmentations and training
 * jobs waiting and running, tasks waiting for the broker, and every Celery
 * worker's heartbeat (alive / not responding / stopped, queues, device, what
 * it runs now). Platform-wide, not per project; asked again every
 * {@link QUEUE_REFRESH_MS} while the tab is open. Logic in core/workers.ts.
 */
import { routeHash } from '../../core/router';
import type { AdminQueue, WorkerInfo } from '../../core/types';
import {
  agoText,
  deviceLabel,
  onGpu,
  projectRows,
  QUEUE_REFRESH_MS,
  queueSummary,
  sortWorkers,
  taskText,
  uptimeText,
  WORKER_STATE_LABELS,
  WORKER_STATE_TONES,
} from '../../core/workers';
import { h, icon } from '../dom';
import { errText } from '../viewer';
import { AdminPanel, fmtDate, forbidden, loadingBlock } from './common';

export class WorkersPanel extends AdminPanel {
  private el!: HTMLElement;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private last: AdminQueue | null = null;
  private lastAt = 0;

  mount(el: HTMLElement): void {
    this.el = el;
    el.append(loadingBlock('Loading workers and queues…'));
    void this.load();
  }

  override dispose(): void {
    super.dispose();
    if (this.timer) clearTimeout(this.timer);
  }

  private async load(): Promise<void> {
    try {
      const queue = await this.app.api.adminQueue();
      if (!this.alive) return;
      this.last = queue;
      this.lastAt = Date.now();
      this.render(queue, Date.now(), null);
    } catch (e) {
      if (!this.alive) return;
      // keep what was shown, say it is not current; the first failure has nothing to keep
      if (this.last) this.render(this.last, Date.now(), errText(e));
      else this.el.replaceChildren(forbidden(e));
    }
    if (this.alive) this.timer = setTimeout(() => void this.load(), QUEUE_REFRESH_MS);
  }

  private render(q: AdminQueue, now: number, error: string | null): void {
    const summary = queueSummary(q);
    const stat = (label: string, value: number | string, sub: string, tone = '', key = '') =>
      h('div', { class: `stat card ${tone}`, dataset: { stat: key } }, h('div', { class: 'stat-value' }, String(value)), h('div', { class: 'stat-label' }, label), h('div', { class: 'muted small' }, sub));
    const p = q.presegment;
    const stats = h(
      'div',
      { class: 'stats' },
      stat('Pre-segmentations queued', p.queued, `${p.running} running now`, p.queued ? 'accent' : '', 'presegment-queued'),
      stat('Pre-segmentations failed', p.failed, 'last run failed', p.failed ? 'warn' : '', 'presegment-failed'),
      stat('Training jobs', q.training.queued + q.training.running, `${q.training.running} running · ${q.training.queued} queued`, '', 'training'),
      stat('Workers alive', `${summary.alive} / ${summary.total}`, `${summary.presegmenters} on gpu · ${summary.trainers} on training`, summary.alive < summary.total ? 'warn' : '', 'workers'),
    );
    const warnings = summary.warnings.length ? h('div', { class: 'queue-warnings card' }, summary.warnings.map((w) => h('div', { class: 'queue-warning' }, icon('alert', 15), w))) : null;

    const workers = sortWorkers(q.workers);
    const workerTable = workers.length
      ? h(
          'div',
          { class: 'table-wrap card' },
          h(
            'table',
            { class: 'table workers-table' },
            h('thead', null, h('tr', null, ['State', 'Worker', 'Queues', 'Device', 'Slots', 'Running now', 'Last seen', 'Up'].map((t) => h('th', { class: t === 'Slots' ? 'num' : '' }, t)))),
            h('tbody', null, workers.map((w) => this.workerRow(w, now))),
          ),
        )
      : h('div', { class: 'empty' }, h('h3', null, 'No worker has reported yet'), h('p', { class: 'muted' }, 'Each Celery worker reports itself when it starts and every few seconds after. Start one: celery -A config worker -Q default,gpu'));

    const projects = projectRows(p.by_project, this.project.id);
    const projectTable = projects.length
      ? h(
          'div',
          { class: 'table-wrap card' },
          h(
            'table',
            { class: 'table mini' },
            h('thead', null, h('tr', null, ['Project', 'Queued', 'Running', 'Failed'].map((t, i) => h('th', { class: i ? 'num' : '' }, t)))),
            h(
              'tbody',
              null,
              projects.map((r) =>
                h(
                  'tr',
                  { dataset: { project: String(r.project) }, class: r.project === this.project.id ? 'current' : '' },
                  h('td', null, h('a', { href: routeHash({ name: 'images', projectId: r.project }) }, r.name)),
                  h('td', { class: 'num' }, String(r.queued)),
                  h('td', { class: 'num' }, String(r.running)),
                  h('td', { class: `num ${r.failed ? 'bad' : ''}` }, String(r.failed)),
                ),
              ),
            ),
          ),
        )
      : h('p', { class: 'muted small' }, 'No image is waiting for pre-segmentation, and none failed.');

    this.el.replaceChildren(
      h(
        'div',
        { class: 'workers-panel' },
        error ? h('div', { class: 'queue-stale card', role: 'status' }, icon('alert', 15), `Could not refresh (${error}); showing what was known ${agoText(new Date(this.lastAt).toISOString(), now)}.`) : null,
        stats,
        warnings,
        h('h2', { class: 'section-title' }, 'Workers'),
        workerTable,
        h('h2', { class: 'section-title' }, 'Pre-segmentation by project'),
        projectTable,
        h(
          'p',
          { class: 'muted small refresh-note', dataset: { testid: 'queue-updated' } },
          `Updated ${new Date(now).toLocaleTimeString()} · refreshes every ${QUEUE_REFRESH_MS / 1000} s`,
          q.outbox.waiting ? ` · oldest task waiting for the broker since ${fmtDate(q.outbox.oldest)}` : '',
        ),
      ),
    );
  }

  private workerRow(w: WorkerInfo, now: number): HTMLElement {
    const running = w.tasks.length
      ? h('div', { class: 'worker-tasks' }, w.tasks.map((t) => h('div', { title: `${t.name} ${t.args} (${t.id})` }, taskText(t), t.started_at ? h('span', { class: 'muted small' }, ` · ${agoText(t.started_at, now).replace(' ago', '')}`) : null)))
      : h('span', { class: 'muted' }, w.alive ? 'idle' : '—');
    return h(
      'tr',
      { dataset: { worker: w.name, state: w.state } },
      h('td', null, h('span', { class: `pill pill-${WORKER_STATE_TONES[w.state]}` }, WORKER_STATE_LABELS[w.state])),
      h('td', null, h('div', null, h('b', null, w.name)), h('div', { class: 'muted small' }, `${w.host} · pid ${w.pid}`)),
      h('td', null, w.queues.map((name) => h('span', { class: 'queue-chip' }, name))),
      h('td', { class: onGpu(w) ? 'device gpu' : 'device', dataset: { testid: 'device' } }, deviceLabel(w)),
      h('td', { class: 'num' }, String(w.concurrency)),
      h('td', null, running),
      h('td', { title: fmtDate(w.last_seen) }, w.state === 'stopped' ? `stopped ${agoText(w.stopped_at, now)}` : agoText(w.last_seen, now)),
      h('td', { title: `since ${fmtDate(w.started_at)}` }, w.state === 'alive' ? uptimeText(w.started_at, now) : '—'),
    );
  }
}
