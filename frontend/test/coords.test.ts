import { describe, expect, it } from 'vitest';
import { PixelFrame, flipY } from '../src/view/coords';

describe('coordinate adapter (API pixels <-> OpenLayers map)', () => {
  const f = new PixelFrame(1024, 768);

  it('flips y around the image height', () => {
    expect(flipY([0, 0], 768)).toEqual([0, 768]); // top-left corner -> top of the map
    expect(flipY([1024, 768], 768)).toEqual([1024, 0]); // bottom-right -> map origin row
    expect(flipY([10.5, 700.25], 768)).toEqual([10.5, 67.75]);
  });

  it('is its own inverse', () => {
    for (const p of [
      [0, 0],
      [512, 384],
      [3.3, 767.9],
      [1024, 0],
    ]) {
      expect(f.toApi(f.toMap(p))).toEqual(p);
      expect(f.toMap(f.toApi(p))).toEqual(p);
    }
  });

  it('closes rings for OL and opens them back for the API', () => {
    const ring: [number, number][] = [
      [10, 10],
      [20, 10],
      [20, 30],
    ];
    const map = f.ringToMap(ring);
    expect(map).toEqual([
      [10, 758],
      [20, 758],
      [20, 738],
      [10, 758],
    ]);
    expect(f.ringToApi(map)).toEqual(ring);
  });

  it('converts an OL extent (y up) to an API bbox (y down)', () => {
    expect(f.extentToApi([0, 0, 1024, 768])).toEqual([0, 0, 1024, 768]);
    expect(f.extentToApi([100, 600, 300, 700])).toEqual([100, 68, 300, 168]);
  });

  it('exposes the image extent', () => {
    expect(f.extent).toEqual([0, 0, 1024, 768]);
  });
});
