/**
 * Gentle mouse-wheel zoom. OpenLayers' MouseWheelZoom turns one wheel notch (deltaY 100)
 * into a third of a zoom level and a burst of notches into a whole level (2×), so a few
 * quick notches went from 100% to over 1500%. Here every wheel event zooms by a fixed
 * factor per notch ({@link WHEEL_STEP}, 1.2×: five notches from 100% land at about 250%),
 * anchored under the pointer; trackpads (many small deltas) zoom proportionally.
 */
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import Interaction from 'ol/interaction/Interaction';

/** Zoom factor of one wheel notch. */
export const WHEEL_STEP = 1.2;

/** deltaY of one notch in pixels (Chromium, Firefox in pixel mode); lines and pages are scaled to it. */
const NOTCH_PX = 100;

/**
 * Resolution multiplier for one wheel event (< 1 zooms in). One event never counts as more
 * than one notch, however large its delta (some mice and platforms send several hundred).
 */
export function wheelResolutionFactor(deltaY: number, deltaMode = 0): number {
  const px = deltaMode === 1 ? deltaY * (NOTCH_PX / 3) : deltaMode === 2 ? deltaY * NOTCH_PX * 3 : deltaY;
  const notches = Math.max(-1, Math.min(1, px / NOTCH_PX));
  return WHEEL_STEP ** notches;
}

export class GentleWheelZoom extends Interaction {
  /** Where the running zoom animation ends: quick notches compound from there, not from mid-animation. */
  private target: number | null = null;

  override handleEvent(e: MapBrowserEvent): boolean {
    if (e.type !== 'wheel') return true;
    const we = e.originalEvent as WheelEvent;
    we.preventDefault();
    if (!we.deltaY) return false;
    const view = e.map.getView();
    const current = view.getResolution();
    if (current === undefined) return false;
    const base = view.getAnimating() && this.target !== null ? this.target : current;
    const next = Math.min(view.getMaxResolution(), Math.max(view.getMinResolution(), base * wheelResolutionFactor(we.deltaY, we.deltaMode)));
    if (view.getAnimating()) view.cancelAnimations();
    this.target = next;
    view.animate({ resolution: next, anchor: e.coordinate, duration: 90 }, () => (this.target = null));
    return false;
  }
}
