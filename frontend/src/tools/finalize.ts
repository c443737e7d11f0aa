/** Turning a raw drawn outline into a cell polygon (pure, unit tested). */
import { area, clampRing, makeValid, simplifyRing } from '../core/geometry';
import type { Ring } from '../core/types';

export interface FinalizeOptions {
  /** image pixels per screen pixel at the time of drawing */
  res: number;
  width: number;
  height: number;
  /** freehand outlines are simplified (Douglas-Peucker, ~0.4 screen px) */
  freehand: boolean;
  minArea?: number;
}

export type FinalizeResult = { ok: true; ring: Ring } | { ok: false; reason: string };

export function finalizeDrawnRing(raw: Ring, o: FinalizeOptions): FinalizeResult {
  let ring = clampRing(raw, o.width, o.height);
  if (o.freehand || ring.length > 40) ring = simplifyRing(ring, Math.max(0.15, 0.4 * o.res));
  const valid = makeValid(ring);
  if (!valid) return { ok: false, reason: 'The outline is not a valid polygon' };
  if (area(valid) < (o.minArea ?? 4)) return { ok: false, reason: 'The outline is too small' };
  return { ok: true, ring: valid };
}
