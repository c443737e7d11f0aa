/**
 * Typed fetch wrapper for REST API v1 (docs/api.md).
 *
 * - session credentials (`credentials: 'same-origin'`)
 * - `X-CSRFToken` from the `csrftoken` cookie on unsafe methods
 * - every failure becomes an {@link ApiError} carrying status / detail / field errors
 *   (status 0 for network failures).
 */
import type {
  Adjudication,
  AdjudicationDecisionIO,
  Agreement,
  ApiCell,
  Assignment,
  CellsResponse,
  Corrections,
  DatasetSnapshot,
  HistoryEntry,
  ImageFilters,
  ImageInfo,
  Layer,
  Member,
  Paginated,
  Project,
  Registry,
  Review,
  ReviewDraftBody,
  ReviewsOfRound,
  ReviewSubmitResult,
  SaveCellsBody,
  TrainingJob,
  TrainingPolicy,
  TransitionState,
  User,
  VerificationRound,
  WorkQueue,
} from './types';

export type FieldErrors = Record<string, unknown>;

export class ApiError extends Error {
  readonly status: number;
  readonly detail: string;
  readonly fieldErrors: FieldErrors;
  readonly body: unknown;

  constructor(status: number, detail: string, fieldErrors: FieldErrors = {}, body: unknown = null) {
    super(status ? `${status}: ${detail}` : detail);
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail;
    this.fieldErrors = fieldErrors;
    this.body = body;
  }

  /** No HTTP answer at all (offline, DNS, connection reset, CORS...). */
  get isNetwork(): boolean {
    return this.status === 0;
  }

  /** Worth retrying automatically: network failure, 5xx, 429, 408. */
  get isTransient(): boolean {
    return this.status === 0 || this.status >= 500 || this.status === 429 || this.status === 408;
  }

  /** Field errors flattened to readable lines, e.g. "cells.3: polygon is self-intersecting". */
  fieldMessages(): string[] {
    const out: string[] = [];
    const walk = (prefix: string, v: unknown): void => {
      if (v == null) return;
      if (typeof v === 'string') out.push(prefix ? `${prefix}: ${v}` : v);
      else if (Array.isArray(v)) {
        if (v.every((x) => typeof x === 'string')) {
          for (const s of v) out.push(prefix ? `${prefix}: ${s}` : s);
        } else v.forEach((x, i) => walk(prefix ? `${prefix}.${i}` : String(i), x));
      } else if (typeof v === 'object') {
        for (const [k, x] of Object.entries(v as Record<string, unknown>)) walk(prefix ? `${prefix}.${k}` : k, x);
      }
    };
    walk('', this.fieldErrors);
    return out;
  }
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface ApiClientOptions {
  /** Prefix of every endpoint; default `/api/v1/`. */
  baseUrl?: string;
  fetch?: FetchLike;
  /** Returns `document.cookie`-like text; injectable for tests. */
  getCookies?: () => string;
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined | null>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export function readCookie(cookies: string, name: string): string | null {
  for (const part of cookies.split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    if (part.slice(0, i).trim() === name) return decodeURIComponent(part.slice(i + 1).trim());
  }
  return null;
}

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export class ApiClient {
  readonly baseUrl: string;
  private readonly fetchImpl: FetchLike;
  private readonly getCookies: () => string;
  /** Called on every 401 (session expired); the app redirects to the login screen. */
  onUnauthorized: ((err: ApiError) => void) | null = null;

  constructor(opts: ApiClientOptions = {}) {
    this.baseUrl = opts.baseUrl ?? '/api/v1/';
    this.fetchImpl = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.getCookies = opts.getCookies ?? (() => (typeof document !== 'undefined' ? document.cookie : ''));
  }

  url(path: string, query?: RequestOptions['query']): string {
    let u = /^https?:\/\//.test(path) || path.startsWith('/') ? path : this.baseUrl + path;
    if (query) {
      const qs = Object.entries(query)
        .filter(([, v]) => v !== undefined && v !== null && v !== '')
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
        .join('&');
      if (qs) u += (u.includes('?') ? '&' : '?') + qs;
    }
    return u;
  }

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json', ...opts.headers };
    let body: BodyInit | undefined;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    if (UNSAFE.has(method)) {
      const token = readCookie(this.getCookies(), 'csrftoken');
      if (token) headers['X-CSRFToken'] = token;
    }
    let res: Response;
    try {
      res = await this.fetchImpl(this.url(path, opts.query), {
        method,
        headers,
        body,
        credentials: 'same-origin',
        signal: opts.signal,
      });
    } catch (e) {
      if ((e as Error)?.name === 'AbortError') throw e;
      throw new ApiError(0, 'Network error — the server cannot be reached', {}, null);
    }
    const text = await res.text().catch(() => '');
    let data: unknown = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!res.ok) {
      const obj = data && typeof data === 'object' ? (data as Record<string, unknown>) : {};
      const detail =
        typeof obj.detail === 'string' ? obj.detail : res.statusText || defaultDetail(res.status);
      const errors =
        obj.errors && typeof obj.errors === 'object'
          ? (obj.errors as FieldErrors)
          : // DRF-style bodies name the fields at the top level
            Object.fromEntries(Object.entries(obj).filter(([k]) => k !== 'detail' && k !== 'revision' && k !== 'cells'));
      const err = new ApiError(res.status, detail, errors, data);
      if (res.status === 401) this.onUnauthorized?.(err);
      throw err;
    }
    return data as T;
  }

  // ---- auth ----
  login(username: string, password: string): Promise<User> {
    return this.request('POST', 'auth/login', { body: { username, password } });
  }
  logout(): Promise<void> {
    return this.request('POST', 'auth/logout');
  }
  me(): Promise<User> {
    return this.request('GET', 'auth/me');
  }

  // ---- projects ----
  listProjects(page = 1, pageSize = 100): Promise<Paginated<Project>> {
    return this.request('GET', 'projects', { query: { page, page_size: pageSize } });
  }
  getProject(id: number): Promise<Project> {
    return this.request('GET', `projects/${id}`);
  }

  // ---- images ----
  listImages(projectId: number, filters: ImageFilters = {}): Promise<Paginated<ImageInfo>> {
    return this.request('GET', `projects/${projectId}/images`, { query: { ...filters } });
  }
  getImage(id: number): Promise<ImageInfo> {
    return this.request('GET', `images/${id}`);
  }
  imageFileUrl(id: number, variant: 'display' | 'thumbnail' | 'original' = 'display'): string {
    return this.url(`images/${id}/file`, { variant });
  }

  // ---- cells ----
  getCells(imageId: number, layer: Layer = 'annotation', signal?: AbortSignal): Promise<CellsResponse> {
    return this.request('GET', `images/${imageId}/cells`, { query: { layer }, signal });
  }
  /** Replaces the whole annotation layer. 409 carries `{detail, revision, cells}` in `ApiError.body`. */
  saveCells(imageId: number, body: SaveCellsBody, idempotencyKey?: string): Promise<CellsResponse> {
    return this.request('PUT', `images/${imageId}/cells`, {
      body,
      headers: idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : undefined,
    });
  }
  getHistory(imageId: number): Promise<HistoryEntry[] | Paginated<HistoryEntry>> {
    return this.request('GET', `images/${imageId}/history`);
  }

  // ---- proposals ----
  acceptProposals(imageId: number, body: { revision: number; ids?: number[]; all?: boolean }): Promise<CellsResponse> {
    return this.request('POST', `images/${imageId}/proposals/accept`, { body });
  }
  rejectProposals(imageId: number, body: { ids?: number[]; all?: boolean }): Promise<unknown> {
    return this.request('POST', `images/${imageId}/proposals/reject`, { body });
  }

  // ---- workflow ----
  transition(imageId: number, action: string): Promise<(Partial<ImageInfo> & Partial<TransitionState>) | null> {
    return this.request('POST', `images/${imageId}/transition`, { body: { action } });
  }
  transitionState(imageId: number): Promise<TransitionState> {
    return this.request('GET', `images/${imageId}/transition`);
  }
  queue(projectId: number, limit = 5): Promise<WorkQueue> {
    return this.request('GET', 'me/queue', { query: { project: projectId, limit } });
  }
  assignments(imageId: number): Promise<{ round: VerificationRound | null; open_slots: number; assignments: Assignment[] }> {
    return this.request('GET', `images/${imageId}/assignments`);
  }
  assignReviewer(imageId: number, reviewer: number): Promise<Assignment> {
    return this.request('POST', `images/${imageId}/assignments`, { body: { reviewer } });
  }
  cancelAssignment(imageId: number, assignmentId: number): Promise<void> {
    return this.request('DELETE', `images/${imageId}/assignments/${assignmentId}`);
  }
  members(projectId: number): Promise<Member[] | Paginated<Member>> {
    return this.request('GET', `projects/${projectId}/members`);
  }

  // ---- reviews (blind: never ask for others' reviews before submitting one's own) ----
  myReview(imageId: number): Promise<Review> {
    return this.request('GET', `images/${imageId}/reviews/mine`);
  }
  saveMyReview(imageId: number, body: ReviewDraftBody): Promise<Review> {
    return this.request('PUT', `images/${imageId}/reviews/mine`, { body });
  }
  submitMyReview(imageId: number, acceptUndecided = false): Promise<ReviewSubmitResult> {
    return this.request('POST', `images/${imageId}/reviews/mine/submit`, { body: { accept_undecided: acceptUndecided } });
  }
  reviews(imageId: number, round?: number): Promise<ReviewsOfRound> {
    return this.request('GET', `images/${imageId}/reviews`, { query: { round } });
  }

  // ---- adjudication ----
  adjudication(imageId: number): Promise<Adjudication> {
    return this.request('GET', `images/${imageId}/adjudication`);
  }
  adjudicate(imageId: number, decisions: AdjudicationDecisionIO[], idempotencyKey?: string): Promise<Adjudication> {
    return this.request('POST', `images/${imageId}/adjudication`, {
      body: { decisions },
      headers: idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : undefined,
    });
  }

  // ---- analytics ----
  agreement(projectId: number, imageId?: number): Promise<Agreement> {
    return this.request('GET', `projects/${projectId}/agreement`, { query: { image: imageId } });
  }
  corrections(projectId: number): Promise<Corrections> {
    return this.request('GET', `projects/${projectId}/corrections`);
  }

  // ---- training (training/api) ----
  trainingJobs(projectId: number, page = 1, pageSize = 20): Promise<Paginated<TrainingJob>> {
    return this.request('GET', `projects/${projectId}/training/jobs`, { query: { page, page_size: pageSize } });
  }
  startTrainingJob(projectId: number, body: { kind: string; config: Record<string, unknown>; snapshot?: number | null }): Promise<TrainingJob> {
    return this.request('POST', `projects/${projectId}/training/jobs`, { body });
  }
  trainingJob(jobId: number, signal?: AbortSignal): Promise<TrainingJob> {
    return this.request('GET', `training/jobs/${jobId}`, { signal });
  }
  cancelTrainingJob(jobId: number): Promise<{ id: number; status: string; cancel_requested: boolean }> {
    return this.request('POST', `training/jobs/${jobId}/cancel`);
  }
  snapshots(projectId: number): Promise<Paginated<DatasetSnapshot>> {
    return this.request('GET', `projects/${projectId}/training/snapshots`, { query: { page_size: 100 } });
  }
  registry(projectId: number, snapshot?: number | null): Promise<Registry> {
    return this.request('GET', `projects/${projectId}/training/models`, { query: { snapshot } });
  }
  promoteModel(versionId: number, reason: string): Promise<unknown> {
    return this.request('POST', `training/models/${versionId}/promote`, { body: { reason } });
  }
  evaluateModel(versionId: number, snapshot?: number | null): Promise<unknown> {
    return this.request('POST', `training/models/${versionId}/evaluate`, { body: snapshot ? { snapshot } : {} });
  }
  rollback(projectId: number, kind: string): Promise<{ rolled_back: number | null; active: number | null }> {
    return this.request('POST', `projects/${projectId}/training/rollback`, { body: { kind } });
  }
  schedule(projectId: number): Promise<TrainingPolicy> {
    return this.request('GET', `projects/${projectId}/training/schedule`);
  }
  saveSchedule(projectId: number, body: Partial<TrainingPolicy>): Promise<TrainingPolicy> {
    return this.request('PUT', `projects/${projectId}/training/schedule`, { body });
  }
}

function defaultDetail(status: number): string {
  switch (status) {
    case 400:
      return 'Invalid request';
    case 401:
      return 'Not signed in';
    case 403:
      return 'Permission denied';
    case 404:
      return 'Not found';
    case 409:
      return 'Conflict';
    case 429:
      return 'Too many requests';
    default:
      return status >= 500 ? 'Server error' : `HTTP ${status}`;
  }
}

/** 409 body of `PUT images/{id}/cells` and `proposals/accept`. */
export function conflictState(err: ApiError): { revision: number; cells: ApiCell[] } | null {
  const b = err.body as { revision?: unknown; cells?: unknown } | null;
  if (err.status !== 409 || !b || typeof b.revision !== 'number' || !Array.isArray(b.cells)) return null;
  return { revision: b.revision, cells: b.cells as ApiCell[] };
}
