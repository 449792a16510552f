/**
 * Hand-made deflate streams and patches for the codec tests: a bit writer for fixed-Huffman and stored
 * blocks (RFC 1951 §3.2.4-3.2.6), written from the RFC's tables, and a feeder that cuts input into
 * chunks of seeded-random sizes.
 */
import { Inflater, PatchApplier, type CodecError, type InflateLimits, type PatchApplyOptions } from '../src/engine/codec/index.js';

export class BitWriter {
  private readonly out: number[] = [];
  private acc = 0;
  private n = 0;
  /** `count` bits of `value`, least significant first (how deflate packs everything but Huffman codes). */
  bits(value: number, count: number): this {
    for (let i = 0; i < count; i++) this.bit((value >>> i) & 1);
    return this;
  }
  /** A Huffman code: most significant bit first. */
  code(value: number, count: number): this {
    for (let i = count - 1; i >= 0; i--) this.bit((value >>> i) & 1);
    return this;
  }
  private bit(b: number): void {
    this.acc |= b << this.n;
    if (++this.n === 8) {
      this.out.push(this.acc);
      this.acc = 0;
      this.n = 0;
    }
  }
  align(): this {
    if (this.n) this.bits(0, 8 - this.n);
    return this;
  }
  bytes(b: ArrayLike<number>): this {
    this.align();
    for (let i = 0; i < b.length; i++) this.out.push(b[i]!);
    return this;
  }
  done(): Uint8Array {
    this.align();
    return Uint8Array.from(this.out);
  }
}

const LEN_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/** A fixed-Huffman block (BTYPE 01) writer. */
export class FixedBlock {
  constructor(readonly w = new BitWriter(), final = true) {
    w.bits(final ? 1 : 0, 1).bits(1, 2);
  }
  private sym(s: number): void {
    if (s < 144) this.w.code(0x30 + s, 8);
    else if (s < 256) this.w.code(0x190 + s - 144, 9);
    else if (s < 280) this.w.code(s - 256, 7);
    else this.w.code(0xc0 + s - 280, 8);
  }
  lit(...bytes: number[]): this {
    for (const b of bytes) this.sym(b);
    return this;
  }
  match(len: number, dist: number): this {
    let i = LEN_BASE.length - 1;
    while (LEN_BASE[i]! > len) i--;
    this.sym(257 + i);
    this.w.bits(len - LEN_BASE[i]!, LEN_EXTRA[i]!);
    let d = DIST_BASE.length - 1;
    while (DIST_BASE[d]! > dist) d--;
    this.w.code(d, 5);
    this.w.bits(dist - DIST_BASE[d]!, DIST_EXTRA[d]!);
    return this;
  }
  /** A raw literal/length symbol, for reserved ones (286, 287). */
  raw(sym: number): this {
    this.sym(sym);
    return this;
  }
  end(): BitWriter {
    this.sym(256);
    return this.w;
  }
}

/** A stored block (BTYPE 00) holding `data`. */
export function storedBlock(data: ArrayLike<number>, final = true, w = new BitWriter()): BitWriter {
  w.bits(final ? 1 : 0, 1).bits(0, 2).align();
  w.bits(data.length, 16).bits(~data.length & 0xffff, 16);
  return w.bytes(data);
}

/** xorshift32, so every chunking is reproducible from its seed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

/** Cuts `bytes` into chunks of 1..max bytes (random, seeded); max 1 means byte by byte. */
export function chunks(bytes: Uint8Array, seed: number, max: number): Uint8Array[] {
  const r = rng(seed);
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; ) {
    const n = 1 + Math.floor(r() * max);
    out.push(bytes.subarray(i, i + n));
    i += n;
  }
  return out;
}

export interface InflateRun {
  out: Uint8Array;
  error: CodecError | null;
  /** Highest offset + length any write reached. */
  maxEnd: number;
}

/** Inflates `stream` in the given chunks into a buffer of the announced size (never grown). */
export function inflateAll(stream: Uint8Array, limits: InflateLimits, parts: Uint8Array[] = [stream]): InflateRun {
  const out = new Uint8Array(limits.outputSize);
  let maxEnd = 0;
  const io = {
    write: (o: number, b: Uint8Array) => {
      maxEnd = Math.max(maxEnd, o + b.length);
      if (o + b.length <= out.length) out.set(b, o);
    },
    readOutput: (o: number, n: number) => out.slice(o, o + n),
  };
  const inf = new Inflater(limits, io);
  for (const p of parts) {
    const e = inf.process(p);
    if (e) return { out, error: e, maxEnd };
  }
  return { out, error: inf.finish(), maxEnd };
}

export interface ApplyRun {
  out: Uint8Array;
  error: CodecError | null;
  maxEnd: number;
}

/** Applies `patch` fed in `parts` over `base` into a target buffer of `options.maxTargetSize`. */
export function applyAll(patch: Uint8Array, base: Uint8Array, options: PatchApplyOptions, parts: Uint8Array[] = [patch]): ApplyRun {
  const out = new Uint8Array(options.maxTargetSize);
  let maxEnd = 0;
  const a = new PatchApplier(options, {
    readBase: (o, n) => {
      if (o < 0 || o + n > base.length) throw new Error(`readBase(${o}, ${n}) outside the ${base.length}-byte base`);
      return base.subarray(o, o + n);
    },
    writeTarget: (o, b) => {
      maxEnd = Math.max(maxEnd, o + b.length);
      if (o + b.length <= out.length) out.set(b, o);
    },
  });
  for (const p of parts) {
    const e = a.process(p);
    if (e) return { out, error: e, maxEnd };
  }
  return { out: out.subarray(0, a.header?.targetSize ?? 0), error: a.finish(), maxEnd };
}
