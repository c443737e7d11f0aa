/**
 * The review screen's side panel: progress, the current cell (decision
 * buttons, class, comments), comments on the image, the other experts'
 * reviews (only once this one is submitted: blind review) and the legend.
 * Renders from the review draft; every action goes back to the screen through
 * {@link ReviewPanelHost}.
 */
import type { ClassPalette } from '../core/classes';
import { area } from '../core/geometry';
import type { CellReviewState, ReviewDraft } from '../core/review';
import type { AnnotationStore } from '../core/store';
import type { Review, ReviewsOfRound } from '../core/types';
import { h, icon, kbd, replaceChildren } from './dom';
import { relTime, section } from './viewer';

export const REVIEW_COLORS: Record<CellReviewState, string> = {
  undecided: '#fbbf24',
  accepted: '#34d399',
  rejected: '#f87171',
  edited: '#38bdf8',
  added: '#e879f9',
};
const STATE_LABEL: Record<CellReviewState, string> = { undecided: 'Undecided', accepted: 'Accepted', rejected: 'Rejected', edited: 'Edited', added: 'Added' };

export interface ReviewPanelHost {
  readonly store: AnnotationStore;
  readonly draft: ReviewDraft;
  palette(): ClassPalette;
  readOnly(): boolean;
  /** The single selected cell. */
  current(): string | null;
  /** Reading order of the annotator's cells. */
  order(): string[];
  editingKey(): string | null;
  drawing(): boolean;
  review(): Review | null;
  others(): ReviewsOfRound | null;
  goNext(dir: 1 | -1): void;
  addMissedCell(): void;
  setActiveClass(id: number): void;
  accept(): void;
  reject(): void;
  edit(): void;
  resetCurrent(): void;
}

type Comment = { cell_id?: number | null; text: string; created_at?: string };

export class ReviewPanels {
  /** The comment field of the current cell (Ctrl+Enter adds the comment). */
  cellComment: HTMLTextAreaElement | null = null;
  private readonly progressEl = h('div', { class: 'review-progress' });
  private readonly currentEl = h('div', { class: 'current-cell' });
  private readonly imageCommentsEl = h('div', { class: 'comments' });
  private readonly othersEl = h('div', { class: 'others' });

  constructor(private readonly host: ReviewPanelHost) {}

  sections(): HTMLElement[] {
    const legend = h(
      'div',
      { class: 'legend' },
      (Object.keys(REVIEW_COLORS) as CellReviewState[]).map((s) => h('span', { class: 'legend-item' }, h('i', { class: `legend-line ${s === 'undecided' || s === 'rejected' ? 'dashed' : ''}`, style: { borderColor: REVIEW_COLORS[s] } }), STATE_LABEL[s])),
    );
    return [
      section('Progress', this.progressEl),
      section('Current cell', this.currentEl),
      section('Comments on the image', this.imageCommentsEl),
      section('Other experts', this.othersEl),
      section('Legend', legend),
    ];
  }

  render(): void {
    this.renderProgress();
    this.renderCurrent();
    this.renderImageComments();
  }

  /** Focuses the comment field of the current cell, else the one of the image. */
  focusComment(): void {
    const cur = this.host.current();
    const el = cur && this.host.draft.cellIdOf(cur) !== null ? this.cellComment : (this.imageCommentsEl.querySelector('textarea') as HTMLTextAreaElement | null);
    el?.focus();
  }

  addCellComment(): void {
    const key = this.host.current();
    const text = this.cellComment?.value ?? '';
    if (!key || !text.trim()) return;
    this.host.draft.addComment(key, text);
    if (this.cellComment) this.cellComment.value = '';
  }

  private renderProgress(): void {
    const c = this.host.draft.counts();
    const decided = c.total - c.undecided;
    const pct = c.total ? Math.round((decided / c.total) * 100) : 100;
    const chip = (state: CellReviewState, n: number) => h('span', { class: 'count-chip', dataset: { state } }, h('i', { class: 'dot', style: { background: REVIEW_COLORS[state] } }), h('b', null, String(n)), ` ${STATE_LABEL[state].toLowerCase()}`);
    replaceChildren(
      this.progressEl,
      h('div', { class: 'progress-head' }, h('b', { dataset: { testid: 'decided' } }, `${decided} / ${c.total}`), h('span', { class: 'muted' }, ' cells decided'), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, `${pct}%`)),
      h('div', { class: 'progress-bar' }, h('div', { class: 'progress-fill', style: { width: `${pct}%` } })),
      h('div', { class: 'chips' }, chip('accepted', c.accepted), chip('rejected', c.rejected), chip('edited', c.edited), chip('added', c.added), chip('undecided', c.undecided)),
      this.host.readOnly()
        ? null
        : h(
            'div',
            { class: 'btn-row' },
            h('button', { class: 'btn btn-sm', onclick: () => this.host.goNext(1), disabled: !c.total }, 'Next undecided', kbd('N')),
            h('button', { class: `btn btn-sm ${this.host.drawing() ? 'active' : ''}`, onclick: () => this.host.addMissedCell() }, icon('draw', 14), 'Add missed cell', kbd('D')),
          ),
    );
  }

  private renderCurrent(): void {
    const { store, draft } = this.host;
    const palette = this.host.palette();
    const readOnly = this.host.readOnly();
    const editing = this.host.editingKey();
    const order = this.host.order();
    const key = this.host.current();
    const el = this.currentEl;
    this.cellComment = null;
    if (!key) {
      replaceChildren(el, h('p', { class: 'muted small' }, 'Press ', kbd('N'), ' or ', kbd('Tab'), ' to go to the next undecided cell, or click a cell.'));
      return;
    }
    const cell = store.get(key)!;
    const st = draft.stateOf(key);
    const orig = draft.original(key);
    const idx = order.indexOf(key);
    const title = orig ? `Cell ${idx + 1} of ${order.length}` : 'Cell you added';
    const classSel = h(
      'select',
      {
        disabled: readOnly,
        onchange: (e: Event) => {
          const v = (e.target as HTMLSelectElement).value;
          if (v) this.host.setActiveClass(Number(v));
        },
      },
      cell.classId === null ? h('option', { value: '', selected: true }, 'Unclassified') : null,
      palette.ordered.map((c) => h('option', { value: String(c.id), selected: cell.classId === c.id }, c.name)),
    );
    const classNote = orig && orig.classId !== cell.classId ? h('div', { class: 'muted small' }, `Annotator: ${palette.name(orig.classId)}`) : null;
    const comments = orig ? draft.commentsOf(key) : [];
    const ta = orig && !readOnly ? h('textarea', { rows: 2, placeholder: 'Comment on this cell… (Ctrl+Enter adds)', maxlength: 2000 }) : null;
    this.cellComment = ta;
    replaceChildren(
      el,
      h('div', { class: 'cell-head' }, h('b', null, title), h('span', { class: 'state-pill', style: { color: REVIEW_COLORS[st], borderColor: REVIEW_COLORS[st] } }, STATE_LABEL[st])),
      h('div', { class: 'muted small' }, `${Math.round(area(cell.polygon))} px² · ${cell.polygon.length} vertices${editing === key ? ' · editing' : ''}`),
      h('label', { class: 'field inline' }, h('span', null, 'Class'), classSel),
      classNote,
      readOnly
        ? null
        : h(
            'div',
            { class: 'decision-row' },
            h('button', { class: `btn btn-sm btn-accept ${st === 'accepted' ? 'on' : ''}`, dataset: { action: 'accept' }, onclick: () => this.host.accept(), disabled: st === 'added' }, icon('check', 15), 'Accept', kbd('A')),
            h('button', { class: `btn btn-sm btn-reject ${st === 'rejected' ? 'on' : ''}`, dataset: { action: 'reject' }, onclick: () => this.host.reject() }, icon('x', 15), st === 'added' ? 'Remove' : 'Reject', kbd('R')),
            h('button', { class: `btn btn-sm btn-edit ${editing === key ? 'on' : ''}`, dataset: { action: 'edit' }, onclick: () => this.host.edit() }, icon('draw', 15), editing === key ? 'Done' : 'Edit', kbd('E')),
          ),
      !readOnly && orig && st !== 'undecided' ? h('button', { class: 'btn btn-ghost btn-sm', onclick: () => this.host.resetCurrent() }, icon('undo', 14), 'Back to undecided', kbd('U')) : null,
      orig
        ? h(
            'div',
            { class: 'comments' },
            comments.map((c) => this.commentItem(c)),
            ta ? h('div', { class: 'comment-form' }, ta, h('button', { class: 'btn btn-sm', onclick: () => this.addCellComment() }, 'Add comment')) : null,
          )
        : null,
    );
  }

  private commentItem(c: Comment): HTMLElement {
    const draft = this.host.draft;
    return h(
      'div',
      { class: 'comment' },
      h('p', null, c.text),
      h(
        'div',
        { class: 'comment-meta' },
        h('span', { class: 'muted small' }, relTime(c.created_at) || 'draft'),
        this.host.readOnly()
          ? null
          : h(
              'button',
              {
                class: 'link-btn',
                onclick: () => {
                  const found = draft.getComments().find((x) => x.text === c.text && x.cell_id === c.cell_id && x.created_at === c.created_at);
                  if (found) draft.removeComment(found);
                },
              },
              'Remove',
            ),
      ),
    );
  }

  private renderImageComments(): void {
    const draft = this.host.draft;
    const readOnly = this.host.readOnly();
    const list = draft.commentsOf(null);
    const ta = h('textarea', { rows: 2, placeholder: 'A remark on the whole image (focus, stain, missing area…)', maxlength: 2000 });
    const add = () => {
      if (draft.addComment(null, ta.value)) ta.value = '';
    };
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        add();
      }
    });
    replaceChildren(
      this.imageCommentsEl,
      ...list.map((c) => this.commentItem(c)),
      !list.length && readOnly ? h('p', { class: 'muted small' }, 'No comment.') : null,
      readOnly ? null : h('div', { class: 'comment-form' }, ta, h('button', { class: 'btn btn-sm', dataset: { action: 'add-image-comment' }, onclick: add }, 'Add comment')),
    );
  }

  renderOthers(): void {
    const el = this.othersEl;
    const review = this.host.review();
    const all = this.host.others();
    if (review?.status !== 'submitted') {
      replaceChildren(el, h('p', { class: 'muted small blind-note' }, icon('eyeOff', 14), 'Hidden until you submit your review: each expert reviews independently.'));
      return;
    }
    if (!all) {
      replaceChildren(el, h('p', { class: 'muted small' }, 'Loading…'));
      return;
    }
    const order = this.host.order();
    const mine = review.id;
    const others = all.reviews.filter((r) => r.id !== mine);
    const waiting = all.assignments.filter((a) => a.status === 'assigned' && a.id !== mine);
    replaceChildren(
      el,
      ...others.map((r) =>
        h(
          'div',
          { class: 'other-review' },
          h('div', { class: 'cell-head' }, h('span', { class: 'avatar sm' }, r.username.slice(0, 1).toUpperCase()), h('b', null, r.username), h('span', { class: 'grow' }), h('span', { class: 'muted small' }, relTime(r.submitted_at))),
          h('div', { class: 'muted small' }, `${r.counts.accepted} accepted · ${r.counts.rejected} rejected · ${r.counts.edited} edited · ${r.counts.added} added`),
          r.comments.map((c) => h('div', { class: 'comment' }, h('p', null, c.text), h('div', { class: 'muted small' }, c.cell_id ? `on cell ${order.indexOf(`s${c.cell_id}`) + 1 || c.cell_id}` : 'on the image'))),
        ),
      ),
      waiting.length ? h('p', { class: 'muted small' }, `Waiting for ${waiting.map((a) => a.username).join(', ')}`) : null,
      !others.length && !waiting.length ? h('p', { class: 'muted small' }, 'No other review in this round.') : null,
    );
  }
}
