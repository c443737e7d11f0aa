/**
 * Regions of interest of an image (issue #14), framework-free: the list the editor shows and
 * draws, kept in step with the server. A region is a server object of its own (created and
 * deleted at once through the API): it never enters the cells' undo history.
 */
import type { RegionInfo } from './types';
import type { Point, Ring } from './types';

/** What the list needs of the API (ApiClient has these methods). */
export interface RegionApi {
  listRegions(imageId: number): Promise<RegionInfo[]>;
  createRegion(imageId: number, polygon: number[][], name?: string): Promise<RegionInfo>;
  deleteRegion(imageId: number, regionId: number): Promise<void>;
  presegmentRegion(imageId: number, regionId: number): Promise<unknown>;
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
}
