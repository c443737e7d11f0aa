/**
 * The editor's image layer: one static PNG for an ordinary image, a tiled source over the
 * server's DeepZoom pyramid for a large image or slide (only the tiles in view are fetched).
 *
 * Both cover the map extent [0, 0, width, height] of the pixel projection (y up, see
 * coords.ts), so cells stay in full-resolution image pixels whatever the source. The tiled
 * source is OpenLayers' Zoomify: its tile grid (origin top-left, resolutions halving from
 * the one level that holds the whole image in one tile down to full resolution, edge tiles
 * cut to the image and drawn unstretched) is the DeepZoom layout of cytoseg/tiles.py, shifted
 * by that level (`min_level`).
 */
import ImageLayer from 'ol/layer/Image';
import TileLayer from 'ol/layer/Tile';
import type { Projection } from 'ol/proj';
import ImageStatic from 'ol/source/ImageStatic';
import Zoomify from 'ol/source/Zoomify';
import type { components } from '../core/schema.gen';

export type TilesInfo = components['schemas']['TilesOut'];
export type ImageLoadState = 'loading' | 'loaded' | 'error';
export type BaseImageLayer = ImageLayer<ImageStatic> | TileLayer<Zoomify>;

/** The tile URL of a Zoomify tile coordinate [z, x, y] (z 0 = the level `min_level`). */
export function tileUrl(tiles: TilesInfo, coord: readonly number[]): string {
  return tiles.url
    .replace('{level}', String(coord[0] + tiles.min_level))
    .replace('{col}', String(coord[1]))
    .replace('{row}', String(coord[2]));
}

/** The coarsest resolution worth allowing: the whole image a few times smaller than the screen. */
export function maxResolutionFor(width: number, height: number): number {
  return Math.max(16, (2 * Math.max(width, height)) / 256);
}

export function imageLayerCreate(opts: {
  width: number;
  height: number;
  projection: Projection;
  imageUrl: string;
  tiles?: TilesInfo | null;
  onState: (state: ImageLoadState) => void;
}): BaseImageLayer {
  const extent = [0, 0, opts.width, opts.height];
  if (!opts.tiles) {
    const source = new ImageStatic({ url: opts.imageUrl, imageExtent: extent, projection: opts.projection, interpolate: true });
    source.on('imageloadend', () => opts.onState('loaded'));
    source.on('imageloaderror', () => opts.onState('error'));
    return new ImageLayer({ source, className: 'ol-layer-image' });
  }
  const tiles = opts.tiles;
  // Zoomify fetches the centre tile of the full resolution with its own URL template once (to
  // detect "retina" tiles): the template names that level, and {TileGroup} (ignored by the
  // server) stops Zoomify appending its own path, so that probe is a real tile.
  const probe = tiles.url.replace('{level}', String(tiles.levels - 1)).replace('{col}', '{x}').replace('{row}', '{y}');
  const source = new Zoomify({
    url: `${probe}?group={TileGroup}`,
    size: [opts.width, opts.height],
    tileSize: tiles.tile_size,
    extent,
    projection: opts.projection,
    interpolate: true,
    transition: 0,
  });
  // Zoomify numbers its tiers from 0; the server's levels from the one-pixel level. The key
  // drops any tile made with Zoomify's own URL function.
  source.setTileUrlFunction((coord) => tileUrl(tiles, coord), tiles.url);
  // Loaded once any tile shows; an error only while none has (one missing tile is not a broken image).
  let loaded = false;
  source.on('tileloadend', () => {
    if (!loaded) opts.onState('loaded');
    loaded = true;
  });
  source.on('tileloaderror', () => {
    if (!loaded) opts.onState('error');
  });
  // preload: the coarser levels under the one in view, so a zoom shows a blurred image, not a hole
  return new TileLayer({ source, className: 'ol-layer-image', preload: 2 });
}
