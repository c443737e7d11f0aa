import { describe, expect, it } from 'vitest';
import { WHEEL_STEP, wheelResolutionFactor } from '../src/view/wheelZoom';

describe('gentle wheel zoom', () => {
  it('zooms by 1.2x per notch, in and out', () => {
    expect(wheelResolutionFactor(-100)).toBeCloseTo(1 / WHEEL_STEP);
    expect(wheelResolutionFactor(100)).toBeCloseTo(WHEEL_STEP);
    // lines (Firefox) and pages are scaled to a notch
    expect(wheelResolutionFactor(-3, 1)).toBeCloseTo(1 / WHEEL_STEP);
    expect(wheelResolutionFactor(1, 2)).toBeCloseTo(WHEEL_STEP);
  });

  it('five notches from 100% land between 200% and 300%', () => {
    let res = 1;
    for (let i = 0; i < 5; i++) res *= wheelResolutionFactor(-100);
    expect(100 / res).toBeGreaterThan(200);
    expect(100 / res).toBeLessThan(300);
  });

  it('a huge delta still counts as one notch; a trackpad zooms proportionally', () => {
    expect(wheelResolutionFactor(-600)).toBeCloseTo(1 / WHEEL_STEP);
    const small = wheelResolutionFactor(-4);
    expect(small).toBeLessThan(1);
    expect(small).toBeGreaterThan(0.99);
  });
});
