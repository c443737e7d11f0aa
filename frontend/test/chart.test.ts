import { describe, expect, it } from 'vitest';
import { decimalsOf, extent, formatTick, linearScale, lineChartScales, linePath, niceStep, niceTicks, numericKeys, seriesFromPoints, thin } from '../src/core/chart';

describe('chart scaling', () => {
  it('picks nice steps', () => {
    expect(niceStep(10, 5)).toBe(2);
    expect(niceStep(1, 4)).toBe(0.25);
    expect(niceStep(0.9, 5)).toBe(0.2);
    expect(niceStep(700, 6)).toBe(200);
    expect(niceStep(0, 5)).toBe(1);
  });

  it('extends ticks to whole steps around the data', () => {
    expect(niceTicks(0.12, 0.93, 4)).toEqual({ min: 0, max: 1, step: 0.25, ticks: [0, 0.25, 0.5, 0.75, 1] });
    expect(niceTicks(3, 3).ticks.length).toBeGreaterThan(1); // flat data still gets an axis
    expect(niceTicks(0, 0)).toMatchObject({ min: -1, max: 1 });
    expect(niceTicks(10, 1).min).toBe(0); // swapped bounds
    const t = niceTicks(0.1, 0.3, 5);
    expect(t.ticks).toEqual([0.1, 0.15, 0.2, 0.25, 0.3]);
  });

  it('maps domain to range and back', () => {
    const s = linearScale([0, 10], [100, 0]);
    expect(s(0)).toBe(100);
    expect(s(2.5)).toBe(75);
    expect(s.invert(75)).toBe(2.5);
    expect(linearScale([5, 5], [0, 100])(5)).toBe(50);
  });

  it('formats ticks with the decimals of the step', () => {
    expect(decimalsOf(0.25)).toBe(2);
    expect(decimalsOf(0.5)).toBe(1);
    expect(decimalsOf(20)).toBe(0);
    expect(formatTick(0.5, 0.25)).toBe('0.50');
    expect(formatTick(20, 5)).toBe('20');
    expect(formatTick(-0.0001, 0.5)).toBe('0.0');
    expect(formatTick(25000, 5000)).toBe('25k');
  });

  it('draws paths with gaps for missing values', () => {
    const id = (v: number) => v;
    expect(linePath([[0, 1], [1, 2], [2, null], [3, 4], [4, Number.NaN], [5, 6]], id, id)).toBe('M0.0,1.0L1.0,2.0M3.0,4.0M5.0,6.0');
    expect(linePath([], id, id)).toBe('');
  });

  it('computes extents, thins long series, builds series from epoch points', () => {
    expect(extent([3, null, -1, undefined, Number.NaN, 8])).toEqual([-1, 8]);
    expect(extent([null])).toBeNull();
    const long = Array.from({ length: 1000 }, (_, i) => i);
    const t = thin(long, 100);
    expect(t.length).toBeLessThanOrEqual(101);
    expect(t[t.length - 1]).toBe(999);
    const pts = [
      { epoch: 0, epochs: 3, train_loss: 1.2, val_loss: 1.4, lr: 0.1 },
      { epoch: 1, epochs: 3, train_loss: 0.9, val_loss: null, lr: 0.05 },
    ];
    expect(numericKeys(pts)).toEqual(['train_loss', 'val_loss', 'lr']);
    const [train, val] = seriesFromPoints(pts, ['train_loss', 'val_loss']);
    expect(train.points).toEqual([
      [1, 1.2],
      [2, 0.9],
    ]);
    expect(val.points[1]).toEqual([2, null]);
  });

  it('lays out a line chart: integer epoch ticks, y axis covering the data', () => {
    const layout = { width: 500, height: 200, margin: { top: 10, right: 10, bottom: 30, left: 50 } };
    const series = [{ name: 'loss', points: [[1, 0.9], [2, 0.5], [3, 0.42]] as [number, number][] }];
    const { sx, sy, xTicks, yTicks, empty } = lineChartScales(series, layout);
    expect(empty).toBe(false);
    expect(xTicks.ticks.every((t) => Number.isInteger(t))).toBe(true);
    expect(yTicks.min).toBeLessThanOrEqual(0.42);
    expect(yTicks.max).toBeGreaterThanOrEqual(0.9);
    expect(sx(xTicks.min)).toBe(50);
    expect(sx(xTicks.max)).toBe(490);
    expect(sy(yTicks.min)).toBe(170);
    expect(sy(yTicks.max)).toBe(10);
    expect(lineChartScales([], layout).empty).toBe(true);
    expect(lineChartScales(series, layout, { yMin: 0 }).yTicks.min).toBe(0);
    // a single zero (a learning rate at warm-up) keeps a non-negative axis
    const flat = lineChartScales([{ name: 'lr', points: [[1, 0]] }], layout);
    expect(flat.yTicks.min).toBe(0);
    expect(flat.yTicks.max).toBeGreaterThan(0);
  });
});
