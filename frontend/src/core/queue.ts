/**
 * Work-queue navigation (`GET me/queue`): which image is next, and which
 * screen opens it. Framework free, unit tested.
 */
import type { Route } from './router';
import type { QueueImage, QueueKind, Role, WorkQueue } from './types';

export interface QueueApi {
  queue(projectId: number, limit?: number): Promise<WorkQueue>;
}

export const QUEUE_LABELS: Record<QueueKind, { title: string; verb: string; empty: string }> = {
  // the empty texts say what brings work here, not only that there is none (issue #17)
  annotate: { title: 'To annotate', verb: 'Annotate next', empty: 'Nothing yet: uploads come here' },
  review: { title: 'To review', verb: 'Review next', empty: 'Submitted images come here' },
  adjudicate: { title: 'To adjudicate', verb: 'Adjudicate next', empty: 'No disputed image: reviewers agree' },
  assign: { title: 'Need reviewers', verb: 'Assign reviewers', empty: 'Every image in review is staffed' },
};

/** The screen that works on an image of a queue section (`regionId`: one region of a slide to review or adjudicate). */
export function queueRoute(projectId: number, kind: QueueKind, imageId: number, regionId?: number | null): Route {
  if (kind === 'review') return regionId ? { name: 'review', projectId, imageId, regionId } : { name: 'review', projectId, imageId };
  if (kind === 'adjudicate') return regionId ? { name: 'adjudicate', projectId, imageId, regionId } : { name: 'adjudicate', projectId, imageId };
  return { name: 'editor', projectId, imageId };
}

/** The order in which a role's sections are offered by "Next image". */
export function preferredKinds(role: Role | null | undefined): QueueKind[] {
  if (role === 'admin') return ['adjudicate', 'review', 'annotate'];
  if (role === 'expert') return ['review', 'annotate'];
  return ['annotate'];
}

/** The first entry of a section that is not the current one (`currentId`, and its region when one is open). */
export function firstOther(section: { images: QueueImage[] } | undefined, currentId?: number | null, currentRegion?: number | null): QueueImage | null {
  if (!section) return null;
  return section.images.find((i) => i.id !== currentId || (i.region ?? null) !== (currentRegion ?? null)) ?? null;
}

export interface NextPick {
  kind: QueueKind;
  image: QueueImage;
}

/** The next image of the first non-empty section of `kinds` (skipping the current image). */
export function pickNext(queue: WorkQueue, kinds: QueueKind[], currentId?: number | null, currentRegion?: number | null): NextPick | null {
  for (const kind of kinds) {
    const image = firstOther(queue[kind], currentId, currentRegion);
    if (image) return { kind, image };
  }
  return null;
}

/**
 * Asks the server for the queue and picks the next image. The limit is large
 * enough that skipping the current image still leaves one.
 */
export async function nextFromQueue(api: QueueApi, projectId: number, kinds: QueueKind[], currentId?: number | null, currentRegion?: number | null): Promise<(NextPick & { route: Route }) | null> {
  const queue = await api.queue(projectId, 5);
  const pick = pickNext(queue, kinds, currentId, currentRegion);
  return pick ? { ...pick, route: queueRoute(projectId, pick.kind, pick.image.id, pick.image.region) } : null;
}

/**
 * Why an image stands where it does in its queue (`reason`, `reason_value` of
 * `GET me/queue`), as a short sentence: "uncertain: mean proposal score 0.42".
 */
export function queueReason(image: Pick<QueueImage, 'reason' | 'reason_value'>): string {
  const v = image.reason_value;
  const num = v == null || !Number.isFinite(v) ? '?' : v.toFixed(2);
  switch (image.reason) {
    case 'in_progress':
      return 'your image in progress';
    case 'uncertainty':
      return `uncertain: mean proposal score ${num}`;
    case 'no_proposals':
      return 'no proposals yet';
    case 'disagreement_image':
      return `expert disagreement: past agreement F1 ${num}`;
    case 'disagreement_slide':
      return `expert disagreement on its slide: F1 ${num}`;
    case 'no_history':
      return 'no agreement history yet';
    case 'upload_order':
      return 'upload order';
    case 'assigned':
      return 'oldest assignment first';
    case 'disputed':
      return 'oldest dispute first';
    case 'open_slots': {
      const n = v == null ? 0 : Math.round(v);
      return `${n} reviewer${n === 1 ? '' : 's'} missing`;
    }
    default:
      return image.reason ? image.reason.replace(/_/g, ' ') : '';
  }
}
