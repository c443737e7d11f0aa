/**
 * The pointer interaction of the tools that draw a polygon with PolygonDrawMachine (a cell
 * outline, a region of interest): presses, moves, drags and releases go to the tool; clicks and
 * double-clicks are left to the machine, which recognises them itself, so they never zoom.
 */
import type MapBrowserEvent from 'ol/MapBrowserEvent';
import PointerInteraction from 'ol/interaction/Pointer';

export interface PolygonPointerHandler {
  /** A press; true when the tool takes it (a drag follows). */
  onDown(e: MapBrowserEvent<PointerEvent>): boolean;
  onMove(e: MapBrowserEvent): void;
  onUp(e: MapBrowserEvent): void;
}

export class PolygonDrawInteraction extends PointerInteraction {
  constructor(private readonly tool: PolygonPointerHandler) {
    super();
  }
  override handleEvent(e: MapBrowserEvent): boolean {
    if (e.type === 'dblclick' || e.type === 'click' || e.type === 'singleclick') return false;
    return super.handleEvent(e);
  }
  protected override handleDownEvent(e: MapBrowserEvent): boolean {
    return this.tool.onDown(e as MapBrowserEvent<PointerEvent>);
  }
  protected override handleDragEvent(e: MapBrowserEvent): void {
    this.tool.onMove(e);
  }
  protected override handleMoveEvent(e: MapBrowserEvent): void {
    this.tool.onMove(e);
  }
  protected override handleUpEvent(e: MapBrowserEvent): boolean {
    this.tool.onUp(e);
    return false;
  }
}
