/**
 * The base of the three map screens (the annotator's editor, the expert's
 * review, adjudication). They show one image in the same viewer shell and
 * differ only in their data, panels and keys, so everything else lives here
 * once: the header (crumbs, status pill, undo / redo, next, submit, help), the
 * toolbar with zoom / fit, the OpenLayers map and its fit, the keyboard routing
 * (commands, the active tool, view keys, then the screen's own keys), the
 * status-bar readouts and the teardown of every listener.
 *
 * A screen supplies {@link MapScreen.layout}, {@link MapScreen.load} (fetch,
 * then {@link MapScreen.openMap} and {@link MapScreen.begin}), its wiring,
 * rendering and keys through the abstract methods below.
 */
import { ClassPalette } from '../core/classes';
import type { Segmenter } from '../core/interactive';
import { ProposalStore } from '../core/proposals';
import { nextFromQueue } from '../core/queue';
import { routeHash } from '../core/router';
import { Selection } from '../core/selection';
import { AnnotationStore } from '../core/store';
import type { ImageInfo, Project, QueueKind } from '../core/types';
import type { RegionList } from '../core/regions';
import type { Tool, ToolContext, ToolId } from '../tools';
import { EditorMap, type EditorMapOptions } from '../view/editorMap';
import type { App, Screen } from './app';
import { formatStatus, h, icon, listen, statusTone, type Child } from './dom';
import { dialog, dialogOpen, toast, type DialogHandle } from './overlay';
import { buildShell, errText, isTyping, overlayMessage, viewKey, wireReadouts, zoomButtons, type Shell } from './viewer';

/** What a screen puts into the shared shell. */
export interface MapScreenLayout {
  /** Modifier class of the screen root (`review-screen`…). */
  className?: string;
  /** Badge after the file name in the crumbs. */
  badge?: HTMLElement;
  /** Top-bar controls, left of the help button. */
  actions: Child[];
  /** Toolbar buttons after the tools (the zoom buttons come last). */
  toolbarExtra?: HTMLElement[];
  /** Sections of the side panel. */
  panel: HTMLElement[];
  widePanel?: boolean;
}

/** The message shown over the map when loading failed. */
export interface LoadFailure {
  title: string;
  message: string;
  actions: Child[];
}

export interface HelpContent {
  title: string;
  sections: HTMLElement[];
}

export abstract class MapScreen implements Screen {
  readonly store = new AnnotationStore();
  readonly selection = new Selection();
  readonly proposals = new ProposalStore();
  view: EditorMap | null = null;
  protected palette = new ClassPalette([]);
  protected image: ImageInfo | null = null;
  protected tool: Tool | null = null;
  /** Nothing may change (a submitted review, an image not waiting for adjudication). */
  protected readOnly = false;
  protected alive = true;
  protected busy = false;
  /** Uninstallers of every listener, run on unmount. */
  protected offs: (() => void)[] = [];

  protected shell!: Shell;
  protected crumbProject!: HTMLElement;
  protected titleEl!: HTMLElement;
  protected statusPill!: HTMLElement;
  protected submitBtn!: HTMLButtonElement;
  /** Only on the screens with an undo history of their own ({@link historyControls}). */
  protected undoBtn: HTMLButtonElement | null = null;
  protected redoBtn: HTMLButtonElement | null = null;
  private helpDialog: DialogHandle | null = null;

  /**
   * @param tools the tools of the screen's toolbar.
   * @param toolKeys which tool takes the keys before the screen: every tool, or only the draw
   *   tool (the screens that decide on cells, where the select tool's Delete must not delete one).
   */
  constructor(
    protected readonly app: App,
    readonly projectId: number,
    readonly imageId: number,
    protected readonly tools: Tool[],
    private readonly toolKeys: 'all' | 'draw' = 'all',
  ) {}

  // ================================================================ what a screen supplies

  /** Builds the screen's own elements (called once, before loading). */
  protected abstract layout(): MapScreenLayout;
  /** Fetches the data, then {@link openMap} and {@link begin}. */
  protected abstract load(): Promise<void>;
  /** The overlay message when {@link load} failed. */
  protected abstract loadFailure(e: unknown): LoadFailure;
  /** The screen's listeners (push their uninstallers to {@link offs}). */
  protected abstract wire(): void;
  protected abstract renderAll(): void;
  /** After a tool was activated (status-bar hint…). */
  protected abstract toolChanged(tool: Tool): void;
  /** The screen's keys once the commands, the tool and the view keys passed; true when handled. */
  protected abstract onKey(e: KeyboardEvent): boolean;
  protected abstract activeClassId(): number | null;
  /**
   * The screens that walk through items (cells to review, disputes) go to the next one with
   * N / Tab and back with P / Shift+Tab.
   */
  protected step?(dir: 1 | -1): void;
  protected abstract help(): HelpContent;
  protected abstract nextImage(): Promise<void>;
  protected abstract submit(): Promise<void>;

  // ================================================================ lifecycle

  async mount(root: HTMLElement): Promise<void> {
    root.append(this.buildLayout());
    try {
      await this.load();
    } catch (e) {
      if (!this.alive) return;
      const f = this.loadFailure(e);
      overlayMessage(this.shell.overlay, f.title, f.message, f.actions);
    }
  }

  unmount(): void {
    this.alive = false;
    for (const off of this.offs) off();
    this.offs = [];
    this.tool?.deactivate();
    this.stop();
    this.view?.destroy();
    this.helpDialog?.close();
  }

  /** Stops the screen's own machinery (savers, dialogs) on unmount. */
  protected stop(): void {}

  // ================================================================ layout

  private buildLayout(): HTMLElement {
    this.crumbProject = h('a', { class: 'crumb', href: routeHash({ name: 'images', projectId: this.projectId }) }, '…');
    this.titleEl = h('span', { class: 'crumb current file' }, `Image ${this.imageId}`);
    this.statusPill = h('span', { class: 'pill pill-neutral' }, '…');
    const l = this.layout();
    const top = this.app.topbar(
      [h('a', { class: 'crumb', href: '#/projects' }, 'Projects'), h('span', { class: 'crumb-sep' }, '/'), this.crumbProject, h('span', { class: 'crumb-sep' }, '/'), this.titleEl, l.badge, this.statusPill],
      [...l.actions, h('button', { class: 'icon-btn', title: 'Keyboard shortcuts (?)', 'aria-label': 'Keyboard shortcuts', 'aria-keyshortcuts': '?', onclick: () => this.toggleHelp() }, icon('help'))],
    );
    this.shell = buildShell(top, l.className);
    this.shell.toolbar.append(
      ...this.tools.map((t) => h('button', { class: 'tool-btn', dataset: { tool: t.id }, title: this.toolTitle(t), 'aria-label': t.label, 'aria-keyshortcuts': t.shortcut, onclick: () => this.setTool(t.id) }, icon(t.id, 20), h('span', { class: 'tool-key' }, t.shortcut))),
      ...(l.toolbarExtra ?? []),
      ...zoomButtons(() => this.view),
    );
    if (l.widePanel) this.shell.panel.classList.add('wide');
    this.shell.panel.append(...l.panel);
    return this.shell.root;
  }

  protected toolTitle(t: Tool): string {
    return `${t.label} (${t.shortcut})`;
  }

  /** Save status, undo and redo, for {@link MapScreenLayout.actions}. */
  protected historyControls(saveEl: HTMLElement): Child[] {
    this.undoBtn = h('button', { class: 'icon-btn', title: 'Undo (Ctrl+Z)', 'aria-label': 'Undo', 'aria-keyshortcuts': 'Control+Z', disabled: true, onclick: () => this.undo() }, icon('undo'));
    this.redoBtn = h('button', { class: 'icon-btn', title: 'Redo (Ctrl+Shift+Z)', 'aria-label': 'Redo', 'aria-keyshortcuts': 'Control+Shift+Z', disabled: true, onclick: () => this.redo() }, icon('redo'));
    return [saveEl, h('span', { class: 'divider' }), this.undoBtn, this.redoBtn, h('span', { class: 'divider' })];
  }

  protected nextButton(label: string, title: string): HTMLElement {
    return h('button', { class: 'btn btn-sm', onclick: () => void this.nextImage(), title }, label, icon('next', 15));
  }

  /** The primary submit button (kept in {@link submitBtn}). */
  protected submitButton(label: string, title: string, action?: string): HTMLButtonElement {
    this.submitBtn = h('button', { class: 'btn btn-primary btn-sm', dataset: action ? { action } : undefined, onclick: () => void this.submit(), title }, icon('send', 15), label);
    return this.submitBtn;
  }

  // ================================================================ loading

  /** Project name, file name and class palette once they are loaded. */
  protected showHeader(project: Project, image: ImageInfo): void {
    this.palette = new ClassPalette(project.classes);
    this.crumbProject.textContent = project.name;
    this.titleEl.textContent = image.file_name;
  }

  /** Creates the map of the image (over the stores), fits it and hides the loading overlay. */
  protected openMap(image: ImageInfo, opts: Partial<EditorMapOptions> = {}): EditorMap {
    const { imageUrl, ...rest } = opts;
    this.store.setBounds(image.width, image.height);
    this.view = new EditorMap({
      target: this.shell.mapEl,
      width: image.width,
      height: image.height,
      imageUrl: imageUrl ?? image.display_url ?? this.app.api.imageFileUrl(image.id, 'display'),
      tiles: image.tiles,
      palette: this.palette,
      store: this.store,
      proposals: this.proposals,
      selection: this.selection,
      ...rest,
    });
    this.view.fit();
    this.shell.overlay.hidden = true;
    if (image.tiled && !image.tiles) {
      // a slide is shown by its tiles only: say why the map is empty instead of showing nothing
      const why = image.tile_status === 'failed' ? `its tiles could not be built: ${image.tile_error}` : 'its tiles are still being built; open it again in a moment';
      toast(`This slide cannot be shown yet: ${why}`, image.tile_status === 'failed' ? 'error' : 'info', 10000);
    }
    return this.view;
  }

  /** After {@link openMap}: the listeners, the select tool and the first render. */
  protected begin(): void {
    const v = this.view!;
    const onKeyUp = (e: KeyboardEvent) => {
      if (e.key === ' ' && v.spaceDown) {
        v.spaceDown = false;
        this.shell.mapEl.classList.remove('panning');
      }
    };
    this.offs.push(
      wireReadouts(v, this.shell.mapEl, this.shell.coordEl, this.shell.zoomEl),
      listen(document, 'keydown', (e: KeyboardEvent) => this.onKeyDown(e)),
      listen(document, 'keyup', onKeyUp),
    );
    if (this.undoBtn) this.offs.push(this.store.history.events.on('change', () => this.renderHistory()));
    this.wire();
    this.setTool('select');
    this.renderAll();
  }

  /** Warns before the page unloads while `unsaved()` says so. */
  protected warnBeforeUnload(unsaved: () => boolean): void {
    const onUnload = (e: BeforeUnloadEvent) => {
      if (!unsaved()) return undefined;
      e.preventDefault();
      e.returnValue = '';
      return '';
    };
    this.offs.push(listen(window, 'beforeunload', onUnload));
  }

  // ================================================================ tools

  setTool(id: ToolId): void {
    if (!this.mayUse(id)) return;
    const next = this.tools.find((t) => t.id === id);
    if (!next || !this.view) return;
    this.tool?.deactivate();
    this.tool = next;
    next.activate(this.toolContext());
    this.toolChanged(next);
    for (const b of this.shell.toolbar.querySelectorAll<HTMLElement>('[data-tool]')) b.classList.toggle('active', b.dataset.tool === id);
  }

  protected mayUse(_id: ToolId): boolean {
    return true;
  }

  protected snapEnabled(): boolean {
    return false;
  }

  /** The server's click and box prompts for this image (the editor has them). */
  protected segmenter(): Segmenter | undefined {
    return undefined;
  }

  /** The image's regions of interest (the editor has them). */
  protected regionList(): RegionList | undefined {
    return undefined;
  }

  private toolContext(): ToolContext {
    return {
      store: this.store,
      selection: this.selection,
      proposals: this.proposals,
      palette: this.palette,
      view: this.view ?? undefined,
      segmenter: this.segmenter(),
      regions: this.regionList(),
      activeClassId: () => this.activeClassId(),
      snapEnabled: () => this.snapEnabled(),
      notify: (m, k) => toast(m, k),
      setTool: (id) => this.setTool(id),
    };
  }

  // ================================================================ history

  undo(): void {
    if (this.readOnly) return;
    if (this.store.undo()) this.pruneSelection();
    else toast('Nothing to undo');
  }

  redo(): void {
    if (this.readOnly) return;
    if (this.store.redo()) this.pruneSelection();
    else toast('Nothing to redo');
  }

  /** Drops the selected cells an undo / redo removed. */
  protected pruneSelection(): void {
    const gone = this.selection.cells().filter((k) => !this.store.has(k));
    if (gone.length) this.selection.remove(gone);
  }

  protected renderHistory(): void {
    if (!this.undoBtn || !this.redoBtn) return;
    const st = this.store.history.state();
    this.undoBtn.disabled = this.readOnly || !st.canUndo;
    this.redoBtn.disabled = this.readOnly || !st.canRedo;
    this.undoBtn.title = st.undoLabel ? `Undo ${st.undoLabel} (Ctrl+Z)` : 'Undo (Ctrl+Z)';
    this.redoBtn.title = st.redoLabel ? `Redo ${st.redoLabel} (Ctrl+Shift+Z)` : 'Redo (Ctrl+Shift+Z)';
  }

  // ================================================================ keyboard

  private onKeyDown(e: KeyboardEvent): void {
    const v = this.view;
    if (!v || !this.alive || dialogOpen()) return;
    if (isTyping(e)) {
      if (e.key === 'Escape') (e.target as HTMLElement).blur();
      this.onTypingKey(e);
      return;
    }
    if (e.ctrlKey || e.metaKey) {
      if (this.onCommandKey(e)) e.preventDefault();
      return;
    }
    if (this.toolKey(e) || viewKey(e, v, this.shell.mapEl)) {
      e.preventDefault();
      return;
    }
    if (e.altKey) return;
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (k === '?') this.toggleHelp();
    else if (this.step && (k === 'Tab' || k === 'n')) this.step(e.shiftKey ? -1 : 1);
    else if (this.step && k === 'p') this.step(-1);
    else if (!this.onKey(e)) return;
    e.preventDefault();
  }

  /** A key typed into a field of the screen (Escape already left the field). */
  protected onTypingKey(_e: KeyboardEvent): void {}

  /** Ctrl / Cmd shortcuts; true when handled. */
  protected onCommandKey(e: KeyboardEvent): boolean {
    const k = e.key.toLowerCase();
    if (k === 'z' && !e.shiftKey) this.undo();
    else if ((k === 'z' && e.shiftKey) || k === 'y') this.redo();
    else return false;
    return true;
  }

  /** Lets the active tool take the key first (Enter closes a polygon…); true when it did. */
  private toolKey(e: KeyboardEvent): boolean {
    if (this.readOnly) return false; // the tools' keys edit (Delete removes the selected cells…)
    if (this.toolKeys === 'draw' && this.tool?.id !== 'draw') return false;
    return !!this.tool?.onKey?.(e);
  }

  // ================================================================ rendering / dialogs

  protected renderStatus(): void {
    const s = this.image?.status;
    this.statusPill.className = `pill pill-${statusTone(s)}`;
    this.statusPill.textContent = formatStatus(s);
  }

  protected toggleHelp(): void {
    if (this.helpDialog) {
      this.helpDialog.close();
      return;
    }
    const { title, sections } = this.help();
    this.helpDialog = dialog({ title, wide: true, body: h('div', { class: 'help-grid' }, sections), onClose: () => (this.helpDialog = null) });
  }

  /** Runs a submission with the screen busy and the submit button disabled. */
  protected async submitting(run: () => Promise<void>): Promise<void> {
    this.busy = true;
    this.submitBtn.disabled = true;
    try {
      await run();
    } finally {
      this.busy = false;
      this.submitBtn.disabled = this.readOnly;
    }
  }

  /** The next image of the work queue for this screen's role (`regionId`: the region of this slide open now, skipped). */
  protected async nextInQueue(kind: QueueKind, noneLeft: string, regionId: number | null = null): Promise<void> {
    try {
      const next = await nextFromQueue(this.app.api, this.projectId, [kind], this.imageId, regionId);
      if (next) this.app.navigate(next.route);
      else toast(noneLeft, 'success');
    } catch (e) {
      toast(errText(e), 'error');
    }
  }
}
