import { describe, expect, it } from 'vitest';
import {
  area,
  bbox,
  countCrossings,
  isSimple,
  isValidRing,
  makeValid,
  mergePolygons,
  normalizeRing,
  pointInRing,
  simplifyRing,
  splitPolygon,
} from '../src/core/geometry';
import type { Point } from '../src/core/types';

const square = (x: number, y: number, s: number): Point[] => [
  [x, y],
  [x + s, y],
  [x + s, y + s],
  [x, y + s],
];

function circle(cx: number, cy: number, r: number, n = 32): Point[] {
  return Array.from({ length: n }, (_, i) => [cx + r * Math.cos((2 * Math.PI * i) / n), cy + r * Math.sin((2 * Math.PI * i) / n)] as Point);
}

describe('basic geometry', () => {
  it('normalizes rings: drops the closing point, duplicates and NaN, rounds', () => {
    expect(
      normalizeRing([
        [0, 0],
        [0, 0],
        [1.23456, 0],
        [NaN, 3],
        [1, 1],
        [0, 0],
      ]),
    ).toEqual([
      [0, 0],
      [1.23, 0],
      [1, 1],
    ]);
  });

  it('computes area, bbox and point-in-polygon', () => {
    expect(area(square(0, 0, 10))).toBe(100);
    expect(bbox(square(5, 6, 10))).toEqual([5, 6, 15, 16]);
    expect(pointInRing([5, 5], square(0, 0, 10))).toBe(true);
    expect(pointInRing([15, 5], square(0, 0, 10))).toBe(false);
  });

  it('detects self-intersections', () => {
    expect(isSimple(square(0, 0, 10))).toBe(true);
    const bowtie: Point[] = [
      [0, 0],
      [10, 10],
      [10, 0],
      [0, 10],
    ];
    expect(isSimple(bowtie)).toBe(false);
    expect(isValidRing(bowtie)).toBe(false);
    expect(isValidRing([[0, 0], [1, 0]] as Point[])).toBe(false);
  });

  it('makeValid keeps the largest lobe of a self-crossing lasso', () => {
    const lasso: Point[] = [
      [0, 0],
      [20, 20],
      [20, 0],
      [0, 4],
    ];
    const v = makeValid(lasso)!;
    expect(v).not.toBeNull();
    expect(isSimple(v)).toBe(true);
    expect(area(v)).toBeGreaterThan(20);
    expect(makeValid(square(0, 0, 5))).toEqual(square(0, 0, 5));
    expect(makeValid([[0, 0], [1, 1]] as Point[])).toBeNull();
  });

  it('simplifies a dense freehand ring but keeps its shape', () => {
    const dense = circle(50, 50, 20, 400);
    const s = simplifyRing(dense, 0.3);
    expect(s.length).toBeLessThan(80);
    expect(s.length).toBeGreaterThan(8);
    expect(Math.abs(area(s) - area(dense)) / area(dense)).toBeLessThan(0.02);
  });

  it('counts crossings of a line with a ring', () => {
    expect(countCrossings([[-5, 5], [15, 5]], square(0, 0, 10))).toBe(2);
    expect(countCrossings([[2, 2], [3, 3]], square(0, 0, 10))).toBe(0);
  });
});

describe('splitPolygon', () => {
  it('splits a square by a straight line across it into two halves', () => {
    const pieces = splitPolygon(square(0, 0, 10), [
      [5, -3],
      [5, 13],
    ])!;
    expect(pieces).toHaveLength(2);
    expect(area(pieces[0])).toBeCloseTo(50, 6);
    expect(area(pieces[1])).toBeCloseTo(50, 6);
    expect(pieces.every(isSimple)).toBe(true);
    const total = pieces.reduce((s, p) => s + area(p), 0);
    expect(total).toBeCloseTo(100, 6);
  });

  it('extends a stroke that stops short of the contour', () => {
    const pieces = splitPolygon(square(0, 0, 10), [
      [3, 1],
      [3, 9],
    ])!;
    expect(pieces).toHaveLength(2);
    expect(area(pieces[0])).toBeCloseTo(70, 6);
    expect(area(pieces[1])).toBeCloseTo(30, 6);
  });

  it('splits along a bent polyline', () => {
    const pieces = splitPolygon(square(0, 0, 10), [
      [-2, 2],
      [5, 5],
      [12, 2],
    ])!;
    expect(pieces).toHaveLength(2);
    const total = pieces.reduce((s, p) => s + area(p), 0);
    expect(total).toBeCloseTo(100, 6);
    // the bottom piece (y < line) is the smaller one
    expect(area(pieces[1])).toBeLessThan(area(pieces[0]));
  });

  it('splits two overlapping nuclei outlined as one cell (concave, diagonal cut)', () => {
    const blob = mergePolygons(circle(20, 20, 10), circle(34, 20, 10))!;
    const pieces = splitPolygon(blob, [
      [27, 5],
      [27, 35],
    ])!;
    expect(pieces).toHaveLength(2);
    expect(Math.abs(area(pieces[0]) - area(pieces[1])) / area(blob)).toBeLessThan(0.02);
  });

  it('returns null when the line misses or only grazes the cell', () => {
    expect(
      splitPolygon(square(0, 0, 10), [
        [20, -5],
        [20, 15],
      ]),
    ).toBeNull();
    expect(splitPolygon(square(0, 0, 10), [[5, 5]])).toBeNull();
  });

  it('drops slivers below the minimum area', () => {
    expect(
      splitPolygon(
        square(0, 0, 10),
        [
          [0.1, -5],
          [0.1, 15],
        ],
        4,
      ),
    ).toBeNull();
  });

  it('cuts a U-shape into three pieces with a line through both arms', () => {
    const u: Point[] = [
      [0, 0],
      [30, 0],
      [30, 30],
      [20, 30],
      [20, 10],
      [10, 10],
      [10, 30],
      [0, 30],
    ];
    const pieces = splitPolygon(u, [
      [-5, 20],
      [35, 20],
    ])!;
    expect(pieces).toHaveLength(3);
    expect(pieces.reduce((s, p) => s + area(p), 0)).toBeCloseTo(area(u), 6);
  });
});

describe('mergePolygons', () => {
  it('unions two overlapping cells into one polygon', () => {
    const m = mergePolygons(square(0, 0, 10), square(5, 0, 10))!;
    expect(area(m)).toBeCloseTo(150, 6);
    expect(isSimple(m)).toBe(true);
  });

  it('merges cells sharing an edge', () => {
    const m = mergePolygons(square(0, 0, 10), square(10, 0, 10))!;
    expect(area(m)).toBeCloseTo(200, 6);
  });

  it('refuses disjoint cells', () => {
    expect(mergePolygons(square(0, 0, 10), square(50, 50, 10))).toBeNull();
  });

  it('drops a hole formed by the union', () => {
    const c: Point[] = [
      [0, 0],
      [30, 0],
      [30, 30],
      [20, 30],
      [20, 10],
      [10, 10],
      [10, 30],
      [0, 30],
    ];
    const lid = square(0, 25, 30).map(([x, y]) => [x, y - 5 + 5] as Point);
    const m = mergePolygons(c, [
      [0, 25],
      [30, 25],
      [30, 35],
      [0, 35],
    ])!;
    expect(m).not.toBeNull();
    expect(isSimple(m)).toBe(true);
    expect(lid.length).toBe(4);
    expect(area(m)).toBeCloseTo(30 * 35, 6); // outer ring only
  });
});
