/** Tiny DOM helpers (no framework). */

export type Child = Node | string | number | null | undefined | false | Child[];

type Handler = (e: never) => void;
export interface Props {
  class?: string;
  style?: string | Partial<CSSStyleDeclaration>;
  dataset?: Record<string, string>;
  [attr: string]: unknown;
}

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props?: Props | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = String(v);
      else if (k === 'style') {
        if (typeof v === 'string') el.setAttribute('style', v);
        else Object.assign(el.style, v);
      } else if (k === 'dataset') Object.assign(el.dataset, v as Record<string, string>);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2).toLowerCase(), v as Handler as EventListener);
      else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected' || k === 'htmlFor') (el as unknown as Record<string, unknown>)[k] = v;
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

export function replaceChildren(el: Element, ...children: Child[]): void {
  clear(el);
  append(el, children);
}

// ------------------------------------------------------------------ icons
// 24x24 stroke icons (drawn for this app, lucide-like).
const ICONS: Record<string, string> = {
  select: '<path d="M5 3l14 8-6 2-3 6z"/>',
  draw: '<path d="M4 20l3-1 11-11-2-2L5 17z"/><path d="M14 6l2 2"/><circle cx="19" cy="19" r="1.5"/>',
  split: '<circle cx="6" cy="6" r="3"/><circle cx="6" cy="18" r="3"/><path d="M20 4L8.1 15.9M14.5 14.5L20 20M8.1 8.1L12 12"/>',
  merge: '<circle cx="9" cy="12" r="5"/><circle cx="15" cy="12" r="5"/>',
  delete: '<path d="M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3"/>',
  classify: '<path d="M3 12l9-9h7v7l-9 9z"/><circle cx="15.5" cy="8.5" r="1.5"/>',
  segment: '<path d="M4 20L14 10"/><path d="M17 3v3M17 12v3M11 9h3M20 9h3M19.1 6.9l1.4-1.4M13.5 12.5l1.4-1.4M14.9 6.9l-1.4-1.4"/>',
  box: '<path d="M4 8V4h4M16 4h4v4M20 16v4h-4M8 20H4v-4"/><circle cx="12" cy="12" r="3.5"/>',
  brush: '<path d="M18.4 2.6a2 2 0 012.9 2.9L11 15.8 8.2 13z"/><path d="M7.5 14.5C5 14.5 4 16.5 4 18c0 1.2-.7 2-2 2.5 1.5 1 6 1.5 7.8-.5 1.2-1.3 1-3.2-.3-4.5"/>',
  eraser: '<path d="M7 21h13"/><path d="M3.6 14.6l9.9-9.9a2 2 0 012.8 0l3 3a2 2 0 010 2.8L11 18.8a4 4 0 01-5.6 0l-1.8-1.4a2 2 0 010-2.8z"/><path d="M9 9l6 6"/>',
  region: '<path d="M4 7V4h3M10 4h4M17 4h3v3M20 10v4M20 17v3h-3M14 20h-4M7 20H4v-3M4 14v-4"/>',
  undo: '<path d="M9 14L4 9l5-5"/><path d="M4 9h11a5 5 0 010 10h-3"/>',
  redo: '<path d="M15 14l5-5-5-5"/><path d="M20 9H9a5 5 0 000 10h3"/>',
  zoomIn: '<circle cx="11" cy="11" r="7"/><path d="M21 21l-4.3-4.3M11 8v6M8 11h6"/>',
  zoomOut: '<circle cx="11" cy="11" r="7"/><path d="M21 21l-4.3-4.3M8 11h6"/>',
  fit: '<path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5"/>',
  help: '<circle cx="12" cy="12" r="9"/><path d="M9.5 9a2.5 2.5 0 015 .5c0 1.5-2.5 2-2.5 3.5M12 17h.01"/>',
  check: '<path d="M5 12l5 5 9-10"/>',
  x: '<path d="M6 6l12 12M18 6L6 18"/>',
  eye: '<path d="M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/>',
  eyeOff: '<path d="M3 3l18 18M10.6 5.1A10.7 10.7 0 0112 5c6.5 0 10 7 10 7a17 17 0 01-3.2 4.2M6.6 6.6A17 17 0 002 12s3.5 7 10 7a10 10 0 005.4-1.6M9.9 9.9a3 3 0 004.2 4.2"/>',
  magnet: '<path d="M6 3v8a6 6 0 0012 0V3M6 8h4M14 8h4"/>',
  arrowLeft: '<path d="M19 12H5M11 18l-6-6 6-6"/>',
  next: '<path d="M5 12h14M13 6l6 6-6 6"/>',
  logout: '<path d="M9 21H5a2 2 0 01-2-2V5a2 2 0 012-2h4M16 17l5-5-5-5M21 12H9"/>',
  send: '<path d="M22 2L11 13M22 2l-7 20-4-9-9-4z"/>',
  cloud: '<path d="M7 18a5 5 0 01-.9-9.9A6 6 0 0117.7 9 4.5 4.5 0 0117 18z"/>',
  cloudOff: '<path d="M3 3l18 18M7 18a5 5 0 01-1-9.9M10 6.3A6 6 0 0117.7 9 4.5 4.5 0 0120 16.5"/>',
  alert: '<path d="M12 3l10 18H2z"/><path d="M12 10v4M12 17.5h.01"/>',
  lock: '<rect x="5" y="11" width="14" height="10" rx="2"/><path d="M8 11V7a4 4 0 018 0v4"/>',
  layers: '<path d="M12 3l9 5-9 5-9-5z"/><path d="M3 13l9 5 9-5"/>',
  cpu: '<rect x="6" y="6" width="12" height="12" rx="2"/><path d="M10 10h4v4h-4zM9 2v4M15 2v4M9 18v4M15 18v4M2 9h4M2 15h4M18 9h4M18 15h4"/>',
  sparkles: '<path d="M12 3l1.8 4.7L18.5 9.5l-4.7 1.8L12 16l-1.8-4.7L5.5 9.5l4.7-1.8zM19 15l.8 2.2L22 18l-2.2.8L19 21l-.8-2.2L16 18l2.2-.8z"/>',
  image: '<rect x="3" y="4" width="18" height="16" rx="2"/><circle cx="9" cy="10" r="2"/><path d="M21 16l-5-5-9 9"/>',
  search: '<circle cx="11" cy="11" r="7"/><path d="M21 21l-4.3-4.3"/>',
  copy: '<rect x="9" y="9" width="12" height="12" rx="2"/><path d="M5 15H4a1 1 0 01-1-1V4a1 1 0 011-1h10a1 1 0 011 1v1"/>',
  refresh: '<path d="M20 11a8 8 0 00-14.8-4M4 4v4h4M4 13a8 8 0 0014.8 4M20 20v-4h-4"/>',
  webhook: '<circle cx="6" cy="17" r="2.5"/><circle cx="18" cy="17" r="2.5"/><circle cx="12" cy="6" r="2.5"/><path d="M10.7 8.2L7.3 14.8M8.5 17h7M13.3 8.2l3.4 6.6"/>',
  users: '<circle cx="9" cy="8" r="3.2"/><path d="M3 20c0-3.3 2.7-6 6-6s6 2.7 6 6"/><path d="M16 4.5a3.2 3.2 0 010 6.4M18 14.3c2 .8 3 2.9 3 5.7"/>',
  plus: '<path d="M12 5v14M5 12h14"/>',
  key: '<circle cx="8" cy="15" r="4"/><path d="M10.8 12.2L20 3M16 7l3 3M14 9l2 2"/>',
};

export function icon(name: keyof typeof ICONS | string, size = 18): HTMLSpanElement {
  const span = document.createElement('span');
  span.className = 'icon';
  span.innerHTML = `<svg width="${size}" height="${size}" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">${ICONS[name] ?? ''}</svg>`;
  return span;
}

export function kbd(text: string): HTMLElement {
  return h('kbd', null, text);
}

/** Coalesces UI refreshes into one per animation frame. */
export function rafThrottle(fn: () => void): () => void {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fn();
    });
  };
}

export function formatStatus(s: string | null | undefined): string {
  if (!s) return '—';
  const t = s.replace(/[_-]+/g, ' ');
  return t.charAt(0).toUpperCase() + t.slice(1);
}

/** CSS modifier for an image workflow status. */
export function statusTone(s: string | null | undefined): string {
  const v = (s ?? '').toLowerCase();
  if (/verif|done|approv|complete|final|succeed|active/.test(v)) return 'good';
  if (/disput|adjudic/.test(v)) return 'warn';
  if (/submit|review|candidate/.test(v)) return 'review';
  if (/running|queued/.test(v)) return 'active';
  if (/progress|annotat|draft|edit/.test(v)) return 'active';
  if (/reject|change|fail|error|cancel/.test(v)) return 'bad';
  return 'neutral';
}

/** Add an event listener and return the function that removes it (screens collect these). */
export function listen<E extends Event>(target: EventTarget, type: string, handler: (e: E) => void): () => void {
  const fn = handler as EventListener;
  target.addEventListener(type, fn);
  return () => target.removeEventListener(type, fn);
}
