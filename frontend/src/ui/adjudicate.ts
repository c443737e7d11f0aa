/**
 * Adjudication screen: every expert's version of each disputed cell side by
 * side (one outline colour per expert, plus the annotator's cell and the fused
 * candidate), choose one, refine it or draw a new one, then submit the decisions.
 * The map, shell and keyboard routing come from the map screen base (mapScreen.ts).
 */
import { randomKey } from '../core/autosave';
import { AdjudicationModel, OWN_COLOR, reasonText, type DisputeOption } from '../core/adjudication';
import { ApiError } from '../core/api';
import { normalizeRing } from '../core/geometry';
import { regionCells } from '../core/regions';
import { routeHash } from '../core/router';
import type { Cell } from '../core/store';
import type { ApiCell, RegionInfo } from '../core/types';
import { createTools, type Tool, type ToolId } from '../tools';
import type { CellState } from '../view/styles';
import type { App } from './app';
import { formatStatus, h, icon, kbd, rafThrottle, replaceChildren } from './dom';
import { MapScreen, type HelpContent, type LoadFailure, type MapScreenLayout } from './mapScreen';
import { confirmDialog, toast } from './overlay';
import { errText, helpRow, section } from './viewer';

const CONTEXT_COLOR = '#475569';
const REJECT_COLOR = '#f87171';

function optionKey(disputeId: number, optionId: string): string {
  return `o${disputeId}_${optionId}`;
}
function parseOptionKey(key: string): { disputeId: number; optionId: string } | null {
  const m = /^o(\d+)_(.+)$/.exec(key);
  return m ? { disputeId: Number(m[1]), optionId: m[2] } : null;
}

const TOOL_TITLES: Partial<Record<ToolId, string>> = { draw: 'Draw your own contour (D)', select: 'Select (V)' };

export class AdjudicateScreen extends MapScreen {
  readonly model = new AdjudicationModel();
  private currentId: number | null = null;
  /** dispute id -> store key of the adjudicator's own drawing */
  private ownKeys = new Map<number, string>();
  private refining: string | null = null;
  private contextVisible = true;
  private idempotencyKey: string | null = null;

  private summaryEl!: HTMLElement;
  private currentEl!: HTMLElement;
  private listEl!: HTMLElement;

  /** The slide's region whose disputes these are (null: the whole image's). */
  private region: RegionInfo | null = null;

  constructor(
    app: App,
    projectId: number,
    imageId: number,
    readonly regionId: number | null = null,
  ) {
    super(app, projectId, imageId, createTools().filter((t) => t.id === 'select' || t.id === 'draw'), 'draw');
  }

  protected loadFailure(e: unknown): LoadFailure {
    const forbidden = e instanceof ApiError && e.status === 403;
    return {
      title: forbidden ? 'Adjudicators only' : 'Could not open the adjudication',
      message: forbidden ? 'Only project admins and the experts named as adjudicators may decide disputed cells.' : errText(e),
      actions: [h('a', { class: 'btn', href: routeHash({ name: 'images', projectId: this.projectId }) }, 'Back to the images')],
    };
  }

  async beforeLeave(): Promise<boolean> {
    if (!this.model.hasPending || this.readOnly) return true;
    return confirmDialog('Leave without submitting?', `${this.model.counts().pending} decision(s) are not submitted yet and will be lost.`, 'Leave anyway', true);
  }

  // ================================================================ loading

  protected async load(): Promise<void> {
    const api = this.app.api;
    const regionId = this.regionId;
    const region = regionId ? await api.getRegion(this.imageId, regionId) : null;
    // the context: the image's annotation cells, or a region's (those whose centroid lies inside)
    const context = region
      ? regionCells(api, this.imageId, region).then((c) => ({ cells: c }))
      : api.getCells(this.imageId, 'annotation');
    const [project, image, adj, cells] = await Promise.all([
      api.getProject(this.projectId),
      api.getImage(this.imageId),
      api.adjudication(this.imageId, regionId),
      context.catch(() => ({ cells: [] as ApiCell[] })),
    ]);
    if (!this.alive) return;
    this.region = region;
    // the status shown and acted on: the region's for a region's disputes (the API sends it)
    this.image = { ...image, status: adj.status };
    this.showHeader(project, image);
    if (region) this.titleEl.textContent = `${image.file_name} / ${region.name}`;
    this.model.load(adj);
    this.readOnly = !['disputed', 'adjudication'].includes(adj.status);

    // context: the annotation cells that are not in dispute
    const disputed = new Set(adj.disputes.map((d) => d.origin_cell_id).filter((x): x is number => x != null));
    this.store.load({ revision: 0, cells: [] });
    const ctx: [string, Cell][] = [];
    for (const c of cells.cells) {
      if (disputed.has(c.id)) continue;
      const polygon = normalizeRing(c.polygon);
      if (polygon.length >= 3) ctx.push([`ctx${c.id}`, { key: `ctx${c.id}`, classId: c.class_id ?? null, polygon }]);
    }
    if (ctx.length) this.store.writeCells(ctx, 'server');
    this.writeOptions();

    const view = this.openMap(image, {
      cellStyle: (key, classId, state) => this.cellStyle(key, classId, state),
      canEdit: (key) => !this.readOnly && key === this.refining,
    });
    if (region) {
      view.setRegions([region]);
      view.fitBox(region.bbox as [number, number, number, number], 0);
      this.shell.mapEl.dataset.region = String(region.id);
    }
    this.currentId = this.model.next(null);
    this.begin();
    if (this.currentId !== null) this.focusDispute(this.currentId);
  }

  /** The options of every dispute as store cells (never in the history). */
  private writeOptions(): void {
    const patch: [string, Cell | null][] = [];
    for (const key of this.store.keys()) if (key.startsWith('o') || this.isOwnKey(key)) patch.push([key, null]);
    this.ownKeys.clear();
    for (const d of this.model.disputes) {
      for (const o of this.model.options(d)) {
        const key = optionKey(d.id, o.id);
        patch.push([key, { key, classId: o.classId, polygon: normalizeRing(o.polygon) }]);
      }
      // a resolved "own" decision: its contour
      const sc = this.model.serverChoice(d.id);
      if (sc && sc.option === 'own' && sc.polygon) {
        const key = optionKey(d.id, 'own');
        patch.push([key, { key, classId: sc.classId ?? null, polygon: normalizeRing(sc.polygon) }]);
        this.ownKeys.set(d.id, key);
      }
    }
    this.store.writeCells(patch, 'server');
  }

  private isOwnKey(key: string): boolean {
    return [...this.ownKeys.values()].includes(key);
  }

  private disputeOfKey(key: string): number | null {
    const p = parseOptionKey(key);
    if (p) return p.disputeId;
    for (const [id, k] of this.ownKeys) if (k === key) return id;
    return null;
  }

  // ================================================================ wiring

  protected wire(): void {
    const v = this.view!;
    const refresh = rafThrottle(() => this.renderPanels());
    this.offs.push(
      this.model.events.on('change', () => {
        v.refreshCells();
        refresh();
      }),
      this.selection.events.on('change', () => {
        const sel = this.selection.cells();
        if (sel.length === 1) {
          const id = this.disputeOfKey(sel[0]);
          if (id === null) {
            this.selection.clear();
            return;
          }
          if (id !== this.currentId) {
            this.currentId = id;
            this.refining = null;
            v.syncEditable();
            v.refreshCells();
          }
        }
        refresh();
      }),
      this.store.events.on('change', (c) => {
        if (c.origin === 'server') return;
        // the adjudicator's own contour just drawn
        if (c.origin === 'user' && this.tool?.id === 'draw' && c.added.length === 1 && this.currentId !== null) {
          const key = c.added[0];
          const cell = this.store.get(key)!;
          const id = this.currentId;
          const old = this.ownKeys.get(id);
          if (old && old !== key) this.store.writeCells([[old, null]], 'server');
          this.ownKeys.set(id, key);
          this.model.choose(id, 'own', { polygon: cell.polygon, classId: cell.classId });
          queueMicrotask(() => this.setTool('select'));
          return;
        }
        // vertex edits (or their undo) of the chosen contour: a refinement
        for (const key of [...c.updated, ...c.added]) {
          const id = this.disputeOfKey(key);
          const cell = this.store.get(key);
          if (id === null || !cell) continue;
          const p = parseOptionKey(key);
          const eff = this.model.effective(id);
          if (p && eff?.option !== p.optionId) this.model.choose(id, p.optionId);
          this.model.refine(id, cell.polygon);
        }
      }),
    );
    this.warnBeforeUnload(() => this.model.hasPending && !this.readOnly);
  }

  /** Your own contour takes the class of the chosen version, else of the fused candidate. */
  protected activeClassId(): number | null {
    const d = this.currentId !== null ? this.model.get(this.currentId) : undefined;
    return d ? (this.model.effective(d.id)?.classId ?? d.candidate_class_id ?? this.palette.ordered[0]?.id ?? null) : null;
  }

  protected override mayUse(id: ToolId): boolean {
    return id !== 'draw' || (!this.readOnly && this.currentId !== null);
  }

  protected toolChanged(): void {
    this.renderHint();
  }

  protected override toolTitle(t: Tool): string {
    return TOOL_TITLES[t.id] ?? super.toolTitle(t);
  }

  // ================================================================ actions

  focusDispute(id: number | null, zoom = true): void {
    if (id === null) return;
    this.currentId = id;
    this.refining = null;
    const d = this.model.get(id);
    if (!d || !this.view) return;
    const keys = this.model.options(d).map((o) => optionKey(id, o.id));
    const own = this.ownKeys.get(id);
    if (own) keys.push(own);
    const eff = this.model.effective(id);
    const chosenKey = eff && eff.option !== 'reject' ? (eff.option === 'own' ? own : optionKey(id, eff.option)) : undefined;
    this.selection.set(chosenKey && this.store.has(chosenKey) ? [chosenKey] : []);
    this.view.syncEditable();
    this.view.refreshCells();
    if (zoom) this.view.zoomToKeys(keys.filter((k) => this.store.has(k)));
    this.renderPanels();
  }

  next(dir: 1 | -1 = 1): void {
    this.focusDispute(this.model.next(this.currentId, dir));
  }

  private guard(): boolean {
    if (this.readOnly) {
      toast('This image is not waiting for adjudication', 'warn');
      return false;
    }
    if (this.currentId === null) {
      toast('No dispute selected', 'warn');
      return false;
    }
    return true;
  }

  choose(option: DisputeOption | 'reject'): void {
    if (!this.guard()) return;
    const id = this.currentId!;
    this.refining = null;
    if (option === 'reject') this.model.choose(id, 'reject');
    else {
      this.model.choose(id, option.id);
      this.selection.set([optionKey(id, option.id)]);
    }
    this.view?.syncEditable();
    const remaining = this.model.undecided().length;
    if (remaining) setTimeout(() => this.next(1), 120);
    else toast('Every dispute has a decision — submit them', 'success');
  }

  chooseNth(n: number): void {
    const d = this.currentId !== null ? this.model.get(this.currentId) : undefined;
    if (!d) return;
    const opt = this.model.options(d)[n - 1];
    if (opt) this.choose(opt);
  }

  /** Enter: choose the outline selected on the map. */
  chooseSelected(): void {
    const sel = this.selection.cells();
    if (sel.length !== 1 || this.currentId === null) return;
    const p = parseOptionKey(sel[0]);
    const d = this.model.get(this.currentId);
    if (!p || !d) return;
    const opt = this.model.options(d).find((o) => o.id === p.optionId);
    if (opt) this.choose(opt);
  }

  refine(): void {
    if (!this.guard()) return;
    const id = this.currentId!;
    const eff = this.model.effective(id);
    if (!eff || eff.option === 'reject') return void toast('Choose a version first, then refine it (E)', 'warn');
    const key = eff.option === 'own' ? this.ownKeys.get(id) : optionKey(id, eff.option);
    if (!key || !this.store.has(key)) return;
    this.refining = this.refining === key ? null : key;
    this.selection.set([key]);
    this.view?.syncEditable();
    this.view?.zoomToKeys([key]);
    this.renderHint();
  }

  clearChoice(): void {
    if (!this.guard()) return;
    this.model.clear(this.currentId!);
    this.refining = null;
    this.view?.syncEditable();
  }

  protected async submit(): Promise<void> {
    if (this.busy || this.readOnly) return;
    const { decisions, errors } = this.model.payload();
    const bad = Object.keys(errors);
    if (bad.length) {
      toast(`Dispute ${this.model.disputes.findIndex((d) => d.id === Number(bad[0])) + 1}: ${errors[Number(bad[0])]}`, 'warn');
      this.focusDispute(Number(bad[0]));
      return;
    }
    if (!decisions.length) return void toast('Choose a version for at least one disputed cell first', 'warn');
    const open = this.model.undecided().length;
    if (open && !(await confirmDialog('Submit some decisions?', `${open} disputed cell(s) still have no decision; the image is verified once every dispute is decided. Submit the ${decisions.length} decided now?`, 'Submit'))) return;
    this.idempotencyKey ??= randomKey();
    const key = this.idempotencyKey;
    await this.submitting(async () => {
      try {
        const res = await this.app.api.adjudicate(this.imageId, decisions, key, this.regionId);
        this.idempotencyKey = null;
        this.model.load(res);
        this.writeOptions();
        this.image = this.image ? { ...this.image, status: res.status } : this.image;
        this.readOnly = !['disputed', 'adjudication'].includes(res.status);
        this.refining = null;
        this.view?.syncEditable();
        this.view?.refreshCells();
        this.renderAll();
        if (res.status === 'verified') toast(`All disputes decided — the ${this.region ? 'region' : 'image'} is verified`, 'success', 5000);
        else toast(`${decisions.length} decision(s) saved`, 'success');
        if (!this.readOnly) this.focusDispute(this.model.next(null));
      } catch (e) {
        if (!(e instanceof ApiError && e.isTransient)) this.idempotencyKey = null;
        toast(`Could not submit: ${e instanceof ApiError && e.status === 400 ? (e.fieldMessages()[0] ?? e.detail) : errText(e)}`, 'error', 8000);
      }
    });
  }

  protected async nextImage(): Promise<void> {
    if (await this.beforeLeave()) await this.nextInQueue('adjudicate', 'No other disputed image', this.regionId);
  }

  // ================================================================ keyboard

  /** Ctrl+Z undoes contour edits only (decisions are cleared with U): no "nothing to undo" toast. */
  override undo(): void {
    this.store.undo();
  }

  override redo(): void {
    this.store.redo();
  }

  protected override onCommandKey(e: KeyboardEvent): boolean {
    if (e.key !== 'Enter') return super.onCommandKey(e);
    void this.submit();
    return true;
  }

  protected override step(dir: 1 | -1): void {
    this.next(dir);
  }

  protected onKey(e: KeyboardEvent): boolean {
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (/^[1-9]$/.test(k)) this.chooseNth(Number(k));
    else if (k === 'Enter') {
      if (this.refining) this.stopRefining();
      else this.chooseSelected();
    } else if (k === 'r') this.choose('reject');
    else if (k === 'd') this.setTool('draw');
    else if (k === 'v') this.setTool('select');
    else if (k === 'e') this.refine();
    else if (k === 'u') this.clearChoice();
    else if (k === 'z') this.focusDispute(this.currentId);
    else if (k === 'h') {
      this.contextVisible = !this.contextVisible;
      this.view?.refreshCells();
      toast(this.contextVisible ? 'Agreed cells shown' : 'Agreed cells hidden');
    } else if (k === 'Escape') {
      if (this.refining) this.stopRefining();
      else if (this.tool?.id !== 'select') this.setTool('select');
      else return false;
    } else return false;
    return true;
  }

  private stopRefining(): void {
    this.refining = null;
    this.view?.syncEditable();
    this.renderHint();
  }

  // ================================================================ rendering

  private cellStyle(key: string, _classId: number | null, state: CellState) {
    const s = this.view!.styles;
    const sel = state === 'selected';
    if (key.startsWith('ctx')) return s.outline(CONTEXT_COLOR, { width: 1.4, fill: 0.0, alpha: this.contextVisible ? 0.85 : 0 });
    const id = this.disputeOfKey(key);
    if (id === null) return s.outline(OWN_COLOR, { width: 2.4, fill: 0.12, selected: sel, zIndex: 20 });
    const d = this.model.get(id);
    const p = parseOptionKey(key);
    const eff = this.model.effective(id);
    const isOwn = !p || p.optionId === 'own';
    const chosen = eff && eff.option !== 'reject' && (isOwn ? eff.option === 'own' : eff.option === p!.optionId);
    const opts = d ? this.model.options(d) : [];
    const idx = p && !isOwn ? opts.findIndex((o) => o.id === p.optionId) : -1;
    const opt = idx >= 0 ? opts[idx] : undefined;
    const color = isOwn ? OWN_COLOR : (opt?.color ?? OWN_COLOR);
    const dash = opt?.kind === 'annotation' ? [7, 4] : opt?.kind === 'candidate' ? [2, 4] : undefined;
    if (id === this.currentId) {
      if (eff?.option === 'reject') return s.outline(REJECT_COLOR, { width: 1.6, dash: [3, 4], fill: 0, alpha: 0.9 });
      if (eff && !chosen) return s.outline(color, { width: 1.2, dash, fill: 0, alpha: 0.45 });
      if (chosen) return s.outline(color, { width: 2.8, dash, fill: 0.16, selected: true, zIndex: 20 });
      // undecided: versions stacked as concentric bands (the first widest) so identical
      // contours still show every expert's colour
      const n = opts.length;
      const width = idx >= 0 ? 2 + (n - 1 - idx) * 2.4 : 2.4;
      return s.outline(color, { width, dash, fill: idx === 0 ? 0.08 : 0, selected: sel, zIndex: idx + 1 });
    }
    // other disputes: quiet; a decided one shows only its chosen contour
    if (eff) return chosen ? s.outline(color, { width: 1.6, fill: 0.05, alpha: 0.8 }) : s.outline(color, { width: 1, fill: 0, alpha: 0 });
    return s.outline(color, { width: 1.2, dash, fill: 0, alpha: 0.6 });
  }

  protected layout(): MapScreenLayout {
    this.summaryEl = h('div', { class: 'adj-summary' });
    this.currentEl = h('div', { class: 'current-dispute' });
    this.listEl = h('div', { class: 'dispute-list' });
    return {
      className: 'adjudicate-screen',
      badge: h('span', { class: 'badge role-admin' }, 'Adjudication'),
      actions: [this.nextButton('Next disputed', 'Next disputed image'), this.submitButton('Submit decisions', 'Submit the decisions (Ctrl+Enter)', 'submit-adjudication')],
      panel: [section('Disputed cells', this.summaryEl), section('Current dispute', this.currentEl), section('All disputes', this.listEl)],
      widePanel: true,
    };
  }

  protected renderAll(): void {
    this.renderStatus();
    const s = this.image?.status;
    this.submitBtn.disabled = this.readOnly;
    const b = this.shell.banner;
    b.hidden = !this.readOnly;
    if (this.readOnly) {
      b.className = `map-banner ${s === 'verified' ? 'good' : 'warn'}`;
      replaceChildren(b, icon(s === 'verified' ? 'check' : 'alert', 16), h('span', null, s === 'verified' ? 'Verified — every dispute is decided' : `The image is ${formatStatus(s).toLowerCase()}: nothing to adjudicate`));
    }
    this.renderHint();
    this.renderPanels();
  }

  private renderHint(): void {
    const el = this.shell.hintEl;
    if (this.readOnly) el.textContent = 'Read only · N / Tab: next dispute · F: fit';
    else if (this.tool?.id === 'draw') el.textContent = 'Draw your own contour: click vertices or drag · Enter closes · Esc cancels';
    else if (this.refining) el.textContent = 'Refining: drag vertices · Alt-click removes one · Enter / E: done';
    else replaceChildren(el, 'N / Tab next dispute · ', kbd('1'), '–', kbd('9'), ' choose a version · ', kbd('D'), ' draw your own · ', kbd('E'), ' refine · ', kbd('R'), ' reject · ', kbd('Ctrl'), '+', kbd('Enter'), ' submit');
  }

  private renderPanels(): void {
    if (!this.view) return;
    this.renderSummary();
    this.renderCurrent();
    this.renderList();
  }

  private renderSummary(): void {
    const c = this.model.counts();
    const decided = c.resolved + c.pending;
    const pct = c.total ? Math.round((decided / c.total) * 100) : 100;
    replaceChildren(this.summaryEl, 
      h('div', { class: 'progress-head' }, h('b', null, `${decided} / ${c.total}`), h('span', { class: 'muted' }, ' decided'), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, `${this.model.agreed} agreed cells`)),
      h('div', { class: 'progress-bar' }, h('div', { class: 'progress-fill', style: { width: `${pct}%` } })),
      h('div', { class: 'chips' }, h('span', { class: 'count-chip' }, h('b', null, String(c.resolved)), ' saved'), h('span', { class: 'count-chip' }, h('b', null, String(c.pending)), ' to submit'), h('span', { class: 'count-chip' }, h('b', null, String(c.open)), ' open')),
      h(
        'div',
        { class: 'legend' },
        this.model.experts().map((x) => h('span', { class: 'legend-item' }, h('i', { class: 'legend-line', style: { borderColor: x.color } }), x.username)),
        h('span', { class: 'legend-item' }, h('i', { class: 'legend-line dashed', style: { borderColor: '#e2e8f0' } }), 'Annotator'),
        h('span', { class: 'legend-item' }, h('i', { class: 'legend-line dotted', style: { borderColor: '#fde047' } }), 'Fused candidate'),
        h('span', { class: 'legend-item' }, h('i', { class: 'legend-line', style: { borderColor: OWN_COLOR } }), 'Yours'),
        h('span', { class: 'legend-item' }, h('i', { class: 'legend-line', style: { borderColor: CONTEXT_COLOR } }), 'Agreed'),
      ),
    );
  }

  private choiceLabel(id: number): string {
    const d = this.model.get(id);
    const eff = this.model.effective(id);
    if (!d || !eff) return 'Open';
    if (eff.option === 'reject') return 'Rejected';
    if (eff.option === 'own') return 'Your contour';
    const opt = this.model.options(d).find((o) => o.id === eff.option);
    const base = opt ? (opt.kind === 'expert' ? `${opt.label}’s version` : opt.label) : `review ${eff.option}`;
    return this.model.isRefined(d, eff) ? `${base} (refined)` : base;
  }

  private renderCurrent(): void {
    const el = this.currentEl;
    const d = this.currentId !== null ? this.model.get(this.currentId) : undefined;
    if (!d) {
      replaceChildren(el, h('p', { class: 'muted small' }, this.model.disputes.length ? 'Press N or Tab to go to a dispute.' : 'No disputed cell on this image.'));
      return;
    }
    const idx = this.model.disputes.indexOf(d);
    const eff = this.model.effective(d.id);
    const pending = this.model.pendingOf(d.id);
    const opts = this.model.options(d);
    const row = (o: DisputeOption, i: number) => {
      const chosen = eff?.option === o.id;
      return h(
        'button',
        { class: `option-row ${chosen ? 'chosen' : ''}`, dataset: { option: o.id }, disabled: this.readOnly, onclick: () => this.choose(o), title: `Choose (${i + 1})` },
        h('span', { class: 'class-key' }, i < 9 ? String(i + 1) : ''),
        h('i', { class: `legend-line ${o.kind === 'annotation' ? 'dashed' : o.kind === 'candidate' ? 'dotted' : ''}`, style: { borderColor: o.color } }),
        h('span', { class: 'option-label' }, h('b', null, o.label), h('span', { class: 'muted small' }, `${o.kind === 'expert' ? o.decision : ''}${o.kind === 'expert' ? ' · ' : ''}${this.palette.name(o.classId)}`)),
        chosen ? icon('check', 16) : null,
      );
    };
    const classSel =
      eff && eff.option !== 'reject'
        ? h(
            'label',
            { class: 'field inline' },
            h('span', null, 'Class'),
            h(
              'select',
              { disabled: this.readOnly, onchange: (e: Event) => this.model.setClass(d.id, Number((e.target as HTMLSelectElement).value)) },
              this.palette.ordered.map((c) => h('option', { value: String(c.id), selected: (this.model.resolve(d, eff)?.classId ?? null) === c.id }, c.name)),
            ),
          )
        : null;
    replaceChildren(el, 
      h('div', { class: 'cell-head' }, h('b', null, `Dispute ${idx + 1} of ${this.model.disputes.length}`), h('span', { class: `pill pill-${pending ? 'active' : d.status === 'resolved' ? 'good' : 'warn'}` }, pending ? 'To submit' : d.status === 'resolved' ? 'Saved' : 'Open')),
      h('p', { class: 'muted small' }, reasonText(d.reason)),
      h('div', { class: 'option-list' }, opts.map(row)),
      this.model.nonOptions(d).map((n) => h('div', { class: 'option-row static' }, h('span', { class: 'class-key' }, ''), h('i', { class: 'legend-line faint', style: { borderColor: n.color } }), h('span', { class: 'option-label' }, h('b', null, n.username), h('span', { class: 'muted small' }, n.decision === 'reject' ? 'rejected this cell' : 'did not draw this cell')))),
      h(
        'div',
        { class: 'btn-row' },
        h('button', { class: `btn btn-sm ${eff?.option === 'own' ? 'on' : ''}`, disabled: this.readOnly, onclick: () => this.setTool('draw') }, icon('draw', 14), 'Draw my own', kbd('D')),
        h('button', { class: `btn btn-sm btn-reject ${eff?.option === 'reject' ? 'on' : ''}`, dataset: { action: 'reject' }, disabled: this.readOnly, onclick: () => this.choose('reject') }, icon('x', 14), 'Not a cell', kbd('R')),
        h('button', { class: 'btn btn-sm', disabled: this.readOnly || !eff || eff.option === 'reject', onclick: () => this.refine() }, 'Refine', kbd('E')),
      ),
      classSel,
      eff ? h('div', { class: 'choice-line' }, icon('check', 14), h('span', null, 'Decision: ', h('b', null, this.choiceLabel(d.id))), pending && !this.readOnly ? h('button', { class: 'link-btn', onclick: () => this.clearChoice() }, 'Clear') : null) : null,
    );
  }

  private renderList(): void {
    replaceChildren(this.listEl, 
      ...this.model.disputes.map((d, i) => {
        const eff = this.model.effective(d.id);
        const pending = this.model.pendingOf(d.id);
        return h(
          'button',
          { class: `dispute-row ${d.id === this.currentId ? 'current' : ''}`, onclick: () => this.focusDispute(d.id) },
          h('span', { class: 'dispute-n' }, String(i + 1)),
          h('span', { class: 'option-label' }, h('span', null, reasonText(d.reason)), h('span', { class: 'muted small' }, eff ? this.choiceLabel(d.id) : `${this.model.options(d).length} versions`)),
          h('span', { class: `dot-status ${pending ? 'pending' : d.status === 'resolved' ? 'resolved' : 'open'}`, title: pending ? 'To submit' : d.status }),
        );
      }),
    );
  }

  protected help(): HelpContent {
    return {
      title: 'Adjudication — keyboard shortcuts',
      sections: [
        h('section', null, h('h4', null, 'Disputes'), helpRow(['N', 'Tab'], 'Next undecided dispute'), helpRow(['Shift', 'Tab'], 'Previous (also P)'), helpRow(['1–9'], 'Choose a version'), helpRow(['Enter'], 'Choose the outline selected on the map'), helpRow(['R'], 'Not a cell (reject)'), helpRow(['U'], 'Clear the decision')),
        h('section', null, h('h4', null, 'Contours'), helpRow(['D'], 'Draw your own contour'), helpRow(['E'], 'Refine the chosen contour'), helpRow(['Ctrl', 'Z'], 'Undo a contour edit'), helpRow(['Ctrl', 'Enter'], 'Submit the decisions')),
        h('section', null, h('h4', null, 'View'), helpRow(['Z'], 'Zoom to the dispute'), helpRow(['H'], 'Hide / show the agreed cells'), helpRow(['F'], 'Fit the image'), helpRow(['+', '−'], 'Zoom'), helpRow(['?'], 'This help')),
      ],
    };
  }
}
