import { describe, expect, it, vi } from 'vitest';
import { ClassPalette } from '../src/core/classes';
import { ProposalStore } from '../src/core/proposals';
import { Selection } from '../src/core/selection';
import { AnnotationStore } from '../src/core/store';
import { brushSettings, BrushTool, EraserTool } from '../src/tools/brushTool';
import type { ToolContext } from '../src/tools/tool';
import { applyStroke, capsule, MAX_BRUSH_RADIUS, MIN_BRUSH_RADIUS, simplifyStrokeResult, stepRadius, strokeArea, strokeCell } from '../src/core/brush';
import { area, isValidRing, pointInRing } from '../src/core/geometry';
import type { Point, Ring } from '../src/core/types';

const sq = (x: number, y: number, s: number): Ring => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

function multiArea(m: ReturnType<typeof strokeArea>): number {
  let s = 0;
  for (const poly of m) {
    s += area(poly[0].slice(0, -1) as Point[]);
    for (const hole of poly.slice(1)) s -= area(hole.slice(0, -1) as Point[]);
  }
  return s;
}

describe('stroke polygon', () => {
  it('a capsule is a convex outline at the radius from its segment', () => {
    const c = capsule([0, 0], [20, 0], 5);
    expect(isValidRing(c)).toBe(true);
    for (const p of c) {
      const dx = Math.max(0, -p[0], p[0] - 20);
      expect(Math.hypot(dx, p[1])).toBeGreaterThanOrEqual(5);
      expect(Math.hypot(dx, p[1])).toBeLessThan(5 * 1.03);
    }
    // 20×10 rectangle plus a circle of radius 5, minus the polygonal approximation
    expect(area(c)).toBeGreaterThan(200 + Math.PI * 25 * 0.98);
    expect(area(c)).toBeLessThan((200 + Math.PI * 25) * 1.03);
  });

  it('a click (one point) is a disc', () => {
    const s = strokeArea([[50, 50]], 10);
    expect(s).toHaveLength(1);
    expect(multiArea(s)).toBeCloseTo(Math.PI * 100, -1);
  });

  it('a straight stroke covers its length times the diameter plus the round ends', () => {
    const path: Point[] = [];
    for (let x = 0; x < 100; x += 0.7) path.push([x, 10 + Math.sin(x) * 0.01]);
    path.push([100, 10]);
    const s = strokeArea(path, 4);
    expect(s).toHaveLength(1);
    expect(multiArea(s)).toBeGreaterThan(100 * 8 + Math.PI * 16 * 0.9);
    expect(multiArea(s)).toBeLessThan((100 * 8 + Math.PI * 16) * 1.03);
    // thinned: the many collinear samples do not become hundreds of capsules' worth of vertices
    expect(s[0][0].length).toBeLessThan(120);
  });

  it('an empty path or radius covers nothing', () => {
    expect(strokeArea([], 5)).toEqual([]);
    expect(strokeArea([[1, 1]], 0)).toEqual([]);
  });
});

describe('brush (union) and eraser (difference)', () => {
  const cell = sq(0, 0, 40);

  it('the brush adds a bulge painted outwards from inside the cell', () => {
    const r = applyStroke(cell, [
      [30, 20],
      [50, 20],
    ], 5, 'add');
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(isValidRing(r.ring)).toBe(true);
    expect(area(r.ring)).toBeGreaterThan(1600 + 10 * 10 * 0.95);
    expect(pointInRing([48, 20], r.ring)).toBe(true);
    expect(pointInRing([48, 30], r.ring)).toBe(false);
  });

  it('a brush stroke that does not touch the cell leaves it and says why', () => {
    const r = applyStroke(cell, [
      [60, 60],
      [80, 60],
    ], 5, 'add');
    expect(r).toEqual({ ok: false, reason: expect.stringContaining('does not touch the cell') });
  });

  it('a brush loop around empty image fills the enclosed hole (a contour has none)', () => {
    // a ring-shaped stroke outside the right edge, touching the cell: union would have a hole
    const loop: Point[] = [
      [35, 10],
      [70, 10],
      [70, 30],
      [35, 30],
    ];
    const r = applyStroke(cell, loop, 3, 'add');
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(pointInRing([55, 20], r.ring)).toBe(true);
  });

  it('the eraser bites from the edge', () => {
    const r = applyStroke(cell, [
      [45, 20],
      [32, 20],
    ], 5, 'erase');
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(isValidRing(r.ring)).toBe(true);
    expect(area(r.ring)).toBeLessThan(1600 - 8 * 10 * 0.9);
    expect(pointInRing([36, 20], r.ring)).toBe(false);
    expect(pointInRing([20, 20], r.ring)).toBe(true);
  });

  it('the eraser refuses to cut the cell in two, to make a hole, or to remove it all', () => {
    const cut = applyStroke(cell, [
      [20, -10],
      [20, 50],
    ], 3, 'erase');
    expect(cut).toEqual({ ok: false, reason: expect.stringContaining('cut the cell in two') });
    const hole = applyStroke(cell, [
      [18, 20],
      [22, 20],
    ], 3, 'erase');
    expect(hole).toEqual({ ok: false, reason: expect.stringContaining('hole') });
    const all = applyStroke(cell, [
      [-10, 20],
      [50, 20],
    ], 40, 'erase');
    expect(all).toEqual({ ok: false, reason: expect.stringContaining('whole cell') });
    const miss = applyStroke(cell, [
      [60, 60],
      [70, 60],
    ], 3, 'erase');
    expect(miss).toEqual({ ok: false, reason: expect.stringContaining('did not touch') });
  });

  it('a sliver cut off at the edge of a stroke is dropped, not refused', () => {
    // a slightly slanted stroke along the top edge leaves a thin triangle (about 2 px²) at the left
    const r = applyStroke(cell, [
      [-5, 1.5],
      [45, 0],
    ], 1, 'erase', { crumb: 4 });
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.ring.every(([, y]) => y > 0.3)).toBe(true);
  });

  it('the result has a reasonable number of vertices', () => {
    const path: Point[] = [];
    for (let t = 0; t <= Math.PI; t += 0.01) path.push([20 + 25 * Math.cos(t), 20 + 25 * Math.sin(t)]);
    const r = applyStroke(cell, path, 6, 'add');
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.ring.length).toBeLessThan(200);
  });
});

describe('new cell from a stroke and the radius', () => {
  it('a stroke on empty image becomes a cell', () => {
    const r = strokeCell(
      [
        [10, 10],
        [30, 10],
      ],
      6,
    );
    expect(r.ok).toBe(true);
    if (r.ok) expect(isValidRing(r.ring)).toBe(true);
  });

  it('simplification keeps a contour within half a pixel and under the vertex cap', () => {
    const ring: Ring = [];
    for (let i = 0; i < 2000; i++) ring.push([100 + 50 * Math.cos((2 * Math.PI * i) / 2000), 100 + 50 * Math.sin((2 * Math.PI * i) / 2000)]);
    const s = simplifyStrokeResult(ring, 10, 100);
    expect(s.length).toBeLessThanOrEqual(100);
    expect(Math.abs(area(s) - area(ring)) / area(ring)).toBeLessThan(0.01);
  });

  it('the radius steps by 20 %, at least half a pixel, within its bounds', () => {
    expect(stepRadius(10, 1)).toBe(12);
    expect(stepRadius(12, -1)).toBe(10);
    expect(stepRadius(1, 1)).toBe(1.5);
    expect(stepRadius(1, -1)).toBe(MIN_BRUSH_RADIUS);
    expect(stepRadius(MAX_BRUSH_RADIUS, 1)).toBe(MAX_BRUSH_RADIUS);
  });
});

describe('brush and eraser tools', () => {
  function setup() {
    const store = new AnnotationStore();
    store.load({
      revision: 1,
      cells: [
        { id: 1, class_id: 1, polygon: sq(0, 0, 40) },
        { id: 2, class_id: 1, polygon: sq(100, 100, 40) },
      ],
    });
    const notify = vi.fn();
    const selection = new Selection();
    const c: ToolContext = {
      store,
      selection,
      proposals: new ProposalStore(),
      palette: new ClassPalette([{ id: 1, name: 'A', color: '#ff0000', model_label: 1, order: 1 }]),
      activeClassId: () => 1,
      snapEnabled: () => false,
      notify,
      setTool: vi.fn(),
    };
    return { c, store, selection, notify };
  }
  const bulge: Point[] = [
    [30, 20],
    [55, 20],
  ];

  it('a brush stroke grows the selected cell in one undo step; undo restores it', () => {
    const { c, store, selection } = setup();
    const t = new BrushTool();
    t.activate(c);
    selection.set(['s1']);
    const before = store.get('s1')!.polygon;
    expect(t.stroke(bulge, 5)).toBe('s1');
    expect(area(store.get('s1')!.polygon)).toBeGreaterThan(area(before) + 100);
    expect(store.history.state().undoLabel).toBe('brush');
    store.undo();
    expect(store.get('s1')!.polygon).toEqual(before);
  });

  it('without a selection the cell under the start of the stroke is painted, and empty image gets a new cell', () => {
    const { c, store, selection } = setup();
    const t = new BrushTool();
    t.activate(c);
    expect(t.stroke(bulge, 5)).toBe('s1');
    expect(selection.cells()).toEqual(['s1']);
    selection.clear();
    const key = t.stroke([
      [60, 70],
      [80, 70],
    ], 5);
    expect(key).toMatch(/^n/);
    expect(store.size).toBe(3);
    expect(store.get(key!)!.classId).toBe(1);
  });

  it('the eraser bites the selected cell; a refused result leaves the cell and says why', () => {
    const { c, store, selection, notify } = setup();
    const t = new EraserTool();
    t.activate(c);
    selection.set(['s1']);
    const before = store.get('s1')!.polygon;
    expect(t.stroke([[45, 20], [32, 20]], 5)).toBe('s1');
    expect(area(store.get('s1')!.polygon)).toBeLessThan(area(before) - 50);
    const version = store.version;
    expect(t.stroke([[20, -10], [20, 50]], 3)).toBeNull();
    expect(store.version).toBe(version);
    expect(notify).toHaveBeenLastCalledWith(expect.stringContaining('cell is unchanged'), 'warn');
    selection.clear();
    expect(t.stroke([[70, 70]], 3)).toBeNull();
    expect(notify).toHaveBeenLastCalledWith(expect.stringContaining('Start the eraser on a cell'), 'warn');
  });

  it('[ and ] change the radius shared by brush and eraser', () => {
    const { c } = setup();
    const t = new BrushTool();
    t.activate(c);
    const r0 = brushSettings.radius;
    expect(t.onKey({ key: ']' } as KeyboardEvent)).toBe(true);
    expect(brushSettings.radius).toBeGreaterThan(r0);
    t.onKey({ key: '[' } as KeyboardEvent);
    expect(brushSettings.radius).toBe(r0);
  });
});

describe('next proposal', () => {
  it('walks the open proposals in reading order and wraps around', () => {
    const p = new ProposalStore();
    p.load([
      { id: 7, class_id: null, polygon: sq(200, 0, 10) },
      { id: 3, class_id: null, polygon: sq(0, 200, 10) },
      { id: 5, class_id: null, polygon: sq(0, 0, 10) },
    ] as never);
    expect(p.next(null)).toBe(5);
    expect(p.next(5)).toBe(7);
    expect(p.next(7)).toBe(3);
    expect(p.next(3)).toBe(5);
    expect(p.next(5, -1)).toBe(3);
    expect(new ProposalStore().next(null)).toBeNull();
  });
});

describe('strokes at the edge of the image', () => {
  it('a bulge painted past the edge is cut to the image', () => {
    const r = applyStroke(sq(0, 0, 40), [
      [20, 30],
      [20, 60],
    ], 6, 'add', { bounds: [100, 50] });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(isValidRing(r.ring)).toBe(true);
    expect(Math.max(...r.ring.map(([, y]) => y))).toBe(50);
    const cell = strokeCell([[95, 10], [120, 10]], 5, 4, [100, 50]);
    expect(cell.ok && Math.max(...cell.ring.map(([x]) => x))).toBe(100);
  });
});
