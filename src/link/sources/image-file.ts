/**
 * Reads an image file from disk with its size checked before anything is allocated: image
 * files are untrusted input, and a 4 GiB file named `app.hxe` must not take the gateway down.
 */
import { openSync, fstatSync, readSync, closeSync } from 'node:fs';

/** Largest image a source will read: the HXE limits (code + rodata 64 KiB each) plus metadata headroom. */
export const MAX_IMAGE_FILE_BYTES = 4 * 1024 * 1024;

export interface ImageFileError {
  code: 'ENOENT' | 'EACCES' | 'EISDIR' | 'EFBIG' | 'EIO';
  path: string;
  message: string;
}

export function readImageFile(path: string, maxBytes = MAX_IMAGE_FILE_BYTES):
  { ok: true; value: Uint8Array } | { ok: false; error: ImageFileError } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const c = code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR' ? code : 'EIO';
    return { ok: false, error: { code: c, path, message: `${path}: cannot open image (${code ?? 'error'})` } };
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) return { ok: false, error: { code: 'EISDIR', path, message: `${path}: is a directory, not an image` } };
    if (st.size > maxBytes) {
      return { ok: false, error: { code: 'EFBIG', path, message: `${path}: ${st.size} bytes is larger than the ${maxBytes}-byte image limit` } };
    }
    const buf = new Uint8Array(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return { ok: true, value: off === buf.length ? buf : buf.subarray(0, off) };
  } catch (e) {
    return { ok: false, error: { code: 'EIO', path, message: `${path}: read failed: ${(e as Error).message}` } };
  } finally {
    closeSync(fd);
  }
}
