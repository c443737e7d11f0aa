/**
 * The editor's dialogs: the save conflict (which version to keep), signing in
 * again after the session ended (the edits stay), the reviewers of the image
 * (admins), and the keyboard help.
 */
import { ApiError, type ApiClient } from '../core/api';
import type { Conflict } from '../core/autosave';
import type { ClassPalette } from '../core/classes';
import type { AnnotationStore, Cell } from '../core/store';
import type { Tool } from '../tools';
import { h, replaceChildren } from './dom';
import { dialog, toast, type DialogHandle } from './overlay';
import { errText, helpRow } from './viewer';

export interface ConflictChoices {
  /** The conflict comes from edits left in this browser (not from a save just now). */
  fromBackup: boolean;
  keepBoth(): void;
  keepMine(): void;
  takeTheirs(): void;
}

/** The 409 dialog: both versions side by side; not dismissible (a choice must be made). */
export function conflictDialog(c: Conflict, store: AnnotationStore, imageId: number, choices: ConflictChoices, onClose: () => void): DialogHandle {
  const mine = c.localCells;
  const theirs = c.serverCells;
  const d = diffSummary(mine, theirs, store);
  const download = () => {
    const blob = new Blob([JSON.stringify({ image: imageId, revision_base: store.revision, cells: mine.map((x) => ({ id: store.serverIdOf(x.key), class_id: x.classId, polygon: x.polygon })) }, null, 1)], {
      type: 'application/json',
    });
    const a = h('a', { href: URL.createObjectURL(blob), download: `image-${imageId}-my-cells.json` });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 2000);
  };
  return dialog({
    title: 'This image was changed elsewhere',
    dismissible: false,
    className: 'conflict-dialog',
    body: [
      h('p', null, choices.fromBackup ? c.detail : 'Someone saved this image while you were editing it. Nothing has been lost — choose which version to keep.'),
      !choices.fromBackup && c.detail && !/^conflict$/i.test(c.detail) ? h('p', { class: 'muted small' }, `Server: ${c.detail}`) : null,
      h(
        'div',
        { class: 'conflict-compare' },
        h('div', { class: 'conflict-col mine' }, h('h4', null, 'Your version'), h('div', { class: 'big-num' }, String(mine.length)), h('div', { class: 'muted' }, 'cells in this browser')),
        h('div', { class: 'conflict-col theirs' }, h('h4', null, "Server's version"), h('div', { class: 'big-num' }, String(theirs.length)), h('div', { class: 'muted' }, `cells · revision ${c.serverRevision}`)),
      ),
      h(
        'ul',
        { class: 'conflict-diff' },
        h('li', null, h('b', null, String(d.onlyMine)), d.onlyMine === 1 ? ' of your cells is not on the server' : ' of your cells are not on the server'),
        h('li', null, h('b', null, String(d.onlyTheirs)), d.onlyTheirs === 1 ? ' server cell is not in your version (added by the other person, or deleted by you)' : ' server cells are not in your version (added by the other person, or deleted by you)'),
        h('li', null, h('b', null, String(d.changed)), d.changed === 1 ? ' cell differs between the two' : ' cells differ between the two'),
      ),
      h('p', { class: 'muted small' }, "Keep both merges the two versions: cells drawn by the other person are added, your edits win where you both changed a cell. Keep only mine overwrites the server's layer with your cells; taking the server's discards your unsaved edits (download them first if unsure)."),
    ],
    actions: [
      h('button', { class: 'btn btn-ghost', onclick: download }, 'Download my version'),
      h('span', { class: 'grow' }),
      h('button', { class: 'btn btn-danger-outline', dataset: { action: 'take-theirs' }, onclick: () => choices.takeTheirs() }, "Take the server's"),
      h('button', { class: 'btn', dataset: { action: 'keep-mine' }, onclick: () => choices.keepMine() }, 'Keep only mine'),
      h('button', { class: 'btn btn-primary', dataset: { action: 'keep-both' }, autofocus: true, onclick: () => choices.keepBoth() }, 'Keep both'),
    ],
    onClose,
  });
}

function diffSummary(mine: Cell[], theirs: { id: number; class_id: number | null; polygon: number[][] }[], store: AnnotationStore) {
  const theirById = new Map(theirs.map((c) => [c.id, c]));
  let onlyMine = 0;
  let changed = 0;
  const matched = new Set<number>();
  for (const c of mine) {
    const id = store.serverIdOf(c.key);
    const t = id !== undefined ? theirById.get(id) : undefined;
    if (!t) {
      onlyMine++;
      continue;
    }
    matched.add(t.id);
    const same = t.class_id === c.classId && t.polygon.length === c.polygon.length && t.polygon.every((p, i) => Math.abs(p[0] - c.polygon[i][0]) < 0.01 && Math.abs(p[1] - c.polygon[i][1]) < 0.01);
    if (!same) changed++;
  }
  return { onlyMine, onlyTheirs: theirs.length - matched.size, changed };
}

/** Sign in again in place (the session ended while edits were unsaved), then `onSignedIn`. */
export function reloginDialog(api: ApiClient, username: string, onSignedIn: () => void, onClose: () => void): DialogHandle {
  const user = h('input', { name: 'username', autocomplete: 'username', value: username });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', autofocus: true });
  const err = h('p', { class: 'form-error' });
  const go = async (e?: Event) => {
    e?.preventDefault();
    err.textContent = '';
    try {
      await api.login(user.value.trim(), pass.value);
      handle.close();
      toast('Signed in again — saving your work', 'success');
      onSignedIn();
    } catch (x) {
      err.textContent = x instanceof ApiError && x.status === 429 ? 'Too many attempts — wait a minute.' : 'Sign-in failed.';
    }
  };
  const handle = dialog({
    title: 'Your session has ended',
    dismissible: false,
    body: h(
      'form',
      { onsubmit: go, class: 'stack' },
      h('p', null, 'Sign in again to save your work. Your edits are kept in this browser meanwhile.'),
      h('label', { class: 'field' }, h('span', null, 'Username'), user),
      h('label', { class: 'field' }, h('span', null, 'Password'), pass),
      err,
      h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in and save'),
    ),
    onClose,
  });
  return handle;
}

/** Admins: the reviewers of the current round; assign one by hand or cancel an open assignment. */
export async function reviewersDialog(api: ApiClient, projectId: number, imageId: number): Promise<void> {
  const body = h('div', { class: 'reviewers' }, h('div', { class: 'loading-block' }, h('span', { class: 'spinner' }), 'Loading…'));
  const d = dialog({ title: 'Reviewers of this image', body, actions: [h('button', { class: 'btn', onclick: () => d.close() }, 'Close')] });
  const refresh = async (): Promise<void> => {
    try {
      const [a, members] = await Promise.all([api.assignments(imageId), api.members(projectId)]);
      const round = a.round;
      const current = a.assignments.filter((x) => round && x.round === round.number && x.status !== 'cancelled');
      const taken = new Set(current.map((x) => x.reviewer));
      const eligible = members.filter((x) => (x.role === 'expert' || x.role === 'admin') && !taken.has(x.user));
      const select = h('select', null, eligible.map((x) => h('option', { value: String(x.user) }, `${x.username} (${x.role})`)));
      replaceChildren(
        body,
        h('p', { class: 'muted small' }, round ? `Round ${round.number}: ${round.experts_required} expert${round.experts_required === 1 ? '' : 's'} required, quorum ${round.quorum}. ${a.open_slots} open slot${a.open_slots === 1 ? '' : 's'}.` : 'No review round yet.'),
        h(
          'div',
          { class: 'reviewer-list' },
          current.length
            ? current.map((x) =>
                h(
                  'div',
                  { class: 'reviewer-row' },
                  h('span', { class: 'avatar sm' }, x.username.slice(0, 1).toUpperCase()),
                  h('b', null, x.username),
                  h('span', { class: `pill pill-${x.status === 'submitted' ? 'good' : 'review'}` }, x.status === 'submitted' ? 'Submitted' : 'Reviewing'),
                  x.manual ? h('span', { class: 'muted small' }, 'assigned by hand') : null,
                  h('span', { class: 'grow' }),
                  x.status === 'assigned'
                    ? h('button', { class: 'btn btn-sm btn-danger-outline', onclick: async () => { try { await api.cancelAssignment(imageId, x.id); toast(`${x.username} unassigned`); await refresh(); } catch (e) { toast(errText(e), 'error'); } } }, 'Unassign')
                    : null,
                ),
              )
            : h('p', { class: 'muted small' }, 'Nobody is assigned.'),
        ),
        a.open_slots > 0 && eligible.length
          ? h(
              'div',
              { class: 'form-row assign-row' },
              h('label', { class: 'field compact' }, h('span', null, 'Assign'), select),
              h('button', { class: 'btn btn-primary btn-sm', onclick: async () => { try { await api.assignReviewer(imageId, Number(select.value)); toast('Reviewer assigned', 'success'); await refresh(); } catch (e) { toast(`Not assigned: ${e instanceof ApiError ? (e.fieldMessages()[0] ?? e.detail) : errText(e)}`, 'error'); } } }, 'Assign'),
            )
          : null,
      );
    } catch (e) {
      body.replaceChildren(h('p', { class: 'form-error' }, errText(e)));
    }
  };
  await refresh();
}

/** The sections of the editor's keyboard help. */
export function editorHelp(tools: Tool[], palette: ClassPalette): HTMLElement[] {
  const row = helpRow;
  const classes = palette.ordered.slice(0, 9).map((c, i) => row([String(i + 1)], `Class: ${c.name}`));
  return [
    h(
      'section',
      null,
      h('h4', null, 'Tools'),
      tools.map((t) => row([t.shortcut], t.label)),
      row(['S'], 'Snap to neighbouring contours on/off'),
      h('h4', null, 'Drawing'),
      row(['Click'], 'Place a vertex'),
      row(['Drag'], 'Trace freehand (a drag that starts a cell closes on release)'),
      row(['Enter'], 'Close the polygon / finish the cut line'),
      row(['Dbl-click'], 'Close the polygon / finish the cut line'),
      row(['Backspace'], 'Remove the last vertex'),
      row(['Esc'], 'Cancel drawing, then clear the selection'),
      row(['Space', 'Drag'], 'Pan while drawing'),
    ),
    h(
      'section',
      null,
      h('h4', null, 'Editing'),
      row(['Ctrl', 'Z'], 'Undo'),
      row(['Ctrl', 'Shift', 'Z'], 'Redo (also Ctrl+Y)'),
      row(['Shift', 'Click'], 'Add to / remove from the selection'),
      row(['Click again'], 'Next overlapping cell'),
      row(['Alt', 'Click'], 'Delete the vertex under the pointer'),
      row(['Del'], 'Delete the hovered vertex, else the selected cells'),
      row(['0'], 'Unclassified'),
      classes,
      row(['Ctrl', 'S'], 'Save now'),
      h('h4', null, 'Click to segment (W) and box (Q)'),
      row(['Click'], 'Outline the cell under the click (inside the selected cell: redo its contour)'),
      row(['Shift', 'Click'], 'Another point of the same cell'),
      row(['Alt', 'Click'], 'A point outside the cell (also Ctrl+click)'),
      row(['Esc'], 'End the prompt'),
      row(['Drag'], 'Box: add the cells found in it'),
    ),
    h(
      'section',
      null,
      h('h4', null, 'Proposals'),
      row(['A'], 'Accept selected proposals'),
      row(['R'], 'Reject selected proposals'),
      row(['Shift', 'A'], 'Accept all proposals in view'),
      row(['Shift', 'R'], 'Reject all proposals in view'),
      row(['N'], 'Next proposal (selected and centred; Shift+N: previous)'),
      row(['P'], 'Show / hide proposals'),
      row(['H'], 'Show / hide my cells'),
      h('h4', null, 'Brush (B) and eraser (U)'),
      row(['Drag'], 'Paint on the selected cell (brush adds, eraser removes; one stroke = one undo)'),
      row(['[', ']'], 'Smaller / larger radius'),
      row(['Ctrl', 'Wheel'], 'Radius (also Alt+wheel; the wheel alone zooms)'),
      h('h4', null, 'View'),
      row(['Wheel'], 'Zoom'),
      row(['+', '−'], 'Zoom in / out'),
      row(['←', '↑', '→', '↓'], 'Pan (Shift: faster)'),
      row(['F'], 'Fit the image'),
      row(['?'], 'This help'),
    ),
  ];
}
