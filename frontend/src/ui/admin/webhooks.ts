/**
 * Administration, webhooks tab (the project's admins; docs/webhooks.md): the
 * subscriptions (URL, events, active, secret prefix, created, last delivery),
 * a form that creates one (the secret shown once, in a dialog), toggling,
 * editing and deleting, a test ping followed into the log, and the delivery log
 * of the selected subscription (each attempt: HTTP status, duration, error),
 * newest first, older pages on request. Logic in core/webhooks.ts.
 */
import { ApiError } from '../../core/api';
import type { Webhook, WebhookDelivery, WebhookEvent } from '../../core/types';
import {
  attemptSummary,
  clockTime,
  DELIVERY_PAGE_SIZE,
  deliveryFinished,
  deliveryState,
  emptyLog,
  eventLabel,
  eventsToggled,
  lastDeliveryText,
  logHasMore,
  logMerged,
  nextPage,
  PING_POLL_DELAYS_MS,
  pingOutcome,
  pingPollAgain,
  pingProgress,
  SECRET_HELP,
  SECRET_NOTICE,
  secretShown,
  splitFieldErrors,
  urlProblem,
  WEBHOOK_EVENT_INFO,
  WEBHOOK_EVENTS,
  type DeliveryLog,
} from '../../core/webhooks';
import { h, icon, replaceChildren, type Child } from '../dom';
import { confirmDialog, dialog, toast } from '../overlay';
import { errText, relTime } from '../viewer';
import { AdminPanel, fmtDate, forbidden, loadingBlock } from './common';

/** A subscription being written: the create form, or a card in edit mode. */
interface Draft {
  url: string;
  description: string;
  events: WebhookEvent[];
  active: boolean;
  /** Messages under the fields (client checks, then the server's 400). */
  errors: Partial<Record<'url' | 'events' | 'description' | 'active', string>>;
  /** The server's errors on no field of the form. */
  other: string[];
  saving: boolean;
}

const newDraft = (): Draft => ({ url: '', description: '', events: [], active: true, errors: {}, other: [], saving: false });
const draftOf = (w: Webhook): Draft => ({ url: w.url, description: w.description ?? '', events: [...w.events], active: w.active, errors: {}, other: [], saving: false });

/** While the log shows a delivery that is not finished, it is asked again this often. */
const LOG_REFRESH_MS = 15_000;

export class WebhooksPanel extends AdminPanel {
  private hooks: Webhook[] = [];
  /** The newest delivery of each subscription (null: none yet; absent: not known yet). */
  private last = new Map<number, WebhookDelivery | null>();
  private form: Draft = newDraft();
  private editing: { id: number; draft: Draft } | null = null;
  private busy = new Set<number>();
  private pingNotes = new Map<number, { text: string; tone: 'active' | 'good' | 'warn' | 'bad' }>();
  private selected: number | null = null;
  private log: DeliveryLog = emptyLog();
  private logLoading = false;
  private expanded = new Set<string>();
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private logTimer: ReturnType<typeof setTimeout> | null = null;

  private formEl = h('form', { class: 'card pad webhook-form', novalidate: true, onsubmit: (e: Event) => (e.preventDefault(), void this.create()) });
  private listEl = h('div', { class: 'hooks' });
  private listTitle = h('h2', { class: 'section-title' }, 'Subscriptions');
  private logEl = h('section', { class: 'delivery-log', hidden: true });

  async mount(el: HTMLElement): Promise<void> {
    el.append(loadingBlock('Loading the webhooks…'));
    try {
      const page = await this.app.api.webhooks(this.project.id);
      if (!this.alive) return;
      this.hooks = page.results;
    } catch (e) {
      if (this.alive) el.replaceChildren(forbidden(e));
      return;
    }
    el.replaceChildren(
      h(
        'div',
        { class: 'webhooks-panel' },
        h(
          'div',
          { class: 'admin-grid webhooks' },
          h('section', null, h('h2', { class: 'section-title' }, 'New subscription'), this.formEl),
          h('section', null, this.listTitle, this.listEl),
        ),
        this.logEl,
      ),
    );
    this.renderForm();
    this.renderList();
    this.hooks.forEach((w) => void this.loadLast(w.id));
    if (this.hooks.length) void this.select(this.hooks[0].id);
  }

  override dispose(): void {
    super.dispose();
    for (const t of this.timers) clearTimeout(t);
    if (this.logTimer) clearTimeout(this.logTimer);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => (this.timers.delete(t), resolve()), ms);
      this.timers.add(t);
    });
  }

  // ------------------------------------------------------------ the form (create, and a card's edit mode)

  /** URL, description, event checkboxes and (create only) active, each with its error. */
  private draftFields(d: Draft, key: string, opts: { active: boolean }): Child[] {
    const err = (field: keyof Draft['errors']) => (d.errors[field] ? h('div', { class: 'field-error', id: `${key}-${field}-error`, dataset: { errorFor: field }, role: 'alert' }, d.errors[field]) : null);
    const invalid = (field: keyof Draft['errors']) => (d.errors[field] ? { class: 'invalid', 'aria-invalid': 'true', 'aria-describedby': `${key}-${field}-error` } : {});
    const events = h(
      'div',
      { class: 'event-grid' },
      WEBHOOK_EVENTS.map((ev) =>
        h(
          'label',
          { class: 'event-check', dataset: { event: ev }, title: `Sent when ${WEBHOOK_EVENT_INFO[ev].when}` },
          h('input', { type: 'checkbox', value: ev, checked: d.events.includes(ev), onchange: (e: Event) => ((d.events = eventsToggled(d.events, ev, (e.target as HTMLInputElement).checked)), delete d.errors.events) }),
          h('span', null, h('b', null, WEBHOOK_EVENT_INFO[ev].label), h('span', { class: 'event-code' }, ev)),
        ),
      ),
    );
    const setAll = (on: boolean) => {
      d.events = on ? [...WEBHOOK_EVENTS] : [];
      events.querySelectorAll<HTMLInputElement>('input[type=checkbox]').forEach((c) => (c.checked = on));
    };
    return [
      h(
        'label',
        { class: 'field compact' },
        h('span', null, 'Receiver URL'),
        h('input', { type: 'url', name: 'url', value: d.url, placeholder: 'https://hooks.example.org/cyto', autocomplete: 'off', spellcheck: 'false', ...invalid('url'), oninput: (e: Event) => (d.url = (e.target as HTMLInputElement).value) }),
        err('url'),
      ),
      h('label', { class: 'field compact' }, h('span', null, 'Description (optional)'), h('input', { name: 'description', value: d.description, maxlength: '200', placeholder: 'e.g. LIMS notifications', ...invalid('description'), oninput: (e: Event) => (d.description = (e.target as HTMLInputElement).value) }), err('description')),
      h(
        'div',
        { class: 'field events-field', role: 'group', 'aria-label': 'Events' },
        h('div', { class: 'events-head' }, h('span', null, 'Events to send'), h('span', { class: 'grow' }), h('button', { type: 'button', class: 'link-btn small', onclick: () => setAll(true) }, 'All'), h('button', { type: 'button', class: 'link-btn small', onclick: () => setAll(false) }, 'None')),
        events,
        err('events'),
      ),
      opts.active ? h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'active', checked: d.active, onchange: (e: Event) => (d.active = (e.target as HTMLInputElement).checked) }), 'Active: send events as soon as it is created') : null,
      d.other.length ? h('ul', { class: 'form-errors' }, d.other.map((line) => h('li', null, line))) : null,
    ];
  }

  private renderForm(): void {
    const d = this.form;
    replaceChildren(
      this.formEl,
      h('p', { class: 'muted small intro' }, 'The platform POSTs a signed JSON document to this URL whenever one of the chosen events happens in this project. The URL must be reachable from the platform and resolve to a public address.'),
      ...this.draftFields(d, 'new', { active: true }),
      h('div', { class: 'form-actions' }, h('span', { class: 'grow' }), h('button', { type: 'submit', class: 'btn btn-primary', dataset: { action: 'create-webhook' }, disabled: d.saving }, d.saving ? 'Creating…' : 'Create subscription')),
    );
  }

  /** Client checks first (no request for an empty URL or no event); true when the draft may go. */
  private checked(d: Draft): boolean {
    d.errors = {};
    d.other = [];
    const url = urlProblem(d.url);
    if (url) d.errors.url = url;
    if (!d.events.length) d.errors.events = 'Choose at least one event.';
    return !url && d.events.length > 0;
  }

  /** The server's 400 under the draft's fields; any other error is toasted. */
  private serverRefused(d: Draft, e: unknown, what: string): void {
    if (e instanceof ApiError && e.status === 400) {
      const { fields, other } = splitFieldErrors(e.fieldErrors);
      d.errors = fields;
      d.other = other.length || Object.keys(fields).length ? other : [e.detail];
    } else toast(`${what}: ${errText(e)}`, 'error');
  }

  private async create(): Promise<void> {
    const d = this.form;
    if (d.saving) return;
    if (!this.checked(d)) return this.renderForm();
    d.saving = true;
    this.renderForm();
    try {
      const created = await this.app.api.createWebhook(this.project.id, { url: d.url.trim(), events: d.events, description: d.description.trim(), active: d.active });
      if (!this.alive) return;
      const { secret, ...hook } = created;
      this.hooks = [hook, ...this.hooks.filter((w) => w.id !== hook.id)];
      this.last.set(hook.id, null);
      this.form = newDraft();
      this.renderList();
      void this.select(hook.id);
      this.showSecret(hook, secret);
    } catch (e) {
      this.serverRefused(d, e, 'Not created');
    } finally {
      d.saving = false;
      if (this.alive) this.renderForm();
    }
  }

  /** The secret, this once: copy it, with the warning that it cannot be shown again. */
  private showSecret(hook: Webhook, secret: string): void {
    const input = h('input', { class: 'secret-value', readonly: true, value: secret, 'aria-label': 'Signing secret', spellcheck: 'false', onfocus: (e: Event) => (e.target as HTMLInputElement).select() });
    const copyBtn = h('button', { type: 'button', class: 'btn', dataset: { action: 'copy-secret' }, onclick: () => void copy() }, icon('copy', 15), 'Copy');
    const copied = () => copyBtn.replaceChildren(icon('check', 15), 'Copied');
    const copy = async () => {
      try {
        await navigator.clipboard.writeText(secret);
        copied();
      } catch {
        // no clipboard permission: the selection and the browser's copy command
        input.focus();
        input.select();
        if (document.execCommand?.('copy')) copied();
        else toast('Select the secret and copy it with Ctrl+C', 'warn');
      }
    };
    const d = dialog({
      title: 'Subscription created',
      className: 'secret-dialog',
      dismissible: false,
      body: [
        h('div', { class: 'secret-warning', role: 'alert' }, icon('alert', 18), h('div', null, h('b', null, SECRET_NOTICE), h('p', null, SECRET_HELP))),
        h('div', { class: 'field compact' }, h('span', null, `Signing secret of ${hook.url}`), h('div', { class: 'secret-row' }, input, copyBtn)),
      ],
      actions: h('button', { class: 'btn btn-primary', autofocus: true, dataset: { action: 'secret-stored' }, onclick: () => d.close() }, 'I have stored the secret'),
    });
  }

  // ------------------------------------------------------------ the subscriptions

  private renderList(): void {
    this.listTitle.textContent = this.hooks.length ? `Subscriptions (${this.hooks.length})` : 'Subscriptions';
    if (!this.hooks.length) {
      this.listEl.replaceChildren(h('div', { class: 'empty' }, h('h3', null, 'No webhook yet'), h('p', { class: 'muted' }, 'Subscribe a URL with the form: it receives the events you choose, signed with a secret only you and the platform know.')));
      return;
    }
    this.listEl.replaceChildren(...this.hooks.map((w) => (this.editing?.id === w.id ? this.editCard(w, this.editing.draft) : this.card(w))));
  }

  private card(w: Webhook): HTMLElement {
    const now = Date.now();
    const busy = this.busy.has(w.id);
    const last = this.last.get(w.id);
    const lastText = last === undefined ? null : lastDeliveryText(last, now);
    const note = this.pingNotes.get(w.id);
    return h(
      'article',
      { class: `card hook-card ${this.selected === w.id ? 'selected' : ''} ${w.active ? '' : 'inactive'}`, dataset: { webhook: String(w.id), active: String(w.active) } },
      h(
        'div',
        { class: 'hook-head' },
        h('input', { type: 'checkbox', class: 'switch', checked: w.active, disabled: busy, title: w.active ? 'Active: events are sent. Click to pause.' : 'Paused: no events are sent. Click to activate.', 'aria-label': 'Active', dataset: { action: 'toggle-active' }, onchange: (e: Event) => void this.setActive(w, (e.target as HTMLInputElement).checked) }),
        h('div', { class: 'hook-title' }, h('div', { class: 'hook-url', title: w.url }, w.url), w.description ? h('div', { class: 'muted small' }, w.description) : null),
        h('span', { class: `pill pill-${w.active ? 'good' : 'neutral'}`, dataset: { testid: 'active' } }, w.active ? 'Active' : 'Paused'),
      ),
      h('div', { class: 'hook-events' }, w.events.map((ev) => h('span', { class: 'queue-chip', title: ev }, eventLabel(ev)))),
      h(
        'div',
        { class: 'facts hook-facts' },
        h('div', null, h('span', { class: 'muted small' }, 'Secret'), h('span', { class: 'mono', title: 'The first characters of the signing secret' }, secretShown(w))),
        h('div', null, h('span', { class: 'muted small' }, 'Created'), h('span', { title: new Date(w.created_at).toLocaleString() }, fmtDate(w.created_at))),
        h(
          'div',
          { dataset: { testid: 'last-delivery' } },
          h('span', { class: 'muted small' }, 'Last delivery'),
          lastText ? h('span', null, h('span', { class: `pill pill-${lastText.tone}` }, lastText.label), lastText.detail ? h('span', { class: 'muted small' }, ` ${lastText.detail}`) : null) : h('span', { class: 'muted' }, '…'),
        ),
      ),
      note ? h('div', { class: `ping-note ${note.tone}`, role: 'status', dataset: { testid: 'ping-note' } }, note.tone === 'active' ? h('span', { class: 'spinner' }) : icon(note.tone === 'good' ? 'check' : 'alert', 15), note.text) : null,
      h(
        'div',
        { class: 'hook-actions' },
        h('button', { type: 'button', class: 'btn btn-sm', dataset: { action: 'ping' }, disabled: busy, title: 'Send a ping event to this URL now (also while paused)', onclick: () => void this.ping(w) }, icon('send', 14), 'Send test ping'),
        h('button', { type: 'button', class: `btn btn-sm ${this.selected === w.id ? 'on' : ''}`, dataset: { action: 'deliveries' }, onclick: () => void this.select(w.id) }, icon('layers', 14), 'Delivery log'),
        h('span', { class: 'grow' }),
        h('button', { type: 'button', class: 'btn btn-sm btn-ghost', dataset: { action: 'edit' }, disabled: busy, onclick: () => ((this.editing = { id: w.id, draft: draftOf(w) }), this.renderList()) }, icon('draw', 14), 'Edit'),
        h('button', { type: 'button', class: 'btn btn-sm btn-danger-outline', dataset: { action: 'delete' }, disabled: busy, onclick: () => void this.remove(w) }, icon('delete', 14), 'Delete'),
      ),
    );
  }

  private editCard(w: Webhook, d: Draft): HTMLElement {
    return h(
      'form',
      { class: 'card pad hook-card editing', novalidate: true, dataset: { webhook: String(w.id) }, onsubmit: (e: Event) => (e.preventDefault(), void this.saveEdit(w, d)) },
      h('h3', { class: 'form-section first' }, 'Edit subscription'),
      ...this.draftFields(d, `edit-${w.id}`, { active: false }),
      h(
        'div',
        { class: 'form-actions' },
        h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => ((this.editing = null), this.renderList()) }, 'Cancel'),
        h('span', { class: 'grow' }),
        h('button', { type: 'submit', class: 'btn btn-primary', dataset: { action: 'save-webhook' }, disabled: d.saving }, d.saving ? 'Saving…' : 'Save changes'),
      ),
    );
  }

  private replaceHook(w: Webhook): void {
    this.hooks = this.hooks.map((x) => (x.id === w.id ? w : x));
  }

  private async saveEdit(w: Webhook, d: Draft): Promise<void> {
    if (d.saving) return;
    if (!this.checked(d)) return this.renderList();
    d.saving = true;
    this.renderList();
    try {
      const body = { events: d.events, description: d.description.trim(), ...(d.url.trim() !== w.url ? { url: d.url.trim() } : {}) };
      const saved = await this.app.api.updateWebhook(w.id, body);
      if (!this.alive) return;
      this.replaceHook(saved);
      this.editing = null;
      toast('Subscription saved', 'success');
    } catch (e) {
      this.serverRefused(d, e, 'Not saved');
    } finally {
      d.saving = false;
      if (this.alive) this.renderList();
    }
  }

  private async setActive(w: Webhook, active: boolean): Promise<void> {
    this.busy.add(w.id);
    this.renderList();
    try {
      const saved = await this.app.api.updateWebhook(w.id, { active });
      if (!this.alive) return;
      this.replaceHook(saved);
      toast(active ? 'Subscription active: events are sent' : 'Subscription paused: no events are sent', 'success');
    } catch (e) {
      toast(`Not changed: ${errText(e)}`, 'error');
    } finally {
      this.busy.delete(w.id);
      if (this.alive) this.renderList();
    }
  }

  private async remove(w: Webhook): Promise<void> {
    const ok = await confirmDialog('Delete this subscription?', `Events stop being sent to ${w.url}, and its delivery log is deleted. This cannot be undone.`, 'Delete subscription', true);
    if (!ok || !this.alive) return;
    this.busy.add(w.id);
    this.renderList();
    try {
      await this.app.api.deleteWebhook(w.id);
      if (!this.alive) return;
      this.hooks = this.hooks.filter((x) => x.id !== w.id);
      this.last.delete(w.id);
      this.pingNotes.delete(w.id);
      if (this.selected === w.id) {
        this.selected = null;
        this.log = emptyLog();
        this.renderLog();
      }
      toast('Subscription deleted', 'success');
    } catch (e) {
      toast(`Not deleted: ${errText(e)}`, 'error');
    } finally {
      this.busy.delete(w.id);
      if (this.alive) this.renderList();
    }
  }

  private async loadLast(id: number): Promise<void> {
    try {
      const page = await this.app.api.webhookDeliveries(id, 1, 1);
      if (!this.alive) return;
      this.last.set(id, page.results[0] ?? null);
      this.renderList();
    } catch {
      // the column stays "…"; the log says more when opened
    }
  }

  // ------------------------------------------------------------ the test ping

  private async ping(w: Webhook): Promise<void> {
    this.busy.add(w.id);
    this.pingNotes.set(w.id, { text: 'Sending a test ping…', tone: 'active' });
    this.renderList();
    let delivery: WebhookDelivery;
    try {
      delivery = await this.app.api.pingWebhook(w.id);
    } catch (e) {
      this.pingNotes.set(w.id, { text: `The ping could not be sent: ${errText(e)}`, tone: 'bad' });
      this.busy.delete(w.id);
      if (this.alive) this.renderList();
      return;
    }
    if (!this.alive) return;
    this.busy.delete(w.id);
    this.last.set(w.id, delivery);
    if (this.selected !== w.id) await this.select(w.id);
    const known = this.log.deliveries.some((d) => d.id === delivery.id);
    this.mergeIntoLog(w.id, { count: this.log.count + (known ? 0 : 1), next: null, previous: null, results: [delivery] });
    this.pingNotes.set(w.id, { text: pingProgress(delivery, Date.now()), tone: 'active' });
    this.renderList();

    let seen: WebhookDelivery | undefined = delivery;
    for (let polls = 0; pingPollAgain(seen, polls); polls++) {
      await this.sleep(PING_POLL_DELAYS_MS[polls]);
      if (!this.alive || !this.hooks.some((x) => x.id === w.id)) return;
      try {
        const page = await this.app.api.webhookDeliveries(w.id, 1, DELIVERY_PAGE_SIZE);
        if (!this.alive) return;
        seen = page.results.find((d) => d.id === delivery.id) ?? seen;
        this.last.set(w.id, page.results[0] ?? null);
        this.mergeIntoLog(w.id, page);
        this.pingNotes.set(w.id, { text: pingProgress(seen, Date.now()), tone: 'active' });
        this.renderList();
      } catch {
        // asked again after the next delay
      }
    }
    const outcome = pingOutcome(seen, Date.now());
    const state = seen ? deliveryState(seen, Date.now()).key : 'queued';
    this.pingNotes.set(w.id, { text: outcome, tone: state === 'delivered' ? 'good' : state === 'failed' ? 'bad' : 'warn' });
    this.renderList();
  }

  // ------------------------------------------------------------ the delivery log

  private async select(id: number): Promise<void> {
    if (this.selected === id && this.log.page > 0) return;
    this.selected = id;
    this.log = emptyLog();
    this.expanded.clear();
    this.logLoading = true;
    this.renderList();
    this.renderLog();
    await this.loadLogPage(id, 1);
  }

  private mergeIntoLog(id: number, page: Parameters<typeof logMerged>[1], pageNumber: number | null = null): void {
    if (this.selected !== id) return;
    this.log = logMerged(this.log, page, pageNumber);
    this.renderLog();
    this.scheduleLogRefresh();
  }

  private async loadLogPage(id: number, page: number): Promise<void> {
    this.logLoading = true;
    this.renderLog();
    try {
      const answer = await this.app.api.webhookDeliveries(id, page, DELIVERY_PAGE_SIZE);
      if (!this.alive || this.selected !== id) return;
      this.logLoading = false;
      this.mergeIntoLog(id, answer, page);
      if (page === 1) {
        this.last.set(id, answer.results[0] ?? null);
        this.renderList();
      }
    } catch (e) {
      if (!this.alive || this.selected !== id) return;
      this.logLoading = false;
      this.renderLog();
      toast(`Could not load the deliveries: ${errText(e)}`, 'error');
    }
  }

  /** While a delivery shown is not finished (a retry to come), the newest page is asked again now and then. */
  private scheduleLogRefresh(): void {
    if (this.logTimer) clearTimeout(this.logTimer);
    this.logTimer = null;
    const id = this.selected;
    if (id == null || !this.log.deliveries.some((d) => !deliveryFinished(d))) return;
    this.logTimer = setTimeout(() => {
      this.logTimer = null;
      if (this.alive && this.selected === id && !this.logLoading) void this.refreshLog(id);
    }, LOG_REFRESH_MS);
  }

  private async refreshLog(id: number): Promise<void> {
    try {
      const page = await this.app.api.webhookDeliveries(id, 1, DELIVERY_PAGE_SIZE);
      if (!this.alive) return;
      this.last.set(id, page.results[0] ?? null);
      this.mergeIntoLog(id, page);
      this.renderList();
    } catch {
      this.scheduleLogRefresh();
    }
  }

  private renderLog(): void {
    const w = this.hooks.find((x) => x.id === this.selected);
    this.logEl.hidden = !w;
    if (!w) return void this.logEl.replaceChildren();
    const now = Date.now();
    const log = this.log;
    const head = h(
      'div',
      { class: 'log-head' },
      h('h2', { class: 'section-title' }, 'Delivery log'),
      h('span', { class: 'log-of mono', title: w.url }, w.url),
      h('span', { class: 'grow' }),
      h('span', { class: 'muted small' }, log.count ? `${log.deliveries.length} of ${log.count} shown · newest first` : ''),
      h('button', { type: 'button', class: 'btn btn-sm btn-ghost', dataset: { action: 'refresh-log' }, disabled: this.logLoading, onclick: () => void this.refreshLog(w.id) }, icon('refresh', 14), 'Refresh'),
    );
    if (!log.deliveries.length) {
      this.logEl.replaceChildren(head, this.logLoading ? loadingBlock('Loading the deliveries…') : h('div', { class: 'empty card' }, h('h3', null, 'Nothing delivered yet'), h('p', { class: 'muted' }, '“Send test ping” tries the receiver now; events appear here as they happen, with every attempt.')));
      return;
    }
    const rows: HTMLElement[] = [];
    for (const d of log.deliveries) {
      rows.push(this.deliveryRow(d, now));
      if (this.expanded.has(d.id)) rows.push(this.payloadRow(d));
    }
    const table = h(
      'div',
      { class: 'table-wrap card' },
      h('table', { class: 'table deliveries' }, h('thead', null, h('tr', null, ['Event', 'Status', 'Attempts', 'Created', ''].map((t) => h('th', null, t)))), h('tbody', null, rows)),
    );
    const more = logHasMore(log)
      ? h('div', { class: 'load-more' }, h('button', { type: 'button', class: 'btn', dataset: { action: 'load-more' }, disabled: this.logLoading, onclick: () => void this.loadLogPage(w.id, nextPage(log)) }, this.logLoading ? 'Loading…' : `Load older deliveries (${log.count - log.deliveries.length} more)`))
      : null;
    replaceChildren(this.logEl, head, table, more);
  }

  private deliveryRow(d: WebhookDelivery, now: number): HTMLElement {
    const s = deliveryState(d, now);
    const attempts = d.attempt_log.length
      ? h(
          'div',
          { class: 'attempts' },
          d.attempt_log.map((a) => {
            const { head, error } = attemptSummary(a);
            return h(
              'div',
              { class: `attempt ${a.ok ? 'ok' : 'failed'}`, dataset: { attempt: String(a.number), status: a.status_code == null ? '' : String(a.status_code) }, title: `started ${new Date(a.started_at).toLocaleString()}${a.address ? ` · to ${a.address}` : ''}` },
              h('span', { class: 'attempt-head' }, head),
              error ? h('span', { class: 'attempt-error' }, error) : null,
            );
          }),
        )
      : h('span', { class: 'muted small' }, s.key === 'queued' ? 'none yet' : '—');
    const open = this.expanded.has(d.id);
    return h(
      'tr',
      { dataset: { delivery: d.id, status: s.key, event: d.event } },
      h('td', null, h('b', null, eventLabel(d.event)), h('div', { class: 'muted small mono' }, d.event)),
      h('td', { class: 'status-cell' }, h('span', { class: `pill pill-${s.tone}` }, s.label), s.detail ? h('div', { class: 'muted small', dataset: { testid: 'status-detail' } }, s.detail) : null),
      h('td', null, attempts),
      h('td', { class: 'small', title: new Date(d.created_at).toLocaleString() }, h('div', null, clockTime(d.created_at)), h('div', { class: 'muted small' }, relTime(d.created_at))),
      h('td', { class: 'actions' }, h('button', { type: 'button', class: 'link-btn small', 'aria-expanded': String(open), onclick: () => (open ? this.expanded.delete(d.id) : this.expanded.add(d.id), this.renderLog()) }, open ? 'Hide details' : 'Details')),
    );
  }

  private payloadRow(d: WebhookDelivery): HTMLElement {
    const answers = d.attempt_log.filter((a) => a.response_excerpt);
    return h(
      'tr',
      { class: 'sub-row' },
      h(
        'td',
        { colspan: '5' },
        h('div', { class: 'delivery-details' },
          h('div', null, h('div', { class: 'muted small' }, `Payload (delivery ${d.id})`), h('pre', { class: 'small-pre' }, JSON.stringify(d.payload, null, 2))),
          h('div', null, h('div', { class: 'muted small' }, 'Receiver answers'), answers.length ? answers.map((a) => h('pre', { class: 'small-pre' }, `#${a.number} (${a.address || 'no address'}): ${a.response_excerpt}`)) : h('p', { class: 'muted small' }, 'No answer body.')),
        ),
      ),
    );
  }
}
