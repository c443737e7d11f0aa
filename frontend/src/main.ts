import 'ol/ol.css';
import './styles.css';
import type { Route } from './core/router';
import { AdjudicateScreen } from './ui/adjudicate';
import { AdminScreen } from './ui/admin';
import { App } from './ui/app';
import { EditorScreen } from './ui/editor';
import { ImagesScreen } from './ui/images';
import { JobScreen } from './ui/job';
import { LoginScreen } from './ui/login';
import { ProjectsScreen } from './ui/projects';
import { ReviewScreen } from './ui/review';
import { TokensScreen } from './ui/tokens';
import { h } from './ui/dom';

const root = document.getElementById('app')!;

type R<N extends Route['name']> = Extract<Route, { name: N }>;

const app = new App(root, {
  login: (a, r) => new LoginScreen(a, r as R<'login'>),
  projects: (a) => new ProjectsScreen(a),
  tokens: (a) => new TokensScreen(a),
  images: (a, r) => new ImagesScreen(a, (r as R<'images'>).projectId),
  editor: (a, r) => new EditorScreen(a, (r as R<'editor'>).projectId, (r as R<'editor'>).imageId),
  review: (a, r) => new ReviewScreen(a, (r as R<'review'>).projectId, (r as R<'review'>).imageId, (r as R<'review'>).regionId ?? null),
  adjudicate: (a, r) => new AdjudicateScreen(a, (r as R<'adjudicate'>).projectId, (r as R<'adjudicate'>).imageId, (r as R<'adjudicate'>).regionId ?? null),
  admin: (a, r) => new AdminScreen(a, (r as R<'admin'>).projectId, (r as R<'admin'>).tab),
  job: (a, r) => new JobScreen(a, (r as R<'job'>).projectId, (r as R<'job'>).jobId),
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
