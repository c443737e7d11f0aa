/**
 * Cells by viewport (large images and slides): the store holds only the cells near the view.
 *
 * After the view settles (`viewChanged`, debounced) the loader reads the cells whose box meets
 * the visible extent plus a margin (`GET images/{id}/cells?bbox=`, one page), merges them into
 * the store ({@link AnnotationStore.applyRegion}: never into the undo history, never over an
 * unsaved edit) and drops the clean cells far outside the view ({@link AnnotationStore.dropOutside}:
 * not the selected ones, not those the undo history may still write). A newer view cancels the
 * read in flight. A read overtaken by a save (older than the store's revision) is made again.
 * A page cut by the server's limit (a view zoomed out over many cells) is not shown (a band of
 * the first cells by id would read as if the rest had none): the clean cells go and the load is
 * reported incomplete, so the editor asks the doctor to zoom in.
 */
import type { AnnotationStore, Box } from './store';
import type { ApiCell, CellsResponse } from './types';

export interface ViewportApi {
  getCellsInBox(
    imageId: number,
    bbox: readonly number[],
    opts?: { layer?: 'annotation' | 'proposal'; limit?: number; signal?: AbortSignal },
  ): Promise<CellsResponse & { next_after?: number | null }>;
}

export interface ViewportLoad {
  box: Box;
  cells: number;
  /** False: the view holds more cells than one read may bring: none are shown (zoom in). */
  complete: boolean;
  dropped: number;
}

export interface ViewportLoaderOptions {
  api: ViewportApi;
  store: AnnotationStore;
  imageId: number;
  width: number;
  height: number;
  /** Read this fraction of the view's size beyond each side (default 0.5). */
  margin?: number;
  /** Keep cells up to this fraction of the view's size beyond each side (default 1.5). */
  keep?: number;
  debounceMs?: number;
  /** Cells per read (the server's page; default 5000). */
  limit?: number;
  /** Keys never dropped (the selection). */
  pinned?: () => Iterable<string>;
  /** The proposals in the same box, when the editor shows them (replaces the proposal layer). */
  proposals?: (cells: ApiCell[]) => void;
  onLoad?: (load: ViewportLoad) => void;
  onError?: (error: unknown) => void;
}

/** `extent` widened by `fraction` of its size on each side, cut to the image. */
export function widen(extent: Box, fraction: number, width: number, height: number): Box {
  const w = extent[2] - extent[0];
  const h = extent[3] - extent[1];
  return [
    Math.max(0, extent[0] - fraction * w),
    Math.max(0, extent[1] - fraction * h),
    Math.min(width, extent[2] + fraction * w),
    Math.min(height, extent[3] + fraction * h),
  ];
}

export class ViewportLoader {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private controller: AbortController | null = null;
  private extent: Box | null = null;
  private stopped = false;
  /** The read in flight (tests and the editor wait for it). */
  current: Promise<void> = Promise.resolve();

  constructor(private readonly opts: ViewportLoaderOptions) {}

  /** The view moved or zoomed (image pixels, y down): read its cells once it settles. */
  viewChanged(extent: Box): void {
    this.extent = extent;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.reload();
    }, this.opts.debounceMs ?? 250);
  }

  /** Reads the cells of the current view now (after a save others overtook, a restore ...). */
  reload(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.extent || this.stopped) return this.current;
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.current = this.load(this.extent, controller.signal, 2);
    return this.current;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.controller?.abort();
  }

  private async load(extent: Box, signal: AbortSignal, tries: number): Promise<void> {
    const { api, store, imageId, width, height } = this.opts;
    const box = widen(extent, this.opts.margin ?? 0.5, width, height);
    if (box[2] <= box[0] || box[3] <= box[1]) return; // the view is off the image
    try {
      const limit = this.opts.limit ?? 5000;
      const [resp, props] = await Promise.all([
        api.getCellsInBox(imageId, box, { limit, signal }),
        this.opts.proposals ? api.getCellsInBox(imageId, box, { layer: 'proposal', limit, signal }) : Promise.resolve(null),
      ]);
      if (signal.aborted || this.stopped) return;
      const complete = resp.next_after === undefined || resp.next_after === null;
      if (!complete) {
        const dropped = store.dropOutside([-1, -1, -1, -1], this.opts.pinned?.() ?? []);
        if (props) this.opts.proposals?.([]);
        this.opts.onLoad?.({ box, cells: 0, complete, dropped });
        return;
      }
      if (store.applyRegion(resp, box, true) === null) {
        // a save overtook this read: read again (the store stays as it is meanwhile)
        if (tries > 1) await this.load(extent, signal, tries - 1);
        return;
      }
      if (props) this.opts.proposals?.(props.cells);
      const dropped = store.dropOutside(widen(extent, this.opts.keep ?? 1.5, width, height), this.opts.pinned?.() ?? []);
      this.opts.onLoad?.({ box, cells: resp.cells.length, complete, dropped });
    } catch (e) {
      if (signal.aborted || (e instanceof DOMException && e.name === 'AbortError')) return;
      this.opts.onError?.(e);
    }
  }
}
