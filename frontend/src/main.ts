import 'ol/ol.css';
import './styles.css';
import type { Route } from './core/router';
import { App } from './ui/app';
import { EditorScreen } from './ui/editor';
import { ImagesScreen } from './ui/images';
import { LoginScreen } from './ui/login';
import { ProjectsScreen } from './ui/projects';
import { h } from './ui/dom';

const root = document.getElementById('app')!;

const app = new App(root, {
  login: (a, r) => new LoginScreen(a, r as Extract<Route, { name: 'login' }>),
  projects: (a) => new ProjectsScreen(a),
  images: (a, r) => new ImagesScreen(a, (r as Extract<Route, { name: 'images' }>).projectId),
  editor: (a, r) => {
    const e = r as Extract<Route, { name: 'editor' }>;
    return new EditorScreen(a, e.projectId, e.imageId);
  },
  notfound: (a) => ({
    mount(el: HTMLElement) {
      el.append(
        a.topbar([]),
        h('main', { class: 'page' }, h('div', { class: 'empty' }, h('h3', null, 'Page not found'), h('a', { class: 'btn', href: '#/projects' }, 'Go to projects'))),
      );
    },
    unmount() {},
  }),
});
app.start();
