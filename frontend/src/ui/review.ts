/**
 * The expert's review screen: the annotator's cells on the image, a decision
 * per cell (accept / reject / edit), missed cells added, comments on cells or
 * the image; keyboard driven (N/Tab, A, R, E). The draft is autosaved with
 * `PUT images/{id}/reviews/mine`. Blind: other experts' reviews are only asked
 * for once this review is submitted.
 */
import { ApiError } from '../core/api';
import { ClassPalette } from '../core/classes';
import { DraftSaver, type DraftSaverState } from '../core/draftSaver';
import { area } from '../core/geometry';
import { ProposalStore } from '../core/proposals';
import { nextFromQueue } from '../core/queue';
import { nextKey, readingOrder, ReviewDraft, type CellReviewState } from '../core/review';
import { routeHash } from '../core/router';
import { Selection } from '../core/selection';
import { AnnotationStore } from '../core/store';
import type { ApiCell, ImageInfo, Review, ReviewDraftBody, ReviewsOfRound } from '../core/types';
import { createTools, type Tool, type ToolContext, type ToolId } from '../tools';
import type { CellState } from '../view/styles';
import { EditorMap } from '../view/editorMap';
import type { App, Screen } from './app';
import { formatStatus, h, icon, kbd, rafThrottle, replaceChildren, statusTone, listen } from './dom';
import { confirmDialog, dialog, dialogOpen, toast, type DialogHandle } from './overlay';
import { buildShell, errText, helpRow, isTyping, overlayMessage, relTime, section, viewKey, wireReadouts, zoomButtons, type Shell } from './viewer';

export const REVIEW_COLORS: Record<CellReviewState, string> = {
  undecided: '#fbbf24',
  accepted: '#34d399',
  rejected: '#f87171',
  edited: '#38bdf8',
  added: '#e879f9',
};
const STATE_LABEL: Record<CellReviewState, string> = { undecided: 'Undecided', accepted: 'Accepted', rejected: 'Rejected', edited: 'Edited', added: 'Added' };

export class ReviewScreen implements Screen {
  readonly store = new AnnotationStore();
  readonly draft = new ReviewDraft(this.store);
  readonly selection = new Selection();
  private readonly proposals = new ProposalStore();
  view: EditorMap | null = null;
  saver: DraftSaver<ReviewDraftBody> | null = null;
  private palette = new ClassPalette([]);
  private image: ImageInfo | null = null;
  private review: Review | null = null;
  private others: ReviewsOfRound | null = null;
  private annotation: ApiCell[] = [];
  private readOnly = false;
  private readOnlyReason = '';
  private editingKey: string | null = null;
  private order: string[] = [];
  private tools: Tool[] = createTools().filter((t) => t.id === 'select' || t.id === 'draw');
  private tool: Tool | null = null;
  private activeClass: number | null = null;
  private alive = true;
  private busy = false;
  private offs: (() => void)[] = [];
  private helpDialog: DialogHandle | null = null;
  private toldAllDecided = false;

  private shell!: Shell;
  private statusPill!: HTMLElement;
  private titleEl!: HTMLElement;
  private crumbProject!: HTMLElement;
  private saveEl!: HTMLButtonElement;
  private undoBtn!: HTMLButtonElement;
  private redoBtn!: HTMLButtonElement;
  private submitBtn!: HTMLButtonElement;
  private progressEl!: HTMLElement;
  private currentEl!: HTMLElement;
  private imageCommentsEl!: HTMLElement;
  private othersEl!: HTMLElement;
  private legendEl!: HTMLElement;
  private cellComment: HTMLTextAreaElement | null = null;

  constructor(
    private readonly app: App,
    readonly projectId: number,
    readonly imageId: number,
  ) {}

  // ================================================================ lifecycle

  async mount(root: HTMLElement): Promise<void> {
    root.append(this.buildLayout());
    try {
      await this.load();
    } catch (e) {
      if (!this.alive) return;
      const notAssigned = e instanceof ApiError && (e.status === 404 || e.status === 403) && this.image;
      overlayMessage(
        this.shell.overlay,
        notAssigned ? 'No review of yours here' : 'Could not open the review',
        notAssigned
          ? 'You are not assigned to review this image (or its review round is over).'
          : e instanceof ApiError && e.status === 404
            ? 'This image does not exist or you are not a member of its project.'
            : errText(e),
        [
          h('a', { class: 'btn', href: routeHash({ name: 'images', projectId: this.projectId }) }, 'Back to the images'),
          h('button', { class: 'btn btn-primary', onclick: () => void this.nextImage() }, 'Next review', icon('next', 15)),
        ],
      );
    }
  }

  unmount(): void {
    this.alive = false;
    for (const off of this.offs) off();
    this.offs = [];
    this.tool?.deactivate();
    this.saver?.stop();
    this.draft.dispose();
    this.view?.destroy();
    this.helpDialog?.close();
  }

  async beforeLeave(): Promise<boolean> {
    if (!this.saver || !this.saver.hasUnsaved) return true;
    if (await this.saver.flush()) return true;
    return confirmDialog('Leave with unsaved decisions?', 'Your latest review decisions could not be saved yet. Leaving now loses them.', 'Leave anyway', true);
  }

  // ================================================================ loading

  private async load(): Promise<void> {
    const api = this.app.api;
    const [project, image] = await Promise.all([api.getProject(this.projectId), api.getImage(this.imageId)]);
    if (!this.alive) return;
    this.image = image;
    this.crumbProject.textContent = project.name;
    this.titleEl.textContent = image.file_name;
    this.renderStatus();
    const [cells, review] = await Promise.all([api.getCells(this.imageId, 'annotation'), api.myReview(this.imageId)]);
    if (!this.alive) return;
    this.annotation = cells.cells;
    this.review = review;
    this.palette = new ClassPalette(project.classes);
    this.activeClass = this.palette.ordered[0]?.id ?? null;
    this.draft.defaultClassId = this.activeClass;
    this.draft.load(cells.cells, review);
    this.readOnly = review.status !== 'assigned';
    this.readOnlyReason = review.status === 'submitted' ? `Submitted ${relTime(review.submitted_at)}` : review.status === 'cancelled' ? 'This assignment was cancelled' : '';
    if (!this.readOnly && image.status !== 'in_review') {
      this.readOnly = true;
      this.readOnlyReason = `The image is ${formatStatus(image.status).toLowerCase()}; reviews are written while it is in review`;
    }

    this.view = new EditorMap({
      target: this.shell.mapEl,
      width: image.width,
      height: image.height,
      imageUrl: image.display_url ?? api.imageFileUrl(image.id, 'display'),
      palette: this.palette,
      store: this.store,
      proposals: this.proposals,
      selection: this.selection,
      cellStyle: (key, classId, state) => this.cellStyle(key, classId, state),
      canEdit: (key) => !this.readOnly && (key === this.editingKey || this.draft.isAdded(key)),
    });
    this.view.fit();
    this.shell.overlay.hidden = true;
    this.recomputeOrder();

    this.saver = new DraftSaver({ source: this.draft, save: (body) => api.saveMyReview(this.imageId, body) });
    if (this.readOnly) this.saver.lock();
    this.wire();
    this.setTool('select');
    this.renderAll();
    if (this.review.status === 'submitted') void this.loadOthers();
  }

  private recomputeOrder(): void {
    const items = this.draft.annotationKeys().map((key) => ({ key, polygon: this.store.get(key)?.polygon ?? this.draft.original(key)!.polygon }));
    this.order = readingOrder(items);
  }

  private async loadOthers(): Promise<void> {
    // Blind review: only ever asked for after this expert's own review is submitted.
    if (this.review?.status !== 'submitted') return;
    try {
      this.others = await this.app.api.reviews(this.imageId, this.review.round);
    } catch (e) {
      this.others = null;
      if (!(e instanceof ApiError && e.status === 403)) toast(`Could not load the other reviews: ${errText(e)}`, 'warn');
    }
    if (this.alive) this.renderOthers();
  }

  // ================================================================ wiring

  private wire(): void {
    const v = this.view!;
    const saver = this.saver!;
    const refresh = rafThrottle(() => this.renderPanels());
    this.offs.push(
      this.draft.events.on('change', ({ keys }) => {
        v.refreshCells(keys);
        saver.changed();
        refresh();
      }),
      this.draft.events.on('comments', () => {
        saver.changed();
        refresh();
      }),
      this.store.events.on('change', (c) => {
        if (c.added.length || c.removed.length) v.refreshCells();
        // a missed cell just drawn: back to reviewing, with it selected
        if (c.origin === 'user' && this.tool?.id === 'draw' && c.added.length === 1 && this.draft.isAdded(c.added[0])) {
          const key = c.added[0];
          queueMicrotask(() => {
            this.setTool('select');
            this.selection.set([key]);
            toast('Missed cell added', 'success');
          });
        }
      }),
      this.store.history.events.on('change', () => this.renderHistory()),
      this.selection.events.on('change', () => {
        const cur = this.current();
        if (this.editingKey && cur !== this.editingKey) this.setEditing(null);
        refresh();
      }),
      saver.events.on('state', (s) => this.renderSave(s)),
      wireReadouts(v, this.shell.mapEl, this.shell.coordEl, this.shell.zoomEl),
    );
    const onKeyDown = (e: KeyboardEvent) => this.onKeyDown(e);
    const onKeyUp = (e: KeyboardEvent) => {
      if (e.key === ' ' && this.view?.spaceDown) {
        this.view.spaceDown = false;
        this.shell.mapEl.classList.remove('panning');
      }
    };
    const onUnload = (e: BeforeUnloadEvent) => {
      if (!this.saver?.hasUnsaved) return undefined;
      void this.saver.save();
      e.preventDefault();
      e.returnValue = '';
      return '';
    };
    const onOnline = () => void this.saver?.retryNow();
    this.offs.push(
      listen(document, 'keydown', onKeyDown),
      listen(document, 'keyup', onKeyUp),
      listen(window, 'beforeunload', onUnload),
      listen(window, 'online', onOnline),
    );
  }

  private toolContext(): ToolContext {
    return {
      store: this.store,
      selection: this.selection,
      proposals: this.proposals,
      palette: this.palette,
      view: this.view ?? undefined,
      activeClassId: () => this.activeClass,
      snapEnabled: () => false,
      notify: (m, k) => toast(m, k),
      setTool: (id) => this.setTool(id),
    };
  }

  setTool(id: ToolId): void {
    if (id === 'draw' && this.readOnly) return;
    const next = this.tools.find((t) => t.id === id);
    if (!next || !this.view) return;
    this.tool?.deactivate();
    this.tool = next;
    next.activate(this.toolContext());
    this.renderHint();
    for (const b of this.shell.toolbar.querySelectorAll<HTMLElement>('[data-tool]')) b.classList.toggle('active', b.dataset.tool === id);
  }

  // ================================================================ decisions

  /** The single selected cell. */
  current(): string | null {
    const cells = this.selection.cells();
    return cells.length === 1 && this.store.has(cells[0]) ? cells[0] : null;
  }

  private go(key: string | null, zoom = true): void {
    if (!key) return;
    if (this.tool?.id !== 'select') this.setTool('select');
    this.selection.set([key]);
    if (zoom) this.view?.zoomToKeys([key]);
  }

  goNext(dir: 1 | -1 = 1): void {
    const k = nextKey(this.order, this.current(), dir, (key) => this.draft.isUndecided(key));
    if (k) this.go(k);
  }

  private guard(): boolean {
    if (this.readOnly) {
      toast(this.readOnlyReason || 'This review can no longer change', 'warn');
      return false;
    }
    return true;
  }

  accept(): void {
    const key = this.current();
    if (!key) return void toast('Select a cell first (N or Tab goes to the next one)', 'warn');
    if (!this.guard()) return;
    if (this.draft.isAdded(key)) return void this.goNext();
    this.setEditing(null);
    const wasEdited = this.draft.isEdited(key);
    this.draft.accept([key]);
    if (wasEdited) toast('Kept your edited contour for this cell (U restores the original)');
    this.advance();
  }

  reject(): void {
    const key = this.current();
    if (!key) return void toast('Select a cell first (N or Tab goes to the next one)', 'warn');
    if (!this.guard()) return;
    this.setEditing(null);
    const added = this.draft.isAdded(key);
    this.draft.reject([key]);
    if (added) toast('Removed the cell you added');
    this.advance();
  }

  resetCurrent(): void {
    const key = this.current();
    if (!key || !this.guard()) return;
    this.setEditing(null);
    if (this.draft.reset([key])) toast('Back to the annotator’s contour, undecided');
  }

  edit(): void {
    const key = this.current();
    if (!key) return void toast('Select a cell first (N or Tab goes to the next one)', 'warn');
    if (!this.guard()) return;
    if (this.editingKey === key) {
      this.setEditing(null);
      return;
    }
    if (this.draft.markOf(key) === 'reject') this.draft.reset([key]);
    this.setEditing(key);
    this.view?.zoomToKeys([key]);
  }

  private setEditing(key: string | null): void {
    if (this.editingKey === key) return;
    this.editingKey = key;
    if (this.tool?.id !== 'select' && key) this.setTool('select');
    this.view?.syncEditable();
    this.renderHint();
    this.renderPanels();
  }

  private advance(): void {
    const cur = this.current();
    if (this.draft.undecidedKeys().length) {
      const k = nextKey(this.order, cur, 1, (key) => this.draft.isUndecided(key));
      if (k) this.go(k);
      return;
    }
    if (!this.toldAllDecided) {
      this.toldAllDecided = true;
      toast('Every cell has a decision — submit the review when you are ready', 'success', 4000);
    }
  }

  private setActiveClass(id: number | null): void {
    this.activeClass = id;
    if (id !== null) this.draft.defaultClassId = id;
    const key = this.current();
    if (key && !this.readOnly && id !== null) {
      const n = this.store.setClass([key], id, 'correct class');
      if (n) toast(`Class → ${this.palette.name(id)}`);
    }
    this.renderPanels();
  }

  undo(): void {
    if (this.readOnly) return;
    if (!this.store.undo()) toast('Nothing to undo');
    this.pruneSelection();
  }

  redo(): void {
    if (this.readOnly) return;
    if (!this.store.redo()) toast('Nothing to redo');
    this.pruneSelection();
  }

  private pruneSelection(): void {
    const gone = this.selection.cells().filter((k) => !this.store.has(k));
    if (gone.length) this.selection.remove(gone);
  }

  // ================================================================ keyboard

  private onKeyDown(e: KeyboardEvent): void {
    if (!this.view || !this.alive || dialogOpen()) return;
    if (isTyping(e)) {
      if (e.key === 'Escape') (e.target as HTMLElement).blur();
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && e.target === this.cellComment) {
        e.preventDefault();
        this.addCellComment();
      }
      return;
    }
    const key = e.key;
    const mod = e.ctrlKey || e.metaKey;
    if (mod) {
      const k = key.toLowerCase();
      if (k === 'z' && !e.shiftKey) this.undo();
      else if ((k === 'z' && e.shiftKey) || k === 'y') this.redo();
      else if (k === 's') void this.saver?.retryNow();
      else if (key === 'Enter') void this.submit();
      else return;
      e.preventDefault();
      return;
    }
    // the draw tool first: Enter / Backspace / Esc while drawing
    if (this.tool?.id === 'draw' && this.tool.onKey?.(e)) {
      e.preventDefault();
      return;
    }
    if (viewKey(e, this.view, this.shell.mapEl)) {
      e.preventDefault();
      return;
    }
    if (e.altKey) return;
    let handled = true;
    const k = key.length === 1 ? key.toLowerCase() : key;
    if (k === 'Tab' || k === 'n') this.goNext(e.shiftKey ? -1 : 1);
    else if (k === 'p') this.goNext(-1);
    else if (k === 'a') this.accept();
    else if (k === 'r' || k === 'Delete' || k === 'Backspace') this.reject();
    else if (k === 'e') this.edit();
    else if (k === 'u') this.resetCurrent();
    else if (k === 'Enter' && this.editingKey) this.setEditing(null);
    else if (k === 'c') this.focusComment();
    else if (k === 'z') {
      const cur = this.current();
      if (cur) this.view.zoomToKeys([cur]);
    } else if (k === 'd') this.setTool('draw');
    else if (k === 'v') this.setTool('select');
    else if (k === 'h') this.toggleCells();
    else if (/^[1-9]$/.test(k)) {
      const c = this.palette.byDigit(Number(k));
      if (c) this.setActiveClass(c.id);
      else handled = false;
    } else if (k === '?') this.showHelp();
    else if (k === 'Escape') {
      if (this.editingKey) this.setEditing(null);
      else if (this.tool?.id !== 'select') this.setTool('select');
      else if (this.selection.size) this.selection.clear();
      else handled = false;
    } else handled = false;
    if (handled) e.preventDefault();
  }

  private cellsVisible = true;
  private toggleCells(): void {
    this.cellsVisible = !this.cellsVisible;
    this.view?.setLayerVisible('cells', this.cellsVisible);
    toast(this.cellsVisible ? 'Contours shown' : 'Contours hidden (H shows them)');
  }

  private focusComment(): void {
    if (this.readOnly) return;
    const el = this.current() && this.draft.cellIdOf(this.current()!) !== null ? this.cellComment : (this.imageCommentsEl.querySelector('textarea') as HTMLTextAreaElement | null);
    el?.focus();
  }

  private addCellComment(): void {
    const key = this.current();
    const text = this.cellComment?.value ?? '';
    if (!key || !text.trim()) return;
    this.draft.addComment(key, text);
    if (this.cellComment) this.cellComment.value = '';
  }

  // ================================================================ submit / navigation

  async submit(): Promise<void> {
    if (!this.saver || this.busy) return;
    if (!this.guard()) return;
    const counts = this.draft.counts();
    let acceptUndecided = false;
    if (counts.undecided) {
      const choice = await new Promise<'go' | 'accept' | null>((resolve) => {
        let result: 'go' | 'accept' | null = null;
        const d = dialog({
          title: `${counts.undecided} cell${counts.undecided === 1 ? ' has' : 's have'} no decision`,
          body: h('p', null, `You decided ${counts.total - counts.undecided} of ${counts.total} cells. Undecided cells can be accepted as they are when you submit.`),
          actions: [
            h('button', { class: 'btn', onclick: () => ((result = 'go'), d.close()) }, 'Go to the first undecided'),
            h('button', { class: 'btn btn-primary', autofocus: true, onclick: () => ((result = 'accept'), d.close()) }, `Accept ${counts.undecided} and submit`),
          ],
          onClose: () => resolve(result),
        });
      });
      if (choice === 'go') {
        this.go(nextKey(this.order, null, 1, (key) => this.draft.isUndecided(key)));
        return;
      }
      if (choice !== 'accept') return;
      acceptUndecided = true;
    } else {
      const ok = await confirmDialog(
        'Submit your review?',
        `${counts.accepted} accepted, ${counts.rejected} rejected, ${counts.edited} edited, ${counts.added} added. A submitted review cannot be changed.`,
        'Submit review',
      );
      if (!ok) return;
    }
    this.busy = true;
    this.submitBtn.disabled = true;
    try {
      if (!(await this.saver.flush())) throw new ApiError(0, 'Your latest decisions could not be saved');
      const res = await this.app.api.submitMyReview(this.imageId, acceptUndecided);
      this.saver.lock();
      this.review = res;
      this.readOnly = true;
      this.readOnlyReason = 'Submitted just now';
      this.setEditing(null);
      this.setTool('select');
      if (this.image) this.image = { ...this.image, status: res.image_status };
      this.draft.load(this.annotation, res);
      this.renderStatus();
      this.renderAll();
      const what =
        res.image_status === 'verified'
          ? 'the image is verified'
          : res.image_status === 'disputed'
            ? 'the experts disagree on some cells: it goes to adjudication'
            : 'waiting for the other experts';
      toast(`Review submitted — ${what}`, 'success', 5000);
      void this.loadOthers();
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) toast(`Not submitted: ${e.fieldMessages()[0] ?? e.detail}`, 'error', 8000);
      else toast(`Could not submit: ${errText(e)}`, 'error');
    } finally {
      this.busy = false;
      this.submitBtn.disabled = this.readOnly;
    }
  }

  private async nextImage(): Promise<void> {
    try {
      const next = await nextFromQueue(this.app.api, this.projectId, ['review'], this.imageId);
      if (next) this.app.navigate(next.route);
      else toast('No other image is waiting for your review', 'success');
    } catch (e) {
      toast(errText(e), 'error');
    }
  }

  // ================================================================ rendering

  private cellStyle(key: string, classId: number | null, state: CellState) {
    const s = this.view!.styles;
    const st = this.draft.stateOf(key);
    const color = REVIEW_COLORS[st];
    const sel = state === 'selected';
    const fillColor = this.palette.color(classId);
    switch (st) {
      case 'undecided':
        return s.outline(color, { dash: [7, 4], fill: 0.08, fillColor, selected: sel, width: 1.8 });
      case 'accepted':
        return s.outline(color, { fill: 0.1, fillColor, selected: sel, width: 1.8 });
      case 'rejected':
        return s.outline(color, { dash: [3, 4], fill: 0.02, selected: sel, width: 1.6, alpha: 0.95 });
      case 'edited':
        return s.outline(color, { fill: 0.14, fillColor, selected: sel, width: 2.2 });
      case 'added':
        return s.outline(color, { fill: 0.16, fillColor, selected: sel, width: 2.2 });
    }
  }

  private buildLayout(): HTMLElement {
    this.crumbProject = h('a', { class: 'crumb', href: routeHash({ name: 'images', projectId: this.projectId }) }, '…');
    this.titleEl = h('span', { class: 'crumb current file' }, `Image ${this.imageId}`);
    this.statusPill = h('span', { class: 'pill pill-neutral' }, '…');
    this.saveEl = h('button', { class: 'save-status save-saved', onclick: () => void this.saver?.retryNow() }, h('span', { class: 'dot' }), h('span', null, 'Loading…'));
    this.undoBtn = h('button', { class: 'icon-btn', title: 'Undo (Ctrl+Z)', disabled: true, onclick: () => this.undo() }, icon('undo'));
    this.redoBtn = h('button', { class: 'icon-btn', title: 'Redo (Ctrl+Shift+Z)', disabled: true, onclick: () => this.redo() }, icon('redo'));
    this.submitBtn = h('button', { class: 'btn btn-primary btn-sm', dataset: { action: 'submit-review' }, onclick: () => void this.submit(), title: 'Submit your review (Ctrl+Enter)' }, icon('send', 15), 'Submit review');
    const top = this.app.topbar(
      [
        h('a', { class: 'crumb', href: '#/projects' }, 'Projects'),
        h('span', { class: 'crumb-sep' }, '/'),
        this.crumbProject,
        h('span', { class: 'crumb-sep' }, '/'),
        this.titleEl,
        h('span', { class: 'badge role-expert' }, 'Review'),
        this.statusPill,
      ],
      [
        this.saveEl,
        h('span', { class: 'divider' }),
        this.undoBtn,
        this.redoBtn,
        h('span', { class: 'divider' }),
        h('button', { class: 'btn btn-sm', onclick: () => void this.nextImage(), title: 'Next image waiting for your review' }, 'Next review', icon('next', 15)),
        this.submitBtn,
        h('button', { class: 'icon-btn', title: 'Keyboard shortcuts (?)', onclick: () => this.showHelp() }, icon('help')),
      ],
    );
    this.shell = buildShell(top, 'review-screen');
    this.shell.panel.classList.add('wide');
    const toolIcon: Record<string, string> = { select: 'select', draw: 'draw' };
    this.shell.toolbar.append(
      ...this.tools.map((t) =>
        h(
          'button',
          { class: 'tool-btn', dataset: { tool: t.id }, title: t.id === 'draw' ? 'Add a missed cell (D)' : 'Select & review (V)', onclick: () => this.setTool(t.id) },
          icon(toolIcon[t.id], 20),
          h('span', { class: 'tool-key' }, t.shortcut),
        ),
      ),
      ...zoomButtons(() => this.view),
    );
    this.progressEl = h('div', { class: 'review-progress' });
    this.currentEl = h('div', { class: 'current-cell' });
    this.imageCommentsEl = h('div', { class: 'comments' });
    this.othersEl = h('div', { class: 'others' });
    this.legendEl = h(
      'div',
      { class: 'legend' },
      (Object.keys(REVIEW_COLORS) as CellReviewState[]).map((s) => h('span', { class: 'legend-item' }, h('i', { class: `legend-line ${s === 'undecided' || s === 'rejected' ? 'dashed' : ''}`, style: { borderColor: REVIEW_COLORS[s] } }), STATE_LABEL[s])),
    );
    this.shell.panel.append(
      section('Progress', this.progressEl),
      section('Current cell', this.currentEl),
      section('Comments on the image', this.imageCommentsEl),
      section('Other experts', this.othersEl),
      section('Legend', this.legendEl),
    );
    return this.shell.root;
  }

  private renderAll(): void {
    this.renderStatus();
    this.renderPanels();
    this.renderHistory();
    this.renderHint();
    if (this.saver) this.renderSave(this.saver.state);
    this.renderOthers();
    this.renderBanner();
    this.submitBtn.disabled = this.readOnly;
    replaceChildren(this.submitBtn, icon(this.review?.status === 'submitted' ? 'check' : 'send', 15), this.review?.status === 'submitted' ? 'Submitted' : 'Submit review');
    for (const b of this.shell.toolbar.querySelectorAll<HTMLButtonElement>('[data-tool="draw"]')) b.disabled = this.readOnly;
  }

  private renderBanner(): void {
    const b = this.shell.banner;
    if (!this.readOnly) {
      b.hidden = true;
      return;
    }
    b.hidden = false;
    replaceChildren(b, icon(this.review?.status === 'submitted' ? 'check' : 'alert', 16), h('span', null, this.review?.status === 'submitted' ? `Your review is submitted (${relTime(this.review.submitted_at)}) — read only` : this.readOnlyReason));
    b.className = `map-banner ${this.review?.status === 'submitted' ? 'good' : 'warn'}`;
  }

  private renderStatus(): void {
    const s = this.image?.status;
    this.statusPill.className = `pill pill-${statusTone(s)}`;
    this.statusPill.textContent = formatStatus(s);
  }

  private renderHistory(): void {
    const st = this.store.history.state();
    this.undoBtn.disabled = this.readOnly || !st.canUndo;
    this.redoBtn.disabled = this.readOnly || !st.canRedo;
    this.undoBtn.title = st.undoLabel ? `Undo ${st.undoLabel} (Ctrl+Z)` : 'Undo (Ctrl+Z)';
    this.redoBtn.title = st.redoLabel ? `Redo ${st.redoLabel} (Ctrl+Shift+Z)` : 'Redo (Ctrl+Shift+Z)';
  }

  private renderHint(): void {
    const el = this.shell.hintEl;
    if (this.readOnly) el.textContent = 'Read only · N / Tab: next cell · F: fit · H: hide contours';
    else if (this.tool?.id === 'draw') el.textContent = 'Add a missed cell: click vertices or drag freehand · Enter or double-click closes · Esc: back to reviewing';
    else if (this.editingKey) el.textContent = 'Editing: drag a vertex or an edge · Alt-click removes a vertex · 1–9: class · Enter / E: done · U: back to the original';
    else replaceChildren(el, 'N / Tab next · ', kbd('A'), ' accept · ', kbd('R'), ' reject · ', kbd('E'), ' edit · ', kbd('D'), ' add a missed cell · ', kbd('C'), ' comment · ', kbd('?'), ' all keys');
  }

  private renderSave(s: DraftSaverState): void {
    let text = '';
    let cls = s.status;
    switch (s.status) {
      case 'saved':
        text = this.draft.version || this.review?.decisions.length ? 'Draft saved' : 'No decision yet';
        break;
      case 'saving':
        text = 'Saving draft…';
        break;
      case 'unsaved':
        text = 'Unsaved decisions';
        break;
      case 'offline':
        text = 'Offline — retrying';
        break;
      case 'error':
        text = 'Draft not saved';
        toast(`Draft not saved: ${s.error?.fieldMessages()[0] ?? s.error?.detail ?? ''}`, 'error', 7000);
        break;
      case 'locked':
        if (this.review?.status === 'submitted') {
          text = 'Review submitted';
          cls = 'saved';
        } else {
          text = 'Read only';
          if (s.error) {
            this.readOnly = true;
            this.readOnlyReason = s.error.detail;
            toast(`Draft not saved: ${s.error.detail}`, 'error', 8000);
            this.renderBanner();
          }
        }
        break;
    }
    this.saveEl.className = `save-status save-${cls === 'locked' ? 'saved' : cls}`;
    replaceChildren(this.saveEl, h('span', { class: 'dot' }), h('span', null, text));
    this.saveEl.title = s.lastSavedAt ? `Saved at ${new Date(s.lastSavedAt).toLocaleTimeString()}` : '';
  }

  private renderPanels(): void {
    if (!this.view) return;
    this.renderProgress();
    this.renderCurrent();
    this.renderImageComments();
  }

  private renderProgress(): void {
    const c = this.draft.counts();
    const decided = c.total - c.undecided;
    const pct = c.total ? Math.round((decided / c.total) * 100) : 100;
    const chip = (state: CellReviewState, n: number) => h('span', { class: 'count-chip', dataset: { state } }, h('i', { class: 'dot', style: { background: REVIEW_COLORS[state] } }), h('b', null, String(n)), ` ${STATE_LABEL[state].toLowerCase()}`);
    replaceChildren(this.progressEl, 
      h('div', { class: 'progress-head' }, h('b', { dataset: { testid: 'decided' } }, `${decided} / ${c.total}`), h('span', { class: 'muted' }, ' cells decided'), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, `${pct}%`)),
      h('div', { class: 'progress-bar' }, h('div', { class: 'progress-fill', style: { width: `${pct}%` } })),
      h('div', { class: 'chips' }, chip('accepted', c.accepted), chip('rejected', c.rejected), chip('edited', c.edited), chip('added', c.added), chip('undecided', c.undecided)),
      this.readOnly
        ? null
        : h(
            'div',
            { class: 'btn-row' },
            h('button', { class: 'btn btn-sm', onclick: () => this.goNext(1), disabled: !c.total }, 'Next undecided', kbd('N')),
            h('button', { class: `btn btn-sm ${this.tool?.id === 'draw' ? 'active' : ''}`, onclick: () => this.setTool('draw') }, icon('draw', 14), 'Add missed cell', kbd('D')),
          ),
    );
  }

  private renderCurrent(): void {
    const key = this.current();
    const el = this.currentEl;
    this.cellComment = null;
    if (!key) {
      replaceChildren(el, h('p', { class: 'muted small' }, 'Press ', kbd('N'), ' or ', kbd('Tab'), ' to go to the next undecided cell, or click a cell.'));
      return;
    }
    const cell = this.store.get(key)!;
    const st = this.draft.stateOf(key);
    const orig = this.draft.original(key);
    const idx = this.order.indexOf(key);
    const title = orig ? `Cell ${idx + 1} of ${this.order.length}` : 'Cell you added';
    const classSel = h(
      'select',
      {
        disabled: this.readOnly,
        onchange: (e: Event) => {
          const v = (e.target as HTMLSelectElement).value;
          if (v) this.setActiveClass(Number(v));
        },
      },
      cell.classId === null ? h('option', { value: '', selected: true }, 'Unclassified') : null,
      this.palette.ordered.map((c) => h('option', { value: String(c.id), selected: cell.classId === c.id }, c.name)),
    );
    const classNote = orig && orig.classId !== cell.classId ? h('div', { class: 'muted small' }, `Annotator: ${this.palette.name(orig.classId)}`) : null;
    const comments = orig ? this.draft.commentsOf(key) : [];
    const ta = orig && !this.readOnly ? h('textarea', { rows: 2, placeholder: 'Comment on this cell… (Ctrl+Enter adds)', maxlength: 2000 }) : null;
    this.cellComment = ta;
    replaceChildren(el, 
      h('div', { class: 'cell-head' }, h('b', null, title), h('span', { class: 'state-pill', style: { color: REVIEW_COLORS[st], borderColor: REVIEW_COLORS[st] } }, STATE_LABEL[st])),
      h('div', { class: 'muted small' }, `${Math.round(area(cell.polygon))} px² · ${cell.polygon.length} vertices${this.editingKey === key ? ' · editing' : ''}`),
      h('label', { class: 'field inline' }, h('span', null, 'Class'), classSel),
      classNote,
      this.readOnly
        ? null
        : h(
            'div',
            { class: 'decision-row' },
            h('button', { class: `btn btn-sm btn-accept ${st === 'accepted' ? 'on' : ''}`, dataset: { action: 'accept' }, onclick: () => this.accept(), disabled: st === 'added' }, icon('check', 15), 'Accept', kbd('A')),
            h('button', { class: `btn btn-sm btn-reject ${st === 'rejected' ? 'on' : ''}`, dataset: { action: 'reject' }, onclick: () => this.reject() }, icon('x', 15), st === 'added' ? 'Remove' : 'Reject', kbd('R')),
            h('button', { class: `btn btn-sm btn-edit ${this.editingKey === key ? 'on' : ''}`, dataset: { action: 'edit' }, onclick: () => this.edit() }, icon('draw', 15), this.editingKey === key ? 'Done' : 'Edit', kbd('E')),
          ),
      !this.readOnly && orig && st !== 'undecided' ? h('button', { class: 'btn btn-ghost btn-sm', onclick: () => this.resetCurrent() }, icon('undo', 14), 'Back to undecided', kbd('U')) : null,
      orig
        ? h(
            'div',
            { class: 'comments' },
            comments.map((c) => this.commentItem(c)),
            ta
              ? h('div', { class: 'comment-form' }, ta, h('button', { class: 'btn btn-sm', onclick: () => this.addCellComment() }, 'Add comment'))
              : null,
          )
        : null,
    );
  }

  private commentItem(c: { cell_id: number | null; text: string; created_at?: string }): HTMLElement {
    return h(
      'div',
      { class: 'comment' },
      h('p', null, c.text),
      h(
        'div',
        { class: 'comment-meta' },
        h('span', { class: 'muted small' }, relTime(c.created_at) || 'draft'),
        this.readOnly
          ? null
          : h(
              'button',
              {
                class: 'link-btn',
                onclick: () => {
                  const found = this.draft.getComments().find((x) => x.text === c.text && x.cell_id === c.cell_id && x.created_at === c.created_at);
                  if (found) this.draft.removeComment(found);
                },
              },
              'Remove',
            ),
      ),
    );
  }

  private renderImageComments(): void {
    const list = this.draft.commentsOf(null);
    const ta = h('textarea', { rows: 2, placeholder: 'A remark on the whole image (focus, stain, missing area…)', maxlength: 2000 });
    const add = () => {
      if (this.draft.addComment(null, ta.value)) ta.value = '';
    };
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        add();
      }
    });
    replaceChildren(this.imageCommentsEl, 
      ...list.map((c) => this.commentItem(c)),
      !list.length && this.readOnly ? h('p', { class: 'muted small' }, 'No comment.') : null,
      this.readOnly ? null : h('div', { class: 'comment-form' }, ta, h('button', { class: 'btn btn-sm', dataset: { action: 'add-image-comment' }, onclick: add }, 'Add comment')),
    );
  }

  private renderOthers(): void {
    const el = this.othersEl;
    if (this.review?.status !== 'submitted') {
      replaceChildren(el, h('p', { class: 'muted small blind-note' }, icon('eyeOff', 14), 'Hidden until you submit your review: each expert reviews independently.'));
      return;
    }
    if (!this.others) {
      replaceChildren(el, h('p', { class: 'muted small' }, 'Loading…'));
      return;
    }
    const mine = this.review.id;
    const others = this.others.reviews.filter((r) => r.id !== mine);
    const waiting = this.others.assignments.filter((a) => a.status === 'assigned' && a.id !== mine);
    replaceChildren(el, 
      ...others.map((r) =>
        h(
          'div',
          { class: 'other-review' },
          h('div', { class: 'cell-head' }, h('span', { class: 'avatar sm' }, r.username.slice(0, 1).toUpperCase()), h('b', null, r.username), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, relTime(r.submitted_at))),
          h('div', { class: 'muted small' }, `${r.counts.accepted} accepted · ${r.counts.rejected} rejected · ${r.counts.edited} edited · ${r.counts.added} added`),
          r.comments.map((c) => h('div', { class: 'comment' }, h('p', null, c.text), h('div', { class: 'muted small' }, c.cell_id ? `on cell ${this.order.indexOf(`s${c.cell_id}`) + 1 || c.cell_id}` : 'on the image'))),
        ),
      ),
      waiting.length ? h('p', { class: 'muted small' }, `Waiting for ${waiting.map((a) => a.username).join(', ')}`) : null,
      !others.length && !waiting.length ? h('p', { class: 'muted small' }, 'No other review in this round.') : null,
    );
  }

  private showHelp(): void {
    if (this.helpDialog) {
      this.helpDialog.close();
      return;
    }
    this.helpDialog = dialog({
      title: 'Review — keyboard shortcuts',
      wide: true,
      body: h(
        'div',
        { class: 'help-grid' },
        h('section', null, h('h4', null, 'Deciding'), helpRow(['N', 'Tab'], 'Next undecided cell'), helpRow(['Shift', 'Tab'], 'Previous cell (also P)'), helpRow(['A'], 'Accept the cell'), helpRow(['R'], 'Reject the cell (an added cell: remove it)'), helpRow(['E'], 'Edit the contour (E or Enter: done)'), helpRow(['U'], 'Back to undecided and the original contour'), helpRow(['1–9'], 'Correct the class')),
        h('section', null, h('h4', null, 'Adding & comments'), helpRow(['D'], 'Draw a missed cell'), helpRow(['V'], 'Back to selecting'), helpRow(['C'], 'Comment on the cell (or the image)'), helpRow(['Ctrl', 'Enter'], 'Add the comment / submit the review'), helpRow(['Ctrl', 'Z'], 'Undo (decisions too)'), helpRow(['Ctrl', 'S'], 'Save the draft now')),
        h('section', null, h('h4', null, 'View'), helpRow(['Z'], 'Zoom to the cell'), helpRow(['F'], 'Fit the image'), helpRow(['H'], 'Hide / show contours'), helpRow(['+', '−'], 'Zoom'), helpRow(['←', '↑', '→', '↓'], 'Pan'), helpRow(['Space', 'Drag'], 'Pan'), helpRow(['?'], 'This help')),
      ),
      onClose: () => (this.helpDialog = null),
    });
  }
}
