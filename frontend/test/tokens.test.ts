import { describe, expect, it } from 'vitest';
import { tokenBody, tokensSorted, tokenState } from '../src/core/tokens';
import type { ApiToken } from '../src/core/types';

const NOW = Date.parse('2026-06-01T12:00:00Z');
const t = (id: number, created: string, extra: Partial<ApiToken> = {}): ApiToken => ({ id, name: `t${id}`, project: null, prefix: `cyt_${id}`, created_at: created, expires_at: null, last_used_at: null, revoked_at: null, ...extra });

describe('API tokens', () => {
  it('tells active, expired and revoked tokens apart', () => {
    expect(tokenState(t(1, '2026-05-01T00:00:00Z'), NOW)).toBe('active');
    expect(tokenState(t(2, '2026-05-01T00:00:00Z', { expires_at: '2026-06-01T11:59:59Z' }), NOW)).toBe('expired');
    expect(tokenState(t(3, '2026-05-01T00:00:00Z', { expires_at: '2026-07-01T00:00:00Z' }), NOW)).toBe('active');
    expect(tokenState(t(4, '2026-05-01T00:00:00Z', { revoked_at: '2026-05-02T00:00:00Z' }), NOW)).toBe('revoked');
  });

  it('lists active tokens first, newest first', () => {
    const list = [t(1, '2026-05-01T00:00:00Z'), t(2, '2026-05-03T00:00:00Z', { revoked_at: '2026-05-04T00:00:00Z' }), t(3, '2026-05-02T00:00:00Z')];
    expect(tokensSorted(list, NOW).map((x) => x.id)).toEqual([3, 1, 2]);
  });

  it('builds the create body', () => {
    expect(tokenBody({ name: '  ', project: null, expiresInDays: 30 })).toEqual({ body: null, errors: { name: expect.stringMatching(/name/) } });
    expect(tokenBody({ name: 'x'.repeat(101), project: null, expiresInDays: null }).errors.name).toBe('At most 100 characters.');
    expect(tokenBody({ name: ' export script ', project: 4, expiresInDays: 30 }).body).toEqual({ name: 'export script', project: 4, expires_in_days: 30 });
    expect(tokenBody({ name: 'ci', project: null, expiresInDays: null }).body).toEqual({ name: 'ci' });
  });
});

describe('the tokens route', () => {
  it('parses and builds #/tokens', async () => {
    const { parseRoute, routeHash } = await import('../src/core/router');
    expect(parseRoute('#/tokens')).toEqual({ name: 'tokens' });
    expect(routeHash({ name: 'tokens' })).toBe('#/tokens');
    expect(parseRoute('#/tokens/x').name).toBe('notfound');
  });
});
