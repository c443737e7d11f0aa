/**
 * Administration, expert agreement tab: totals, images by status, per expert
 * (accept / edit / reject rates, agreement with the verified result), the
 * pairwise F1 matrix, per image (lowest first), how model proposals were corrected.
 */
import { routeHash } from '../../core/router';
import { kindInfo } from '../../core/training';
import type { Agreement, Corrections, ImageInfo } from '../../core/types';
import { heat, hbar, num, pct, stackedBar } from '../charts';
import { formatStatus, h } from '../dom';
import { errText } from '../viewer';
import { AdminPanel, forbidden, loadingBlock } from './common';

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

export class AgreementPanel extends AdminPanel {
  private el!: HTMLElement;
  private perImageEl = h('div', { class: 'per-image' }, loadingBlock('Measuring agreement per image…'));

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(loadingBlock('Loading agreement…'));
    try {
      const [agreement, corrections] = await Promise.all([this.app.api.agreement(this.project.id), this.app.api.corrections(this.project.id).catch(() => null)]);
      if (!this.alive) return;
      this.render(agreement, corrections);
      void this.loadPerImage(agreement);
    } catch (e) {
      if (this.alive) el.replaceChildren(forbidden(e));
    }
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
        stat('Review rounds', String(s.rounds), `${s.rounds_done} past consensus · ${s.rounds_with_disputes} with disputes`),
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
