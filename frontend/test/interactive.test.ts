import { describe, expect, it, vi } from 'vitest';
import { ApiError } from '../src/core/api';
import { ClassPalette } from '../src/core/classes';
import { apiSegmenter, boxCellsToAdd, iou, resultClass, serverRing, type BoxOutcome, type ClickOutcome, type Segmenter } from '../src/core/interactive';
import { ProposalStore } from '../src/core/proposals';
import { Selection } from '../src/core/selection';
import { AnnotationStore } from '../src/core/store';
import type { Point, Ring } from '../src/core/types';
import { BoxTool } from '../src/tools/boxTool';
import { SegmentTool } from '../src/tools/segmentTool';
import type { ToolContext } from '../src/tools/tool';

const sq = (x: number, y: number, s: number): Ring => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

const palette = new ClassPalette([
  { id: 11, name: 'thyroid cell', color: '#7c3aed', model_label: 1, order: 1 },
  { id: 12, name: 'erythrocyte', color: '#ef4444', model_label: 2, order: 2 },
]);

function outcome(polygon: Ring | null, extra: Partial<ClickOutcome> = {}): ClickOutcome {
  return { polygon, classId: null, label: null, source: 'model', modelVersion: 3, reason: null, ...extra };
}

function setup(segmenter: Partial<Segmenter>) {
  const store = new AnnotationStore();
  store.load({ revision: 1, cells: [{ id: 1, class_id: 11, polygon: sq(100, 100, 40) }] });
  const notify = vi.fn();
  const selection = new Selection();
  const c: ToolContext = {
    store,
    selection,
    proposals: new ProposalStore(),
    palette,
    segmenter: segmenter as Segmenter,
    activeClassId: () => 11,
    snapEnabled: () => false,
    notify,
    setTool: vi.fn(),
  };
  return { c, store, selection, notify };
}

describe('interactive helpers', () => {
  it('the class: the server names it by id or model label, else the active class', () => {
    expect(resultClass(palette, { classId: 12, label: null }, 11)).toBe(12);
    expect(resultClass(palette, { classId: 99, label: 2 }, 11)).toBe(12);
    expect(resultClass(palette, { classId: null, label: null }, 11)).toBe(11);
  });

  it('a server contour is normalised; a degenerate one is refused', () => {
    expect(serverRing([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]])).toHaveLength(4);
    expect(serverRing([[0, 0], [10, 0]])).toBeNull();
    expect(serverRing(null)).toBeNull();
  });

  it('IoU of squares', () => {
    expect(iou(sq(0, 0, 10), sq(0, 0, 10))).toBeCloseTo(1);
    expect(iou(sq(0, 0, 10), sq(5, 0, 10))).toBeCloseTo(50 / 150);
    expect(iou(sq(0, 0, 10), sq(50, 0, 10))).toBe(0);
  });

  it('box cells: a cell already drawn is not added twice', () => {
    const found = [
      { polygon: sq(101, 101, 40), classId: null, label: 1 },
      { polygon: sq(200, 100, 30), classId: null, label: 2 },
      { polygon: [[0, 0], [1, 0]] as Ring, classId: null, label: 1 },
    ];
    const r = boxCellsToAdd([{ polygon: sq(100, 100, 40) }], found);
    expect(r.add.map((c) => c.label)).toEqual([2]);
    expect(r.duplicates).toBe(1);
    expect(r.invalid).toBe(1);
  });
});

describe('click-to-segment tool', () => {
  it('a click on empty image adds the contour as a new cell (one undo step)', async () => {
    const click = vi.fn(async () => outcome(sq(300, 300, 20), { label: 2 }));
    const { c, store, selection } = setup({ click });
    const t = new SegmentTool();
    t.activate(c);
    await t.click([310, 310], 'new', null);
    expect(click).toHaveBeenCalledWith([[310, 310]], []);
    expect(store.size).toBe(2);
    const key = selection.cells()[0];
    expect(store.get(key)!.classId).toBe(12); // the model said erythrocyte
    expect(store.history.state().undoLabel).toBe('segment cell');
    store.undo();
    expect(store.size).toBe(1);
  });

  it('shift / alt clicks refine the same cell with every point of the prompt; Esc ends it', async () => {
    const answers = [sq(300, 300, 20), sq(300, 300, 30), sq(300, 300, 25)];
    const click = vi.fn(async () => outcome(answers.shift()!));
    const { c, store, selection } = setup({ click });
    const t = new SegmentTool();
    t.activate(c);
    await t.click([310, 310], 'new', null);
    const key = selection.cells()[0];
    await t.click([325, 325], 'positive', key);
    expect(click).toHaveBeenLastCalledWith([[310, 310], [325, 325]], []);
    await t.click([328, 328], 'negative', key);
    expect(click).toHaveBeenLastCalledWith([[310, 310], [325, 325]], [[328, 328]]);
    expect(store.size).toBe(2);
    expect(store.get(key)!.polygon).toEqual(sq(300, 300, 25));
    // each answer is its own undo step
    store.undo();
    expect(store.get(key)!.polygon).toEqual(sq(300, 300, 30));
    expect(t.onKey({ key: 'Escape' } as KeyboardEvent)).toBe(true);
    expect(t.onKey({ key: 'Escape' } as KeyboardEvent)).toBe(false);
  });

  it('a click inside the selected cell redoes its contour; inside another cell it only selects', async () => {
    const click = vi.fn(async () => outcome(sq(95, 95, 50)));
    const { c, store, selection, notify } = setup({ click });
    const t = new SegmentTool();
    t.activate(c);
    await t.click([120, 120], 'new', 's1');
    expect(click).not.toHaveBeenCalled();
    expect(selection.cells()).toEqual(['s1']);
    expect(notify).toHaveBeenLastCalledWith(expect.stringContaining('click inside it again'), 'info');
    await t.click([120, 120], 'new', 's1');
    expect(store.size).toBe(1);
    expect(store.get('s1')!.polygon).toEqual(sq(95, 95, 50));
    expect(store.get('s1')!.classId).toBe(11);
  });

  it("no contour: the server's reason is shown and nothing changes; an error is a notification", async () => {
    const click = vi
      .fn<Segmenter['click']>()
      .mockResolvedValueOnce(outcome(null, { reason: 'no cell under the click' }))
      .mockRejectedValueOnce(new ApiError(400, 'Invalid input.', { positive: ['point 0 is outside the image'] }));
    const { c, store, notify } = setup({ click });
    const t = new SegmentTool();
    t.activate(c);
    await t.click([5, 5], 'new', null);
    expect(notify).toHaveBeenLastCalledWith('No contour here: no cell under the click', 'warn');
    await t.click([5000, 5], 'new', null);
    expect(notify).toHaveBeenLastCalledWith('Could not segment: Invalid input. (positive: point 0 is outside the image)', 'error');
    expect(store.size).toBe(1);
    expect(store.version).toBe(0);
  });

  it('clicks made while a request runs are sent together afterwards; only the last answer is applied', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const click = vi.fn(async (pos: Point[]) => {
      if (pos.length === 1) await gate;
      return outcome(sq(300, 300, 10 + 10 * pos.length));
    });
    const { c, store, selection } = setup({ click });
    const t = new SegmentTool();
    t.activate(c);
    const first = t.click([305, 305], 'new', null);
    expect(t.busy).toBe(true);
    const second = t.click([320, 320], 'positive', null);
    release();
    await Promise.all([first, second]);
    expect(click).toHaveBeenCalledTimes(2);
    expect(store.size).toBe(2);
    expect(store.get(selection.cells()[0])!.polygon).toEqual(sq(300, 300, 30));
    expect(store.history.state().canUndo).toBe(true);
    store.undo();
    expect(store.size).toBe(1); // the stale first answer never became a step of its own
  });

  it('a slow answer is announced once it takes long; a quick one is not', async () => {
    vi.useFakeTimers();
    try {
      let release!: () => void;
      const click = vi.fn(() => new Promise<ClickOutcome>((r) => (release = () => r(outcome(sq(300, 300, 20))))));
      const { c, notify } = setup({ click });
      const t = new SegmentTool();
      t.activate(c);
      const done = t.click([310, 310], 'new', null);
      await vi.advanceTimersByTimeAsync(500);
      expect(notify).not.toHaveBeenCalled();
      await vi.advanceTimersByTimeAsync(1000);
      expect(notify).toHaveBeenCalledWith(expect.stringContaining('Still outlining'), 'info');
      release();
      await done;
      expect(t.busy).toBe(false);
    } finally {
      vi.useRealTimers();
    }
  });

  it('an alt-click without a prompt asks for a click inside a cell first', async () => {
    const click = vi.fn();
    const { c, notify } = setup({ click });
    const t = new SegmentTool();
    t.activate(c);
    await t.click([5, 5], 'negative', null);
    expect(click).not.toHaveBeenCalled();
    expect(notify).toHaveBeenLastCalledWith(expect.stringContaining('first click inside a cell'), 'info');
  });
});

describe('box tool', () => {
  const answer = (cells: BoxOutcome['cells']): BoxOutcome => ({ cells, source: 'model', modelVersion: 3 });

  it('adds the new cells of the box in one undo step and selects them', async () => {
    const box = vi.fn(async () =>
      answer([
        { polygon: sq(100, 100, 40), classId: null, label: 1 },
        { polygon: sq(200, 200, 20), classId: null, label: 1 },
        { polygon: sq(230, 200, 20), classId: null, label: 2 },
      ]),
    );
    const { c, store, selection, notify } = setup({ box });
    const t = new BoxTool();
    t.activate(c);
    const keys = await t.ask([90, 90, 260, 230]);
    expect(box).toHaveBeenCalledWith([90, 90, 260, 230]);
    expect(keys).toHaveLength(2);
    expect(selection.cells()).toEqual(keys);
    expect(keys.map((k) => store.get(k)!.classId)).toEqual([11, 12]);
    expect(notify).toHaveBeenLastCalledWith('Added 2 cells from the box (1 already drawn)', 'success');
    store.undo();
    expect(store.size).toBe(1);
  });

  it('a tiny box is a slip; an empty answer and an error are said', async () => {
    const box = vi.fn<Segmenter['box']>().mockResolvedValueOnce(answer([])).mockRejectedValueOnce(new ApiError(503, 'The model is busy'));
    const { c, store, notify } = setup({ box });
    const t = new BoxTool();
    t.activate(c);
    expect(await t.ask([10, 10, 12, 30])).toEqual([]);
    expect(box).not.toHaveBeenCalled();
    await t.ask([10, 10, 60, 60]);
    expect(notify).toHaveBeenLastCalledWith(expect.stringContaining('No cell found in the box'), 'info');
    await t.ask([10, 10, 60, 60]);
    expect(notify).toHaveBeenLastCalledWith('Could not segment the box: The model is busy', 'error');
    expect(store.version).toBe(0);
  });
});

describe('the API segmenter', () => {
  it('sends the prompt in image pixels and maps the answers to the client shapes', async () => {
    const api = {
      segmentClick: vi.fn(async () => ({ polygon: [[0, 0], [10, 0], [10, 10], [0, 0]], class_id: 11, label: 1, score: 0.8, source: 'baseline' as const, model_version: null, reason: null, timings: { total_ms: 5 } })),
      segmentBox: vi.fn(async () => ({ cells: [{ polygon: [[0, 0], [10, 0], [10, 10]], class_id: null, label: 2, score: 0.7 }], source: 'model' as const, model_version: 4, timings: { total_ms: 9 } })),
    };
    const s = apiSegmenter(api, 7);
    const r = await s.click([[1.234, 2.345]], [[3, 4]]);
    expect(api.segmentClick).toHaveBeenCalledWith(7, { positive: [[1.23, 2.35]], negative: [[3, 4]] });
    expect(r).toEqual({ polygon: [[0, 0], [10, 0], [10, 10]], classId: 11, label: 1, source: 'baseline', modelVersion: null, reason: null });
    const b = await s.box([0.111, 0, 50, 40]);
    expect(api.segmentBox).toHaveBeenCalledWith(7, { box: [0.11, 0, 50, 40] });
    expect(b.cells[0]).toEqual({ polygon: [[0, 0], [10, 0], [10, 10]], classId: null, label: 2 });
    expect(b.modelVersion).toBe(4);
  });
});
