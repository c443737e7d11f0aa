/**
 * The ONE place where API pixel coordinates (origin top-left, y down) meet
 * OpenLayers map coordinates of the pixel projection (extent [0,0,w,h], y up).
 * The conversion is its own inverse: y' = h - y.
 */
import type { BBox } from '../core/geometry';
import type { Point, Ring } from '../core/types';

/** API pixel <-> map coordinate (self-inverse). */
export function flipY(p: readonly number[], height: number): [number, number] {
  return [p[0], height - p[1]];
}

export class PixelFrame {
  constructor(
    readonly width: number,
    readonly height: number,
  ) {}

  /** OpenLayers extent of the image. */
  get extent(): [number, number, number, number] {
    return [0, 0, this.width, this.height];
  }

  toMap(p: readonly number[]): [number, number] {
    return flipY(p, this.height);
  }

  toApi(c: readonly number[]): Point {
    return flipY(c, this.height);
  }

  /** Open API ring -> closed OL linear ring. */
  ringToMap(ring: readonly Point[]): [number, number][] {
    const out = ring.map((p) => flipY(p, this.height));
    if (out.length) out.push([out[0][0], out[0][1]]);
    return out;
  }

  /** Closed (or open) OL linear ring -> open API ring. */
  ringToApi(coords: readonly number[][]): Ring {
    const out = coords.map((c) => flipY(c, this.height));
    while (out.length > 1 && out[0][0] === out[out.length - 1][0] && out[0][1] === out[out.length - 1][1]) out.pop();
    return out;
  }

  /** OL extent [minX, minY, maxX, maxY] (y up) -> API bbox (y down). */
  extentToApi(e: readonly number[]): BBox {
    return [e[0], this.height - e[3], e[2], this.height - e[1]];
  }
}
