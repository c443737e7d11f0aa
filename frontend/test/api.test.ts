import { describe, expect, it, vi } from 'vitest';
import { ApiClient, ApiError, conflictState, readCookie } from '../src/core/api';

function client(respond: (url: string, init: RequestInit) => Response | Promise<Response>, cookies = 'sessionid=x; csrftoken=tok%3D1; other=y') {
  const calls: { url: string; init: RequestInit }[] = [];
  const fetch = vi.fn(async (url: string, init?: RequestInit) => {
    calls.push({ url, init: init! });
    return respond(url, init!);
  });
  return { api: new ApiClient({ fetch, getCookies: () => cookies }), calls };
}

const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

describe('ApiClient', () => {
  it('reads cookies', () => {
    expect(readCookie('a=1; csrftoken=abc; b=2', 'csrftoken')).toBe('abc');
    expect(readCookie('a=1', 'csrftoken')).toBeNull();
  });

  it('sends session credentials, JSON and the CSRF header on unsafe methods only', async () => {
    const { api, calls } = client(() => json({ id: 1, username: 'u', is_superuser: false }));
    await api.me();
    await api.login('u', 'p');
    expect(calls[0].url).toBe('/api/v1/auth/me');
    expect(calls[0].init.credentials).toBe('same-origin');
    expect((calls[0].init.headers as Record<string, string>)['X-CSRFToken']).toBeUndefined();
    expect(calls[1].init.method).toBe('POST');
    expect((calls[1].init.headers as Record<string, string>)['X-CSRFToken']).toBe('tok=1');
    expect((calls[1].init.headers as Record<string, string>)['Content-Type']).toBe('application/json');
    expect(JSON.parse(String(calls[1].init.body))).toEqual({ username: 'u', password: 'p' });
  });

  it('builds list queries, skipping empty filters', async () => {
    const { api, calls } = client(() => json({ count: 0, next: null, previous: null, results: [] }));
    await api.listImages(3, { status: 'new', split: '', bethesda: undefined, page: 2, page_size: 48 });
    expect(calls[0].url).toBe('/api/v1/projects/3/images?status=new&page=2&page_size=48');
    await api.getCells(5, 'proposal');
    expect(calls[1].url).toBe('/api/v1/images/5/cells?layer=proposal');
  });

  it('sends the revision and the Idempotency-Key with PUT cells', async () => {
    const { api, calls } = client(() => json({ revision: 2, cells: [] }));
    const res = await api.saveCells(5, { revision: 1, cells: [{ class_id: 1, polygon: [[0, 0], [1, 0], [1, 1]] }] }, 'K');
    expect(res.revision).toBe(2);
    expect(calls[0].init.method).toBe('PUT');
    expect((calls[0].init.headers as Record<string, string>)['Idempotency-Key']).toBe('K');
  });

  it('turns error bodies into ApiError with status, detail and field errors', async () => {
    const { api } = client(() => json({ detail: 'Invalid cells', errors: { cells: { '3': ['Polygon self-intersects'] } } }, 400));
    const err = (await api.saveCells(1, { revision: 1, cells: [] }).catch((e) => e)) as ApiError;
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(400);
    expect(err.detail).toBe('Invalid cells');
    expect(err.fieldErrors).toEqual({ cells: { '3': ['Polygon self-intersects'] } });
    expect(err.fieldMessages()).toEqual(['cells.3: Polygon self-intersects']);
    expect(err.isTransient).toBe(false);
  });

  it('accepts DRF-style field errors at the top level', async () => {
    const { api } = client(() => json({ username: ['This field is required.'] }, 400));
    const err = (await api.login('', '').catch((e) => e)) as ApiError;
    expect(err.fieldMessages()).toEqual(['username: This field is required.']);
  });

  it('exposes the 409 body (server revision and cells)', async () => {
    const { api } = client(() => json({ detail: 'Stale revision', revision: 9, cells: [{ id: 1, class_id: null, polygon: [] }] }, 409));
    const err = (await api.saveCells(1, { revision: 1, cells: [] }).catch((e) => e)) as ApiError;
    expect(conflictState(err)).toEqual({ revision: 9, cells: [{ id: 1, class_id: null, polygon: [] }] });
  });

  it('maps network failures to status 0 and 5xx/429 to transient errors', async () => {
    const net = client(() => {
      throw new TypeError('Failed to fetch');
    });
    const e0 = (await net.api.me().catch((e) => e)) as ApiError;
    expect(e0.status).toBe(0);
    expect(e0.isNetwork).toBe(true);
    expect(e0.isTransient).toBe(true);
    const html = client(() => new Response('<html>Bad gateway</html>', { status: 502, statusText: 'Bad Gateway' }));
    const e5 = (await html.api.me().catch((e) => e)) as ApiError;
    expect(e5.status).toBe(502);
    expect(e5.detail).toBe('Bad Gateway');
    expect(e5.isTransient).toBe(true);
    expect(new ApiError(429, 'slow down').isTransient).toBe(true);
  });

  it('calls onUnauthorized on 401', async () => {
    const { api } = client(() => json({ detail: 'Authentication credentials were not provided.' }, 401));
    const spy = vi.fn();
    api.onUnauthorized = spy;
    await api.getProject(1).catch(() => undefined);
    expect(spy).toHaveBeenCalledOnce();
  });

  it('handles empty 204 bodies and posts transitions / proposal actions', async () => {
    const { api, calls } = client((url) => (url.endsWith('reject') ? new Response(null, { status: 204 }) : json({ revision: 3, cells: [] })));
    expect(await api.rejectProposals(4, { ids: [1, 2] })).toBeNull();
    await api.acceptProposals(4, { revision: 2, all: true });
    await api.transition(4, 'submit');
    expect(calls.map((c) => c.url)).toEqual(['/api/v1/images/4/proposals/reject', '/api/v1/images/4/proposals/accept', '/api/v1/images/4/transition']);
    expect(JSON.parse(String(calls[2].init.body))).toEqual({ action: 'submit' });
  });
});
