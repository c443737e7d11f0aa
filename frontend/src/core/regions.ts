/**
 * Regions of interest of an image (issue #14), framework-free: the list the editor shows and
 * draws, kept in step with the server. A region is a server object of its own (created and
 * deleted at once through the API): it never enters the cells' undo history.
 */
import { centroid, pointInRing } from './geometry';
import type { ApiCell, RegionInfo } from './types';
import type { Point, Ring } from './types';

/** What the list needs of the API (ApiClient has these methods). */
export interface RegionApi {
  listRegions(imageId: number): Promise<RegionInfo[]>;
  createRegion(imageId: number, polygon: number[][], name?: string): Promise<RegionInfo>;
  deleteRegion(imageId: number, regionId: number): Promise<void>;
  presegmentRegion(imageId: number, regionId: number): Promise<unknown>;
  submitRegion(imageId: number, regionId: number): Promise<RegionInfo>;
}

/** Region states from which a region may be submitted for verification (the server's table). */
export const REGION_SUBMITTABLE: readonly string[] = ['new', 'pre_segmented', 'annotating'];

/** Whether a region may be submitted for verification now: a slide's region, not yet under review. */
export function regionSubmittable(region: Pick<RegionInfo, 'status'>, tiled: boolean): boolean {
  return tiled && REGION_SUBMITTABLE.includes(region.status ?? 'new');
}

/** Whether `p` lies on the segment a-b (within a rounding error). */
function onSegment(p: Point, a: Point, b: Point): boolean {
  const eps = 1e-9 * Math.max(1, Math.abs(a[0]) + Math.abs(a[1]) + Math.abs(b[0]) + Math.abs(b[1]));
  if (Math.abs(cross(a, b, p)) > eps * Math.hypot(b[0] - a[0], b[1] - a[1])) return false;
  return p[0] >= Math.min(a[0], b[0]) - eps && p[0] <= Math.max(a[0], b[0]) + eps && p[1] >= Math.min(a[1], b[1]) - eps && p[1] <= Math.max(a[1], b[1]) + eps;
}

/**
 * Whether a cell belongs to a region: its area centroid lies inside the region's outline, the
 * outline included (the server's rule, cytoseg.regions).
 */
export function cellInRegion(cell: readonly Point[], region: readonly (readonly number[])[]): boolean {
  const ring = region.map(([x, y]) => [x, y] as Point);
  const c = centroid(cell);
  return pointInRing(c, ring) || ring.some((a, i) => onSegment(c, a, ring[(i + 1) % ring.length]));
}

function cross(o: Point, a: Point, b: Point): number {
  return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
}

function segmentsCross(a: Point, b: Point, c: Point, d: Point): boolean {
  const d1 = cross(c, d, a);
  const d2 = cross(c, d, b);
  const d3 = cross(a, b, c);
  const d4 = cross(a, b, d);
  return ((d1 > 0 && d2 < 0) || (d1 < 0 && d2 > 0)) && ((d3 > 0 && d4 < 0) || (d3 < 0 && d4 > 0));
}

/** Twice the signed area of a ring. */
function area2(ring: Ring): number {
  let s = 0;
  for (let i = 0; i < ring.length; i++) {
    const [x0, y0] = ring[i];
    const [x1, y1] = ring[(i + 1) % ring.length];
    s += x0 * y1 - x1 * y0;
  }
  return s;
}

/**
 * Why the server would refuse this outline as a region of a `width` x `height` image (the same
 * rules: at least 3 points, inside the image, a simple polygon with an area), or null.
 */
export function regionRingProblem(ring: Ring, width: number, height: number): string | null {
  if (ring.length < 3) return 'A region needs at least 3 points';
  const outside = ring.findIndex(([x, y]) => !(x >= 0 && y >= 0 && x <= width && y <= height));
  if (outside >= 0) return 'The region reaches outside the image';
  const n = ring.length;
  for (let i = 0; i < n; i++) {
    for (let j = i + 2; j < n; j++) {
      if (i === 0 && j === n - 1) continue; // neighbours through the closing edge
      if (segmentsCross(ring[i], ring[(i + 1) % n], ring[j], ring[(j + 1) % n])) return 'The region’s outline crosses itself';
    }
  }
  if (Math.abs(area2(ring)) < 1e-9) return 'The region has no area';
  return null;
}

/** The outline cut to the image (a drag past the edge) with each point rounded to 0.01 px. */
export function regionRingClamp(ring: Ring, width: number, height: number): Ring {
  const r = (v: number) => Math.round(v * 100) / 100;
  return ring.map(([x, y]) => [r(Math.min(width, Math.max(0, x))), r(Math.min(height, Math.max(0, y)))] as Point);
}

/** What reading a region's cells needs of the API (ApiClient has it). */
export interface RegionCellsApi {
  getCellsInBox(imageId: number, bbox: readonly number[], opts?: { after?: number; limit?: number }): Promise<{ cells: ApiCell[]; next_after?: number | null }>;
}

/**
 * The annotation cells of a region (a review of one region of a slide decides on these only):
 * the cells meeting its bounding box, page by page, whose centroid lies inside its outline.
 */
export async function regionCells(api: RegionCellsApi, imageId: number, region: Pick<RegionInfo, 'bbox' | 'polygon'>, limit = 5000): Promise<ApiCell[]> {
  const out: ApiCell[] = [];
  let after: number | undefined;
  for (;;) {
    const page = await api.getCellsInBox(imageId, region.bbox, after === undefined ? { limit } : { after, limit });
    for (const cell of page.cells) if (cellInRegion(cell.polygon as Point[], region.polygon)) out.push(cell);
    if (page.next_after === undefined || page.next_after === null) return out;
    after = page.next_after;
  }
}

export type RegionsListener = (regions: readonly RegionInfo[]) => void;

export class RegionList {
  private items: RegionInfo[] = [];
  private readonly listeners = new Set<RegionsListener>();

  constructor(
    private readonly api: RegionApi,
    readonly imageId: number,
    readonly width: number,
    readonly height: number,
  ) {}

  get regions(): readonly RegionInfo[] {
    return this.items;
  }

  onChange(fn: RegionsListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn(this.items);
  }

  async load(): Promise<void> {
    this.items = await this.api.listRegions(this.imageId);
    this.changed();
  }

  /** Checks the outline as the server would, then creates the region; the reason when refused. */
  async create(ring: Ring, name?: string): Promise<RegionInfo | string> {
    const clean = regionRingClamp(ring, this.width, this.height);
    const problem = regionRingProblem(clean, this.width, this.height);
    if (problem) return problem;
    const region = await this.api.createRegion(this.imageId, clean.map(([x, y]) => [x, y]), name);
    this.items = [...this.items, region];
    this.changed();
    return region;
  }

  async remove(regionId: number): Promise<void> {
    await this.api.deleteRegion(this.imageId, regionId);
    this.items = this.items.filter((r) => r.id !== regionId);
    this.changed();
  }

  async presegment(regionId: number): Promise<void> {
    await this.api.presegmentRegion(this.imageId, regionId);
  }

  /** Submits the region for verification (its own review round); the list shows its new status. */
  async submit(regionId: number): Promise<RegionInfo> {
    const region = await this.api.submitRegion(this.imageId, regionId);
    this.items = this.items.map((r) => (r.id === regionId ? { ...r, ...pick(region) } : r));
    this.changed();
    return region;
  }
}

/** The region fields of an answer that may carry more (a transition's allowed actions). */
function pick(r: RegionInfo): RegionInfo {
  return { id: r.id, image: r.image, name: r.name, polygon: r.polygon, bbox: r.bbox, status: r.status, created_by: r.created_by, created_at: r.created_at, updated_at: r.updated_at };
}
