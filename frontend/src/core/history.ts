/**
 * Undo/redo history (command pattern). Only the user's own edits are pushed
 * here: server loads, 409 resolutions and model-proposal updates bypass it.
 */
import { Emitter } from './events';

export interface Command {
  /** Shown in the UI, e.g. "Undo: split cell". */
  readonly label: string;
  do(): void;
  undo(): void;
}

export interface HistoryState {
  canUndo: boolean;
  canRedo: boolean;
  undoLabel: string | null;
  redoLabel: string | null;
}

export class History {
  private undoStack: Command[] = [];
  private redoStack: Command[] = [];
  readonly events = new Emitter<{ change: HistoryState }>();

  constructor(readonly limit = 1000) {}

  /** Runs the command and records it. */
  execute(cmd: Command): void {
    cmd.do();
    this.push(cmd);
  }

  /** Records an already executed command (e.g. an interaction that changed the geometry itself). */
  push(cmd: Command): void {
    this.undoStack.push(cmd);
    if (this.undoStack.length > this.limit) this.undoStack.splice(0, this.undoStack.length - this.limit);
    this.redoStack = [];
    this.emit();
  }

  undo(): Command | null {
    return this.step('undo');
  }

  redo(): Command | null {
    return this.step('redo');
  }

  /** Moves the top command to the other stack, undone or done again. */
  private step(dir: 'undo' | 'redo'): Command | null {
    const cmd = (dir === 'undo' ? this.undoStack : this.redoStack).pop();
    if (!cmd) return null;
    if (dir === 'undo') cmd.undo();
    else cmd.do();
    // the stacks are read again: the command may have run code that replaced them
    (dir === 'undo' ? this.redoStack : this.undoStack).push(cmd);
    this.emit();
    return cmd;
  }

  /** Every command that undo or redo may still run (their cells must stay in the store). */
  commands(): readonly Command[] {
    return [...this.undoStack, ...this.redoStack];
  }

  clear(): void {
    if (!this.undoStack.length && !this.redoStack.length) return;
    this.undoStack = [];
    this.redoStack = [];
    this.emit();
  }

  get canUndo(): boolean {
    return this.undoStack.length > 0;
  }
  get canRedo(): boolean {
    return this.redoStack.length > 0;
  }
  get size(): number {
    return this.undoStack.length;
  }

  state(): HistoryState {
    return {
      canUndo: this.canUndo,
      canRedo: this.canRedo,
      undoLabel: this.undoStack[this.undoStack.length - 1]?.label ?? null,
      redoLabel: this.redoStack[this.redoStack.length - 1]?.label ?? null,
    };
  }

  private emit(): void {
    this.events.emit('change', this.state());
  }
}
