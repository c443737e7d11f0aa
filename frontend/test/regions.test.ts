import { describe, expect, it } from 'vitest';
import { cellInRegion, regionCells, RegionList, regionRingClamp, regionRingProblem, regionSubmittable, type RegionApi } from '../src/core/regions';
import type { RegionInfo } from '../src/core/types';
import type { Ring } from '../src/core/types';

const square: Ring = [
  [10, 10],
  [100, 10],
  [100, 100],
  [10, 100],
];

describe('regionRingProblem (the server rules, checked before sending)', () => {
  it('accepts a simple polygon inside the image', () => {
    expect(regionRingProblem(square, 200, 200)).toBeNull();
  });
  it('names what is wrong', () => {
    expect(regionRingProblem(square.slice(0, 2), 200, 200)).toMatch(/at least 3/);
    expect(regionRingProblem(square, 50, 50)).toMatch(/outside the image/);
    expect(regionRingProblem([[0, 0], [10, 10], [20, 20]], 50, 50)).toMatch(/no area/);
    const bowtie: Ring = [[0, 0], [100, 100], [100, 0], [0, 100]];
    expect(regionRingProblem(bowtie, 200, 200)).toMatch(/crosses itself/);
  });
  it('clamps a drag past the edge onto the image', () => {
    expect(regionRingClamp([[-5, 3.333333], [300, 10], [50, 250]], 200, 200)).toEqual([[0, 3.33], [200, 10], [50, 200]]);
  });
});

describe('RegionList', () => {
  const made: number[][][] = [];
  const api: RegionApi = {
    listRegions: async () => [{ id: 1, image: 7, name: 'Region 1', polygon: square, bbox: [10, 10, 100, 100], status: 'new', created_by: null, created_at: '', updated_at: '' }],
    createRegion: async (_image, polygon) => {
      made.push(polygon);
      const region: RegionInfo = { id: 2, image: 7, name: 'Region 2', polygon, bbox: [0, 0, 1, 1], status: 'new', created_by: null, created_at: '', updated_at: '' };
      return region;
    },
    deleteRegion: async () => undefined,
    presegmentRegion: async () => ({}),
    submitted: [] as number[],
    async submitRegion(_image: number, regionId: number) {
      (this as unknown as { submitted: number[] }).submitted.push(regionId);
      return { id: regionId, image: 7, name: 'Region 1', polygon: square, bbox: [10, 10, 100, 100], status: 'in_review', created_by: null, created_at: '', updated_at: '', allowed_actions: [] } as RegionInfo;
    },
  } as RegionApi & { submitted: number[] };

  it('loads, creates and removes, telling its listeners', async () => {
    const list = new RegionList(api, 7, 200, 200);
    const seen: number[] = [];
    list.onChange((r) => seen.push(r.length));
    await list.load();
    const region = await list.create([[20, 20], [60, 20], [40, 60]]);
    expect(typeof region).toBe('object');
    expect(list.regions.map((r) => r.name)).toEqual(['Region 1', 'Region 2']);
    await list.remove(1);
    expect(list.regions.map((r) => r.id)).toEqual([2]);
    expect(seen).toEqual([1, 2, 1]);
  });

  it('submits a region for verification and shows its new status (extra answer fields left out)', async () => {
    const list = new RegionList(api, 7, 200, 200);
    await list.load();
    expect(regionSubmittable(list.regions[0], true)).toBe(true);
    expect(regionSubmittable(list.regions[0], false)).toBe(false); // a small image is verified whole
    const seen: string[] = [];
    list.onChange((r) => seen.push(String(r[0].status)));
    await list.submit(1);
    expect((api as RegionApi & { submitted: number[] }).submitted).toEqual([1]);
    expect(list.regions[0].status).toBe('in_review');
    expect(Object.keys(list.regions[0])).not.toContain('allowed_actions');
    expect(seen).toEqual(['in_review']);
    expect(regionSubmittable(list.regions[0], true)).toBe(false);
  });

  it('reads a region’s cells page by page over its bounding box, keeping those inside', async () => {
    const cell = (id: number, x: number) => ({ id, class_id: 1, polygon: [[x, 20], [x + 10, 20], [x + 10, 30], [x, 30]] as Ring });
    const asked: { bbox: readonly number[]; after?: number }[] = [];
    const api = {
      getCellsInBox: async (_image: number, bbox: readonly number[], opts?: { after?: number; limit?: number }) => {
        asked.push({ bbox, after: opts?.after });
        return opts?.after === undefined ? { cells: [cell(1, 20), cell(2, 97)], next_after: 2 } : { cells: [cell(3, 50)], next_after: null };
      },
    };
    const cells = await regionCells(api, 7, { bbox: [10, 10, 100, 100], polygon: square }, 2);
    expect(cells.map((c) => c.id)).toEqual([1, 3]); // cell 2 reaches in, its centroid (102, 25) does not
    expect(asked).toEqual([{ bbox: [10, 10, 100, 100], after: undefined }, { bbox: [10, 10, 100, 100], after: 2 }]);
  });

  it('takes a cell into a region by its centroid', () => {
    expect(cellInRegion([[20, 20], [30, 20], [30, 30], [20, 30]], square)).toBe(true);
    // reaches into the region but its centroid lies outside
    expect(cellInRegion([[90, 50], [150, 50], [150, 60], [90, 60]], square)).toBe(false);
    // a centroid on the outline counts as inside, as on the server (shapely's intersects)
    expect(cellInRegion([[95, 50], [105, 50], [105, 60], [95, 60]], square)).toBe(true);
    expect(cellInRegion([[5, 5], [15, 5], [15, 15], [5, 15]], square)).toBe(true); // centroid on the corner
  });

  it('refuses an outline the server would refuse without calling it', async () => {
    const list = new RegionList(api, 7, 200, 200);
    const before = made.length;
    expect(await list.create([[0, 0], [100, 100], [100, 0], [0, 100]])).toMatch(/crosses itself/);
    expect(made.length).toBe(before);
  });
});
