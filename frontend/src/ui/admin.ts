/**
 * Admin screens of a project: training jobs (start, list), the model registry
 * (metrics side by side, promote, roll back), the retraining schedule, and the
 * expert-agreement dashboard.
 */
import { ApiError } from '../core/api';
import { routeHash, type AdminTab } from '../core/router';
import {
  bestByMetric,
  buildJobConfig,
  defaultJobForm,
  isLive,
  jobDuration,
  jobFraction,
  JOB_KINDS,
  kindInfo,
  METRIC_LABELS,
  progressText,
  STAGE_LABELS,
  statusLabel,
  formatDuration,
  type JobForm,
  type Stage,
  EPOCH_KEY,
  LR_KEY,
} from '../core/training';
import type { Agreement, Corrections, DatasetSnapshot, ImageInfo, Project, Registry, RegistryRow, TrainingJob, TrainingPolicy } from '../core/types';
import type { App, Screen } from './app';
import { heat, hbar, num, pct, stackedBar } from './charts';
import { formatStatus, h, icon, replaceChildren, statusTone, type Child } from './dom';
import { confirmDialog, dialog, toast } from './overlay';
import { errText, relTime } from './viewer';

const TABS: { tab: AdminTab; label: string; icon: string }[] = [
  { tab: 'training', label: 'Training', icon: 'sparkles' },
  { tab: 'models', label: 'Model registry', icon: 'layers' },
  { tab: 'schedule', label: 'Retraining schedule', icon: 'cloud' },
  { tab: 'agreement', label: 'Expert agreement', icon: 'check' },
];

export interface Panel {
  mount(el: HTMLElement): void | Promise<void>;
  dispose(): void;
}

export function adminHeader(app: App, projectId: number, projectName: Child, current: AdminTab | 'job', extraCrumb?: Child): HTMLElement {
  return app.topbar([
    h('a', { class: 'crumb', href: '#/projects' }, 'Projects'),
    h('span', { class: 'crumb-sep' }, '/'),
    h('a', { class: 'crumb', href: routeHash({ name: 'images', projectId }) }, projectName),
    h('span', { class: 'crumb-sep' }, '/'),
    h('a', { class: `crumb ${extraCrumb ? '' : 'current'}`, href: routeHash({ name: 'admin', projectId, tab: current === 'job' ? 'training' : current }) }, 'Administration'),
    extraCrumb ? [h('span', { class: 'crumb-sep' }, '/'), extraCrumb] : null,
  ]);
}

export function adminTabs(projectId: number, current: AdminTab | 'job'): HTMLElement {
  return h(
    'nav',
    { class: 'tabs', 'aria-label': 'Administration' },
    TABS.map((t) => h('a', { class: `tab ${t.tab === current || (current === 'job' && t.tab === 'training') ? 'active' : ''}`, href: routeHash({ name: 'admin', projectId, tab: t.tab }) }, icon(t.icon, 15), t.label)),
  );
}

export function forbidden(e: unknown): HTMLElement {
  const msg = e instanceof ApiError && e.status === 403 ? 'Only the administrators of this project can see this page.' : errText(e);
  return h('div', { class: 'empty error' }, h('h3', null, e instanceof ApiError && e.status === 403 ? 'Administrators only' : 'Could not load'), h('p', null, msg));
}

function errorList(errors: Record<string, unknown>): HTMLElement | null {
  const lines = Object.entries(errors).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`);
  return lines.length ? h('ul', { class: 'form-errors' }, lines.map((l) => h('li', null, l))) : null;
}

function fmtDate(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isFinite(d.getTime()) ? d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }) : '—';
}

export function progressBar(fraction: number | null, opts: { live?: boolean; big?: boolean } = {}): HTMLElement {
  const pctv = fraction == null ? null : Math.round(fraction * 1000) / 10;
  return h(
    'div',
    { class: `progress-bar ${opts.big ? 'big' : ''} ${fraction == null && opts.live ? 'indeterminate' : ''}`, role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': pctv == null ? '' : String(pctv) },
    h('div', { class: `progress-fill ${opts.live ? 'live' : ''}`, style: { width: `${pctv ?? (opts.live ? 30 : 0)}%` } }),
  );
}

// ====================================================================== screen

export class AdminScreen implements Screen {
  private panel: Panel | null = null;
  private alive = true;

  constructor(
    private readonly app: App,
    private readonly projectId: number,
    private readonly tab: AdminTab,
  ) {}

  async mount(root: HTMLElement): Promise<void> {
    const name = h('span', null, '…');
    const content = h('div', { class: 'admin-content' });
    root.append(adminHeader(this.app, this.projectId, name, this.tab), h('main', { class: 'page wide' }, h('div', { class: 'page-head' }, h('h1', null, 'Administration')), adminTabs(this.projectId, this.tab), content));
    let project: Project;
    try {
      project = await this.app.api.getProject(this.projectId);
    } catch (e) {
      if (this.alive) content.replaceChildren(forbidden(e));
      return;
    }
    if (!this.alive) return;
    name.textContent = project.name;
    if (project.my_role !== 'admin' && !this.app.user?.is_superuser) {
      content.replaceChildren(forbidden(new ApiError(403, 'admins only')));
      return;
    }
    const panels: Record<AdminTab, () => Panel> = {
      training: () => new TrainingPanel(this.app, project),
      models: () => new RegistryPanel(this.app, project),
      schedule: () => new SchedulePanel(this.app, project),
      agreement: () => new AgreementPanel(this.app, project),
    };
    this.panel = panels[this.tab]();
    await this.panel.mount(content);
  }

  unmount(): void {
    this.alive = false;
    this.panel?.dispose();
  }
}

// ====================================================================== training

class TrainingPanel implements Panel {
  private form: JobForm = defaultJobForm();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private alive = true;
  private jobsEl = h('div', { class: 'jobs' });
  private formEl = h('form', { class: 'card pad job-form', novalidate: true });
  private serverErrors: Record<string, unknown> = {};
  private starting = false;

  constructor(
    private readonly app: App,
    private readonly project: Project,
  ) {}

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

  dispose(): void {
    this.alive = false;
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

  private renderForm(): void {
    const f = this.form;
    const info = kindInfo(f.kind);
    const { config, errors } = buildJobConfig(f);
    const allErrors = { ...errors, ...this.serverErrors };
    const errFor = (key: string) => (allErrors[key] ? h('div', { class: 'field-error' }, String(allErrors[key])) : null);
    const numInput = (value: number | null | undefined, placeholder: string, onChange: (v: number | null) => void, step = '1', field = '') =>
      h('input', {
        type: 'number',
        min: '0',
        step,
        value: value == null ? '' : String(value),
        placeholder,
        dataset: { field },
        onchange: (e: Event) => {
          const raw = (e.target as HTMLInputElement).value.trim();
          onChange(raw === '' ? null : Number(raw));
        },
      });
    const stageRows = info.stages.map((stage: Stage) =>
      h(
        'div',
        { class: 'stage-row' },
        h('span', { class: 'stage-name' }, STAGE_LABELS[stage]),
        h('label', { class: 'field compact' }, h('span', null, 'Epochs'), numInput(f.epochs[stage], f.preset === 'tiny' ? 'tiny preset' : 'preset', (v) => this.set('epochs', { ...f.epochs, [stage]: v }), '1', `config.${stage}.${EPOCH_KEY[stage]}`), errFor(`config.${stage}.${EPOCH_KEY[stage]}`)),
        h('label', { class: 'field compact' }, h('span', null, 'Learning rate'), numInput(f.learningRate[stage], 'preset', (v) => this.set('learningRate', { ...f.learningRate, [stage]: v }), 'any', `config.${stage}.${LR_KEY[stage]}`), errFor(`config.${stage}.${LR_KEY[stage]}`)),
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
        h('label', { class: 'field' }, h('span', null, 'Synthetic clusters'), numInput(f.synthetic, 'off', (v) => this.set('synthetic', v), '1', 'config.synthetic.count'), errFor('config.synthetic.count')),
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
        h('textarea', { rows: 4, spellcheck: 'false', placeholder: '{"cellpose": {"batch_size": 4}}', value: f.extra, onchange: (e: Event) => this.set('extra', (e.target as HTMLTextAreaElement).value) }),
        errFor('extra'),
      ),
      h('div', { class: 'config-preview' }, h('span', { class: 'muted small' }, 'Request'), h('pre', null, JSON.stringify({ kind: f.kind, config }, null, 1))),
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
      const job = await this.app.api.startTrainingJob(this.project.id, { kind: this.form.kind, config });
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

// ====================================================================== registry

const KEY_METRICS = ['dice', 'iou', 'f1_50', 'f1_70', 'ap50', 'dsb', 'coco_AP', 'erythrocyte_fp_rate'];

class RegistryPanel implements Panel {
  private alive = true;
  private snapshot: number | null = null;
  private snapshots: DatasetSnapshot[] = [];
  private allMetrics = false;
  private el!: HTMLElement;
  private registry: Registry | null = null;
  private expanded = new Set<number>();

  constructor(
    private readonly app: App,
    private readonly project: Project,
  ) {}

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading the registry…'));
    this.app.api
      .snapshots(this.project.id)
      .then((r) => {
        this.snapshots = r.results;
        if (this.registry) this.render();
      })
      .catch(() => undefined);
    await this.load();
  }

  dispose(): void {
    this.alive = false;
  }

  private async load(): Promise<void> {
    try {
      this.registry = await this.app.api.registry(this.project.id, this.snapshot);
      if (this.alive) this.render();
    } catch (e) {
      if (this.alive) this.el.replaceChildren(forbidden(e));
    }
  }

  private render(): void {
    const reg = this.registry!;
    const metrics = this.allMetrics ? reg.metric_names : reg.metric_names.filter((m) => KEY_METRICS.includes(m));
    const best = bestByMetric(reg.versions, metrics);
    const kinds = [...new Set(reg.versions.map((v) => v.kind))];
    const toolbar = h(
      'div',
      { class: 'filters' },
      h(
        'label',
        { class: 'filter' },
        h('span', null, 'Metrics on the test split of'),
        h(
          'select',
          {
            onchange: (e: Event) => {
              const v = (e.target as HTMLSelectElement).value;
              this.snapshot = v ? Number(v) : null;
              void this.load();
            },
          },
          h('option', { value: '', selected: this.snapshot === null }, reg.snapshot ? `the reference snapshot (#${this.snapshots.find((s) => s.id === reg.snapshot)?.number ?? reg.snapshot})` : 'the reference snapshot'),
          this.snapshots.map((s) => h('option', { value: String(s.id), selected: this.snapshot === s.id }, `snapshot #${s.number} · ${s.counts.test?.images ?? 0} test images · ${fmtDate(s.created_at)}`)),
        ),
      ),
      h('span', { class: 'grow' }),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', checked: this.allMetrics, onchange: (e: Event) => ((this.allMetrics = (e.target as HTMLInputElement).checked), this.render()) }), 'All metrics'),
    );
    if (!reg.versions.length) {
      this.el.replaceChildren(toolbar, h('div', { class: 'empty' }, h('h3', null, 'No model version yet'), h('p', { class: 'muted' }, 'Train a model from the Training tab: its versions appear here.')));
      return;
    }
    const activeCards = h(
      'div',
      { class: 'active-models' },
      kinds.map((kind) => {
        const active = reg.versions.find((v) => v.kind === kind && v.status === 'active');
        const others = reg.versions.filter((v) => v.kind === kind && v.status !== 'failed' && v !== active);
        return h(
          'div',
          { class: 'card pad active-card', dataset: { kind } },
          h('div', { class: 'active-top' }, h('span', { class: 'muted small' }, kindInfo(kind).label), h('span', { class: 'grow' }), active && others.length ? h('button', { class: 'btn btn-sm btn-ghost', dataset: { action: 'rollback', kind }, title: 'Reactivate the version this one replaced', onclick: () => void this.rollback(kind) }, icon('undo', 14), 'Roll back') : null),
          h('div', { class: 'active-line' }, active ? h('b', null, `v${active.number}`) : h('span', { class: 'muted' }, 'none active'), active ? h('span', { class: 'pill pill-good' }, 'Active') : null),
          active ? h('div', { class: 'muted small' }, active.promoted_at ? `since ${fmtDate(active.promoted_at)}` : active.name || 'built in') : h('div', { class: 'muted small' }, `${others.length} candidate${others.length === 1 ? '' : 's'}`),
        );
      }),
    );
    const head = h('tr', null, h('th', null, 'Version'), h('th', null, 'Status'), h('th', null, 'Created'), metrics.map((m) => h('th', { class: 'num', title: m }, METRIC_LABELS[m] ?? m)), h('th', null, ''));
    const rows: HTMLElement[] = [];
    for (const v of reg.versions) {
      rows.push(this.row(v, metrics, best));
      if (this.expanded.has(v.id)) rows.push(this.bethesdaRow(v, metrics));
    }
    const table = h('div', { class: 'table-wrap card' }, h('table', { class: 'table registry' }, h('thead', null, head), h('tbody', null, rows)));
    this.el.replaceChildren(toolbar, activeCards, table, h('p', { class: 'muted small' }, 'Best value of each metric in green. Metrics of versions not evaluated on this snapshot are empty: “Evaluate” computes them.'));
  }

  private row(v: RegistryRow, metrics: string[], best: Map<string, Set<number>>): HTMLElement {
    const canPromote = v.status !== 'active' && v.status !== 'failed';
    return h(
      'tr',
      { dataset: { version: String(v.id), status: v.status } },
      h('td', null, h('button', { class: 'link-btn expand', title: 'Per Bethesda category', onclick: () => (this.expanded.has(v.id) ? this.expanded.delete(v.id) : this.expanded.add(v.id), this.render()) }, this.expanded.has(v.id) ? '▾' : '▸'), h('b', null, `${kindInfo(v.kind).label} v${v.number}`), v.name ? h('div', { class: 'muted small' }, v.name) : null, v.job ? h('a', { class: 'small', href: routeHash({ name: 'job', projectId: this.project.id, jobId: v.job }) }, ` job #${v.job}`) : null),
      h('td', null, h('span', { class: `pill pill-${statusTone(v.status)}` }, formatStatus(v.status))),
      h('td', { class: 'muted small' }, fmtDate(v.created_at)),
      metrics.map((m) => {
        const val = v.metrics?.[m];
        const isBest = best.get(m)?.has(v.id) && (v.metrics ? true : false);
        return h('td', { class: `num ${isBest ? 'best' : ''}` }, val == null ? '—' : m.endsWith('_fp') ? String(val) : val.toFixed(3));
      }),
      h(
        'td',
        { class: 'actions' },
        canPromote ? h('button', { class: 'btn btn-sm', dataset: { action: 'promote' }, onclick: () => void this.promote(v) }, 'Promote') : null,
        !v.metrics ? h('button', { class: 'btn btn-sm btn-ghost', onclick: () => void this.evaluate(v) }, 'Evaluate') : null,
      ),
    );
  }

  private bethesdaRow(v: RegistryRow, metrics: string[]): HTMLElement {
    const per = v.per_bethesda ?? {};
    const cats = Object.keys(per).sort();
    return h(
      'tr',
      { class: 'sub-row' },
      h('td', { colspan: String(metrics.length + 4) }, cats.length ? h('table', { class: 'table mini' }, h('thead', null, h('tr', null, h('th', null, 'Bethesda'), metrics.map((m) => h('th', { class: 'num' }, METRIC_LABELS[m] ?? m)))), h('tbody', null, cats.map((c) => h('tr', null, h('td', null, c), metrics.map((m) => h('td', { class: 'num' }, num(per[c]?.[m] ?? null))))))) : h('span', { class: 'muted small' }, 'No per-category metrics for this snapshot.')),
    );
  }

  private async promote(v: RegistryRow): Promise<void> {
    let reason = '';
    const ok = await new Promise<boolean>((resolve) => {
      let result = false;
      const input = h('input', { placeholder: 'Why (kept in the audit log)', autofocus: true, oninput: (e: Event) => (reason = (e.target as HTMLInputElement).value) });
      const d = dialog({
        title: `Promote ${kindInfo(v.kind).label} v${v.number}?`,
        body: [h('p', null, 'It becomes the active model of its kind: new pre-segmentations use it. The current one can be restored with “Roll back”.'), h('label', { class: 'field' }, h('span', null, 'Reason'), input)],
        actions: [h('button', { class: 'btn', onclick: () => d.close() }, 'Cancel'), h('button', { class: 'btn btn-primary', dataset: { action: 'confirm-promote' }, onclick: () => ((result = true), d.close()) }, 'Promote')],
        onClose: () => resolve(result),
      });
    });
    if (!ok) return;
    try {
      await this.app.api.promoteModel(v.id, reason);
      toast(`v${v.number} is now the active ${kindInfo(v.kind).label}`, 'success');
      await this.load();
    } catch (e) {
      toast(`Not promoted: ${errText(e)}`, 'error', 7000);
    }
  }

  private async rollback(kind: string): Promise<void> {
    if (!(await confirmDialog('Roll back?', `The active ${kindInfo(kind).label} goes back to the version it replaced.`, 'Roll back', true))) return;
    try {
      const r = await this.app.api.rollback(this.project.id, kind);
      const active = this.registry?.versions.find((v) => v.id === r.active);
      toast(active ? `Rolled back: v${active.number} is active again` : 'Rolled back: no active version of this kind now', 'success');
      await this.load();
    } catch (e) {
      toast(`Could not roll back: ${errText(e)}`, 'error', 7000);
    }
  }

  private async evaluate(v: RegistryRow): Promise<void> {
    try {
      await this.app.api.evaluateModel(v.id, this.snapshot);
      toast('Evaluation queued — the metrics appear when it is done', 'success');
    } catch (e) {
      toast(`Could not evaluate: ${errText(e)}`, 'error', 7000);
    }
  }
}

// ====================================================================== schedule

const CRON_PRESETS: { label: string; cron: [string, string, string, string, string] }[] = [
  { label: 'Nightly 03:00', cron: ['0', '3', '*', '*', '*'] },
  { label: 'Weekdays 22:00', cron: ['0', '22', '1-5', '*', '*'] },
  { label: 'Sundays 02:00', cron: ['0', '2', '0', '*', '*'] },
  { label: 'Monthly, 1st 04:00', cron: ['0', '4', '*', '1', '*'] },
];

export function describeCron(p: Pick<TrainingPolicy, 'cron_minute' | 'cron_hour' | 'cron_day_of_week' | 'cron_day_of_month' | 'cron_month_of_year'>): string {
  const time = /^\d+$/.test(p.cron_minute) && /^\d+$/.test(p.cron_hour) ? `at ${p.cron_hour.padStart(2, '0')}:${p.cron_minute.padStart(2, '0')}` : `minute ${p.cron_minute}, hour ${p.cron_hour}`;
  const days = ['Sundays', 'Mondays', 'Tuesdays', 'Wednesdays', 'Thursdays', 'Fridays', 'Saturdays'];
  let when = 'every day';
  if (p.cron_day_of_week !== '*') when = /^\d$/.test(p.cron_day_of_week) ? days[Number(p.cron_day_of_week) % 7] : p.cron_day_of_week === '1-5' ? 'on weekdays' : `on days of week ${p.cron_day_of_week}`;
  if (p.cron_day_of_month !== '*') when = `on day ${p.cron_day_of_month} of the month`;
  if (p.cron_month_of_year !== '*') when += ` in month ${p.cron_month_of_year}`;
  return `${when[0].toUpperCase()}${when.slice(1)} ${time} (server time)`;
}

const WRITABLE: (keyof TrainingPolicy)[] = ['schedule_enabled', 'cron_minute', 'cron_hour', 'cron_day_of_week', 'cron_day_of_month', 'cron_month_of_year', 'min_new_images', 'job_kind', 'job_config', 'auto_promote', 'gate_metric', 'gate_margin', 'gate_tolerance', 'gate_guarded'];

class SchedulePanel implements Panel {
  private alive = true;
  private el!: HTMLElement;
  private policy: TrainingPolicy | null = null;
  private draft: Partial<TrainingPolicy> = {};
  private configText = '';
  private errors: Record<string, unknown> = {};
  private saving = false;
  private metricNames: string[] = Object.keys(METRIC_LABELS);

  constructor(
    private readonly app: App,
    private readonly project: Project,
  ) {}

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading the schedule…'));
    try {
      this.policy = await this.app.api.schedule(this.project.id);
      this.reset();
      this.app.api
        .registry(this.project.id)
        .then((r) => {
          if (r.metric_names.length) this.metricNames = r.metric_names;
          if (this.alive) this.render();
        })
        .catch(() => undefined);
      if (this.alive) this.render();
    } catch (e) {
      if (this.alive) el.replaceChildren(forbidden(e));
    }
  }

  dispose(): void {
    this.alive = false;
  }

  private reset(): void {
    const p = this.policy!;
    this.draft = Object.fromEntries(WRITABLE.map((k) => [k, p[k]])) as Partial<TrainingPolicy>;
    this.configText = JSON.stringify(p.job_config ?? {}, null, 1);
    this.errors = {};
  }

  private set<K extends keyof TrainingPolicy>(k: K, v: TrainingPolicy[K]): void {
    this.draft = { ...this.draft, [k]: v };
    this.render();
  }

  private render(): void {
    const p = this.policy!;
    const d = this.draft as TrainingPolicy;
    const err = (k: string) => (this.errors[k] ? h('div', { class: 'field-error' }, String(this.errors[k])) : null);
    const text = (k: 'cron_minute' | 'cron_hour' | 'cron_day_of_week' | 'cron_day_of_month' | 'cron_month_of_year', label: string) =>
      h('label', { class: 'field compact' }, h('span', null, label), h('input', { value: d[k], dataset: { field: k }, onchange: (e: Event) => this.set(k, (e.target as HTMLInputElement).value) }), err(k));
    const numField = (k: 'min_new_images' | 'gate_margin' | 'gate_tolerance', label: string, placeholder: string, step: string) =>
      h(
        'label',
        { class: 'field compact' },
        h('span', null, label),
        h('input', {
          type: 'number',
          step,
          value: d[k] == null ? '' : String(d[k]),
          placeholder,
          dataset: { field: k },
          onchange: (e: Event) => {
            const raw = (e.target as HTMLInputElement).value.trim();
            this.set(k, (raw === '' ? (k === 'min_new_images' ? 1 : null) : Number(raw)) as never);
          },
        }),
        err(k),
      );
    const preset = (d.job_config as { preset?: string } | undefined)?.preset ?? 'default';
    const lastCheck = p.last_check && Object.keys(p.last_check).length ? JSON.stringify(p.last_check) : null;
    const form = h(
      'form',
      { class: 'card pad schedule-form', onsubmit: (e: Event) => (e.preventDefault(), void this.save()) },
      h('label', { class: 'switch-row' }, h('input', { type: 'checkbox', class: 'switch', checked: d.schedule_enabled, dataset: { field: 'schedule_enabled' }, onchange: (e: Event) => this.set('schedule_enabled', (e.target as HTMLInputElement).checked) }), h('span', null, h('b', null, 'Retrain automatically'), h('span', { class: 'muted small' }, 'A job starts on the schedule below when enough newly verified images exist and no job is running.'))),
      h('h3', { class: 'form-section' }, 'When'),
      h('div', { class: 'chips' }, CRON_PRESETS.map((c) => h('button', { type: 'button', class: 'chip-btn', onclick: () => ((this.draft = { ...this.draft, cron_minute: c.cron[0], cron_hour: c.cron[1], cron_day_of_week: c.cron[2], cron_day_of_month: c.cron[3], cron_month_of_year: c.cron[4] }), this.render()) }, c.label))),
      h('div', { class: 'form-row cron' }, text('cron_minute', 'Minute'), text('cron_hour', 'Hour'), text('cron_day_of_week', 'Day of week'), text('cron_day_of_month', 'Day of month'), text('cron_month_of_year', 'Month')),
      err('cron'),
      h('p', { class: 'muted small' }, describeCron(d)),
      h('h3', { class: 'form-section' }, 'What'),
      h(
        'div',
        { class: 'form-row' },
        numField('min_new_images', 'Minimum new verified images', '10', '1'),
        h('label', { class: 'field compact' }, h('span', null, 'Model'), h('select', { dataset: { field: 'job_kind' }, onchange: (e: Event) => this.set('job_kind', (e.target as HTMLSelectElement).value) }, JOB_KINDS.map((k) => h('option', { value: k.kind, selected: d.job_kind === k.kind }, k.label))), err('job_kind')),
        h(
          'label',
          { class: 'field compact' },
          h('span', null, 'Hyper-parameters'),
          h(
            'select',
            {
              onchange: (e: Event) => {
                const v = (e.target as HTMLSelectElement).value;
                const cfg = { ...((d.job_config as Record<string, unknown>) ?? {}) };
                if (v === 'default') delete cfg.preset;
                else cfg.preset = v;
                this.configText = JSON.stringify(cfg, null, 1);
                this.set('job_config', cfg);
              },
            },
            h('option', { value: 'default', selected: preset === 'default' }, 'Full (paper settings)'),
            h('option', { value: 'fast', selected: preset === 'fast' }, 'Fast (smaller models)'),
            h('option', { value: 'tiny', selected: preset === 'tiny' }, 'Tiny (smoke test)'),
          ),
        ),
      ),
      h(
        'details',
        { class: 'advanced' },
        h('summary', null, 'Job configuration (JSON)'),
        h('textarea', {
          rows: 4,
          spellcheck: 'false',
          value: this.configText,
          onchange: (e: Event) => {
            this.configText = (e.target as HTMLTextAreaElement).value;
            try {
              const v = JSON.parse(this.configText || '{}') as unknown;
              if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('must be an object');
              delete this.errors.job_config;
              this.set('job_config', v as Record<string, unknown>);
            } catch (x) {
              this.errors = { ...this.errors, job_config: `Not a JSON object: ${(x as Error).message}` };
              this.render();
            }
          },
        }),
        Object.entries(this.errors)
          .filter(([k]) => k.startsWith('job_config'))
          .map(([k, v]) => h('div', { class: 'field-error' }, `${k}: ${String(v)}`)),
      ),
      h('h3', { class: 'form-section' }, 'Promotion gate'),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', checked: d.auto_promote, onchange: (e: Event) => this.set('auto_promote', (e.target as HTMLInputElement).checked) }), 'Promote a new model automatically when it passes the gate'),
      h(
        'div',
        { class: 'form-row' },
        h('label', { class: 'field compact' }, h('span', null, 'Decisive metric'), h('select', { onchange: (e: Event) => this.set('gate_metric', (e.target as HTMLSelectElement).value) }, h('option', { value: '', selected: !d.gate_metric }, 'Platform default'), this.metricNames.map((m) => h('option', { value: m, selected: d.gate_metric === m }, METRIC_LABELS[m] ?? m))), err('gate_metric')),
        numField('gate_margin', 'Must beat the active model by', 'default', 'any'),
        numField('gate_tolerance', 'Tolerated loss on guarded metrics', 'default', 'any'),
      ),
      h(
        'div',
        { class: 'field' },
        h('span', null, 'Guarded metrics (none checked: the default set)'),
        h(
          'div',
          { class: 'check-grid' },
          this.metricNames.map((m) =>
            h(
              'label',
              { class: 'check small' },
              h('input', {
                type: 'checkbox',
                checked: (d.gate_guarded ?? []).includes(m),
                onchange: (e: Event) => {
                  const on = (e.target as HTMLInputElement).checked;
                  const cur = new Set(d.gate_guarded ?? []);
                  if (on) cur.add(m);
                  else cur.delete(m);
                  this.set('gate_guarded', [...cur]);
                },
              }),
              METRIC_LABELS[m] ?? m,
            ),
          ),
        ),
        err('gate_guarded'),
      ),
      errorList(Object.fromEntries(Object.entries(this.errors).filter(([k]) => !['cron', 'job_kind', 'gate_metric', 'gate_guarded', 'min_new_images', 'gate_margin', 'gate_tolerance'].includes(k) && !k.startsWith('cron_') && !k.startsWith('job_config')))),
      h('div', { class: 'form-actions' }, h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => (this.reset(), this.render()) }, 'Discard changes'), h('span', { class: 'grow' }), h('button', { type: 'submit', class: 'btn btn-primary', dataset: { action: 'save-schedule' }, disabled: this.saving }, this.saving ? 'Saving…' : 'Save schedule')),
    );
    const status = h(
      'div',
      { class: 'card pad schedule-status' },
      h('h3', { class: 'form-section first' }, 'Status'),
      h('div', { class: 'stat-list' },
        h('div', null, h('span', { class: 'muted' }, 'Schedule'), h('span', { class: `pill pill-${p.schedule_enabled ? 'good' : 'neutral'}` }, p.schedule_enabled ? 'On' : 'Off')),
        h('div', null, h('span', { class: 'muted' }, 'Next run'), h('span', null, p.schedule_enabled ? describeCron(p) : '—')),
        h('div', null, h('span', { class: 'muted' }, 'New verified images'), h('span', null, h('b', null, String(p.new_images)), ` of ${p.min_new_images} needed`)),
        h('div', null, h('span', { class: 'muted' }, 'Running job'), p.live_job ? h('a', { href: routeHash({ name: 'job', projectId: this.project.id, jobId: p.live_job }) }, `#${p.live_job}`) : h('span', null, 'none')),
        h('div', null, h('span', { class: 'muted' }, 'Last check'), h('span', null, p.last_check_at ? relTime(p.last_check_at) : 'never')),
      ),
      progressBar(Math.min(1, p.new_images / Math.max(1, p.min_new_images))),
      lastCheck ? h('pre', { class: 'small-pre' }, lastCheck) : null,
      h('p', { class: 'muted small' }, `Updated ${relTime(p.updated_at)}`),
    );
    this.el.replaceChildren(h('div', { class: 'admin-grid schedule' }, form, status));
  }

  private async save(): Promise<void> {
    if (this.errors.job_config) return void toast('Fix the job configuration first', 'warn');
    this.saving = true;
    this.render();
    try {
      const body = Object.fromEntries(WRITABLE.map((k) => [k, (this.draft as Record<string, unknown>)[k]])) as Partial<TrainingPolicy>;
      this.policy = await this.app.api.saveSchedule(this.project.id, body);
      this.reset();
      toast('Schedule saved', 'success');
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) {
        this.errors = Object.keys(e.fieldErrors).length ? e.fieldErrors : { request: e.detail };
        toast(e.detail, 'error');
      } else toast(`Not saved: ${errText(e)}`, 'error');
    } finally {
      this.saving = false;
      if (this.alive) this.render();
    }
  }
}

// ====================================================================== agreement

const STATUS_COLORS: Record<string, string> = {
  new: '#64748b',
  pre_segmented: '#94a3b8',
  annotating: '#5b9cff',
  submitted: '#818cf8',
  in_review: '#a78bfa',
  disputed: '#f59e0b',
  adjudication: '#fb923c',
  verified: '#34d399',
};

interface ImageAgreementRow {
  image: ImageInfo;
  f1: number | null;
  mean_iou: number | null;
  dice: number | null;
  pairs: number;
}

class AgreementPanel implements Panel {
  private alive = true;
  private el!: HTMLElement;
  private perImageEl = h('div', { class: 'per-image' }, h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Measuring agreement per image…'));

  constructor(
    private readonly app: App,
    private readonly project: Project,
  ) {}

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading agreement…'));
    try {
      const [agreement, corrections] = await Promise.all([this.app.api.agreement(this.project.id), this.app.api.corrections(this.project.id).catch(() => null)]);
      if (!this.alive) return;
      this.render(agreement, corrections);
      void this.loadPerImage(agreement);
    } catch (e) {
      if (this.alive) el.replaceChildren(forbidden(e));
    }
  }

  dispose(): void {
    this.alive = false;
  }

  private render(a: Agreement, c: Corrections | null): void {
    const s = a.summary;
    const stat = (label: string, value: string, sub?: string, tone = '') => h('div', { class: `stat card ${tone}` }, h('div', { class: 'stat-value' }, value), h('div', { class: 'stat-label' }, label), sub ? h('div', { class: 'muted small' }, sub) : null);
    const statuses = Object.keys(STATUS_COLORS).filter((k) => s.status_counts[k]);
    const experts = [...a.experts].sort((x, y) => (y.reviews ?? 0) - (x.reviews ?? 0));
    const names = new Map<number, string>();
    for (const e of a.experts) names.set(e.reviewer, e.reviewer__username ?? `#${e.reviewer}`);
    for (const p of a.pairs) {
      names.set(p.reviewer_a, p.reviewer_a__username);
      names.set(p.reviewer_b, p.reviewer_b__username);
    }
    const ids = [...names.keys()].sort((x, y) => (names.get(x) ?? '').localeCompare(names.get(y) ?? ''));
    const pairOf = (x: number, y: number) => a.pairs.find((p) => (p.reviewer_a === x && p.reviewer_b === y) || (p.reviewer_a === y && p.reviewer_b === x));

    const expertRows = experts.map((e) => {
      const decided = (e.accepted ?? 0) + (e.rejected ?? 0) + (e.edited ?? 0);
      return h(
        'div',
        { class: 'expert-row', dataset: { expert: e.reviewer__username ?? String(e.reviewer) } },
        h('div', { class: 'expert-name' }, h('span', { class: 'avatar sm' }, (e.reviewer__username ?? '?').slice(0, 1).toUpperCase()), h('b', null, e.reviewer__username ?? `#${e.reviewer}`), h('span', { class: 'muted small' }, `${e.reviews} review${e.reviews === 1 ? '' : 's'} · ${decided} cells · ${e.added ?? 0} added`)),
        h(
          'div',
          { class: 'expert-bars' },
          h('div', { class: 'rate-line' }, stackedBar([
            { label: 'Accepted', value: e.accepted ?? 0, color: '#34d399' },
            { label: 'Edited', value: e.edited ?? 0, color: '#38bdf8' },
            { label: 'Rejected', value: e.rejected ?? 0, color: '#f87171' },
          ]), h('span', { class: 'muted small rate-text' }, `${pct(e.acceptance_rate)} kept · ${pct(e.edit_rate)} edited · ${pct(e.rejection_rate)} rejected`)),
          hbar('F1 vs verified', e.consensus_f1, { color: '#a78bfa', text: num(e.consensus_f1, 2) }),
          hbar('IoU vs verified', e.consensus_mean_iou, { color: '#5b9cff', text: num(e.consensus_mean_iou, 2) }),
        ),
      );
    });

    const matrix = ids.length >= 2
      ? h(
          'table',
          { class: 'matrix' },
          h('thead', null, h('tr', null, h('th', null, ''), ids.map((id) => h('th', null, names.get(id))))),
          h(
            'tbody',
            null,
            ids.map((row) =>
              h(
                'tr',
                null,
                h('th', null, names.get(row)),
                ids.map((col) => {
                  if (row === col) return h('td', { class: 'diag' }, '');
                  const p = pairOf(row, col);
                  return h('td', { style: { background: heat(p?.f1) }, title: p ? `${p.images} images · F1 ${num(p.f1, 3)} · IoU ${num(p.mean_iou, 3)} · Dice ${num(p.dice, 3)}` : 'no shared image' }, p ? num(p.f1, 2) : '—');
                }),
              ),
            ),
          ),
        )
      : h('p', { class: 'muted small' }, 'Pairwise agreement appears once two experts reviewed the same image.');

    const corrections = c && c.model_versions.length
      ? h(
          'div',
          { class: 'table-wrap card' },
          h(
            'table',
            { class: 'table' },
            h('thead', null, h('tr', null, ['Model', 'Images', 'Kept', 'Edited', 'Added', 'Deleted', 'Kept rate', 'Precision', 'Recall'].map((t, i) => h('th', { class: i ? 'num' : '' }, t)))),
            h(
              'tbody',
              null,
              c.model_versions.map((m) =>
                h(
                  'tr',
                  null,
                  h('td', null, m.model_version__kind ? `${kindInfo(m.model_version__kind).label} v${m.model_version__number}` : 'Drawn by hand'),
                  [m.images, m.kept, m.edited, m.added, m.deleted].map((v) => h('td', { class: 'num' }, String(v ?? 0))),
                  [m.kept_rate, m.proposal_precision, m.proposal_recall].map((v) => h('td', { class: 'num' }, pct(v, 1))),
                ),
              ),
            ),
          ),
        )
      : h('p', { class: 'muted small' }, 'No verified cell traces back to a model proposal yet.');

    this.el.replaceChildren(
      h(
        'div',
        { class: 'stats' },
        stat('Images', String(s.images), `${s.verified_images} verified`),
        stat('Review rounds', String(s.rounds_done), `${s.rounds_with_disputes} with disputes`),
        stat('Disputes', String(s.disputes), `${s.disputes_resolved} resolved`, s.disputes > s.disputes_resolved ? 'warn' : ''),
        stat('Pair F1', num(s.f1, 2), `${s.pairs} expert pairs × images`, 'accent'),
        stat('Mean IoU', num(s.mean_iou, 2), 'matched cells'),
        stat('Dice', num(s.dice, 2), 'pixel overlap'),
      ),
      h(
        'div',
        { class: 'card pad' },
        h('h3', { class: 'form-section first' }, 'Images by status'),
        stackedBar(statuses.map((k) => ({ label: formatStatus(k), value: s.status_counts[k], color: STATUS_COLORS[k] })), { height: 16 }),
        h('div', { class: 'chart-legend' }, statuses.map((k) => h('span', { class: 'legend-item' }, h('i', { class: 'legend-swatch', style: { background: STATUS_COLORS[k] } }), `${formatStatus(k)} `, h('b', null, String(s.status_counts[k]))))),
      ),
      h(
        'div',
        { class: 'admin-grid agreement' },
        h('section', null, h('h2', { class: 'section-title' }, 'Per expert'), h('div', { class: 'card pad' }, expertRows.length ? expertRows : h('p', { class: 'muted small' }, 'No submitted review yet.'))),
        h('section', null, h('h2', { class: 'section-title' }, 'Between experts (F1 at IoU 0.5)'), h('div', { class: 'card pad' }, matrix)),
      ),
      h('h2', { class: 'section-title' }, 'Per image — lowest agreement first'),
      h('div', { class: 'card pad' }, this.perImageEl),
      h('h2', { class: 'section-title' }, 'How the model’s proposals were corrected'),
      corrections,
    );
  }

  /** Per-image agreement: the server's rows when it has them, else one request per reviewed image (at most 40). */
  private async loadPerImage(a: Agreement): Promise<void> {
    const api = this.app.api;
    let rows: ImageAgreementRow[] = [];
    try {
      const images: ImageInfo[] = [];
      for (const status of ['verified', 'disputed', 'adjudication']) {
        const res = await api.listImages(this.project.id, { status, page_size: 40 });
        images.push(...res.results);
      }
      if (a.per_image) {
        const byId = new Map(images.map((i) => [i.id, i]));
        rows = a.per_image.filter((r) => byId.has(r.image)).map((r) => ({ image: byId.get(r.image)!, f1: r.f1, mean_iou: r.mean_iou, dice: r.dice, pairs: 1 }));
      } else {
        const todo = images.slice(0, 40);
        const workers = Array.from({ length: 4 }, async () => {
          while (todo.length && this.alive) {
            const img = todo.shift()!;
            const r = await api.agreement(this.project.id, img.id).catch(() => null);
            if (r && r.summary.pairs) rows.push({ image: img, f1: r.summary.f1, mean_iou: r.summary.mean_iou, dice: r.summary.dice, pairs: r.summary.pairs });
          }
        });
        await Promise.all(workers);
      }
    } catch (e) {
      if (this.alive) this.perImageEl.replaceChildren(h('p', { class: 'muted small' }, `Could not load: ${errText(e)}`));
      return;
    }
    if (!this.alive) return;
    rows.sort((x, y) => (x.f1 ?? 2) - (y.f1 ?? 2));
    this.perImageEl.replaceChildren(
      ...(rows.length
        ? rows.map((r) =>
            hbar(r.image.file_name, r.f1, {
              color: heat(r.f1),
              text: `F1 ${num(r.f1, 2)} · IoU ${num(r.mean_iou, 2)}`,
              title: `${r.image.file_name} — ${formatStatus(r.image.status)}`,
              href: routeHash(['disputed', 'adjudication'].includes(r.image.status) ? { name: 'adjudicate', projectId: this.project.id, imageId: r.image.id } : { name: 'editor', projectId: this.project.id, imageId: r.image.id }),
            }),
          )
        : [h('p', { class: 'muted small' }, 'No image has been reviewed by two experts yet.')]),
    );
  }
}
