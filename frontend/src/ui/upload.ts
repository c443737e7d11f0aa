/**
 * Image upload panel of the image list (project admins): a drop zone (many files, or the file
 * picker), the metadata the upload accepts, then one request per file so that every file has
 * its own progress bar and its own error (core/upload.ts).
 */
import { ApiError } from '../core/api';
import { batchErrors, batches, duplicatesInSelection, fileSha256, formatBytes, METADATA_LABELS, totalsText, uploadFiles, uploadItems, uploadTotals, type UploadItem, type UploadMetadata } from '../core/upload';
import { BETHESDA, SPLITS } from '../core/types';
import { h, icon } from './dom';
import { toast } from './overlay';

const SPLIT_LABEL: Record<string, string> = { train: 'Train', validation: 'Validation', test: 'Test' };
const STATE_LABEL: Record<UploadItem['state'], string> = { waiting: 'Waiting', uploading: 'Uploading', done: 'Uploaded', failed: 'Refused' };

export class UploadPanel {
  readonly el: HTMLElement;
  private items: UploadItem[] = [];
  private files: File[] = [];
  private rows = new Map<number, HTMLElement>();
  private list: HTMLElement;
  private totals: HTMLElement;
  private uploadBtn: HTMLButtonElement;
  private clearBtn: HTMLButtonElement;
  private input: HTMLInputElement;
  private fieldErrors: HTMLElement;
  private meta: Record<keyof UploadMetadata, HTMLInputElement | HTMLSelectElement>;
  private busy = false;
  private hashes = new Map<number, string | null>();
  private hashing: Promise<unknown> = Promise.resolve();
  private abort: AbortController | null = null;

  constructor(
    private readonly projectId: number,
    private readonly onUploaded: (count: number) => void,
    private readonly onClose: () => void,
  ) {
    this.input = h('input', { type: 'file', multiple: true, accept: 'image/*,.tif,.tiff,.svs,.ndpi,.scn,.bif,.vmu', hidden: true, name: 'files', onchange: () => this.add([...(this.input.files ?? [])]) });
    const drop = h(
      'div',
      // no aria-label: the visible text names the button (axe: label-content-name-mismatch)
      { class: 'dropzone', tabindex: '0', role: 'button', dataset: { drop: 'images' }, onclick: () => this.input.click(), onkeydown: (e: KeyboardEvent) => (e.key === 'Enter' || e.key === ' ') && (e.preventDefault(), this.input.click()) },
      icon('image', 28),
      h('div', null, h('b', null, 'Drop image files here'), h('span', { class: 'muted' }, ' or '), h('span', { class: 'link' }, 'choose files')),
      h('div', { class: 'muted small' }, 'PNG, JPEG or TIFF; many at once. Every file is checked by the server; a refused file is named below with the reason.'),
    );
    const over = (on: boolean) => (e: DragEvent) => {
      e.preventDefault();
      drop.classList.toggle('over', on);
    };
    drop.addEventListener('dragenter', over(true));
    drop.addEventListener('dragover', over(true));
    drop.addEventListener('dragleave', over(false));
    drop.addEventListener('drop', (e: DragEvent) => {
      over(false)(e);
      const files = [...(e.dataTransfer?.files ?? [])];
      if (files.length) this.add(files);
    });
    const text = (name: keyof UploadMetadata, placeholder: string) => h('input', { name, type: 'text', placeholder, maxlength: '100' });
    this.meta = {
      bethesda: h('select', { name: 'bethesda' }, h('option', { value: '' }, 'Not set'), BETHESDA.map((b) => h('option', { value: b }, `Bethesda ${b}`))),
      stain: text('stain', 'Diff-Quik'),
      magnification: text('magnification', 'e.g. 40x'),
      slide_code: text('slide_code', 'e.g. S-2024-117'),
      split: h('select', { name: 'split' }, h('option', { value: '' }, 'Automatic (from the image)'), SPLITS.map((s) => h('option', { value: s }, SPLIT_LABEL[s] ?? s))),
    };
    const field = (k: keyof UploadMetadata) => h('label', { class: 'field' }, h('span', null, METADATA_LABELS[k]), this.meta[k], h('span', { class: 'field-error', dataset: { error: k }, hidden: true }));
    this.fieldErrors = h('div', { class: 'upload-fields' }, field('bethesda'), field('stain'), field('magnification'), field('slide_code'), field('split'));
    this.list = h('ul', { class: 'upload-files' });
    this.totals = h('div', { class: 'upload-totals', hidden: true });
    this.uploadBtn = h('button', { class: 'btn btn-primary', dataset: { action: 'upload' }, disabled: true, onclick: () => void this.upload() }, icon('cloud', 16), 'Upload');
    this.clearBtn = h('button', { class: 'btn', dataset: { action: 'clear-upload' }, disabled: true, onclick: () => this.clear() }, 'Clear list');
    this.el = h(
      'section',
      { class: 'card upload-panel', 'aria-label': 'Upload images' },
      h('div', { class: 'panel-head' }, h('h2', null, icon('cloud', 18), 'Upload images'), h('span', { class: 'grow' }), h('button', { class: 'icon-btn', title: 'Close', 'aria-label': 'Close upload', onclick: () => this.close() }, icon('x'))),
      drop,
      this.input,
      h('p', { class: 'muted small' }, 'These details apply to every file of this upload; the split, left automatic, is drawn from each image’s content.'),
      this.fieldErrors,
      this.totals,
      this.list,
      h('div', { class: 'btn-row' }, this.uploadBtn, this.clearBtn),
    );
  }

  private close(): void {
    if (this.busy && !window.confirm('Stop the upload? Files not yet sent are not uploaded.')) return;
    this.abort?.abort();
    this.onClose();
  }

  destroy(): void {
    this.abort?.abort();
  }

  /** Adds files to the list (a file already listed, same name and size and not refused, is skipped). */
  add(files: File[]): void {
    const fresh = files.filter((f) => !this.items.some((it) => it.name === f.name && it.size === f.size && it.state !== 'failed'));
    const skipped = files.length - fresh.length;
    if (skipped) toast(`${skipped} file${skipped === 1 ? ' is' : 's are'} already in the list`, 'info');
    const items = uploadItems(fresh, this.files.length);
    this.files.push(...fresh);
    this.items.push(...items);
    for (const it of items) {
      const row = this.row(it);
      this.rows.set(it.index, row);
      this.list.append(row);
    }
    this.input.value = '';
    this.refresh();
    // the same bytes twice in this selection: named before anything is sent
    const hashing = Promise.all(items.map(async (it) => this.hashes.set(it.index, await fileSha256(this.files[it.index]))));
    this.hashing = Promise.all([this.hashing, hashing]);
    void hashing.then(() => this.markDuplicates());
  }

  private markDuplicates(): void {
    const dups = duplicatesInSelection(this.items.map((it) => ({ name: it.name, sha256: this.hashes.get(it.index) ?? null })));
    for (const [i, original] of dups) {
      const it = this.items[i];
      if (it.state !== 'waiting' || (this.busy && it.loaded)) continue;
      const uploaded = this.items.some((o) => o.name === original && o.state === 'done');
      Object.assign(it, { state: 'failed', error: `Duplicate of '${original}'${uploaded ? ', uploaded from this list' : ' in this selection'} — not sent.` });
      this.update(it);
    }
    this.refresh();
  }

  private remove(it: UploadItem): void {
    if (this.busy) return;
    this.items = this.items.filter((x) => x !== it);
    this.rows.get(it.index)?.remove();
    this.rows.delete(it.index);
    this.refresh();
  }

  private clear(): void {
    if (this.busy) return;
    this.items = [];
    this.rows.clear(); // (the files stay behind their indices: a hash still being computed lands on its own)
    this.list.replaceChildren();
    this.refresh();
  }

  private row(it: UploadItem): HTMLElement {
    const li = h('li', { class: 'upload-file', dataset: { file: it.name, state: it.state } });
    this.paintRow(li, it);
    return li;
  }

  private paintRow(li: HTMLElement, it: UploadItem): void {
    li.dataset.state = it.state;
    const pct = it.state === 'done' ? 100 : it.size ? Math.round((100 * Math.min(it.loaded, it.size)) / it.size) : 0;
    const error = it.error ? h('div', { class: 'upload-error', dataset: { error: 'file' }, role: 'alert' }, it.error) : null;
    li.replaceChildren(
      h('span', { class: 'upload-name', title: it.name }, icon(it.state === 'done' ? 'check' : it.state === 'failed' ? 'alert' : 'image', 14), it.name),
      h('span', { class: 'muted small upload-size' }, formatBytes(it.size)),
      h('div', { class: 'progress-bar upload-bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(pct), 'aria-label': `Upload of ${it.name}` }, h('div', { class: `progress-fill ${it.state === 'uploading' ? 'live' : ''} ${it.state === 'failed' ? 'bad' : ''}`, style: { width: `${it.state === 'failed' ? 100 : pct}%` } })),
      h('span', { class: `upload-state pill pill-${it.state === 'done' ? 'good' : it.state === 'failed' ? 'bad' : it.state === 'uploading' ? 'active' : 'neutral'}` }, it.state === 'uploading' ? `${pct}%` : STATE_LABEL[it.state]),
    );
    if (!this.busy && it.state !== 'done' && it.state !== 'uploading')
      li.insertBefore(h('button', { class: 'icon-btn upload-remove', title: `Remove ${it.name} from the list`, 'aria-label': `Remove ${it.name} from the list`, dataset: { action: 'remove-file' }, onclick: () => this.remove(it) }, icon('x', 14)), li.children[4] ?? null);
    else li.insertBefore(h('span'), li.children[4] ?? null);
    if (error) li.append(error);
  }

  private update(it: UploadItem): void {
    const li = this.rows.get(it.index);
    if (li) this.paintRow(li, it);
  }

  private refresh(): void {
    const pending = this.items.filter((it) => it.state === 'waiting' || it.state === 'failed').length;
    this.uploadBtn.disabled = this.busy || !pending;
    const waiting = this.items.filter((it) => it.state === 'waiting').length;
    this.uploadBtn.lastChild!.textContent = this.busy ? 'Uploading…' : waiting ? `Upload ${waiting} file${waiting === 1 ? '' : 's'}` : pending ? 'Try the refused files again' : 'Upload';
    this.clearBtn.disabled = this.busy || !this.items.length;
    const t = uploadTotals(this.items);
    this.totals.hidden = !this.items.length || (!this.busy && t.waiting === t.total);
    this.totals.replaceChildren(
      h('div', { class: 'progress-head' }, h('b', null, totalsText(t)), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, `${Math.round(t.fraction * 100)}%`)),
      h('div', { class: 'progress-bar', role: 'progressbar', 'aria-valuenow': String(Math.round(t.fraction * 100)), 'aria-label': 'Upload progress' }, h('div', { class: `progress-fill ${this.busy ? 'live' : ''}`, style: { width: `${Math.round(t.fraction * 100)}%` } })),
    );
  }

  private showFieldErrors(fields: Partial<Record<keyof UploadMetadata, string>>): void {
    for (const el of this.fieldErrors.querySelectorAll<HTMLElement>('[data-error]')) {
      const msg = fields[el.dataset.error as keyof UploadMetadata];
      el.hidden = !msg;
      el.textContent = msg ?? '';
    }
  }

  private metadata(): UploadMetadata {
    const m: UploadMetadata = {};
    for (const [k, el] of Object.entries(this.meta)) m[k as keyof UploadMetadata] = el.value;
    return m;
  }

  private async upload(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    this.abort = new AbortController();
    this.showFieldErrors({});
    // refused files are tried again (after a fix of the metadata, or a removed duplicate)
    for (const it of this.items) if (it.state === 'failed') Object.assign(it, { state: 'waiting', error: null, loaded: 0 }), this.update(it);
    await this.hashing;
    this.markDuplicates();
    const todo = this.items.filter((it) => it.state === 'waiting');
    for (const it of todo) this.update(it);
    this.refresh();
    let stored = 0;
    let stop = false;
    const metadata = this.metadata();
    for (const planned of batches(todo, 1)) {
      if (stop || this.abort.signal.aborted) break;
      const batch = planned.filter((it) => it.state === 'waiting');
      if (!batch.length) continue;
      for (const it of batch) (it.state = 'uploading'), this.update(it);
      this.refresh();
      try {
        const size = batch.reduce((n, it) => n + it.size, 0);
        const images = await uploadFiles({
          projectId: this.projectId,
          files: batch.map((it) => this.files[it.index]),
          metadata,
          signal: this.abort.signal,
          onProgress: (loaded, total) => {
            // the request body is a little larger than the files: share the bytes out in order
            let left = total ? (loaded / total) * size : loaded;
            for (const it of batch) {
              it.loaded = Math.min(it.size, Math.max(0, left));
              left -= it.size;
              this.update(it);
            }
            this.refresh();
          },
        });
        batch.forEach((it, i) => Object.assign(it, { state: 'done', loaded: it.size, image: images[i] ?? null }));
        stored += images.length;
      } catch (e) {
        if ((e as Error)?.name === 'AbortError') break;
        const errs = batchErrors(e, batch.map((it) => it.name));
        batch.forEach((it, i) => Object.assign(it, { state: 'failed', error: errs.files.get(i) ?? (errs.general || 'Refused by the server.') }));
        if (Object.keys(errs.fields).length) {
          // the metadata is wrong for every file: stop and say which field
          this.showFieldErrors(errs.fields);
          for (const it of batch) it.error = 'Not stored: the details above were refused.';
          stop = true;
        } else if (e instanceof ApiError && (e.status === 403 || e.status === 401)) stop = true;
      }
      for (const it of batch) this.update(it);
      this.refresh();
    }
    this.busy = false;
    this.abort = null;
    for (const it of this.items) this.update(it);
    this.refresh();
    const failed = this.items.filter((it) => it.state === 'failed').length;
    if (stored) this.onUploaded(stored);
    if (failed) toast(failed === 1 ? '1 file was refused — the reason is next to it' : `${failed} files were refused — the reasons are next to each file`, 'error');
    else if (stored) toast(`${stored} image${stored === 1 ? '' : 's'} uploaded`, 'success');
  }
}
