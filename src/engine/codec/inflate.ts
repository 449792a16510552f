/**
 * A streaming raw-DEFLATE (RFC 1951) decoder for small windows, written as the state machine a
 * bootloader would run: `new Inflater(limits, io)` (init) → `process(chunk)` any number of times with
 * any chunk boundaries (down to one byte) → `finish()`. Output leaves only through `io.write(offset,
 * bytes)`; back-references are served from a RAM ring of 2^windowBits bytes (`window: 'ram'`) or read
 * back from the output already written (`window: 'output'`, the device's flash: then the decoder needs
 * no window RAM at all). Every step consumes input atomically (a Huffman symbol and its extra bits are
 * taken only once all of them are there), so the state between two `process()` calls is small and
 * `save()` can serialise it; `Inflater.restore()` continues from it. Pure: no Node modules.
 *
 * Huffman decoding is canonical and table-free beyond the counts and the sorted symbols (as in
 * RFC 1951 §3.2.2), which is what keeps the decoder's tables under 1 KiB; docs/delta.md has the figure.
 */
import { CodecStop, codecError, type CodecError, type CodecErrorReason } from './errors.js';

export const MIN_WINDOW_BITS = 8;
/** The largest window a device decoder accepts (4 KiB). */
export const MAX_WINDOW_BITS = 12;

export interface InflateLimits {
  /** log2 of the window; distances above 2^windowBits are refused (`window_exceeded`). 8..12. */
  windowBits: number;
  /** The announced decoded size: output beyond it is refused, `finish()` wants exactly this many bytes. */
  outputSize: number;
  /** `ram` (default): a ring of 2^windowBits bytes; `output`: back-references are read through `io.readOutput`. */
  window?: 'ram' | 'output';
}

export interface InflateIO {
  /** Decoded bytes at `offset`. `bytes` is a view into the decoder's buffer: consume or copy it before returning. */
  write(offset: number, bytes: Uint8Array): void;
  /** Only for `window: 'output'`: `length` bytes already written at `offset` (at most 256 per call). */
  readOutput?(offset: number, length: number): Uint8Array;
}

const enum Mode {
  Header = 0,
  StoredLen = 1,
  StoredNlen = 2,
  StoredCopy = 3,
  DynHeader = 4,
  DynClen = 5,
  DynLens = 6,
  Codes = 7,
  LenExtra = 8,
  Dist = 9,
  DistExtra = 10,
  Done = 11,
  Failed = 12,
}

const MAX_BITS = 15;
const CLEN_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
const LEN_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/** A canonical Huffman code: how many codes of each length, and the symbols in code order. */
class Huffman {
  readonly counts = new Uint16Array(MAX_BITS + 1);
  readonly symbols: Uint16Array;
  constructor(size: number) {
    this.symbols = new Uint16Array(size);
  }

  /**
   * Builds from code lengths. Returns null when usable; else what is wrong. An incomplete code is
   * accepted with `single` only when it is one code of length 1 or no code at all (what zlib writes for a
   * block with one or no distance).
   */
  build(lengths: Uint8Array, from: number, n: number, incomplete: 'never' | 'single'): string | null {
    const counts = this.counts;
    counts.fill(0);
    for (let s = 0; s < n; s++) counts[lengths[from + s]!]!++;
    const used = n - counts[0]!;
    let left = 1;
    for (let len = 1; len <= MAX_BITS; len++) {
      left = (left << 1) - counts[len]!;
      if (left < 0) return 'over-subscribed';
    }
    if (left > 0 && !(incomplete === 'single' && (used === 0 || (used === 1 && counts[1] === 1)))) return 'incomplete';
    const offs = new Uint16Array(MAX_BITS + 1);
    for (let len = 1; len < MAX_BITS; len++) offs[len + 1] = offs[len]! + counts[len]!;
    for (let s = 0; s < n; s++) {
      const l = lengths[from + s]!;
      if (l !== 0) this.symbols[offs[l]!++] = s;
    }
    return null;
  }
}

/** Fixed-code tables (RFC 1951 §3.2.6), built once. */
let fixedTables: { lit: Huffman; dist: Huffman } | null = null;
function fixed(): { lit: Huffman; dist: Huffman } {
  if (fixedTables) return fixedTables;
  const l = new Uint8Array(288 + 32);
  for (let s = 0; s < 288; s++) l[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
  l.fill(5, 288);
  const lit = new Huffman(288);
  // all 32 five-bit codes, so the reserved distances 30 and 31 decode and are refused by name
  const dist = new Huffman(32);
  lit.build(l, 0, 288, 'never');
  dist.build(l, 288, 32, 'never');
  fixedTables = { lit, dist };
  return fixedTables;
}

const STATE_MAGIC = 0x485a; // "HZ"
const STATE_VERSION = 1;
/** Fixed part of a saved state, before the window bytes. */
const STATE_FIXED = 48 + 320 + 19;
const STAGE = 256;

export class Inflater {
  readonly windowBits: number;
  readonly outputSize: number;
  readonly windowMode: 'ram' | 'output';
  private readonly io: InflateIO;
  private readonly mask: number;
  /** RAM ring (window 'ram') or a 256-byte staging buffer (window 'output'). */
  private readonly ring: Uint8Array;

  private mode: Mode = Mode.Header;
  private final = 0;
  private dynamic = 0;
  private bitbuf = 0;
  private bitcnt = 0;
  private inPos = 0;
  private outPos = 0;
  /** Output offset of the first byte in `ring` not yet handed to `write`. */
  private flushed = 0;
  private storedLeft = 0;
  private hlit = 0;
  private hdist = 0;
  private hclen = 0;
  private index = 0;
  private pending = 0;
  private pendingLen = 0;
  private readonly lengths = new Uint8Array(320);
  private readonly clenLens = new Uint8Array(19);
  private readonly clen = new Huffman(19);
  private readonly dynLit = new Huffman(288);
  private readonly dynDist = new Huffman(30);
  private lit: Huffman | null = null;
  private dist: Huffman | null = null;
  private error: CodecError | null = null;

  private input: Uint8Array = new Uint8Array(0);
  private ip = 0;

  constructor(limits: InflateLimits, io: InflateIO) {
    const wb = limits.windowBits;
    const bad = (m: string): never => {
      throw new RangeError(m);
    };
    if (!Number.isInteger(wb) || wb < MIN_WINDOW_BITS || wb > MAX_WINDOW_BITS) bad(`windowBits must be ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}, got ${wb}`);
    if (!Number.isInteger(limits.outputSize) || limits.outputSize < 0 || limits.outputSize > 0xffffffff) bad(`outputSize must be a u32, got ${limits.outputSize}`);
    this.windowMode = limits.window ?? 'ram';
    if (this.windowMode === 'output' && typeof io.readOutput !== 'function') bad("window 'output' needs io.readOutput");
    this.windowBits = wb;
    this.outputSize = limits.outputSize;
    this.io = io;
    this.mask = (1 << wb) - 1;
    this.ring = new Uint8Array(this.windowMode === 'ram' ? 1 << wb : STAGE);
  }

  /** Bytes of output produced so far (all of them already handed to `write` when `process` returns). */
  get outputOffset(): number {
    return this.outPos;
  }
  /** Bytes of input consumed so far. */
  get inputOffset(): number {
    return this.inPos;
  }
  /** The final block has ended. */
  get done(): boolean {
    return this.mode === Mode.Done;
  }
  get failed(): CodecError | null {
    return this.error;
  }

  /** Feeds bytes. Returns null, or the error that stops the stream (every later call returns it again). */
  process(chunk: Uint8Array): CodecError | null {
    if (this.error) return this.error;
    this.input = chunk;
    this.ip = 0;
    try {
      this.run();
      if (this.mode === Mode.Done && (this.ip < chunk.length || this.bitcnt >= 8)) {
        this.fail('trailing_data', 'deflate', this.inPos - (this.bitcnt >> 3), 'bytes follow the final deflate block');
      }
      this.flush();
    } catch (e) {
      if (!(e instanceof CodecStop)) throw e;
      this.error = e.error;
      this.mode = Mode.Failed;
      // what was decoded correctly before the fault still reaches the output
      try {
        this.flush();
      } catch (e2) {
        if (!(e2 instanceof CodecStop)) throw e2;
      }
    } finally {
      this.input = new Uint8Array(0);
    }
    return this.error;
  }

  /** The stream must have ended with its final block and exactly `outputSize` bytes. */
  finish(): CodecError | null {
    if (this.error) return this.error;
    if (this.mode !== Mode.Done) {
      return this.setError(codecError('truncated', 'deflate', this.inPos, `the deflate stream ends inside a block after ${this.outPos} of ${this.outputSize} bytes`));
    }
    if (this.outPos !== this.outputSize) {
      return this.setError(codecError('truncated', 'deflate.outputSize', this.inPos, `the deflate stream decodes to ${this.outPos} bytes, ${this.outputSize} were announced`));
    }
    return null;
  }

  private setError(e: CodecError): CodecError {
    this.error = e;
    this.mode = Mode.Failed;
    return e;
  }

  private fail(reason: CodecErrorReason, field: string, offset: number, message: string, detail?: Record<string, number | string>): never {
    throw new CodecStop(codecError(reason, field, offset, message, 'input', detail));
  }

  /** Offset of the input byte holding the next unread bit. */
  private get here(): number {
    return this.inPos - (this.bitcnt >> 3) - (this.bitcnt & 7 ? 1 : 0);
  }

  /** Pulls input bytes into the bit buffer until it holds `n` bits (n <= 24) or the input is used up. */
  private fill(n: number): boolean {
    const input = this.input;
    while (this.bitcnt < n && this.ip < input.length) {
      this.bitbuf |= input[this.ip++]! << this.bitcnt;
      this.bitcnt += 8;
      this.inPos++;
    }
    return this.bitcnt >= n;
  }

  private take(n: number): number {
    const v = this.bitbuf & ((1 << n) - 1);
    this.bitbuf >>>= n;
    this.bitcnt -= n;
    return v;
  }

  /**
   * Decodes one symbol from the bits in the buffer without consuming them: returns symbol | (length << 16),
   * -1 when more bits are needed, or fails when no code matches.
   */
  private peek(h: Huffman, field: string): number {
    const counts = h.counts;
    let code = 0;
    let first = 0;
    let index = 0;
    let buf = this.bitbuf;
    for (let len = 1; len <= MAX_BITS; len++) {
      if (len > this.bitcnt) return -1;
      code |= buf & 1;
      buf >>>= 1;
      const count = counts[len]!;
      if (code - first < count) return h.symbols[index + code - first]! | (len << 16);
      index += count;
      first = (first + count) << 1;
      code <<= 1;
    }
    return this.fail('bad_symbol', field, this.here, 'a Huffman code matches no symbol');
  }

  private run(): void {
    for (;;) {
      switch (this.mode) {
        case Mode.Header: {
          if (!this.fill(3)) return;
          this.final = this.take(1);
          const type = this.take(2);
          if (type === 0) {
            this.take(this.bitcnt & 7);
            this.mode = Mode.StoredLen;
          } else if (type === 1) {
            const f = fixed();
            this.lit = f.lit;
            this.dist = f.dist;
            this.dynamic = 0;
            this.mode = Mode.Codes;
          } else if (type === 2) {
            this.mode = Mode.DynHeader;
          } else {
            this.fail('bad_block_type', 'deflate.BTYPE', this.here, 'block type 3 is reserved');
          }
          break;
        }
        case Mode.StoredLen:
          if (!this.fill(16)) return;
          this.storedLeft = this.take(16);
          this.mode = Mode.StoredNlen;
          break;
        case Mode.StoredNlen: {
          if (!this.fill(16)) return;
          const nlen = this.take(16);
          if ((nlen ^ 0xffff) !== this.storedLeft) {
            this.fail('stored_length_mismatch', 'deflate.NLEN', this.here - 2, `stored block NLEN 0x${nlen.toString(16)} is not the complement of LEN ${this.storedLeft}`);
          }
          this.mode = Mode.StoredCopy;
          break;
        }
        case Mode.StoredCopy: {
          if (this.storedLeft > 0 && this.outPos + this.storedLeft > this.outputSize) {
            this.fail('output_overflow', 'deflate.LEN', this.here, `a stored block of ${this.storedLeft} bytes at output ${this.outPos} passes the announced ${this.outputSize}`);
          }
          while (this.storedLeft > 0 && this.bitcnt >= 8) {
            this.put(this.take(8));
            this.storedLeft--;
          }
          while (this.storedLeft > 0 && this.ip < this.input.length) {
            this.put(this.input[this.ip++]!);
            this.inPos++;
            this.storedLeft--;
          }
          if (this.storedLeft > 0) return;
          this.mode = this.final ? Mode.Done : Mode.Header;
          break;
        }
        case Mode.DynHeader: {
          if (!this.fill(14)) return;
          const at = this.here;
          this.hlit = this.take(5) + 257;
          this.hdist = this.take(5) + 1;
          this.hclen = this.take(4) + 4;
          if (this.hlit > 286) this.fail('bad_code_lengths', 'deflate.HLIT', at, `HLIT gives ${this.hlit} literal/length codes, at most 286`);
          if (this.hdist > 30) this.fail('bad_code_lengths', 'deflate.HDIST', at, `HDIST gives ${this.hdist} distance codes, at most 30`);
          this.clenLens.fill(0);
          this.index = 0;
          this.mode = Mode.DynClen;
          break;
        }
        case Mode.DynClen: {
          while (this.index < this.hclen) {
            if (!this.fill(3)) return;
            this.clenLens[CLEN_ORDER[this.index++]!] = this.take(3);
          }
          const why = this.clen.build(this.clenLens, 0, 19, 'never');
          if (why) this.fail('bad_code_lengths', 'deflate.HCLEN', this.here, `the code-length code is ${why}`);
          this.lengths.fill(0);
          this.index = 0;
          this.mode = Mode.DynLens;
          break;
        }
        case Mode.DynLens: {
          const total = this.hlit + this.hdist;
          while (this.index < total) {
            this.fill(24);
            const p = this.peek(this.clen, 'deflate.codeLengths');
            if (p < 0) return;
            const sym = p & 0xffff;
            const len = p >>> 16;
            if (sym < 16) {
              this.take(len);
              this.lengths[this.index++] = sym;
              continue;
            }
            const extra = sym === 16 ? 2 : sym === 17 ? 3 : 7;
            if (this.bitcnt < len + extra) return;
            const at = this.here;
            this.take(len);
            const rep = (sym === 16 ? 3 : sym === 17 ? 3 : 11) + this.take(extra);
            let value = 0;
            if (sym === 16) {
              if (this.index === 0) this.fail('bad_code_lengths', 'deflate.codeLengths', at, 'repeat of the previous length with no previous length');
              value = this.lengths[this.index - 1]!;
            }
            if (this.index + rep > total) this.fail('bad_code_lengths', 'deflate.codeLengths', at, `a repeat runs ${this.index + rep - total} past the ${total} code lengths`);
            this.lengths.fill(value, this.index, this.index + rep);
            this.index += rep;
          }
          this.buildDynamic(this.here);
          this.mode = Mode.Codes;
          break;
        }
        case Mode.Codes: {
          const lit = this.lit!;
          for (;;) {
            this.fill(24);
            const p = this.peek(lit, 'deflate.literal');
            if (p < 0) return;
            const sym = p & 0xffff;
            if (sym < 256) {
              if (this.outPos >= this.outputSize) {
                this.fail('output_overflow', 'deflate.literal', this.here, `a literal at output ${this.outPos} passes the announced ${this.outputSize}`);
              }
              this.take(p >>> 16);
              this.put(sym);
              continue;
            }
            if (sym === 256) {
              this.take(p >>> 16);
              this.mode = this.final ? Mode.Done : Mode.Header;
              break;
            }
            if (sym > 285) this.fail('bad_symbol', 'deflate.length', this.here, `length symbol ${sym} is reserved`);
            this.take(p >>> 16);
            this.pending = sym - 257;
            this.mode = Mode.LenExtra;
            break;
          }
          break;
        }
        case Mode.LenExtra: {
          const e = LEN_EXTRA[this.pending]!;
          if (!this.fill(e)) return;
          this.pendingLen = LEN_BASE[this.pending]! + this.take(e);
          this.mode = Mode.Dist;
          break;
        }
        case Mode.Dist: {
          this.fill(24);
          const p = this.peek(this.dist!, 'deflate.distance');
          if (p < 0) return;
          const sym = p & 0xffff;
          if (sym > 29) this.fail('bad_symbol', 'deflate.distance', this.here, `distance symbol ${sym} is reserved`);
          this.take(p >>> 16);
          this.pending = sym;
          this.mode = Mode.DistExtra;
          break;
        }
        case Mode.DistExtra: {
          const e = DIST_EXTRA[this.pending]!;
          if (!this.fill(e)) return;
          const at = this.here;
          const dist = DIST_BASE[this.pending]! + this.take(e);
          const len = this.pendingLen;
          if (dist > this.mask + 1) {
            this.fail('window_exceeded', 'deflate.distance', at, `distance ${dist} is beyond the ${this.mask + 1}-byte window`, { distance: dist, window: this.mask + 1 });
          }
          if (dist > this.outPos) this.fail('distance_before_start', 'deflate.distance', at, `distance ${dist} reaches before the start of the output (${this.outPos} bytes so far)`);
          if (this.outPos + len > this.outputSize) {
            this.fail('output_overflow', 'deflate.length', at, `a ${len}-byte match at output ${this.outPos} passes the announced ${this.outputSize}`);
          }
          this.copy(dist, len);
          this.mode = Mode.Codes;
          break;
        }
        case Mode.Done:
        case Mode.Failed:
          return;
      }
    }
  }

  private buildDynamic(at: number): void {
    if (this.lengths[256] === 0) this.fail('bad_code_lengths', 'deflate.codeLengths', at, 'the block has no end-of-block code');
    let why = this.dynLit.build(this.lengths, 0, this.hlit, 'single');
    if (why) this.fail('bad_code_lengths', 'deflate.literalLengths', at, `the literal/length code is ${why}`);
    why = this.dynDist.build(this.lengths, this.hlit, this.hdist, 'single');
    if (why) this.fail('bad_code_lengths', 'deflate.distanceLengths', at, `the distance code is ${why}`);
    this.lit = this.dynLit;
    this.dist = this.dynDist;
    this.dynamic = 1;
  }

  /** One output byte (the caller checked the announced size). */
  private put(b: number): void {
    if (this.windowMode === 'ram') {
      const i = this.outPos & this.mask;
      this.ring[i] = b;
      this.outPos++;
      if (i === this.mask) this.flush();
    } else {
      const n = this.outPos - this.flushed;
      this.ring[n] = b;
      this.outPos++;
      if (n + 1 === STAGE) this.flush();
    }
  }

  private copy(dist: number, len: number): void {
    if (this.windowMode === 'ram') {
      const ring = this.ring;
      const mask = this.mask;
      for (; len > 0; len--) {
        const i = this.outPos & mask;
        ring[i] = ring[(this.outPos - dist) & mask]!;
        this.outPos++;
        if (i === mask) this.flush();
      }
      return;
    }
    while (len > 0) {
      const src = this.outPos - dist;
      if (src >= this.flushed) {
        // the source is still in the staging buffer: copy byte by byte (an overlapping copy repeats)
        const n = this.outPos - this.flushed;
        this.ring[n] = this.ring[src - this.flushed]!;
        this.outPos++;
        len--;
        if (n + 1 === STAGE) this.flush();
        continue;
      }
      this.flush();
      const n = Math.min(len, dist, STAGE);
      const got = this.io.readOutput!(src, n);
      if (got.length < n) this.fail('bad_call', 'io.readOutput', this.here, `readOutput(${src}, ${n}) returned ${got.length} bytes`);
      this.ring.set(got.subarray(0, n), 0);
      this.outPos += n;
      len -= n;
      if (n === STAGE) this.flush();
    }
  }

  /** Hands every byte produced since the last flush to `write`. */
  private flush(): void {
    const from = this.flushed;
    if (this.outPos === from) return;
    this.flushed = this.outPos; // before the call: a consumer that stops the stream gets these bytes once
    if (this.windowMode === 'ram') {
      const start = from & this.mask;
      this.io.write(from, this.ring.subarray(start, start + (this.outPos - from)));
    } else {
      this.io.write(from, this.ring.subarray(0, this.outPos - from));
    }
  }

  /**
   * The state between two `process()` calls, as bytes: 387 fixed bytes plus, for a RAM window, the last
   * min(output, 2^windowBits) output bytes. `Inflater.restore` continues from it.
   */
  save(): Uint8Array {
    const win = this.windowMode === 'ram' ? Math.min(this.outPos, this.mask + 1) : 0;
    const out = new Uint8Array(STATE_FIXED + win);
    const v = new DataView(out.buffer);
    v.setUint16(0, STATE_MAGIC);
    out[2] = STATE_VERSION;
    out[3] = this.mode;
    out[4] = this.windowBits;
    out[5] = (this.windowMode === 'output' ? 1 : 0) | (this.final << 1) | (this.dynamic << 2);
    out[6] = this.bitcnt;
    out[7] = this.pending;
    v.setUint32(8, this.bitbuf >>> 0);
    v.setUint32(12, this.inPos);
    v.setUint32(16, this.outPos);
    v.setUint32(20, this.outputSize);
    v.setUint32(24, this.storedLeft);
    v.setUint16(28, this.hlit);
    v.setUint16(30, this.hdist);
    v.setUint16(32, this.hclen);
    v.setUint16(34, this.index);
    v.setUint16(36, this.pendingLen);
    v.setUint32(40, win);
    // 44..47 reserved
    out.set(this.lengths, 48);
    out.set(this.clenLens, 48 + 320);
    for (let k = 0; k < win; k++) out[STATE_FIXED + k] = this.ring[(this.outPos - win + k) & this.mask]!;
    return out;
  }

  /**
   * Continues from `save()`'s bytes with the same limits; the state is checked (it may come from a
   * device's FRAM after a power loss) and refused with `bad_state` when it does not fit them.
   */
  static restore(state: Uint8Array, limits: InflateLimits, io: InflateIO): { ok: true; value: Inflater } | { ok: false; error: CodecError } {
    const bad = (field: string, offset: number, m: string) => ({ ok: false as const, error: codecError('bad_state', `state.${field}`, offset, m, 'state') });
    if (state.length < STATE_FIXED) return bad('length', 0, `a saved inflate state is at least ${STATE_FIXED} bytes, got ${state.length}`);
    const v = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (v.getUint16(0) !== STATE_MAGIC || state[2] !== STATE_VERSION) return bad('magic', 0, 'not a saved inflate state of this version');
    let inf: Inflater;
    try {
      inf = new Inflater(limits, io);
    } catch (e) {
      return { ok: false, error: codecError('bad_call', 'limits', 0, (e as Error).message, 'state') };
    }
    const mode = state[3]!;
    const flags = state[5]!;
    if (mode > Mode.Done) return bad('mode', 3, `mode ${mode} is not a resumable state`);
    if (state[4] !== inf.windowBits) return bad('windowBits', 4, `saved with windowBits ${state[4]}, restoring with ${inf.windowBits}`);
    if ((flags & 1 ? 'output' : 'ram') !== inf.windowMode) return bad('window', 5, 'saved with another window mode');
    if (v.getUint32(20) !== inf.outputSize) return bad('outputSize', 20, `saved for ${v.getUint32(20)} output bytes, restoring for ${inf.outputSize}`);
    const bitcnt = state[6]!;
    const outPos = v.getUint32(16);
    const win = v.getUint32(40);
    if (bitcnt > 31) return bad('bitcnt', 6, `bit count ${bitcnt}`);
    if (outPos > inf.outputSize) return bad('outPos', 16, `output position ${outPos} is past ${inf.outputSize}`);
    const wantWin = inf.windowMode === 'ram' ? Math.min(outPos, inf.mask + 1) : 0;
    if (win !== wantWin || state.length !== STATE_FIXED + win) return bad('window', 40, `window of ${win} bytes in a ${state.length}-byte state, expected ${wantWin}`);
    inf.mode = mode;
    inf.final = (flags >> 1) & 1;
    inf.dynamic = (flags >> 2) & 1;
    inf.bitcnt = bitcnt;
    inf.bitbuf = v.getUint32(8) & (bitcnt >= 32 ? -1 : (2 ** bitcnt - 1));
    inf.pending = state[7]!;
    inf.inPos = v.getUint32(12);
    inf.outPos = outPos;
    inf.flushed = outPos;
    inf.storedLeft = v.getUint32(24);
    inf.hlit = v.getUint16(28);
    inf.hdist = v.getUint16(30);
    inf.hclen = v.getUint16(32);
    inf.index = v.getUint16(34);
    inf.pendingLen = v.getUint16(36);
    if (inf.storedLeft > 0xffff || inf.hlit > 286 || inf.hdist > 30 || inf.hclen > 19 || inf.index > 320 || inf.pending > 29 || inf.pendingLen > 258) {
      return bad('fields', 24, 'a saved field is out of range');
    }
    inf.lengths.set(state.subarray(48, 48 + 320));
    inf.clenLens.set(state.subarray(48 + 320, STATE_FIXED));
    for (let k = 0; k < 320; k++) if (inf.lengths[k]! > 15) return bad('lengths', 48 + k, 'a code length above 15');
    for (let k = 0; k < 19; k++) if (inf.clenLens[k]! > 7) return bad('clenLens', 48 + 320 + k, 'a code-length length above 7');
    for (let k = 0; k < win; k++) inf.ring[(outPos - win + k) & inf.mask] = state[STATE_FIXED + k]!;
    // rebuild the tables the saved mode decodes with
    try {
      if (mode === Mode.DynLens) {
        if (inf.clen.build(inf.clenLens, 0, 19, 'never')) return bad('clenLens', 48 + 320, 'the saved code-length code does not build');
      }
      if (mode === Mode.Codes || mode === Mode.LenExtra || mode === Mode.Dist || mode === Mode.DistExtra) {
        if (inf.dynamic) {
          inf.buildDynamic(0);
        } else {
          const f = fixed();
          inf.lit = f.lit;
          inf.dist = f.dist;
        }
      }
    } catch (e) {
      if (e instanceof CodecStop) return bad('lengths', 48, 'the saved Huffman code lengths do not build');
      throw e;
    }
    return { ok: true, value: inf };
  }
}

/**
 * RAM a C build of this decoder needs on the device, in bytes, counted from the structures above:
 * the window (0 when back-references are read from flash), the Huffman tables (counts as u16[16] and
 * symbols as u16), the code lengths (u8[320] + u8[19]), the staging buffer for flash writes and the
 * scalar state. docs/delta.md quotes these figures; a test keeps the two equal.
 */
export function inflateRamBytes(windowBits: number, window: 'ram' | 'output'): { total: number; parts: Record<string, number> } {
  const parts = {
    window: window === 'ram' ? 2 ** windowBits : 0,
    staging: window === 'ram' ? 0 : STAGE,
    literalTable: 2 * (MAX_BITS + 1) + 2 * 288,
    distanceTable: 2 * (MAX_BITS + 1) + 2 * 30,
    codeLengthTable: 2 * (MAX_BITS + 1) + 2 * 19,
    codeLengths: 320 + 19,
    // mode, flags, bit buffer (u32), in/out positions, size, flushed, stored left, hlit/hdist/hclen/index, pending
    scalars: 48,
  };
  return { total: Object.values(parts).reduce((a, b) => a + b, 0), parts };
}
