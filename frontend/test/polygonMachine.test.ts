import { describe, expect, it } from 'vitest';
import { PolygonDrawMachine } from '../src/tools/polygonMachine';
import type { Point, Ring } from '../src/core/types';

function machine() {
  const done: { ring: Ring; how: string }[] = [];
  let cancelled = 0;
  const m = new PolygonDrawMachine({ onFinish: (ring, how) => done.push({ ring, how }), onCancel: () => cancelled++ });
  let t = 0;
  const at = (x: number, y: number, res = 1) => ({ pt: [x, y] as Point, res, time: (t += 1000) });
  const click = (x: number, y: number, res = 1) => {
    const p = at(x, y, res);
    m.move(p);
    m.down(p);
    m.up(p);
  };
  return { m, done, cancelled: () => cancelled, click, at, setTime: (v: number) => (t = v) };
}

describe('PolygonDrawMachine', () => {
  it('places vertices by clicks and closes by clicking the first vertex', () => {
    const { m, done, click } = machine();
    click(0, 0);
    click(100, 0);
    click(100, 100);
    expect(m.mode).toBe('clicking');
    expect(m.points).toHaveLength(3);
    click(3, 2); // within 9 screen px of the first vertex
    expect(done).toEqual([
      {
        ring: [
          [0, 0],
          [100, 0],
          [100, 100],
        ],
        how: 'click-first',
      },
    ]);
    expect(m.mode).toBe('idle');
    expect(m.points).toHaveLength(0);
  });

  it('close tolerance is in screen pixels (zoom aware)', () => {
    const { m, done, click } = machine();
    click(0, 0, 0.25);
    click(50, 0, 0.25);
    click(50, 50, 0.25);
    click(3, 0, 0.25); // 3 image px = 12 screen px at 4x zoom: not a close
    expect(done).toHaveLength(0);
    expect(m.points).toHaveLength(4);
  });

  it('Enter closes, Backspace removes the last vertex, Escape cancels', () => {
    const { m, done, click, cancelled } = machine();
    click(0, 0);
    click(10, 0);
    click(10, 10);
    click(20, 20);
    expect(m.key('Backspace')).toBe(true);
    expect(m.points).toHaveLength(3);
    expect(m.key('Enter')).toBe(true);
    expect(done[0].how).toBe('enter');
    expect(done[0].ring).toHaveLength(3);
    click(0, 0);
    click(10, 0);
    expect(m.key('Escape')).toBe(true);
    expect(cancelled()).toBe(1);
    expect(m.isDrawing).toBe(false);
    expect(m.key('Escape')).toBe(false); // nothing to cancel: let the editor use it
  });

  it('a real double-click (same place, quick) closes without a duplicate vertex', () => {
    const { m, done, click, at } = machine();
    click(0, 0);
    click(10, 0);
    click(10, 10);
    // double-click at (0,10): two clicks 150 ms apart
    const p1 = at(0, 10);
    m.down(p1);
    m.up(p1);
    const p2 = { ...p1, time: p1.time + 150 };
    m.down(p2);
    m.up(p2);
    expect(done).toHaveLength(1);
    expect(done[0].how).toBe('dblclick');
    expect(done[0].ring).toEqual([
      [0, 0],
      [10, 0],
      [10, 10],
      [0, 10],
    ]);
  });

  it('two quick clicks at different places are two vertices, not a double-click', () => {
    const { m, done, at } = machine();
    const seq = [
      [0, 0],
      [50, 0],
      [50, 50],
      [0, 50],
    ];
    let t = 0;
    for (const [x, y] of seq) {
      const p = { ...at(x, y), time: (t += 100) };
      m.down(p);
      m.up(p);
    }
    expect(done).toHaveLength(0);
    expect(m.points).toHaveLength(4);
  });

  it('a drag that starts a polygon is a freehand lasso closed on release', () => {
    const { m, done, at } = machine();
    m.down(at(0, 0));
    m.move(at(1, 1)); // under the click tolerance: still a click
    expect(m.mode).toBe('idle');
    for (let i = 1; i <= 36; i++) {
      const a = (i / 36) * Math.PI * 2;
      m.move(at(20 - 20 * Math.cos(a), 20 * Math.sin(a)));
    }
    expect(m.mode).toBe('freehand');
    m.up(at(0.5, 0));
    expect(done).toHaveLength(1);
    expect(done[0].how).toBe('lasso');
    expect(done[0].ring.length).toBeGreaterThan(10);
  });

  it('freehand samples are spaced by at least 3 screen px', () => {
    const { m, at } = machine();
    m.down(at(0, 0));
    for (let x = 0; x <= 60; x += 0.5) m.move(at(x, 0));
    expect(m.points.length).toBeLessThanOrEqual(22);
    expect(m.points.length).toBeGreaterThanOrEqual(15);
  });

  it('a drag after clicked vertices appends a freehand stretch and clicking continues', () => {
    const { m, done, click, at } = machine();
    click(0, 0);
    click(100, 0);
    m.down(at(100, 10));
    for (let y = 10; y <= 100; y += 5) m.move(at(100, y));
    m.up(at(100, 100));
    expect(done).toHaveLength(0);
    expect(m.mode).toBe('clicking');
    click(0, 100);
    m.key('Enter');
    expect(done).toHaveLength(1);
    expect(done[0].ring.length).toBeGreaterThan(5);
  });

  it('finishing with fewer than 3 vertices cancels', () => {
    const { m, done, click, cancelled } = machine();
    click(0, 0);
    click(10, 0);
    m.key('Enter');
    expect(done).toHaveLength(0);
    expect(cancelled()).toBe(1);
  });

  it('previews the rubber band to the cursor', () => {
    const { m, click, at } = machine();
    click(0, 0);
    m.move(at(5, 5));
    expect(m.preview()).toEqual([
      [0, 0],
      [5, 5],
    ]);
    expect(m.nearFirst(at(1, 1))).toBe(false); // needs 3 vertices
  });
});
