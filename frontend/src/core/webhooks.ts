/**
 * The webhooks tab (project admins, docs/webhooks.md): the events a subscription
 * may name, how a delivery and its attempts are told in words, the server's
 * field errors as a user reads them, the delivery log's pages and the polling
 * after a test ping. DOM-free; the panel is ui/admin/webhooks.ts.
 */
import type { DeliveryAttempt, DeliveryEvent, Paginated, Webhook, WebhookDelivery, WebhookEvent } from './types';

/**
 * Every event of the schema's enum (`EventsEnum`) with its label and when it is sent: a
 * `Record` over the enum, so an event the server adds does not compile until it is here.
 */
export const WEBHOOK_EVENT_INFO: Record<WebhookEvent, { label: string; when: string }> = {
  'image.submitted': { label: 'Image submitted', when: 'an image is submitted for review' },
  'image.verified': { label: 'Image verified', when: 'an image becomes verified' },
  'dispute.opened': { label: 'Dispute opened', when: 'the experts disagree on cells of an image' },
  'training.finished': { label: 'Training finished', when: 'a training job succeeded' },
  'training.failed': { label: 'Training failed', when: 'a training job failed' },
  'model.promoted': { label: 'Model promoted', when: 'a model version became active' },
  'model.rolled_back': { label: 'Model rolled back', when: 'an admin rolled a model back' },
  'export.ready': { label: 'Export ready', when: "an export's file can be downloaded" },
  'presegment.failed': { label: 'Pre-segmentation failed', when: 'a pre-segmentation failed' },
};

/** The events in the schema's order (the order of the checkboxes and of `events` sent). */
export const WEBHOOK_EVENTS = Object.keys(WEBHOOK_EVENT_INFO) as WebhookEvent[];

/** `image.verified` → `Image verified`; `ping` → `Test ping`; an unknown name as it is. */
export function eventLabel(event: DeliveryEvent | string): string {
  if (event === 'ping') return 'Test ping';
  return (WEBHOOK_EVENT_INFO as Record<string, { label: string }>)[event]?.label ?? event;
}

/** `events` with `event` switched on or off, in the schema's order, each once. */
export function eventsToggled(events: readonly WebhookEvent[], event: WebhookEvent, on: boolean): WebhookEvent[] {
  const set = new Set(events);
  if (on) set.add(event);
  else set.delete(event);
  return WEBHOOK_EVENTS.filter((e) => set.has(e));
}

/** The events of a subscription in a line: `All 9 events`, or their labels. */
export function eventsSummary(events: readonly string[]): string {
  if (!events.length) return 'No events';
  if (WEBHOOK_EVENTS.every((e) => events.includes(e))) return `All ${WEBHOOK_EVENTS.length} events`;
  return events.map(eventLabel).join(', ');
}

// ---------------------------------------------------------------- the form

/** What is wrong with a URL before the server is asked (it checks the rest: where the host resolves to). */
export function urlProblem(url: string): string | null {
  const u = url.trim();
  if (!u) return 'Enter the URL your receiver listens on.';
  if (!/^https?:\/\//i.test(u)) return 'The URL must start with https:// (or http://).';
  return null;
}

/** The form's fields: a server error on any other field is shown above the buttons. */
export const FORM_FIELDS = ['url', 'events', 'description', 'active'] as const;

/** A server field error (a string, a list of them, or a nested object) as one line. */
export function errorValueText(value: unknown): string {
  if (value == null) return '';
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.map(errorValueText).filter(Boolean).join(' ');
  if (typeof value === 'object') return Object.values(value as Record<string, unknown>).map(errorValueText).filter(Boolean).join(' ');
  return String(value);
}

const sentence = (s: string): string => {
  const t = s.trim();
  if (!t) return t;
  return `${t[0].toUpperCase()}${t.slice(1)}${/[.!?]$/.test(t) ? '' : '.'}`;
};

/**
 * The message shown under a form field for the server's 400 `errors[field]`: the server's
 * own words (they name what is wrong: `10.0.0.1 is a private address; webhooks go to
 * public addresses only`), made a sentence, with what to do about it where that helps.
 */
export function fieldErrorText(field: string, value: unknown): string {
  const raw = errorValueText(value).trim();
  if (field === 'url') {
    if (!raw || /required|blank|null|may not be empty/i.test(raw)) return 'Enter the URL your receiver listens on.';
    if (/public addresses only/.test(raw)) return `This address cannot receive webhooks: ${raw.replace(/;\s*webhooks go to public addresses only\.?$/, '')}. Webhooks are only sent to public internet addresses; ask your platform administrator to allow an internal network.`;
    if (/does not resolve/.test(raw)) return `${sentence(raw)} Check the host name.`;
    return `This URL cannot be used: ${raw.replace(/\.$/, '')}.`;
  }
  if (field === 'events') {
    if (!raw || /at least one|empty|name at least/i.test(raw)) return 'Choose at least one event.';
    return sentence(raw);
  }
  if (field === 'description' && /no more than|at most|characters/i.test(raw)) return 'The description is too long (200 characters at most).';
  return sentence(raw || 'Invalid value');
}

/** The server's field errors of a 400 split into those of the form's fields and the others. */
export function splitFieldErrors(errors: Record<string, unknown>): { fields: Partial<Record<(typeof FORM_FIELDS)[number], string>>; other: string[] } {
  const fields: Partial<Record<(typeof FORM_FIELDS)[number], string>> = {};
  const other: string[] = [];
  for (const [key, value] of Object.entries(errors)) {
    if ((FORM_FIELDS as readonly string[]).includes(key)) fields[key as (typeof FORM_FIELDS)[number]] = fieldErrorText(key, value);
    else other.push(`${key}: ${errorValueText(value)}`);
  }
  return { fields, other };
}

// ---------------------------------------------------------------- deliveries in words

/** `14:05:09`, in local time (what the admin's clock says). */
export function clockTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (!Number.isFinite(d.getTime())) return '—';
  const two = (n: number) => String(n).padStart(2, '0');
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** `in 25 s`, `in 4 min`, `in 2 h`, `now` (a moment already past: it is due). */
export function untilText(iso: string, now: number): string {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '';
  const s = Math.round((t - now) / 1000);
  if (s <= 0) return 'now';
  if (s < 90) return `in ${s} s`;
  if (s < 5400) return `in ${Math.round(s / 60)} min`;
  return `in ${Math.round(s / 3600)} h`;
}

/** An attempt's duration: `12 ms`, `0.4 ms`, `1.3 s`, `5.0 s`. */
export function durationText(ms: number | null | undefined): string {
  if (ms == null || !Number.isFinite(ms)) return '—';
  if (ms < 1) return `${Math.round(ms * 10) / 10} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

const REASONS: Record<number, string> = {
  200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content',
  301: 'Moved Permanently', 302: 'Found', 303: 'See Other', 307: 'Temporary Redirect', 308: 'Permanent Redirect',
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 408: 'Request Timeout', 410: 'Gone', 413: 'Payload Too Large', 429: 'Too Many Requests',
  500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
}; // prettier-ignore

/** `HTTP 200 OK`, `HTTP 503 Service Unavailable`, `no answer` (no status: refused, timed out, unreachable). */
export function httpStatusText(code: number | null | undefined): string {
  if (code == null) return 'no answer';
  return REASONS[code] ? `HTTP ${code} ${REASONS[code]}` : `HTTP ${code}`;
}

export type Tone = 'good' | 'warn' | 'bad' | 'neutral' | 'active';

export interface DeliveryState {
  /** `delivered`, `retrying`, `failed`, `sending` (an attempt under way), `queued` (no attempt yet). */
  key: 'delivered' | 'retrying' | 'failed' | 'sending' | 'queued';
  /** The pill's word. */
  label: string;
  /** The pill's tone (`pill-<tone>`). */
  tone: Tone;
  /** What happens next, or what happened: `next attempt at 14:05:09 (in 25 s)`. */
  detail: string;
}

/**
 * A delivery in words. `pending` is three things: no attempt made yet (queued for a worker),
 * an attempt under way (its log entry not written yet), or a failed attempt waiting for the
 * next one at `next_attempt_at` (retrying).
 */
export function deliveryState(d: Pick<WebhookDelivery, 'status' | 'attempts' | 'next_attempt_at' | 'finished_at' | 'last_error' | 'attempt_log'>, now: number): DeliveryState {
  const tries = (n: number) => `${n} attempt${n === 1 ? '' : 's'}`;
  if (d.status === 'succeeded') return { key: 'delivered', label: 'Delivered', tone: 'good', detail: d.attempts > 1 ? `after ${tries(d.attempts)}` : '' };
  if (d.status === 'failed') return { key: 'failed', label: 'Failed', tone: 'bad', detail: `gave up after ${tries(d.attempts)}${d.last_error ? `: ${d.last_error}` : ''}` };
  if (d.attempts === 0) return { key: 'queued', label: 'Queued', tone: 'neutral', detail: 'waiting for a worker to send it' };
  if (d.attempt_log.length < d.attempts) return { key: 'sending', label: 'Sending', tone: 'active', detail: `attempt ${d.attempts} under way` };
  const next = d.next_attempt_at ? `next attempt at ${clockTime(d.next_attempt_at)} (${untilText(d.next_attempt_at, now)})` : 'next attempt soon';
  return { key: 'retrying', label: 'Retrying', tone: 'warn', detail: d.last_error ? `${next}; last: ${d.last_error}` : next };
}

/** Whether the delivery will not change any more (delivered or failed). */
export function deliveryFinished(d: Pick<WebhookDelivery, 'status'>): boolean {
  return d.status !== 'pending';
}

/** One attempt in a line: `#2 · HTTP 503 Service Unavailable · 12 ms` (and its error, if any, after). */
export function attemptSummary(a: Pick<DeliveryAttempt, 'number' | 'status_code' | 'duration_ms' | 'ok' | 'error'>): { head: string; error: string } {
  const error = a.ok ? '' : a.error && !(a.status_code != null && a.error === `HTTP ${a.status_code}`) ? a.error : '';
  return { head: `#${a.number} · ${httpStatusText(a.status_code)} · ${durationText(a.duration_ms)}`, error };
}

/** The "last delivery" of a subscription's row: its state, or that none was made yet. */
export function lastDeliveryText(d: WebhookDelivery | null | undefined, now: number): { label: string; tone: Tone; detail: string } {
  if (!d) return { label: 'None yet', tone: 'neutral', detail: '' };
  const s = deliveryState(d, now);
  return { label: s.label, tone: s.tone, detail: `${eventLabel(d.event)} · ${clockTime(d.created_at)}` };
}

/** `whsec_Q2x9…`: the secret's prefix, as the list shows it. */
export function secretShown(w: Pick<Webhook, 'secret_prefix'>): string {
  return `${w.secret_prefix}…`;
}

// ---------------------------------------------------------------- the delivery log's pages

export const DELIVERY_PAGE_SIZE = 10;

/** The deliveries loaded so far (newest first) and the server's total. */
export interface DeliveryLog {
  deliveries: WebhookDelivery[];
  count: number;
  /** The last page asked for (the next "load more" asks for the one after). */
  page: number;
}

export const emptyLog = (): DeliveryLog => ({ deliveries: [], count: 0, page: 0 });

/**
 * The log with a page merged in: a delivery already shown takes its newer state, new ones
 * are added, newest first. A page fetched after new deliveries were made (pings) overlaps
 * the one before: the overlap is merged, nothing is shown twice.
 */
export function logMerged(log: DeliveryLog, page: Paginated<WebhookDelivery>, pageNumber: number | null): DeliveryLog {
  const byId = new Map(log.deliveries.map((d) => [d.id, d]));
  for (const d of page.results) byId.set(d.id, d);
  const deliveries = [...byId.values()].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  return { deliveries, count: Math.max(page.count, deliveries.length), page: pageNumber == null ? log.page : Math.max(log.page, pageNumber) };
}

/** Whether older deliveries are left to load. */
export function logHasMore(log: DeliveryLog): boolean {
  return log.deliveries.length < log.count;
}

/** The page a "load more" asks for: the next page of {@link DELIVERY_PAGE_SIZE} after the deliveries shown. */
export function nextPage(log: DeliveryLog, pageSize = DELIVERY_PAGE_SIZE): number {
  return Math.max(log.page, Math.floor(log.deliveries.length / pageSize)) + 1;
}

// ---------------------------------------------------------------- the test ping

/**
 * After "Send test ping" the log asks again after each of these delays (ms) until the ping's
 * first attempt is known: about 20 s in all, then it stays as it was last seen ("Refresh"
 * asks again).
 */
export const PING_POLL_DELAYS_MS = [700, 1000, 1500, 2000, 3000, 4000, 4000, 4000] as const;

/**
 * Whether to ask again: delays are left and the ping waits for its first attempt (queued, or
 * under way). Once delivered, failed or retrying, the answer is known: a retry comes 30 s or
 * more later, and the open log asks again now and then while one is pending.
 */
export function pingPollAgain(delivery: WebhookDelivery | undefined, polls: number, now = Date.now()): boolean {
  if (polls >= PING_POLL_DELAYS_MS.length) return false;
  if (!delivery) return true;
  const key = deliveryState(delivery, now).key;
  return key === 'queued' || key === 'sending';
}

/** The words under the ping button while it is followed. */
export function pingProgress(delivery: WebhookDelivery | undefined, now: number): string {
  const key = delivery ? deliveryState(delivery, now).key : 'queued';
  return key === 'sending' ? 'Sending the ping to your receiver…' : 'Ping queued; waiting for a worker to send it…';
}

/** The words under the ping button once polling stopped. */
export function pingOutcome(delivery: WebhookDelivery | undefined, now: number): string {
  if (!delivery) return 'The ping was not found in the log.';
  const s = deliveryState(delivery, now);
  const first = delivery.attempt_log[0];
  switch (s.key) {
    case 'delivered':
      return `Ping delivered: your receiver answered ${httpStatusText(first?.status_code ?? null)}.`;
    case 'failed':
      return `Ping failed: ${delivery.last_error || 'no answer'}.`;
    case 'retrying':
      return `Ping not delivered yet (${delivery.last_error || 'no answer'}); ${s.detail.split(';')[0]}.`;
    case 'queued':
      return 'Ping queued: no worker has sent it yet (is a Celery worker on the default queue running?).';
    default:
      return 'Ping being sent…';
  }
}

/** The secret dialog's warning (the server never shows the secret again). */
export const SECRET_NOTICE = 'Store this secret now: it will not be shown again.';
export const SECRET_HELP =
  'Your receiver needs it to check the X-Cyto-Signature header of every delivery (HMAC-SHA256 of "timestamp.body"). If it is lost, delete this subscription and create a new one.';
