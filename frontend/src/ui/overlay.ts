/** Toasts and modal dialogs. */
import { h, icon, type Child } from './dom';
import type { NotifyKind } from '../tools/tool';

let toastHost: HTMLElement | null = null;

export function toast(message: string, kind: NotifyKind = 'info', ms = kind === 'error' ? 6000 : 2600): void {
  if (!toastHost) {
    toastHost = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.appendChild(toastHost);
  }
  // the same message already showing is not stacked again: it stays for the new duration
  const same = [...toastHost.children].find(
    (x): x is HTMLElement => x instanceof HTMLElement && !x.classList.contains('leaving') && x.dataset.message === `${kind}|${message}`,
  );
  if (same) {
    clearTimeout(toastTimers.get(same));
    toastTimers.set(same, leaveLater(same, ms));
    return;
  }
  const ic = kind === 'success' ? 'check' : kind === 'error' || kind === 'warn' ? 'alert' : 'sparkles';
  const el = h('div', { class: `toast toast-${kind}`, dataset: { message: `${kind}|${message}` } }, icon(ic, 16), h('span', null, message));
  toastHost.appendChild(el);
  while (toastHost.children.length > 4) toastHost.firstElementChild?.remove();
  toastTimers.set(el, leaveLater(el, ms));
}

const toastTimers = new WeakMap<HTMLElement, ReturnType<typeof setTimeout>>();

function leaveLater(el: HTMLElement, ms: number): ReturnType<typeof setTimeout> {
  return setTimeout(() => {
    el.classList.add('leaving');
    setTimeout(() => el.remove(), 250);
  }, ms);
}

export interface DialogHandle {
  el: HTMLElement;
  close(): void;
}

let openDialogs = 0;
export function dialogOpen(): boolean {
  return openDialogs > 0;
}

/** A modal dialog; Escape closes it when `dismissible`. */
export function dialog(opts: {
  title: string;
  body: Child;
  actions?: Child;
  wide?: boolean;
  dismissible?: boolean;
  onClose?: () => void;
  className?: string;
}): DialogHandle {
  const dismissible = opts.dismissible ?? true;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    openDialogs -= 1;
    document.removeEventListener('keydown', onKey, true);
    backdrop.remove();
    opts.onClose?.();
  };
  const onKey = (e: KeyboardEvent) => {
    if (e.key === 'Escape' && dismissible) {
      e.preventDefault();
      e.stopPropagation();
      close();
    }
  };
  const panel = h(
    'div',
    { class: `dialog ${opts.wide ? 'dialog-wide' : ''} ${opts.className ?? ''}`, role: 'dialog', 'aria-modal': 'true', 'aria-label': opts.title },
    h(
      'header',
      { class: 'dialog-head' },
      h('h2', null, opts.title),
      dismissible ? h('button', { class: 'icon-btn', title: 'Close (Esc)', 'aria-label': 'Close', onclick: close }, icon('x')) : null,
    ),
    h('div', { class: 'dialog-body' }, opts.body),
    opts.actions ? h('footer', { class: 'dialog-actions' }, opts.actions) : null,
  );
  const backdrop = h('div', { class: 'backdrop', onmousedown: (e: MouseEvent) => e.target === backdrop && dismissible && close() }, panel);
  document.body.appendChild(backdrop);
  openDialogs += 1;
  document.addEventListener('keydown', onKey, true);
  requestAnimationFrame(() => (panel.querySelector('[autofocus]') as HTMLElement | null)?.focus());
  return { el: panel, close };
}

export function confirmDialog(title: string, message: string, confirmLabel = 'Confirm', danger = false): Promise<boolean> {
  return new Promise((resolve) => {
    let result = false;
    const d = dialog({
      title,
      body: h('p', null, message),
      actions: [
        h('button', { class: 'btn', onclick: () => d.close() }, 'Cancel'),
        h('button', { class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, autofocus: true, onclick: () => ((result = true), d.close()) }, confirmLabel),
      ],
      onClose: () => resolve(result),
    });
  });
}
