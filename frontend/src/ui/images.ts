import { ApiError } from '../core/api';
import { isFinishedStatus, loadFilters, saveFilters, type StoredFilters } from '../core/navigation';
import type { ImageInfo, Project } from '../core/types';
import type { App, Screen } from './app';
import { append, formatStatus, h, icon, statusTone } from './dom';
import { toast } from './overlay';

const PAGE_SIZE = 48;
const DEFAULT_STATUS = ['new', 'in_progress', 'submitted', 'in_review', 'verified'];
const DEFAULT_SPLIT = ['train', 'val', 'test'];
const DEFAULT_BETHESDA = ['I', 'II', 'III', 'IV', 'V', 'VI'];

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
          h('button', { class: 'btn btn-primary', onclick: () => void this.openNext(), title: 'Open the first unfinished image of this list' }, 'Next image', icon('next', 16)),
        ),
        this.filterBar,
        this.grid,
        this.pager,
      ),
    );
    this.renderFilters();
    try {
      this.project = await this.app.api.getProject(this.projectId);
      if (!this.alive) return;
      this.crumb.textContent = this.project.name;
      this.title.textContent = this.project.name;
    } catch (e) {
      if (!this.alive) return;
      this.grid.replaceChildren(this.errorBox(e));
      return;
    }
    await this.load();
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
          : [h('div', { class: 'empty' }, h('h3', null, 'No images'), h('p', { class: 'muted' }, this.hasFilters() ? 'No image matches these filters.' : 'This project has no images yet.'))]),
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
      select('split', 'Split', DEFAULT_SPLIT),
      select('bethesda', 'Bethesda', DEFAULT_BETHESDA),
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
          img.split ? h('span', { class: 'tag' }, img.split) : null,
          h('span', { class: 'grow' }),
          h('span', { class: 'muted', title: 'Cells' }, `${img.cell_count} cells`),
        ),
        img.presegment_status && !/done|success|complete|none/i.test(img.presegment_status)
          ? h('div', { class: 'meta small muted' }, icon('sparkles', 14), `Model: ${formatStatus(img.presegment_status)}`)
          : null,
      ),
    );
  }

  private async openNext(): Promise<void> {
    try {
      for (let page = 1; page <= 50; page++) {
        const res = await this.app.api.listImages(this.projectId, { ...this.query(), page, page_size: 100 });
        const img = res.results.find((i) => !isFinishedStatus(i.status));
        if (img) {
          this.app.navigate(`#/projects/${this.projectId}/images/${img.id}`);
          return;
        }
        if (!res.next) break;
      }
      toast('Every image in this list is done', 'success');
    } catch (e) {
      toast(e instanceof ApiError ? e.detail : String(e), 'error');
    }
  }

  unmount(): void {
    this.alive = false;
    if (this.searchTimer) clearTimeout(this.searchTimer);
  }
}
