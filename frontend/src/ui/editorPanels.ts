/**
 * The editor's side panel: classes (with counts), the selection, the model
 * proposals and the layers (visibility and opacity, also toggled by P / H).
 * Renders from the stores; every action goes back to the editor through
 * {@link EditorPanelHost}.
 */
import type { ClassPalette } from '../core/classes';
import { area } from '../core/geometry';
import type { ProposalStore } from '../core/proposals';
import type { Selection } from '../core/selection';
import { presegmentNote } from '../core/training';
import type { AnnotationStore } from '../core/store';
import type { ImageInfo } from '../core/types';
import type { ToolId } from '../tools';
import type { EditorMap, LayerName } from '../view/editorMap';
import { h, icon, kbd } from './dom';
import { section } from './viewer';

export interface EditorPanelHost {
  readonly store: AnnotationStore;
  readonly proposals: ProposalStore;
  readonly selection: Selection;
  map(): EditorMap | null;
  palette(): ClassPalette;
  image(): ImageInfo | null;
  /** The image is locked (submitted…): no editing buttons. */
  readOnly(): boolean;
  activeClass(): number | null;
  setActiveClass(id: number | null): void;
  setTool(id: ToolId): void;
  acceptSelected(): Promise<void>;
  rejectSelected(): Promise<void>;
  acceptInView(): Promise<void>;
  rejectInView(): Promise<void>;
}

interface LayerState {
  visible: boolean;
  opacity: number;
}

export class EditorPanels {
  readonly countEl = h('span', { class: 'cell-count' }, '');
  private readonly classesEl = h('div', { class: 'class-list' });
  private readonly layersEl = h('div', { class: 'layer-list' });
  private readonly proposalsEl = h('div', { class: 'proposal-box' });
  private readonly selectionEl = h('div', { class: 'selection-box' });
  private layerState: Record<LayerName, LayerState> = {
    image: { visible: true, opacity: 1 },
    proposals: { visible: true, opacity: 1 },
    cells: { visible: true, opacity: 1 },
  };

  constructor(private readonly host: EditorPanelHost) {}

  sections(): HTMLElement[] {
    return [
      section(['Classes', h('span', { class: 'panel-sub' }, this.countEl)], this.classesEl),
      section('Selection', this.selectionEl),
      section('Model proposals', this.proposalsEl),
      section('Layers', this.layersEl),
    ];
  }

  renderAll(): void {
    this.renderCounts();
    this.renderSelection();
    this.renderProposals();
    this.renderLayers();
  }

  // ================================================================ layers

  toggleLayer(name: LayerName): void {
    this.setLayer(name, { visible: !this.layerState[name].visible });
  }

  /** Shows a layer (a proposal chosen with N must be visible). */
  showLayer(name: LayerName): void {
    if (!this.layerState[name].visible) this.setLayer(name, { visible: true });
  }

  private setLayer(name: LayerName, patch: Partial<LayerState>): void {
    const s = (this.layerState[name] = { ...this.layerState[name], ...patch });
    this.host.map()?.setLayerVisible(name, s.visible);
    this.host.map()?.setLayerOpacity(name, s.opacity);
    this.renderLayers();
  }

  /** The layer rows' counts, in place: cells and proposals arrive after the panel's first
   * render (a slide's by viewport), and rebuilding the rows would cut an opacity drag short. */
  private renderLayerCounts(): void {
    const counts: Partial<Record<LayerName, number>> = { cells: this.host.store.size, proposals: this.host.proposals.size };
    for (const el of this.layersEl.querySelectorAll<HTMLElement>('[data-count]')) {
      const n = counts[el.dataset.count as LayerName];
      if (n !== undefined) el.textContent = String(n);
    }
  }

  renderLayers(): void {
    const row = (name: LayerName, label: string, legend: HTMLElement, count: string | null) => {
      const s = this.layerState[name];
      return h(
        'div',
        { class: `layer-row ${s.visible ? '' : 'off'}` },
        h('button', { class: 'icon-btn', title: s.visible ? `Hide ${label.toLowerCase()}` : `Show ${label.toLowerCase()}`, 'aria-label': `Show ${label.toLowerCase()}`, 'aria-pressed': String(s.visible), onclick: () => this.setLayer(name, { visible: !s.visible }) }, icon(s.visible ? 'eye' : 'eyeOff', 16)),
        legend,
        h('span', { class: 'layer-name' }, label),
        count !== null ? h('span', { class: 'layer-count', dataset: { count: name } }, count) : null,
        h('input', {
          type: 'range',
          min: '0',
          max: '100',
          value: String(Math.round(s.opacity * 100)),
          title: 'Opacity',
          'aria-label': `${label} opacity`,
          oninput: (e: Event) => {
            const o = Number((e.target as HTMLInputElement).value) / 100;
            this.layerState[name].opacity = o;
            this.host.map()?.setLayerOpacity(name, o);
          },
        }),
      );
    };
    this.layersEl.replaceChildren(
      row('cells', 'My cells', h('span', { class: 'legend-solid' }), String(this.host.store.size)),
      row('proposals', 'Proposals', h('span', { class: 'legend-dash' }), String(this.host.proposals.size)),
      row('image', 'Image', h('span', { class: 'legend-image' }), null),
    );
  }

  // ================================================================ classes

  renderCounts(): void {
    this.renderLayerCounts();
    const { store, proposals } = this.host;
    const palette = this.host.palette();
    const active = this.host.activeClass();
    const counts = new Map<number | null, number>();
    for (const c of store.all()) counts.set(c.classId, (counts.get(c.classId) ?? 0) + 1);
    const total = store.size;
    // a slide's store holds only the cells near the view (viewportCells.ts): say so
    this.countEl.textContent = `${total} cell${total === 1 ? '' : 's'}${this.host.image()?.tiles ? ' near the view' : ''}`;
    const rows = palette.ordered.map((c, i) =>
      h(
        'button',
        {
          class: `class-row ${active === c.id ? 'active' : ''}`,
          title: `${c.name} — press ${i + 1} to draw with it / apply it to the selection`,
          onclick: () => this.host.setActiveClass(c.id),
        },
        h('span', { class: 'class-key' }, i < 9 ? String(i + 1) : ''),
        h('i', { class: 'swatch', style: { background: c.color } }),
        h('span', { class: 'class-name' }, c.name),
        h('span', { class: 'class-count' }, String(counts.get(c.id) ?? 0)),
      ),
    );
    const unclassified = counts.get(null) ?? 0;
    rows.push(
      h(
        'button',
        { class: `class-row ${active === null ? 'active' : ''}`, title: 'Unclassified — press 0', onclick: () => this.host.setActiveClass(null) },
        h('span', { class: 'class-key' }, '0'),
        h('i', { class: 'swatch swatch-none' }),
        h('span', { class: 'class-name' }, 'Unclassified'),
        h('span', { class: 'class-count' }, String(unclassified)),
      ),
    );
    this.classesEl.replaceChildren(...rows);
    const lc = this.layersEl.querySelector('[data-count="cells"]');
    if (lc) lc.textContent = String(total);
    const lp = this.layersEl.querySelector('[data-count="proposals"]');
    if (lp) lp.textContent = String(proposals.size);
  }

  // ================================================================ selection

  renderSelection(): void {
    const { store, selection } = this.host;
    const palette = this.host.palette();
    const cells = selection.cells().filter((k) => store.has(k));
    const props = selection.proposals();
    const ro = this.host.readOnly();
    const el = this.selectionEl;
    if (!cells.length && !props.length) {
      el.replaceChildren(h('p', { class: 'muted small' }, 'Click a cell or a proposal. Shift-click to select several.'));
      return;
    }
    const parts: (HTMLElement | null)[] = [];
    if (cells.length) {
      const first = store.get(cells[0])!;
      const meta = store.getMeta(cells[0]);
      const classSel = h(
        'select',
        {
          disabled: ro,
          onchange: (e: Event) => {
            const v = (e.target as HTMLSelectElement).value;
            this.host.setActiveClass(v === '' ? null : Number(v));
          },
        },
        h('option', { value: '', selected: first.classId == null }, 'Unclassified'),
        palette.ordered.map((c) => h('option', { value: String(c.id), selected: cells.every((k) => store.get(k)?.classId === c.id) }, c.name)),
      );
      parts.push(
        h(
          'div',
          { class: 'sel-head' },
          h('b', null, cells.length === 1 ? '1 cell' : `${cells.length} cells`),
          cells.length === 1 ? h('span', { class: 'muted small' }, `${Math.round(area(first.polygon))} px² · ${first.polygon.length} vertices${meta?.source ? ` · ${meta.source}` : ''}${meta?.score != null ? ` · score ${meta.score.toFixed(2)}` : ''}`) : null,
        ),
        h('label', { class: 'field inline' }, h('span', null, 'Class'), classSel),
        ro ? null : h(
          'div',
          { class: 'btn-row' },
          cells.length === 2 ? h('button', { class: 'btn btn-sm', onclick: () => this.host.setTool('merge') }, icon('merge', 15), 'Merge') : null,
          h('button', { class: 'btn btn-sm btn-danger-outline', onclick: () => store.removeCells(cells) }, icon('delete', 15), 'Delete'),
        ),
      );
    }
    if (props.length) {
      parts.push(
        h('div', { class: 'sel-head' }, h('b', null, props.length === 1 ? '1 proposal' : `${props.length} proposals`), props.length === 1 ? this.proposalInfo(props[0]) : null),
        ro ? null : h(
          'div',
          { class: 'btn-row' },
          h('button', { class: 'btn btn-sm btn-accept', onclick: () => void this.host.acceptSelected() }, icon('check', 15), 'Accept', kbd('A')),
          h('button', { class: 'btn btn-sm btn-reject', onclick: () => void this.host.rejectSelected() }, icon('x', 15), 'Reject', kbd('R')),
        ),
      );
    }
    el.replaceChildren(...parts.filter((x): x is HTMLElement => !!x));
  }

  private proposalInfo(id: number): HTMLElement | null {
    const p = this.host.proposals.get(id);
    if (!p) return null;
    const palette = this.host.palette();
    const cls = p.classId != null ? palette.name(p.classId) : (palette.byLabel(p.label)?.name ?? p.label ?? 'no label');
    return h('span', { class: 'muted small' }, `${cls}${p.score != null ? ` · score ${p.score.toFixed(2)}` : ''}`);
  }

  // ================================================================ proposals

  renderProposals(): void {
    this.renderLayerCounts();
    const n = this.host.proposals.size;
    const image = this.host.image();
    const pre = image?.presegment_status;
    const el = this.proposalsEl;
    const note = image && pre ? presegmentNote(image) : null;
    const status = note ? h('div', { class: `small presegment-note ${note.tone}`, dataset: { presegment: pre ?? '' } }, icon(note.tone === 'muted' ? 'sparkles' : 'alert', 14), `Pre-segmentation: ${note.text}`) : null;
    if (!n) {
      el.replaceChildren(h('p', { class: 'muted small' }, 'No open proposals for this image.'), ...(status ? [status] : []));
      return;
    }
    el.replaceChildren(
      h('div', { class: 'prop-count' }, h('span', { class: 'legend-dash' }), h('b', null, String(n)), ` open proposal${n === 1 ? '' : 's'}`),
      ...(this.host.readOnly() ? [] : [h(
        'div',
        { class: 'btn-grid' },
        h('button', { class: 'btn btn-sm btn-accept', title: 'Accept the selected proposals (A)', onclick: () => void this.host.acceptSelected() }, 'Accept selected'),
        h('button', { class: 'btn btn-sm btn-reject', title: 'Reject the selected proposals (R)', onclick: () => void this.host.rejectSelected() }, 'Reject selected'),
        h('button', { class: 'btn btn-sm btn-accept', title: 'Accept every proposal in view (Shift+A)', onclick: () => void this.host.acceptInView() }, 'Accept all in view'),
        h('button', { class: 'btn btn-sm btn-reject', title: 'Reject every proposal in view (Shift+R)', onclick: () => void this.host.rejectInView() }, 'Reject all in view'),
      )]),
      h('p', { class: 'muted small', dataset: { hint: 'next-proposal' } }, kbd('N'), ' / ', kbd('Shift+N'), ' next / previous proposal'),
      ...(status ? [status] : []),
    );
  }
}
