/**
 * Administration, verification tab (the project's admins): how many experts
 * review each image (K), how many must agree (quorum), the IoU at which two
 * contours are the same cell, the experts who may adjudicate besides the
 * admins, and the order in which waiting images are offered for annotation.
 * Errors (the form's own checks, then the server's 400) show under each field.
 * Logic in core/verification.ts.
 */
import { ApiError } from '../../core/api';
import type { Member, VerificationSettings } from '../../core/types';
import { adjudicatorChoices, checkDraft, consensusSentence, draftChanged, draftFrom, namedUsers, ORDERS, serverFieldErrors, toggleAdjudicator, type VerificationDraft, type VerificationField } from '../../core/verification';
import { h, icon } from '../dom';
import { toast } from '../overlay';
import { errText } from '../viewer';
import { AdminPanel, forbidden, loadingBlock } from './common';

export class VerificationPanel extends AdminPanel {
  private el!: HTMLElement;
  private stored!: VerificationSettings;
  private members: Member[] = [];
  private draft!: VerificationDraft;
  private errors: Partial<Record<VerificationField, string>> = {};
  private otherErrors: string[] = [];
  private saving = false;

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(loadingBlock('Loading the verification settings…'));
    try {
      const [settings, members] = await Promise.all([this.app.api.verificationSettings(this.project.id), this.app.api.members(this.project.id)]);
      if (!this.alive) return;
      this.stored = settings;
      this.members = members;
      this.draft = draftFrom(settings);
      this.render();
    } catch (e) {
      if (this.alive) el.replaceChildren(forbidden(e));
    }
  }

  /** A typed value: the draft and the sentence change in place (a re-render would swallow the first click on Save). */
  private typed(field: 'experts_required' | 'quorum' | 'match_iou', value: string): void {
    this.draft = { ...this.draft, [field]: value };
    const sentence = this.el.querySelector<HTMLElement>('[data-consensus]');
    if (sentence) sentence.textContent = consensusSentence(this.draft);
    this.updateDirty();
  }

  private updateDirty(): void {
    const dirty = draftChanged(this.draft, this.stored);
    const note = this.el.querySelector<HTMLElement>('[data-dirty]');
    if (note) note.hidden = !dirty;
  }

  private render(): void {
    const d = this.draft;
    const err = (k: VerificationField) => (this.errors[k] ? h('span', { class: 'field-error', id: `verification-error-${k}`, dataset: { error: k }, role: 'alert' }, this.errors[k]!) : null);
    const num = (k: 'experts_required' | 'quorum' | 'match_iou', label: string, help: string, attrs: Record<string, string>) =>
      h(
        'label',
        { class: 'field compact' },
        h('span', null, label),
        h('input', { type: 'text', inputmode: k === 'match_iou' ? 'decimal' : 'numeric', name: k, value: d[k], class: this.errors[k] ? 'invalid' : '', 'aria-invalid': this.errors[k] ? 'true' : null, 'aria-describedby': this.errors[k] ? `verification-error-${k}` : null, dataset: { field: k }, oninput: (e: Event) => this.typed(k, (e.target as HTMLInputElement).value), ...attrs }),
        h('span', { class: 'muted small' }, help),
        err(k),
      );
    const choices = adjudicatorChoices(this.members, d.adjudicators);
    const adjudicators = h(
      'fieldset',
      { class: 'field adjudicators', dataset: { field: 'adjudicators' } },
      h('legend', null, 'Adjudicators'),
      h('span', { class: 'muted small' }, 'They settle the cells the reviewers disputed. Admins always may; tick the experts who may too.'),
      choices.length
        ? h(
            'ul',
            { class: 'adjudicator-list' },
            choices.map((c) =>
              h(
                'li',
                null,
                h(
                  'label',
                  { class: 'check-row', title: c.always ? 'Admins always adjudicate' : '' },
                  h('input', { type: 'checkbox', checked: c.chosen, disabled: c.always, dataset: { adjudicator: c.username }, onchange: (e: Event) => ((this.draft = { ...this.draft, adjudicators: toggleAdjudicator(this.draft.adjudicators, c.user, (e.target as HTMLInputElement).checked) }), this.updateDirty()) }),
                  h('b', null, c.username),
                  h('span', { class: 'muted small' }, c.always ? ' admin — always' : ' expert'),
                ),
              ),
            ),
          )
        : h('p', { class: 'muted small' }, 'No experts in this project yet: add some in the Members tab.'),
      err('adjudicators'),
    );
    const orders = h(
      'fieldset',
      { class: 'field orders', dataset: { field: 'active_learning_order' } },
      h('legend', null, 'Order of the images waiting for annotation'),
      ORDERS.map((o) =>
        h(
          'label',
          { class: 'radio-row' },
          h('input', { type: 'radio', name: 'active_learning_order', value: o.order, checked: d.active_learning_order === o.order, onchange: () => ((this.draft = { ...this.draft, active_learning_order: o.order }), this.updateDirty()) }),
          h('span', null, h('b', null, o.label), h('span', { class: 'muted small' }, ` — ${o.help}`)),
        ),
      ),
      err('active_learning_order'),
    );
    const form = h(
      'form',
      { class: 'card pad verification-form', novalidate: true, onsubmit: (e: Event) => (e.preventDefault(), void this.save()) },
      h('h2', { class: 'section-title' }, 'Review of each image'),
      h('div', { class: 'form-row' }, num('experts_required', 'Reviewers per image (K)', 'Experts assigned when an image is submitted (1–10).', {}), num('quorum', 'Quorum', 'Reviewers who must support a cell; empty = all K.', { placeholder: 'all' }), num('match_iou', 'Match IoU', 'Two contours are the same cell above this overlap (0–1].', {})),
      h('p', { class: 'consensus-sentence', dataset: { consensus: '' } }, consensusSentence(d)),
      h('p', { class: 'muted small' }, 'Images already in review keep the rules they were submitted with.'),
      adjudicators,
      orders,
      this.otherErrors.length ? h('ul', { class: 'form-errors' }, this.otherErrors.map((l) => h('li', null, l))) : null,
      h(
        'div',
        { class: 'form-actions' },
        h('button', { class: 'btn btn-primary', type: 'submit', dataset: { action: 'save-verification' }, disabled: this.saving }, icon('check', 15), this.saving ? 'Saving…' : 'Save settings'),
        h('button', { class: 'btn btn-ghost', type: 'button', dataset: { action: 'reset-verification' }, onclick: () => ((this.draft = draftFrom(this.stored)), (this.errors = {}), (this.otherErrors = []), this.render()) }, 'Discard changes'),
        h('span', { class: 'muted small', dataset: { dirty: '' }, hidden: !draftChanged(d, this.stored) }, 'Unsaved changes'),
      ),
    );
    this.el.replaceChildren(form);
  }

  private async save(): Promise<void> {
    const check = checkDraft(this.draft);
    this.otherErrors = [];
    if (!check.ok) {
      this.errors = check.errors;
      this.render();
      this.el.querySelector<HTMLElement>('.invalid, [data-error]')?.scrollIntoView?.({ block: 'center' });
      return;
    }
    this.errors = {};
    this.saving = true;
    this.render();
    try {
      this.stored = await this.app.api.saveVerificationSettings(this.project.id, check.body);
      this.draft = draftFrom(this.stored);
      toast('Verification settings saved', 'success');
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) {
        const { fields, other } = serverFieldErrors(e.fieldErrors);
        // the members as this page loaded them: one who left is still named
        if (fields.adjudicators) fields.adjudicators = `${namedUsers(fields.adjudicators, this.members)} Untick them, or add them back in the Members tab.`;
        this.errors = fields;
        this.otherErrors = other.length || Object.keys(fields).length ? other : [e.detail];
      } else toast(`Not saved: ${errText(e)}`, 'error', 7000);
    } finally {
      this.saving = false;
      if (this.alive) this.render();
    }
  }
}
