/**
 * Administration, training tab: the form that starts a job (kind, preset,
 * epochs / learning rate per stage, device, data, synthetic clusters,
 * evaluation, promotion, extra JSON; the request is previewed) and the job
 * list with live progress (polled faster while a job runs).
 */
import { ApiError } from '../../core/api';
import { routeHash } from '../../core/router';
import {
  buildJobConfig,
  defaultJobForm,
  EPOCH_KEY,
  formatDuration,
  isLive,
  JOB_KINDS,
  jobDuration,
  jobFraction,
  kindInfo,
  LR_KEY,
  progressText,
  STAGE_LABELS,
  statusLabel,
  type JobForm,
  type Stage,
} from '../../core/training';
import type { JobKind, TrainingJob } from '../../core/types';
import { h, icon, replaceChildren, statusTone } from '../dom';
import { toast } from '../overlay';
import { errText, relTime } from '../viewer';
import { AdminPanel, errorList, forbidden, progressBar } from './common';

export class TrainingPanel extends AdminPanel {
  private form: JobForm = defaultJobForm();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private jobsEl = h('div', { class: 'jobs' });
  private formEl = h('form', { class: 'card pad job-form', novalidate: true });
  private serverErrors: Record<string, unknown> = {};
  private starting = false;

  mount(el: HTMLElement): void {
    el.append(
      h(
        'div',
        { class: 'admin-grid' },
        h('section', null, h('h2', { class: 'section-title' }, 'Start a training job'), this.formEl),
        h('section', null, h('h2', { class: 'section-title' }, 'Jobs'), this.jobsEl),
      ),
    );
    this.renderForm();
    void this.loadJobs();
  }

  override dispose(): void {
    super.dispose();
    if (this.timer) clearTimeout(this.timer);
  }

  private async loadJobs(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    let live = false;
    try {
      const res = await this.app.api.trainingJobs(this.project.id, 1, 20);
      if (!this.alive) return;
      live = res.results.some((j) => isLive(j.status));
      this.renderJobs(res.results, res.count);
    } catch (e) {
      if (!this.alive) return;
      this.jobsEl.replaceChildren(forbidden(e));
    }
    if (this.alive) this.timer = setTimeout(() => void this.loadJobs(), live ? 2000 : 15000);
  }

  private renderJobs(jobs: TrainingJob[], count: number): void {
    if (!jobs.length) {
      this.jobsEl.replaceChildren(h('div', { class: 'empty' }, h('h3', null, 'No training job yet'), h('p', { class: 'muted' }, 'Start one with the form: it trains on the verified images of this project.')));
      return;
    }
    const row = (j: TrainingJob) => {
      const frac = jobFraction(j);
      const href = routeHash({ name: 'job', projectId: this.project.id, jobId: j.id });
      return h(
        'a',
        { class: 'job-row card', href, dataset: { job: String(j.id), status: j.status } },
        h('div', { class: 'job-row-head' }, h('b', null, `#${j.id}`), h('span', null, kindInfo(j.kind).label), h('span', { class: `pill pill-${statusTone(j.status)}` }, statusLabel(j.status)), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, j.trigger === 'schedule' ? 'scheduled' : (j.created_by ?? '')), h('span', { class: 'muted small' }, relTime(j.created_at))),
        isLive(j.status) ? progressBar(frac, { live: true }) : null,
        h('div', { class: 'job-row-foot muted small' }, h('span', null, progressText(j)), h('span', { class: 'grow' }), h('span', null, `snapshot #${j.snapshot_number ?? j.snapshot}`), h('span', null, formatDuration(jobDuration(j)))),
      );
    };
    replaceChildren(this.jobsEl, ...jobs.map(row), count > jobs.length ? h('p', { class: 'muted small' }, `${count - jobs.length} older jobs not shown`) : null);
  }

  private set<K extends keyof JobForm>(k: K, v: JobForm[K]): void {
    this.form = { ...this.form, [k]: v };
    this.renderForm();
  }

  /** A typed value: the form state, the preview, the errors and the start button change in place. */
  private update<K extends keyof JobForm>(k: K, v: JobForm[K]): void {
    this.form = { ...this.form, [k]: v };
    this.refreshDerived();
  }

  private refreshDerived(): void {
    const f = this.form;
    const { config, errors } = buildJobConfig(f);
    const allErrors: Record<string, unknown> = { ...errors, ...this.serverErrors };
    const pre = this.formEl.querySelector<HTMLElement>('[data-preview]');
    if (pre) pre.textContent = JSON.stringify({ kind: f.kind, config }, null, 1);
    for (const slot of this.formEl.querySelectorAll<HTMLElement>('[data-error-for]')) {
      const msg = allErrors[slot.dataset.errorFor ?? ''];
      slot.textContent = msg ? String(msg) : '';
      slot.hidden = !msg;
    }
    const start = this.formEl.querySelector<HTMLButtonElement>('[data-action="start-job"]');
    if (start) start.disabled = this.starting || Object.keys(errors).length > 0;
  }

  private renderForm(): void {
    const f = this.form;
    const info = kindInfo(f.kind);
    const { config, errors } = buildJobConfig(f);
    const allErrors = { ...errors, ...this.serverErrors };
    // an error slot per field, filled in place while typing (see refreshDerived)
    const errFor = (key: string) => h('div', { class: 'field-error', dataset: { errorFor: key }, hidden: !allErrors[key] }, allErrors[key] ? String(allErrors[key]) : '');
    // typed values update the form in place on `input`: a re-render on `change` (fired by the blur
    // of the mousedown on "Start training") would replace the button under the pointer and
    // swallow that first click
    const numInput = (value: number | null | undefined, placeholder: string, onChange: (v: number | null) => void, step = '1', field = '') =>
      h('input', {
        type: 'number',
        min: '0',
        step,
        value: value == null ? '' : String(value),
        placeholder,
        dataset: { field },
        oninput: (e: Event) => {
          const raw = (e.target as HTMLInputElement).value.trim();
          onChange(raw === '' ? null : Number(raw));
        },
      });
    const stageRows = info.stages.map((stage: Stage) =>
      h(
        'div',
        { class: 'stage-row' },
        h('span', { class: 'stage-name' }, STAGE_LABELS[stage]),
        h('label', { class: 'field compact' }, h('span', null, 'Epochs'), numInput(f.epochs[stage], f.preset === 'tiny' ? 'tiny preset' : 'preset', (v) => this.update('epochs', { ...this.form.epochs, [stage]: v }), '1', `config.${stage}.${EPOCH_KEY[stage]}`), errFor(`config.${stage}.${EPOCH_KEY[stage]}`)),
        h('label', { class: 'field compact' }, h('span', null, 'Learning rate'), numInput(f.learningRate[stage], 'preset', (v) => this.update('learningRate', { ...this.form.learningRate, [stage]: v }), 'any', `config.${stage}.${LR_KEY[stage]}`), errFor(`config.${stage}.${LR_KEY[stage]}`)),
      ),
    );
    const seg = <T extends string>(value: T, options: [T, string][], on: (v: T) => void, name: string) =>
      h(
        'div',
        { class: 'segmented', role: 'radiogroup', dataset: { name } },
        options.map(([v, label]) => h('button', { type: 'button', class: v === value ? 'on' : '', role: 'radio', 'aria-checked': String(v === value), dataset: { value: v }, onclick: () => on(v) }, label)),
      );
    replaceChildren(
      this.formEl,
      h('div', { class: 'field' }, h('span', null, 'What to train'), h('div', { class: 'kind-grid' }, JOB_KINDS.map((k) => h('button', { type: 'button', class: `kind-card ${k.kind === f.kind ? 'on' : ''}`, dataset: { kind: k.kind }, onclick: () => this.set('kind', k.kind) }, h('b', null, k.label), h('span', { class: 'muted small' }, k.description))))),
      h('div', { class: 'field' }, h('span', null, 'Hyper-parameters'), seg(f.preset, [['default', 'Full (paper settings)'], ['fast', 'Fast (smaller models)'], ['tiny', 'Tiny (smoke test)']], (v) => this.set('preset', v), 'preset')),
      h('div', { class: 'stage-rows' }, stageRows),
      h(
        'div',
        { class: 'form-row' },
        h('label', { class: 'field' }, h('span', null, 'Device'), h('select', { onchange: (e: Event) => this.set('device', (e.target as HTMLSelectElement).value as JobForm['device']) }, (['auto', 'cpu', 'cuda'] as const).map((d) => h('option', { value: d, selected: f.device === d }, d === 'auto' ? 'Automatic' : d.toUpperCase())))),
        h('label', { class: 'field' }, h('span', null, 'Training data'), h('select', { onchange: (e: Event) => this.set('source', (e.target as HTMLSelectElement).value as JobForm['source']) }, h('option', { value: 'verified', selected: f.source === 'verified' }, 'Verified images'), h('option', { value: 'annotation', selected: f.source === 'annotation' }, 'Images marked complete'))),
        h('label', { class: 'field' }, h('span', null, 'Synthetic clusters'), numInput(f.synthetic, 'off', (v) => this.update('synthetic', v), '1', 'config.synthetic.count'), errFor('config.synthetic.count')),
      ),
      h(
        'div',
        { class: 'form-row' },
        h('label', { class: 'check' }, h('input', { type: 'checkbox', checked: f.evaluate, onchange: (e: Event) => this.set('evaluate', (e.target as HTMLInputElement).checked) }), 'Evaluate on the frozen test split'),
        h('label', { class: 'field' }, h('span', null, 'Promotion'), h('select', { disabled: !f.evaluate, onchange: (e: Event) => this.set('autoPromote', (e.target as HTMLSelectElement).value as JobForm['autoPromote']) }, h('option', { value: 'policy', selected: f.autoPromote === 'policy' }, 'As the schedule’s gate says'), h('option', { value: 'yes', selected: f.autoPromote === 'yes' }, 'Promote if it passes the gate'), h('option', { value: 'no', selected: f.autoPromote === 'no' }, 'Never (keep as candidate)'))),
      ),
      h(
        'details',
        { class: 'advanced', open: !!f.extra || !!allErrors.extra },
        h('summary', null, 'Advanced: extra configuration (JSON)'),
        h('textarea', { rows: 4, spellcheck: 'false', placeholder: '{"cellpose": {"batch_size": 4}}', value: f.extra, oninput: (e: Event) => this.update('extra', (e.target as HTMLTextAreaElement).value) }),
        errFor('extra'),
      ),
      h('div', { class: 'config-preview' }, h('span', { class: 'muted small' }, 'Request'), h('pre', { dataset: { preview: '' } }, JSON.stringify({ kind: f.kind, config }, null, 1))),
      errorList(Object.fromEntries(Object.entries(this.serverErrors).filter(([k]) => !this.formEl.querySelector(`[data-field="${CSS.escape(k)}"]`)))),
      h(
        'div',
        { class: 'form-actions' },
        h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => ((this.form = defaultJobForm()), (this.serverErrors = {}), this.renderForm()) }, 'Reset'),
        h('span', { class: 'grow' }),
        h('button', { type: 'submit', class: 'btn btn-primary', dataset: { action: 'start-job' }, disabled: this.starting || Object.keys(errors).length > 0 }, icon('sparkles', 15), this.starting ? 'Starting…' : 'Start training'),
      ),
    );
    this.formEl.onsubmit = (e) => {
      e.preventDefault();
      void this.start();
    };
  }

  private async start(): Promise<void> {
    const { config, errors } = buildJobConfig(this.form);
    if (Object.keys(errors).length) return;
    this.starting = true;
    this.serverErrors = {};
    this.renderForm();
    try {
      // buildJobConfig accepted the kind: one of JOB_KINDS
      const job = await this.app.api.startTrainingJob(this.project.id, { kind: this.form.kind as JobKind, config });
      toast(`Training job #${job.id} started`, 'success');
      this.app.navigate(routeHash({ name: 'job', projectId: this.project.id, jobId: job.id }));
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        const live = (e.fieldErrors as { job?: number }).job ?? (e.body as { job?: number } | null)?.job;
        toast(e.detail, 'warn', 7000);
        if (typeof live === 'number') this.app.navigate(routeHash({ name: 'job', projectId: this.project.id, jobId: live }));
      } else if (e instanceof ApiError && e.status === 400) {
        this.serverErrors = Object.keys(e.fieldErrors).length ? e.fieldErrors : { request: e.detail };
        toast(e.detail, 'error');
      } else toast(`Could not start: ${errText(e)}`, 'error');
    } finally {
      this.starting = false;
      if (this.alive) this.renderForm();
    }
  }
}
