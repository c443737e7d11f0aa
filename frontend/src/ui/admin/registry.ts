/**
 * Administration, model registry tab: the active model per kind, every
 * version's test metrics side by side (best in green, per Bethesda category on
 * expand), promote (with a reason), roll back, evaluate; snapshot selector.
 */
import { routeHash } from '../../core/router';
import { metricHelp, metricHelpId, REGISTRY_KEY_METRICS } from '../../core/metrics';
import { bestByMetric, gateHeadline, gateRows, kindInfo, METRIC_LABELS } from '../../core/training';
import type { DatasetSnapshot, GateVerdict, ModelKind, Registry, RegistryRow } from '../../core/types';
import { num } from '../charts';
import { formatStatus, h, icon, statusTone } from '../dom';
import { dialog, toast } from '../overlay';
import { errText } from '../viewer';
import { AdminPanel, fmtDate, forbidden, loadingBlock, metricLegend } from './common';

const KEY_METRICS = REGISTRY_KEY_METRICS;

export class RegistryPanel extends AdminPanel {
  private snapshot: number | null = null;
  private snapshots: DatasetSnapshot[] = [];
  private allMetrics = false;
  private el!: HTMLElement;
  private registry: Registry | null = null;
  private expanded = new Set<number>();

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(loadingBlock('Loading the registry…'));
    this.app.api
      .snapshots(this.project.id)
      .then((r) => {
        this.snapshots = r.results;
        if (this.registry) this.render();
      })
      .catch(() => undefined);
    await this.load();
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
      this.el.replaceChildren(toolbar, h('div', { class: 'empty', dataset: { testid: 'registry-empty' } }, h('h3', null, 'No model version yet'), h('p', { class: 'muted' }, 'Versions appear here when a training job finishes (or a model is uploaded through the API). Training needs verified images with a test split.'), h('a', { class: 'btn btn-primary', href: routeHash({ name: 'admin', projectId: this.project.id, tab: 'training' }) }, 'Start a training job')));
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
          h('div', { class: 'active-top' }, h('span', { class: 'muted small' }, kindInfo(kind).label), h('span', { class: 'grow' }), active && kind !== 'watershed' ? h('button', { class: 'btn btn-sm btn-ghost', dataset: { action: 'rollback', kind }, title: this.rollbackTitle(active), onclick: () => void this.rollback(kind) }, icon('undo', 14), 'Roll back') : null),
          h('div', { class: 'active-line' }, active ? h('b', null, `v${active.number}`) : h('span', { class: 'muted' }, 'none active'), active ? h('span', { class: 'pill pill-good' }, 'Active') : null),
          active ? h('div', { class: 'muted small' }, active.promoted_at ? `since ${fmtDate(active.promoted_at)}` : active.name || 'built in') : h('div', { class: 'muted small' }, `${others.length} candidate${others.length === 1 ? '' : 's'}`),
        );
      }),
    );
    const head = h('tr', null, h('th', null, 'Version'), h('th', null, 'Status'), h('th', null, 'Created'), metrics.map((m) => h('th', { class: 'num', title: metricHelp(m), 'aria-describedby': metricHelpId(m, 'registry'), dataset: { metric: m } }, METRIC_LABELS[m] ?? m)), h('th', null, ''));
    const rows: HTMLElement[] = [];
    for (const v of reg.versions) {
      rows.push(this.row(v, metrics, best));
      if (this.expanded.has(v.id)) rows.push(this.bethesdaRow(v, metrics));
    }
    const table = h('div', { class: 'table-wrap card' }, h('table', { class: 'table registry' }, h('thead', null, head), h('tbody', null, rows)));
    this.el.replaceChildren(toolbar, activeCards, table, h('p', { class: 'muted small' }, 'Scored on the polygons as doctors receive them; under each value its 95% bootstrap interval over the test images (hover for the raw-mask figure). Best value of each metric in green. Metrics of versions not evaluated on this snapshot are empty: “Evaluate” computes them.'), metricLegend(metrics, 'registry'));
  }

  private row(v: RegistryRow, metrics: string[], best: Map<string, Set<number>>): HTMLElement {
    const canPromote = v.status !== 'active' && v.status !== 'failed';
    return h(
      'tr',
      { dataset: { version: String(v.id), status: v.status } },
      h('td', null, h('button', { class: 'link-btn expand', title: 'Per Bethesda category', onclick: () => (this.expanded.has(v.id) ? this.expanded.delete(v.id) : this.expanded.add(v.id), this.render()) }, this.expanded.has(v.id) ? '▾' : '▸'), h('b', null, `${kindInfo(v.kind).label} v${v.number}`), v.name ? h('div', { class: 'muted small' }, v.name) : null, v.job ? h('a', { class: 'small', href: routeHash({ name: 'job', projectId: this.project.id, jobId: v.job }) }, ` job #${v.job}`) : null),
      h('td', null, h('span', { class: `pill pill-${statusTone(v.status)}` }, formatStatus(v.status)), v.presegmenter ? h('span', { class: 'pill pill-active presegmenter', title: 'New images are pre-segmented by this version' }, 'Pre-segments') : null),
      h('td', { class: 'muted small' }, fmtDate(v.created_at)),
      metrics.map((m) => {
        const val = v.metrics?.[m];
        const isBest = best.get(m)?.has(v.id) && (v.metrics ? true : false);
        const fmt = (x: number): string => (m.endsWith('_fp') ? String(Math.round(x * 10) / 10) : x.toFixed(3));
        const ci = v.intervals?.[m];
        const raw = v.raw_metrics?.[m];
        const title = [ci && ci[0] != null && ci[1] != null ? `95% interval over the test images: ${fmt(ci[0])} – ${fmt(ci[1])}` : '', raw != null ? `raw masks (before they became polygons): ${fmt(raw)}` : ''].filter(Boolean).join('\n');
        return h(
          'td',
          { class: `num ${isBest ? 'best' : ''}`, title, dataset: { metric: m } },
          val == null ? '—' : fmt(val),
          val != null && ci && ci[0] != null && ci[1] != null ? h('div', { class: 'ci muted small' }, `${fmt(ci[0])}–${fmt(ci[1])}`) : null,
        );
      }),
      h(
        'td',
        { class: 'actions' },
        canPromote ? h('button', { class: 'btn btn-sm', dataset: { action: 'promote' }, onclick: () => void this.promote(v) }, 'Promote') : null,
        // one click: a promotion that went wrong is undone where it shows (promote again to redo)
        v.status === 'active' && v.kind !== 'watershed' ? h('button', { class: 'btn btn-sm btn-ghost', dataset: { action: 'rollback-version' }, title: this.rollbackTitle(v), onclick: () => void this.rollback(v.kind) }, icon('undo', 14), this.replacedLabel(v) ? `Roll back to ${this.replacedLabel(v)}` : 'Roll back') : null,
        !v.metrics ? h('button', { class: 'btn btn-sm btn-ghost', onclick: () => void this.evaluate(v) }, 'Evaluate') : null,
      ),
    );
  }

  /** The version ``v`` replaced in its kind (rolling back reactivates it). */
  private replacedLabel(v: RegistryRow): string | null {
    const before = v.replaced != null ? this.registry?.versions.find((x) => x.id === v.replaced) : undefined;
    return before && before.status !== 'failed' ? `v${before.number}` : null;
  }

  private rollbackTitle(v: RegistryRow): string {
    const before = this.replacedLabel(v);
    return before ? `Retire v${v.number} and reactivate ${before}, the version it replaced` : `Retire v${v.number}: the next active model (else the watershed baseline) pre-segments again`;
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
    const label = `${kindInfo(v.kind).label} v${v.number}`;
    const verdictEl = h('div', { class: 'gate-verdict', dataset: { state: 'loading' } }, h('p', { class: 'muted small' }, 'Asking the promotion gate…'));
    const confirm = h('button', { class: 'btn btn-primary', dataset: { action: 'confirm-promote' }, disabled: true }, 'Promote');
    const ok = await new Promise<boolean>((resolve) => {
      let result = false;
      const input = h('input', { placeholder: 'Why (kept in the audit log)', autofocus: true, oninput: (e: Event) => (reason = (e.target as HTMLInputElement).value) });
      confirm.onclick = () => ((result = true), d.close());
      const d = dialog({
        title: `Promote ${label}?`,
        body: [verdictEl, h('p', null, 'It becomes the active model of its kind and the project’s pre-segmenter: new pre-segmentations use it. The current one can be restored with “Roll back”.'), h('label', { class: 'field' }, h('span', null, 'Reason'), input)],
        actions: [h('button', { class: 'btn', onclick: () => d.close() }, 'Cancel'), confirm],
        onClose: () => resolve(result),
      });
      this.app.api
        .modelGate(v.id)
        .then((verdict) => {
          verdictEl.replaceWith(this.verdictBlock(verdict));
          if (!verdict.promote) {
            confirm.className = 'btn btn-danger';
            confirm.textContent = 'Promote anyway';
          }
        })
        .catch((e) => verdictEl.replaceChildren(h('p', { class: 'small gate-error' }, `The gate’s verdict is unavailable: ${errText(e)}`)))
        .finally(() => (confirm.disabled = false));
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

  /** The gate's verdict for a manual promotion: promote or not, why, and the metrics side by side. */
  private verdictBlock(verdict: GateVerdict): HTMLElement {
    const head = gateHeadline(verdict);
    const fmt = (x: number | null) => (x == null ? '—' : x.toFixed(3));
    const rows = gateRows(verdict).filter((r) => r.primary || r.candidate != null || r.baseline != null);
    const against = verdict.baseline_label ?? 'no other model';
    return h(
      'div',
      { class: `gate-verdict card pad tone-${head.tone}`, dataset: { promote: String(verdict.promote), state: 'ready' } },
      h('div', { class: 'gate-head' }, h('span', { class: `pill pill-${head.tone}` }, verdict.promote ? 'Gate: promote' : 'Gate: do not promote'), h('b', null, head.text)),
      h('p', { class: 'small gate-reason' }, `Against the current pre-segmenter (${against}): ${verdict.reason}.`),
      rows.some((r) => r.candidate != null || r.baseline != null)
        ? h(
            'table',
            { class: 'table mini gate-metrics' },
            h('thead', null, h('tr', null, h('th', null, 'Metric'), h('th', { class: 'num' }, 'This version'), h('th', { class: 'num' }, against))),
            h(
              'tbody',
              null,
              rows.map((r) =>
                h(
                  'tr',
                  { dataset: { metric: r.metric }, class: r.regressed ? 'regressed' : r.worse ? 'worse' : '' },
                  h('td', { title: metricHelp(r.metric) }, METRIC_LABELS[r.metric] ?? r.metric, r.primary ? h('span', { class: 'muted small', title: `must improve by at least ${verdict.margin}` }, ' · decides') : r.regressed ? h('span', { class: 'small' }, ' regresses') : null),
                  h('td', { class: 'num' }, fmt(r.candidate)),
                  h('td', { class: 'num' }, fmt(r.baseline)),
                ),
              ),
            ),
          )
        : null,
    );
  }

  private async rollback(kind: ModelKind): Promise<void> {
    try {
      const r = await this.app.api.rollback(this.project.id, kind);
      const active = this.registry?.versions.find((v) => v.id === r.active);
      toast(active ? `Rolled back: v${active.number} is active again` : `Rolled back: no active ${kindInfo(kind).label} now; the next model pre-segments`, 'success');
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
