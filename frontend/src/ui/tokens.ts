/**
 * The user's personal API tokens (`#/tokens`, from the key in the top bar): create one
 * (a name, optionally one project, an expiry; the secret shown once with a copy button),
 * the list (project, prefix, created, expires, last used, state) and revoke. Logic in
 * core/tokens.ts.
 */
import { ApiError } from '../core/api';
import { EXPIRY_CHOICES, tokenBody, tokensSorted, tokenState, type TokenForm } from '../core/tokens';
import type { ApiToken, ApiTokenCreated, Project } from '../core/types';
import { fmtDate } from './admin/common';
import type { App, Screen } from './app';
import { h, icon } from './dom';
import { confirmDialog, dialog, toast } from './overlay';
import { errText } from './viewer';

const STATE_PILL: Record<string, string> = { active: 'pill-good', expired: 'pill-warn', revoked: 'pill-neutral' };

export class TokensScreen implements Screen {
  private alive = true;
  private tokens: ApiToken[] = [];
  private projects: Project[] = [];
  private form: TokenForm = { name: '', project: null, expiresInDays: 90 };
  private errors: Partial<Record<'name' | 'project' | 'expires_in_days' | 'other', string>> = {};
  private saving = false;
  private formEl = h('form', { class: 'card pad token-form', novalidate: true, onsubmit: (e: Event) => (e.preventDefault(), void this.create()) });
  private listEl = h('div', { class: 'tokens' }, h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading your tokens…'));

  constructor(private readonly app: App) {}

  async mount(root: HTMLElement): Promise<void> {
    root.append(
      this.app.topbar([h('a', { class: 'crumb', href: '#/projects' }, 'Projects'), h('span', { class: 'crumb-sep' }, '/'), h('span', { class: 'crumb current' }, 'API tokens')]),
      h(
        'main',
        { class: 'page' },
        h('div', { class: 'page-head' }, h('h1', null, 'API tokens')),
        h('p', { class: 'muted' }, 'Scripts and the Python client sign in with a token: send it as “Authorization: Bearer <token>”. A token acts as you, limited to one project when you choose one.'),
        this.formEl,
        h('h2', { class: 'section-title' }, 'Your tokens'),
        this.listEl,
      ),
    );
    this.renderForm();
    try {
      const [tokens, projects] = await Promise.all([this.app.api.tokens(), this.app.api.listProjects(1).then((p) => p.results).catch(() => [] as Project[])]);
      if (!this.alive) return;
      this.tokens = tokens;
      this.projects = projects;
      this.renderForm();
      this.renderList();
    } catch (e) {
      if (this.alive) this.listEl.replaceChildren(h('div', { class: 'empty error' }, h('h3', null, 'Could not load your tokens'), h('p', null, errText(e))));
    }
  }

  unmount(): void {
    this.alive = false;
  }

  private renderForm(): void {
    const err = (k: keyof TokensScreen['errors']) => (this.errors[k] ? h('span', { class: 'field-error', dataset: { error: k } }, this.errors[k]) : null);
    const other = err('other');
    this.formEl.replaceChildren(
      h('h2', { class: 'section-title' }, 'New token'),
      h(
        'div',
        { class: 'token-form-row' },
        h('label', { class: 'field grow' }, h('span', null, 'Name'), h('input', { name: 'name', placeholder: 'e.g. nightly export script', maxlength: '100', value: this.form.name, oninput: (e: Event) => (this.form.name = (e.target as HTMLInputElement).value) }), err('name')),
        h(
          'label',
          { class: 'field' },
          h('span', null, 'Project'),
          h(
            'select',
            { name: 'project', onchange: (e: Event) => { const v = (e.target as HTMLSelectElement).value; this.form.project = v ? Number(v) : null; } },
            h('option', { value: '', selected: this.form.project == null }, 'All my projects'),
            this.projects.map((p) => h('option', { value: String(p.id), selected: this.form.project === p.id }, p.name)),
          ),
          err('project'),
        ),
        h(
          'label',
          { class: 'field' },
          h('span', null, 'Expires after'),
          h('select', { name: 'expiry', onchange: (e: Event) => { const v = (e.target as HTMLSelectElement).value; this.form.expiresInDays = v ? Number(v) : null; } }, EXPIRY_CHOICES.map((c) => h('option', { value: c.days == null ? '' : String(c.days), selected: c.days === this.form.expiresInDays }, c.label))),
          err('expires_in_days'),
        ),
        h('button', { class: 'btn btn-primary', type: 'submit', dataset: { action: 'create-token' }, disabled: this.saving }, icon('plus', 15), 'Create token'),
      ),
      ...(other ? [other] : []),
    );
  }

  private renderList(): void {
    if (!this.tokens.length) {
      this.listEl.replaceChildren(h('div', { class: 'empty' }, h('h3', null, 'No token yet'), h('p', { class: 'muted' }, 'Create one with the form above.')));
      return;
    }
    const projectName = (id: number | null | undefined) => (id == null ? 'All my projects' : (this.projects.find((p) => p.id === id)?.name ?? `Project #${id}`));
    const rows = tokensSorted(this.tokens).map((t) => {
      const state = tokenState(t);
      return h(
        'tr',
        { dataset: { token: t.name, state } },
        h('td', null, h('b', null, t.name), h('div', { class: 'muted small mono' }, `${t.prefix}…`)),
        h('td', null, projectName(t.project)),
        h('td', { class: 'muted small' }, fmtDate(t.created_at)),
        h('td', { class: 'muted small' }, t.expires_at ? fmtDate(t.expires_at) : 'never'),
        h('td', { class: 'muted small' }, t.last_used_at ? fmtDate(t.last_used_at) : 'never'),
        h('td', null, h('span', { class: `pill ${STATE_PILL[state]}` }, state === 'active' ? 'Active' : state === 'expired' ? 'Expired' : 'Revoked')),
        h('td', { class: 'actions' }, state === 'revoked' ? null : h('button', { class: 'btn btn-sm btn-ghost', dataset: { action: 'revoke-token' }, onclick: () => void this.revoke(t) }, icon('delete', 14), 'Revoke')),
      );
    });
    this.listEl.replaceChildren(
      h(
        'div',
        { class: 'table-wrap card' },
        h('table', { class: 'table token-list' }, h('thead', null, h('tr', null, ['Name', 'Project', 'Created', 'Expires', 'Last used', 'State', ''].map((x) => h('th', null, x)))), h('tbody', null, rows)),
      ),
    );
  }

  private async create(): Promise<void> {
    const { body, errors } = tokenBody(this.form);
    this.errors = errors;
    if (!body) return this.renderForm();
    this.saving = true;
    this.renderForm();
    try {
      const created = await this.app.api.createToken(body);
      const { token: _secret, ...listed } = created;
      this.tokens = [listed as ApiToken, ...this.tokens];
      this.form = { ...this.form, name: '' };
      this.renderList();
      this.showSecret(created);
    } catch (e) {
      const fields = e instanceof ApiError ? e.fieldErrors : {};
      const text = (v: unknown) => (Array.isArray(v) ? v.join(' ') : String(v));
      for (const k of ['name', 'project', 'expires_in_days'] as const) if (fields[k]) this.errors[k] = text(fields[k]);
      if (!Object.keys(this.errors).length) this.errors.other = errText(e);
    } finally {
      this.saving = false;
      if (this.alive) this.renderForm();
    }
  }

  /** The secret, this once, with a copy button. */
  private showSecret(t: ApiTokenCreated): void {
    const input = h('input', { class: 'secret-value', readonly: true, value: t.token, 'aria-label': 'API token', spellcheck: 'false', onfocus: (e: Event) => (e.target as HTMLInputElement).select() });
    const copyBtn = h('button', { type: 'button', class: 'btn', dataset: { action: 'copy-token' }, onclick: () => void copy() }, icon('copy', 15), 'Copy');
    const copy = async () => {
      try {
        await navigator.clipboard.writeText(t.token);
      } catch {
        input.focus();
        input.select();
        if (!document.execCommand?.('copy')) return toast('Select the token and copy it with Ctrl+C', 'warn');
      }
      copyBtn.replaceChildren(icon('check', 15), 'Copied');
    };
    const d = dialog({
      title: `Token “${t.name}” created`,
      className: 'secret-dialog',
      dismissible: false,
      body: [
        h('div', { class: 'secret-warning', role: 'alert' }, icon('alert', 18), h('div', null, h('b', null, 'Copy the token now: it is not shown again.'), h('p', null, 'The platform keeps only a hash of it. Lost, it cannot be recovered: revoke it and create another.'))),
        h('div', { class: 'field compact' }, h('span', null, t.expires_at ? `Valid until ${fmtDate(t.expires_at)}` : 'Valid until revoked'), h('div', { class: 'secret-row' }, input, copyBtn)),
      ],
      actions: h('button', { class: 'btn btn-primary', autofocus: true, dataset: { action: 'token-stored' }, onclick: () => d.close() }, 'I have stored the token'),
    });
  }

  private async revoke(t: ApiToken): Promise<void> {
    if (!(await confirmDialog(`Revoke “${t.name}”?`, 'Scripts using this token are refused from now on. This cannot be undone.', 'Revoke', true))) return;
    try {
      await this.app.api.revokeToken(t.id);
      this.tokens = this.tokens.map((x) => (x.id === t.id ? { ...x, revoked_at: new Date().toISOString() } : x));
      toast(`“${t.name}” was revoked`, 'success');
      this.renderList();
    } catch (e) {
      toast(`Not revoked: ${errText(e)}`, 'error', 7000);
    }
  }
}
