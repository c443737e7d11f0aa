/** The single-page app: session, hash routing, screens. */
import { ApiClient, ApiError } from '../core/api';
import { parseRoute, routeHash, type Route } from '../core/router';
import type { User } from '../core/types';
import { h, icon, type Child } from './dom';
import { toast } from './overlay';

export interface Screen {
  mount(root: HTMLElement): void | Promise<void>;
  unmount(): void;
  /** Resolve false to stay (e.g. unsaved work that could not be saved). */
  beforeLeave?(): Promise<boolean>;
  /** Return true when the screen deals with an expired session itself (keeps unsaved work). */
  onUnauthorized?(): boolean;
}

type ScreenFactory = (app: App, route: Route) => Promise<Screen> | Screen;

export class App {
  readonly api: ApiClient;
  user: User | null = null;
  private screen: Screen | null = null;
  private currentHash = '';
  private restoringHash = false;
  private routing = Promise.resolve();

  constructor(
    readonly root: HTMLElement,
    private readonly screens: Record<Route['name'], ScreenFactory>,
    api?: ApiClient,
  ) {
    this.api = api ?? new ApiClient();
  }

  start(): void {
    this.api.onUnauthorized = () => this.handleUnauthorized();
    window.addEventListener('hashchange', () => {
      if (this.restoringHash) {
        this.restoringHash = false;
        return;
      }
      this.routing = this.routing.then(() => this.route());
    });
    this.routing = this.route();
  }

  navigate(route: Route | string): void {
    const hash = typeof route === 'string' ? route : routeHash(route);
    if (location.hash === hash) this.routing = this.routing.then(() => this.route(true));
    else location.hash = hash;
  }

  private async route(force = false): Promise<void> {
    const hash = location.hash || '#/projects';
    if (hash === this.currentHash && !force) return;
    const route = parseRoute(hash);
    if (this.screen?.beforeLeave && !(await this.screen.beforeLeave())) {
      this.restoringHash = true;
      location.hash = this.currentHash;
      return;
    }
    if (route.name !== 'login' && !this.user) {
      try {
        this.user = await this.api.me();
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 401) {
          this.showFatal(e);
          return;
        }
        this.user = null;
        location.replace(routeHash({ name: 'login', next: hash }));
        return;
      }
    }
    this.currentHash = hash;
    this.screen?.unmount();
    this.screen = null;
    this.root.replaceChildren();
    const screen = await this.screens[route.name](this, route);
    if (location.hash && location.hash !== hash) return; // navigated away meanwhile
    this.screen = screen;
    await screen.mount(this.root);
  }

  private handleUnauthorized(): void {
    if (!this.user) return; // not signed in yet: route() sends the user to the login screen
    if (this.screen?.onUnauthorized?.()) return;
    this.user = null;
    const next = location.hash;
    if (!next.startsWith('#/login')) {
      toast('Your session has ended — please sign in again', 'warn');
      location.hash = routeHash({ name: 'login', next });
    }
  }

  async logout(): Promise<void> {
    if (this.screen?.beforeLeave && !(await this.screen.beforeLeave())) return;
    try {
      await this.api.logout();
    } catch {
      /* signed out anyway */
    }
    this.user = null;
    this.screen?.unmount();
    this.screen = null;
    this.currentHash = '';
    location.hash = '#/login';
  }

  private showFatal(e: unknown): void {
    const msg = e instanceof ApiError ? (e.isNetwork ? 'The server cannot be reached.' : e.detail) : String(e);
    this.root.replaceChildren(
      h(
        'div',
        { class: 'center-page' },
        h('div', { class: 'card narrow' }, h('h1', null, 'Cannot start'), h('p', { class: 'muted' }, msg), h('button', { class: 'btn btn-primary', onclick: () => location.reload() }, 'Retry')),
      ),
    );
  }

  /** The top bar shared by the list screens and the editor. */
  topbar(crumbs: Child[], right: Child = null): HTMLElement {
    return h(
      'header',
      { class: 'topbar' },
      h('a', { class: 'brand', href: '#/projects', title: 'Projects' }, h('span', { class: 'brand-mark' }), 'CellContour'),
      h('nav', { class: 'crumbs' }, crumbs),
      h('div', { class: 'topbar-right' }, right, this.userMenu()),
    );
  }

  private userMenu(): HTMLElement | null {
    if (!this.user) return null;
    return h(
      'div',
      { class: 'user' },
      h('span', { class: 'avatar', title: this.user.username }, this.user.username.slice(0, 1).toUpperCase()),
      h('span', { class: 'user-name' }, this.user.username),
      h('a', { class: 'icon-btn', href: '#/tokens', title: 'API tokens', 'aria-label': 'API tokens', dataset: { action: 'tokens' } }, icon('key', 16)),
      h('button', { class: 'icon-btn', title: 'Sign out', 'aria-label': 'Sign out', onclick: () => void this.logout() }, icon('logout', 16)),
    );
  }
}
