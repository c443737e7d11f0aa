/**
 * The adapter (core/api.ts) and the hand-narrowed types (core/types.ts) against the
 * server's OpenAPI schema (openapi.json, schema.gen.ts): fails when they drift apart.
 * The `expectTypeOf` checks run in `npm run typecheck`; the requests run here.
 */
import { describe, expect, expectTypeOf, it } from 'vitest';
import schema from '../openapi.json';
import { ApiClient } from '../src/core/api';
import type { components } from '../src/core/schema.gen';
import type {
  Adjudication,
  Agreement,
  ApiCell,
  ApiResponse,
  CellClass,
  Corrections,
  DatasetSnapshot,
  ImageInfo,
  Project,
  Registry,
  ResponseCorrections,
  ReviewDraftBody,
  RouteKey,
  ServerCell,
  ServerCells,
  TrainingJobBrief,
  TrainingJobDetail,
  TrainingPolicy,
} from '../src/core/types';

type S = components['schemas'];

describe('types narrowed by hand stay narrowings of the schema', () => {
  it('responses', () => {
    expectTypeOf<ServerCells>().toExtend<S['CellsOut']>();
    expectTypeOf<ServerCell>().toExtend<ApiCell>();
    expectTypeOf<ImageInfo>().toExtend<S['ImageOut']>();
    expectTypeOf<Project>().toExtend<S['ProjectOut']>();
    expectTypeOf<CellClass>().toExtend<S['CellClass']>();
    expectTypeOf<Adjudication>().toExtend<S['AdjudicationOut']>();
    expectTypeOf<Agreement>().toExtend<S['AgreementOut']>();
    expectTypeOf<Corrections>().toExtend<S['CorrectionsOut']>();
    expectTypeOf<TrainingJobBrief>().toExtend<S['JobBriefOut']>();
    expectTypeOf<TrainingJobDetail>().toExtend<S['JobOut']>();
    expectTypeOf<DatasetSnapshot>().toExtend<S['SnapshotOut']>();
    expectTypeOf<Registry>().toExtend<S['RegistryOut']>();
    expectTypeOf<TrainingPolicy>().toExtend<S['PolicyOut']>();
  });

  it('request bodies', () => {
    expectTypeOf<ReviewDraftBody>().toExtend<S['DraftInRequest']>();
  });

  it('corrections name real operations and are read before the schema', () => {
    expectTypeOf<keyof ResponseCorrections>().toExtend<RouteKey>();
    expectTypeOf<ApiResponse<'images/{image_id}/reviews/mine', 'get'>>().toEqualTypeOf<ResponseCorrections['get images/{image_id}/reviews/mine']>();
    expectTypeOf<ApiResponse<'images/{image_id}', 'get'>>().toEqualTypeOf<S['ImageOut']>();
  });
});

// ---------------------------------------------------------------- every request of the adapter is an operation of the schema

type Operation = { parameters?: { in: string; name: string }[] };
const PATHS = schema.paths as unknown as Record<string, Record<string, Operation>>;
/** Declared as bare arrays although the server paginates (types.ts, Paginated). */
const PAGINATED = new Set(['get /api/v1/projects', 'get /api/v1/projects/{project_id}/images', 'get /api/v1/projects/{project_id}/training/jobs', 'get /api/v1/projects/{project_id}/training/snapshots']);

/** The schema path and operation of a request, or null. */
function operationOf(method: string, url: string): { key: string; op: Operation } | null {
  const path = url.split('?')[0];
  for (const [template, item] of Object.entries(PATHS)) {
    const re = new RegExp(`^${template.replace(/\{\w+\}/g, '[^/]+')}$`);
    const op = item[method.toLowerCase()];
    if (re.test(path) && op) return { key: `${method.toLowerCase()} ${template}`, op };
  }
  return null;
}

/** Calls every endpoint method of the adapter once. */
async function callEverything(api: ApiClient): Promise<string[]> {
  const called: string[] = [];
  const run = async (name: keyof ApiClient, f: () => Promise<unknown>) => {
    called.push(name);
    await f();
  };
  await run('login', () => api.login('u', 'p'));
  await run('logout', () => api.logout());
  await run('me', () => api.me());
  await run('listProjects', () => api.listProjects());
  await run('getProject', () => api.getProject(1));
  await run('listImages', () => api.listImages(1, { status: 'new', split: 'train', bethesda: 'II', cell_class: '3', search: 'x', page: 2, page_size: 10 }));
  await run('getImage', () => api.getImage(1));
  await run('getCells', () => api.getCells(1, 'proposal'));
  await run('saveCells', () => api.saveCells(1, { revision: 0, cells: [] }, 'key'));
  await run('getCellsInBox', () => api.getCellsInBox(1, [0, 0, 100, 50], { layer: 'proposal', after: 3, limit: 10 }));
  await run('saveCellsDelta', () => api.saveCellsDelta(1, { base_revision: 0, added: [], changed: [], deleted: [5] }, 'key'));
  await run('getHistory', () => api.getHistory(1));
  await run('getRevision', () => api.getRevision(1, 2, [0, 0, 10, 10]));
  await run('restoreRevision', () => api.restoreRevision(1, 2, 5));
  await run('verificationSettings', () => api.verificationSettings(1));
  await run('saveVerificationSettings', () => api.saveVerificationSettings(1, { quorum: null, adjudicators: [2] }));
  await run('acceptProposals', () => api.acceptProposals(1, { revision: 0, ids: [1] }));
  await run('rejectProposals', () => api.rejectProposals(1, { ids: [1] }));
  await run('segmentClick', () => api.segmentClick(1, { positive: [[10, 12]], negative: [] }));
  await run('segmentBox', () => api.segmentBox(1, { box: [0, 0, 50, 40] }));
  await run('presegmentImage', () => api.presegmentImage(1, 2));
  await run('presegmentProject', () => api.presegmentProject(1));
  await run('presegmentRegion', () => api.presegmentRegion(1, 3));
  await run('listRegions', () => api.listRegions(1));
  await run('createRegion', () => api.createRegion(1, [[0, 0], [10, 0], [0, 10]], 'Top'));
  await run('deleteRegion', () => api.deleteRegion(1, 3));
  await run('getRegion', () => api.getRegion(1, 3));
  await run('regionTransition', () => api.regionTransition(1, 3, 'reopen'));
  await run('submitRegion', () => api.submitRegion(1, 3));
  await run('transition', () => api.transition(1, 'submit'));
  await run('transitionState', () => api.transitionState(1));
  await run('queue', () => api.queue(1));
  await run('assignments', () => api.assignments(1));
  await run('assignReviewer', () => api.assignReviewer(1, 2));
  await run('cancelAssignment', () => api.cancelAssignment(1, 3));
  await run('members', () => api.members(1));
  await run('myReview', () => api.myReview(1));
  await run('saveMyReview', () => api.saveMyReview(1, { decisions: [], added: [], comments: [] }));
  await run('submitMyReview', () => api.submitMyReview(1, true));
  await run('reviews', () => api.reviews(1, 2));
  // the same reviews of one region of a slide
  await run('myReview', () => api.myReview(1, 3));
  await run('saveMyReview', () => api.saveMyReview(1, { decisions: [], added: [], comments: [] }, 3));
  await run('submitMyReview', () => api.submitMyReview(1, false, 3));
  await run('reviews', () => api.reviews(1, 2, 3));
  await run('adjudication', () => api.adjudication(1));
  await run('adjudicate', () => api.adjudicate(1, [], 'key'));
  await run('adjudication', () => api.adjudication(1, 3));
  await run('adjudicate', () => api.adjudicate(1, [], 'key', 3));
  await run('agreement', () => api.agreement(1, 2));
  await run('corrections', () => api.corrections(1));
  await run('trainingJobs', () => api.trainingJobs(1));
  await run('startTrainingJob', () => api.startTrainingJob(1, { kind: 'cellpose', config: {} }));
  await run('trainingJob', () => api.trainingJob(1));
  await run('cancelTrainingJob', () => api.cancelTrainingJob(1));
  await run('snapshots', () => api.snapshots(1));
  await run('registry', () => api.registry(1, 2));
  await run('promoteModel', () => api.promoteModel(1, 'better'));
  await run('addMember', () => api.addMember(1, 'kim@clinic.example', 'expert'));
  await run('setMemberRole', () => api.setMemberRole(1, 2, 'admin'));
  await run('removeMember', () => api.removeMember(1, 2));
  await run('tokens', () => api.tokens());
  await run('createToken', () => api.createToken({ name: 'ci', project: 1, expires_in_days: 30 }));
  await run('revokeToken', () => api.revokeToken(3));
  await run('modelGate', () => api.modelGate(1));
  await run('evaluateModel', () => api.evaluateModel(1, 2));
  await run('rollback', () => api.rollback(1, 'cellpose'));
  await run('schedule', () => api.schedule(1));
  await run('saveSchedule', () => api.saveSchedule(1, { schedule_enabled: true }));
  await run('adminQueue', () => api.adminQueue());
  await run('webhooks', () => api.webhooks(1));
  await run('createWebhook', () => api.createWebhook(1, { url: 'https://hooks.example.com/cyto', events: ['model.promoted'] }));
  await run('webhook', () => api.webhook(1));
  await run('updateWebhook', () => api.updateWebhook(1, { active: false }));
  await run('deleteWebhook', () => api.deleteWebhook(1));
  await run('pingWebhook', () => api.pingWebhook(1));
  await run('webhookDeliveries', () => api.webhookDeliveries(1, 2, 10));
  return called;
}

describe('the adapter only calls operations of the schema', () => {
  it('paths, methods and query parameters', async () => {
    const requests: { method: string; url: string }[] = [];
    const api = new ApiClient({
      fetch: async (url, init) => {
        requests.push({ method: init?.method ?? 'GET', url });
        return new Response('{}', { status: 200, headers: { 'Content-Type': 'application/json' } });
      },
      getCookies: () => '',
    });
    const called = await callEverything(api);

    // every endpoint method of the adapter is exercised above
    const infrastructure = new Set(['constructor', 'url', 'request', 'call', 'page', 'imageFileUrl']);
    const methods = Object.getOwnPropertyNames(ApiClient.prototype).filter((m) => !infrastructure.has(m));
    expect(methods.filter((m) => !called.includes(m))).toEqual([]);

    requests.push({ method: 'GET', url: api.imageFileUrl(1, 'thumbnail') });
    for (const r of requests) {
      const found = operationOf(r.method, r.url.replace(/^https?:\/\/[^/]+/, ''));
      expect(found, `${r.method} ${r.url} is not an operation of openapi.json`).not.toBeNull();
      const declared = new Set((found!.op.parameters ?? []).filter((p) => p.in === 'query').map((p) => p.name));
      if (PAGINATED.has(found!.key)) declared.add('page').add('page_size');
      const sent = [...new URLSearchParams(r.url.split('?')[1] ?? '').keys()];
      expect(sent.filter((q) => !declared.has(q)), `query of ${found!.key}`).toEqual([]);
    }
  });
});
