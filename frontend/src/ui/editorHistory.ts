/**
 * The editor's History section: every revision of the annotation layer with its
 * author, time and what it changed; selecting one previews it on the map (read
 * only, outside the store and the undo history, under a "Preview of revision N"
 * banner); "Restore this revision" (after confirming) makes it the current layer
 * as a new revision; Escape or "Back to current" ends the preview. Wording and
 * the comparison with the current cells in core/revisions.ts.
 */
import { ApiError, conflictState, type ApiClient } from '../core/api';
import type { AutosaveController } from '../core/autosave';
import { previewDiff, previewSentence, revisionRows } from '../core/revisions';
import type { AnnotationStore } from '../core/store';
import type { HistoryEntry, Ring } from '../core/types';
import type { EditorMap } from '../view/editorMap';
import { boxesMeet, ringBox, type Box } from '../core/store';
import type { CellsResponse } from '../core/types';
import { h, icon } from './dom';
import { confirmDialog, toast } from './overlay';
import { errText, relTime, section } from './viewer';

export interface HistoryHost {
  readonly api: ApiClient;
  readonly imageId: number;
  readonly store: AnnotationStore;
  map(): EditorMap | null;
  autosave(): AutosaveController | null;
  /** The image is locked: previews, but no restore. */
  readOnly(): boolean;
  /** The banner over the map during a preview (null: the preview ended); the editor locks editing meanwhile. */
  showPreview(banner: HTMLElement | null): void;
  /** Shows a layer the server answered whole (a restore, a 409); default: the store loads it. */
  loadLayer?(resp: CellsResponse): void;
  /** A slide: the box [x0, y0, x1, y1] a preview shows (the store holds only the cells near the view). */
  previewBox?(): Box | null;
}

export class HistoryPanel {
  private readonly listEl = h('div', { class: 'history-list' });
  private entries: HistoryEntry[] | null = null;
  private listening = false;
  /** The layer's revision when the list was drawn. */
  private shownRevision = -1;
  private loading = false;
  private previewRevision: number | null = null;
  private busy = false;

  constructor(private readonly host: HistoryHost) {}

  section(): HTMLElement {
    this.render();
    return section(['History', h('button', { class: 'icon-btn panel-sub history-refresh', dataset: { action: 'history-refresh' }, title: 'Load the revisions again', 'aria-label': 'Reload the history', onclick: () => void this.load() }, icon('refresh', 13))], this.listEl);
  }

  get previewing(): boolean {
    return this.previewRevision !== null;
  }

  async load(): Promise<void> {
    if (this.loading) return;
    this.loading = true;
    this.render();
    try {
      const page = await this.host.api.getHistory(this.host.imageId);
      this.entries = page.results;
      if (!this.listening) {
        // a save makes a new revision: the list says so, and which one is current
        this.host.store.events.on('state', () => this.host.store.revision !== this.shownRevision && this.render());
        this.listening = true;
      }
    } catch (e) {
      toast(`History not loaded: ${errText(e)}`, 'error');
    } finally {
      this.loading = false;
      this.render();
    }
  }

  private render(): void {
    if (this.entries === null) {
      this.listEl.replaceChildren(
        h('button', { class: 'btn btn-sm', dataset: { action: 'history-show' }, disabled: this.loading, onclick: () => void this.load() }, icon('undo', 14), this.loading ? 'Loading…' : 'Show the revisions'),
      );
      return;
    }
    const current = this.host.store.revision;
    this.shownRevision = current;
    const rows = revisionRows(this.entries, current);
    const newer = current > (rows[0]?.revision ?? 0);
    if (!rows.length && !newer) {
      this.listEl.replaceChildren(h('p', { class: 'muted small' }, 'Nothing saved yet: the first save is revision 1.'));
      return;
    }
    this.listEl.replaceChildren(
      h(
        'ol',
        { class: 'revisions', 'aria-label': 'Revisions, newest first' },
        rows.map((r) =>
          h(
            'li',
            null,
            h(
              'button',
              {
                class: `revision ${r.current ? 'current' : ''} ${this.previewRevision === r.revision ? 'previewing' : ''}`,
                dataset: { revision: String(r.revision) },
                'aria-pressed': this.previewRevision === r.revision ? 'true' : 'false',
                title: r.current ? 'The current revision' : `Preview revision ${r.revision} on the map`,
                onclick: () => void (r.current || this.previewRevision === r.revision ? this.closePreview() : this.preview(r.revision)),
              },
              h('span', { class: 'revision-head' }, h('b', null, `#${r.revision}`), ' ', r.title, r.current ? h('span', { class: 'pill current-pill' }, 'current') : null),
              h('span', { class: 'muted small' }, `${r.author} · ${relTime(r.createdAt)}`),
              h('span', { class: 'small revision-summary' }, r.summary),
            ),
          ),
        ),
      ),
      ...(newer ? [h('button', { class: 'btn btn-sm btn-ghost history-newer', dataset: { action: 'history-newer' }, onclick: () => void this.load() }, icon('refresh', 13), `Revision ${current} saved since: show it`)] : []),
      ...(rows.length >= 50 ? [h('p', { class: 'muted small' }, 'The 50 newest revisions.')] : []),
    );
  }

  /** Shows revision `revision` on the map instead of the current cells (nothing is written). */
  async preview(revision: number): Promise<void> {
    const map = this.host.map();
    if (!map || this.busy) return;
    this.busy = true;
    try {
      const box = this.host.previewBox?.() ?? null;
      const state = await this.host.api.getRevision(this.host.imageId, revision, box ?? undefined);
      const now = [...this.host.store.all()]
        .filter((c) => !box || boxesMeet(ringBox(c.polygon), box))
        .map((c) => ({ id: this.host.store.serverIdOf(c.key), class_id: c.classId, polygon: c.polygon }));
      const sentence = previewSentence(revision, previewDiff(state.cells, now));
      map.setPreview(state.cells.map((c) => ({ classId: c.class_id, polygon: c.polygon as Ring })));
      this.previewRevision = revision;
      const canRestore = !this.host.readOnly();
      this.host.showPreview(
        h(
          'div',
          { class: 'preview-banner', dataset: { preview: String(revision) } },
          icon('eye', 16),
          h('span', { class: 'preview-text' }, sentence),
          canRestore ? h('button', { class: 'btn btn-sm btn-primary', dataset: { action: 'restore-revision' }, onclick: () => void this.restore(revision) }, 'Restore this revision') : null,
          h('button', { class: 'btn btn-sm', dataset: { action: 'close-preview' }, title: 'Back to the current revision (Esc)', onclick: () => this.closePreview() }, 'Back to current', h('kbd', null, 'Esc')),
        ),
      );
    } catch (e) {
      toast(`Revision ${revision} could not be shown: ${errText(e)}`, 'error');
    } finally {
      this.busy = false;
      this.render();
    }
  }

  closePreview(): void {
    if (this.previewRevision === null) return;
    this.previewRevision = null;
    this.host.map()?.setPreview(null);
    this.host.showPreview(null);
    this.render();
  }

  private async restore(revision: number): Promise<void> {
    const store = this.host.store;
    const ok = await confirmDialog(
      `Restore revision ${revision}?`,
      `The cells become exactly what they were at revision ${revision}, saved as a new revision. Nothing is lost: the current revision (${store.revision}) stays in the history and can be restored in turn.`,
      'Restore this revision',
    );
    if (!ok || this.busy) return;
    this.busy = true;
    const autosave = this.host.autosave();
    try {
      if (autosave && autosave.hasUnsaved && !(await autosave.flush())) {
        toast('Your latest changes are not saved yet: the revision was not restored.', 'error', 7000);
        return;
      }
      const call = () => this.host.api.restoreRevision(this.host.imageId, revision, store.revision);
      const resp = autosave ? await autosave.exclusive(call) : await call();
      this.closePreview();
      if (this.host.loadLayer) this.host.loadLayer(resp);
      else store.load(resp);
      toast(`Revision ${revision} restored (now revision ${resp.revision})`, 'success', 4000);
    } catch (e) {
      const c = e instanceof ApiError ? conflictState(e) : null;
      if (c) {
        this.closePreview();
        if (this.host.loadLayer) this.host.loadLayer(c);
        else store.load(c);
        toast('The image was saved elsewhere meanwhile: its latest cells are shown now. Choose the revision again to restore it.', 'error', 8000);
      } else toast(`Not restored: ${errText(e)}`, 'error', 7000);
    } finally {
      this.busy = false;
      await this.load();
    }
  }
}
