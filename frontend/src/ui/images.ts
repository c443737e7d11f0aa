import { ApiError } from '../core/api';
import { firstRunSteps, showFirstRun } from '../core/firstRun';
import { loadFilters, saveFilters, type StoredFilters } from '../core/navigation';
import { nextFromQueue, preferredKinds, queueReason, queueRoute, QUEUE_LABELS } from '../core/queue';
import { routeHash } from '../core/router';
import { presegmentNote } from '../core/training';
import { BETHESDA, IMAGE_STATUSES, SPLITS, type ImageInfo, type Project, type QueueKind, type WorkQueue } from '../core/types';
import type { App, Screen } from './app';
import { append, formatStatus, h, icon, statusTone } from './dom';
import { toast } from './overlay';
import { isLocked } from '../core/presegment';
import { PresegmentPanel, presegmentImageDialog } from './presegment';
import { UploadPanel } from './upload';

const PAGE_SIZE = 48;
const DEFAULT_STATUS: string[] = IMAGE_STATUSES;
const DEFAULT_SPLIT: string[] = [...SPLITS];
const DEFAULT_BETHESDA: string[] = [...BETHESDA];
const SPLIT_LABEL: Record<string, string> = { train: 'Train', validation: 'Validation', test: 'Test' };

export class ImagesScreen implements Screen {
  private alive = true;
  private filters: StoredFilters;
  private page = 1;
  private project: Project | null = null;
  private seen = { status: new Set<string>(), split: new Set<string>(), bethesda: new Set<string>() };
  private grid!: HTMLElement;
  private pager!: HTMLElement;
  private filterBar!: HTMLElement;
  private title!: HTMLElement;
  private crumb!: HTMLElement;
  private searchTimer: ReturnType<typeof setTimeout> | null = null;
  private loadSeq = 0;
  private queueEl!: HTMLElement;
  private projectLoad: Promise<Project> | null = null;
  private adminLink!: HTMLElement;
  private tools!: HTMLElement;
  private toolButtons!: HTMLElement;
  private upload: UploadPanel | null = null;
  private presegment: PresegmentPanel | null = null;

  constructor(
    private readonly app: App,
    private readonly projectId: number,
  ) {
    this.filters = loadFilters(projectId);
  }

  async mount(root: HTMLElement): Promise<void> {
    this.crumb = h('span', { class: 'crumb current' }, '…');
    this.title = h('h1', null, 'Images');
    this.grid = h('div', { class: 'image-grid' });
    this.pager = h('div', { class: 'pager' });
    this.filterBar = h('div', { class: 'filters' });
    this.queueEl = h('div', { class: 'queue', hidden: true });
    this.tools = h('div', { class: 'image-tools' });
    this.toolButtons = h(
      'span',
      { class: 'image-tool-buttons', hidden: true },
      h('button', { class: 'btn', dataset: { action: 'open-upload' }, onclick: () => this.toggleUpload(), title: 'Upload image files to this project' }, icon('cloud', 16), 'Upload images'),
      h('button', { class: 'btn', dataset: { action: 'open-presegment' }, onclick: () => this.togglePresegment(), title: 'Run the model on the project’s images' }, icon('sparkles', 16), 'Pre-segment'),
    );
    this.adminLink = h('a', { class: 'btn', hidden: true, href: routeHash({ name: 'admin', projectId: this.projectId, tab: 'training' }) }, icon('layers', 16), 'Administration');
    root.append(
      this.app.topbar([h('a', { class: 'crumb', href: '#/projects' }, 'Projects'), h('span', { class: 'crumb-sep' }, '/'), this.crumb]),
      h(
        'main',
        { class: 'page' },
        h(
          'div',
          { class: 'page-head' },
          this.title,
          h('span', { class: 'grow' }),
          this.toolButtons,
          this.adminLink,
          h('button', { class: 'btn btn-primary', dataset: { action: 'next-image' }, onclick: () => void this.openNext(), title: 'Open the next image of your work queue' }, 'Next image', icon('next', 16)),
        ),
        this.tools,
        this.queueEl,
        this.filterBar,
        this.grid,
        this.pager,
      ),
    );
    this.renderFilters();
    try {
      this.projectLoad = this.app.api.getProject(this.projectId);
      this.project = await this.projectLoad;
      if (!this.alive) return;
      this.crumb.textContent = this.project.name;
      this.title.textContent = this.project.name;
      this.adminLink.hidden = !this.isAdmin();
      this.toolButtons.hidden = !this.isAdmin();
      void this.loadQueue();
    } catch (e) {
      if (!this.alive) return;
      this.grid.replaceChildren(this.errorBox(e));
      return;
    }
    await this.load();
  }

  private toggleUpload(): void {
    if (this.upload) {
      this.upload.destroy();
      this.upload.el.remove();
      this.upload = null;
      return;
    }
    this.upload = new UploadPanel(
      this.projectId,
      () => void this.load(),
      () => this.toggleUpload(),
    );
    this.tools.prepend(this.upload.el);
  }

  private togglePresegment(): void {
    if (this.presegment) {
      this.presegment.destroy();
      this.presegment.el.remove();
      this.presegment = null;
      return;
    }
    this.presegment = new PresegmentPanel(
      this.app.api,
      this.projectId,
      () => void this.load(),
      () => this.togglePresegment(),
    );
    this.tools.append(this.presegment.el);
    void this.presegment.mount(this.isAdmin());
  }

  private errorBox(e: unknown): HTMLElement {
    const msg = e instanceof ApiError ? (e.status === 404 ? 'This project does not exist or you are not a member.' : e.detail) : String(e);
    return h('div', { class: 'empty error' }, h('h3', null, 'Could not load'), h('p', null, msg));
  }

  private query() {
    return { status: this.filters.status, split: this.filters.split, bethesda: this.filters.bethesda, search: this.filters.search };
  }

  private async load(): Promise<void> {
    const seq = ++this.loadSeq;
    this.grid.classList.add('is-loading');
    if (!this.grid.childElementCount) this.grid.append(h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading images…'));
    try {
      const res = await this.app.api.listImages(this.projectId, { ...this.query(), page: this.page, page_size: PAGE_SIZE });
      if (!this.alive || seq !== this.loadSeq) return;
      for (const img of res.results) {
        if (img.status) this.seen.status.add(img.status);
        if (img.split) this.seen.split.add(img.split);
        if (img.bethesda) this.seen.bethesda.add(img.bethesda);
      }
      this.renderFilters();
      this.grid.classList.remove('is-loading');
      this.grid.replaceChildren(
        ...(res.results.length
          ? res.results.map((img) => this.card(img))
          : showFirstRun(res.count, this.hasFilters())
            ? [this.firstRun()]
            : [h('div', { class: 'empty' }, h('h3', null, 'No image matches these filters'), h('p', { class: 'muted' }, 'Widen the status, split or Bethesda filters, or clear the search.'))]),
      );
      const from = res.count ? (this.page - 1) * PAGE_SIZE + 1 : 0;
      const to = (this.page - 1) * PAGE_SIZE + res.results.length;
      this.pager.replaceChildren(
        h('span', { class: 'muted' }, `${from}–${to} of ${res.count}`),
        h('button', { class: 'btn btn-sm', disabled: !res.previous, onclick: () => this.goPage(this.page - 1) }, 'Previous'),
        h('button', { class: 'btn btn-sm', disabled: !res.next, onclick: () => this.goPage(this.page + 1) }, 'Next'),
      );
    } catch (e) {
      if (!this.alive || seq !== this.loadSeq) return;
      this.grid.classList.remove('is-loading');
      this.grid.replaceChildren(this.errorBox(e));
    }
  }

  private goPage(p: number): void {
    this.page = Math.max(1, p);
    void this.load();
    window.scrollTo({ top: 0 });
  }

  /** A new project: the steps to a first verified image, each with where it is done (core/firstRun.ts). */
  private firstRun(): HTMLElement {
    const steps = firstRunSteps({ projectId: this.projectId, role: this.role(), classes: this.project?.classes ?? [], images: 0 });
    return h(
      'section',
      { class: 'empty first-run card pad', 'aria-labelledby': 'first-run-title', dataset: { testid: 'first-run' } },
      h('h3', { id: 'first-run-title' }, 'Get started with this project'),
      h('p', { class: 'muted' }, 'No images yet. Five steps lead to the first verified image:'),
      h(
        'ol',
        { class: 'first-run-steps' },
        steps.map((st) =>
          h(
            'li',
            { class: st.done ? 'done' : '', dataset: { step: st.id } },
            h('div', null, h('b', null, st.title), st.done ? h('span', { class: 'pill pill-good' }, 'Done') : null),
            h('p', { class: 'muted small' }, st.text),
            st.action?.open
              ? h('button', { type: 'button', class: 'btn btn-sm', dataset: { action: `first-run-${st.action.open}` }, onclick: () => (st.action?.open === 'upload' ? this.upload || this.toggleUpload() : this.presegment || this.togglePresegment()) }, st.action.label)
              : st.action?.href
                ? h('a', { class: 'btn btn-sm', href: st.action.href }, st.action.label)
                : null,
          ),
        ),
      ),
    );
  }

  private hasFilters(): boolean {
    return !!(this.filters.status || this.filters.split || this.filters.bethesda || this.filters.search);
  }

  private setFilter(k: keyof StoredFilters, v: string): void {
    this.filters = { ...this.filters, [k]: v || undefined };
    saveFilters(this.projectId, this.filters);
    this.page = 1;
    void this.load();
  }

  private renderFilters(): void {
    const select = (k: 'status' | 'split' | 'bethesda', label: string, defaults: string[], fmt: (s: string) => string = (s) => s) => {
      const values = [...new Set([...defaults, ...this.seen[k], ...(this.filters[k] ? [this.filters[k]!] : [])])];
      return h(
        'label',
        { class: 'filter' },
        h('span', null, label),
        h(
          'select',
          { onchange: (e: Event) => this.setFilter(k, (e.target as HTMLSelectElement).value) },
          h('option', { value: '' }, 'All'),
          values.map((v) => h('option', { value: v, selected: this.filters[k] === v }, fmt(v))),
        ),
      );
    };
    const active = document.activeElement;
    if (active && this.filterBar.contains(active) && active.tagName === 'INPUT') return; // don't steal focus while typing
    this.filterBar.replaceChildren();
    append(this.filterBar, [
      h(
        'label',
        { class: 'filter search' },
        icon('search', 16),
        h('input', {
          type: 'search',
          placeholder: 'Search file name or slide…',
          value: this.filters.search ?? '',
          oninput: (e: Event) => {
            const v = (e.target as HTMLInputElement).value;
            if (this.searchTimer) clearTimeout(this.searchTimer);
            this.searchTimer = setTimeout(() => this.setFilter('search', v.trim()), 300);
          },
        }),
      ),
      select('status', 'Status', DEFAULT_STATUS, formatStatus),
      select('split', 'Split', DEFAULT_SPLIT, (v) => SPLIT_LABEL[v] ?? v),
      select('bethesda', 'Bethesda', DEFAULT_BETHESDA, (v) => `Bethesda ${v}`),
      this.hasFilters()
        ? h(
            'button',
            {
              class: 'btn btn-ghost btn-sm',
              onclick: () => {
                this.filters = {};
                saveFilters(this.projectId, {});
                this.page = 1;
                this.renderFilters();
                void this.load();
              },
            },
            'Clear filters',
          )
        : null,
    ]);
  }

  private card(img: ImageInfo): HTMLElement {
    const thumb = img.thumbnail_url ?? this.app.api.imageFileUrl(img.id, 'thumbnail');
    return h(
      'a',
      { class: 'card image-card', href: `#/projects/${this.projectId}/images/${img.id}` },
      h('div', { class: 'thumb' }, h('img', { src: thumb, alt: img.file_name, loading: 'lazy', decoding: 'async' }), h('span', { class: `pill pill-${statusTone(img.status)} thumb-status` }, formatStatus(img.status))),
      h(
        'div',
        { class: 'image-card-body' },
        h('div', { class: 'file-name', title: img.file_name }, img.file_name),
        h(
          'div',
          { class: 'meta' },
          img.bethesda ? h('span', { class: 'tag', title: 'Bethesda category' }, `Bethesda ${img.bethesda}`) : null,
          img.split ? h('span', { class: 'tag' }, SPLIT_LABEL[img.split] ?? img.split) : null,
          h('span', { class: 'grow' }),
          h('span', { class: 'muted', title: 'Cells' }, `${img.cell_count} cells`),
        ),
        this.cardAction(img),
        this.tilesLine(img),
        this.presegmentLine(img),
        this.presegmentButton(img),
      ),
    );
  }

  /** A large image or slide whose tile pyramid is still being built, or failed (with why). */
  private tilesLine(img: ImageInfo): HTMLElement | null {
    if (!img.tiled || img.tile_status === 'done') return null;
    const failed = img.tile_status === 'failed';
    const text = failed ? `Slide tiles failed: ${img.tile_error}` : 'Slide: building its tiles…';
    return h('div', { class: `meta small presegment-note ${failed ? 'bad' : 'muted'}`, dataset: { tiles: img.tile_status ?? '' } }, icon(failed ? 'alert' : 'sparkles', 14), text);
  }

  /** Pre-segmentation in progress, failed, or done without a single proposal (a warning). */
  private presegmentLine(img: ImageInfo): HTMLElement | null {
    const note = presegmentNote(img);
    if (!note || (img.presegment_status === 'done' && note.tone === 'muted')) return null;
    return h('div', { class: `meta small presegment-note ${note.tone}`, dataset: { presegment: img.presegment_status ?? '' } }, icon(note.tone === 'muted' ? 'sparkles' : 'alert', 14), `Model: ${note.text}`);
  }

  /** Run the model again on this image (not while it is locked for review). */
  private presegmentButton(img: ImageInfo): HTMLElement | null {
    if (isLocked(img.status) || !this.role()) return null;
    const go = (e: Event) => {
      e.preventDefault();
      e.stopPropagation();
      void presegmentImageDialog(this.app.api, img, this.isAdmin(), () => void this.load());
    };
    return h('span', { class: 'card-action presegment', role: 'button', tabindex: '0', title: 'Pre-segment this image with a model', dataset: { action: 'presegment-image' }, onclick: go, onkeydown: (e: KeyboardEvent) => e.key === 'Enter' && go(e) }, icon('sparkles', 14), img.presegment_status && img.presegment_status !== 'none' ? 'Pre-segment again' : 'Pre-segment');
  }

  private role(): string | null {
    return this.app.user?.is_superuser ? 'admin' : (this.project?.my_role ?? null);
  }

  private isAdmin(): boolean {
    return this.role() === 'admin';
  }

  /** Review / adjudicate shortcut on a card (the card itself opens the editor). */
  private cardAction(img: ImageInfo): HTMLElement | null {
    const role = this.role();
    let kind: QueueKind | null = null;
    if (img.status === 'in_review' && (role === 'expert' || role === 'admin')) kind = 'review';
    if ((img.status === 'disputed' || img.status === 'adjudication') && role === 'admin') kind = 'adjudicate';
    if (!kind) return null;
    const go = (e: Event) => {
      e.preventDefault();
      e.stopPropagation();
      this.app.navigate(queueRoute(this.projectId, kind, img.id));
    };
    return h('span', { class: `card-action ${kind}`, role: 'link', tabindex: '0', onclick: go, onkeydown: (e: KeyboardEvent) => e.key === 'Enter' && go(e) }, icon(kind === 'review' ? 'check' : 'layers', 14), kind === 'review' ? 'Review' : 'Adjudicate');
  }

  private async loadQueue(): Promise<void> {
    let q: WorkQueue;
    try {
      q = await this.app.api.queue(this.projectId, 5);
    } catch {
      return; // the queue is a convenience; the list still works
    }
    if (!this.alive) return;
    const role = this.role();
    const kinds: QueueKind[] = role === 'admin' ? ['annotate', 'review', 'adjudicate', 'assign'] : role === 'expert' ? ['annotate', 'review'] : ['annotate'];
    this.queueEl.hidden = false;
    this.queueEl.replaceChildren(
      ...kinds.map((kind) => {
        const sec = q[kind];
        const first = sec.images[0];
        const label = QUEUE_LABELS[kind];
        const body = [
          h('div', { class: 'queue-count' }, String(sec.count)),
          h('div', { class: 'queue-text' }, h('b', null, label.title), h('span', { class: 'muted small' }, first ? `Next: ${first.file_name}${first.region_name ? ` / ${first.region_name}` : ''}` : label.empty), first ? h('span', { class: 'queue-reason small', dataset: { reason: first.reason }, title: `Why this image comes next: ${queueReason(first)}` }, `Why: ${queueReason(first)}`) : null),
          first ? h('span', { class: 'queue-go' }, icon('next', 16)) : null,
        ];
        return first
          ? h('a', { class: 'queue-card card', href: routeHash(queueRoute(this.projectId, kind, first.id, first.region)), title: label.verb, dataset: { queue: kind } }, body)
          : h('div', { class: 'queue-card card empty-q', dataset: { queue: kind } }, body);
      }),
    );
  }

  private async openNext(): Promise<void> {
    try {
      if (!this.project && this.projectLoad) await this.projectLoad; // the role decides which queue comes first
      const next = await nextFromQueue(this.app.api, this.projectId, preferredKinds(this.role() as never));
      if (next) this.app.navigate(next.route);
      else toast('Nothing is waiting for you in this project', 'success');
    } catch (e) {
      toast(e instanceof ApiError ? e.detail : String(e), 'error');
    }
  }

  unmount(): void {
    this.alive = false;
    this.upload?.destroy();
    this.presegment?.destroy();
    if (this.searchTimer) clearTimeout(this.searchTimer);
  }
}
