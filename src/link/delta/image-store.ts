/**
 * The master's content-addressed image store (issue 25): every image the CLI or the gateway flashes is
 * kept by its SHA-256, so when a device later says which image it runs, the master holds that base and
 * can send a delta patch instead of the whole image. One directory of `<sha256>.hxe` files:
 *
 * - the gateway: `<state_dir>/images-by-sha/` (`stateImageDir`);
 * - the CLI: `--cache DIR`, default `$XDG_CACHE_HOME/hsx-gateway/images`, else `~/.cache/hsx-gateway/images`
 *   (`defaultCacheDir`).
 *
 * Files are written to a temporary name and renamed, so a crash never leaves a half image under a
 * SHA-256 name; a read hashes the file again and ignores one that does not match its name.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

const SHA_HEX = /^[0-9a-f]{64}$/;

export const sha256Hex = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** Where the CLI keeps images by default. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env['XDG_CACHE_HOME'];
  return xdg && xdg.startsWith('/') ? join(xdg, 'hsx-gateway', 'images') : join(env['HOME'] || homedir(), '.cache', 'hsx-gateway', 'images');
}

/** Where the gateway keeps images: under its state dir. */
export const stateImageDir = (stateDir: string): string => join(stateDir, 'images-by-sha');

/** What a flasher needs from the store (tests may give an in-memory one). */
export interface ImageSource {
  /** Keeps `bytes` under its SHA-256 (idempotent); resolves with the hex digest. */
  put(bytes: Uint8Array): Promise<string>;
  /** The image with this SHA-256, or null when the store does not hold it. */
  get(sha256: string): Promise<Uint8Array | null>;
  /**
   * The one SHA-256 held that starts with `prefix` (hex; a CAN node says 7 bytes of what it runs), or
   * null when none or more than one does.
   */
  resolve?(prefix: string): Promise<string | null>;
}

const HEX = /^[0-9a-f]+$/;
function unique(names: Iterable<string>, prefix: string): string | null {
  const p = prefix.toLowerCase();
  if (!HEX.test(p)) return null;
  let found: string | null = null;
  for (const n of names) if (n.startsWith(p)) {
    if (found !== null) return null;
    found = n;
  }
  return found;
}

export class ContentStore implements ImageSource {
  constructor(readonly dir: string) {}

  private path(sha256: string): string {
    if (!SHA_HEX.test(sha256)) throw new RangeError(`not a SHA-256 hex digest: ${sha256}`);
    return join(this.dir, `${sha256}.hxe`);
  }

  async put(bytes: Uint8Array): Promise<string> {
    const sha = sha256Hex(bytes);
    const path = this.path(sha);
    const held = await stat(path).catch(() => null);
    if (held?.isFile() && held.size === bytes.length) return sha;
    await mkdir(this.dir, { recursive: true });
    const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeFile(tmp, bytes);
      await rename(tmp, path);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    return sha;
  }

  async resolve(prefix: string): Promise<string | null> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    return unique(names.filter((n) => /^[0-9a-f]{64}\.hxe$/.test(n)).map((n) => n.slice(0, 64)), prefix);
  }

  async get(sha256: string): Promise<Uint8Array | null> {
    const want = sha256.toLowerCase();
    let bytes: Buffer;
    try {
      bytes = await readFile(this.path(want));
    } catch {
      return null;
    }
    // a file damaged on disk is not a base: a patch made from it would not apply
    return sha256Hex(bytes) === want ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : null;
  }
}

/** An in-memory store (tests, a one-off flash without a cache). */
export class MemoryContentStore implements ImageSource {
  private readonly images = new Map<string, Uint8Array>();

  async put(bytes: Uint8Array): Promise<string> {
    const sha = sha256Hex(bytes);
    if (!this.images.has(sha)) this.images.set(sha, Uint8Array.from(bytes));
    return sha;
  }

  async get(sha256: string): Promise<Uint8Array | null> {
    return this.images.get(sha256.toLowerCase()) ?? null;
  }

  async resolve(prefix: string): Promise<string | null> {
    return unique(this.images.keys(), prefix);
  }
}
