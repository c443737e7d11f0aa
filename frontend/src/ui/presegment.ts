/**
 * Pre-segmentation from the image list: the project run (admins) with a model version, a
 * progress bar with ETA and every image's status and failure reason (polling the image list),
 * and the run for one image (a dialog from its card). Logic in core/presegment.ts.
 */
import { ApiError, type ApiClient } from '../core/api';
import { formatEta, isLocked, presegmentLabel, progressText, refusalSentence, RunTracker, statusesFromLists, versionChoices, type VersionChoice } from '../core/presegment';
import type { ImageInfo } from '../core/types';
import { h, icon } from './dom';
import { dialog, toast } from './overlay';

const POLL_MS = 1500;
const TONE: Record<string, string> = { queued: 'neutral', running: 'active', done: 'good', failed: 'bad' };

/** All the project's images (pages of 500), optionally of one pre-segmentation status. */
async function allImages(api: ApiClient, projectId: number, presegmentStatus?: string): Promise<ImageInfo[]> {
  const out: ImageInfo[] = [];
  for (let page = 1; page < 100; page++) {
    const res = await api.listImages(projectId, { page, page_size: 500, ...(presegmentStatus ? { presegment_status: presegmentStatus } : {}) });
    out.push(...res.results);
    if (!res.next) break;
  }
  return out;
}

/** The model versions to offer (only the default when the registry is not ours to read). */
async function loadChoices(api: ApiClient, projectId: number, canTrain: boolean): Promise<VersionChoice[]> {
  if (!canTrain) return versionChoices(null);
  try {
    return versionChoices(await api.registry(projectId));
  } catch {
    return versionChoices(null);
  }
}

function versionSelect(choices: VersionChoice[]): HTMLSelectElement {
  return h('select', { name: 'model_version' }, choices.map((c) => h('option', { value: c.id == null ? '' : String(c.id) }, c.label)));
}

export class PresegmentPanel {
  readonly el: HTMLElement;
  private select: HTMLSelectElement;
  private runBtn: HTMLButtonElement;
  private message: HTMLElement;
  private progress: HTMLElement;
  private table: HTMLElement;
  private tracker: RunTracker | null = null;
  private names = new Map<number, string>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private alive = true;
  private lastFinished = -1;

  constructor(
    private readonly api: ApiClient,
    private readonly projectId: number,
    private readonly onChange: () => void,
    private readonly onClose: () => void,
  ) {
    this.select = versionSelect(versionChoices(null));
    this.runBtn = h('button', { class: 'btn btn-primary', dataset: { action: 'presegment-project' }, onclick: () => void this.run() }, icon('sparkles', 16), 'Pre-segment all images');
    this.message = h('div', { class: 'presegment-message', role: 'alert', hidden: true });
    this.progress = h('div', { class: 'presegment-progress', hidden: true });
    this.table = h('div', { class: 'presegment-images' });
    this.el = h(
      'section',
      { class: 'card presegment-panel', 'aria-label': 'Pre-segmentation' },
      h('div', { class: 'panel-head' }, h('h2', null, icon('sparkles', 18), 'Pre-segmentation'), h('span', { class: 'grow' }), h('button', { class: 'icon-btn', title: 'Close', 'aria-label': 'Close pre-segmentation', onclick: () => this.onClose() }, icon('x'))),
      h('p', { class: 'muted small' }, 'The model proposes cell outlines on every image that is not locked for review (submitted, in review, disputed, in adjudication or verified images are skipped). Run it again after a better model is trained.'),
      h('div', { class: 'presegment-form' }, h('label', { class: 'field' }, h('span', null, 'Model version'), this.select), this.runBtn),
      this.message,
      this.progress,
      this.table,
    );
  }

  async mount(canTrain: boolean): Promise<void> {
    const choices = await loadChoices(this.api, this.projectId, canTrain);
    if (!this.alive) return;
    const selected = this.select.value;
    this.select.replaceChildren(...versionSelect(choices).children);
    this.select.value = selected;
    // a run already under way (started here before, or by someone else): follow it
    try {
      const [queued, running] = await Promise.all([allImages(this.api, this.projectId, 'queued'), allImages(this.api, this.projectId, 'running')]);
      if (!this.alive || this.tracker || !(queued.length + running.length)) return;
      this.follow([...running, ...queued], Date.now());
    } catch {
      /* the panel still starts runs */
    }
  }

  destroy(): void {
    this.alive = false;
    if (this.timer) clearTimeout(this.timer);
  }

  private say(text: string, tone: 'bad' | 'good' | 'muted'): void {
    this.message.hidden = !text;
    this.message.className = `presegment-message ${tone}`;
    this.message.textContent = text;
  }

  private async run(): Promise<void> {
    const version = this.select.value ? Number(this.select.value) : null;
    this.runBtn.disabled = true;
    this.say('', 'muted');
    try {
      const started = Date.now();
      const res = await this.api.presegmentProject(this.projectId, version);
      if (!this.alive) return;
      if (!res.queued) {
        this.say('Nothing to pre-segment: every image of the project is locked for review.', 'muted');
        return;
      }
      const images = (await allImages(this.api, this.projectId)).filter((img) => !isLocked(img.status));
      if (!this.alive) return;
      this.follow(images, started);
      this.onChange();
    } catch (e) {
      this.say(refusalSentence(e, 'project'), 'bad');
    } finally {
      this.runBtn.disabled = false;
    }
  }

  private follow(images: ImageInfo[], started: number): void {
    this.tracker = new RunTracker(
      images.map((i) => i.id),
      started,
    );
    for (const img of images) this.names.set(img.id, img.file_name);
    this.tracker.update(images);
    this.paint();
    this.schedule();
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.poll(), POLL_MS);
  }

  private async poll(): Promise<void> {
    if (!this.alive || !this.tracker) return;
    try {
      // one after the other, in the order an image moves, so that none is missed on its way
      const queued = await allImages(this.api, this.projectId, 'queued');
      const running = await allImages(this.api, this.projectId, 'running');
      const failed = await allImages(this.api, this.projectId, 'failed');
      this.tracker.update(statusesFromLists(this.tracker.ids, { queued, running, failed }));
    } catch {
      /* offline a moment: the next poll catches up */
    }
    if (!this.alive) return;
    const p = this.tracker.progress(Date.now());
    this.paint();
    const changed = p.finished !== this.lastFinished;
    this.lastFinished = p.finished;
    if (p.complete) {
      this.onChange();
      if (p.failed) toast(`Pre-segmentation finished: ${p.failed} of ${p.total} image${p.total === 1 ? '' : 's'} failed`, 'error');
      else toast(`Pre-segmentation finished: ${p.total} image${p.total === 1 ? '' : 's'}`, 'success');
    } else {
      if (changed) this.onChange(); // the cards show each image's state too
      this.schedule();
    }
  }

  private paint(): void {
    const t = this.tracker;
    if (!t) return;
    const p = t.progress(Date.now());
    const pct = Math.round(p.fraction * 100);
    this.progress.hidden = false;
    this.progress.dataset.complete = String(p.complete);
    this.progress.replaceChildren(
      h('div', { class: 'progress-head' }, h('b', { class: 'presegment-counts' }, progressText(p)), h('span', { class: 'grow' }), h('span', { class: 'muted small presegment-eta' }, p.complete ? (p.failed ? `finished, ${p.failed} failed` : 'finished') : formatEta(p.eta))),
      h('div', { class: 'progress-bar big', role: 'progressbar', 'aria-valuenow': String(pct), 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': 'Pre-segmentation progress' }, h('div', { class: `progress-fill ${p.complete ? '' : 'live'}`, style: { width: `${pct}%` } })),
    );
    // failures first, then running, queued, done
    const order: Record<string, number> = { failed: 0, running: 1, queued: 2, done: 3 };
    const rows = t.ids.map((id) => ({ id, name: this.names.get(id) ?? `Image ${id}`, ...t.status(id)! })).sort((a, b) => (order[a.status] ?? 2) - (order[b.status] ?? 2) || a.name.localeCompare(b.name));
    this.table.replaceChildren(
      h(
        'table',
        { class: 'table presegment-table' },
        h('thead', null, h('tr', null, h('th', null, 'Image'), h('th', null, 'Status'), h('th', null, 'Reason'))),
        h(
          'tbody',
          null,
          rows.map((r) =>
            h(
              'tr',
              { dataset: { image: r.name, status: r.status } },
              h('td', null, h('a', { href: `#/projects/${this.projectId}/images/${r.id}` }, r.name)),
              h('td', null, h('span', { class: `pill pill-${TONE[r.status] ?? 'neutral'}` }, presegmentLabel(r.status))),
              h('td', { class: r.error ? 'presegment-error' : 'muted' }, r.error || (r.status === 'failed' ? 'No reason given.' : '')),
            ),
          ),
        ),
      ),
    );
  }
}

/** Pre-segment one image again (any member who may annotate), with a choice of model version. */
export async function presegmentImageDialog(api: ApiClient, img: ImageInfo, canTrain: boolean, onQueued: () => void): Promise<void> {
  const select = versionSelect(versionChoices(null));
  const error = h('p', { class: 'form-error', dataset: { error: 'presegment' }, role: 'alert', hidden: true });
  const run = h('button', { class: 'btn btn-primary', dataset: { action: 'presegment-image' }, autofocus: true }, icon('sparkles', 16), 'Pre-segment');
  const status = img.presegment_status && img.presegment_status !== 'none' ? `Last run: ${presegmentLabel(img.presegment_status)}${img.presegment_model_label ? ` (${img.presegment_model_label})` : ''}${img.presegment_error ? ` — ${img.presegment_error}` : ''}.` : 'Not pre-segmented yet.';
  const d = dialog({
    title: `Pre-segment ${img.file_name}`,
    className: 'presegment-dialog',
    body: [h('p', { class: 'muted' }, status), h('label', { class: 'field' }, h('span', null, 'Model version'), select), h('p', { class: 'muted small' }, 'A new run replaces the proposals this model version made before; cells already drawn or accepted stay.'), error],
    actions: [h('button', { class: 'btn', onclick: () => d.close() }, 'Cancel'), run],
  });
  run.onclick = async () => {
    run.disabled = true;
    error.hidden = true;
    try {
      await api.presegmentImage(img.id, select.value ? Number(select.value) : null);
      d.close();
      toast(`${img.file_name}: pre-segmentation queued`, 'success');
      onQueued();
    } catch (e) {
      error.textContent = refusalSentence(e, 'image');
      error.hidden = false;
      run.disabled = false;
      if (e instanceof ApiError && e.status === 409) onQueued(); // the list shows why (locked)
    }
  };
  const choices = await loadChoices(api, img.project, canTrain);
  const chosen = select.value;
  select.replaceChildren(...versionSelect(choices).children);
  select.value = chosen;
}
