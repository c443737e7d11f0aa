/**
 * Cached OpenLayers styles per class and state: style functions return these
 * shared instances, no Style objects are created per render.
 */
import { MultiPoint, type Polygon } from 'ol/geom';
import type { FeatureLike } from 'ol/Feature';
import { Circle, Fill, Stroke, Style } from 'ol/style';
import { parseColor, rgba, type ClassPalette } from '../core/classes';

export type CellState = 'normal' | 'selected' | 'error';

function vertices(feature: FeatureLike) {
  const g = feature.getGeometry() as Polygon | undefined;
  return g ? new MultiPoint(g.getCoordinates()[0]) : undefined;
}

export class StyleCache {
  private readonly cells = new Map<string, Style | Style[]>();
  private readonly props = new Map<string, Style>();
  fillOpacity = 0.14;

  constructor(private palette: ClassPalette) {}

  setPalette(p: ClassPalette): void {
    this.palette = p;
    this.cells.clear();
    this.props.clear();
  }

  /** A selected cell that cannot be edited (read-only image): the selection's halo, no vertex handles. */
  selectedReadOnly(classId: number | null | undefined): Style | Style[] {
    const k = `${classId ?? 'x'}|selected-ro`;
    let s = this.cells.get(k);
    if (!s) {
      const sel = this.cell(classId, 'selected');
      s = Array.isArray(sel) ? sel.slice(0, 2) : sel;
      this.cells.set(k, s);
    }
    return s;
  }

  cell(classId: number | null | undefined, state: CellState): Style | Style[] {
    const k = `${classId ?? 'x'}|${state}`;
    let s = this.cells.get(k);
    if (!s) {
      const rgb = parseColor(this.palette.color(classId));
      if (state === 'normal') {
        s = new Style({
          fill: new Fill({ color: rgba(rgb, this.fillOpacity) }),
          stroke: new Stroke({ color: rgba(rgb, 0.95), width: 1.6 }),
        });
      } else if (state === 'error') {
        s = new Style({
          fill: new Fill({ color: 'rgba(220,38,38,0.25)' }),
          stroke: new Stroke({ color: '#dc2626', width: 2.5, lineDash: [4, 3] }),
        });
      } else {
        s = [
          new Style({ stroke: new Stroke({ color: 'rgba(255,255,255,0.95)', width: 4.5 }) }),
          new Style({
            fill: new Fill({ color: rgba(rgb, 0.28) }),
            stroke: new Stroke({ color: rgba(rgb, 1), width: 2 }),
          }),
          new Style({
            geometry: vertices,
            image: new Circle({
              radius: 3.5,
              fill: new Fill({ color: '#ffffff' }),
              stroke: new Stroke({ color: rgba(rgb, 1), width: 1.5 }),
            }),
          }),
        ];
      }
      this.cells.set(k, s);
    }
    return s;
  }

  proposal(classId: number | null | undefined, selected: boolean): Style {
    const k = `${classId ?? 'x'}|${selected ? 1 : 0}`;
    let s = this.props.get(k);
    if (!s) {
      const rgb = classId == null ? ([250, 204, 21] as [number, number, number]) : parseColor(this.palette.color(classId));
      s = selected
        ? new Style({
            fill: new Fill({ color: rgba(rgb, 0.3) }),
            stroke: new Stroke({ color: 'rgba(255,255,255,1)', width: 2.5, lineDash: [7, 4] }),
          })
        : new Style({
            fill: new Fill({ color: rgba(rgb, 0.07) }),
            stroke: new Stroke({ color: rgba(rgb, 0.85), width: 1.4, lineDash: [5, 4] }),
          });
      this.props.set(k, s);
    }
    return s;
  }

  private readonly outlines = new Map<string, Style | Style[]>();

  /**
   * An outline in a given colour (review decisions, experts' versions):
   * `dash` for dashed lines, `fill` the fill opacity, `selected` adds the white
   * halo and the vertex handles of the selection.
   */
  outline(color: string, o: { width?: number; dash?: number[]; fill?: number; fillColor?: string; selected?: boolean; alpha?: number; zIndex?: number } = {}): Style | Style[] {
    const k = `${color}|${o.width ?? 1.8}|${o.dash?.join(',') ?? ''}|${o.fill ?? 0.12}|${o.fillColor ?? ''}|${o.selected ? 1 : 0}|${o.alpha ?? 1}|${o.zIndex ?? 0}`;
    let s = this.outlines.get(k);
    if (!s) {
      const rgb = parseColor(color);
      const main = new Style({
        fill: new Fill({ color: rgba(o.fillColor ? parseColor(o.fillColor) : rgb, o.selected ? Math.max(0.22, o.fill ?? 0.12) : (o.fill ?? 0.12)) }),
        stroke: new Stroke({ color: rgba(rgb, o.alpha ?? 1), width: (o.width ?? 1.8) + (o.selected ? 0.6 : 0), lineDash: o.dash }),
      });
      if (o.zIndex) main.setZIndex(o.zIndex);
      s = o.selected
        ? [
            new Style({ stroke: new Stroke({ color: 'rgba(255,255,255,0.95)', width: (o.width ?? 1.8) + 3.4 }), zIndex: o.zIndex }),
            main,
            new Style({
              geometry: vertices,
              image: new Circle({ radius: 3.5, fill: new Fill({ color: '#ffffff' }), stroke: new Stroke({ color: rgba(rgb, 1), width: 1.5 }) }),
              zIndex: o.zIndex,
            }),
          ]
        : o.dash
          ? [new Style({ stroke: new Stroke({ color: `rgba(0,0,0,${0.55 * (o.alpha ?? 1)})`, width: (o.width ?? 1.8) + 1.6 }), zIndex: o.zIndex }), main]
          : main;
      this.outlines.set(k, s);
    }
    return s;
  }

  /** A selected cell the server refused: red, with the white halo and vertex handles of the selection. */
  readonly errorSelected: Style[] = [
    new Style({ stroke: new Stroke({ color: 'rgba(255,255,255,0.95)', width: 5 }) }),
    new Style({ fill: new Fill({ color: 'rgba(220,38,38,0.3)' }), stroke: new Stroke({ color: '#dc2626', width: 2.5, lineDash: [4, 3] }) }),
    new Style({
      geometry: vertices,
      image: new Circle({ radius: 4, fill: new Fill({ color: '#ffffff' }), stroke: new Stroke({ color: '#dc2626', width: 2 }) }),
    }),
  ];

  /** Sketch (drawing in progress). */
  readonly sketchFill = new Style({ fill: new Fill({ color: 'rgba(34,211,238,0.14)' }) });
  readonly sketchLine = new Style({ stroke: new Stroke({ color: '#22d3ee', width: 2 }) });
  readonly sketchGuide = new Style({ stroke: new Stroke({ color: 'rgba(34,211,238,0.9)', width: 1.2, lineDash: [4, 4] }) });
  readonly sketchVertex = new Style({
    image: new Circle({ radius: 3.5, fill: new Fill({ color: '#0e7490' }), stroke: new Stroke({ color: '#ffffff', width: 1.5 }) }),
  });
  readonly sketchFirstVertex = new Style({
    image: new Circle({ radius: 6, fill: new Fill({ color: 'rgba(34,211,238,0.35)' }), stroke: new Stroke({ color: '#ffffff', width: 2 }) }),
  });
  readonly splitLine = new Style({ stroke: new Stroke({ color: '#f97316', width: 2.2, lineDash: [8, 5] }) });
  readonly modifyVertex = new Style({
    image: new Circle({ radius: 5.5, fill: new Fill({ color: 'rgba(255,255,255,0.9)' }), stroke: new Stroke({ color: '#0f172a', width: 1.5 }) }),
  });
  readonly mergeCandidate = new Style({
    fill: new Fill({ color: 'rgba(168,85,247,0.25)' }),
    stroke: new Stroke({ color: '#a855f7', width: 2.5 }),
  });
}
