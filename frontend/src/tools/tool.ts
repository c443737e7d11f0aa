/**
 * Every editing tool is a class behind this interface. The editor activates
 * exactly one tool at a time; global shortcuts are handled by the editor, the
 * active tool sees keys first through `onKey` (return true = consumed).
 */
import type { ClassPalette } from '../core/classes';
import type { Segmenter } from '../core/interactive';
import type { ProposalStore } from '../core/proposals';
import type { RegionList } from '../core/regions';
import type { Selection } from '../core/selection';
import type { AnnotationStore } from '../core/store';
import { Snap } from 'ol/interaction';
import type { EditorMap } from '../view/editorMap';

export type ToolId = 'select' | 'draw' | 'split' | 'merge' | 'delete' | 'classify' | 'segment' | 'box' | 'brush' | 'eraser' | 'region';

export type NotifyKind = 'info' | 'success' | 'warn' | 'error';

export interface ToolContext {
  store: AnnotationStore;
  selection: Selection;
  proposals: ProposalStore;
  palette: ClassPalette;
  /** The OpenLayers view; absent in unit tests of the tools' logic. */
  view?: EditorMap;
  /** Click and box prompts on the server (the editor's image); absent on the screens without them. */
  segmenter?: Segmenter;
  /** The image's regions of interest (the editor has them). */
  regions?: RegionList;
  /** Class given to new cells and by the classify tool. */
  activeClassId(): number | null;
  snapEnabled(): boolean;
  notify(message: string, kind?: NotifyKind): void;
  /** Switch tool (e.g. a one-shot tool returning to select). */
  setTool(id: ToolId): void;
}

export interface Tool {
  readonly id: ToolId;
  readonly label: string;
  /** Key that activates the tool (shown in the toolbar and the help panel). */
  readonly shortcut: string;
  /** One line of help shown in the status bar while the tool is active. */
  readonly hint: string;
  activate(ctx: ToolContext): void;
  deactivate(): void;
  onKey?(e: KeyboardEvent): boolean;
}

/**
 * Snapping to the neighbouring contours, added to the map when the user turned it on (S);
 * the tool removes it on deactivation. Null when snapping is off.
 */
export function addSnap(ctx: ToolContext, view: EditorMap): Snap | null {
  if (!ctx.snapEnabled()) return null;
  const snap = new Snap({ source: view.cellSource, pixelTolerance: 7 });
  view.map.addInteraction(snap);
  return snap;
}
