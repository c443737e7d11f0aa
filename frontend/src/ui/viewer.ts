/**
 * Pieces of the map screens (editor, review, adjudication; see mapScreen.ts):
 * the layout shell, view keys, the status bar readouts, small panel helpers.
 */
import { unByKey } from 'ol/Observable';
import { ApiError } from '../core/api';
import type { EditorMap } from '../view/editorMap';
import { h, icon, kbd, rafThrottle, type Child } from './dom';

export interface Shell {
  root: HTMLElement;
  toolbar: HTMLElement;
  mapEl: HTMLElement;
  overlay: HTMLElement;
  panel: HTMLElement;
  hintEl: HTMLElement;
  coordEl: HTMLElement;
  zoomEl: HTMLElement;
  banner: HTMLElement;
}

export function buildShell(top: HTMLElement, className?: string): Shell {
  const toolbar = h('aside', { class: 'toolbar', 'aria-label': 'Tools' });
  // role=application: the map takes the keyboard itself (tools, panning), and a plain div may not carry aria-label
  const mapEl = h('div', { class: 'map', tabindex: '0', role: 'application', 'aria-label': 'Image and cell contours', 'aria-roledescription': 'annotation map' });
  const overlay = h('div', { class: 'map-overlay' }, h('div', { class: 'overlay-card' }, h('span', { class: 'spinner big' }), h('p', null, 'Loading image and cells…')));
  const banner = h('div', { class: 'map-banner', hidden: true });
  const panel = h('aside', { class: 'side-panel' });
  const hintEl = h('span', { class: 'hint' }, '');
  const coordEl = h('span', { class: 'coords' }, '');
  const zoomEl = h('span', { class: 'zoom' }, '');
  const root = h(
    'div',
    { class: className ? `editor ${className}` : 'editor' },
    top,
    h('div', { class: 'editor-body' }, toolbar, h('div', { class: 'map-wrap' }, mapEl, banner, overlay), panel),
    h('footer', { class: 'statusbar' }, hintEl, h('span', { class: 'grow' }), coordEl, zoomEl),
  );
  return { root, toolbar, mapEl, overlay, panel, hintEl, coordEl, zoomEl, banner };
}

export function zoomButtons(view: () => EditorMap | null): HTMLElement[] {
  return [
    h('span', { class: 'grow' }),
    h('button', { class: 'tool-btn', title: 'Zoom in (+)', 'aria-label': 'Zoom in', onclick: () => view()?.zoomBy(1) }, icon('zoomIn', 20)),
    h('button', { class: 'tool-btn', title: 'Zoom out (−)', 'aria-label': 'Zoom out', onclick: () => view()?.zoomBy(-1) }, icon('zoomOut', 20)),
    h('button', { class: 'tool-btn', title: 'Fit image (F)', 'aria-label': 'Fit image', 'aria-keyshortcuts': 'F', onclick: () => view()?.fit(200) }, icon('fit', 20)),
  ];
}

/** Coordinates and zoom readouts of the status bar. Returns the uninstaller. */
export function wireReadouts(v: EditorMap, mapEl: HTMLElement, coordEl: HTMLElement, zoomEl: HTMLElement): () => void {
  let last: number[] | null = null;
  const showCoord = rafThrottle(() => {
    if (!last) {
      coordEl.textContent = '';
      return;
    }
    const [x, y] = v.frame.toApi(last);
    const inside = x >= 0 && y >= 0 && x <= v.frame.width && y <= v.frame.height;
    coordEl.textContent = inside ? `x ${Math.round(x)}  y ${Math.round(y)}` : '';
  });
  const key = v.map.on('pointermove', (e) => {
    last = e.coordinate;
    showCoord();
  });
  const leave = () => {
    last = null;
    showCoord();
  };
  mapEl.addEventListener('mouseleave', leave);
  const showZoom = rafThrottle(() => {
    const r = v.view.getResolution() ?? 1;
    zoomEl.textContent = `${Math.round(100 / r)}%`;
  });
  v.view.on('change:resolution', showZoom);
  showZoom();
  return () => {
    unByKey(key);
    mapEl.removeEventListener('mouseleave', leave);
  };
}

/** View keys shared by the map screens; true when handled. */
export function viewKey(e: KeyboardEvent, v: EditorMap, mapEl: HTMLElement): boolean {
  const key = e.key;
  if (key === ' ') {
    v.spaceDown = true;
    mapEl.classList.add('panning');
    return true;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return false;
  if (key === 'f' || key === 'F') v.fit(200);
  else if (key === '+' || key === '=') v.zoomBy(1);
  else if (key === '-' || key === '_') v.zoomBy(-1);
  else if (key === 'ArrowLeft') v.panBy(-(e.shiftKey ? 0.5 : 0.2), 0);
  else if (key === 'ArrowRight') v.panBy(e.shiftKey ? 0.5 : 0.2, 0);
  else if (key === 'ArrowUp') v.panBy(0, -(e.shiftKey ? 0.5 : 0.2));
  else if (key === 'ArrowDown') v.panBy(0, e.shiftKey ? 0.5 : 0.2);
  else return false;
  return true;
}

export function isTyping(e: KeyboardEvent): boolean {
  const t = e.target as HTMLElement | null;
  return !!t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable);
}

export function errText(e: unknown): string {
  if (e instanceof ApiError) return e.isNetwork ? 'the server cannot be reached' : e.detail;
  return e instanceof Error ? e.message : String(e);
}

export function helpRow(keys: string[], what: string): HTMLElement {
  return h('div', { class: 'help-row' }, h('span', { class: 'help-keys' }, keys.map((k, i) => [i ? ' ' : '', kbd(k)])), h('span', null, what));
}

export function section(title: Child, ...body: Child[]): HTMLElement {
  return h('section', { class: 'panel-section' }, h('h3', null, title), ...body);
}

/** Full-map message (errors, not assigned…). */
export function overlayMessage(overlay: HTMLElement, title: string, message: string, actions: Child[]): void {
  overlay.replaceChildren(h('div', { class: 'overlay-card' }, icon('alert', 28), h('h3', null, title), h('p', { class: 'muted' }, message), h('div', { class: 'btn-row center' }, actions)));
  overlay.hidden = false;
}

export function relTime(iso: string | null | undefined): string {
  if (!iso) return '';
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
}
