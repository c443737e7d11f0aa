/**
 * Administration, members tab (the project's admins): invite an existing user
 * by username or e-mail address with a role, change a member's role, remove a
 * member. The last admin can be neither demoted nor removed. Logic in
 * core/members.ts.
 */
import { ApiError } from '../../core/api';
import { inviteProblem, lastAdminReason, membersSorted, roleLabel, ROLES } from '../../core/members';
import type { Member, Role } from '../../core/types';
import { h, icon } from '../dom';
import { confirmDialog, toast } from '../overlay';
import { errText } from '../viewer';
import { AdminPanel, fmtDate, forbidden, loadingBlock } from './common';

export class MembersPanel extends AdminPanel {
  private el!: HTMLElement;
  private members: Member[] = [];
  private login = '';
  private role: Role = 'annotator';
  private error: string | null = null;
  private saving = false;
  private busy = new Set<number>();

  async mount(el: HTMLElement): Promise<void> {
    this.el = el;
    el.append(loadingBlock('Loading the members…'));
    try {
      this.members = await this.app.api.members(this.project.id);
      if (this.alive) this.render();
    } catch (e) {
      if (this.alive) el.replaceChildren(forbidden(e));
    }
  }

  private render(): void {
    const input = h('input', { name: 'login', placeholder: 'Username or e-mail address', autocomplete: 'off', value: this.login, oninput: (e: Event) => (this.login = (e.target as HTMLInputElement).value) });
    const form = h(
      'form',
      { class: 'card pad member-form', novalidate: true, onsubmit: (e: Event) => (e.preventDefault(), void this.invite()) },
      h('h2', { class: 'section-title' }, 'Invite a member'),
      h('p', { class: 'muted small' }, 'The person needs an account on this platform already; they see the project at their next page load.'),
      h(
        'div',
        { class: 'member-form-row' },
        h('label', { class: 'field grow' }, h('span', null, 'User'), input, this.error ? h('span', { class: 'field-error', dataset: { error: 'login' } }, this.error) : null),
        h('label', { class: 'field' }, h('span', null, 'Role'), h('select', { name: 'role', onchange: (e: Event) => (this.role = (e.target as HTMLSelectElement).value as Role) }, ROLES.map((r) => h('option', { value: r.role, selected: r.role === this.role }, r.label)))),
        h('button', { class: 'btn btn-primary', type: 'submit', dataset: { action: 'invite' }, disabled: this.saving }, icon('plus', 15), 'Invite'),
      ),
      h('ul', { class: 'role-help muted small' }, ROLES.map((r) => h('li', null, h('b', null, r.label), ` — ${r.can}`))),
    );
    const me = this.app.user?.id;
    const rows = membersSorted(this.members).map((m) => {
      const locked = lastAdminReason(this.members, m);
      return h(
        'tr',
        { dataset: { member: m.username, role: m.role } },
        h('td', null, h('span', { class: 'avatar sm' }, m.username.slice(0, 1).toUpperCase()), ' ', h('b', null, m.username), m.user === me ? h('span', { class: 'muted small' }, ' (you)') : null),
        h(
          'td',
          null,
          h(
            'select',
            { class: 'member-role', 'aria-label': `Role of ${m.username}`, disabled: this.busy.has(m.id), title: locked ?? '', onchange: (e: Event) => void this.setRole(m, (e.target as HTMLSelectElement).value as Role) },
            ROLES.map((r) => h('option', { value: r.role, selected: r.role === m.role, disabled: !!locked && r.role !== 'admin' }, r.label)),
          ),
        ),
        h('td', { class: 'muted small' }, fmtDate(m.created_at)),
        h('td', { class: 'actions' }, h('button', { class: 'btn btn-sm btn-ghost', dataset: { action: 'remove-member' }, disabled: !!locked || this.busy.has(m.id), title: locked ?? `Remove ${m.username} from the project`, onclick: () => void this.remove(m) }, icon('delete', 14), 'Remove')),
      );
    });
    const table = h(
      'div',
      { class: 'table-wrap card' },
      h('table', { class: 'table members' }, h('thead', null, h('tr', null, h('th', null, 'Member'), h('th', null, 'Role'), h('th', null, 'Since'), h('th', null, ''))), h('tbody', null, rows)),
    );
    this.el.replaceChildren(form, h('h2', { class: 'section-title' }, `Members (${this.members.length})`), table);
  }

  private async invite(): Promise<void> {
    this.error = inviteProblem(this.login);
    if (this.error) return this.render();
    this.saving = true;
    this.render();
    try {
      const added = await this.app.api.addMember(this.project.id, this.login.trim(), this.role);
      const known = this.members.some((m) => m.id === added.id);
      this.members = known ? this.members.map((m) => (m.id === added.id ? added : m)) : [...this.members, added];
      toast(known ? `${added.username} is now ${roleLabel(added.role).toLowerCase()}` : `${added.username} joined as ${roleLabel(added.role).toLowerCase()}`, 'success');
      this.login = '';
    } catch (e) {
      const field = e instanceof ApiError ? (e.fieldErrors.username ?? e.fieldErrors.role) : undefined;
      this.error = field ? (Array.isArray(field) ? field.join(' ') : String(field)) : errText(e);
    } finally {
      this.saving = false;
      if (this.alive) this.render();
    }
  }

  private async setRole(m: Member, role: Role): Promise<void> {
    this.busy.add(m.id);
    try {
      const changed = await this.app.api.setMemberRole(this.project.id, m.id, role);
      this.members = this.members.map((x) => (x.id === m.id ? changed : x));
      toast(`${m.username} is now ${roleLabel(role).toLowerCase()}`, 'success');
    } catch (e) {
      toast(`Role not changed: ${errText(e)}`, 'error', 7000);
    } finally {
      this.busy.delete(m.id);
      if (this.alive) this.render();
    }
  }

  private async remove(m: Member): Promise<void> {
    if (!(await confirmDialog(`Remove ${m.username}?`, `${m.username} loses access to this project. Their annotations and reviews stay; their open review assignments go to other experts.`, 'Remove', true))) return;
    this.busy.add(m.id);
    try {
      await this.app.api.removeMember(this.project.id, m.id);
      this.members = this.members.filter((x) => x.id !== m.id);
      toast(`${m.username} was removed`, 'success');
    } catch (e) {
      toast(`Not removed: ${errText(e)}`, 'error', 7000);
    } finally {
      this.busy.delete(m.id);
      if (this.alive) this.render();
    }
  }
}
