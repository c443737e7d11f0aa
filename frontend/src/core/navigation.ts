/** Image-list context shared by the image list and the editor ("next image"). */
import type { ImageFilters, ImageInfo, Paginated } from './types';

export interface ListApi {
  listImages(projectId: number, filters: ImageFilters): Promise<Paginated<ImageInfo>>;
}

/** Statuses that mean "nothing left for the annotator" (matched loosely: unknown server vocabulary). */
export function isFinishedStatus(status: string | null | undefined): boolean {
  return /submit|review|disput|adjudic|verif|done|approv|complete|final/i.test(status ?? '');
}

/**
 * The image after `currentId` in the filtered list (pages walked as needed).
 * When the current image is no longer in the list (e.g. it was just
 * submitted and the list is filtered by status) the first unfinished image of
 * the list is returned; null when there is none.
 */
export async function findNextImage(api: ListApi, projectId: number, filters: ImageFilters, currentId: number, pageSize = 100, maxPages = 50): Promise<number | null> {
  let seenCurrent = false;
  let firstOpen: number | null = null;
  for (let page = 1; page <= maxPages; page++) {
    const res = await api.listImages(projectId, { ...filters, page, page_size: pageSize });
    for (const img of res.results) {
      if (seenCurrent) return img.id;
      if (img.id === currentId) seenCurrent = true;
      else if (firstOpen === null && !isFinishedStatus(img.status)) firstOpen = img.id;
    }
    if (!res.next) break;
  }
  return seenCurrent ? null : firstOpen;
}

export interface StoredFilters {
  status?: string;
  split?: string;
  bethesda?: string;
  search?: string;
}

const KEY = 'cellcontour.filters.';

export function loadFilters(projectId: number, storage: Pick<Storage, 'getItem'> | null = globalThis.sessionStorage ?? null): StoredFilters {
  try {
    return JSON.parse(storage?.getItem(KEY + projectId) ?? '{}') as StoredFilters;
  } catch {
    return {};
  }
}

export function saveFilters(projectId: number, f: StoredFilters, storage: Pick<Storage, 'setItem'> | null = globalThis.sessionStorage ?? null): void {
  try {
    storage?.setItem(KEY + projectId, JSON.stringify(f));
  } catch {
    /* ignore */
  }
}
