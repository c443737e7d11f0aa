/**
 * The expert's review screen: the annotator's cells on the image, a decision
 * per cell (accept / reject / edit), missed cells added, comments on cells or
 * the image; keyboard driven (N/Tab, A, R, E). The draft is autosaved with
 * `PUT images/{id}/reviews/mine`. Blind: other experts' reviews are only asked
 * for once this review is submitted. The side panel is in reviewPanels.ts.
 *
 * With a region (`#/…/review?region=<id>`, a slide's region in review on its own round) the
 * screen opens on the region, outlined, with only the annotation cells inside it, and reads and
 * writes the region's review (`images/{id}/regions/{r}/reviews/mine`).
 */
import { ApiError } from '../core/api';
import { DraftSaver, type DraftSaverState } from '../core/draftSaver';
import { regionCells } from '../core/regions';
import { nextKey, readingOrder, ReviewDraft } from '../core/review';
import { routeHash } from '../core/router';
import type { ApiCell, RegionInfo, Review, ReviewDraftBody, ReviewsOfRound } from '../core/types';
import { createTools, type Tool, type ToolId } from '../tools';
import type { CellState } from '../view/styles';
import type { App } from './app';
import { formatStatus, h, icon, kbd, listen, rafThrottle, replaceChildren, statusTone } from './dom';
import { MapScreen, type HelpContent, type LoadFailure, type MapScreenLayout } from './mapScreen';
import { confirmDialog, dialog, toast } from './overlay';
import { REVIEW_COLORS, ReviewPanels } from './reviewPanels';
import { errText, helpRow, relTime } from './viewer';

export { REVIEW_COLORS };

const TOOL_TITLES: Partial<Record<ToolId, string>> = { draw: 'Add a missed cell (D)', select: 'Select & review (V)' };

export class ReviewScreen extends MapScreen {
  readonly draft = new ReviewDraft(this.store);
  saver: DraftSaver<ReviewDraftBody> | null = null;
  private review: Review | null = null;
  private others: ReviewsOfRound | null = null;
  private annotation: ApiCell[] = [];
  private readOnlyReason = '';
  private editingKey: string | null = null;
  private order: string[] = [];
  private activeClass: number | null = null;
  private toldAllDecided = false;
  private cellsVisible = true;
  private saveEl!: HTMLButtonElement;
  private panels!: ReviewPanels;

  /** The slide's region under review (null: the whole image). */
  private region: RegionInfo | null = null;

  constructor(
    app: App,
    projectId: number,
    imageId: number,
    readonly regionId: number | null = null,
  ) {
    super(app, projectId, imageId, createTools().filter((t) => t.id === 'select' || t.id === 'draw'), 'draw');
  }

  // ================================================================ lifecycle

  protected override stop(): void {
    this.saver?.stop();
    this.draft.dispose();
  }

  async beforeLeave(): Promise<boolean> {
    if (!this.saver || !this.saver.hasUnsaved) return true;
    if (await this.saver.flush()) return true;
    return confirmDialog('Leave with unsaved decisions?', 'Your latest review decisions could not be saved yet. Leaving now loses them.', 'Leave anyway', true);
  }

  // ================================================================ layout and loading

  protected layout(): MapScreenLayout {
    this.panels = new ReviewPanels({
      store: this.store,
      draft: this.draft,
      palette: () => this.palette,
      readOnly: () => this.readOnly,
      current: () => this.current(),
      order: () => this.order,
      editingKey: () => this.editingKey,
      drawing: () => this.tool?.id === 'draw',
      review: () => this.review,
      others: () => this.others,
      goNext: (dir) => this.goNext(dir),
      addMissedCell: () => this.setTool('draw'),
      setActiveClass: (id) => this.setActiveClass(id),
      accept: () => this.accept(),
      reject: () => this.reject(),
      edit: () => this.edit(),
      resetCurrent: () => this.resetCurrent(),
    });
    this.saveEl = h('button', { class: 'save-status save-saved', onclick: () => void this.saver?.retryNow() }, h('span', { class: 'dot' }), h('span', null, 'Loading…'));
    return {
      className: 'review-screen',
      badge: h('span', { class: 'badge role-expert' }, 'Review'),
      actions: [...this.historyControls(this.saveEl), this.nextButton('Next review', 'Next image waiting for your review'), this.submitButton('Submit review', 'Submit your review (Ctrl+Enter)', 'submit-review')],
      panel: this.panels.sections(),
      widePanel: true,
    };
  }

  protected override toolTitle(t: Tool): string {
    return TOOL_TITLES[t.id] ?? super.toolTitle(t);
  }

  protected loadFailure(e: unknown): LoadFailure {
    const notAssigned = e instanceof ApiError && (e.status === 404 || e.status === 403) && this.image;
    return {
      title: notAssigned ? 'No review of yours here' : 'Could not open the review',
      message: notAssigned
        ? `You are not assigned to review this ${this.regionId ? 'region' : 'image'} (or its review round is over).`
        : e instanceof ApiError && e.status === 404
          ? 'This image does not exist or you are not a member of its project.'
          : errText(e),
      actions: [
        h('a', { class: 'btn', href: routeHash({ name: 'images', projectId: this.projectId }) }, 'Back to the images'),
        h('button', { class: 'btn btn-primary', onclick: () => void this.nextImage() }, 'Next review', icon('next', 15)),
      ],
    };
  }

  protected async load(): Promise<void> {
    const api = this.app.api;
    const [project, image] = await Promise.all([api.getProject(this.projectId), api.getImage(this.imageId)]);
    if (!this.alive) return;
    this.image = image;
    this.showHeader(project, image);
    this.renderStatus();
    const regionId = this.regionId;
    let cells: ApiCell[];
    let review: Review;
    if (regionId) {
      const region = await api.getRegion(this.imageId, regionId);
      [cells, review] = await Promise.all([regionCells(api, this.imageId, region), api.myReview(this.imageId, regionId)]);
      this.region = region;
      this.titleEl.textContent = `${image.file_name} / ${region.name}`;
      this.renderStatus();
    } else {
      const [all, mine] = await Promise.all([api.getCells(this.imageId, 'annotation'), api.myReview(this.imageId)]);
      [cells, review] = [all.cells, mine];
    }
    if (!this.alive) return;
    this.annotation = cells;
    this.review = review;
    this.activeClass = this.palette.ordered[0]?.id ?? null;
    this.draft.defaultClassId = this.activeClass;
    this.draft.load(cells, review);
    this.readOnly = review.status !== 'assigned';
    this.readOnlyReason = review.status === 'submitted' ? `Submitted ${relTime(review.submitted_at)}` : review.status === 'cancelled' ? 'This assignment was cancelled' : '';
    const status = this.region ? this.region.status : image.status;
    if (!this.readOnly && status !== 'in_review') {
      this.readOnly = true;
      this.readOnlyReason = `The ${this.region ? 'region' : 'image'} is ${formatStatus(status).toLowerCase()}; reviews are written while it is in review`;
    }

    const view = this.openMap(image, {
      cellStyle: (key, classId, state) => this.cellStyle(key, classId, state),
      canEdit: (key) => !this.readOnly && (key === this.editingKey || this.draft.isAdded(key)),
    });
    if (this.region) {
      view.setRegions([this.region]);
      view.fitBox(this.region.bbox as [number, number, number, number], 0);
      this.shell.mapEl.dataset.region = String(this.region.id);
    }
    this.recomputeOrder();
    this.saver = new DraftSaver({ source: this.draft, save: (body) => api.saveMyReview(this.imageId, body, regionId) });
    if (this.readOnly) this.saver.lock();
    this.begin();
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
      this.others = await this.app.api.reviews(this.imageId, this.review.round, this.regionId);
    } catch (e) {
      this.others = null;
      if (!(e instanceof ApiError && e.status === 403)) toast(`Could not load the other reviews: ${errText(e)}`, 'warn');
    }
    if (this.alive) this.panels.renderOthers();
  }

  // ================================================================ wiring

  protected wire(): void {
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
      this.selection.events.on('change', () => {
        const cur = this.current();
        if (this.editingKey && cur !== this.editingKey) this.setEditing(null);
        refresh();
      }),
      saver.events.on('state', (s) => this.renderSave(s)),
    );
    this.warnBeforeUnload(() => {
      if (!this.saver?.hasUnsaved) return false;
      void this.saver.save();
      return true;
    });
    this.offs.push(listen(window, 'online', () => void this.saver?.retryNow()));
  }

  protected override mayUse(id: ToolId): boolean {
    return id !== 'draw' || !this.readOnly;
  }

  protected toolChanged(): void {
    this.renderHint();
  }

  protected activeClassId(): number | null {
    return this.activeClass;
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

  /** The current cell when a decision may be taken on it (else says why). */
  private decidable(): string | null {
    const key = this.current();
    if (!key) {
      toast('Select a cell first (N or Tab goes to the next one)', 'warn');
      return null;
    }
    return this.guard() ? key : null;
  }

  accept(): void {
    const key = this.decidable();
    if (!key) return;
    // an added cell is accepted by being there
    if (this.draft.isAdded(key)) return void this.goNext();
    this.decide(() => {
      const wasEdited = this.draft.isEdited(key);
      this.draft.accept([key]);
      return wasEdited ? 'Kept your edited contour for this cell (U restores the original)' : null;
    });
  }

  reject(): void {
    const key = this.decidable();
    if (!key) return;
    const added = this.draft.isAdded(key);
    this.decide(() => {
      this.draft.reject([key]);
      return added ? 'Removed the cell you added' : null;
    });
  }

  /** Ends an edit, applies the decision (which may return a note to show), then goes on to the next undecided cell. */
  private decide(apply: () => string | null): void {
    this.setEditing(null);
    const note = apply();
    if (note) toast(note);
    this.advance();
  }

  resetCurrent(): void {
    const key = this.current();
    if (!key || !this.guard()) return;
    this.setEditing(null);
    if (this.draft.reset([key])) toast('Back to the annotator’s contour, undecided');
  }

  edit(): void {
    const key = this.decidable();
    if (!key) return;
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

  // ================================================================ keyboard

  protected override onTypingKey(e: KeyboardEvent): void {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && e.target === this.panels.cellComment) {
      e.preventDefault();
      this.panels.addCellComment();
    }
  }

  protected override onCommandKey(e: KeyboardEvent): boolean {
    if (e.key.toLowerCase() === 's') void this.saver?.retryNow();
    else if (e.key === 'Enter') void this.submit();
    else return super.onCommandKey(e);
    return true;
  }

  protected override step(dir: 1 | -1): void {
    this.goNext(dir);
  }

  protected onKey(e: KeyboardEvent): boolean {
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (k === 'a') this.accept();
    else if (k === 'r' || k === 'Delete' || k === 'Backspace') this.reject();
    else if (k === 'e') this.edit();
    else if (k === 'u') this.resetCurrent();
    else if (k === 'Enter' && this.editingKey) this.setEditing(null);
    else if (k === 'c') this.focusComment();
    else if (k === 'z') {
      const cur = this.current();
      if (cur) this.view?.zoomToKeys([cur]);
    } else if (k === 'd') this.setTool('draw');
    else if (k === 'v') this.setTool('select');
    else if (k === 'h') this.toggleCells();
    else if (/^[1-9]$/.test(k)) {
      const c = this.palette.byDigit(Number(k));
      if (!c) return false;
      this.setActiveClass(c.id);
    } else if (k === 'Escape') {
      if (this.editingKey) this.setEditing(null);
      else if (this.tool?.id !== 'select') this.setTool('select');
      else if (this.selection.size) this.selection.clear();
      else return false;
    } else return false;
    return true;
  }

  private toggleCells(): void {
    this.cellsVisible = !this.cellsVisible;
    this.view?.setLayerVisible('cells', this.cellsVisible);
    toast(this.cellsVisible ? 'Contours shown' : 'Contours hidden (H shows them)');
  }

  private focusComment(): void {
    if (!this.readOnly) this.panels.focusComment();
  }

  // ================================================================ submit / navigation

  protected async submit(): Promise<void> {
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
    const saver = this.saver;
    await this.submitting(async () => {
      try {
        if (!(await saver.flush())) throw new ApiError(0, 'Your latest decisions could not be saved');
        const res = await this.app.api.submitMyReview(this.imageId, acceptUndecided, this.regionId);
        saver.lock();
        this.review = res;
        this.readOnly = true;
        this.readOnlyReason = 'Submitted just now';
        this.setEditing(null);
        this.setTool('select');
        if (this.image) this.image = { ...this.image, status: res.image_status };
        if (this.region && res.region_status) this.region = { ...this.region, status: res.region_status };
        this.draft.load(this.annotation, res);
        this.renderAll();
        const outcome = this.region ? res.region_status : res.image_status;
        const what =
          outcome === 'verified'
            ? `the ${this.region ? 'region' : 'image'} is verified`
            : outcome === 'disputed'
              ? 'the experts disagree on some cells: it goes to adjudication'
              : 'waiting for the other experts';
        toast(`Review submitted — ${what}`, 'success', 5000);
        void this.loadOthers();
      } catch (e) {
        if (e instanceof ApiError && e.status === 400) toast(`Not submitted: ${e.fieldMessages()[0] ?? e.detail}`, 'error', 8000);
        else toast(`Could not submit: ${errText(e)}`, 'error');
      }
    });
  }

  /** The status shown in the header: the region's when the review is of one region of a slide. */
  protected override renderStatus(): void {
    super.renderStatus();
    if (!this.region) return;
    this.statusPill.className = `pill pill-${statusTone(this.region.status)}`;
    this.statusPill.textContent = `Region ${formatStatus(this.region.status).toLowerCase()}`;
  }

  protected nextImage(): Promise<void> {
    return this.nextInQueue('review', 'No other image is waiting for your review', this.regionId);
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

  protected renderAll(): void {
    this.renderStatus();
    this.renderPanels();
    this.renderHistory();
    this.renderHint();
    if (this.saver) this.renderSave(this.saver.state);
    this.panels.renderOthers();
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
    if (this.view) this.panels.render();
  }

  protected help(): HelpContent {
    return {
      title: 'Review — keyboard shortcuts',
      sections: [
        h('section', null, h('h4', null, 'Deciding'), helpRow(['N', 'Tab'], 'Next undecided cell'), helpRow(['Shift', 'Tab'], 'Previous cell (also P)'), helpRow(['A'], 'Accept the cell'), helpRow(['R'], 'Reject the cell (an added cell: remove it)'), helpRow(['E'], 'Edit the contour (E or Enter: done)'), helpRow(['U'], 'Back to undecided and the original contour'), helpRow(['1–9'], 'Correct the class')),
        h('section', null, h('h4', null, 'Adding & comments'), helpRow(['D'], 'Draw a missed cell'), helpRow(['V'], 'Back to selecting'), helpRow(['C'], 'Comment on the cell (or the image)'), helpRow(['Ctrl', 'Enter'], 'Add the comment / submit the review'), helpRow(['Ctrl', 'Z'], 'Undo (decisions too)'), helpRow(['Ctrl', 'S'], 'Save the draft now')),
        h('section', null, h('h4', null, 'View'), helpRow(['Z'], 'Zoom to the cell'), helpRow(['F'], 'Fit the image'), helpRow(['H'], 'Hide / show contours'), helpRow(['+', '−'], 'Zoom'), helpRow(['←', '↑', '→', '↓'], 'Pan'), helpRow(['Space', 'Drag'], 'Pan'), helpRow(['?'], 'This help')),
      ],
    };
  }
}
