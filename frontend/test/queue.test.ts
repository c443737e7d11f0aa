import { describe, expect, it, vi } from 'vitest';
import { firstOther, nextFromQueue, pickNext, preferredKinds, queueReason, queueRoute } from '../src/core/queue';
import { parseRoute, routeHash } from '../src/core/router';
import type { WorkQueue } from '../src/core/types';

const img = (id: number, status = 'new', region: number | null = null) => ({ id, file_name: `f${id}.png`, status, thumbnail_url: '', reason: 'upload_order', reason_value: null, region, region_name: region ? `Region ${region}` : null, region_status: region ? status : null });
const queue = (over: Partial<WorkQueue> = {}): WorkQueue => ({
  project: 1,
  order: 'none',
  annotate: { count: 2, images: [img(4, 'annotating'), img(5)] },
  review: { count: 1, images: [img(7, 'in_review')] },
  adjudicate: { count: 0, images: [] },
  assign: { count: 0, images: [] },
  ...over,
});

describe('why an image comes next', () => {
  it('words the server\'s reason with its value', () => {
    expect(queueReason({ reason: 'uncertainty', reason_value: 0.4213 })).toBe('uncertain: mean proposal score 0.42');
    expect(queueReason({ reason: 'disagreement_image', reason_value: 0.5 })).toBe('expert disagreement: past agreement F1 0.50');
    expect(queueReason({ reason: 'disagreement_slide', reason_value: 0 })).toBe('expert disagreement on its slide: F1 0.00');
    expect(queueReason({ reason: 'open_slots', reason_value: 1 })).toBe('1 reviewer missing');
    expect(queueReason({ reason: 'open_slots', reason_value: 2 })).toBe('2 reviewers missing');
    expect(queueReason({ reason: 'assigned', reason_value: null })).toBe('oldest assignment first');
    expect(queueReason({ reason: 'in_progress', reason_value: null })).toBe('your image in progress');
    expect(queueReason({ reason: 'uncertainty', reason_value: null })).toBe('uncertain: mean proposal score ?');
    // a reason this client does not know yet is still shown
    expect(queueReason({ reason: 'brand_new_rule', reason_value: null })).toBe('brand new rule');
  });
});

describe('work queue navigation', () => {
  it('opens each section in its screen', () => {
    expect(routeHash(queueRoute(1, 'review', 7))).toBe('#/projects/1/images/7/review');
    expect(routeHash(queueRoute(1, 'adjudicate', 7))).toBe('#/projects/1/images/7/adjudicate');
    expect(routeHash(queueRoute(1, 'annotate', 7))).toBe('#/projects/1/images/7');
  });

  it('skips the current image and walks the sections in the role’s order', () => {
    expect(firstOther(queue().annotate, 4)).toEqual(img(5));
    expect(firstOther({ images: [img(4)] }, 4)).toBeNull();
    expect(pickNext(queue(), preferredKinds('expert'))).toMatchObject({ kind: 'review', image: { id: 7 } });
    expect(pickNext(queue(), preferredKinds('expert'), 7)).toMatchObject({ kind: 'annotate', image: { id: 4 } });
    expect(pickNext(queue(), preferredKinds('annotator'), 4)).toMatchObject({ kind: 'annotate', image: { id: 5 } });
    expect(pickNext(queue({ adjudicate: { count: 1, images: [img(9, 'disputed')] } }), preferredKinds('admin'))).toMatchObject({ kind: 'adjudicate' });
    expect(pickNext(queue({ annotate: { count: 0, images: [] } }), ['annotate'])).toBeNull();
  });

  it('tells a slide’s regions apart: the other region of the open slide is next, and opens the region’s review', async () => {
    const regions = queue({ review: { count: 2, images: [img(7, 'in_review', 3), img(7, 'in_review', 4)] } });
    expect(firstOther(regions.review, 7, 3)).toEqual(img(7, 'in_review', 4));
    expect(firstOther(regions.review, 7)).toEqual(img(7, 'in_review', 3)); // the slide open whole: its regions are other work
    const api = { queue: vi.fn(async () => regions) };
    const next = await nextFromQueue(api, 1, ['review'], 7, 3);
    expect(next?.route).toEqual({ name: 'review', projectId: 1, imageId: 7, regionId: 4 });
    expect(routeHash(next!.route)).toBe('#/projects/1/images/7/review?region=4');
    expect(parseRoute('#/projects/1/images/7/review?region=4')).toEqual({ name: 'review', projectId: 1, imageId: 7, regionId: 4 });
    expect(parseRoute('#/projects/1/images/7/review?region=x')).toEqual({ name: 'review', projectId: 1, imageId: 7 });
    expect(queueRoute(1, 'review', 7, null)).toEqual({ name: 'review', projectId: 1, imageId: 7 });
    // a disputed region opens its adjudication
    expect(queueRoute(1, 'adjudicate', 7, 4)).toEqual({ name: 'adjudicate', projectId: 1, imageId: 7, regionId: 4 });
    expect(routeHash(queueRoute(1, 'adjudicate', 7, 4))).toBe('#/projects/1/images/7/adjudicate?region=4');
    expect(parseRoute('#/projects/1/images/7/adjudicate?region=4')).toEqual({ name: 'adjudicate', projectId: 1, imageId: 7, regionId: 4 });
    expect(preferredKinds(null)).toEqual(['annotate']);
  });

  it('asks the server and returns the route', async () => {
    const api = { queue: vi.fn(async () => queue()) };
    const next = await nextFromQueue(api, 1, ['review'], 3);
    expect(api.queue).toHaveBeenCalledWith(1, 5);
    expect(next).toMatchObject({ kind: 'review', route: { name: 'review', projectId: 1, imageId: 7 } });
    expect(await nextFromQueue(api, 1, ['review'], 7)).toBeNull();
  });
});

describe('routes of the verification and admin screens', () => {
  it('parses and builds them', () => {
    expect(parseRoute('#/projects/2/images/9/review')).toEqual({ name: 'review', projectId: 2, imageId: 9 });
    expect(parseRoute('#/projects/2/images/9/adjudicate')).toEqual({ name: 'adjudicate', projectId: 2, imageId: 9 });
    expect(parseRoute('#/projects/2/images/9/other').name).toBe('notfound');
    expect(parseRoute('#/projects/2/admin')).toEqual({ name: 'admin', projectId: 2, tab: 'training' });
    expect(parseRoute('#/projects/2/admin/agreement')).toEqual({ name: 'admin', projectId: 2, tab: 'agreement' });
    expect(parseRoute('#/projects/2/admin/nope').name).toBe('notfound');
    expect(parseRoute('#/projects/2/admin/jobs/12')).toEqual({ name: 'job', projectId: 2, jobId: 12 });
    for (const r of [
      { name: 'review', projectId: 1, imageId: 2 },
      { name: 'adjudicate', projectId: 1, imageId: 2 },
      { name: 'admin', projectId: 1, tab: 'models' },
      { name: 'job', projectId: 1, jobId: 3 },
    ] as const)
      expect(parseRoute(routeHash(r))).toEqual(r);
  });
});
