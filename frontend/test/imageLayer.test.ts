import { describe, expect, it } from 'vitest';
import { Projection } from 'ol/proj';
import Zoomify from 'ol/source/Zoomify';
import { imageLayerCreate, maxResolutionFor, tileUrl, type TilesInfo } from '../src/view/imageLayer';

// A 1300 x 900 image: DeepZoom levels 0..11, the whole image in one 256 px tile at level 8.
const tiles: TilesInfo = { url: '/api/v1/images/7/tiles/{level}/{col}_{row}.jpeg', tile_size: 256, levels: 12, min_level: 8, format: 'jpeg' };

describe('tiled image layer', () => {
  it('maps a Zoomify tile coordinate onto the DeepZoom level, column and row', () => {
    expect(tileUrl(tiles, [0, 0, 0])).toBe('/api/v1/images/7/tiles/8/0_0.jpeg');
    expect(tileUrl(tiles, [3, 5, 3])).toBe('/api/v1/images/7/tiles/11/5_3.jpeg');
  });

  it("builds a tile grid whose levels and tile counts are the server's", () => {
    // the source only touches the browser's Image when it loads a tile; the tests run in node
    (globalThis as { Image?: unknown }).Image ??= class {
      addEventListener(): void {}
      removeEventListener(): void {}
    };
    const projection = new Projection({ code: 'image-pixels', units: 'pixels', extent: [0, 0, 1300, 900] });
    const layer = imageLayerCreate({ width: 1300, height: 900, projection, imageUrl: '', tiles, onState: () => undefined });
    const source = layer.getSource() as Zoomify;
    expect(source).toBeInstanceOf(Zoomify);
    const grid = source.getTileGrid()!;
    // one Zoomify tier per DeepZoom level from min_level to the full size
    expect(grid.getResolutions()).toEqual([8, 4, 2, 1]);
    // full resolution: 6 x 4 tiles (DeepZoom: ceil(1300/256) x ceil(900/256)), origin top-left
    const range = grid.getFullTileRange(3)!;
    expect([range.getWidth(), range.getHeight()]).toEqual([6, 4]);
    expect(grid.getOrigin(3)).toEqual([0, 900]);
    // the tile at the top-left corner of the image (map y up) is column 0, row 0
    const coord = grid.getTileCoordForCoordAndZ([10, 890], 3);
    expect(tileUrl(tiles, coord)).toBe('/api/v1/images/7/tiles/11/0_0.jpeg');
    const bottomRight = grid.getTileCoordForCoordAndZ([1299, 1], 3);
    expect(tileUrl(tiles, bottomRight)).toBe('/api/v1/images/7/tiles/11/5_3.jpeg');
  });

  it('lets a whole slide be zoomed out to fit the screen', () => {
    expect(maxResolutionFor(1024, 768)).toBe(16);
    expect(maxResolutionFor(40000, 30000)).toBeGreaterThan(40000 / 1000);
  });
});
