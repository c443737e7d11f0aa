/**
 * Image upload (`POST projects/{id}/images`, multipart `files` + metadata): the files go in
 * small batches (one file per request by default) so that each file gets its own progress
 * bar and its own error; the server's 400 names the file by its index in the request
 * (`files.3: x.png: duplicate of 'y.png' already in this project`), mapped back here to the
 * file of the whole selection.
 */
import { ApiError, fillRoute, readCookie, type FieldErrors } from './api';
import { API_PREFIX, type ApiRoute, type ImageInfo } from './types';

/** The metadata the upload accepts (annotations/api/serializers.py, ImageUploadIn). */
export interface UploadMetadata {
  bethesda?: string;
  stain?: string;
  magnification?: string;
  slide_code?: string;
  split?: string;
}
export const METADATA_FIELDS: (keyof UploadMetadata)[] = ['bethesda', 'stain', 'magnification', 'slide_code', 'split'];
export const METADATA_LABELS: Record<keyof UploadMetadata, string> = {
  bethesda: 'Bethesda category',
  stain: 'Stain',
  magnification: 'Magnification',
  slide_code: 'Slide code',
  split: 'Split',
};

export type UploadState = 'waiting' | 'uploading' | 'done' | 'failed';

export interface UploadItem {
  /** index in the whole selection */
  index: number;
  name: string;
  size: number;
  state: UploadState;
  /** bytes sent (of `size`) */
  loaded: number;
  error: string | null;
  image: ImageInfo | null;
}

export interface FileLike {
  name: string;
  size: number;
}

export function uploadItems(files: FileLike[], from = 0): UploadItem[] {
  return files.map((f, i) => ({ index: from + i, name: f.name, size: f.size, state: 'waiting', loaded: 0, error: null, image: null }));
}

/** Consecutive batches of at most `size` files, by index, each under `maxBytes` where it can be. */
export function batches<T extends FileLike>(files: T[], size = 1, maxBytes = Infinity): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let bytes = 0;
  for (const f of files) {
    if (cur.length && (cur.length >= size || bytes + f.size > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(f);
    bytes += f.size;
  }
  if (cur.length) out.push(cur);
  return out;
}

/**
 * Files of one selection with the same content (SHA-256 of the bytes, as the server compares
 * them): index → the name of the first file with that content. A null hash (not computed) never
 * matches.
 */
export function duplicatesInSelection(files: { name: string; sha256: string | null }[]): Map<number, string> {
  const first = new Map<string, string>();
  const out = new Map<number, string>();
  files.forEach((f, i) => {
    if (!f.sha256) return;
    const earlier = first.get(f.sha256);
    if (earlier !== undefined) out.set(i, earlier);
    else first.set(f.sha256, f.name);
  });
  return out;
}

/**
 * Files above this are not hashed in the browser: WebCrypto digests a whole buffer, and a
 * whole slide (gigabytes) would have to sit in the tab's memory. The server still names them
 * if they duplicate an image of the project.
 */
export const HASH_MAX_BYTES = 256 * 1024 * 1024;

/** SHA-256 of a file's bytes in hex; null where the browser cannot (no WebCrypto outside secure contexts, or a file above HASH_MAX_BYTES). */
export async function fileSha256(file: Blob): Promise<string | null> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle || file.size > HASH_MAX_BYTES) return null;
  try {
    const digest = await subtle.digest('SHA-256', await file.arrayBuffer());
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
  } catch {
    return null;
  }
}

/** Metadata without empty values (the server draws the split itself when it is left out). */
export function cleanMetadata(m: UploadMetadata): UploadMetadata {
  const out: UploadMetadata = {};
  for (const k of METADATA_FIELDS) {
    const v = m[k]?.trim();
    if (v) out[k] = v;
  }
  return out;
}

function firstText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) return v.map(firstText).filter(Boolean).join(' ');
  if (v && typeof v === 'object') return Object.values(v as Record<string, unknown>).map(firstText).filter(Boolean).join(' ');
  return v == null ? '' : String(v);
}

/** "x.png: duplicate of 'y.png' in this upload" → "Duplicate of 'y.png' in this upload." */
export function fileSentence(message: string, name: string): string {
  let m = message.trim();
  if (m.startsWith(`${name}: `)) m = m.slice(name.length + 2);
  if (!m) return 'Refused by the server.';
  m = m[0].toUpperCase() + m.slice(1);
  return /[.!?]$/.test(m) ? m : `${m}.`;
}

export interface BatchErrors {
  /** per file of the batch (position in the batch → sentence) */
  files: Map<number, string>;
  /** errors of the metadata fields (shown under the field), e.g. `{split: 'Not a valid choice.'}` */
  fields: Partial<Record<keyof UploadMetadata, string>>;
  /** what is left: said next to every file of the batch that has no error of its own */
  general: string;
}

/**
 * The server's refusal of one batch. A 400 names the files (`files.<i>` or, DRF style,
 * `files: {"<i>": [...]}`) and metadata fields; the batch is atomic, so the other files of it
 * were not stored either ("not stored: another file of its batch was refused").
 */
export function batchErrors(err: unknown, names: string[]): BatchErrors {
  const out: BatchErrors = { files: new Map(), fields: {}, general: '' };
  if (!(err instanceof ApiError)) {
    out.general = String(err);
    return out;
  }
  const fe: FieldErrors = err.fieldErrors ?? {};
  for (const [key, value] of Object.entries(fe)) {
    const m = /^files\.(\d+)$/.exec(key);
    if (m) {
      const i = Number(m[1]);
      if (i < names.length) out.files.set(i, fileSentence(firstText(value), names[i]));
      continue;
    }
    if (key === 'files' && value && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        const i = Number(k);
        if (Number.isInteger(i) && i < names.length) out.files.set(i, fileSentence(firstText(v), names[i]));
      }
      continue;
    }
    if ((METADATA_FIELDS as string[]).includes(key)) {
      out.fields[key as keyof UploadMetadata] = fileSentence(firstText(value), '');
      continue;
    }
    const text = firstText(value);
    if (text) out.general = out.general ? `${out.general} ${fileSentence(text, '')}` : fileSentence(key === 'files' ? text : `${key}: ${text}`, '');
  }
  if (!out.general) {
    if (err.status === 413) out.general = 'The file is too large for the server.';
    else if (err.status === 403) out.general = 'Only the project’s admins can upload images.';
    else if (err.status === 0) out.general = 'The server cannot be reached — not uploaded.';
    else if (out.files.size || Object.keys(out.fields).length) out.general = names.length > 1 ? 'Not stored: another file of its batch was refused.' : '';
    else out.general = fileSentence(err.detail, '');
  }
  return out;
}

export interface UploadTotals {
  total: number;
  done: number;
  failed: number;
  uploading: number;
  waiting: number;
  /** 0..1 over the bytes of every file (a failed file counts as finished) */
  fraction: number;
}

export function uploadTotals(items: UploadItem[]): UploadTotals {
  const t: UploadTotals = { total: items.length, done: 0, failed: 0, uploading: 0, waiting: 0, fraction: 0 };
  let all = 0;
  let sent = 0;
  for (const it of items) {
    t[it.state === 'waiting' ? 'waiting' : it.state === 'uploading' ? 'uploading' : it.state === 'done' ? 'done' : 'failed']++;
    const size = Math.max(1, it.size);
    all += size;
    sent += it.state === 'done' || it.state === 'failed' ? size : Math.min(size, it.loaded);
  }
  t.fraction = all ? sent / all : 0;
  return t;
}

export function totalsText(t: UploadTotals): string {
  const parts = [`${t.done} of ${t.total} uploaded`];
  if (t.failed) parts.push(`${t.failed} refused`);
  return parts.join(', ');
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** The parts of XMLHttpRequest the upload uses (injectable for tests). */
export interface XhrLike {
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body: FormData): void;
  abort(): void;
  readonly status: number;
  readonly responseText: string;
  readonly upload: { onprogress: ((e: { loaded: number; total: number; lengthComputable: boolean }) => void) | null };
  onload: (() => void) | null;
  onerror: (() => void) | null;
  onabort: (() => void) | null;
  withCredentials: boolean;
}

export interface UploadRequest {
  projectId: number;
  files: (Blob & { name?: string })[];
  metadata: UploadMetadata;
  /** bytes of this request's body sent so far */
  onProgress?: (loaded: number, total: number) => void;
  signal?: AbortSignal;
}

/** The error of a finished request, as ApiClient.request makes it. */
export function responseError(status: number, text: string): ApiError {
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  const obj = data && typeof data === 'object' ? (data as Record<string, unknown>) : {};
  const detail = typeof obj.detail === 'string' ? obj.detail : status === 413 ? 'The upload is too large' : `HTTP ${status}`;
  const errors = obj.errors && typeof obj.errors === 'object' ? (obj.errors as FieldErrors) : Object.fromEntries(Object.entries(obj).filter(([k]) => k !== 'detail'));
  return new ApiError(status, detail, errors, data);
}

/**
 * One upload request with upload progress events (fetch has none for request bodies).
 * Resolves with the stored images (201), rejects with an {@link ApiError}.
 */
export function uploadFiles(req: UploadRequest, makeXhr: () => XhrLike = () => new XMLHttpRequest() as unknown as XhrLike, cookies = typeof document !== 'undefined' ? document.cookie : ''): Promise<ImageInfo[]> {
  const url = API_PREFIX + fillRoute('projects/{project_id}/images' satisfies ApiRoute, { project_id: req.projectId });
  const form = new FormData();
  for (const f of req.files) form.append('files', f, f.name ?? 'upload');
  for (const [k, v] of Object.entries(cleanMetadata(req.metadata))) form.append(k, v as string);
  return new Promise((resolve, reject) => {
    const xhr = makeXhr();
    xhr.open('POST', url);
    xhr.withCredentials = true;
    xhr.setRequestHeader('Accept', 'application/json');
    const token = readCookie(cookies, 'csrftoken');
    if (token) xhr.setRequestHeader('X-CSRFToken', token);
    xhr.upload.onprogress = (e) => req.onProgress?.(e.loaded, e.lengthComputable ? e.total : 0);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText) as ImageInfo[]);
        } catch {
          reject(new ApiError(xhr.status, 'Unreadable answer from the server'));
        }
      } else reject(responseError(xhr.status, xhr.responseText));
    };
    xhr.onerror = () => reject(new ApiError(0, 'Network error — the server cannot be reached'));
    xhr.onabort = () => reject(new DOMException('aborted', 'AbortError'));
    req.signal?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.send(form);
  });
}
