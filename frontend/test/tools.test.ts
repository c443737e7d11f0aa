import { describe, expect, it, vi } from 'vitest';
import { ClassPalette } from '../src/core/classes';
import { area } from '../src/core/geometry';
import { ProposalStore } from '../src/core/proposals';
import { Selection } from '../src/core/selection';
import { AnnotationStore } from '../src/core/store';
import type { Point } from '../src/core/types';
import { ClassifyTool, DeleteTool, MergeTool } from '../src/tools/clickTools';
import { DrawPolygonTool } from '../src/tools/drawTool';
import { finalizeDrawnRing } from '../src/tools/finalize';
import { createTools } from '../src/tools';
import { SplitTool } from '../src/tools/splitTool';
import type { ToolContext } from '../src/tools/tool';

const sq = (x: number, y: number, s = 10): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

function ctx(activeClass: number | null = 2) {
  const store = new AnnotationStore();
  store.load({
    revision: 1,
    cells: [
      { id: 1, class_id: 1, polygon: sq(0, 0, 20) },
      { id: 2, class_id: 3, polygon: sq(10, 0, 20) }, // overlaps 1
      { id: 3, class_id: 1, polygon: sq(100, 100, 10) },
      { id: 4, class_id: 1, polygon: sq(5, 5, 4) }, // small cell inside 1
    ],
  });
  const notify = vi.fn();
  const c: ToolContext = {
    store,
    selection: new Selection(),
    proposals: new ProposalStore(),
    palette: new ClassPalette([
      { id: 1, name: 'A', color: '#ff0000', model_label: 1, order: 1 },
      { id: 2, name: 'B', color: '#00ff00', model_label: 2, order: 2 },
      { id: 3, name: 'C', color: '#0000ff', model_label: 3, order: 3 },
    ]),
    activeClassId: () => activeClass,
    snapEnabled: () => false,
    notify,
    setTool: vi.fn(),
  };
  return { c, store, notify };
}

describe('tools share one interface', () => {
  it('every tool has an id, a label, a shortcut, a hint and activate/deactivate', () => {
    const tools = createTools();
    expect(tools.map((t) => t.id)).toEqual(['select', 'draw', 'split', 'merge', 'delete', 'classify', 'segment', 'box', 'brush', 'eraser', 'region']);
    for (const t of tools) {
      expect(t.label).toBeTruthy();
      expect(t.shortcut).toMatch(/^[A-Z]$/);
      expect(t.hint.length).toBeGreaterThan(10);
      expect(typeof t.activate).toBe('function');
      expect(typeof t.deactivate).toBe('function');
    }
    expect(new Set(tools.map((t) => t.shortcut)).size).toBe(tools.length);
  });
});

describe('MergeTool', () => {
  it('merges two clicked overlapping cells into one undoable step', () => {
    const { c, store } = ctx();
    const t = new MergeTool();
    t.activate(c);
    t.pick('s1');
    expect(t.first).toBe('s1');
    expect(c.selection.values()).toEqual(['s1']);
    t.pick('s2');
    expect(store.has('s2')).toBe(false);
    expect(area(store.get('s1')!.polygon)).toBeCloseTo(600, 6);
    expect(c.selection.values()).toEqual(['s1']);
    store.undo();
    expect(store.has('s2')).toBe(true);
    expect(area(store.get('s1')!.polygon)).toBe(400);
  });

  it('merges at once when two cells are selected on activation', () => {
    const { c, store } = ctx();
    c.selection.set(['s1', 's2']);
    new MergeTool().activate(c);
    expect(store.size).toBe(3);
  });

  it('refuses cells that do not touch, and clicking the first cell again resets', () => {
    const { c, store, notify } = ctx();
    const t = new MergeTool();
    t.activate(c);
    t.pick('s1');
    t.pick('s3');
    expect(store.size).toBe(4);
    expect(notify).toHaveBeenLastCalledWith(expect.stringContaining('neither overlap nor touch'), 'warn');
    t.pick('s1');
    expect(t.first).toBeNull();
    expect(c.selection.size).toBe(0);
  });
});

describe('DeleteTool and ClassifyTool', () => {
  it('delete removes the clicked cell (undoable) and ignores empty clicks', () => {
    const { c, store } = ctx();
    const t = new DeleteTool();
    t.activate(c);
    t.pick(null);
    t.pick('s3');
    expect(store.has('s3')).toBe(false);
    store.undo();
    expect(store.has('s3')).toBe(true);
  });

  it('classify paints the active class', () => {
    const { c, store } = ctx(2);
    const t = new ClassifyTool();
    t.activate(c);
    t.pick('s3');
    expect(store.get('s3')!.classId).toBe(2);
  });
});

describe('SplitTool', () => {
  it('splits the smallest cell the line crosses right through when nothing is selected', () => {
    const { c, store } = ctx();
    const t = new SplitTool();
    t.activate(c);
    // crosses cell 4 (small, inside 1) and cell 1, ends inside cell 1
    const keys = t.splitWith([
      [7, 2],
      [7, 12],
    ]);
    expect(keys[0]).toBe('s4');
    expect(store.size).toBe(5);
    expect(store.get('s1')!.polygon).toEqual(sq(0, 0, 20));
  });

  it('splits the selected cell even with a short stroke inside it', () => {
    const { c, store } = ctx();
    c.selection.set(['s3']);
    const t = new SplitTool();
    t.activate(c);
    const keys = t.splitWith([
      [105, 103],
      [105, 107],
    ]);
    expect(keys).toHaveLength(2);
    expect(keys.map((k) => area(store.get(k)!.polygon))).toEqual([50, 50]);
    expect(store.get(keys[1])!.classId).toBe(1);
    store.undo();
    expect(store.size).toBe(4);
  });

  it('tells the user when the line cuts nothing', () => {
    const { c, store, notify } = ctx();
    const t = new SplitTool();
    t.activate(c);
    expect(
      t.splitWith([
        [500, 500],
        [600, 600],
      ]),
    ).toEqual([]);
    expect(store.size).toBe(4);
    expect(notify).toHaveBeenCalledWith(expect.any(String), 'warn');
  });
});

describe('DrawPolygonTool', () => {
  it('commits a drawn outline as a new cell of the active class', () => {
    const { c, store } = ctx(3);
    const t = new DrawPolygonTool();
    t.activate(c);
    const key = t.commit(sq(200, 200, 30))!;
    expect(store.get(key)!.classId).toBe(3);
    expect(store.history.state().undoLabel).toBe('draw cell');
  });

  it('drives the machine: clicks then Enter add a cell', () => {
    const { c, store } = ctx(1);
    const t = new DrawPolygonTool();
    t.activate(c);
    let time = 0;
    for (const [x, y] of [
      [300, 300],
      [340, 300],
      [340, 340],
    ] as Point[]) {
      const p = { pt: [x, y] as Point, res: 1, time: (time += 1000) };
      t.machine.down(p);
      t.machine.up(p);
    }
    expect(t.onKey({ key: 'Enter' } as KeyboardEvent)).toBe(true);
    expect(store.size).toBe(5);
  });

  it('rejects a degenerate outline with a message', () => {
    const { c, store, notify } = ctx();
    const t = new DrawPolygonTool();
    t.activate(c);
    expect(
      t.commit([
        [0, 0],
        [1, 0],
        [2, 0],
      ]),
    ).toBeNull();
    expect(store.size).toBe(4);
    expect(notify).toHaveBeenCalled();
  });
});

describe('finalizeDrawnRing', () => {
  it('clamps to the image, simplifies freehand input and repairs self-crossings', () => {
    const dense: Point[] = Array.from({ length: 300 }, (_, i) => {
      const a = (i / 300) * Math.PI * 2;
      return [10 + 30 * Math.cos(a), 50 + 30 * Math.sin(a)];
    });
    const r = finalizeDrawnRing(dense, { res: 1, width: 1024, height: 768, freehand: true });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.ring.length).toBeLessThan(80);
    expect(Math.min(...r.ring.map((p) => p[0]))).toBeGreaterThanOrEqual(0);
    const bowtie = finalizeDrawnRing(
      [
        [0, 0],
        [40, 40],
        [40, 0],
        [0, 10],
      ],
      { res: 1, width: 100, height: 100, freehand: false },
    );
    expect(bowtie.ok).toBe(true);
  });
});
