/**
 * One training job: progress bar, live loss curves, log, result. Polls
 * `GET training/jobs/{id}` while the job is queued or running.
 */
import { ApiError } from '../core/api';
import { routeHash } from '../core/router';
import { curveCharts, evaluationFraction, formatDuration, isLive, jobDuration, jobFraction, kindInfo, progressText, STAGE_LABELS, statusLabel } from '../core/training';
import type { TrainingJob } from '../core/types';
import { adminPage, forbidden, loadingBlock, progressBar } from './admin/common';
import type { App, Screen } from './app';
import { lineChart } from './charts';
import { h, icon, replaceChildren, statusTone } from './dom';
import { confirmDialog, toast } from './overlay';
import { errText, relTime } from './viewer';

export class JobScreen implements Screen {
  private alive = true;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private job: TrainingJob | null = null;
  private failures = 0;
  private lastCurvesKey = '';
  private lastLogLength = -1;

  private content!: HTMLElement;
  private headEl!: HTMLElement;
  private progressEl!: HTMLElement;
  private chartsEl!: HTMLElement;
  private resultEl!: HTMLElement;
  private logEl!: HTMLPreElement;
  private configEl!: HTMLElement;

  constructor(
    private readonly app: App,
    private readonly projectId: number,
    private readonly jobId: number,
  ) {}

  async mount(root: HTMLElement): Promise<void> {
    const page = adminPage(this.app, this.projectId, 'job', h('span', { class: 'crumb current' }, `Job #${this.jobId}`));
    this.content = page.content;
    this.content.classList.add('job-page');
    root.append(...page.nodes);
    this.app.api
      .getProject(this.projectId)
      .then((p) => page.setProject(p))
      .catch(() => undefined);
    this.headEl = h('div', { class: 'job-head' });
    this.progressEl = h('div', { class: 'card pad job-progress' });
    this.chartsEl = h('div', { class: 'job-charts' });
    this.resultEl = h('div', { class: 'job-result' });
    this.logEl = h('pre', { class: 'log', tabindex: '0', 'aria-label': 'Job log' });
    this.configEl = h('div', { class: 'job-config' });
    this.content.append(loadingBlock('Loading the job…'));
    await this.poll(true);
  }

  unmount(): void {
    this.alive = false;
    if (this.timer) clearTimeout(this.timer);
  }

  private async poll(first = false): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    try {
      const job = await this.app.api.trainingJob(this.jobId);
      if (!this.alive) return;
      this.failures = 0;
      if (first) this.layout();
      this.job = job;
      this.render();
    } catch (e) {
      if (!this.alive) return;
      if (first) {
        this.content.replaceChildren(forbidden(e));
        return;
      }
      this.failures += 1;
      if (!(e instanceof ApiError && e.isTransient)) toast(`Could not refresh the job: ${errText(e)}`, 'warn');
    }
    if (!this.alive) return;
    const live = !this.job || isLive(this.job.status);
    if (live) this.timer = setTimeout(() => void this.poll(), Math.min(15000, 1500 * 2 ** this.failures));
  }

  private layout(): void {
    this.content.replaceChildren(
      this.headEl,
      this.progressEl,
      h('h2', { class: 'section-title' }, 'Training curves'),
      this.chartsEl,
      this.resultEl,
      h('div', { class: 'admin-grid job-bottom' }, h('section', null, h('h2', { class: 'section-title' }, 'Log'), this.logEl), h('section', null, h('h2', { class: 'section-title' }, 'Configuration'), this.configEl)),
    );
  }

  private render(): void {
    const j = this.job!;
    const live = isLive(j.status);
    replaceChildren(
      this.headEl,
      h('div', { class: 'job-title' }, h('h2', null, `Training job #${j.id}`), h('span', { class: 'muted' }, kindInfo(j.kind).label), h('span', { class: `pill pill-${statusTone(j.status)}`, dataset: { testid: 'job-status' } }, statusLabel(j.status))),
      h('span', { class: 'grow' }),
      live ? h('button', { class: 'btn btn-danger-outline btn-sm', disabled: j.cancel_requested, onclick: () => void this.cancel() }, icon('x', 14), j.cancel_requested ? 'Cancelling…' : 'Cancel job') : null,
      h('a', { class: 'btn btn-sm', href: routeHash({ name: 'admin', projectId: this.projectId, tab: 'training' }) }, 'All jobs'),
    );
    const frac = jobFraction(j);
    const dur = jobDuration(j);
    const facts: [string, string][] = [
      ['Started', j.started_at ? `${new Date(j.started_at).toLocaleString()}` : 'not yet'],
      [live ? 'Running for' : 'Duration', formatDuration(dur)],
      ['Data', `snapshot #${j.snapshot_number ?? j.snapshot}`],
      ['Worker', j.worker_host ? `${j.worker_host}${j.worker_pid ? ` · pid ${j.worker_pid}` : ''}` : '—'],
      ['Heartbeat', j.heartbeat_at ? relTime(j.heartbeat_at) : '—'],
      ['Started by', j.trigger === 'schedule' ? 'the schedule' : (j.created_by ?? '—')],
    ];
    replaceChildren(
      this.progressEl,
      h('div', { class: 'progress-head' }, h('b', { dataset: { testid: 'job-progress-text' } }, progressText(j)), h('span', { class: 'grow' }), h('b', { class: 'big-pct', dataset: { testid: 'job-percent' } }, frac == null ? '—' : `${Math.round(frac * 100)}%`)),
      progressBar(frac, { live, big: true, label: 'Job progress' }),
      this.evaluationBar(j),
      h('div', { class: 'stage-steps' }, this.stageSteps(j)),
      h('div', { class: 'facts' }, facts.map(([k, v]) => h('div', null, h('span', { class: 'muted small' }, k), h('span', null, v)))),
      j.error ? h('div', { class: 'job-error' }, icon('alert', 16), h('span', null, j.error)) : null,
    );
    // curves: redrawn only when they changed
    const key = JSON.stringify(j.curves ?? {}).length + ':' + Object.values(j.curves ?? {}).reduce((a, v) => a + v.length, 0);
    if (key !== this.lastCurvesKey) {
      this.lastCurvesKey = key;
      const charts = curveCharts(j.curves);
      replaceChildren(
        this.chartsEl,
        charts.length
          ? charts.map((c) =>
              h(
                'div',
                { class: 'card pad chart-card', dataset: { stage: c.stage } },
                h('h3', { class: 'form-section first' }, `${STAGE_LABELS[c.stage] ?? c.stage}`),
                h('div', { class: 'chart-pair' }, lineChart(c.loss, { title: 'Loss', xLabel: 'epoch', empty: 'No loss reported yet' }), c.metrics.length ? lineChart(c.metrics, { title: 'Validation metrics', xLabel: 'epoch' }) : c.lr.length ? lineChart(c.lr, { title: 'Learning rate', xLabel: 'epoch' }) : null),
              ),
            )
          : h('div', { class: 'card pad chart-card' }, lineChart([], { title: 'Loss', empty: live ? 'The curves appear after the first epoch.' : 'No curve was recorded.' })),
      );
    }
    this.renderResult(j);
    const log = j.log ?? '';
    if (log.length !== this.lastLogLength) {
      this.lastLogLength = log.length;
      const atBottom = this.logEl.scrollHeight - this.logEl.scrollTop - this.logEl.clientHeight < 40;
      this.logEl.textContent = log || (live ? 'Waiting for the worker…' : '(empty)');
      if (atBottom) this.logEl.scrollTop = this.logEl.scrollHeight;
    }
    if (!this.configEl.childElementCount || !live) {
      replaceChildren(
        this.configEl,
        h('div', { class: 'muted small' }, 'Requested'),
        h('pre', { class: 'small-pre' }, JSON.stringify(j.config ?? {}, null, 1)),
        j.resolved_config && Object.keys(j.resolved_config).length ? h('details', null, h('summary', { class: 'muted small' }, 'Every hyper-parameter (resolved)'), h('pre', { class: 'small-pre' }, JSON.stringify(j.resolved_config, null, 1))) : null,
      );
    }
  }

  /** Evaluation takes minutes on a real test split: its own bar, by version and test image, so the job does not look stuck. */
  private evaluationBar(j: TrainingJob): HTMLElement | null {
    const p = j.progress ?? {};
    if (j.status !== 'running' || p.stage !== 'evaluate') return null;
    const frac = evaluationFraction(p);
    // the headline above already says which model and image (progressText)
    return h(
      'div',
      { class: 'eval-progress', dataset: { testid: 'job-evaluation' } },
      h('div', { class: 'progress-head' }, h('span', { class: 'small' }, p.phase === 'gate' ? 'Promotion gate' : 'Evaluation on the frozen test split'), h('span', { class: 'grow' }), h('span', { class: 'muted small', dataset: { testid: 'job-evaluation-percent' } }, frac == null ? '' : `${Math.round(frac * 100)}%`)),
      progressBar(frac, { live: true, label: 'Evaluation progress' }),
    );
  }

  private stageSteps(j: TrainingJob): HTMLElement[] {
    const stages = ['data', ...kindInfo(j.kind).stages, ...((j.config as { evaluate?: boolean }).evaluate === false ? [] : ['evaluate'])];
    const cur = j.progress?.stage;
    const idx = cur === 'done' || j.status === 'succeeded' ? stages.length : stages.indexOf(cur ?? '');
    return stages.map((s, i) =>
      h('span', { class: `step ${i < idx ? 'done' : i === idx && isLive(j.status) ? 'current' : i === idx ? 'stopped' : ''}` }, h('i', null, i < idx ? '✓' : String(i + 1)), STAGE_LABELS[s] ?? s, j.timings?.[s] ? h('span', { class: 'muted small' }, ` ${formatDuration(j.timings[s])}`) : null),
    );
  }

  private renderResult(j: TrainingJob): void {
    const versions = j.result?.versions ?? [];
    const promotion = j.result?.promotion ?? {};
    if (!versions.length && !Object.keys(promotion).length) {
      this.resultEl.replaceChildren();
      return;
    }
    replaceChildren(
      this.resultEl,
      h('h2', { class: 'section-title' }, 'Result'),
      h(
        'div',
        { class: 'card pad result-list' },
        versions.map((v) => {
          const p = promotion[String(v.id)] as { promoted?: boolean; reason?: string; reasons?: string[]; metric?: string; value?: number; baseline_value?: number } | undefined;
          return h(
            'div',
            { class: 'result-row' },
            h('b', null, `${kindInfo(v.kind).label} v${v.number}`),
            p ? h('span', { class: `pill pill-${p.promoted ? 'good' : 'neutral'}` }, p.promoted ? 'Promoted' : 'Kept as candidate') : null,
            p?.reason || p?.reasons ? h('span', { class: 'muted small' }, p.reason ?? (p.reasons ?? []).join('; ')) : null,
            h('span', { class: 'grow' }),
            h('a', { class: 'btn btn-sm', href: routeHash({ name: 'admin', projectId: this.projectId, tab: 'models' }) }, 'Model registry', icon('next', 14)),
          );
        }),
      ),
    );
  }

  private async cancel(): Promise<void> {
    if (!this.job || !(await confirmDialog('Cancel the training job?', 'The worker stops at its next check; nothing of this job is registered.', 'Cancel job', true))) return;
    try {
      await this.app.api.cancelTrainingJob(this.job.id);
      toast('Cancellation requested', 'success');
      void this.poll();
    } catch (e) {
      toast(`Could not cancel: ${errText(e)}`, 'error');
    }
  }
}
