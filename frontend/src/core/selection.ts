/**
 * Selection of cells (store keys) and proposals (`p<id>`). Framework free.
 */
import { Emitter } from './events';

export function proposalKey(id: number): string {
  return `p${id}`;
}
export function isProposalKey(key: string): boolean {
  return key.startsWith('p');
}
export function proposalIdOf(key: string): number {
  return Number(key.slice(1));
}

export interface SelectionChange {
  added: string[];
  removed: string[];
}

export class Selection {
  private readonly keys = new Set<string>();
  readonly events = new Emitter<{ change: SelectionChange }>();

  has(key: string): boolean {
    return this.keys.has(key);
  }
  get size(): number {
    return this.keys.size;
  }
  values(): string[] {
    return [...this.keys];
  }
  cells(): string[] {
    return this.values().filter((k) => !isProposalKey(k));
  }
  proposals(): number[] {
    return this.values().filter(isProposalKey).map(proposalIdOf);
  }

  /** Makes the selection exactly `keys`. */
  set(keys: Iterable<string>): void {
    const next = new Set(keys);
    const added = [...next].filter((k) => !this.keys.has(k));
    const removed = [...this.keys].filter((k) => !next.has(k));
    if (!added.length && !removed.length) return;
    for (const k of removed) this.keys.delete(k);
    for (const k of added) this.keys.add(k);
    this.events.emit('change', { added, removed });
  }
  add(...keys: string[]): void {
    this.set([...this.keys, ...keys]);
  }
  remove(keys: Iterable<string>): void {
    const drop = new Set(keys);
    this.set([...this.keys].filter((k) => !drop.has(k)));
  }
  toggle(key: string): void {
    if (this.keys.has(key)) this.remove([key]);
    else this.add(key);
  }
  clear(): void {
    this.set([]);
  }
}
