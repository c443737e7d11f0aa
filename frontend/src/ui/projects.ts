import { ApiError } from '../core/api';
import type { Project } from '../core/types';
import type { App, Screen } from './app';
import { h, icon } from './dom';

export class ProjectsScreen implements Screen {
  private alive = true;
  constructor(private readonly app: App) {}

  async mount(root: HTMLElement): Promise<void> {
    const list = h('div', { class: 'project-grid' }, h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading projects…'));
    root.append(
      this.app.topbar([h('span', { class: 'crumb current' }, 'Projects')]),
      h('main', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Projects')), list),
    );
    try {
      const all: Project[] = [];
      for (let page = 1; page <= 20; page++) {
        const res = await this.app.api.listProjects(page);
        all.push(...res.results);
        if (!res.next) break;
      }
      if (!this.alive) return;
      list.replaceChildren(
        ...(all.length
          ? all.map((p) => this.card(p))
          : [h('div', { class: 'empty' }, h('h3', null, 'No projects yet'), h('p', { class: 'muted' }, 'Ask an administrator to add you to a project.'))]),
      );
    } catch (e) {
      if (!this.alive) return;
      list.replaceChildren(h('div', { class: 'empty error' }, h('h3', null, 'Could not load projects'), h('p', null, e instanceof ApiError ? e.detail : String(e))));
    }
  }

  private card(p: Project): HTMLElement {
    return h(
      'a',
      { class: 'card project-card', href: `#/projects/${p.id}` },
      h('div', { class: 'project-card-head' }, h('h3', null, p.name), p.my_role ? h('span', { class: `badge role-${p.my_role}` }, p.my_role) : null),
      p.description ? h('p', { class: 'muted clamp-2' }, p.description) : h('p', { class: 'muted' }, '\u00a0'),
      h(
        'div',
        { class: 'chips' },
        [...p.classes]
          .sort((a, b) => a.order - b.order)
          .slice(0, 8)
          .map((c) => h('span', { class: 'chip' }, h('i', { class: 'swatch', style: { background: c.color } }), c.name)),
      ),
      h('div', { class: 'project-card-foot' }, icon('image', 16), `${p.image_count} image${p.image_count === 1 ? '' : 's'}`, h('span', { class: 'grow' }), icon('next', 16)),
    );
  }

  unmount(): void {
    this.alive = false;
  }
}
