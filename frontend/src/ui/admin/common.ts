/**
 * Pieces shared by the administration pages (the tabs of index.ts and the
 * job page, ../job.ts): the page frame with its tabs, the panel base, error
 * and progress displays.
 */
import { ApiError } from '../../core/api';
import { metricHelp, metricHelpId, metricLabel } from '../../core/metrics';
import { PROJECT_ADMIN_TABS, routeHash, STAFF_TABS, type AdminTab } from '../../core/router';
import type { Project } from '../../core/types';
import type { App } from '../app';
import { h, icon, type Child } from '../dom';
import { errText } from '../viewer';

const TABS: { tab: AdminTab; label: string; icon: string }[] = [
  { tab: 'training', label: 'Training', icon: 'sparkles' },
  { tab: 'models', label: 'Model registry', icon: 'layers' },
  { tab: 'schedule', label: 'Retraining schedule', icon: 'cloud' },
  { tab: 'agreement', label: 'Expert agreement', icon: 'check' },
  { tab: 'verification', label: 'Verification', icon: 'users' },
  { tab: 'members', label: 'Members', icon: 'users' },
  { tab: 'webhooks', label: 'Webhooks', icon: 'webhook' },
  { tab: 'workers', label: 'Workers & queue', icon: 'cpu' },
];

/**
 * Staff see the platform-wide tabs; the others are the project admins'. Those that hold
 * secrets (webhooks) appear only once the project is known to be one the user administers.
 */
export function tabVisible(tab: AdminTab, user: App['user'], project: Pick<Project, 'my_role'> | null = null): boolean {
  if (STAFF_TABS.includes(tab)) return !!user?.is_staff;
  if (PROJECT_ADMIN_TABS.includes(tab)) return !!project && (project.my_role === 'admin' || !!user?.is_superuser);
  return true;
}

/** One tab of the administration screen. */
export abstract class AdminPanel {
  /** False once the tab was left: late answers are dropped. */
  protected alive = true;

  constructor(
    protected readonly app: App,
    protected readonly project: Project,
  ) {}

  abstract mount(el: HTMLElement): void | Promise<void>;

  dispose(): void {
    this.alive = false;
  }
}

export interface AdminPage {
  /** Top bar and page, to append to the screen root. */
  nodes: HTMLElement[];
  /** Where the project name goes once it is known. */
  projectName: HTMLElement;
  content: HTMLElement;
  /** The project, once known: its name in the crumbs, and the tabs its admins alone see. */
  setProject(project: Project): void;
}

/** The frame of an administration page: crumbs, title, tabs and an empty content element. */
export function adminPage(app: App, projectId: number, current: AdminTab | 'job', extraCrumb?: Child): AdminPage {
  const projectName = h('span', null, '…');
  const content = h('div', { class: 'admin-content' });
  const header = app.topbar([
    h('a', { class: 'crumb', href: '#/projects' }, 'Projects'),
    h('span', { class: 'crumb-sep' }, '/'),
    h('a', { class: 'crumb', href: routeHash({ name: 'images', projectId }) }, projectName),
    h('span', { class: 'crumb-sep' }, '/'),
    h('a', { class: `crumb ${extraCrumb ? '' : 'current'}`, href: routeHash({ name: 'admin', projectId, tab: current === 'job' ? 'training' : current }) }, 'Administration'),
    extraCrumb ? [h('span', { class: 'crumb-sep' }, '/'), extraCrumb] : null,
  ]);
  const tabLinks = (project: Project | null) =>
    TABS.filter((t) => tabVisible(t.tab, app.user, project)).map((t) => h('a', { class: `tab ${t.tab === current || (current === 'job' && t.tab === 'training') ? 'active' : ''}`, href: routeHash({ name: 'admin', projectId, tab: t.tab }) }, icon(t.icon, 15), t.label));
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Administration' }, tabLinks(null));
  const page = h('main', { class: 'page wide' }, h('div', { class: 'page-head' }, h('h1', null, 'Administration')), tabs, content);
  const setProject = (project: Project) => {
    projectName.textContent = project.name;
    tabs.replaceChildren(...tabLinks(project));
  };
  return { nodes: [header, page], projectName, content, setProject };
}

export function forbidden(e: unknown): HTMLElement {
  const msg = e instanceof ApiError && e.status === 403 ? 'Only the administrators of this project can see this page.' : errText(e);
  return h('div', { class: 'empty error' }, h('h3', null, e instanceof ApiError && e.status === 403 ? 'Administrators only' : 'Could not load'), h('p', null, msg));
}

export function loadingBlock(text: string): HTMLElement {
  return h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), text);
}

/** Server field errors that no form field shows. */
export function errorList(errors: Record<string, unknown>): HTMLElement | null {
  const lines = Object.entries(errors).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`);
  return lines.length ? h('ul', { class: 'form-errors' }, lines.map((l) => h('li', null, l))) : null;
}

export function fmtDate(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isFinite(d.getTime()) ? d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }) : '—';
}

export function progressBar(fraction: number | null, opts: { live?: boolean; big?: boolean; label?: string } = {}): HTMLElement {
  const pctv = fraction == null ? null : Math.round(fraction * 1000) / 10;
  return h(
    'div',
    // a progressbar needs a name for screen readers; an unknown value leaves aria-valuenow out (indeterminate)
    { class: `progress-bar ${opts.big ? 'big' : ''} ${fraction == null && opts.live ? 'indeterminate' : ''}`, role: 'progressbar', 'aria-label': opts.label ?? 'Progress', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': pctv == null ? null : String(pctv) },
    h('div', { class: `progress-fill ${opts.live ? 'live' : ''}`, style: { width: `${pctv ?? (opts.live ? 30 : 0)}%` } }),
  );
}

/**
 * The legend under a metrics table: each abbreviation and what it means in
 * plain words. Entries carry ids that the table heads' aria-describedby point
 * to, so a screen reader reads the explanation with the column.
 */
// whether the user opened or folded each legend: the panels re-render (polling), which must not undo it
const legendOpen = new Map<string, boolean>();

export function metricLegend(metrics: string[], scope: string, open = true): HTMLElement {
  return h(
    'details',
    {
      class: 'metric-legend',
      open: legendOpen.get(scope) ?? open,
      dataset: { testid: `${scope}-metric-legend` },
      ontoggle: (e: Event) => legendOpen.set(scope, (e.currentTarget as HTMLDetailsElement).open),
    },
    h('summary', { class: 'muted small' }, 'What the metrics mean'),
    h('dl', null, metrics.map((m) => [h('dt', null, metricLabel(m)), h('dd', { id: metricHelpId(m, scope), dataset: { metric: m } }, metricHelp(m))])),
  );
}
