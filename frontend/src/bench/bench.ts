/**
 * Editor benchmark (served at /static/bench.html?n=1000), no server needed.
 *
 * Mounts the real editor screen against an in-memory API with N synthetic
 * cells on a generated 1024x768 image, then measures:
 *  - tti_ms: data arrived -> first complete render of the map (interactive);
 *  - pan: a programmatic drag-pan (view interaction hints like DragPan), fps
 *    from rendered frames (map postrender) and requestAnimationFrame ticks;
 *  - drag: a vertex drag through the real Modify interaction driven by
 *    synthetic pointer events (falls back to direct geometry edits).
 * Results go to `window.__benchResult` (JSON) and <pre id="bench-result">.
 */
import 'ol/ol.css';
import '../styles.css';
import { ApiClient } from '../core/api';
import type { ApiCell, CellClass, ImageInfo, Point, Project } from '../core/types';
import { App } from '../ui/app';
import { EditorScreen } from '../ui/editor';

declare global {
  interface Window {
    __benchResult?: BenchResult;
    __benchEditor?: EditorScreen;
    /** The in-memory server state (lets UI tests simulate a concurrent save). */
    __benchServer?: { revision: number; cells: ApiCell[]; proposals: ApiCell[] };
  }
}

export interface BenchResult {
  n: number;
  render_mode: 'image' | 'vector';
  cells_loaded: number;
  proposals: number;
  tti_ms: number;
  load_to_features_ms: number;
  pan: FrameStats;
  drag: FrameStats & { mode: 'modify-interaction' | 'direct-geometry'; committed: boolean };
  viewport: [number, number];
  device_pixel_ratio: number;
  user_agent: string;
  ok: boolean;
  error?: string;
}

interface FrameStats {
  duration_ms: number;
  fps: number;
  raf_fps: number;
  frames: number;
  frame_ms_p50: number;
  frame_ms_p95: number;
  frame_ms_max: number;
}

const params = new URLSearchParams(location.search);
const N = Math.max(1, Math.min(20000, Number(params.get('n') ?? params.get('N') ?? 1000) || 1000));
const DURATION = Math.max(300, Number(params.get('ms') ?? 2000) || 2000);
const MODE = params.get('mode') === 'vector' ? 'vector' : 'image';
const W = 1024;
const H = 768;

// ------------------------------------------------------------------ data

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CLASSES: CellClass[] = [
  { id: 1, name: 'Follicular cell', color: '#a78bfa', model_label: 1, order: 1 },
  { id: 2, name: 'Lymphocyte', color: '#38bdf8', model_label: 2, order: 2 },
  { id: 3, name: 'Macrophage', color: '#fb923c', model_label: 3, order: 3 },
  { id: 4, name: 'Hürthle cell', color: '#4ade80', model_label: 4, order: 4 },
  { id: 5, name: 'Atypical', color: '#f472b6', model_label: 5, order: 5 },
];

function makeCells(n: number, seed: number, idBase: number): ApiCell[] {
  const rand = rng(seed);
  const scale = Math.min(1.6, Math.max(0.5, Math.sqrt(1000 / n)));
  const cells: ApiCell[] = [];
  for (let i = 0; i < n; i++) {
    const cx = 20 + rand() * (W - 40);
    const cy = 20 + rand() * (H - 40);
    const r = (9 + rand() * 9) * scale;
    const k = 24 + Math.floor(rand() * 16);
    const ph = rand() * Math.PI * 2;
    const ecc = 0.75 + rand() * 0.4;
    const rot = rand() * Math.PI;
    const poly: Point[] = [];
    for (let j = 0; j < k; j++) {
      const a = (j / k) * Math.PI * 2;
      const rr = r * (1 + 0.1 * Math.sin(3 * a + ph) + 0.04 * (rand() - 0.5));
      const x = rr * Math.cos(a);
      const y = rr * ecc * Math.sin(a);
      poly.push([
        Math.round((cx + x * Math.cos(rot) - y * Math.sin(rot)) * 100) / 100,
        Math.round((cy + x * Math.sin(rot) + y * Math.cos(rot)) * 100) / 100,
      ]);
    }
    cells.push({ id: idBase + i, class_id: CLASSES[Math.floor(rand() * CLASSES.length)].id, polygon: poly, layer: 'annotation', source: 'manual' });
  }
  return cells;
}

/** A Diff-Quik-like synthetic image with blobs under the cells. */
function makeImage(cells: ApiCell[], props: ApiCell[]): string {
  const c = document.createElement('canvas');
  c.width = W;
  c.height = H;
  const g = c.getContext('2d')!;
  const bg = g.createRadialGradient(W * 0.45, H * 0.4, 50, W / 2, H / 2, W * 0.7);
  bg.addColorStop(0, '#f3dde6');
  bg.addColorStop(1, '#dfc2d3');
  g.fillStyle = bg;
  g.fillRect(0, 0, W, H);
  const rand = rng(7);
  for (const cell of [...cells, ...props]) {
    const p = cell.polygon;
    g.beginPath();
    p.forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
    g.closePath();
    g.fillStyle = `rgba(${150 + rand() * 40},${110 + rand() * 30},${190 + rand() * 40},0.35)`;
    g.fill();
    const cx = p.reduce((s, q) => s + q[0], 0) / p.length;
    const cy = p.reduce((s, q) => s + q[1], 0) / p.length;
    g.beginPath();
    g.ellipse(cx + (rand() - 0.5) * 3, cy + (rand() - 0.5) * 3, 3 + rand() * 4, 3 + rand() * 3, rand() * 3, 0, Math.PI * 2);
    g.fillStyle = `rgba(${70 + rand() * 30},${40 + rand() * 20},${120 + rand() * 40},0.75)`;
    g.fill();
  }
  const img = g.getImageData(0, 0, W, H);
  const d = img.data;
  for (let i = 0; i < d.length; i += 4) {
    const n = (rand() - 0.5) * 14;
    d[i] += n;
    d[i + 1] += n;
    d[i + 2] += n;
  }
  g.putImageData(img, 0, 0);
  return c.toDataURL('image/jpeg', 0.9);
}

// ------------------------------------------------------------------ fake API

function fakeFetch(state: { revision: number; cells: ApiCell[]; proposals: ApiCell[] }, image: ImageInfo, project: Project) {
  let nextId = 1_000_000;
  const json = (body: unknown, status = 200) =>
    Promise.resolve(new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ETag: `"${state.revision}"` } }));
  return (input: string, init?: RequestInit): Promise<Response> => {
    const url = new URL(input, location.href);
    const path = url.pathname.replace(/^.*\/api\/v1\//, '');
    const method = init?.method ?? 'GET';
    if (path === 'auth/me') return json({ id: 1, username: 'bench', is_superuser: false, is_staff: false, memberships: [{ project: 1, role: 'annotator' }] });
    if (path === 'projects/1') return json(project);
    if (path === 'images/1') return json(image);
    if (path === 'images/1/cells' && method === 'GET') {
      const layer = url.searchParams.get('layer') ?? 'annotation';
      return json({ revision: state.revision, cells: layer === 'proposal' ? state.proposals : state.cells });
    }
    if (path === 'images/1/cells' && method === 'PUT') {
      const body = JSON.parse(String(init?.body)) as { revision: number; cells: { id?: number; class_id: number | null; polygon: Point[] }[] };
      if (body.revision !== state.revision) return json({ detail: 'Stale revision', revision: state.revision, cells: state.cells }, 409);
      state.revision += 1;
      state.cells = body.cells.map((c) => ({ id: c.id ?? nextId++, class_id: c.class_id, polygon: c.polygon, layer: 'annotation' }));
      return json({ revision: state.revision, cells: state.cells });
    }
    if (path === 'images/1/proposals/accept' || path === 'images/1/proposals/reject') {
      const body = JSON.parse(String(init?.body)) as { ids?: number[]; all?: boolean; revision?: number };
      const ids = new Set(body.all ? state.proposals.map((p) => p.id) : (body.ids ?? []));
      const taken = state.proposals.filter((p) => ids.has(p.id));
      state.proposals = state.proposals.filter((p) => !ids.has(p.id));
      if (path.endsWith('reject')) return json({ rejected: taken.length });
      if (body.revision !== state.revision) return json({ detail: 'Stale revision', revision: state.revision, cells: state.cells }, 409);
      state.revision += 1;
      state.cells = [...state.cells, ...taken.map((p) => ({ ...p, id: nextId++, layer: 'annotation' as const, source: 'model' }))];
      return json({ revision: state.revision, cells: state.cells });
    }
    if (path === 'images/1/transition') return json({ detail: 'Not found.' }, 404);
    if (path.startsWith('projects/1/images')) return json({ count: 1, next: null, previous: null, results: [image] });
    return json({ detail: 'Not found.' }, 404);
  };
}

// ------------------------------------------------------------------ measuring

const nextFrame = () => new Promise<number>((r) => requestAnimationFrame(r));

function stats(frameTimes: number[], rendered: number, duration: number, rafTicks: number): FrameStats {
  const s = [...frameTimes].sort((a, b) => a - b);
  const q = (p: number) => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : 0);
  const r1 = (x: number) => Math.round(x * 10) / 10;
  return {
    duration_ms: Math.round(duration),
    fps: r1((rendered * 1000) / duration),
    raf_fps: r1((rafTicks * 1000) / duration),
    frames: rendered,
    frame_ms_p50: r1(q(0.5)),
    frame_ms_p95: r1(q(0.95)),
    frame_ms_max: r1(s[s.length - 1] ?? 0),
  };
}

async function measure(editor: EditorScreen, body: (t: number) => void): Promise<FrameStats> {
  const map = editor.view!.map;
  let rendered = 0;
  let lastRender = 0;
  const gaps: number[] = [];
  const onRender = () => {
    const now = performance.now();
    if (lastRender) gaps.push(now - lastRender);
    lastRender = now;
    rendered++;
  };
  map.on('postrender', onRender);
  const t0 = await nextFrame();
  let ticks = 0;
  let now = t0;
  while (now - t0 < DURATION) {
    body((now - t0) / DURATION);
    now = await nextFrame();
    ticks++;
  }
  await nextFrame();
  map.un('postrender', onRender);
  return stats(gaps, rendered, now - t0, ticks);
}

async function panTest(editor: EditorScreen): Promise<FrameStats> {
  const v = editor.view!;
  v.fit();
  v.map.renderSync();
  const c0 = v.view.getCenter()!;
  const res = v.view.getResolution()!;
  v.view.beginInteraction(); // what DragPan does
  const st = await measure(editor, (f) => {
    const a = f * Math.PI * 4;
    v.view.setCenter([c0[0] + Math.sin(a) * 220 * res, c0[1] + (1 - Math.cos(a)) * 120 * res]);
  });
  v.view.endInteraction();
  v.view.setCenter(c0);
  return st;
}

function pointer(type: string, target: EventTarget, x: number, y: number, buttons: number): void {
  target.dispatchEvent(
    new PointerEvent(type, {
      bubbles: true,
      cancelable: true,
      composed: true,
      clientX: x,
      clientY: y,
      button: type === 'pointermove' ? -1 : 0,
      buttons,
      pointerId: 1,
      pointerType: 'mouse',
      isPrimary: true,
    }),
  );
}

async function dragTest(editor: EditorScreen): Promise<BenchResult['drag']> {
  const v = editor.view!;
  const map = v.map;
  v.fit();
  // the cell nearest the centre, zoomed to what a user would edit at
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of editor.store.all()) {
    const [x, y] = c.polygon[0];
    const d = Math.hypot(x - W / 2, y - H / 2);
    if (d < bestD) {
      bestD = d;
      best = c.key;
    }
  }
  if (!best) throw new Error('no cell');
  const cell = editor.store.get(best)!;
  editor.selection.set([best]);
  map.renderSync();
  await nextFrame();
  const vertex = v.frame.toMap(cell.polygon[0]);
  const versionBefore = editor.store.version;
  const viewport = map.getViewport() as HTMLElement;
  const rect = viewport.getBoundingClientRect();
  const px = map.getPixelFromCoordinate(vertex);
  const x0 = rect.left + px[0];
  const y0 = rect.top + px[1];
  pointer('pointermove', viewport, x0, y0, 0);
  map.renderSync();
  pointer('pointerdown', viewport, x0, y0, 1);
  let moved = 0;
  const st = await measure(editor, (f) => {
    const a = f * Math.PI * 4;
    pointer('pointermove', document, x0 + Math.sin(a) * 40, y0 + (1 - Math.cos(a)) * 25, 1);
    moved++;
  });
  pointer('pointerup', document, x0 + 10, y0 + 10, 0);
  await nextFrame();
  const committed = editor.store.version > versionBefore;
  if (committed && moved > 0) return { ...st, mode: 'modify-interaction', committed };

  // fallback: edit the active feature's geometry each frame (what Modify does)
  const f = v.feature(best)!;
  const g = f.getGeometry()!;
  const ring = g.getCoordinates()[0];
  const st2 = await measure(editor, (fr) => {
    const a = fr * Math.PI * 4;
    const r = ring.slice();
    r[0] = [vertex[0] + Math.sin(a) * 20, vertex[1] + (1 - Math.cos(a)) * 12];
    r[r.length - 1] = r[0];
    g.setCoordinates([r]);
  });
  return { ...st2, mode: 'direct-geometry', committed: false };
}

// ------------------------------------------------------------------ run

async function run(): Promise<void> {
  const root = document.getElementById('app')!;
  const cells = makeCells(N, 42, 1);
  const proposals = makeCells(Math.max(10, Math.round(N / 8)), 99, 500_000).map((c) => ({ ...c, layer: 'proposal' as const, score: 0.5 + (c.id % 50) / 100, source: 'model', label: null }));
  const imageUrl = makeImage(cells, proposals);
  const now = new Date().toISOString();
  const project: Project = {
    id: 1, name: 'Benchmark', description: 'Synthetic data', classes: CLASSES, experts_required: 2, quorum: null, match_iou: 0.5, auto_presegment: false, pipeline: {}, my_role: 'annotator', image_count: 1, created_at: now,
  };
  const image: ImageInfo = {
    id: 1, project: 1, file_name: `synthetic_${N}_cells.png`, width: W, height: H, bethesda: 'II', stain: 'Diff-Quik', magnification: '40x', slide_code: 'BENCH',
    split: 'test', status: 'annotating', presegment_status: 'done', presegment_error: '', presegment_model: null, presegment_model_label: null, presegment_proposals: null, presegment_tiles_done: 0, presegment_tiles_total: 0, revision: 1, cell_count: N, original_format: 'png', bit_depth: 8, size_bytes: 0, sha256: '',
    thumbnail_url: imageUrl, display_url: imageUrl, created_at: now, updated_at: now,
    tiled: false, tile_status: 'none', tile_error: '', tiles: null, mpp_x: null, mpp_y: null, objective_power: null,
  };
  const state = { revision: 1, cells, proposals };
  window.__benchServer = state;
  const api = new ApiClient({ fetch: fakeFetch(state, image, project), getCookies: () => '' });
  const app = new App(root, {} as never, api);
  app.user = { id: 1, username: 'bench', is_superuser: false, is_staff: false, memberships: [{ project: 1, role: 'annotator' }] };

  let interactive: { dataArrivedAt: number; interactiveAt: number } | null = null;
  const interactiveP = new Promise<void>((resolve) => {
    const editor = new EditorScreen(app, 1, 1, {
      imageUrl,
      renderMode: MODE,
      onInteractive: (i) => {
        interactive = i;
        resolve();
      },
    });
    window.__benchEditor = editor;
    void editor.mount(root);
  });
  const editor = window.__benchEditor!;
  await editor.ready;
  const featuresBuiltAt = performance.now();
  await interactiveP;
  const it = interactive as unknown as { dataArrivedAt: number; interactiveAt: number };
  await nextFrame();
  await nextFrame();

  const result: BenchResult = {
    n: N,
    render_mode: MODE,
    cells_loaded: editor.store.size,
    proposals: editor.proposals.size,
    tti_ms: Math.round(it.interactiveAt - it.dataArrivedAt),
    load_to_features_ms: Math.round(featuresBuiltAt - it.dataArrivedAt),
    pan: await panTest(editor),
    drag: await dragTest(editor),
    viewport: editor.view!.map.getSize() as [number, number],
    device_pixel_ratio: devicePixelRatio,
    user_agent: navigator.userAgent,
    ok: true,
  };
  editor.selection.clear();
  editor.view!.fit();
  finish(result);
}

function finish(result: BenchResult): void {
  window.__benchResult = result;
  const pre = document.createElement('pre');
  pre.id = 'bench-result';
  pre.hidden = true;
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
  document.title = result.ok ? 'bench: done' : 'bench: failed';
  console.log('__benchResult', JSON.stringify(result));
}

run().catch((e: unknown) => {
  finish({
    n: N, render_mode: MODE, cells_loaded: 0, proposals: 0, tti_ms: -1, load_to_features_ms: -1,
    pan: stats([], 0, 1, 0), drag: { ...stats([], 0, 1, 0), mode: 'direct-geometry', committed: false },
    viewport: [0, 0], device_pixel_ratio: devicePixelRatio, user_agent: navigator.userAgent, ok: false, error: String((e as Error)?.stack ?? e),
  });
});
