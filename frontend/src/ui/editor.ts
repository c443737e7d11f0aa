/**
 * The editor screen: wires the core (store, history, autosave, backup,
 * proposals, selection) to the OpenLayers view and the tools, and draws the
 * panels around the map.
 */
import { ApiError, conflictState } from '../core/api';
import { AutosaveController, type AutosaveState, type Conflict } from '../core/autosave';
import { LocalBackup, restoreBackup, type Backup } from '../core/backup';
import { ClassPalette } from '../core/classes';
import { area } from '../core/geometry';
import { findNextImage, loadFilters } from '../core/navigation';
import { nextFromQueue, queueRoute } from '../core/queue';
import { routeHash } from '../core/router';
import { ProposalStore } from '../core/proposals';
import { Selection } from '../core/selection';
import { AnnotationStore, type Cell } from '../core/store';
import type { CellsResponse, ImageInfo, Project } from '../core/types';
import { createTools, type Tool, type ToolContext, type ToolId } from '../tools';
import type { NotifyKind } from '../tools/tool';
import { EditorMap, type LayerName } from '../view/editorMap';
import type { App, Screen } from './app';
import { formatStatus, h, icon, kbd, rafThrottle, replaceChildren, statusTone, listen } from './dom';
import { confirmDialog, dialog, dialogOpen, toast, type DialogHandle } from './overlay';

export interface EditorOptions {
  /** Image URL override (the benchmark page generates its image). */
  imageUrl?: string;
  /** Called once the map has rendered the loaded cells for the first time. */
  onInteractive?: (info: { dataArrivedAt: number; interactiveAt: number }) => void;
  renderMode?: 'image' | 'vector';
}

const TOOL_ICONS: Record<ToolId, string> = {
  select: 'select',
  draw: 'draw',
  split: 'split',
  merge: 'merge',
  delete: 'delete',
  classify: 'classify',
};

export class EditorScreen implements Screen {
  readonly store = new AnnotationStore();
  readonly proposals = new ProposalStore();
  readonly selection = new Selection();
  view: EditorMap | null = null;
  autosave: AutosaveController | null = null;
  palette = new ClassPalette([]);
  project: Project | null = null;
  image: ImageInfo | null = null;
  /** Resolves when the editor is usable (or rejects when loading failed). */
  readonly ready: Promise<void>;
  private resolveReady!: () => void;
  private rejectReady!: (e: unknown) => void;

  private backup: LocalBackup | null = null;
  private tools: Tool[] = createTools();
  private tool: Tool | null = null;
  private activeClass: number | null = null;
  private snap = false;
  private alive = true;
  private offs: (() => void)[] = [];
  private conflictDialog: DialogHandle | null = null;
  private reloginDialog: DialogHandle | null = null;
  private helpDialog: DialogHandle | null = null;
  private busy = false;
  private offlineTicker: ReturnType<typeof setInterval> | null = null;

  // dom
  private mapEl!: HTMLElement;
  private overlay!: HTMLElement;
  private saveEl!: HTMLElement;
  private countEl!: HTMLElement;
  private undoBtn!: HTMLButtonElement;
  private redoBtn!: HTMLButtonElement;
  private submitBtn!: HTMLButtonElement;
  private toolbar!: HTMLElement;
  private hintEl!: HTMLElement;
  private coordEl!: HTMLElement;
  private zoomEl!: HTMLElement;
  private classesEl!: HTMLElement;
  private layersEl!: HTMLElement;
  private proposalsEl!: HTMLElement;
  private selectionEl!: HTMLElement;
  private statusPill!: HTMLElement;
  private titleEl!: HTMLElement;
  private crumbProject!: HTMLElement;
  private layerState: Record<LayerName, { visible: boolean; opacity: number }> = {
    image: { visible: true, opacity: 1 },
    proposals: { visible: true, opacity: 1 },
    cells: { visible: true, opacity: 1 },
  };

  constructor(
    private readonly app: App,
    readonly projectId: number,
    readonly imageId: number,
    private readonly opts: EditorOptions = {},
  ) {
    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    this.ready.catch(() => undefined);
  }

  // ================================================================ lifecycle

  async mount(root: HTMLElement): Promise<void> {
    root.append(this.buildLayout());
    try {
      await this.load();
      this.resolveReady();
    } catch (e) {
      this.rejectReady(e);
      if (!this.alive) return;
      const msg =
        e instanceof ApiError
          ? e.status === 404
            ? 'This image does not exist or you are not a member of its project.'
            : e.isNetwork
              ? 'The server cannot be reached.'
              : e.detail
          : String(e);
      this.overlay.replaceChildren(
        h('div', { class: 'overlay-card' }, icon('alert', 28), h('h3', null, 'Could not open the image'), h('p', { class: 'muted' }, msg), h('a', { class: 'btn', href: `#/projects/${this.projectId}` }, 'Back to the images')),
      );
      this.overlay.hidden = false;
    }
  }

  unmount(): void {
    this.alive = false;
    if (this.offlineTicker) clearInterval(this.offlineTicker);
    if (this.backup) this.backup.flush(this.store);
    for (const off of this.offs) off();
    this.offs = [];
    this.tool?.deactivate();
    this.autosave?.stop();
    this.view?.destroy();
    this.conflictDialog?.close();
    this.reloginDialog?.close();
    this.helpDialog?.close();
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

  // ================================================================ loading

  private async load(): Promise<void> {
    const api = this.app.api;
    const [project, image, cells, props] = await Promise.all([
      api.getProject(this.projectId),
      api.getImage(this.imageId),
      api.getCells(this.imageId, 'annotation'),
      api.getCells(this.imageId, 'proposal').catch((e: unknown) => {
        if (e instanceof ApiError && e.status === 401) throw e;
        toast('Model proposals could not be loaded', 'warn');
        return { revision: 0, cells: [] } as CellsResponse;
      }),
    ]);
    if (!this.alive) return;
    const dataArrivedAt = performance.now();
    this.project = project;
    this.image = image;
    this.palette = new ClassPalette(project.classes);
    this.activeClass = this.palette.ordered[0]?.id ?? null;
    this.crumbProject.textContent = project.name;
    this.titleEl.textContent = image.file_name;
    this.titleEl.title = `${image.file_name} · ${image.width}×${image.height}`;
    this.renderImageStatus();

    this.store.load(cells);
    this.proposals.load(props.cells);

    this.view = new EditorMap({
      target: this.mapEl,
      width: image.width,
      height: image.height,
      imageUrl: this.opts.imageUrl ?? image.display_url ?? api.imageFileUrl(image.id, 'display'),
      palette: this.palette,
      store: this.store,
      proposals: this.proposals,
      selection: this.selection,
      renderMode: this.opts.renderMode,
    });
    this.view.map.once('rendercomplete', () => {
      this.opts.onInteractive?.({ dataArrivedAt, interactiveAt: performance.now() });
    });
    this.view.fit();
    this.overlay.hidden = true;

    this.autosave = new AutosaveController({ api, store: this.store, imageId: this.imageId }).start();
    this.backup = new LocalBackup(safeLocalStorage(), this.imageId);
    this.wire();
    this.setTool('select');
    this.renderAll();
    this.checkBackup(cells);
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
  private pendingBackup: Backup | null = null;

  // ================================================================ wiring

  private wire(): void {
    const v = this.view!;
    const as = this.autosave!;
    const refreshCounts = rafThrottle(() => this.renderCounts());
    const refreshSelection = rafThrottle(() => this.renderSelection());
    const refreshProposals = rafThrottle(() => this.renderProposals());
    this.offs.push(
      this.store.events.on('change', () => {
        refreshCounts();
        refreshSelection();
      }),
      this.store.events.on('reset', () => {
        refreshCounts();
        refreshSelection();
      }),
      this.store.events.on('state', () => this.backup?.update(this.store)),
      this.store.history.events.on('change', () => this.renderHistory()),
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
      as.installBeforeUnload(window),
    );
    const onKeyDown = (e: KeyboardEvent) => this.onKeyDown(e);
    const onKeyUp = (e: KeyboardEvent) => {
      if (e.key === ' ' && this.view?.spaceDown) {
        this.view.spaceDown = false;
        this.mapEl.classList.remove('panning');
      }
    };
    const onOnline = () => {
      if (as.state.status === 'offline') void as.retryNow();
    };
    const onHide = () => this.backup?.flush(this.store);
    const onBlur = () => {
      if (this.view) this.view.spaceDown = false;
      this.mapEl.classList.remove('panning');
    };
    this.offs.push(
      listen(document, 'keydown', onKeyDown),
      listen(document, 'keyup', onKeyUp),
      listen(window, 'online', onOnline),
      listen(window, 'pagehide', onHide),
      listen(window, 'blur', onBlur),
    );

    const showCoord = rafThrottle(() => {
      if (!this.lastCoord) {
        this.coordEl.textContent = '';
        return;
      }
      const [x, y] = v.frame.toApi(this.lastCoord);
      const inside = x >= 0 && y >= 0 && x <= v.frame.width && y <= v.frame.height;
      this.coordEl.textContent = inside ? `x ${Math.round(x)}  y ${Math.round(y)}` : '';
    });
    v.map.on('pointermove', (e) => {
      this.lastCoord = e.coordinate;
      showCoord();
    });
    this.mapEl.addEventListener('mouseleave', () => {
      this.lastCoord = null;
      showCoord();
    });
    const showZoom = rafThrottle(() => {
      const r = v.view.getResolution() ?? 1;
      this.zoomEl.textContent = `${Math.round(100 / r)}%`;
    });
    v.view.on('change:resolution', showZoom);
    showZoom();
  }
  private lastCoord: number[] | null = null;

  private toolContext(): ToolContext {
    return {
      store: this.store,
      selection: this.selection,
      proposals: this.proposals,
      palette: this.palette,
      view: this.view ?? undefined,
      activeClassId: () => this.activeClass,
      snapEnabled: () => this.snap,
      notify: (m, k) => this.notify(m, k),
      setTool: (id) => this.setTool(id),
    };
  }

  notify(message: string, kind: NotifyKind = 'info'): void {
    toast(message, kind);
  }

  setTool(id: ToolId): void {
    const next = this.tools.find((t) => t.id === id);
    if (!next || !this.view) return;
    this.tool?.deactivate();
    this.tool = next;
    next.activate(this.toolContext());
    this.hintEl.textContent = next.hint;
    for (const b of this.toolbar.querySelectorAll<HTMLElement>('[data-tool]')) b.classList.toggle('active', b.dataset.tool === id);
  }

  private toggleSnap(): void {
    this.snap = !this.snap;
    if (this.tool) this.setTool(this.tool.id);
    this.toolbar.querySelector('[data-action="snap"]')?.classList.toggle('active', this.snap);
    toast(this.snap ? 'Snapping to neighbouring contours on' : 'Snapping off');
  }

  private setActiveClass(id: number | null, applyToSelection = true): void {
    this.activeClass = id;
    const sel = this.selection.cells();
    if (applyToSelection && sel.length) {
      const n = this.store.setClass(sel, id, sel.length > 1 ? `set class of ${sel.length} cells` : 'set class');
      if (n) toast(`${n} cell${n === 1 ? '' : 's'} → ${this.palette.name(id)}`);
    }
    this.renderCounts();
    this.renderSelection();
  }

  // ================================================================ keyboard

  private onKeyDown(e: KeyboardEvent): void {
    if (!this.view || !this.alive) return;
    if (dialogOpen()) return;
    const t = e.target as HTMLElement | null;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) {
      if (e.key === 'Escape') t.blur();
      return;
    }
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key;
    if (mod) {
      const k = key.toLowerCase();
      if (k === 'z' && !e.shiftKey) this.undo();
      else if ((k === 'z' && e.shiftKey) || k === 'y') this.redo();
      else if (k === 's') void this.autosave?.retryNow();
      else return;
      e.preventDefault();
      return;
    }
    if (key === ' ') {
      this.view.spaceDown = true;
      this.mapEl.classList.add('panning');
      e.preventDefault();
      return;
    }
    if (this.tool?.onKey?.(e)) {
      e.preventDefault();
      return;
    }
    if (e.altKey) return;
    const toolByKey = this.tools.find((x) => x.shortcut.toLowerCase() === key.toLowerCase() && !e.shiftKey);
    let handled = true;
    if (toolByKey) this.setTool(toolByKey.id);
    else if (/^[1-9]$/.test(key)) {
      const c = this.palette.byDigit(Number(key));
      if (c) this.setActiveClass(c.id);
      else handled = false;
    } else if (key === '0') this.setActiveClass(null);
    else if (key === 'a' || key === 'A') void (e.shiftKey ? this.acceptInView() : this.acceptSelected());
    else if (key === 'r' || key === 'R') void (e.shiftKey ? this.rejectInView() : this.rejectSelected());
    else if (key === 'f' || key === 'F') this.view.fit(200);
    else if (key === '+' || key === '=') this.view.zoomBy(1);
    else if (key === '-' || key === '_') this.view.zoomBy(-1);
    else if (key === 'ArrowLeft') this.view.panBy(-(e.shiftKey ? 0.5 : 0.2), 0);
    else if (key === 'ArrowRight') this.view.panBy(e.shiftKey ? 0.5 : 0.2, 0);
    else if (key === 'ArrowUp') this.view.panBy(0, -(e.shiftKey ? 0.5 : 0.2));
    else if (key === 'ArrowDown') this.view.panBy(0, e.shiftKey ? 0.5 : 0.2);
    else if (key === '?') this.showHelp();
    else if (key === 's' || key === 'S') this.toggleSnap();
    else if (key === 'p' || key === 'P') this.setLayer('proposals', { visible: !this.layerState.proposals.visible });
    else if (key === 'h' || key === 'H') this.setLayer('cells', { visible: !this.layerState.cells.visible });
    else if (key === 'Delete' || key === 'Backspace') {
      const cells = this.selection.cells();
      if (cells.length) this.store.removeCells(cells);
      else if (this.selection.proposals().length) void this.rejectSelected();
      else handled = false;
    } else if (key === 'Escape') {
      if (this.selection.size) this.selection.clear();
      else if (this.tool?.id !== 'select') this.setTool('select');
      else handled = false;
    } else handled = false;
    if (handled) e.preventDefault();
  }

  undo(): void {
    const cmd = this.store.undo();
    if (cmd) this.pruneSelection();
    else toast('Nothing to undo');
  }

  redo(): void {
    const cmd = this.store.redo();
    if (cmd) this.pruneSelection();
    else toast('Nothing to redo');
  }

  private pruneSelection(): void {
    const gone = this.selection.cells().filter((k) => !this.store.has(k));
    if (gone.length) this.selection.remove(gone);
  }

  // ================================================================ proposals

  private async acceptIds(ids: number[], what: string): Promise<void> {
    if (!ids.length) {
      toast(what === 'selected' ? 'Select proposals first (click the dashed outlines)' : 'No proposals in view', 'warn');
      return;
    }
    if (this.busy || !this.autosave) return;
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
        this.store.applyServerUpdate(c, true);
        resp = await this.autosave.exclusive(() => api.acceptProposals(this.imageId, { revision: this.store.revision, ids }));
      }
      this.store.applyServerUpdate(resp);
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

  private async submit(): Promise<void> {
    if (!this.autosave || this.busy) return;
    if (!this.store.size && !(await confirmDialog('Submit without cells?', 'This image has no cells. Submit it for review anyway?', 'Submit'))) return;
    this.busy = true;
    this.submitBtn.disabled = true;
    try {
      const res = await this.autosave.exclusive(() => this.app.api.transition(this.imageId, 'submit'));
      if (res && typeof res === 'object' && 'status' in res && res.status && this.image) this.image = { ...this.image, status: String(res.status) };
      else if (this.image) this.image = { ...this.image, status: 'submitted' };
      this.renderImageStatus();
      toast('Submitted for review', 'success');
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405 || e.status === 501)) {
        toast('Submitting for review is not available on this server yet — your work is saved.', 'warn', 6000);
      } else toast(`Could not submit: ${errText(e)}`, 'error');
    } finally {
      this.busy = false;
      this.submitBtn.disabled = false;
    }
  }

  private async nextImage(): Promise<void> {
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

  // ================================================================ save state / conflict

  private onSaveState(s: AutosaveState): void {
    const el = this.saveEl;
    el.className = `save-status save-${s.status}`;
    let text = '';
    let title = '';
    // the server moves a new image to "annotating" on its first accepted write
    if (s.status === 'saved' && s.lastSavedAt && this.image && (this.image.status === 'new' || this.image.status === 'pre_segmented')) {
      this.image = { ...this.image, status: 'annotating' };
      this.renderImageStatus();
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
    if (s.status === 'error' && s.error && s.error.status !== 401 && s.error.status !== 409) {
      const lines = s.error.fieldMessages();
      toast(`Save failed: ${s.error.detail}${lines.length ? ` (${lines[0]})` : ''}. Your edits are kept.`, 'error', 8000);
      if (s.errorKeys.length) this.selection.set(s.errorKeys.slice(0, 1));
      if (s.errorKeys.length) this.view?.centerOn(s.errorKeys);
    }
    if (s.status === 'error' && s.error?.status === 409) {
      toast(`Not saved: ${s.error.detail}`, 'error', 8000);
    }
  }

  private onSaveClick(): void {
    const s = this.autosave?.state;
    if (!s) return;
    if (s.status === 'conflict' && s.conflict) this.showConflict(s.conflict);
    else if (s.status === 'error' && s.error?.status === 401) this.showRelogin();
    else void this.autosave?.retryNow();
  }

  private showConflict(c: Conflict): void {
    if (this.conflictDialog) return;
    const mine = c.localCells;
    const theirs = c.serverCells;
    const d = diffSummary(mine, theirs, this.store);
    const download = () => {
      const blob = new Blob([JSON.stringify({ image: this.imageId, revision_base: this.store.revision, cells: mine.map((x) => ({ id: this.store.serverIdOf(x.key), class_id: x.classId, polygon: x.polygon })) }, null, 1)], {
        type: 'application/json',
      });
      const a = h('a', { href: URL.createObjectURL(blob), download: `image-${this.imageId}-my-cells.json` });
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 2000);
    };
    const keep = async () => {
      this.conflictDialog?.close();
      if (this.pendingBackup) {
        restoreBackup(this.store, this.pendingBackup);
        this.pendingBackup = null;
      }
      await this.autosave?.keepMine();
    };
    const both = async () => {
      this.conflictDialog?.close();
      if (this.pendingBackup) {
        restoreBackup(this.store, this.pendingBackup);
        this.pendingBackup = null;
      }
      await this.autosave?.keepBoth();
      toast('Merged: your cells and the other changes are both kept', 'success', 4000);
    };
    const take = () => {
      this.conflictDialog?.close();
      this.pendingBackup = null;
      this.backup?.clear();
      this.selection.clear();
      this.autosave?.takeTheirs();
      toast("Loaded the server's version", 'info');
    };
    this.conflictDialog = dialog({
      title: 'This image was changed elsewhere',
      dismissible: false,
      className: 'conflict-dialog',
      body: [
        h('p', null, this.pendingBackup ? c.detail : 'Someone saved this image while you were editing it. Nothing has been lost — choose which version to keep.'),
        !this.pendingBackup && c.detail && !/^conflict$/i.test(c.detail) ? h('p', { class: 'muted small' }, `Server: ${c.detail}`) : null,
        h(
          'div',
          { class: 'conflict-compare' },
          h('div', { class: 'conflict-col mine' }, h('h4', null, 'Your version'), h('div', { class: 'big-num' }, String(mine.length)), h('div', { class: 'muted' }, 'cells in this browser')),
          h('div', { class: 'conflict-col theirs' }, h('h4', null, "Server's version"), h('div', { class: 'big-num' }, String(theirs.length)), h('div', { class: 'muted' }, `cells · revision ${c.serverRevision}`)),
        ),
        h(
          'ul',
          { class: 'conflict-diff' },
          h('li', null, h('b', null, String(d.onlyMine)), d.onlyMine === 1 ? ' of your cells is not on the server' : ' of your cells are not on the server'),
          h('li', null, h('b', null, String(d.onlyTheirs)), d.onlyTheirs === 1 ? ' server cell is not in your version (added by the other person, or deleted by you)' : ' server cells are not in your version (added by the other person, or deleted by you)'),
          h('li', null, h('b', null, String(d.changed)), d.changed === 1 ? ' cell differs between the two' : ' cells differ between the two'),
        ),
        h('p', { class: 'muted small' }, "Keep both merges the two versions: cells drawn by the other person are added, your edits win where you both changed a cell. Keep only mine overwrites the server's layer with your cells; taking the server's discards your unsaved edits (download them first if unsure)."),
      ],
      actions: [
        h('button', { class: 'btn btn-ghost', onclick: download }, 'Download my version'),
        h('span', { class: 'grow' }),
        h('button', { class: 'btn btn-danger-outline', dataset: { action: 'take-theirs' }, onclick: take }, "Take the server's"),
        h('button', { class: 'btn', dataset: { action: 'keep-mine' }, onclick: () => void keep() }, 'Keep only mine'),
        h('button', { class: 'btn btn-primary', dataset: { action: 'keep-both' }, autofocus: true, onclick: () => void both() }, 'Keep both'),
      ],
      onClose: () => (this.conflictDialog = null),
    });
  }

  private showRelogin(): void {
    if (this.reloginDialog) return;
    const user = h('input', { name: 'username', autocomplete: 'username', value: this.app.user?.username ?? '' });
    const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', autofocus: true });
    const err = h('p', { class: 'form-error' });
    const go = async (e?: Event) => {
      e?.preventDefault();
      err.textContent = '';
      try {
        await this.app.api.login(user.value.trim(), pass.value);
        this.reloginDialog?.close();
        toast('Signed in again — saving your work', 'success');
        void this.autosave?.retryNow();
      } catch (x) {
        err.textContent = x instanceof ApiError && x.status === 429 ? 'Too many attempts — wait a minute.' : 'Sign-in failed.';
      }
    };
    this.reloginDialog = dialog({
      title: 'Your session has ended',
      dismissible: false,
      body: h(
        'form',
        { onsubmit: go, class: 'stack' },
        h('p', null, 'Sign in again to save your work. Your edits are kept in this browser meanwhile.'),
        h('label', { class: 'field' }, h('span', null, 'Username'), user),
        h('label', { class: 'field' }, h('span', null, 'Password'), pass),
        err,
        h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in and save'),
      ),
      onClose: () => (this.reloginDialog = null),
    });
  }

  private showHelp(): void {
    if (this.helpDialog) {
      this.helpDialog.close();
      return;
    }
    const row = (keys: string[], what: string) => h('div', { class: 'help-row' }, h('span', { class: 'help-keys' }, keys.map((k, i) => [i ? ' ' : '', kbd(k)])), h('span', null, what));
    const classes = this.palette.ordered.slice(0, 9).map((c, i) => row([String(i + 1)], `Class: ${c.name}`));
    this.helpDialog = dialog({
      title: 'Keyboard shortcuts',
      wide: true,
      body: h(
        'div',
        { class: 'help-grid' },
        h(
          'section',
          null,
          h('h4', null, 'Tools'),
          this.tools.map((t) => row([t.shortcut], t.label)),
          row(['S'], 'Snap to neighbouring contours on/off'),
          h('h4', null, 'Drawing'),
          row(['Click'], 'Place a vertex'),
          row(['Drag'], 'Trace freehand (a drag that starts a cell closes on release)'),
          row(['Enter'], 'Close the polygon / finish the cut line'),
          row(['Dbl-click'], 'Close the polygon / finish the cut line'),
          row(['Backspace'], 'Remove the last vertex'),
          row(['Esc'], 'Cancel drawing, then clear the selection'),
          row(['Space', 'Drag'], 'Pan while drawing'),
        ),
        h(
          'section',
          null,
          h('h4', null, 'Editing'),
          row(['Ctrl', 'Z'], 'Undo'),
          row(['Ctrl', 'Shift', 'Z'], 'Redo (also Ctrl+Y)'),
          row(['Shift', 'Click'], 'Add to / remove from the selection'),
          row(['Click again'], 'Next overlapping cell'),
          row(['Alt', 'Click'], 'Delete the vertex under the pointer'),
          row(['Del'], 'Delete the hovered vertex, else the selected cells'),
          row(['0'], 'Unclassified'),
          classes,
          row(['Ctrl', 'S'], 'Save now'),
        ),
        h(
          'section',
          null,
          h('h4', null, 'Proposals'),
          row(['A'], 'Accept selected proposals'),
          row(['R'], 'Reject selected proposals'),
          row(['Shift', 'A'], 'Accept all proposals in view'),
          row(['Shift', 'R'], 'Reject all proposals in view'),
          row(['P'], 'Show / hide proposals'),
          row(['H'], 'Show / hide my cells'),
          h('h4', null, 'View'),
          row(['Wheel'], 'Zoom'),
          row(['+', '−'], 'Zoom in / out'),
          row(['←', '↑', '→', '↓'], 'Pan (Shift: faster)'),
          row(['F'], 'Fit the image'),
          row(['?'], 'This help'),
        ),
      ),
      onClose: () => (this.helpDialog = null),
    });
  }

  // ================================================================ layout

  private buildLayout(): HTMLElement {
    this.crumbProject = h('a', { class: 'crumb', href: `#/projects/${this.projectId}` }, '…');
    this.titleEl = h('span', { class: 'crumb current file' }, `Image ${this.imageId}`);
    this.statusPill = h('span', { class: 'pill pill-neutral' }, '…');
    this.saveEl = h('button', { class: 'save-status save-saved', onclick: () => this.onSaveClick() }, h('span', { class: 'dot' }), h('span', null, 'Loading…'));
    this.countEl = h('span', { class: 'cell-count' }, '');
    this.undoBtn = h('button', { class: 'icon-btn', title: 'Undo (Ctrl+Z)', disabled: true, onclick: () => this.undo() }, icon('undo'));
    this.redoBtn = h('button', { class: 'icon-btn', title: 'Redo (Ctrl+Shift+Z)', disabled: true, onclick: () => this.redo() }, icon('redo'));
    this.submitBtn = h('button', { class: 'btn btn-primary btn-sm', onclick: () => void this.submit(), title: 'Save and submit this image for expert review' }, icon('send', 15), 'Submit for review');

    const top = this.app.topbar(
      [h('a', { class: 'crumb', href: '#/projects' }, 'Projects'), h('span', { class: 'crumb-sep' }, '/'), this.crumbProject, h('span', { class: 'crumb-sep' }, '/'), this.titleEl, this.statusPill],
      [
        this.saveEl,
        h('span', { class: 'divider' }),
        this.undoBtn,
        this.redoBtn,
        h('span', { class: 'divider' }),
        h('button', { class: 'btn btn-sm', onclick: () => void this.nextImage(), title: 'Next image of the list' }, 'Next image', icon('next', 15)),
        this.submitBtn,
        h('button', { class: 'icon-btn', title: 'Keyboard shortcuts (?)', onclick: () => this.showHelp() }, icon('help')),
      ],
    );

    this.toolbar = h(
      'aside',
      { class: 'toolbar', 'aria-label': 'Tools' },
      this.tools.map((t) =>
        h('button', { class: 'tool-btn', dataset: { tool: t.id }, title: `${t.label} (${t.shortcut})`, onclick: () => this.setTool(t.id) }, icon(TOOL_ICONS[t.id], 20), h('span', { class: 'tool-key' }, t.shortcut)),
      ),
      h('span', { class: 'toolbar-sep' }),
      h('button', { class: 'tool-btn', dataset: { action: 'snap' }, title: 'Snap to neighbouring contours (S)', onclick: () => this.toggleSnap() }, icon('magnet', 20), h('span', { class: 'tool-key' }, 'S')),
      h('span', { class: 'grow' }),
      h('button', { class: 'tool-btn', title: 'Zoom in (+)', onclick: () => this.view?.zoomBy(1) }, icon('zoomIn', 20)),
      h('button', { class: 'tool-btn', title: 'Zoom out (−)', onclick: () => this.view?.zoomBy(-1) }, icon('zoomOut', 20)),
      h('button', { class: 'tool-btn', title: 'Fit image (F)', onclick: () => this.view?.fit(200) }, icon('fit', 20)),
    );

    this.mapEl = h('div', { class: 'map', tabindex: '0', 'aria-label': 'Image and cell contours' });
    this.overlay = h('div', { class: 'map-overlay' }, h('div', { class: 'overlay-card' }, h('span', { class: 'spinner big' }), h('p', null, 'Loading image and cells…')));
    this.hintEl = h('span', { class: 'hint' }, '');
    this.coordEl = h('span', { class: 'coords' }, '');
    this.zoomEl = h('span', { class: 'zoom' }, '');

    this.classesEl = h('div', { class: 'class-list' });
    this.layersEl = h('div', { class: 'layer-list' });
    this.proposalsEl = h('div', { class: 'proposal-box' });
    this.selectionEl = h('div', { class: 'selection-box' });

    const panel = h(
      'aside',
      { class: 'side-panel' },
      h('section', { class: 'panel-section' }, h('h3', null, 'Classes', h('span', { class: 'panel-sub' }, this.countEl)), this.classesEl),
      h('section', { class: 'panel-section' }, h('h3', null, 'Selection'), this.selectionEl),
      h('section', { class: 'panel-section' }, h('h3', null, 'Model proposals'), this.proposalsEl),
      h('section', { class: 'panel-section' }, h('h3', null, 'Layers'), this.layersEl),
    );

    return h(
      'div',
      { class: 'editor' },
      top,
      h('div', { class: 'editor-body' }, this.toolbar, h('div', { class: 'map-wrap' }, this.mapEl, this.overlay), panel),
      h('footer', { class: 'statusbar' }, this.hintEl, h('span', { class: 'grow' }), this.coordEl, this.zoomEl),
    );
  }

  private renderAll(): void {
    this.renderCounts();
    this.renderSelection();
    this.renderProposals();
    this.renderLayers();
    this.renderHistory();
    if (this.autosave) this.onSaveState(this.autosave.state);
  }

  private renderImageStatus(): void {
    const s = this.image?.status;
    this.statusPill.className = `pill pill-${statusTone(s)}`;
    this.statusPill.textContent = formatStatus(s);
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
        .finally(() => this.alive && this.renderImageStatus());
    }
    const kind = canReview && (this.myReviewStatus === 'assigned' || this.myReviewStatus === 'submitted') ? 'review' : (s === 'disputed' || s === 'adjudication') && role === 'admin' ? 'adjudicate' : null;
    for (const x of this.workLinks) x.remove();
    this.workLinks = [];
    if (kind)
      this.workLinks.push(h('a', { class: 'btn btn-sm btn-accept', href: routeHash(queueRoute(this.projectId, kind, this.imageId)) }, icon(kind === 'review' ? 'check' : 'layers', 14), kind === 'review' ? 'Open my review' : 'Adjudicate'));
    if (role === 'admin' && (s === 'submitted' || s === 'in_review'))
      this.workLinks.push(h('button', { class: 'btn btn-sm', dataset: { action: 'reviewers' }, onclick: () => void this.showReviewers() }, icon('layers', 14), 'Reviewers'));
    this.statusPill.after(...this.workLinks);
    this.submitBtn.hidden = !!s && !['new', 'pre_segmented', 'annotating'].includes(s);
  }
  private workLinks: HTMLElement[] = [];
  /** The caller's review of this image: undefined = not asked, null = asking, 'none' = not assigned. */
  private myReviewStatus: string | null | undefined = undefined;

  /** Admins: the reviewers of the current round; assign one by hand or cancel an open assignment. */
  private async showReviewers(): Promise<void> {
    const api = this.app.api;
    const body = h('div', { class: 'reviewers' }, h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading…'));
    const d = dialog({ title: 'Reviewers of this image', body, actions: [h('button', { class: 'btn', onclick: () => d.close() }, 'Close')] });
    const refresh = async (): Promise<void> => {
      try {
        const [a, m] = await Promise.all([api.assignments(this.imageId), api.members(this.projectId)]);
        const members = Array.isArray(m) ? m : m.results;
        const round = a.round;
        const current = a.assignments.filter((x) => round && x.round === round.number && x.status !== 'cancelled');
        const taken = new Set(current.map((x) => x.reviewer));
        const eligible = members.filter((x) => (x.role === 'expert' || x.role === 'admin') && !taken.has(x.user));
        const select = h('select', null, eligible.map((x) => h('option', { value: String(x.user) }, `${x.username} (${x.role})`)));
        replaceChildren(
          body,
          h('p', { class: 'muted small' }, round ? `Round ${round.number}: ${round.experts_required} expert${round.experts_required === 1 ? '' : 's'} required, quorum ${round.quorum}. ${a.open_slots} open slot${a.open_slots === 1 ? '' : 's'}.` : 'No review round yet.'),
          h(
            'div',
            { class: 'reviewer-list' },
            current.length
              ? current.map((x) =>
                  h(
                    'div',
                    { class: 'reviewer-row' },
                    h('span', { class: 'avatar sm' }, x.username.slice(0, 1).toUpperCase()),
                    h('b', null, x.username),
                    h('span', { class: `pill pill-${x.status === 'submitted' ? 'good' : 'review'}` }, x.status === 'submitted' ? 'Submitted' : 'Reviewing'),
                    x.manual ? h('span', { class: 'muted small' }, 'assigned by hand') : null,
                    h('span', { class: 'grow' }),
                    x.status === 'assigned'
                      ? h('button', { class: 'btn btn-sm btn-danger-outline', onclick: async () => { try { await api.cancelAssignment(this.imageId, x.id); toast(`${x.username} unassigned`); await refresh(); } catch (e) { toast(errText(e), 'error'); } } }, 'Unassign')
                      : null,
                  ),
                )
              : h('p', { class: 'muted small' }, 'Nobody is assigned.'),
          ),
          a.open_slots > 0 && eligible.length
            ? h(
                'div',
                { class: 'form-row assign-row' },
                h('label', { class: 'field compact' }, h('span', null, 'Assign'), select),
                h('button', { class: 'btn btn-primary btn-sm', onclick: async () => { try { await api.assignReviewer(this.imageId, Number(select.value)); toast('Reviewer assigned', 'success'); await refresh(); } catch (e) { toast(`Not assigned: ${e instanceof ApiError ? (e.fieldMessages()[0] ?? e.detail) : errText(e)}`, 'error'); } } }, 'Assign'),
              )
            : null,
        );
      } catch (e) {
        body.replaceChildren(h('p', { class: 'form-error' }, errText(e)));
      }
    };
    await refresh();
  }

  private renderHistory(): void {
    const st = this.store.history.state();
    this.undoBtn.disabled = !st.canUndo;
    this.redoBtn.disabled = !st.canRedo;
    this.undoBtn.title = st.undoLabel ? `Undo ${st.undoLabel} (Ctrl+Z)` : 'Undo (Ctrl+Z)';
    this.redoBtn.title = st.redoLabel ? `Redo ${st.redoLabel} (Ctrl+Shift+Z)` : 'Redo (Ctrl+Shift+Z)';
  }

  private renderCounts(): void {
    const counts = new Map<number | null, number>();
    for (const c of this.store.all()) counts.set(c.classId, (counts.get(c.classId) ?? 0) + 1);
    const total = this.store.size;
    this.countEl.textContent = `${total} cell${total === 1 ? '' : 's'}`;
    const rows = this.palette.ordered.map((c, i) =>
      h(
        'button',
        {
          class: `class-row ${this.activeClass === c.id ? 'active' : ''}`,
          title: `${c.name} — press ${i + 1} to draw with it / apply it to the selection`,
          onclick: () => this.setActiveClass(c.id),
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
        { class: `class-row ${this.activeClass === null ? 'active' : ''}`, title: 'Unclassified — press 0', onclick: () => this.setActiveClass(null) },
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
    if (lp) lp.textContent = String(this.proposals.size);
  }

  private renderSelection(): void {
    const cells = this.selection.cells().filter((k) => this.store.has(k));
    const props = this.selection.proposals();
    const el = this.selectionEl;
    if (!cells.length && !props.length) {
      el.replaceChildren(h('p', { class: 'muted small' }, 'Click a cell or a proposal. Shift-click to select several.'));
      return;
    }
    const parts: HTMLElement[] = [];
    if (cells.length) {
      const first = this.store.get(cells[0])!;
      const meta = this.store.getMeta(cells[0]);
      const classSel = h(
        'select',
        {
          onchange: (e: Event) => {
            const v = (e.target as HTMLSelectElement).value;
            this.setActiveClass(v === '' ? null : Number(v));
          },
        },
        h('option', { value: '', selected: first.classId == null }, 'Unclassified'),
        this.palette.ordered.map((c) => h('option', { value: String(c.id), selected: cells.every((k) => this.store.get(k)?.classId === c.id) }, c.name)),
      );
      parts.push(
        h(
          'div',
          { class: 'sel-head' },
          h('b', null, cells.length === 1 ? '1 cell' : `${cells.length} cells`),
          cells.length === 1 ? h('span', { class: 'muted small' }, `${Math.round(area(first.polygon))} px² · ${first.polygon.length} vertices${meta?.source ? ` · ${meta.source}` : ''}${meta?.score != null ? ` · score ${meta.score.toFixed(2)}` : ''}`) : null,
        ),
        h('label', { class: 'field inline' }, h('span', null, 'Class'), classSel),
        h(
          'div',
          { class: 'btn-row' },
          cells.length === 2 ? h('button', { class: 'btn btn-sm', onclick: () => this.setTool('merge') }, icon('merge', 15), 'Merge') : null,
          h('button', { class: 'btn btn-sm btn-danger-outline', onclick: () => this.store.removeCells(cells) }, icon('delete', 15), 'Delete'),
        ),
      );
    }
    if (props.length) {
      parts.push(
        h('div', { class: 'sel-head' }, h('b', null, props.length === 1 ? '1 proposal' : `${props.length} proposals`), props.length === 1 ? this.proposalInfo(props[0]) : null),
        h(
          'div',
          { class: 'btn-row' },
          h('button', { class: 'btn btn-sm btn-accept', onclick: () => void this.acceptSelected() }, icon('check', 15), 'Accept', kbd('A')),
          h('button', { class: 'btn btn-sm btn-reject', onclick: () => void this.rejectSelected() }, icon('x', 15), 'Reject', kbd('R')),
        ),
      );
    }
    el.replaceChildren(...parts);
  }

  private proposalInfo(id: number): HTMLElement | null {
    const p = this.proposals.get(id);
    if (!p) return null;
    const cls = p.classId != null ? this.palette.name(p.classId) : (this.palette.byLabel(p.label)?.name ?? p.label ?? 'no label');
    return h('span', { class: 'muted small' }, `${cls}${p.score != null ? ` · score ${p.score.toFixed(2)}` : ''}`);
  }

  private renderProposals(): void {
    const n = this.proposals.size;
    const pre = this.image?.presegment_status;
    const el = this.proposalsEl;
    const status = pre ? h('div', { class: 'muted small' }, icon('sparkles', 14), `Pre-segmentation: ${formatStatus(pre)}${this.image?.presegment_error ? ` — ${this.image.presegment_error}` : ''}`) : null;
    if (!n) {
      el.replaceChildren(h('p', { class: 'muted small' }, 'No open proposals for this image.'), ...(status ? [status] : []));
      return;
    }
    el.replaceChildren(
      h('div', { class: 'prop-count' }, h('span', { class: 'legend-dash' }), h('b', null, String(n)), ` open proposal${n === 1 ? '' : 's'}`),
      h(
        'div',
        { class: 'btn-grid' },
        h('button', { class: 'btn btn-sm btn-accept', title: 'Accept the selected proposals (A)', onclick: () => void this.acceptSelected() }, 'Accept selected'),
        h('button', { class: 'btn btn-sm btn-reject', title: 'Reject the selected proposals (R)', onclick: () => void this.rejectSelected() }, 'Reject selected'),
        h('button', { class: 'btn btn-sm btn-accept', title: 'Accept every proposal in view (Shift+A)', onclick: () => void this.acceptInView() }, 'Accept all in view'),
        h('button', { class: 'btn btn-sm btn-reject', title: 'Reject every proposal in view (Shift+R)', onclick: () => void this.rejectInView() }, 'Reject all in view'),
      ),
      ...(status ? [status] : []),
    );
  }

  private setLayer(name: LayerName, patch: Partial<{ visible: boolean; opacity: number }>): void {
    const s = (this.layerState[name] = { ...this.layerState[name], ...patch });
    this.view?.setLayerVisible(name, s.visible);
    this.view?.setLayerOpacity(name, s.opacity);
    this.renderLayers();
  }

  private renderLayers(): void {
    const row = (name: LayerName, label: string, legend: HTMLElement, count: string | null) => {
      const s = this.layerState[name];
      return h(
        'div',
        { class: `layer-row ${s.visible ? '' : 'off'}` },
        h('button', { class: 'icon-btn', title: s.visible ? `Hide ${label.toLowerCase()}` : `Show ${label.toLowerCase()}`, onclick: () => this.setLayer(name, { visible: !s.visible }) }, icon(s.visible ? 'eye' : 'eyeOff', 16)),
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
            this.view?.setLayerOpacity(name, o);
          },
        }),
      );
    };
    this.layersEl.replaceChildren(
      row('cells', 'My cells', h('span', { class: 'legend-solid' }), String(this.store.size)),
      row('proposals', 'Proposals', h('span', { class: 'legend-dash' }), String(this.proposals.size)),
      row('image', 'Image', h('span', { class: 'legend-image' }), null),
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

function errText(e: unknown): string {
  if (e instanceof ApiError) return e.isNetwork ? 'the server cannot be reached' : e.detail;
  return e instanceof Error ? e.message : String(e);
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

function diffSummary(mine: Cell[], theirs: { id: number; class_id: number | null; polygon: number[][] }[], store: AnnotationStore) {
  const theirById = new Map(theirs.map((c) => [c.id, c]));
  let onlyMine = 0;
  let changed = 0;
  const matched = new Set<number>();
  for (const c of mine) {
    const id = store.serverIdOf(c.key);
    const t = id !== undefined ? theirById.get(id) : undefined;
    if (!t) {
      onlyMine++;
      continue;
    }
    matched.add(t.id);
    const same = t.class_id === c.classId && t.polygon.length === c.polygon.length && t.polygon.every((p, i) => Math.abs(p[0] - c.polygon[i][0]) < 0.01 && Math.abs(p[1] - c.polygon[i][1]) < 0.01);
    if (!same) changed++;
  }
  return { onlyMine, onlyTheirs: theirs.length - matched.size, changed };
}
