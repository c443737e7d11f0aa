/**
 * The OpenLayers view of the editor: image + proposals + cells, kept in sync
 * with the core stores by key (features are built once, in one batch, and then
 * patched by id on every store change — never rebuilt wholesale).
 *
 * Layers (bottom to top): image, proposals, cells, active (the selected
 * cells, in their own small source so that dragging a vertex only re-renders
 * that layer), sketch (tool previews).
 */
import Collection from 'ol/Collection';
import Feature, { type FeatureLike } from 'ol/Feature';
import { Fill, Stroke, Style, Text } from 'ol/style';
import OlMap from 'ol/Map';
import View from 'ol/View';
import { Polygon } from 'ol/geom';
import type { Pixel } from 'ol/pixel';
import { DoubleClickZoom, DragPan, defaults as defaultInteractions } from 'ol/interaction';
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import VectorLayer from 'ol/layer/Vector';
import VectorImageLayer from 'ol/layer/VectorImage';
import { Projection } from 'ol/proj';
import VectorSource from 'ol/source/Vector';
import { noModifierKeys, primaryAction } from 'ol/events/condition';
import type { ClassPalette } from '../core/classes';
import type { BBox } from '../core/geometry';
import type { ProposalStore } from '../core/proposals';
import { isProposalKey, proposalKey, type Selection } from '../core/selection';
import type { AnnotationStore, Cell, StoreChange } from '../core/store';
import type { Ring } from '../core/types';
import { PixelFrame } from './coords';
import { imageLayerCreate, maxResolutionFor, type BaseImageLayer, type TilesInfo } from './imageLayer';
import { StyleCache, type CellState } from './styles';
import { GentleWheelZoom } from './wheelZoom';

export type LayerName = 'image' | 'proposals' | 'cells';
export type CellFeature = Feature<Polygon>;

export interface EditorMapOptions {
  target: HTMLElement;
  width: number;
  height: number;
  imageUrl: string;
  /** A large image's tile pyramid: the image layer fetches tiles instead of `imageUrl`. */
  tiles?: TilesInfo | null;
  palette: ClassPalette;
  store: AnnotationStore;
  proposals: ProposalStore;
  selection: Selection;
  /**
   * How the (static) cells and proposals layers render: 'image' draws them into
   * one bitmap that is only blitted while panning or dragging a vertex (fast
   * with 1,000 cells even without a GPU); 'vector' replays every polygon per frame.
   */
  renderMode?: 'image' | 'vector';
  /**
   * Style of the cells instead of the class colours (the review and
   * adjudication screens colour by decision / by expert). `state` is 'selected'
   * for the cells of the selection.
   */
  cellStyle?: (key: string, classId: number | null, state: CellState) => Style | Style[];
  /** Which selected cells get vertex handles (default: all); see {@link EditorMap.syncEditable}. */
  canEdit?: (key: string) => boolean;
}

type BigLayer = VectorLayer<VectorSource<CellFeature>> | VectorImageLayer<VectorSource<CellFeature>>;

export class EditorMap {
  readonly map: OlMap;
  readonly view: View;
  readonly frame: PixelFrame;
  readonly projection: Projection;
  readonly styles: StyleCache;
  readonly imageLayer: BaseImageLayer;
  readonly cellSource = new VectorSource<CellFeature>({ wrapX: false });
  readonly activeSource = new VectorSource<CellFeature>({ wrapX: false });
  readonly proposalSource = new VectorSource<CellFeature>({ wrapX: false });
  readonly sketchSource = new VectorSource({ wrapX: false, useSpatialIndex: false });
  /** Regions of interest (issue #14): dashed outlines with their names, under the cells. */
  readonly regionSource = new VectorSource({ wrapX: false });
  readonly regionLayer: VectorLayer<VectorSource>;
  readonly cellLayer: BigLayer;
  readonly activeLayer: VectorLayer<VectorSource<CellFeature>>;
  readonly proposalLayer: BigLayer;
  readonly renderMode: 'image' | 'vector';
  readonly sketchLayer: VectorLayer<VectorSource>;
  /** Selected features (cells + proposals): the collection the Select interaction works on. */
  readonly selectedFeatures = new Collection<CellFeature>();
  /** Selected cells only: the collection the Modify interaction works on. */
  readonly editableFeatures = new Collection<CellFeature>();

  /** Tools turn this off so that a left-drag draws instead of panning. */
  leftDragPans = true;
  spaceDown = false;

  private readonly features = new Map<string, CellFeature>();
  private readonly store: AnnotationStore;
  private readonly proposals: ProposalStore;
  private readonly selection: Selection;
  private readonly palette: ClassPalette;
  private errorKeys = new Set<string>();
  private readonly offs: (() => void)[] = [];
  private imageState: 'loading' | 'loaded' | 'error' = 'loading';
  private readonly canEdit: ((key: string) => boolean) | undefined;

  constructor(opts: EditorMapOptions) {
    this.canEdit = opts.canEdit;
    this.store = opts.store;
    this.proposals = opts.proposals;
    this.selection = opts.selection;
    this.palette = opts.palette;
    this.frame = new PixelFrame(opts.width, opts.height);
    this.projection = new Projection({ code: 'image-pixels', units: 'pixels', extent: this.frame.extent });
    this.styles = new StyleCache(opts.palette);

    this.imageLayer = imageLayerCreate({
      width: opts.width,
      height: opts.height,
      projection: this.projection,
      imageUrl: opts.imageUrl,
      tiles: opts.tiles,
      onState: (state) => (this.imageState = state),
    });

    const s = this.styles;
    this.renderMode = opts.renderMode ?? 'image';
    const big = (source: VectorSource<CellFeature>, style: (f: FeatureLike) => Style | Style[], className: string): BigLayer =>
      this.renderMode === 'image'
        ? new VectorImageLayer({ source, style, imageRatio: 1.25, renderBuffer: 20, className })
        : new VectorLayer({ source, style, updateWhileInteracting: false, updateWhileAnimating: false, renderBuffer: 20, className });
    this.proposalLayer = big(this.proposalSource, (f) => s.proposal(f.get('c'), f.get('sel') === true), 'ol-layer-proposals');
    const custom = opts.cellStyle;
    this.cellLayer = big(
      this.cellSource,
      custom
        ? (f) => (f.get('err') ? s.cell(f.get('c'), 'error') : custom(String(f.getId()), f.get('c') ?? null, 'normal'))
        : (f) => s.cell(f.get('c'), f.get('err') ? 'error' : 'normal'),
      'ol-layer-cells',
    );
    this.activeLayer = new VectorLayer({
      source: this.activeSource,
      // a refused cell stays red when selected (with its vertex handles, to be corrected)
      style: (f) =>
        f.get('err')
          ? s.errorSelected
          : custom
            ? custom(String(f.getId()), f.get('c') ?? null, 'selected')
            : this.canEdit && !this.canEdit(String(f.getId()))
              ? s.selectedReadOnly(f.get('c')) // nothing to drag: no vertex handles
              : s.cell(f.get('c'), 'selected'),
      updateWhileInteracting: true,
      updateWhileAnimating: true,
      renderBuffer: 20,
      className: 'ol-layer-active',
    });
    this.regionLayer = new VectorLayer({
      source: this.regionSource,
      style: (f) =>
        new Style({
          stroke: new Stroke({ color: '#f59e0b', width: 2.5, lineDash: [10, 6] }),
          text: new Text({ text: String(f.get('name') ?? ''), overflow: true, placement: 'point', textAlign: 'left', textBaseline: 'bottom', fill: new Fill({ color: '#f59e0b' }), stroke: new Stroke({ color: '#111', width: 3 }), font: 'bold 13px sans-serif' }),
        }),
      className: 'ol-layer-regions',
    });
    this.sketchLayer = new VectorLayer({
      source: this.sketchSource,
      updateWhileInteracting: true,
      updateWhileAnimating: true,
      className: 'ol-layer-sketch',
    });

    this.view = new View({
      projection: this.projection,
      center: [opts.width / 2, opts.height / 2],
      resolution: 1,
      minResolution: 1 / 32,
      maxResolution: maxResolutionFor(opts.width, opts.height),
      constrainResolution: false,
      smoothResolutionConstraint: true,
      extent: [-opts.width, -opts.height, opts.width * 2, opts.height * 2],
      constrainOnlyCenter: true,
    });

    const interactions = defaultInteractions({
      altShiftDragRotate: false,
      pinchRotate: false,
      shiftDragZoom: false,
      dragPan: false,
      keyboard: false,
      // both replaced below
      doubleClickZoom: false,
      mouseWheelZoom: false,
    });
    interactions.push(new ModifierFreeDoubleClickZoom());
    interactions.push(new GentleWheelZoom());
    interactions.push(
      new DragPan({
        condition: (e: MapBrowserEvent) => {
          const oe = e.originalEvent as PointerEvent;
          if (oe.button === 1) return true; // middle button always pans
          if (this.spaceDown && oe.button === 0) return true;
          return this.leftDragPans && noModifierKeys(e) && primaryAction(e);
        },
      }),
    );

    this.map = new OlMap({
      target: opts.target,
      layers: [this.imageLayer, this.regionLayer, this.proposalLayer, this.cellLayer, this.activeLayer, this.sketchLayer],
      view: this.view,
      controls: [],
      interactions,
      pixelRatio: Math.min(2, globalThis.devicePixelRatio || 1),
      moveTolerance: 2,
    });

    this.offs.push(
      this.store.events.on('change', (c) => this.onStoreChange(c)),
      this.store.events.on('reset', () => this.loadCells()),
      this.proposals.events.on('reset', () => this.loadProposals()),
      this.proposals.events.on('removed', (ids) => this.removeProposals(ids)),
      this.selection.events.on('change', (c) => this.onSelectionChange(c.added, c.removed)),
    );
    this.loadCells();
    this.loadProposals();
  }

  get imageLoadState(): 'loading' | 'loaded' | 'error' {
    return this.imageState;
  }

  // ---------------------------------------------------------------- features

  feature(key: string): CellFeature | undefined {
    return this.features.get(key);
  }

  private buildCellFeature(cell: Cell): CellFeature {
    const f = new Feature(new Polygon([this.frame.ringToMap(cell.polygon)]));
    f.setId(cell.key);
    f.setProperties({ c: cell.classId, kind: 'cell', poly: cell.polygon }, true);
    if (this.errorKeys.has(cell.key)) f.set('err', true, true);
    return f;
  }

  /** Builds every cell feature in one batch (server load / reset). */
  loadCells(): void {
    for (const [key] of this.features) if (!isProposalKey(key)) this.features.delete(key);
    this.cellSource.clear(true);
    this.activeSource.clear(true);
    const normal: CellFeature[] = [];
    const active: CellFeature[] = [];
    for (const cell of this.store.all()) {
      const f = this.buildCellFeature(cell);
      this.features.set(cell.key, f);
      (this.selection.has(cell.key) ? active : normal).push(f);
    }
    this.cellSource.addFeatures(normal);
    this.activeSource.addFeatures(active);
    this.syncCollections();
  }

  private onStoreChange(ch: StoreChange): void {
    const dropSel: string[] = [];
    for (const key of ch.removed) {
      const f = this.features.get(key);
      if (!f) continue;
      this.sourceOf(f).removeFeature(f);
      this.features.delete(key);
      if (this.selection.has(key)) dropSel.push(key);
    }
    const add: CellFeature[] = [];
    const addActive: CellFeature[] = [];
    for (const key of ch.added) {
      const cell = this.store.get(key);
      if (!cell) continue;
      const old = this.features.get(key);
      if (old) this.sourceOf(old).removeFeature(old);
      const f = this.buildCellFeature(cell);
      this.features.set(key, f);
      (this.selection.has(key) ? addActive : add).push(f);
    }
    if (add.length) this.cellSource.addFeatures(add);
    if (addActive.length) this.activeSource.addFeatures(addActive);
    for (const key of ch.updated) {
      const cell = this.store.get(key);
      const f = this.features.get(key);
      if (!cell || !f) continue;
      if (f.get('poly') !== cell.polygon) {
        f.set('poly', cell.polygon, true);
        const g = f.getGeometry();
        const coords = this.frame.ringToMap(cell.polygon);
        if (g) g.setCoordinates([coords]);
        else f.setGeometry(new Polygon([coords]));
      }
      if (f.get('c') !== cell.classId) f.set('c', cell.classId);
    }
    if (dropSel.length) this.selection.remove(dropSel);
    else if (ch.removed.length || ch.added.length) this.syncCollections();
  }

  /**
   * A tool changed a feature's geometry itself (Modify): record which polygon
   * it now shows so the store update that follows does not rewrite it.
   */
  markFeaturePolygon(key: string, polygon: Ring): void {
    this.features.get(key)?.set('poly', polygon, true);
  }

  /** Restores a feature to the store's geometry (a rejected edit). */
  resetFeature(key: string): void {
    const cell = this.store.get(key);
    const f = this.features.get(key);
    if (!cell || !f) return;
    f.set('poly', cell.polygon, true);
    f.getGeometry()?.setCoordinates([this.frame.ringToMap(cell.polygon)]);
  }

  /** Polygon of a feature in API coordinates. */
  featureRing(f: CellFeature): Ring {
    const g = f.getGeometry();
    return g ? this.frame.ringToApi(g.getCoordinates()[0]) : [];
  }

  private sourceOf(f: CellFeature): VectorSource<CellFeature> {
    if (f.get('kind') === 'proposal') return this.proposalSource;
    return this.activeSource.hasFeature(f) ? this.activeSource : this.cellSource;
  }

  loadProposals(): void {
    for (const [key] of this.features) if (isProposalKey(key)) this.features.delete(key);
    this.proposalSource.clear(true);
    const list: CellFeature[] = [];
    for (const p of this.proposals.all()) {
      const f = new Feature(new Polygon([this.frame.ringToMap(p.polygon)]));
      const key = proposalKey(p.id);
      f.setId(key);
      const classId = p.classId ?? this.palette.byLabel(p.label)?.id ?? null;
      f.setProperties({ c: classId, kind: 'proposal', sel: this.selection.has(key) }, true);
      this.features.set(key, f);
      list.push(f);
    }
    this.proposalSource.addFeatures(list);
    this.syncCollections();
  }

  private removeProposals(ids: number[]): void {
    const keys = ids.map(proposalKey);
    for (const key of keys) {
      const f = this.features.get(key);
      if (!f) continue;
      this.proposalSource.removeFeature(f);
      this.features.delete(key);
    }
    this.selection.remove(keys);
  }

  // ---------------------------------------------------------------- selection

  private onSelectionChange(added: string[], removed: string[]): void {
    for (const key of removed) {
      const f = this.features.get(key);
      if (!f) continue;
      if (isProposalKey(key)) f.set('sel', false);
      else if (this.activeSource.hasFeature(f)) {
        this.activeSource.removeFeature(f);
        this.cellSource.addFeature(f);
      }
    }
    for (const key of added) {
      const f = this.features.get(key);
      if (!f) continue;
      if (isProposalKey(key)) f.set('sel', true);
      else if (!this.activeSource.hasFeature(f)) {
        this.cellSource.removeFeature(f);
        this.activeSource.addFeature(f);
      }
    }
    this.syncCollections();
  }

  private syncCollections(): void {
    const want = this.selection
      .values()
      .map((k) => this.features.get(k))
      .filter((f): f is CellFeature => !!f);
    syncCollection(this.selectedFeatures, want);
    syncCollection(
      this.editableFeatures,
      want.filter((f) => f.get('kind') === 'cell' && (!this.canEdit || this.canEdit(String(f.getId())))),
    );
  }

  /** Re-evaluates `canEdit` for the selection (e.g. edit mode toggled). */
  syncEditable(): void {
    this.syncCollections();
    this.activeLayer.changed(); // the vertex handles follow canEdit
  }

  setErrorKeys(keys: string[]): void {
    const next = new Set(keys);
    for (const k of this.errorKeys) if (!next.has(k)) this.features.get(k)?.set('err', false);
    for (const k of next) if (!this.errorKeys.has(k)) this.features.get(k)?.set('err', true);
    this.errorKeys = next;
  }

  // ---------------------------------------------------------------- picking

  /**
   * Keys of the cells / proposals under a pixel, smallest first (for
   * overlapping cells the smallest one is usually the one meant).
   */
  keysAtPixel(pixel: Pixel, what: { cells?: boolean; proposals?: boolean } = {}): string[] {
    const wantCells = what.cells ?? true;
    const wantProps = what.proposals ?? true;
    const hits: { key: string; area: number }[] = [];
    this.map.forEachFeatureAtPixel(
      pixel,
      (f) => {
        const key = String(f.getId());
        if (!hits.some((h) => h.key === key)) hits.push({ key, area: (f.getGeometry() as Polygon).getArea() });
        return undefined;
      },
      {
        hitTolerance: 2,
        layerFilter: (l) =>
          l.getVisible() &&
          ((wantCells && (l === this.cellLayer || l === this.activeLayer)) || (wantProps && l === this.proposalLayer)),
      },
    );
    hits.sort((a, b) => a.area - b.area);
    return hits.map((h) => h.key);
  }

  // ---------------------------------------------------------------- navigation

  fit(duration = 0): void {
    const size = this.map.getSize();
    if (!size) return;
    this.view.fit(this.frame.extent, { padding: [24, 24, 24, 24], duration, size });
  }

  zoomBy(delta: number, duration = 150): void {
    const res = this.view.getResolution();
    if (!res) return;
    this.view.animate({ resolution: this.view.getConstrainedResolution(res / 2 ** delta), duration });
  }

  /** Pan by a fraction of the viewport (arrow keys). */
  panBy(fx: number, fy: number, duration = 120): void {
    const size = this.map.getSize();
    const res = this.view.getResolution();
    const c = this.view.getCenter();
    if (!size || !res || !c) return;
    this.view.animate({ center: [c[0] + fx * size[0] * res, c[1] - fy * size[1] * res], duration });
  }

  /** Visible part of the image, API coordinates. */
  viewExtentApi(): BBox {
    const size = this.map.getSize() ?? [0, 0];
    return this.frame.extentToApi(this.view.calculateExtent(size));
  }

  /** Re-renders cells whose style depends on state outside the store (review decisions). */
  refreshCells(keys?: string[]): void {
    if (!keys || !keys.length) {
      this.cellLayer.changed();
      this.activeLayer.changed();
      for (const f of this.features.values()) if (f.get('kind') === 'cell') f.changed();
      return;
    }
    for (const k of keys) this.features.get(k)?.changed();
  }

  /**
   * Shows the cells: zooms so that they fill about a quarter of the view (never
   * closer than 3×), or just pans when they are already comfortably visible.
   */
  zoomToKeys(keys: string[], duration = 220): void {
    const size = this.map.getSize();
    const fs = keys.map((k) => this.features.get(k)).filter((f): f is CellFeature => !!f);
    if (!size || !fs.length) return;
    let e = [Infinity, Infinity, -Infinity, -Infinity];
    for (const f of fs) {
      const g = f.getGeometry()?.getExtent();
      if (!g) continue;
      e = [Math.min(e[0], g[0]), Math.min(e[1], g[1]), Math.max(e[2], g[2]), Math.max(e[3], g[3])];
    }
    if (!Number.isFinite(e[0])) return;
    const w = Math.max(8, e[2] - e[0]);
    const hgt = Math.max(8, e[3] - e[1]);
    const padded = [e[0] - 1.5 * w, e[1] - 1.5 * hgt, e[2] + 1.5 * w, e[3] + 1.5 * hgt];
    const res = this.view.getResolution() ?? 1;
    const view = this.view.calculateExtent(size);
    const fitsNow = e[0] >= view[0] && e[2] <= view[2] && e[1] >= view[1] && e[3] <= view[3];
    const comfortable = w / res > 110 && hgt / res > 110 && w / res < size[0] * 0.6 && hgt / res < size[1] * 0.6;
    if (fitsNow && comfortable) return;
    if (comfortable) {
      this.view.animate({ center: [(e[0] + e[2]) / 2, (e[1] + e[3]) / 2], duration });
      return;
    }
    this.view.fit(padded, { size, duration, minResolution: 1 / 3, padding: [20, 20, 20, 20] });
  }

  centerOn(keys: string[]): void {
    const f = keys.map((k) => this.features.get(k)).find(Boolean);
    const g = f?.getGeometry();
    if (!g) return;
    this.view.animate({ center: g.getInteriorPoint().getCoordinates().slice(0, 2), duration: 200 });
  }

  // ---------------------------------------------------------------- layers

  setLayerVisible(name: LayerName, visible: boolean): void {
    for (const l of this.layersOf(name)) l.setVisible(visible);
  }
  setLayerOpacity(name: LayerName, opacity: number): void {
    for (const l of this.layersOf(name)) l.setOpacity(opacity);
  }
  private layersOf(name: LayerName) {
    if (name === 'image') return [this.imageLayer];
    if (name === 'proposals') return [this.proposalLayer];
    return [this.cellLayer, this.activeLayer];
  }

  // ---------------------------------------------------------------- revision preview

  private previewLayer: VectorLayer<VectorSource<CellFeature>> | null = null;
  private beforePreview: { cells: boolean; active: boolean; proposals: boolean } | null = null;

  /**
   * Shows other cells (an earlier revision) in place of the annotation layer, read only and
   * outside the store and its history; null goes back to the current cells.
   */
  setPreview(cells: readonly { classId: number | null; polygon: Ring }[] | null): void {
    if (this.previewLayer) {
      this.map.removeLayer(this.previewLayer);
      this.previewLayer = null;
    }
    if (cells === null) {
      if (this.beforePreview) {
        this.cellLayer.setVisible(this.beforePreview.cells);
        this.activeLayer.setVisible(this.beforePreview.active);
        this.proposalLayer.setVisible(this.beforePreview.proposals);
      }
      this.beforePreview = null;
      return;
    }
    this.beforePreview ??= { cells: this.cellLayer.getVisible(), active: this.activeLayer.getVisible(), proposals: this.proposalLayer.getVisible() };
    const source = new VectorSource<CellFeature>({ wrapX: false });
    source.addFeatures(
      cells.map((c) => {
        const f = new Feature(new Polygon([this.frame.ringToMap(c.polygon)])) as CellFeature;
        f.set('c', c.classId);
        return f;
      }),
    );
    const s = this.styles;
    this.previewLayer = new VectorLayer({ source, style: (f) => s.outline(this.palette.color(f.get('c') as number | null), { dash: [6, 4], width: 2, fill: 0.16 }), className: 'ol-layer-preview' });
    this.cellLayer.setVisible(false);
    this.activeLayer.setVisible(false);
    this.proposalLayer.setVisible(false);
    this.map.addLayer(this.previewLayer);
  }

  get previewing(): boolean {
    return this.previewLayer !== null;
  }

  setCursor(cursor: string): void {
    const vp = this.map.getViewport() as HTMLElement | undefined;
    if (vp) vp.style.cursor = cursor;
  }

  destroy(): void {
    for (const off of this.offs) off();
    this.map.setTarget(undefined);
    this.map.dispose();
  }

  /** Fits the view to a box in full-resolution pixels (x0, y0, x1, y1), with a little room. */
  fitBox(box: [number, number, number, number], duration = 250): void {
    const a = this.frame.toMap([box[0], box[1]]);
    const b = this.frame.toMap([box[2], box[3]]);
    const extent = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
    this.view.fit(extent, { duration, padding: [40, 40, 40, 40], size: this.map.getSize() });
  }

  /** Shows the image's regions of interest (full-resolution rings; the label at the first point). */
  setRegions(regions: readonly { id: number; name: string; polygon: number[][] }[]): void {
    this.regionSource.clear(true);
    this.regionSource.addFeatures(
      regions.map((r) => {
        const ring = r.polygon.map((p) => this.frame.toMap([p[0], p[1]]));
        const f = new Feature({ geometry: new Polygon([[...ring, ring[0]]]), name: r.name });
        f.setId(`region-${r.id}`);
        return f;
      }),
    );
  }
}

/**
 * Double-click zooms in, but a double-click with a modifier is never a zoom: OpenLayers
 * zooms OUT on Shift+double-click, and two quick Shift-clicks are how a doctor adds
 * cells to the selection.
 */
class ModifierFreeDoubleClickZoom extends DoubleClickZoom {
  override handleEvent(e: MapBrowserEvent): boolean {
    if (e.type === 'dblclick' && !noModifierKeys(e)) return true;
    return super.handleEvent(e);
  }
}

function syncCollection<T>(col: Collection<T>, want: T[]): void {
  const arr = col.getArray();
  if (arr.length === want.length && arr.every((x, i) => x === want[i])) return;
  const wantSet = new Set(want);
  for (let i = arr.length - 1; i >= 0; i--) if (!wantSet.has(arr[i])) col.removeAt(i);
  const have = new Set(col.getArray());
  for (const x of want) if (!have.has(x)) col.push(x);
}
