import { describe, expect, it } from 'vitest';
import { ApiError } from '../src/core/api';
import { batchErrors, batches, duplicatesInSelection, fileSha256, HASH_MAX_BYTES, cleanMetadata, fileSentence, responseError, uploadFiles, uploadItems, uploadTotals, type XhrLike } from '../src/core/upload';

describe('batches', () => {
  it('one file per request by default, or by count and bytes', () => {
    const files = [{ name: 'a', size: 10 }, { name: 'b', size: 10 }, { name: 'c', size: 50 }];
    expect(batches(files).map((b) => b.map((f) => f.name))).toEqual([['a'], ['b'], ['c']]);
    expect(batches(files, 2).map((b) => b.map((f) => f.name))).toEqual([['a', 'b'], ['c']]);
    expect(batches(files, 3, 30).map((b) => b.map((f) => f.name))).toEqual([['a', 'b'], ['c']]);
    expect(batches([], 3)).toEqual([]);
  });
});

describe('the server’s refusal of a batch', () => {
  it('names the file by its index in the request, without repeating its name', () => {
    const err = new ApiError(400, 'Upload rejected; nothing was stored.', { 'files.1': "b.png: duplicate of 'a.png' already in this project" });
    const e = batchErrors(err, ['a.png', 'b.png']);
    expect(e.files.get(1)).toBe("Duplicate of 'a.png' already in this project.");
    expect(e.files.has(0)).toBe(false);
    expect(e.general).toBe('Not stored: another file of its batch was refused.');
  });
  it('a single file refused has no general message; DRF-style nested indices', () => {
    const err = new ApiError(400, 'x', { files: { '0': ['x.tif: not an image'] } });
    const e = batchErrors(err, ['x.tif']);
    expect(e.files.get(0)).toBe('Not an image.');
    expect(e.general).toBe('');
  });
  it('metadata fields go under the field', () => {
    const e = batchErrors(new ApiError(400, 'Invalid', { split: ['"x" is not a valid choice.'] }), ['a.png']);
    expect(e.fields.split).toBe('"x" is not a valid choice.');
  });
  it('413, 403, network and plain details as sentences', () => {
    expect(batchErrors(new ApiError(413, 'too big'), ['a']).general).toBe('The file is too large for the server.');
    expect(batchErrors(new ApiError(403, 'no'), ['a']).general).toMatch(/admins/);
    expect(batchErrors(new ApiError(0, 'net'), ['a']).general).toMatch(/cannot be reached/);
    expect(batchErrors(new ApiError(400, 'Too many files.', { files: 'at most 100 per upload' }), ['a']).general).toBe('At most 100 per upload.');
  });
  it('fileSentence', () => {
    expect(fileSentence('a.png: too large', 'a.png')).toBe('Too large.');
    expect(fileSentence('', 'a')).toBe('Refused by the server.');
  });
  it('responseError reads {detail, errors}', () => {
    const e = responseError(400, JSON.stringify({ detail: 'Upload rejected', errors: { 'files.0': 'a: bad' } }));
    expect(e.status).toBe(400);
    expect(e.fieldErrors).toEqual({ 'files.0': 'a: bad' });
    expect(responseError(502, '<html>').detail).toBe('HTTP 502');
  });
});

describe('totals', () => {
  it('fraction by bytes; refused files count as finished', () => {
    const items = uploadItems([{ name: 'a', size: 100 }, { name: 'b', size: 300 }]);
    expect(uploadTotals(items).fraction).toBe(0);
    items[0].state = 'done';
    items[1].state = 'uploading';
    items[1].loaded = 100;
    const t = uploadTotals(items);
    expect(t.fraction).toBeCloseTo(0.5);
    expect(t.done).toBe(1);
    expect(t.uploading).toBe(1);
    items[1].state = 'failed';
    expect(uploadTotals(items).fraction).toBe(1);
  });
  it('metadata without empty values', () => {
    expect(cleanMetadata({ bethesda: 'II', stain: ' ', split: '' })).toEqual({ bethesda: 'II' });
  });
});

class FakeXhr implements XhrLike {
  static last: FakeXhr;
  method = '';
  url = '';
  headers: Record<string, string> = {};
  body: FormData | null = null;
  status = 0;
  responseText = '';
  upload = { onprogress: null as XhrLike['upload']['onprogress'] };
  onload: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onabort: (() => void) | null = null;
  withCredentials = false;
  constructor() {
    FakeXhr.last = this;
  }
  open(m: string, u: string) {
    this.method = m;
    this.url = u;
  }
  setRequestHeader(n: string, v: string) {
    this.headers[n] = v;
  }
  send(b: FormData) {
    this.body = b;
  }
  abort() {
    this.onabort?.();
  }
}

describe('uploadFiles', () => {
  it('posts multipart files + metadata with the CSRF token and reports progress', async () => {
    const seen: number[] = [];
    const p = uploadFiles({ projectId: 3, files: [new File(['x'], 'a.png')], metadata: { bethesda: 'IV', stain: '' }, onProgress: (l) => seen.push(l) }, () => new FakeXhr(), 'csrftoken=tok');
    const x = FakeXhr.last;
    expect(x.method).toBe('POST');
    expect(x.url).toBe('/api/v1/projects/3/images');
    expect(x.headers['X-CSRFToken']).toBe('tok');
    expect((x.body!.get('files') as File).name).toBe('a.png');
    expect(x.body!.get('bethesda')).toBe('IV');
    expect(x.body!.has('stain')).toBe(false);
    x.upload.onprogress!({ loaded: 5, total: 10, lengthComputable: true });
    x.status = 201;
    x.responseText = JSON.stringify([{ id: 9 }]);
    x.onload!();
    expect(await p).toEqual([{ id: 9 }]);
    expect(seen).toEqual([5]);
  });
  it('rejects with an ApiError naming the files', async () => {
    const p = uploadFiles({ projectId: 3, files: [new File(['x'], 'a.png')], metadata: {} }, () => new FakeXhr(), '');
    const x = FakeXhr.last;
    x.status = 400;
    x.responseText = JSON.stringify({ detail: 'Upload rejected; nothing was stored.', errors: { 'files.0': 'a.png: not an image' } });
    x.onload!();
    await expect(p).rejects.toMatchObject({ status: 400, fieldErrors: { 'files.0': 'a.png: not an image' } });
  });
  it('network failure is status 0', async () => {
    const p = uploadFiles({ projectId: 3, files: [new File(['x'], 'a.png')], metadata: {} }, () => new FakeXhr(), '');
    FakeXhr.last.onerror!();
    await expect(p).rejects.toMatchObject({ status: 0 });
  });
});

describe('duplicates within one selection', () => {
  it('names the first file with the same bytes', async () => {
    const a = await fileSha256(new File(['same'], 'a.png'));
    const b = await fileSha256(new File(['other'], 'b.png'));
    const c = await fileSha256(new File(['same'], 'c.png'));
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    const d = duplicatesInSelection([{ name: 'a.png', sha256: a }, { name: 'b.png', sha256: b }, { name: 'c.png', sha256: c }, { name: 'd.png', sha256: null }]);
    expect([...d]).toEqual([[2, 'a.png']]);
  });

  it('does not read a whole slide into the tab to hash it', async () => {
    // a Blob that claims gigabytes: the size alone decides, its bytes are never read
    let read = false;
    const slide = { size: HASH_MAX_BYTES + 1, arrayBuffer: () => ((read = true), Promise.resolve(new ArrayBuffer(4))) } as unknown as Blob;
    expect(await fileSha256(slide)).toBeNull();
    expect(read).toBe(false);
  });
});
