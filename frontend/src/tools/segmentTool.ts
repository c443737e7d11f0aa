/**
 * Click-to-segment: a click inside a cell asks the server for its contour
 * (`POST images/{id}/segment/click`), which becomes a new cell; a click inside the
 * selected cell redoes that cell's contour. Shift+click adds a point of the same cell
 * (positive), Alt+click (or Ctrl+click) a point outside it (negative): every point of the
 * current prompt is sent again and the answer replaces the contour of the prompt's cell.
 * Escape ends the prompt. A click inside another (unselected) cell selects it first, so
 * that a stray click never replaces a finished contour.
 *
 * Every answer applied is one undo step (the first adds the cell, each refinement changes
 * its contour). While a request runs the pointer shows "progress" and the prompt's points
 * are hollow; clicks made meanwhile join the prompt and are sent together once it returns.
 */
import Feature from 'ol/Feature';
import { MultiPoint } from 'ol/geom';
import { unByKey } from 'ol/Observable';
import type { EventsKey } from 'ol/events';
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import { Circle, Fill, Stroke, Style } from 'ol/style';
import { ApiError } from '../core/api';
import { pointInRing } from '../core/geometry';
import { MAX_PROMPT_POINTS, resultClass, serverRing, sourceText, type ClickOutcome } from '../core/interactive';
import type { Point } from '../core/types';
import type { Tool, ToolContext } from './tool';

export type ClickKind = 'new' | 'positive' | 'negative';

interface Prompt {
  positive: Point[];
  negative: Point[];
  /** The cell the answers go to: the selected cell clicked, then the cell the first answer made. */
  key: string | null;
}

const markerStyle = (color: string, pending: boolean) =>
  new Style({
    image: new Circle({
      radius: 5,
      fill: pending ? undefined : new Fill({ color }),
      stroke: new Stroke({ color: pending ? color : '#fff', width: pending ? 2.5 : 1.5 }),
    }),
  });
const STYLES = {
  pos: markerStyle('#22c55e', false),
  posPending: markerStyle('#22c55e', true),
  neg: markerStyle('#ef4444', false),
  negPending: markerStyle('#ef4444', true),
};

/** A failed request in words: the server's detail and its first field error (a 400 names the field). */
export function requestError(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.isNetwork) return 'the server cannot be reached';
    const field = e.fieldMessages()[0];
    return field && !e.detail.includes(field) ? `${e.detail} (${field})` : e.detail;
  }
  return e instanceof Error ? e.message : String(e);
}

/** After this long without an answer the tool says it is still working. */
export const SLOW_MS = 1200;

/**
 * A notice when the answer takes long: the first click on an image the model has no kept maps
 * of waits for them to be computed (seconds on a CPU), which a mere "progress" cursor hides.
 */
export function slowNotice(ctx: ToolContext | null): ReturnType<typeof setTimeout> {
  return setTimeout(() => ctx?.notify('Still outlining — the first prompt on an image can take a few seconds while the model prepares it', 'info'), SLOW_MS);
}

export class SegmentTool implements Tool {
  readonly id = 'segment' as const;
  readonly label = 'Click to segment';
  readonly shortcut = 'W';
  readonly hint =
    'Click inside a cell to outline it (inside the selected cell: redo its contour) · Shift+click: another point of the cell · Alt+click: a point outside it · Esc: end';

  private ctx: ToolContext | null = null;
  private keys: EventsKey[] = [];
  private prompt: Prompt | null = null;
  private readonly posMarks = new Feature<MultiPoint>();
  private readonly negMarks = new Feature<MultiPoint>();
  /** The request in flight (resolves when it and any queued follow-up are done). */
  private running: Promise<void> | null = null;
  private again = false;

  get busy(): boolean {
    return this.running !== null;
  }

  activate(ctx: ToolContext): void {
    this.ctx = ctx;
    const v = ctx.view;
    if (!v) return;
    v.leftDragPans = true;
    v.setCursor('crosshair');
    v.sketchSource.addFeatures([this.posMarks, this.negMarks]);
    this.keys.push(
      v.map.on('click', (e: MapBrowserEvent) => {
        const oe = e.originalEvent as MouseEvent;
        const kind: ClickKind = oe.altKey || oe.ctrlKey || oe.metaKey ? 'negative' : oe.shiftKey ? 'positive' : 'new';
        const under = v.keysAtPixel(e.pixel, { proposals: false })[0] ?? null;
        void this.click(v.frame.toApi(e.coordinate), kind, under);
      }),
    );
  }

  deactivate(): void {
    unByKey(this.keys);
    this.keys = [];
    this.end();
    this.ctx?.view?.sketchSource.clear();
    this.ctx?.view?.setCursor('');
    this.ctx = null;
  }

  onKey(e: KeyboardEvent): boolean {
    if (e.key === 'Escape' && this.prompt) {
      this.end();
      return true;
    }
    return false;
  }

  /** Ends the prompt: its markers go, an answer still on its way is dropped. */
  end(): void {
    this.prompt = null;
    this.again = false;
    this.renderMarks();
  }

  /**
   * A click at `pt` (API coordinates). `under`: the cell under the pointer (smallest first),
   * null on empty image. Resolves once the answer (or the error) was applied.
   */
  click(pt: Point, kind: ClickKind, under: string | null): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return Promise.resolve();
    if (!ctx.segmenter) {
      ctx.notify('Click-to-segment is not available here', 'warn');
      return Promise.resolve();
    }
    const p = this.prompt;
    if (kind !== 'new' && p && (kind === 'negative' ? p.negative : p.positive).length >= MAX_PROMPT_POINTS) {
      ctx.notify(`At most ${MAX_PROMPT_POINTS} points of each kind in one prompt — Esc starts a new one`, 'warn');
      return Promise.resolve();
    }
    if (kind === 'negative') {
      if (!this.prompt) {
        ctx.notify('Alt+click marks a point outside the cell: first click inside a cell', 'info');
        return Promise.resolve();
      }
      this.prompt.negative.push(pt);
    } else if (kind === 'positive' && this.prompt) {
      this.prompt.positive.push(pt);
    } else {
      const sel = ctx.selection.cells();
      const selected = sel.length === 1 ? ctx.store.get(sel[0]) : undefined;
      if (selected && pointInRing(pt, selected.polygon)) {
        this.prompt = { positive: [pt], negative: [], key: selected.key };
      } else if (under && ctx.store.has(under)) {
        this.end();
        ctx.selection.set([under]);
        ctx.notify('Cell selected — click inside it again to redo its contour', 'info');
        return Promise.resolve();
      } else {
        this.prompt = { positive: [pt], negative: [], key: null };
        ctx.selection.clear();
      }
    }
    this.renderMarks();
    return this.request();
  }

  private request(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    const run = async (): Promise<void> => {
      do {
        this.again = false;
        const prompt = this.prompt;
        const ctx = this.ctx;
        if (!prompt || !ctx?.segmenter) return;
        const pos = prompt.positive.slice();
        const neg = prompt.negative.slice();
        let out: ClickOutcome | null = null;
        try {
          out = await ctx.segmenter.click(pos, neg);
        } catch (e) {
          if (this.prompt === prompt && !this.again) ctx.notify(`Could not segment: ${requestError(e)}`, 'error');
        }
        // a newer click joined the prompt meanwhile: its request supersedes this answer
        if (out && this.prompt === prompt && !this.again) this.apply(prompt, out);
      } while (this.again && this.prompt);
    };
    this.ctx?.view?.setCursor('progress');
    const slow = slowNotice(this.ctx);
    this.running = run().finally(() => {
      clearTimeout(slow);
      this.running = null;
      this.again = false;
      if (this.ctx) {
        this.ctx.view?.setCursor('crosshair');
        this.renderMarks();
      }
    });
    this.renderMarks();
    return this.running;
  }

  private apply(prompt: Prompt, out: ClickOutcome): void {
    const ctx = this.ctx;
    if (!ctx) return;
    const ring = serverRing(out.polygon);
    if (!ring) {
      ctx.notify(out.reason ? `No contour here: ${out.reason}` : 'No cell found under the click', 'warn');
      return;
    }
    if (prompt.key && ctx.store.has(prompt.key)) {
      const refining = prompt.positive.length + prompt.negative.length > 1;
      ctx.store.updatePolygon(prompt.key, ring, refining ? 'refine segmented cell' : 'segment cell again');
      ctx.selection.set([prompt.key]);
      return;
    }
    // a new cell (also when the prompt's cell was undone or deleted meanwhile)
    const classId = resultClass(ctx.palette, out, ctx.activeClassId());
    prompt.key = ctx.store.addCell(ring, classId, 'segment cell');
    ctx.selection.set([prompt.key]);
    if (out.source === 'baseline') ctx.notify(`Outlined by ${sourceText(out.source, out.modelVersion)}`, 'info');
  }

  private renderMarks(): void {
    const v = this.ctx?.view;
    const p = this.prompt;
    if (!v) return;
    const pending = this.busy;
    this.posMarks.setGeometry(p?.positive.length ? new MultiPoint(p.positive.map((q) => v.frame.toMap(q))) : undefined);
    this.negMarks.setGeometry(p?.negative.length ? new MultiPoint(p.negative.map((q) => v.frame.toMap(q))) : undefined);
    this.posMarks.setStyle(pending ? STYLES.posPending : STYLES.pos);
    this.negMarks.setStyle(pending ? STYLES.negPending : STYLES.neg);
  }
}
