/**
 * Where a listener keeps the part of an image it has received, keyed by the image's SHA-256, so
 * an interrupted transfer resumes instead of starting over. The memory store lives as long as the
 * listener process; the directory store survives a restart of it (the engine's streaming session
 * does not, so the listener re-feeds these bytes to a new session before resuming).
 *
 * Only one partial is kept: a device receives one image at a time, and starting a new one
 * discards older leftovers.
 */
import { mkdir, open, readFile, readdir, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

export interface PartialKey {
  sha256: string; // hex
  /** Bytes of the stream saved (the encoded stream for a compressed or delta transfer). */
  totalBytes: number;
  crc32: number;
  /** The stream's encoding (`raw` when absent; `deflate:12`, `patch:<base sha256>`): a partial of another encoding is not resumed. */
  encoding?: string;
}

export interface PartialWriter {
  /** Appends bytes after everything appended before; resolves when they are stored. */
  append(bytes: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export interface PartialStore {
  /** The bytes held for this image (a prefix of it), or null. Never longer than totalBytes. */
  load(key: PartialKey): Promise<Uint8Array | null>;
  /** Starts (or continues) saving this image, keeping the first `keepBytes` already held. */
  start(key: PartialKey, keepBytes: number): Promise<PartialWriter>;
  discard(sha256: string): Promise<void>;
}

const sameKey = (a: PartialKey, b: PartialKey): boolean =>
  a.sha256 === b.sha256 && a.totalBytes === b.totalBytes && a.crc32 === b.crc32 && (a.encoding ?? 'raw') === (b.encoding ?? 'raw');

export class MemoryPartialStore implements PartialStore {
  private entry: { key: PartialKey; chunks: Uint8Array[]; length: number } | null = null;

  async load(key: PartialKey): Promise<Uint8Array | null> {
    if (!this.entry || !sameKey(this.entry.key, key)) return null;
    return Buffer.concat(this.entry.chunks, this.entry.length);
  }

  async start(key: PartialKey, keepBytes: number): Promise<PartialWriter> {
    const held = this.entry && sameKey(this.entry.key, key) ? Buffer.concat(this.entry.chunks, this.entry.length) : Buffer.alloc(0);
    const kept = held.subarray(0, Math.min(keepBytes, held.length));
    const entry = { key, chunks: kept.length ? [Uint8Array.from(kept)] : [] as Uint8Array[], length: kept.length };
    this.entry = entry;
    return {
      append: async (bytes) => {
        if (this.entry !== entry) return; // superseded by a newer image
        // Kept by reference: the listener hands over chunks it never touches again.
        entry.chunks.push(bytes);
        entry.length += bytes.length;
      },
      close: async () => {},
    };
  }

  async discard(sha256: string): Promise<void> {
    if (this.entry?.key.sha256 === sha256) this.entry = null;
  }
}

/** Keeps the partial in `<dir>/<sha256>.part` with its key in `<sha256>.json`. */
export class DirectoryPartialStore implements PartialStore {
  constructor(private readonly dir: string) {}

  private paths(sha256: string): { meta: string; part: string } {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new RangeError(`not a SHA-256 hex digest: ${sha256}`);
    return { meta: join(this.dir, `${sha256}.json`), part: join(this.dir, `${sha256}.part`) };
  }

  async load(key: PartialKey): Promise<Uint8Array | null> {
    const { meta, part } = this.paths(key.sha256);
    try {
      const saved = JSON.parse(await readFile(meta, 'utf8')) as PartialKey;
      if (!sameKey(saved, key)) return null;
      const bytes = await readFile(part);
      // A part longer than the image cannot be ours; ignore it rather than trust it.
      return bytes.length <= key.totalBytes ? bytes : null;
    } catch {
      return null;
    }
  }

  async start(key: PartialKey, keepBytes: number): Promise<PartialWriter> {
    await mkdir(this.dir, { recursive: true });
    const { meta, part } = this.paths(key.sha256);
    for (const name of await readdir(this.dir)) {
      if (!name.startsWith(key.sha256) && /^[0-9a-f]{64}\.(json|part)$/.test(name)) await rm(join(this.dir, name), { force: true });
    }
    const held = await this.load(key);
    const keep = held ? Math.min(keepBytes, held.length) : 0;
    await writeFile(meta, JSON.stringify(key));
    const fh: FileHandle = await open(part, keep > 0 ? 'r+' : 'w');
    await fh.truncate(keep);
    let position = keep;
    let chain: Promise<void> = Promise.resolve();
    let closed = false;
    return {
      append: (bytes) => {
        const at = position;
        position += bytes.length;
        chain = chain.then(async () => {
          if (closed) return;
          await fh.write(bytes, 0, bytes.length, at);
        });
        return chain;
      },
      close: async () => {
        await chain.catch(() => {});
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  }

  async discard(sha256: string): Promise<void> {
    const { meta, part } = this.paths(sha256);
    await rm(part, { force: true });
    await rm(meta, { force: true });
  }
}
