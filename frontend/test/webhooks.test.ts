import { describe, expect, it } from 'vitest';
import schema from '../openapi.json';
import { parseRoute, routeHash } from '../src/core/router';
import type { DeliveryAttempt, Paginated, WebhookDelivery } from '../src/core/types';
import {
  attemptSummary,
  clockTime,
  deliveryState,
  durationText,
  emptyLog,
  eventLabel,
  eventsSummary,
  eventsToggled,
  fieldErrorText,
  httpStatusText,
  lastDeliveryText,
  logHasMore,
  logMerged,
  nextPage,
  PING_POLL_DELAYS_MS,
  pingOutcome,
  pingPollAgain,
  pingProgress,
  splitFieldErrors,
  untilText,
  urlProblem,
  WEBHOOK_EVENTS,
} from '../src/core/webhooks';

const NOW = Date.parse('2026-03-01T12:00:00Z');
const iso = (secondsFromNow: number) => new Date(NOW + secondsFromNow * 1000).toISOString();

const attempt = (over: Partial<DeliveryAttempt> = {}): DeliveryAttempt => ({
  number: 1,
  started_at: iso(-60),
  duration_ms: 12.4,
  address: '127.0.0.1',
  status_code: 200,
  ok: true,
  error: '',
  response_excerpt: 'ok',
  ...over,
});

const delivery = (over: Partial<WebhookDelivery> = {}): WebhookDelivery => ({
  id: '5b0f4e0e-2a57-4a8e-9f0e-6d3c3f9b8f21',
  event: 'ping',
  status: 'succeeded',
  attempts: 1,
  next_attempt_at: null,
  created_at: iso(-60),
  finished_at: iso(-59),
  last_error: '',
  payload: {},
  attempt_log: [attempt()],
  ...over,
});

const page = (results: WebhookDelivery[], count: number): Paginated<WebhookDelivery> => ({ count, next: null, previous: null, results });

describe('webhooks: events', () => {
  it('offers exactly the events of the schema enum, in its order', () => {
    const declared = (schema.components.schemas as unknown as Record<string, { enum?: string[] }>).EventsEnum.enum;
    expect(WEBHOOK_EVENTS).toEqual(declared);
    expect(WEBHOOK_EVENTS).not.toContain('ping');
  });

  it('names events in words', () => {
    expect(eventLabel('model.promoted')).toBe('Model promoted');
    expect(eventLabel('ping')).toBe('Test ping');
    expect(eventLabel('something.new')).toBe('something.new');
    expect(eventsSummary(['export.ready', 'image.verified'])).toBe('Export ready, Image verified');
    expect(eventsSummary([...WEBHOOK_EVENTS])).toBe(`All ${WEBHOOK_EVENTS.length} events`);
  });

  it('toggles an event, keeping the schema order and each once', () => {
    expect(eventsToggled(['model.promoted'], 'image.submitted', true)).toEqual(['image.submitted', 'model.promoted']);
    expect(eventsToggled(['image.submitted', 'model.promoted'], 'model.promoted', true)).toEqual(['image.submitted', 'model.promoted']);
    expect(eventsToggled(['image.submitted', 'model.promoted'], 'image.submitted', false)).toEqual(['model.promoted']);
  });
});

describe('webhooks: the form', () => {
  it('checks the URL before asking the server', () => {
    expect(urlProblem('')).toBe('Enter the URL your receiver listens on.');
    expect(urlProblem('hooks.example.com/x')).toMatch(/must start with https:\/\//);
    expect(urlProblem('ftp://hooks.example.com')).toMatch(/must start with/);
    expect(urlProblem(' https://hooks.example.com/cyto ')).toBeNull();
    expect(urlProblem('http://10.0.0.1/hook')).toBeNull(); // the server decides where a host may be
  });

  it("puts the server's words in a sentence a user understands", () => {
    expect(fieldErrorText('url', '10.0.0.1 is a private address; webhooks go to public addresses only')).toBe(
      'This address cannot receive webhooks: 10.0.0.1 is a private address. Webhooks are only sent to public internet addresses; ask your platform administrator to allow an internal network.',
    );
    expect(fieldErrorText('url', 'intranet.example.com resolves to 192.168.7.7 is a private address; webhooks go to public addresses only')).toMatch(/^This address cannot receive webhooks: intranet\.example\.com resolves to 192\.168\.7\.7 is a private address\./);
    expect(fieldErrorText('url', 'the scheme must be http or https')).toBe('This URL cannot be used: the scheme must be http or https.');
    expect(fieldErrorText('url', ['This field may not be blank.'])).toBe('Enter the URL your receiver listens on.');
    expect(fieldErrorText('url', 'nowhere.example does not resolve')).toBe('Nowhere.example does not resolve. Check the host name.');
    expect(fieldErrorText('events', 'name at least one event')).toBe('Choose at least one event.');
    expect(fieldErrorText('events', { 1: ['"image.deleted" is not a valid choice.'] })).toBe('"image.deleted" is not a valid choice.');
    expect(fieldErrorText('description', ['Ensure this field has no more than 200 characters.'])).toBe('The description is too long (200 characters at most).');
  });

  it("splits the server's errors into the form's fields and the rest", () => {
    const { fields, other } = splitFieldErrors({ url: 'has no host', secret: 'unknown field' });
    expect(fields).toEqual({ url: 'This URL cannot be used: has no host.' });
    expect(other).toEqual(['secret: unknown field']);
  });
});

describe('webhooks: deliveries in words', () => {
  it('formats times, durations and status codes', () => {
    const at = new Date(2026, 2, 1, 9, 5, 7).toISOString(); // local 09:05:07
    expect(clockTime(at)).toBe('09:05:07');
    expect(clockTime(null)).toBe('—');
    expect(untilText(iso(25), NOW)).toBe('in 25 s');
    expect(untilText(iso(270), NOW)).toBe('in 5 min');
    expect(untilText(iso(2 * 3600), NOW)).toBe('in 2 h');
    expect(untilText(iso(-5), NOW)).toBe('now');
    expect(durationText(12.4)).toBe('12 ms');
    expect(durationText(0.42)).toBe('0.4 ms');
    expect(durationText(1300)).toBe('1.3 s');
    expect(durationText(null)).toBe('—');
    expect(httpStatusText(200)).toBe('HTTP 200 OK');
    expect(httpStatusText(503)).toBe('HTTP 503 Service Unavailable');
    expect(httpStatusText(418)).toBe('HTTP 418');
    expect(httpStatusText(null)).toBe('no answer');
  });

  it('tells delivered, retrying (with the next attempt), failed, sending and queued apart', () => {
    expect(deliveryState(delivery(), NOW)).toMatchObject({ key: 'delivered', label: 'Delivered', tone: 'good', detail: '' });
    expect(deliveryState(delivery({ attempts: 3 }), NOW).detail).toBe('after 3 attempts');

    const retrying = delivery({ status: 'pending', attempts: 1, next_attempt_at: iso(25), finished_at: null, last_error: 'HTTP 503', attempt_log: [attempt({ status_code: 503, ok: false, error: 'HTTP 503' })] });
    const s = deliveryState(retrying, NOW);
    expect(s).toMatchObject({ key: 'retrying', label: 'Retrying', tone: 'warn' });
    expect(s.detail).toBe(`next attempt at ${clockTime(iso(25))} (in 25 s); last: HTTP 503`);

    const failed = delivery({ status: 'failed', attempts: 6, last_error: 'timed out' });
    expect(deliveryState(failed, NOW)).toMatchObject({ key: 'failed', label: 'Failed', tone: 'bad', detail: 'gave up after 6 attempts: timed out' });
    expect(deliveryState(delivery({ status: 'failed', attempts: 1, last_error: '' }), NOW).detail).toBe('gave up after 1 attempt');

    expect(deliveryState(delivery({ status: 'pending', attempts: 0, attempt_log: [], next_attempt_at: iso(600) }), NOW)).toMatchObject({ key: 'queued', label: 'Queued' });
    expect(deliveryState(delivery({ status: 'pending', attempts: 2, attempt_log: [attempt({ ok: false, status_code: 500 })] }), NOW)).toMatchObject({ key: 'sending', detail: 'attempt 2 under way' });
  });

  it('shows an attempt with its status code, duration and error (not the status twice)', () => {
    expect(attemptSummary(attempt())).toEqual({ head: '#1 · HTTP 200 OK · 12 ms', error: '' });
    expect(attemptSummary(attempt({ number: 2, status_code: 503, ok: false, error: 'HTTP 503', duration_ms: 1500 }))).toEqual({ head: '#2 · HTTP 503 Service Unavailable · 1.5 s', error: '' });
    expect(attemptSummary(attempt({ status_code: 302, ok: false, error: 'redirect (302) not followed' }))).toEqual({ head: '#1 · HTTP 302 Found · 12 ms', error: 'redirect (302) not followed' });
    expect(attemptSummary(attempt({ status_code: null, ok: false, error: 'refused, no request made: 10.0.0.1 is a private address', duration_ms: 0.2 }))).toEqual({
      head: '#1 · no answer · 0.2 ms',
      error: 'refused, no request made: 10.0.0.1 is a private address',
    });
  });

  it("sums up a subscription's last delivery", () => {
    expect(lastDeliveryText(null, NOW)).toEqual({ label: 'None yet', tone: 'neutral', detail: '' });
    const last = lastDeliveryText(delivery({ event: 'model.promoted' }), NOW);
    expect(last).toEqual({ label: 'Delivered', tone: 'good', detail: `Model promoted · ${clockTime(iso(-60))}` });
  });
});

describe('webhooks: the delivery log', () => {
  const d = (n: number, over: Partial<WebhookDelivery> = {}) => delivery({ id: `d${n}`, created_at: iso(-1000 + n), ...over });

  it('merges pages newest first, a delivery shown once with its newest state', () => {
    let log = logMerged(emptyLog(), page([d(30), d(29), d(28)], 5), 1);
    expect(log.deliveries.map((x) => x.id)).toEqual(['d30', 'd29', 'd28']);
    expect(logHasMore(log)).toBe(true);
    // a ping made meanwhile: page 2 overlaps the first by one
    log = logMerged(log, page([d(31, { status: 'pending', attempts: 0, attempt_log: [] })], 6), null);
    expect(nextPage(log, 3)).toBe(2);
    log = logMerged(log, page([d(28), d(27), d(26)], 6), 2);
    expect(log.deliveries.map((x) => x.id)).toEqual(['d31', 'd30', 'd29', 'd28', 'd27', 'd26']);
    expect(log.page).toBe(2);
    expect(logHasMore(log)).toBe(false);
    // the ping's newer state replaces the one shown
    log = logMerged(log, page([d(31)], 6), null);
    expect(log.deliveries[0].status).toBe('succeeded');
    expect(log.deliveries).toHaveLength(6);
  });

  it('asks for the page after those shown', () => {
    expect(nextPage(emptyLog())).toBe(1);
    expect(nextPage({ deliveries: Array.from({ length: 10 }, (_, i) => d(i)), count: 30, page: 1 })).toBe(2);
    expect(nextPage({ deliveries: Array.from({ length: 21 }, (_, i) => d(i)), count: 30, page: 2 })).toBe(3);
  });
});

describe('webhooks: the test ping', () => {
  it('polls until the ping is finished, a few times at most', () => {
    const pending = delivery({ status: 'pending', attempts: 0, attempt_log: [] });
    expect(pingPollAgain(pending, 0)).toBe(true);
    expect(pingPollAgain(undefined, 1)).toBe(true);
    expect(pingPollAgain(delivery({ status: 'pending', attempts: 1, attempt_log: [] }), 2)).toBe(true); // under way
    expect(pingPollAgain(delivery(), 1)).toBe(false);
    expect(pingPollAgain(delivery({ status: 'failed' }), 1)).toBe(false);
    const retrying = delivery({ status: 'pending', attempts: 1, next_attempt_at: iso(30), attempt_log: [attempt({ ok: false, status_code: 503 })] });
    expect(pingPollAgain(retrying, 1, NOW)).toBe(false); // the answer is known; the retry comes much later
    expect(pingPollAgain(pending, PING_POLL_DELAYS_MS.length)).toBe(false);
    expect(pingProgress(pending, NOW)).toMatch(/queued/);
    expect(pingProgress(delivery({ status: 'pending', attempts: 1, attempt_log: [] }), NOW)).toMatch(/Sending/);
    const total = PING_POLL_DELAYS_MS.reduce((a, b) => a + b, 0);
    expect(total).toBeGreaterThan(10_000);
    expect(total).toBeLessThan(30_000);
  });

  it('says how the ping went', () => {
    expect(pingOutcome(delivery(), NOW)).toBe('Ping delivered: your receiver answered HTTP 200 OK.');
    expect(pingOutcome(delivery({ status: 'failed', last_error: 'connection refused' }), NOW)).toBe('Ping failed: connection refused.');
    const retrying = delivery({ status: 'pending', attempts: 1, next_attempt_at: iso(30), last_error: 'HTTP 503', attempt_log: [attempt({ status_code: 503, ok: false, error: 'HTTP 503' })] });
    expect(pingOutcome(retrying, NOW)).toBe(`Ping not delivered yet (HTTP 503); next attempt at ${clockTime(iso(30))} (in 30 s).`);
    expect(pingOutcome(delivery({ status: 'pending', attempts: 0, attempt_log: [] }), NOW)).toMatch(/no worker has sent it yet/);
  });

  it('has a route of its own among the admin tabs', () => {
    expect(parseRoute('#/projects/2/admin/webhooks')).toEqual({ name: 'admin', projectId: 2, tab: 'webhooks' });
    expect(routeHash({ name: 'admin', projectId: 2, tab: 'webhooks' })).toBe('#/projects/2/admin/webhooks');
  });
});
