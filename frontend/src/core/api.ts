/**
 * Typed fetch wrapper for REST API v1 (docs/api.md), typed by the server's
 * OpenAPI schema (types.ts, schema.gen.ts): every endpoint goes through
 * {@link ApiClient.call} with the schema's route and method, so a path the
 * schema does not have, a wrong parameter or body, or a response type that is
 * not the schema's (or a narrowing of it, see types.ts) does not compile.
 *
 * - session credentials (`credentials: 'same-origin'`)
 * - `X-CSRFToken` from the `csrftoken` cookie on unsafe methods
 * - every failure becomes an {@link ApiError} carrying status / detail / field errors
 *   (status 0 for network failures).
 */
import {
  API_PREFIX,
  type Adjudication,
  type AdjudicationDecisionIO,
  type AdminQueue,
  type Agreement,
  type ApiCell,
  type ApiResponse,
  type ApiToken,
  type ApiTokenCreated,
  type ApiRoute,
  type Assignment,
  type Assignments,
  type BodyOf,
  type CancelledJob,
  type Corrections,
  type DatasetSnapshot,
  type EvaluationQueued,
  type GateVerdict,
  type HistoryEntry,
  type ImageFilters,
  type ImageInfo,
  type Layer,
  type Member,
  type MethodOf,
  type ModelKind,
  type ModelVersionDetail,
  type PageQuery,
  type RegionAction,
  type RegionInfo,
  type RegionTransitionResult,
  type Paginated,
  type PathParamsOf,
  type PresegmentQueued,
  type ProjectPresegmentQueued,
  type Project,
  type ProposalsRejected,
  type QueryOf,
  type Registry,
  type ResponseOf,
  type Review,
  type ReviewDraftBody,
  type ReviewsOfRound,
  type ReviewSubmitResult,
  type RevisionState,
  type Role,
  type Rollback,
  type SaveCellsBody,
  type DeltaBody,
  type DeltaConflictItem,
  type DeltaResponse,
  type SegmentBoxBody,
  type SegmentBoxResult,
  type SegmentClickBody,
  type SegmentClickResult,
  type ServerCells,
  type TrainingJobBrief,
  type TrainingJobDetail,
  type TrainingPolicy,
  type TrainingPolicyUpdate,
  type TransitionAction,
  type TransitionResult,
  type TransitionState,
  type User,
  type VerificationSettings,
  type VerificationSettingsUpdate,
  type Webhook,
  type WebhookCreated,
  type WebhookDelivery,
  type WebhookInput,
  type WebhookUpdate,
  type WorkQueue,
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

/** Options of {@link ApiClient.call}, typed by the route. */
export interface CallOptions<R extends ApiRoute, M extends MethodOf<R>> {
  query?: QueryOf<R, M>;
  body?: BodyOf<R, M>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** The item type of a paginated response (`{count, next, previous, results: T[]}`). */
type Item<T> = T extends { results: readonly (infer I)[] } ? I : never;

/** The URL path of a route with its parameters filled in (`images/5/cells`). */
export function fillRoute(route: string, params: Record<string, string | number>): string {
  return route.replace(/\{(\w+)\}/g, (_, name: string) => {
    if (!(name in params)) throw new Error(`missing path parameter ${name} of ${route}`);
    return encodeURIComponent(String(params[name]));
  });
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
    this.baseUrl = opts.baseUrl ?? API_PREFIX;
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

  /**
   * One endpoint of the schema: `route` and `method` as the schema spells them, the path
   * parameters, then query / body typed by the schema. The answer is the schema's response
   * type (or its correction, types.ts ResponseCorrections), or the narrower type the caller
   * declares as its return type: that one must be assignable to the schema's (types.ts,
   * "where the schema is too loose").
   */
  call<R extends ApiRoute, M extends MethodOf<R>, T extends ApiResponse<R, M> = ApiResponse<R, M>>(method: M, route: R, params: PathParamsOf<R, M>, opts: CallOptions<R, M> = {}): Promise<T> {
    return this.request<T>(method.toUpperCase(), fillRoute(route, params as Record<string, string | number>), opts as RequestOptions);
  }

  /** One page of a paginated list (the schema's `Paginated*` envelope; types.ts, Paginated). */
  private page<R extends ApiRoute, M extends MethodOf<R>, T extends Item<ResponseOf<R, M>> = Item<ResponseOf<R, M>>>(method: M, route: R, params: PathParamsOf<R, M>, query: PageQuery & (QueryOf<R, M> extends Record<string, never> ? unknown : QueryOf<R, M>)): Promise<Paginated<T>> {
    return this.request<Paginated<T>>(method.toUpperCase(), fillRoute(route, params as Record<string, string | number>), { query: query as RequestOptions['query'] });
  }

  // ---- auth ----
  login(username: string, password: string): Promise<User> {
    return this.call('post', 'auth/login', {}, { body: { username, password } });
  }
  logout(): Promise<void> {
    return this.call('post', 'auth/logout', {});
  }
  me(): Promise<User> {
    return this.call('get', 'auth/me', {});
  }

  // ---- projects ----
  tokens(): Promise<ApiToken[]> {
    return this.call('get', 'auth/tokens', {});
  }
  createToken(body: { name: string; project?: number; expires_in_days?: number }): Promise<ApiTokenCreated> {
    return this.call('post', 'auth/tokens', {}, { body });
  }
  revokeToken(tokenId: number): Promise<void> {
    return this.call('delete', 'auth/tokens/{token_id}', { token_id: tokenId });
  }
  listProjects(page = 1, pageSize = 100): Promise<Paginated<Project>> {
    return this.page('get', 'projects', {}, { page, page_size: pageSize });
  }
  getProject(id: number): Promise<Project> {
    return this.call('get', 'projects/{project_id}', { project_id: id });
  }

  // ---- images ----
  listImages(projectId: number, filters: ImageFilters = {}): Promise<Paginated<ImageInfo>> {
    return this.page('get', 'projects/{project_id}/images', { project_id: projectId }, { ...filters });
  }
  getImage(id: number): Promise<ImageInfo> {
    return this.call('get', 'images/{image_id}', { image_id: id });
  }
  imageFileUrl(id: number, variant: NonNullable<QueryOf<'images/{image_id}/file', 'get'>['variant']> = 'display'): string {
    return this.url(fillRoute('images/{image_id}/file' satisfies ApiRoute, { image_id: id }), { variant });
  }

  // ---- cells ----
  getCells(imageId: number, layer: Layer = 'annotation', signal?: AbortSignal): Promise<ServerCells> {
    return this.call('get', 'images/{image_id}/cells', { image_id: imageId }, { query: { layer }, signal });
  }
  /** Replaces the whole annotation layer. 409 carries `{detail, revision, cells}` in `ApiError.body`. */
  saveCells(imageId: number, body: SaveCellsBody, idempotencyKey?: string): Promise<ServerCells> {
    return this.call('put', 'images/{image_id}/cells', { image_id: imageId }, {
      // unclassified cells go as they are (class_id null, see CellPayload): the server's 400 names them
      body: body as BodyOf<'images/{image_id}/cells', 'put'>,
      headers: idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : undefined,
    });
  }
  /**
   * One page of the cells of a layer whose bounding box meets `bbox` ([x0, y0, x1, y1], image
   * pixels): the viewport read of a large image. `next_after` set: more remain (ask with `after`).
   */
  getCellsInBox(imageId: number, bbox: readonly number[], opts: { layer?: Layer; after?: number; limit?: number; signal?: AbortSignal } = {}): Promise<ServerCells> {
    const query = { layer: opts.layer ?? 'annotation', bbox: bbox.map((v) => Math.round(v)).join(','), ...(opts.after !== undefined ? { after: opts.after } : {}), ...(opts.limit !== undefined ? { limit: opts.limit } : {}) };
    return this.call('get', 'images/{image_id}/cells', { image_id: imageId }, { query, signal: opts.signal });
  }
  /** Saves a delta of the annotation layer. 409 carries `{detail, revision, conflicts, cells, deleted}`. */
  saveCellsDelta(imageId: number, body: DeltaBody, idempotencyKey?: string): Promise<DeltaResponse> {
    return this.call('patch', 'images/{image_id}/cells', { image_id: imageId }, {
      body: body as unknown as BodyOf<'images/{image_id}/cells', 'patch'>,
      headers: idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : undefined,
    }) as unknown as Promise<DeltaResponse>;
  }
  getHistory(imageId: number, page = 1): Promise<Paginated<HistoryEntry>> {
    return this.page('get', 'images/{image_id}/history', { image_id: imageId }, { page });
  }
  /** The annotation layer as it was at `revision` (a preview; nothing changes). */
  getRevision(imageId: number, revision: number, bbox?: readonly number[]): Promise<RevisionState> {
    const query = bbox ? { bbox: bbox.map((v) => Math.round(v)).join(',') } : undefined;
    return this.call('get', 'images/{image_id}/history/{revision}', { image_id: imageId, revision }, { query });
  }
  /** A new revision equal to `revision`; `current` is the layer's revision now (409 when stale). */
  restoreRevision(imageId: number, revision: number, current: number): Promise<ServerCells> {
    return this.call('post', 'images/{image_id}/history/{revision}/restore', { image_id: imageId, revision }, { body: { revision: current } });
  }

  // ---- proposals ----
  acceptProposals(imageId: number, body: { revision: number; ids?: number[]; all?: boolean }): Promise<ServerCells> {
    return this.call('post', 'images/{image_id}/proposals/accept', { image_id: imageId }, { body });
  }
  rejectProposals(imageId: number, body: { ids?: number[]; all?: boolean }): Promise<ProposalsRejected> {
    return this.call('post', 'images/{image_id}/proposals/reject', { image_id: imageId }, { body });
  }

  /** Click-to-segment: the contour of the cell under the positive points (null with a reason); 503 while the model's maps are not ready. */
  segmentClick(imageId: number, body: SegmentClickBody): Promise<SegmentClickResult> {
    return this.call('post', 'images/{image_id}/segment/click', { image_id: imageId }, { body });
  }
  /** Box prompt: the instances whose centre lies in the box. */
  segmentBox(imageId: number, body: SegmentBoxBody): Promise<SegmentBoxResult> {
    return this.call('post', 'images/{image_id}/segment/box', { image_id: imageId }, { body });
  }

  /** 202: the image is queued (409 while it is locked for review). `modelVersion` null: the project's pre-segmenter. */
  presegmentImage(imageId: number, modelVersion?: number | null): Promise<PresegmentQueued> {
    return this.call('post', 'images/{image_id}/presegment', { image_id: imageId }, { body: modelVersion ? { model_version: modelVersion } : {} });
  }
  /** Pre-segment only a region of a tiled image: the tiles it meets, proposals only inside it. */
  presegmentRegion(imageId: number, regionId: number): Promise<PresegmentQueued> {
    return this.call('post', 'images/{image_id}/presegment', { image_id: imageId }, { body: { region: regionId } });
  }

  // ---------------------------------------------------------------- regions of interest
  listRegions(imageId: number): Promise<RegionInfo[]> {
    return this.call('get', 'images/{image_id}/regions', { image_id: imageId });
  }
  /** 400 names `polygon` (at least 3 points, inside the image, simple) or `name`. */
  createRegion(imageId: number, polygon: number[][], name?: string): Promise<RegionInfo> {
    return this.call('post', 'images/{image_id}/regions', { image_id: imageId }, { body: name ? { polygon, name } : { polygon } });
  }
  deleteRegion(imageId: number, regionId: number): Promise<void> {
    return this.call('delete', 'images/{image_id}/regions/{region_id}', { image_id: imageId, region_id: regionId });
  }
  getRegion(imageId: number, regionId: number): Promise<RegionInfo> {
    return this.call('get', 'images/{image_id}/regions/{region_id}', { image_id: imageId, region_id: regionId });
  }
  /** A verification action on a slide's region (`submit`: its own review round; 400 names `region`, 409 the status). */
  regionTransition(imageId: number, regionId: number, action: RegionAction): Promise<RegionTransitionResult> {
    return this.call('post', 'images/{image_id}/regions/{region_id}/transition', { image_id: imageId, region_id: regionId }, { body: { action } });
  }
  submitRegion(imageId: number, regionId: number): Promise<RegionTransitionResult> {
    return this.regionTransition(imageId, regionId, 'submit');
  }

  /** 202 with how many images were queued (every image not locked for review). Admins only. */
  presegmentProject(projectId: number, modelVersion?: number | null): Promise<ProjectPresegmentQueued> {
    return this.call('post', 'projects/{project_id}/presegment', { project_id: projectId }, { body: modelVersion ? { model_version: modelVersion } : {} });
  }

  // ---- workflow ----
  transition(imageId: number, action: TransitionAction): Promise<TransitionResult> {
    return this.call('post', 'images/{image_id}/transition', { image_id: imageId }, { body: { action } });
  }
  transitionState(imageId: number): Promise<TransitionState> {
    return this.call('get', 'images/{image_id}/transition', { image_id: imageId });
  }
  queue(projectId: number, limit = 5): Promise<WorkQueue> {
    return this.call('get', 'me/queue', {}, { query: { project: projectId, limit } });
  }
  assignments(imageId: number): Promise<Assignments> {
    return this.call('get', 'images/{image_id}/assignments', { image_id: imageId });
  }
  assignReviewer(imageId: number, reviewer: number): Promise<Assignment> {
    return this.call('post', 'images/{image_id}/assignments', { image_id: imageId }, { body: { reviewer } });
  }
  cancelAssignment(imageId: number, assignmentId: number): Promise<void> {
    return this.call('delete', 'images/{image_id}/assignments/{review_id}', { image_id: imageId, review_id: assignmentId });
  }
  verificationSettings(projectId: number): Promise<VerificationSettings> {
    return this.call('get', 'projects/{project_id}/verification', { project_id: projectId });
  }
  saveVerificationSettings(projectId: number, body: VerificationSettingsUpdate): Promise<VerificationSettings> {
    return this.call('patch', 'projects/{project_id}/verification', { project_id: projectId }, { body });
  }
  members(projectId: number): Promise<Member[]> {
    return this.call('get', 'projects/{project_id}/members', { project_id: projectId });
  }
  /** Adds an existing user (by username or e-mail address) to the project, or sets their role. */
  addMember(projectId: number, login: string, role: Role): Promise<Member> {
    return this.call('post', 'projects/{project_id}/members', { project_id: projectId }, { body: { username: login, role } });
  }
  setMemberRole(projectId: number, membershipId: number, role: Role): Promise<Member> {
    return this.call('patch', 'projects/{project_id}/members/{membership_id}', { project_id: projectId, membership_id: membershipId }, { body: { role } });
  }
  removeMember(projectId: number, membershipId: number): Promise<void> {
    return this.call('delete', 'projects/{project_id}/members/{membership_id}', { project_id: projectId, membership_id: membershipId });
  }

  // ---- reviews (blind: never ask for others' reviews before submitting one's own) ----
  // `regionId`: the review of that region of a slide (its own round) rather than of the image.
  myReview(imageId: number, regionId?: number | null): Promise<Review> {
    if (regionId) return this.call('get', 'images/{image_id}/regions/{region_id}/reviews/mine', { image_id: imageId, region_id: regionId });
    return this.call('get', 'images/{image_id}/reviews/mine', { image_id: imageId });
  }
  saveMyReview(imageId: number, body: ReviewDraftBody, regionId?: number | null): Promise<Review> {
    if (regionId) return this.call('put', 'images/{image_id}/regions/{region_id}/reviews/mine', { image_id: imageId, region_id: regionId }, { body });
    return this.call('put', 'images/{image_id}/reviews/mine', { image_id: imageId }, { body });
  }
  submitMyReview(imageId: number, acceptUndecided = false, regionId?: number | null): Promise<ReviewSubmitResult> {
    const body = { accept_undecided: acceptUndecided };
    if (regionId) return this.call('post', 'images/{image_id}/regions/{region_id}/reviews/mine/submit', { image_id: imageId, region_id: regionId }, { body });
    return this.call('post', 'images/{image_id}/reviews/mine/submit', { image_id: imageId }, { body });
  }
  reviews(imageId: number, round?: number, regionId?: number | null): Promise<ReviewsOfRound> {
    if (regionId) return this.call('get', 'images/{image_id}/regions/{region_id}/reviews', { image_id: imageId, region_id: regionId }, { query: { round } });
    return this.call('get', 'images/{image_id}/reviews', { image_id: imageId }, { query: { round } });
  }

  // ---- adjudication ----
  // `regionId`: the disputes of that region of a slide (its own round) rather than of the image.
  adjudication(imageId: number, regionId?: number | null): Promise<Adjudication> {
    if (regionId) return this.call('get', 'images/{image_id}/regions/{region_id}/adjudication', { image_id: imageId, region_id: regionId });
    return this.call('get', 'images/{image_id}/adjudication', { image_id: imageId });
  }
  adjudicate(imageId: number, decisions: AdjudicationDecisionIO[], idempotencyKey?: string, regionId?: number | null): Promise<Adjudication> {
    const opts = { body: { decisions }, headers: idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : undefined };
    if (regionId) return this.call('post', 'images/{image_id}/regions/{region_id}/adjudication', { image_id: imageId, region_id: regionId }, opts);
    return this.call('post', 'images/{image_id}/adjudication', { image_id: imageId }, opts);
  }

  // ---- analytics ----
  agreement(projectId: number, imageId?: number): Promise<Agreement> {
    return this.call('get', 'projects/{project_id}/agreement', { project_id: projectId }, { query: { image: imageId } });
  }
  corrections(projectId: number): Promise<Corrections> {
    return this.call('get', 'projects/{project_id}/corrections', { project_id: projectId });
  }

  // ---- platform (staff) ----
  adminQueue(signal?: AbortSignal): Promise<AdminQueue> {
    return this.call('get', 'admin/queue', {}, { signal });
  }

  // ---- webhooks (project admins) ----
  webhooks(projectId: number, page = 1, pageSize = 100): Promise<Paginated<Webhook>> {
    return this.page('get', 'projects/{project_id}/webhooks', { project_id: projectId }, { page, page_size: pageSize });
  }
  /** The answer carries the signing `secret`: the only time the server shows it. */
  createWebhook(projectId: number, body: WebhookInput): Promise<WebhookCreated> {
    return this.call('post', 'projects/{project_id}/webhooks', { project_id: projectId }, { body });
  }
  webhook(webhookId: number): Promise<Webhook> {
    return this.call('get', 'webhooks/{webhook_id}', { webhook_id: webhookId });
  }
  updateWebhook(webhookId: number, body: WebhookUpdate): Promise<Webhook> {
    return this.call('patch', 'webhooks/{webhook_id}', { webhook_id: webhookId }, { body });
  }
  deleteWebhook(webhookId: number): Promise<void> {
    return this.call('delete', 'webhooks/{webhook_id}', { webhook_id: webhookId });
  }
  /** A `ping` delivery to this subscription alone (sent even while it is inactive); 202 with the pending delivery. */
  pingWebhook(webhookId: number): Promise<WebhookDelivery> {
    return this.call('post', 'webhooks/{webhook_id}/ping', { webhook_id: webhookId });
  }
  /** Newest first, each with its attempts. */
  webhookDeliveries(webhookId: number, page = 1, pageSize = 10, signal?: AbortSignal): Promise<Paginated<WebhookDelivery>> {
    return this.call('get', 'webhooks/{webhook_id}/deliveries', { webhook_id: webhookId }, { query: { page, page_size: pageSize }, signal });
  }

  // ---- training (training/api) ----
  trainingJobs(projectId: number, page = 1, pageSize = 20): Promise<Paginated<TrainingJobBrief>> {
    return this.page('get', 'projects/{project_id}/training/jobs', { project_id: projectId }, { page, page_size: pageSize });
  }
  startTrainingJob(projectId: number, body: BodyOf<'projects/{project_id}/training/jobs', 'post'>): Promise<TrainingJobDetail> {
    return this.call('post', 'projects/{project_id}/training/jobs', { project_id: projectId }, { body });
  }
  trainingJob(jobId: number, signal?: AbortSignal): Promise<TrainingJobDetail> {
    return this.call('get', 'training/jobs/{job_id}', { job_id: jobId }, { signal });
  }
  cancelTrainingJob(jobId: number): Promise<CancelledJob> {
    return this.call('post', 'training/jobs/{job_id}/cancel', { job_id: jobId });
  }
  snapshots(projectId: number): Promise<Paginated<DatasetSnapshot>> {
    return this.page('get', 'projects/{project_id}/training/snapshots', { project_id: projectId }, { page_size: 100 });
  }
  registry(projectId: number, snapshot?: number | null): Promise<Registry> {
    return this.call('get', 'projects/{project_id}/training/models', { project_id: projectId }, { query: { snapshot: snapshot ?? undefined } });
  }
  promoteModel(versionId: number, reason: string): Promise<ModelVersionDetail> {
    return this.call('post', 'training/models/{version_id}/promote', { version_id: versionId }, { body: { reason } });
  }
  modelGate(versionId: number): Promise<GateVerdict> {
    return this.call('get', 'training/models/{version_id}/gate', { version_id: versionId });
  }
  evaluateModel(versionId: number, snapshot?: number | null): Promise<EvaluationQueued> {
    return this.call('post', 'training/models/{version_id}/evaluate', { version_id: versionId }, { body: snapshot ? { snapshot } : {} });
  }
  rollback(projectId: number, kind: ModelKind): Promise<Rollback> {
    return this.call('post', 'projects/{project_id}/training/rollback', { project_id: projectId }, { body: { kind } });
  }
  schedule(projectId: number): Promise<TrainingPolicy> {
    return this.call('get', 'projects/{project_id}/training/schedule', { project_id: projectId });
  }
  saveSchedule(projectId: number, body: TrainingPolicyUpdate): Promise<TrainingPolicy> {
    return this.call('put', 'projects/{project_id}/training/schedule', { project_id: projectId }, {
      // PUT is a partial update on the server (types.ts, TrainingPolicyUpdate)
      body: body as BodyOf<'projects/{project_id}/training/schedule', 'put'>,
    });
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

/** 409 body of a delta save (`PATCH images/{id}/cells`): the conflicts and the server's version of the cells concerned. */
export function deltaConflictState(err: ApiError): { revision: number; conflicts: DeltaConflictItem[]; cells: ApiCell[]; deleted: number[] } | null {
  const b = err.body as { revision?: unknown; conflicts?: unknown; cells?: unknown; deleted?: unknown } | null;
  if (err.status !== 409 || !b || typeof b.revision !== 'number' || !Array.isArray(b.conflicts) || !Array.isArray(b.cells)) return null;
  return { revision: b.revision, conflicts: b.conflicts as DeltaConflictItem[], cells: b.cells as ApiCell[], deleted: Array.isArray(b.deleted) ? (b.deleted as number[]) : [] };
}

/** 409 body of `PUT images/{id}/cells` and `proposals/accept`. */
export function conflictState(err: ApiError): { revision: number; cells: ApiCell[] } | null {
  const b = err.body as { revision?: unknown; cells?: unknown } | null;
  if (err.status !== 409 || !b || typeof b.revision !== 'number' || !Array.isArray(b.cells)) return null;
  return { revision: b.revision, cells: b.cells as ApiCell[] };
}
