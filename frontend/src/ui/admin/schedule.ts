/**
 * Administration, retraining schedule tab: when (cron, with presets), what
 * (minimum new images, model, configuration) and the promotion gate; the
 * status of the schedule beside the form.
 */
import { ApiError } from '../../core/api';
import { routeHash } from '../../core/router';
import { metricHelp, metricHelpId } from '../../core/metrics';
import { JOB_KINDS, METRIC_LABELS } from '../../core/training';
import type { TrainingPolicy } from '../../core/types';
import { h } from '../dom';
import { toast } from '../overlay';
import { errText, relTime } from '../viewer';
import { AdminPanel, errorList, forbidden, loadingBlock, metricLegend, progressBar } from './common';

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

export class SchedulePanel extends AdminPanel {
  private el!: HTMLElement;
  private policy: TrainingPolicy | null = null;
  private draft: Partial<TrainingPolicy> = {};
  private configText = '';
  private errors: Record<string, unknown> = {};
  private saving = false;
  private metricNames: string[] = Object.keys(METRIC_LABELS);

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(loadingBlock('Loading the schedule…'));
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

  /**
   * A typed value: the draft and what shows it change in place, on `input`. A re-render on
   * `change` (fired by the blur of the mousedown on "Save schedule") would replace the button
   * under the pointer and swallow that first click.
   */
  private typed<K extends keyof TrainingPolicy>(k: K, v: TrainingPolicy[K]): void {
    this.draft = { ...this.draft, [k]: v };
    const cron = this.el.querySelector<HTMLElement>('[data-cron-text]');
    if (cron) cron.textContent = describeCron(this.draft as TrainingPolicy);
  }

  private configTyped(text: string): void {
    this.configText = text;
    try {
      const v = JSON.parse(text || '{}') as unknown;
      if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('must be an object');
      delete this.errors.job_config;
      this.draft = { ...this.draft, job_config: v as Record<string, unknown> };
    } catch (x) {
      this.errors = { ...this.errors, job_config: `Not a JSON object: ${(x as Error).message}` };
    }
    const box = this.el.querySelector<HTMLElement>('[data-config-errors]');
    if (box) box.replaceChildren(...this.configErrors());
  }

  private configErrors(): HTMLElement[] {
    return Object.entries(this.errors)
      .filter(([k]) => k.startsWith('job_config'))
      .map(([k, v]) => h('div', { class: 'field-error' }, `${k}: ${String(v)}`));
  }

  private render(): void {
    const p = this.policy!;
    const d = this.draft as TrainingPolicy;
    const err = (k: string) => (this.errors[k] ? h('div', { class: 'field-error' }, String(this.errors[k])) : null);
    const text = (k: 'cron_minute' | 'cron_hour' | 'cron_day_of_week' | 'cron_day_of_month' | 'cron_month_of_year', label: string) =>
      h('label', { class: 'field compact' }, h('span', null, label), h('input', { value: d[k], dataset: { field: k }, oninput: (e: Event) => this.typed(k, (e.target as HTMLInputElement).value) }), err(k));
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
          oninput: (e: Event) => {
            const raw = (e.target as HTMLInputElement).value.trim();
            this.typed(k, (raw === '' ? (k === 'min_new_images' ? 1 : null) : Number(raw)) as never);
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
      h('p', { class: 'muted small', dataset: { cronText: '' } }, describeCron(d)),
      h('h3', { class: 'form-section' }, 'What'),
      h(
        'div',
        { class: 'form-row' },
        numField('min_new_images', 'Minimum new verified images', '10', '1'),
        h('label', { class: 'field compact' }, h('span', null, 'Model'), h('select', { dataset: { field: 'job_kind' }, onchange: (e: Event) => this.set('job_kind', (e.target as HTMLSelectElement).value as TrainingPolicy['job_kind']) }, JOB_KINDS.map((k) => h('option', { value: k.kind, selected: d.job_kind === k.kind }, k.label))), err('job_kind')),
        h(
          'label',
          { class: 'field compact' },
          h('span', null, 'Hyper-parameters'),
          h(
            'select',
            {
              onchange: (e: Event) => {
                const v = (e.target as HTMLSelectElement).value;
                const cfg = { ...((this.draft.job_config as Record<string, unknown>) ?? {}) }; // typed JSON may be newer than this render
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
          oninput: (e: Event) => this.configTyped((e.target as HTMLTextAreaElement).value),
        }),
        h('div', { dataset: { configErrors: '' } }, this.configErrors()),
      ),
      h('h3', { class: 'form-section' }, 'Promotion gate'),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', checked: d.auto_promote, onchange: (e: Event) => this.set('auto_promote', (e.target as HTMLInputElement).checked) }), 'Promote a new model automatically when it passes the gate'),
      h(
        'div',
        { class: 'form-row' },
        h('label', { class: 'field compact' }, h('span', null, 'Decisive metric'), h('select', { onchange: (e: Event) => this.set('gate_metric', (e.target as HTMLSelectElement).value) }, h('option', { value: '', selected: !d.gate_metric }, 'Platform default'), this.metricNames.map((m) => h('option', { value: m, selected: d.gate_metric === m, title: metricHelp(m) }, METRIC_LABELS[m] ?? m))), err('gate_metric')),
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
              { class: 'check small', title: metricHelp(m) },
              h('input', {
                type: 'checkbox',
                'aria-describedby': metricHelpId(m, 'schedule'),
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
      // all of them: folded, the form stays short
      metricLegend(this.metricNames, 'schedule', false),
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
