/**
 * The annotator's editor: wires the core (store, history, autosave, backup,
 * proposals, selection) to the map screen base (mapScreen.ts) and the tools.
 * Its side panel is in editorPanels.ts, its dialogs in editorDialogs.ts.
 */
import { ApiError, conflictState } from '../core/api';
import { REGION_SUBMITTABLE, RegionList, regionSubmittable } from '../core/regions';
import { AutosaveController, refusalSentence, type AutosaveState, type Conflict } from '../core/autosave';
import { LocalBackup, restoreBackup, type Backup } from '../core/backup';
import { lockReason, submitSummary } from '../core/editorState';
import { apiSegmenter, type Segmenter } from '../core/interactive';
import { findNextImage, loadFilters } from '../core/navigation';
import { nextFromQueue, queueRoute } from '../core/queue';
import { routeHash } from '../core/router';
import { ViewportLoader, widen, type ViewportLoad } from '../core/viewportCells';
import { proposalKey } from '../core/selection';
import type { AnnotationStore } from '../core/store';
import type { CellsResponse, Project } from '../core/types';
import { createTools, type Tool, type ToolId } from '../tools';
import type { NotifyKind } from '../tools/tool';
import type { App } from './app';
import { formatStatus, h, icon, rafThrottle, listen, replaceChildren, statusTone } from './dom';
import { conflictDialog, editorHelp, reloginDialog, reviewersDialog } from './editorDialogs';
import { HistoryPanel } from './editorHistory';
import { EditorPanels } from './editorPanels';
import { MapScreen, type HelpContent, type LoadFailure, type MapScreenLayout } from './mapScreen';
import { confirmDialog, dialog, toast, type DialogHandle } from './overlay';
import { errText, section } from './viewer';

export interface EditorOptions {
  /** Image URL override (the benchmark page generates its image). */
  imageUrl?: string;
  /** Called once the map has rendered the loaded cells for the first time. */
  onInteractive?: (info: { dataArrivedAt: number; interactiveAt: number }) => void;
  renderMode?: 'image' | 'vector';
}

export class EditorScreen extends MapScreen {
  autosave: AutosaveController | null = null;
  project: Project | null = null;
  /** Resolves when the editor is usable (or rejects when loading failed). */
  readonly ready: Promise<void>;
  private resolveReady!: () => void;
  private rejectReady!: (e: unknown) => void;

  private backup: LocalBackup | null = null;
  /** Edits found in this browser whose base the server moved past: restored once the conflict is decided. */
  private pendingBackup: Backup | null = null;
  private activeClass: number | null = null;
  private snap = false;
  private conflict: DialogHandle | null = null;
  private relogin: DialogHandle | null = null;
  private offlineTicker: ReturnType<typeof setInterval> | null = null;
  private panels!: EditorPanels;
  /** The History section: revisions, their preview on the map, restore (editorHistory.ts). */
  private revisions!: HistoryPanel;
  private saveEl!: HTMLButtonElement;
  private workLinks: HTMLElement[] = [];
  /** A tiled image (slide): its cells are read by viewport and saved by delta (null otherwise). */
  private viewport: ViewportLoader | null = null;
  private zoomInShown = false;
  /** Regions of interest (issue #14): drawn with the region tool, listed in their panel. */
  private regions: RegionList | null = null;
  private readonly regionsEl = h('div', { class: 'region-list' });
  /** The caller's review of this image: undefined = not asked, null = asking, 'none' = not assigned. */
  private myReviewStatus: string | null | undefined = undefined;

  constructor(
    app: App,
    projectId: number,
    imageId: number,
    private readonly opts: EditorOptions = {},
  ) {
    super(app, projectId, imageId, createTools());
    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    this.ready.catch(() => undefined);
  }

  // ================================================================ lifecycle

  protected override stop(): void {
    if (this.offlineTicker) clearInterval(this.offlineTicker);
    if (this.backup) this.backup.flush(this.store);
    this.autosave?.stop();
    this.viewport?.stop();
    this.conflict?.close();
    this.relogin?.close();
  }

  async beforeLeave(): Promise<boolean> {
    if (!this.autosave || !this.autosave.hasUnsaved) return true;
    const ok = await this.autosave.flush();
    if (ok) return true;
    this.backup?.flush(this.store);
    return confirmDialog(
      'Leave with unsaved changes?',
      'Your latest changes are not on the server yet. They are kept in this browser and will be offered again when you reopen this image.',
      'Leave anyway',
      true,
    );
  }

  onUnauthorized(): boolean {
    if (!this.autosave) return false;
    this.showRelogin();
    return true;
  }

  notify(message: string, kind: NotifyKind = 'info'): void {
    toast(message, kind);
  }

  // ================================================================ layout and loading

  protected layout(): MapScreenLayout {
    this.panels = new EditorPanels({
      store: this.store,
      proposals: this.proposals,
      selection: this.selection,
      map: () => this.view,
      palette: () => this.palette,
      image: () => this.image,
      readOnly: () => this.readOnly,
      activeClass: () => this.activeClass,
      setActiveClass: (id) => this.setActiveClass(id),
      setTool: (id) => this.setTool(id),
      acceptSelected: () => this.acceptSelected(),
      rejectSelected: () => this.rejectSelected(),
      acceptInView: () => this.acceptInView(),
      rejectInView: () => this.rejectInView(),
    });
    this.revisions = new HistoryPanel({
      api: this.app.api,
      imageId: this.imageId,
      store: this.store,
      map: () => this.view,
      autosave: () => this.autosave,
      readOnly: () => !!lockReason(this.image?.status),
      showPreview: (banner) => this.showPreview(banner),
      loadLayer: (resp) => this.loadLayer(resp),
      previewBox: () => (this.viewport && this.view ? widen(this.view.viewExtentApi(), 0.5, this.image?.width ?? 0, this.image?.height ?? 0) : null),
    });
    this.saveEl = h('button', { class: 'save-status save-saved', onclick: () => this.onSaveClick() }, h('span', { class: 'dot' }), h('span', null, 'Loading…'));
    return {
      actions: [...this.historyControls(this.saveEl), this.nextButton('Next image', 'Next image of the list'), this.submitButton('Submit for review', 'Save and submit this image for expert review')],
      toolbarExtra: [
        h('span', { class: 'toolbar-sep' }),
        h('button', { class: 'tool-btn', dataset: { action: 'snap' }, title: 'Snap to neighbouring contours (S)', 'aria-label': 'Snap to neighbouring contours', 'aria-keyshortcuts': 'S', onclick: () => this.toggleSnap() }, icon('magnet', 20), h('span', { class: 'tool-key' }, 'S')),
      ],
      panel: [...this.panels.sections(), section('Regions of interest', this.regionsEl), this.revisions.section()],
    };
  }

  protected async load(): Promise<void> {
    try {
      await this.loadImage();
      this.resolveReady();
    } catch (e) {
      this.rejectReady(e);
      throw e;
    }
  }

  protected loadFailure(e: unknown): LoadFailure {
    const message =
      e instanceof ApiError
        ? e.status === 404
          ? 'This image does not exist or you are not a member of its project.'
          : e.isNetwork
            ? 'The server cannot be reached.'
            : e.detail
        : String(e);
    return { title: 'Could not open the image', message, actions: [h('a', { class: 'btn', href: `#/projects/${this.projectId}` }, 'Back to the images')] };
  }

  private async loadImage(): Promise<void> {
    const api = this.app.api;
    const image = await api.getImage(this.imageId);
    // a slide's layer may hold 100,000 cells: they are read by viewport (see viewportCells.ts)
    const tiled = !!image.tiles;
    const [project, cells, props] = await Promise.all([
      api.getProject(this.projectId),
      tiled ? Promise.resolve<CellsResponse>({ revision: image.revision, cells: [] }) : api.getCells(this.imageId, 'annotation'),
      tiled
        ? Promise.resolve<CellsResponse>({ revision: 0, cells: [] })
        : api.getCells(this.imageId, 'proposal').catch((e: unknown) => {
            if (e instanceof ApiError && e.status === 401) throw e;
            toast('Model proposals could not be loaded', 'warn');
            return { revision: 0, cells: [] } as CellsResponse;
          }),
    ]);
    if (!this.alive) return;
    const dataArrivedAt = performance.now();
    this.project = project;
    this.image = image;
    this.showHeader(project, image);
    this.activeClass = this.palette.ordered[0]?.id ?? null;
    this.titleEl.title = `${image.file_name} · ${image.width}×${image.height}`;
    this.readOnly = !!lockReason(image.status);
    this.renderStatus();

    this.store.load(cells);
    this.proposals.load(props.cells);

    // read only: nothing is editable, so the vertex handles (Modify) never appear
    const view = this.openMap(image, { imageUrl: this.opts.imageUrl, renderMode: this.opts.renderMode, canEdit: () => !this.readOnly });
    view.map.once('rendercomplete', () => {
      this.opts.onInteractive?.({ dataArrivedAt, interactiveAt: performance.now() });
    });
    this.autosave = new AutosaveController({ api, store: this.store, imageId: this.imageId, mode: tiled ? 'delta' : 'layer' }).start();
    if (tiled) {
      // The local backup mirrors the whole store, which here is only the cells near the view;
      // restoring it would read as deleting the rest, so a slide has none (its saves are small
      // and frequent).
      this.viewport = new ViewportLoader({
        api,
        store: this.store,
        imageId: this.imageId,
        width: image.width,
        height: image.height,
        pinned: () => this.selection.cells(),
        proposals: (c) => this.proposals.load(c),
        onLoad: (load) => this.onViewportLoad(load),
        onError: (e) => toast(`Cells could not be loaded: ${errText(e)}`, 'error'),
      });
      const viewport = this.viewport;
      view.map.on('moveend', () => viewport.viewChanged(view.viewExtentApi()));
      viewport.viewChanged(view.viewExtentApi());
    } else this.backup = new LocalBackup(safeLocalStorage(), this.imageId);
    this.regions = new RegionList(api, this.imageId, image.width, image.height);
    const regions = this.regions;
    regions.onChange((list) => {
      this.view?.setRegions(list);
      this.renderRegions();
    });
    regions.load().catch((e: unknown) => toast(`Regions could not be loaded: ${errText(e)}`, 'warn'));
    this.renderRegions();
    this.begin();
    if (!tiled) this.checkBackup(cells);
  }

  protected override regionList(): RegionList | undefined {
    return this.regions ?? undefined;
  }

  /**
   * The regions panel: each region with its status and actions (on a slide: pre-segment only it,
   * submit it for verification on its own; delete). A region under review or verified is locked.
   */
  private renderRegions(): void {
    const regions = this.regions;
    if (!regions) return;
    const tiled = !!this.image?.tiles;
    const rows = regions.regions.map((r) => {
      const open = REGION_SUBMITTABLE.includes(r.status ?? 'new');
      return h(
        'div',
        { class: 'region-row', dataset: { region: String(r.id), status: r.status ?? 'new' } },
        h('button', { class: 'link-btn region-name', title: 'Show this region', onclick: () => this.view?.fitBox(r.bbox as [number, number, number, number]) }, r.name),
        h('span', { class: `region-status pill pill-${statusTone(r.status ?? 'new')}`, title: 'The region’s verification status' }, formatStatus(r.status ?? 'new')),
        !this.readOnly && open
          ? h('button', { class: 'icon-btn', title: 'Delete this region', 'aria-label': `Delete ${r.name}`, onclick: () => void regions.remove(r.id).catch((e: unknown) => toast(errText(e), 'error')) }, icon('x', 16))
          : null,
        h(
          'div',
          { class: 'region-actions' },
          tiled && !this.readOnly && open
            ? h('button', { class: 'btn btn-small', dataset: { action: 'presegment-region' }, title: 'Pre-segment only this region', onclick: () => void this.presegmentRegion(r.id) }, 'Pre-segment')
            : null,
          !this.readOnly && regionSubmittable(r, tiled)
            ? h('button', { class: 'btn btn-small btn-primary', dataset: { action: 'submit-region' }, title: 'Submit this region for verification: experts review the cells inside it', onclick: () => void this.submitRegion(r.id, r.name) }, 'Submit for verification')
            : null,
        ),
      );
    });
    replaceChildren(this.regionsEl, ...(rows.length ? rows : [h('p', { class: 'muted' }, 'None yet. Draw one with the region tool (G).')]));
  }

  private async submitRegion(regionId: number, name: string): Promise<void> {
    // the cells inside are what the experts decide on: unsaved edits go first
    if (this.autosave && !(await this.autosave.flush())) {
      toast('Not submitted: your latest edits could not be saved yet', 'error');
      return;
    }
    try {
      const region = await this.regions?.submit(regionId);
      const status = region?.status === 'in_review' ? 'experts are reviewing it' : 'waiting for reviewers';
      toast(`${name} submitted for verification: ${status}`, 'success', 5000);
    } catch (e) {
      const detail = e instanceof ApiError ? (e.fieldMessages()[0] ?? e.detail) : errText(e);
      toast(`Not submitted: ${detail}`, 'error', 8000);
    }
  }

  private async presegmentRegion(regionId: number): Promise<void> {
    try {
      await this.regions?.presegment(regionId);
      toast('Pre-segmenting the region: its proposals appear here when it is done', 'success');
    } catch (e) {
      toast(`Not queued: ${errText(e)}`, 'error');
    }
  }

  /** A viewport read of a slide's cells arrived: say when the view holds more than one read shows. */
  private onViewportLoad(load: ViewportLoad): void {
    this.shell.mapEl.dataset.cellsLoaded = String(load.cells);
    if (!load.complete && !this.zoomInShown) toast('This view holds too many cells to show: zoom in to see and edit them', 'info', 6000);
    this.zoomInShown = !load.complete;
  }

  /** The layer the server answered whole (a restore, a 409): a slide reads its view again instead. */
  private loadLayer(resp: CellsResponse): void {
    if (!this.viewport) {
      this.store.load(resp);
      return;
    }
    this.store.load({ revision: resp.revision, cells: [] });
    void this.viewport.reload();
  }

  private checkBackup(server: CellsResponse): void {
    const b = this.backup?.read();
    if (!b || !this.autosave) return;
    if (sameAsStore(b, this.store)) {
      this.backup?.clear();
      return;
    }
    if (b.baseRevision === server.revision) {
      const n = restoreBackup(this.store, b);
      toast(`Restored ${n} unsaved change${n === 1 ? '' : 's'} from this browser`, 'success', 5000);
      return;
    }
    // the server moved on since the backup was taken: let the user decide
    this.autosave.setConflict({
      detail: 'Unsaved edits from an earlier session were found in this browser, but the image was saved since (by you elsewhere or someone else).',
      serverRevision: server.revision,
      serverCells: server.cells,
      localCells: b.cells.map((c) => ({ key: c.key, classId: c.class_id, polygon: c.polygon })),
    });
    this.pendingBackup = b;
  }

  // ================================================================ wiring

  protected wire(): void {
    const as = this.autosave!;
    const refreshCounts = rafThrottle(() => this.panels.renderCounts());
    const refreshSelection = rafThrottle(() => this.panels.renderSelection());
    const refreshProposals = rafThrottle(() => this.panels.renderProposals());
    const cellsChanged = () => {
      refreshCounts();
      refreshSelection();
    };
    // a window blur swallows the keyup of Space: leave the panning mode
    const onBlur = () => {
      if (this.view) this.view.spaceDown = false;
      this.shell.mapEl.classList.remove('panning');
    };
    this.offs.push(
      this.store.events.on('change', cellsChanged),
      this.store.events.on('reset', cellsChanged),
      this.store.events.on('state', () => this.backup?.update(this.store)),
      this.selection.events.on('change', () => {
        refreshSelection();
        refreshProposals();
      }),
      this.proposals.events.on('removed', () => {
        refreshProposals();
        refreshCounts();
      }),
      this.proposals.events.on('reset', refreshProposals),
      as.events.on('state', (s) => this.onSaveState(s)),
      as.events.on('refused', (r) => this.onRefused(r.keys, r.reasons)),
      as.events.on('deltaConflict', (c) => {
        const n = c.dropped;
        if (c.regionLocked) {
          toast(`${c.detail} ${n === 1 ? 'Your edit there was' : `${n} of your edits there were`} undone; your other edits are being saved.`, 'warn', 10000);
          if (c.keys.length) this.selection.set(c.keys);
          return;
        }
        toast(`${n} of your edit${n === 1 ? '' : 's'} met edits another person saved meanwhile: the server's version of ${n === 1 ? 'that cell is' : 'those cells are'} shown (selected). Your other edits are being saved.`, 'warn', 10000);
        if (c.keys.length) this.selection.set(c.keys);
      }),
      as.events.on('behind', () => void this.viewport?.reload()),
      as.installBeforeUnload(window),
      listen(window, 'online', () => {
        if (as.state.status === 'offline') void as.retryNow();
      }),
      listen(window, 'pagehide', () => this.backup?.flush(this.store)),
      listen(window, 'blur', onBlur),
    );
  }

  protected toolChanged(tool: Tool): void {
    this.shell.hintEl.textContent = this.readOnly ? 'Read only · click a cell to inspect it · Space-drag or arrows: pan · F: fit · P / H: layers' : tool.hint;
  }

  /** Read only (locked from submission on): only the select tool, to look at cells. */
  protected override mayUse(id: ToolId): boolean {
    return !this.readOnly || id === 'select';
  }

  /** Tools, snapping, banner and hint follow {@link readOnly} (the image's status). */
  private renderReadOnly(): void {
    const reason = lockReason(this.image?.status);
    const ro = this.readOnly;
    for (const b of this.shell.toolbar.querySelectorAll<HTMLButtonElement>('[data-tool], [data-action="snap"]')) {
      const locked = ro && b.dataset.tool !== 'select';
      b.disabled = locked;
      b.classList.toggle('locked', locked);
      const t = b.dataset.tool ? this.tools.find((x) => x.id === b.dataset.tool) : null;
      const base = t ? this.toolTitle(t) : 'Snap to neighbouring contours (S)';
      b.title = locked && reason ? `${base} — ${reason}` : base;
    }
    if (ro && this.tool && this.tool.id !== 'select') this.setTool('select');
    this.view?.syncEditable();
    const b = this.shell.banner;
    b.hidden = !ro;
    if (ro) {
      b.className = `map-banner read-only ${this.image?.status === 'verified' ? 'good' : 'warn'}`;
      replaceChildren(b, icon('lock', 16), h('span', null, reason ?? 'Read only'));
    }
    if (this.tool) this.toolChanged(this.tool);
    this.renderHistory();
  }

  /** A revision previewed on the map (banner) or not (null): nothing can be edited meanwhile. */
  private showPreview(banner: HTMLElement | null): void {
    this.readOnly = !!banner || !!lockReason(this.image?.status);
    if (banner) this.selection.clear();
    this.renderReadOnly();
    this.panels.renderAll();
    if (!banner) return;
    const b = this.shell.banner;
    b.hidden = false;
    b.className = 'map-banner preview';
    b.replaceChildren(banner);
  }

  protected activeClassId(): number | null {
    return this.activeClass;
  }

  protected override snapEnabled(): boolean {
    return this.snap;
  }

  protected override segmenter(): Segmenter {
    return apiSegmenter(this.app.api, this.imageId);
  }

  private toggleSnap(): void {
    this.snap = !this.snap;
    if (this.tool) this.setTool(this.tool.id);
    this.shell.toolbar.querySelector('[data-action="snap"]')?.classList.toggle('active', this.snap);
    toast(this.snap ? 'Snapping to neighbouring contours on' : 'Snapping off');
  }

  private setActiveClass(id: number | null, applyToSelection = true): void {
    this.activeClass = id;
    const sel = this.selection.cells();
    if (applyToSelection && sel.length && !this.readOnly) {
      const n = this.store.setClass(sel, id, sel.length > 1 ? `set class of ${sel.length} cells` : 'set class');
      if (n) toast(`${n} cell${n === 1 ? '' : 's'} → ${this.palette.name(id)}`);
    }
    this.panels.renderCounts();
    this.panels.renderSelection();
  }

  // ================================================================ keyboard

  protected override onCommandKey(e: KeyboardEvent): boolean {
    if (e.key.toLowerCase() !== 's') return super.onCommandKey(e);
    void this.autosave?.retryNow();
    return true;
  }

  protected onKey(e: KeyboardEvent): boolean {
    const key = e.key;
    if (key === 'Escape' && this.revisions.previewing) {
      this.revisions.closePreview();
      return true;
    }
    // read only: the keys that look (select, layers, Escape) work, the editing ones do nothing
    if (this.readOnly && !['v', 'V', 'p', 'P', 'h', 'H', 'Escape'].includes(key)) return false;
    const toolByKey = this.tools.find((x) => x.shortcut.toLowerCase() === key.toLowerCase() && !e.shiftKey);
    if (toolByKey) this.setTool(toolByKey.id);
    else if (/^[1-9]$/.test(key)) {
      const c = this.palette.byDigit(Number(key));
      if (!c) return false;
      this.setActiveClass(c.id);
    } else if (key === '0') this.setActiveClass(null);
    else if (key === 'a' || key === 'A') void (e.shiftKey ? this.acceptInView() : this.acceptSelected());
    else if (key === 'r' || key === 'R') void (e.shiftKey ? this.rejectInView() : this.rejectSelected());
    else if (key === 's' || key === 'S') this.toggleSnap();
    else if (key === 'p' || key === 'P') this.panels.toggleLayer('proposals');
    else if (key === 'h' || key === 'H') this.panels.toggleLayer('cells');
    else if (key === 'n' || key === 'N') this.nextProposal(e.shiftKey ? -1 : 1);
    else if (key === 'Delete' || key === 'Backspace') {
      const cells = this.selection.cells();
      if (cells.length) this.store.removeCells(cells);
      else if (this.selection.proposals().length) void this.rejectSelected();
      else return false;
    } else if (key === 'Escape') {
      if (this.selection.size) this.selection.clear();
      else if (this.tool?.id !== 'select') this.setTool('select');
      else return false;
    } else return false;
    return true;
  }

  protected help(): HelpContent {
    return { title: 'Keyboard shortcuts', sections: editorHelp(this.tools, this.palette) };
  }

  // ================================================================ proposals

  /** N / Shift+N: selects the next (previous) open proposal in reading order and centres it. */
  nextProposal(dir: 1 | -1 = 1): void {
    const id = this.proposals.next(this.selection.proposals()[0] ?? null, dir);
    if (id === null) {
      toast('No open proposals', 'info');
      return;
    }
    const key = proposalKey(id);
    this.panels.showLayer('proposals');
    this.selection.set([key]);
    this.view?.centerOn([key]);
  }

  private async acceptIds(ids: number[], what: string): Promise<void> {
    if (!ids.length) {
      toast(what === 'selected' ? 'Select proposals first (click the dashed outlines)' : 'No proposals in view', 'warn');
      return;
    }
    if (this.busy || !this.autosave || this.readOnly) return;
    this.busy = true;
    const api = this.app.api;
    try {
      let resp: CellsResponse;
      try {
        resp = await this.autosave.exclusive(() => api.acceptProposals(this.imageId, { revision: this.store.revision, ids }));
      } catch (e) {
        const c = e instanceof ApiError ? conflictState(e) : null;
        if (!c || this.store.isDirty) throw e;
        // our base revision was stale but nothing is unsaved: catch up and retry once
        if (this.viewport) await this.viewport.reload();
        else this.store.applyServerUpdate(c, true);
        const base = this.viewport ? c.revision : this.store.revision;
        resp = await this.autosave.exclusive(() => api.acceptProposals(this.imageId, { revision: base, ids }));
      }
      // a slide reads its view again (the answer is the whole layer, the store only the view's cells)
      if (this.viewport) await this.viewport.reload();
      else this.store.applyServerUpdate(resp);
      this.proposals.remove(ids);
      toast(`Accepted ${ids.length} proposal${ids.length === 1 ? '' : 's'}`, 'success');
    } catch (e) {
      toast(`Could not accept: ${errText(e)}`, 'error');
    } finally {
      this.busy = false;
    }
  }

  private async rejectIds(ids: number[], what: string): Promise<void> {
    if (!ids.length) {
      toast(what === 'selected' ? 'Select proposals first (click the dashed outlines)' : 'No proposals in view', 'warn');
      return;
    }
    if (this.readOnly) return;
    if (ids.length > 20 && !(await confirmDialog('Reject proposals?', `Reject ${ids.length} model proposals? This cannot be undone here.`, 'Reject', true))) return;
    try {
      await this.app.api.rejectProposals(this.imageId, { ids });
      this.proposals.remove(ids);
      toast(`Rejected ${ids.length} proposal${ids.length === 1 ? '' : 's'}`);
    } catch (e) {
      toast(`Could not reject: ${errText(e)}`, 'error');
    }
  }

  acceptSelected(): Promise<void> {
    return this.acceptIds(this.selection.proposals(), 'selected');
  }
  rejectSelected(): Promise<void> {
    return this.rejectIds(this.selection.proposals(), 'selected');
  }
  acceptInView(): Promise<void> {
    return this.acceptIds(this.view ? this.proposals.idsInExtent(this.view.viewExtentApi()) : [], 'view');
  }
  rejectInView(): Promise<void> {
    return this.rejectIds(this.view ? this.proposals.idsInExtent(this.view.viewExtentApi()) : [], 'view');
  }

  // ================================================================ workflow

  /** The summary before submitting (cells, untouched proposals, unsaved changes): true on Confirm. */
  private confirmSubmit(): Promise<boolean> {
    const lines = submitSummary({ cells: this.store.size, openProposals: this.proposals.size, unsaved: !!this.autosave?.hasUnsaved });
    return new Promise((resolve) => {
      let ok = false;
      const d = dialog({
        title: 'Submit for review?',
        className: 'submit-summary',
        body: h(
          'div',
          null,
          h('ul', { class: 'summary-list' }, lines.map((l) => h('li', { class: l.warn ? 'warn' : '', dataset: { line: l.key } }, icon(l.warn ? 'alert' : 'check', 15), h('span', null, l.text)))),
          h('p', { class: 'muted small' }, 'Once submitted the image is locked: experts review it, and only an admin can reopen it.'),
        ),
        actions: [
          h('button', { class: 'btn', dataset: { action: 'submit-cancel' }, onclick: () => d.close() }, 'Cancel'),
          h('button', { class: 'btn btn-primary', dataset: { action: 'submit-confirm' }, autofocus: true, onclick: () => ((ok = true), d.close()) }, icon('send', 15), 'Submit for review'),
        ],
        onClose: () => resolve(ok),
      });
    });
  }

  protected async submit(): Promise<void> {
    if (!this.autosave || this.busy || this.readOnly) return;
    if (!(await this.confirmSubmit())) return;
    if (!this.autosave || this.busy || !this.alive) return;
    const autosave = this.autosave;
    await this.submitting(async () => {
      try {
        const res = await autosave.exclusive(() => this.app.api.transition(this.imageId, 'submit'));
        if (res && typeof res === 'object' && 'status' in res && res.status && this.image) this.image = { ...this.image, status: res.status };
        else if (this.image) this.image = { ...this.image, status: 'submitted' };
        this.readOnly = !!lockReason(this.image?.status);
        this.renderStatus();
        this.renderReadOnly();
        this.panels.renderAll();
        toast('Submitted for review', 'success');
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 405 || e.status === 501)) {
          toast('Submitting for review is not available on this server yet — your work is saved.', 'warn', 6000);
        } else toast(`Could not submit: ${errText(e)}`, 'error');
      }
    });
  }

  protected async nextImage(): Promise<void> {
    try {
      const next = await nextFromQueue(this.app.api, this.projectId, ['annotate'], this.imageId).catch(() => null);
      if (next) {
        this.app.navigate(next.route);
        return;
      }
      const id = await findNextImage(this.app.api, this.projectId, loadFilters(this.projectId), this.imageId);
      if (id == null) toast('This is the last image of the list', 'info');
      else this.app.navigate(`#/projects/${this.projectId}/images/${id}`);
    } catch (e) {
      toast(errText(e), 'error');
    }
  }

  protected override renderAll(): void {
    this.renderReadOnly();
    this.panels.renderAll();
    this.renderHistory();
    if (this.autosave) this.onSaveState(this.autosave.state);
  }

  protected override renderStatus(): void {
    super.renderStatus();
    const s = this.image?.status;
    if (this.image?.bethesda) this.statusPill.title = `Bethesda ${this.image.bethesda}`;
    // past annotation: point experts / admins to the screen that works on it now
    const role = this.app.user?.is_superuser ? 'admin' : this.project?.my_role;
    const canReview = s === 'in_review' && (role === 'expert' || role === 'admin');
    if (canReview && this.myReviewStatus === undefined) {
      this.myReviewStatus = null;
      this.app.api
        .myReview(this.imageId)
        .then((r) => (this.myReviewStatus = r.status))
        .catch(() => (this.myReviewStatus = 'none'))
        .finally(() => this.alive && this.renderStatus());
    }
    const kind = canReview && (this.myReviewStatus === 'assigned' || this.myReviewStatus === 'submitted') ? 'review' : (s === 'disputed' || s === 'adjudication') && role === 'admin' ? 'adjudicate' : null;
    for (const x of this.workLinks) x.remove();
    this.workLinks = [];
    if (kind)
      this.workLinks.push(h('a', { class: 'btn btn-sm btn-accept', href: routeHash(queueRoute(this.projectId, kind, this.imageId)) }, icon(kind === 'review' ? 'check' : 'layers', 14), kind === 'review' ? 'Open my review' : 'Adjudicate'));
    if (role === 'admin' && (s === 'submitted' || s === 'in_review'))
      this.workLinks.push(h('button', { class: 'btn btn-sm', dataset: { action: 'reviewers' }, onclick: () => void reviewersDialog(this.app.api, this.projectId, this.imageId) }, icon('layers', 14), 'Reviewers'));
    this.statusPill.after(...this.workLinks);
    this.submitBtn.hidden = !!s && !['new', 'pre_segmented', 'annotating'].includes(s);
  }

  // ================================================================ save state / conflict

  private onSaveState(s: AutosaveState): void {
    const el = this.saveEl;
    el.className = `save-status save-${s.status}`;
    let text = '';
    let title = '';
    // the server moves a new image to "annotating" on its first accepted write
    if (s.status === 'saved' && s.lastSavedAt && this.image && (this.image.status === 'new' || this.image.status === 'pre_segmented')) {
      this.image = { ...this.image, status: 'annotating' };
      this.renderStatus();
    }
    switch (s.status) {
      case 'saved':
        text = 'All changes saved';
        title = s.lastSavedAt ? `Saved at ${new Date(s.lastSavedAt).toLocaleTimeString()}` : 'Everything is on the server';
        break;
      case 'saving':
        text = 'Saving…';
        break;
      case 'unsaved':
        text = 'Unsaved changes';
        title = 'Saving shortly';
        break;
      case 'offline': {
        const secs = s.retryAt ? Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000)) : null;
        text = `Offline — retrying${secs ? ` in ${secs}s` : '…'}`;
        title = 'Your edits are kept in this browser. Click to retry now.';
        break;
      }
      case 'conflict':
        text = 'Conflict — action needed';
        title = 'Someone else saved this image. Click to choose which version to keep.';
        break;
      case 'error':
        if (s.refused.size) {
          // the other edits are saved; only these cells wait for a correction
          text = `${s.refused.size} cell${s.refused.size === 1 ? '' : 's'} not saved`;
          title = `${[...s.refused.values()].map((r) => `A cell shown in red: ${refusalSentence(r)}.`).join('\n')}\nClick to show it.`;
          break;
        }
        text = s.error?.status === 401 ? 'Signed out — not saved' : 'Save failed';
        title = `${s.error?.detail ?? ''}${s.error ? '\n' + s.error.fieldMessages().slice(0, 5).join('\n') : ''}\nClick to retry.`;
        break;
    }
    el.replaceChildren(h('span', { class: 'dot' }), h('span', null, text));
    el.title = title.trim();
    // tick the retry countdown
    if (s.status === 'offline' && !this.offlineTicker) {
      this.offlineTicker = setInterval(() => this.autosave && this.onSaveState(this.autosave.state), 1000);
    } else if (s.status !== 'offline' && this.offlineTicker) {
      clearInterval(this.offlineTicker);
      this.offlineTicker = null;
    }
    if (s.status === 'offline') return; // the rest reacts to transitions only
    this.view?.setErrorKeys(s.errorKeys);
    if (s.status === 'conflict' && s.conflict) this.showConflict(s.conflict);
    if (s.status === 'error' && s.error && s.error.status !== 401 && s.error.status !== 409 && !s.refused.size) {
      const lines = s.error.fieldMessages();
      toast(`Save failed: ${s.error.detail}${lines.length ? ` (${lines[0]})` : ''}. Your edits are kept.`, 'error', 8000);
      if (s.errorKeys.length) this.selection.set(s.errorKeys.slice(0, 1));
      if (s.errorKeys.length) this.view?.centerOn(s.errorKeys);
    }
    if (s.status === 'error' && s.error?.status === 409) {
      toast(`Not saved: ${s.error.detail}`, 'error', 8000);
      this.lockedMeanwhile(s.error.body);
    }
  }

  /** A save refused because the image was locked meanwhile (submitted elsewhere): read only from now on. */
  private lockedMeanwhile(body: unknown): void {
    const status = body && typeof body === 'object' && 'status' in body ? (body as { status: unknown }).status : null;
    if (typeof status !== 'string' || !lockReason(status) || !this.image || this.readOnly) return;
    this.image = { ...this.image, status: status as typeof this.image.status };
    this.readOnly = true;
    this.renderStatus();
    this.renderReadOnly();
    this.panels.renderAll();
  }

  /** The server refused cells (the other edits are being saved): say why, show the first one. */
  private onRefused(keys: string[], reasons: string[]): void {
    const why = [...new Set(reasons.map(refusalSentence))];
    const what = keys.length === 1 ? 'A cell could not be saved' : `${keys.length} cells could not be saved`;
    toast(`${what}: ${why.join('; ')}. It is shown in red and kept in this browser; your other changes are saved.`, 'error', 10000);
    this.selection.set(keys.slice(0, 1));
    this.view?.centerOn(keys);
  }

  private onSaveClick(): void {
    const s = this.autosave?.state;
    if (!s) return;
    if (s.status === 'error' && s.refused.size) {
      const keys = [...s.refused.keys()];
      this.selection.set(keys.slice(0, 1));
      this.view?.centerOn(keys);
      return;
    }
    if (s.status === 'conflict' && s.conflict) this.showConflict(s.conflict);
    else if (s.status === 'error' && s.error?.status === 401) this.showRelogin();
    else void this.autosave?.retryNow();
  }

  private showConflict(c: Conflict): void {
    if (this.conflict) return;
    /** A backup from an earlier session goes into the store before its edits are kept. */
    const restorePending = () => {
      if (this.pendingBackup) {
        restoreBackup(this.store, this.pendingBackup);
        this.pendingBackup = null;
      }
    };
    this.conflict = conflictDialog(
      c,
      this.store,
      this.imageId,
      {
        fromBackup: !!this.pendingBackup,
        keepMine: () => {
          this.conflict?.close();
          restorePending();
          void this.autosave?.keepMine();
        },
        keepBoth: () => {
          this.conflict?.close();
          restorePending();
          void this.autosave?.keepBoth().then(() => toast('Merged: your cells and the other changes are both kept', 'success', 4000));
        },
        takeTheirs: () => {
          this.conflict?.close();
          this.pendingBackup = null;
          this.backup?.clear();
          this.selection.clear();
          this.autosave?.takeTheirs();
          toast("Loaded the server's version", 'info');
        },
      },
      () => (this.conflict = null),
    );
  }

  private showRelogin(): void {
    if (this.relogin) return;
    this.relogin = reloginDialog(
      this.app.api,
      this.app.user?.username ?? '',
      () => void this.autosave?.retryNow(),
      () => (this.relogin = null),
    );
  }
}

// ------------------------------------------------------------------ helpers

function safeLocalStorage(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

function sameAsStore(b: Backup, store: AnnotationStore): boolean {
  if (b.cells.length !== store.size) return false;
  for (const c of b.cells) {
    const key = c.serverId !== undefined ? store.keyOfServerId(c.serverId) : undefined;
    const cell = key ? store.get(key) : undefined;
    if (!cell || cell.classId !== c.class_id || cell.polygon.length !== c.polygon.length) return false;
    for (let i = 0; i < c.polygon.length; i++) if (cell.polygon[i][0] !== c.polygon[i][0] || cell.polygon[i][1] !== c.polygon[i][1]) return false;
  }
  return true;
}
