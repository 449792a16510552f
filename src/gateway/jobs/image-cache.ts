/**
 * The job image cache (docs/jobs.md#the-image-cache): content-addressed files
 * `<state dir>/images/<sha256>.hxe`, written before the submit that needs one is journalled
 * (temp file, fdatasync, rename, directory fsync), counted by the retained jobs that name them and
 * deleted when the last of those goes. Synchronous like the journal (the submit path is one turn of
 * the event loop; images are at most `maxImageBytes`, 1 MiB by default).
 */
import { createHash, randomBytes } from 'node:crypto';
import * as nodeFs from 'node:fs';
import { join } from 'node:path';
import { syncDir, writeErrorOf, type JobsFs } from './journal.js';
import type { JobError } from './types.js';

export const IMAGES_DIR = 'images';
export const IMAGE_EXT = '.hxe';
export const DEFAULT_MAX_IMAGE_BYTES = 1 << 20;
const SHA_FILE = /^([0-9a-f]{64})\.hxe$/;

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export interface ImageCacheOptions {
  maxImageBytes?: number;
  fs?: JobsFs;
}

export class ImageCache {
  readonly dir: string;
  readonly maxImageBytes: number;
  private readonly fs: JobsFs;
  private readonly counts = new Map<string, number>();

  private constructor(stateDir: string, opts: ImageCacheOptions) {
    this.dir = join(stateDir, IMAGES_DIR);
    this.fs = opts.fs ?? nodeFs;
    this.maxImageBytes = opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES;
  }

  /** Creates `<stateDir>/images` when missing. Throws a JournalWriteError when it cannot. */
  static open(stateDir: string, opts: ImageCacheOptions = {}): ImageCache {
    const c = new ImageCache(stateDir, opts);
    try {
      c.fs.mkdirSync(c.dir, { recursive: true });
    } catch (e) {
      throw writeErrorOf(e, 'mkdir', c.dir);
    }
    return c;
  }

  /**
   * The size check, for callers to make BEFORE allocating a buffer for an upload (a declared
   * length) and for the submit path: null when `size` bytes are acceptable. Too large is `ENOSPC`
   * `image_too_large`, as in the engine and the control port's image reads.
   */
  checkSize(size: number, field = 'image'): JobError | null {
    if (!Number.isSafeInteger(size) || size <= 0) {
      return { code: 'EINVAL', reason: 'empty_image', field, message: `the image is empty (${size} bytes)` };
    }
    if (size > this.maxImageBytes) {
      return { code: 'ENOSPC', reason: 'image_too_large', field, message: `the image is ${size} bytes; at most ${this.maxImageBytes} are accepted` };
    }
    return null;
  }

  path(sha256: string): string {
    return join(this.dir, sha256 + IMAGE_EXT);
  }

  has(sha256: string): boolean {
    return this.fs.existsSync(this.path(sha256));
  }

  /**
   * Stores `bytes` under their SHA-256 durably (temp + fdatasync + rename + dir fsync) unless an
   * intact copy is there already. Throws a JournalWriteError (errno ENOSPC, EROFS, ...) on failure,
   * leaving no temp file behind.
   */
  put(bytes: Uint8Array, sha256 = sha256Hex(bytes)): { sha256: string; created: boolean } {
    const final = this.path(sha256);
    if (this.read(sha256) !== null) return { sha256, created: false };
    const tmp = join(this.dir, `${sha256}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    let fd: number | null = null;
    try {
      fd = this.fs.openSync(tmp, 'w');
      let off = 0;
      while (off < bytes.length) off += this.fs.writeSync(fd, bytes, off, bytes.length - off);
      this.fs.fdatasyncSync(fd);
      this.fs.closeSync(fd);
      fd = null;
      this.fs.renameSync(tmp, final);
      syncDir(this.fs, this.dir);
    } catch (e) {
      if (fd !== null) try { this.fs.closeSync(fd); } catch { /* already failing */ }
      try { this.fs.unlinkSync(tmp); } catch { /* may not exist */ }
      throw writeErrorOf(e, 'write image', final);
    }
    return { sha256, created: true };
  }

  /** The image's bytes if its file is there and hashes to its name; null otherwise. */
  read(sha256: string): Uint8Array | null {
    let buf: Buffer;
    try {
      buf = this.fs.readFileSync(this.path(sha256));
    } catch {
      return null;
    }
    return sha256Hex(buf) === sha256 ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : null;
  }

  refs(sha256: string): number {
    return this.counts.get(sha256) ?? 0;
  }

  ref(sha256: string): number {
    const n = this.refs(sha256) + 1;
    this.counts.set(sha256, n);
    return n;
  }

  /** Drops one reference; the file is deleted when none is left. */
  unref(sha256: string): number {
    const n = Math.max(0, this.refs(sha256) - 1);
    if (n === 0) {
      this.counts.delete(sha256);
      this.remove(sha256);
    } else {
      this.counts.set(sha256, n);
    }
    return n;
  }

  /** Deletes the file when no job references it (a submit that could not be journalled). */
  discard(sha256: string): void {
    if (this.refs(sha256) === 0) this.remove(sha256);
  }

  /** Deletes every file no job references (and temp files a crash left); returns their names. */
  sweep(): string[] {
    const removed: string[] = [];
    let names: string[];
    try {
      names = this.fs.readdirSync(this.dir);
    } catch {
      return removed;
    }
    for (const name of names) {
      const m = SHA_FILE.exec(name);
      if (m ? this.refs(m[1]!) === 0 : name.endsWith('.tmp')) {
        try {
          this.fs.unlinkSync(join(this.dir, name));
          removed.push(name);
        } catch { /* best effort; tried again at the next open */ }
      }
    }
    return removed;
  }

  private remove(sha256: string): void {
    try {
      this.fs.unlinkSync(this.path(sha256));
    } catch { /* gone already, or swept at the next open */ }
  }
}
