import { describe, expect, it } from 'vitest';
import { RegionList, regionRingClamp, regionRingProblem, type RegionApi } from '../src/core/regions';
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
  };

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

  it('refuses an outline the server would refuse without calling it', async () => {
    const list = new RegionList(api, 7, 200, 200);
    const before = made.length;
    expect(await list.create([[0, 0], [100, 100], [100, 0], [0, 100]])).toMatch(/crosses itself/);
    expect(made.length).toBe(before);
  });
});
