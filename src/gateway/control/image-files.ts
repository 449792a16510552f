/**
 * Reading the image file a control request names (`load`, `exec`, `provision.load`): confined to
 * the configured images directory and bounded in size, whatever the file claims to be.
 *
 * - The request's path is relative to the images directory. An absolute path or a `..` segment is
 *   refused before anything is touched; symlinks are followed only while they stay inside.
 * - The path is walked one name at a time, each name looked up *relative to an open descriptor of
 *   the directory above it* (on Linux through `/proc/self/fd/N/name`), directories opened with
 *   O_NOFOLLOW and checked (device and inode) against what was looked up. Swapping a directory or a
 *   symlink while a request is in flight can therefore make it fail, but never makes it open —
 *   let alone read — a file outside the directory. The file itself is opened with O_NOFOLLOW
 *   (and O_NONBLOCK, so a FIFO swapped in cannot hang the open), `fstat`ed, refused unless it is a
 *   regular file and the very inode that was looked up, and its `/proc/self/fd/N` link must lie
 *   inside the directory.
 * - At most `limit + 1` bytes are read, whatever `stat` says (a `/proc` file says size 0 and never
 *   ends; `/dev/zero` says 0 too).
 * - A refusal says only that it is a refusal and which request field it concerns: no byte, size,
 *   type or existence fact of a file outside the directory reaches the reply or the log. A missing
 *   file *inside* the directory is `ENOENT:no_such_image`.
 *
 * On a system without `/proc/self/fd` (not Linux) the same walk runs on path strings, with the
 * device/inode checks; it then has the usual check-then-open window for intermediate directories.
 */
import { constants, existsSync } from 'node:fs';
import { lstat, open, readlink, realpath, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, normalize, relative, sep } from 'node:path';
import type { WireError } from './engine-port.js';

/** The read bound when neither the engine's `maxImageBytes` nor `[control] max_image_bytes` gives one. */
export const DEFAULT_MAX_IMAGE_BYTES = 1 << 20;

/** How many symlinks one request may pass through (the kernel's own limit is 40). */
const MAX_SYMLINKS = 40;
/** How deep a request may reach below the images directory. */
const MAX_DEPTH = 64;
const CHUNK = 64 * 1024;

const PROC_FD = process.platform === 'linux' && existsSync('/proc/self/fd');

const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0;
const O_NONBLOCK = constants.O_NONBLOCK ?? 0;
const O_NOCTTY = constants.O_NOCTTY ?? 0;
const O_DIRECTORY = constants.O_DIRECTORY ?? 0;
const FILE_FLAGS = constants.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
const DIR_FLAGS = constants.O_RDONLY | O_NOFOLLOW | O_DIRECTORY;

export type ImageRead = { ok: true; bytes: Uint8Array; source: string } | { ok: false; error: WireError };

export interface ImageReadOptions {
  /** The images directory; without one, no request may name a file. */
  imagesDir: string | undefined;
  /** At most this many bytes are accepted (limit + 1 are read to tell). */
  maxBytes: number;
  /** The request field the path came in (named in every error). */
  field?: string;
}

const fail = (error: string, detail: Record<string, unknown>): ImageRead => ({ ok: false, error: { error, detail } });

/** The refusals and failures, each naming only the request field (and, for a too-large file inside, the limit). */
export const imageErrors = {
  outside: (field: string) => fail('EPERM:path_outside_images_dir', { field }),
  notRegular: (field: string) => fail('EINVAL:not_a_regular_file', { field }),
  missing: (field: string) => fail('ENOENT:no_such_image', { field }),
  unreadable: (field: string) => fail('EACCES:image_not_readable', { field }),
  tooLarge: (field: string, max: number) => fail('ENOSPC:image_too_large', { field, max }),
  noImagesDir: (field: string) => fail('ENOTSUP:no_images_dir', { field }),
  imagesDirMissing: (field: string) => fail('ENOENT:images_dir_missing', { field }),
  io: (field: string) => fail('EIO:image_read_failed', { field }),
};

/**
 * Reads up to `limit + 1` bytes from an open file, whatever its size says; `null` when there were
 * more than `limit`. `sizeHint` (the file's `fstat` size) only sizes the first buffer; memory use
 * is bounded by the limit for any file, special ones too (a `/proc` file says 0 and never ends).
 */
export async function readAtMost(fh: FileHandle, limit: number, sizeHint = 0): Promise<Buffer | null> {
  let buf = Buffer.allocUnsafe(Math.max(Math.min(sizeHint, limit) + 1, Math.min(CHUNK, limit + 1)));
  let total = 0;
  for (;;) {
    if (total === buf.length) {
      if (total > limit) break;
      const grown = Buffer.allocUnsafe(Math.min(limit + 1, Math.max(buf.length * 2, total + CHUNK)));
      buf.copy(grown, 0, 0, total);
      buf = grown;
    }
    const { bytesRead } = await fh.read(buf, total, buf.length - total, null);
    if (bytesRead === 0) break;
    total += bytesRead;
  }
  if (total > limit) return null;
  return buf.subarray(0, total);
}

const errno = (e: unknown): string => (e as NodeJS.ErrnoException)?.code ?? 'EIO';

/** Splits a path into names, dropping empty and `.` segments. */
const names = (p: string): string[] => p.split('/').filter((n) => n !== '' && n !== '.');

interface Dir {
  fh: FileHandle;
  name: string;
}

/** Reads `requestPath` from inside `opts.imagesDir` (see the module comment for the rules). */
export async function readImageInside(requestPath: string, opts: ImageReadOptions): Promise<ImageRead> {
  const field = opts.field ?? 'path';
  if (opts.imagesDir === undefined) return imageErrors.noImagesDir(field);
  if (requestPath.includes('\0') || isAbsolute(requestPath) || requestPath.startsWith('/')) return imageErrors.outside(field);
  const queue = names(requestPath);
  if (queue.includes('..')) return imageErrors.outside(field);
  if (queue.length > MAX_DEPTH) return imageErrors.outside(field);

  let rootReal: string;
  let rootFh: FileHandle;
  try {
    rootReal = await realpath(opts.imagesDir);
    rootFh = await open(rootReal, constants.O_RDONLY | O_DIRECTORY);
  } catch {
    return imageErrors.imagesDirMissing(field);
  }
  const stack: Dir[] = [{ fh: rootFh, name: '' }];
  const closeAbove = async (depth: number) => {
    while (stack.length > depth) await stack.pop()!.fh.close().catch(() => undefined);
  };
  /** Where `name` is, looked up relative to the innermost open directory. */
  const at = (name: string): string =>
    PROC_FD ? `/proc/self/fd/${stack.at(-1)!.fh.fd}/${name}` : join(rootReal, ...stack.slice(1).map((d) => d.name), name);

  try {
    let hops = 0;
    while (queue.length > 0) {
      const name = queue.shift()!;
      if (name === '..') {
        if (stack.length === 1) return imageErrors.outside(field);
        await closeAbove(stack.length - 1);
        continue;
      }
      if (stack.length > MAX_DEPTH) return imageErrors.outside(field);
      const p = at(name);
      let st;
      try {
        st = await lstat(p);
      } catch (e) {
        const code = errno(e);
        // the directory it was looked up in is inside, so these facts are about the inside
        if (code === 'ENOENT' || code === 'ENOTDIR') return imageErrors.missing(field);
        if (code === 'EACCES') return imageErrors.unreadable(field);
        return imageErrors.outside(field);
      }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINKS) return imageErrors.outside(field);
        let target: string;
        try {
          target = await readlink(p);
        } catch {
          return imageErrors.outside(field); // swapped since the lstat
        }
        if (target.includes('\0')) return imageErrors.outside(field);
        if (isAbsolute(target)) {
          // only a target that names a place inside (by the directory's real path) is followed
          const rel = relative(rootReal, normalize(target));
          if (rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) return imageErrors.outside(field);
          await closeAbove(1);
          queue.unshift(...names(rel.split(sep).join('/')));
        } else {
          queue.unshift(...names(target));
        }
        continue;
      }
      const last = queue.length === 0;
      if (st.isDirectory()) {
        if (last) return imageErrors.notRegular(field);
        let fh: FileHandle;
        try {
          fh = await open(p, DIR_FLAGS);
        } catch {
          return imageErrors.outside(field); // replaced by a symlink or something else since the lstat
        }
        stack.push({ fh, name });
        const fst = await fh.stat();
        if (!fst.isDirectory() || fst.dev !== st.dev || fst.ino !== st.ino) return imageErrors.outside(field);
        continue;
      }
      if (!last) return imageErrors.missing(field); // a file used as a directory
      if (!st.isFile()) return imageErrors.notRegular(field);
      return await readFinal(p, st, rootReal, opts.maxBytes, field, requestPath);
    }
    return imageErrors.notRegular(field); // the path named the directory itself
  } catch {
    return imageErrors.io(field);
  } finally {
    await closeAbove(0);
  }
}

async function readFinal(
  p: string,
  looked: { dev: number; ino: number },
  rootReal: string,
  maxBytes: number,
  field: string,
  source: string,
): Promise<ImageRead> {
  let fh: FileHandle;
  try {
    fh = await open(p, FILE_FLAGS);
  } catch (e) {
    const code = errno(e);
    // with /proc the lookup was relative to an inside directory; otherwise nothing is certain
    if (PROC_FD && code === 'ENOENT') return imageErrors.missing(field);
    if (PROC_FD && code === 'EACCES') return imageErrors.unreadable(field);
    return imageErrors.outside(field);
  }
  try {
    const st = await fh.stat();
    // the inode opened must be the one looked up; anything else was swapped in meanwhile
    if (st.dev !== looked.dev || st.ino !== looked.ino) return imageErrors.outside(field);
    if (!st.isFile()) return imageErrors.notRegular(field);
    if (!(await openedInside(fh, p, rootReal))) return imageErrors.outside(field);
    if (st.size > maxBytes) return imageErrors.tooLarge(field, maxBytes);
    const bytes = await readAtMost(fh, maxBytes, st.size); // and the size said is not trusted either
    if (bytes === null) return imageErrors.tooLarge(field, maxBytes);
    return { ok: true, bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length), source };
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** What the descriptor refers to lies inside the images directory (by its real path). */
async function openedInside(fh: FileHandle, p: string, rootReal: string): Promise<boolean> {
  let where: string;
  try {
    where = PROC_FD ? await readlink(`/proc/self/fd/${fh.fd}`) : await realpath(p);
  } catch {
    return false;
  }
  return where.startsWith(rootReal.endsWith(sep) ? rootReal : rootReal + sep);
}
