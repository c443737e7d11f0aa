/**
 * Local safety net: unsaved edits are mirrored into localStorage so that a
 * crash, a closed tab or an expired session never loses a contour. Cleared as
 * soon as the server has everything.
 */
import type { AnnotationStore } from './store';
import type { Point } from './types';

export interface BackupCell {
  key: string;
  serverId?: number;
  class_id: number | null;
  polygon: Point[];
}

export interface Backup {
  imageId: number;
  baseRevision: number;
  savedAt: number;
  cells: BackupCell[];
}

export type StorageLike = Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>;

const PREFIX = 'cellcontour.backup.';

export class LocalBackup {
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly storage: StorageLike | null,
    private readonly imageId: number,
    private readonly delayMs = 400,
  ) {}

  get storageKey(): string {
    return PREFIX + this.imageId;
  }

  read(): Backup | null {
    if (!this.storage) return null;
    try {
      const raw = this.storage.getItem(this.storageKey);
      if (!raw) return null;
      const b = JSON.parse(raw) as Backup;
      return b && b.imageId === this.imageId && Array.isArray(b.cells) ? b : null;
    } catch {
      return null;
    }
  }

  /** Writes now. */
  write(store: AnnotationStore, now = Date.now()): boolean {
    if (!this.storage) return false;
    const cells: BackupCell[] = [];
    for (const c of store.all()) {
      const serverId = store.serverIdOf(c.key);
      cells.push({ key: c.key, ...(serverId !== undefined ? { serverId } : {}), class_id: c.classId, polygon: c.polygon });
    }
    const b: Backup = { imageId: this.imageId, baseRevision: store.revision, savedAt: now, cells };
    try {
      this.storage.setItem(this.storageKey, JSON.stringify(b));
      return true;
    } catch {
      return false; // quota: the server save is still the primary path
    }
  }

  /** Debounced write while dirty; clears when clean. */
  update(store: AnnotationStore): void {
    if (!store.isDirty) {
      this.cancel();
      this.clear();
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (store.isDirty) this.write(store);
      else this.clear();
    }, this.delayMs);
  }

  /** Flushes a pending debounced write (e.g. on pagehide). */
  flush(store: AnnotationStore): void {
    this.cancel();
    if (store.isDirty) this.write(store);
  }

  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  clear(): void {
    try {
      this.storage?.removeItem(this.storageKey);
    } catch {
      /* ignore */
    }
  }
}

/**
 * Puts backed-up cells into a freshly loaded store as ONE undoable user edit
 * ("restore unsaved edits"), so they get autosaved. Server ids that still exist
 * are kept; the others are sent as new cells.
 */
export function restoreBackup(store: AnnotationStore, backup: Backup): number {
  const patchKeys = new Set<string>();
  const cells = backup.cells.map((b) => {
    let key = b.serverId !== undefined ? store.keyOfServerId(b.serverId) : undefined;
    if (!key || patchKeys.has(key)) key = store.newLocalKey();
    patchKeys.add(key);
    return { key, classId: b.class_id, polygon: b.polygon };
  });
  return store.replaceAll(cells, 'restore unsaved edits');
}
