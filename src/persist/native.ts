import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { PersistError, type PersistErrorCode } from './errors.js';

/**
 * Loader and typed wrapper for the `hsx_mmap` N-API addon (native/hsx_mmap.cc), built by
 * `npm ci` through the package's `install` script. The addon is found relative to this module,
 * which sits two levels below the package root both as `src/persist/native.ts` (tsx) and as
 * `dist/persist/native.js` (after `npm run build`). `HSX_MMAP_ADDON` overrides the path.
 */

interface NativeMapping {
  readonly buffer: ArrayBuffer | undefined;
  readonly mapped: boolean;
  readonly size: number;
  sync(offset: number, length: number): void;
  syncAsync(offset: number, length: number): Promise<void>;
  unmap(): void;
}
interface NativeAddon {
  Mapping: new (path: string, size: number, create: boolean, readonly: boolean, lock: boolean) => NativeMapping;
  pageSize: number;
}

const ADDON_RELATIVE = '../../native/build/Release/hsx_mmap.node';

function addonPath(): string {
  const override = process.env['HSX_MMAP_ADDON'];
  if (override) return override;
  return fileURLToPath(new URL(ADDON_RELATIVE, import.meta.url));
}

let addon: NativeAddon | null = null;
function loadAddon(): NativeAddon {
  if (addon) return addon;
  const path = addonPath();
  if (!existsSync(path)) {
    throw new PersistError('ENOENT', 'map', 'addon_missing',
      `native mmap addon not built: ${path} is missing (run \`npm ci\` or \`npx node-gyp rebuild --directory native\`)`,
      { path });
  }
  addon = createRequire(import.meta.url)(path) as NativeAddon;
  return addon;
}

/** The OS page size; msync ranges are aligned to it. */
export function pageSize(): number {
  return loadAddon().pageSize;
}

export interface MapOptions {
  /** Create the file (it must not exist) and size it; otherwise it must exist with exactly `size` bytes. */
  create?: boolean;
  /** Map read-only (PROT_READ); for inspecting a device another process is running. */
  readonly?: boolean;
  /** Take an exclusive advisory lock (flock) for as long as the mapping lives. */
  lock?: boolean;
}

/** A file mapped MAP_SHARED. `bytes` is a view of the mapping itself (no copy). */
export interface MappedFile {
  readonly path: string;
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly mapped: boolean;
  /** msync(MS_SYNC) the range on this thread. */
  sync(offset?: number, length?: number): void;
  /** msync(MS_SYNC) the range on the libuv thread pool. */
  syncAsync(offset?: number, length?: number): Promise<void>;
  /** Unmap now; every view over the mapping becomes zero-length. Idempotent. */
  unmap(): void;
}

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, num]) => [num, name]),
);

function codeFor(errno: number): PersistErrorCode {
  const name = errnoNames.get(errno);
  if (name === 'EACCES' || name === 'EPERM' || name === 'EROFS') return 'EACCES';
  if (name === 'ENOENT' || name === 'ENOTDIR') return 'ENOENT';
  if (name === 'EAGAIN' || name === 'EWOULDBLOCK') return 'EBUSY';
  if (name === 'EINVAL') return 'EINVAL';
  if (name === 'ENOSPC' || name === 'ENOMEM') return 'ENOSPC';
  return 'EIO';
}

/** Convert the addon's errno-carrying Error into a PersistError that still carries errno and syscall. */
function toPersistError(e: unknown, path: string): PersistError {
  const ne = e as { errno?: number; syscall?: string; message?: string };
  if (typeof ne.errno !== 'number') {
    return new PersistError('EIO', 'map', 'map_failed', `${path}: ${String(ne.message ?? e)}`, { path });
  }
  const errnoName = errnoNames.get(ne.errno) ?? `errno ${ne.errno}`;
  const sizeMismatch = ne.syscall === 'fstat' && ne.errno === osConstants.errno.EINVAL;
  return new PersistError(codeFor(ne.errno), 'map', sizeMismatch ? 'size_mismatch' : errnoName.toLowerCase(),
    String(ne.message), { path, errno: ne.errno, errnoName, syscall: ne.syscall });
}

export function mapFile(path: string, size: number, opts: MapOptions = {}): MappedFile {
  const lib = loadAddon();
  let m: NativeMapping;
  try {
    m = new lib.Mapping(path, size, opts.create === true, opts.readonly === true, opts.lock === true);
  } catch (e) {
    throw toPersistError(e, path);
  }
  const ab = m.buffer;
  if (!ab) throw new PersistError('EIO', 'map', 'no_buffer', `${path}: mapping produced no buffer`, { path });
  const bytes = new Uint8Array(ab);
  return {
    path,
    size,
    bytes,
    get mapped() { return m.mapped; },
    sync(offset = 0, length = size - offset) {
      try { m.sync(offset, length); } catch (e) { throw toPersistError(e, path); }
    },
    async syncAsync(offset = 0, length = size - offset) {
      try { await m.syncAsync(offset, length); } catch (e) { throw toPersistError(e, path); }
    },
    unmap() { m.unmap(); },
  };
}
