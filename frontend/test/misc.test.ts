import { describe, expect, it, vi } from 'vitest';
import { ClassPalette, parseColor } from '../src/core/classes';
import { findNextImage, isFinishedStatus, loadFilters, saveFilters } from '../src/core/navigation';
import { ProposalStore } from '../src/core/proposals';
import { parseRoute, routeHash } from '../src/core/router';
import { Selection, proposalKey } from '../src/core/selection';
import type { ImageInfo, Point } from '../src/core/types';

describe('router', () => {
  it('parses and builds hash routes', () => {
    expect(parseRoute('')).toEqual({ name: 'projects' });
    expect(parseRoute('#/login?next=%23%2Fprojects%2F2')).toEqual({ name: 'login', next: '#/projects/2' });
    expect(parseRoute('#/projects')).toEqual({ name: 'projects' });
    expect(parseRoute('#/projects/3')).toEqual({ name: 'images', projectId: 3 });
    expect(parseRoute('#/projects/3/images')).toEqual({ name: 'images', projectId: 3 });
    expect(parseRoute('#/projects/1/images/5')).toEqual({ name: 'editor', projectId: 1, imageId: 5 });
    expect(parseRoute('#/projects/x/images/5').name).toBe('notfound');
    expect(routeHash({ name: 'editor', projectId: 1, imageId: 5 })).toBe('#/projects/1/images/5');
    expect(parseRoute(routeHash({ name: 'login', next: '#/projects/1/images/2' }))).toEqual({ name: 'login', next: '#/projects/1/images/2' });
  });
});

describe('classes', () => {
  it('parses colours and maps digits / labels to classes by order', () => {
    expect(parseColor('#ff8000')).toEqual([255, 128, 0]);
    expect(parseColor('0f0')).toEqual([0, 255, 0]);
    expect(parseColor('rgb(1, 2, 3)')).toEqual([1, 2, 3]);
    expect(parseColor('nonsense')).toEqual([232, 232, 232]);
    const p = new ClassPalette([
      { id: 9, name: 'Lymphocyte', color: '#00f', order: 2, model_label: 3 },
      { id: 4, name: 'Follicular', color: 'oops', order: 1, model_label: 1 },
    ]);
    expect(p.byDigit(1)!.id).toBe(4);
    expect(p.byDigit(2)!.id).toBe(9);
    expect(p.byDigit(3)).toBeUndefined();
    expect(p.digitOf(9)).toBe(2);
    expect(p.color(4)).toMatch(/^#/); // invalid colour replaced by a palette colour
    expect(p.name(null)).toBe('Unclassified');
    expect(p.byLabel('3')!.id).toBe(9); // the model's output index
    expect(p.byLabel('FOLLICULAR')!.id).toBe(4); // else the name, in any case
  });
});

describe('selection and proposals', () => {
  it('selection emits added/removed and separates cells from proposals', () => {
    const s = new Selection();
    const ev = vi.fn();
    s.events.on('change', ev);
    s.set(['s1', proposalKey(7)]);
    s.toggle('s1');
    s.add('n_1');
    expect(s.cells()).toEqual(['n_1']);
    expect(s.proposals()).toEqual([7]);
    expect(ev).toHaveBeenCalledTimes(3);
    s.set(['n_1', 'p7']);
    expect(ev).toHaveBeenCalledTimes(3); // no-op
  });

  it('proposal store finds proposals in view and removes accepted ones', () => {
    const p = new ProposalStore();
    const sq = (x: number, y: number): Point[] => [
      [x, y],
      [x + 10, y],
      [x + 10, y + 10],
      [x, y + 10],
    ];
    p.load([
      { id: 1, class_id: null, polygon: sq(0, 0), score: 0.9, label: 'lym' },
      { id: 2, class_id: 2, polygon: sq(100, 100) },
      { id: 3, class_id: 2, polygon: sq(196, 0) }, // mostly outside the view, but partly in it
      // its bounding box reaches into the view, the triangle itself does not
      { id: 4, class_id: 2, polygon: [[300, 200], [300, 100], [190, 200]] },
      { id: 5, class_id: 2, polygon: sq(300, 300) }, // wholly outside
      // larger than the view, covering it (no vertex in view)
      { id: 6, class_id: 2, polygon: [[-50, -50], [400, -50], [400, 400], [-50, 400]] },
    ]);
    expect(p.idsInExtent([0, 0, 200, 150])).toEqual([1, 2, 3, 6]);
    const removed = vi.fn();
    p.events.on('removed', removed);
    p.remove([1, 99]);
    expect(removed).toHaveBeenCalledWith([1]);
    expect(p.size).toBe(5);
  });
});

describe('navigation', () => {
  const img = (id: number, status = 'new') => ({ id, status }) as ImageInfo;
  const pages = [[img(1), img(2, 'submitted'), img(3)], [img(4), img(5)]];
  const api = {
    listImages: vi.fn(async (_p: number, f: { page?: number }) => {
      const i = (f.page ?? 1) - 1;
      return { count: 5, next: i + 1 < pages.length ? 'next' : null, previous: null, results: pages[i] };
    }),
  };

  it('finds the next image of the filtered list across pages', async () => {
    expect(await findNextImage(api, 1, {}, 1)).toBe(2);
    expect(await findNextImage(api, 1, {}, 3)).toBe(4);
    expect(await findNextImage(api, 1, {}, 5)).toBeNull();
  });

  it('falls back to the first unfinished image when the current one left the list', async () => {
    expect(await findNextImage(api, 1, { status: 'new' }, 42)).toBe(1);
  });

  it('recognises finished statuses and stores filters per project', () => {
    expect(isFinishedStatus('submitted')).toBe(true);
    expect(isFinishedStatus('in_review')).toBe(true);
    expect(isFinishedStatus('in_progress')).toBe(false);
    const m = new Map<string, string>();
    const st = { getItem: (k: string) => m.get(k) ?? null, setItem: (k: string, v: string) => void m.set(k, v) };
    saveFilters(3, { status: 'new', split: 'train' }, st);
    expect(loadFilters(3, st)).toEqual({ status: 'new', split: 'train' });
    expect(loadFilters(4, st)).toEqual({});
  });
});
