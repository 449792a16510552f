/**
 * The streaming patch applier: `new PatchApplier(options, io)` (init) → `process(patchBytes)` with any
 * chunking → `finish()`. It reads the base only through `io.readBase(offset, length)` (at most 256
 * bytes a call) and writes the target only through `io.writeTarget(offset, bytes)`, in increasing
 * offsets, each byte once. Memory is fixed: the 88-byte header, a 256-byte buffer, the decoder (its
 * window is 2^windowBits of the patch ≤ 4 KiB) and a few counters, whatever sizes the patch announces.
 * `save()` between two `process()` calls gives the state as bytes; `PatchApplier.restore` resumes, fed
 * from `inputOffset` on. Pure: no Node modules. Format: patch-format.ts and docs/delta.md.
 */
import { CodecStop, codecError, type CodecError, type CodecErrorReason } from './errors.js';
import { Inflater, inflateRamBytes } from './inflate.js';
import { FLAG_CARRY, PATCH_HEADER_SIZE, decodePatchHeader, hexOf, unzigzag, type PatchHeader } from './patch-format.js';

export interface PatchApplyOptions {
  /** Size of the base the caller really has (the active slot's image). */
  baseSize: number;
  /** SHA-256 of that base (32 bytes or hex): a patch made for another base is refused at its header. */
  baseSha256: Uint8Array | string;
  /** The largest target the caller can hold (the inactive slot): a larger announced target is refused. */
  maxTargetSize: number;
  /** The target size the transfer announced, when there was an announce: the header must agree. */
  targetSize?: number;
}

export interface PatchIO {
  /** `length` (≤ 256) bytes of the base at `offset`; the applier checked offset + length ≤ baseSize. */
  readBase(offset: number, length: number): Uint8Array;
  /** Target bytes at `offset`; `bytes` is a view into the applier's buffers: consume or copy before returning. */
  writeTarget(offset: number, bytes: Uint8Array): void;
}

const enum Rec {
  Field = 0,
  Add = 1,
  Extra = 2,
}
const FIELDS = ['add', 'extra', 'seek'] as const;
const BUF = 256;
const STATE_MAGIC = 0x4850; // "HP"
const STATE_VERSION = 1;
/** magic, version, record/field, the header, 12 u32 counters, the pending seek (f64). */
const STATE_FIXED = 4 + PATCH_HEADER_SIZE + 48 + 8;

function toBytes(h: Uint8Array | string): Uint8Array | null {
  if (h instanceof Uint8Array) return h.length === 32 ? h : null;
  if (!/^[0-9a-fA-F]{64}$/.test(h)) return null;
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export class PatchApplier {
  private readonly opts: PatchApplyOptions;
  private readonly baseHash: Uint8Array;
  private readonly io: PatchIO;
  private readonly headerBytes = new Uint8Array(PATCH_HEADER_SIZE);
  private headerHave = 0;
  private hdr: PatchHeader | null = null;
  private inflater: Inflater | null = null;
  private readonly buf = new Uint8Array(BUF);
  private error: CodecError | null = null;
  private finished = false;

  // record parser
  private rec: Rec = Rec.Field;
  private field = 0;
  private acc = 0;
  private accBytes = 0;
  private fieldAt = 0;
  private record = 0;
  private addLen = 0;
  private extraLen = 0;
  private left = 0;
  /** Target and base cursors, and the decoded body offset. */
  private t = 0;
  private b = 0;
  private bodyPos = 0;
  private inPos = 0;

  constructor(options: PatchApplyOptions, io: PatchIO) {
    const h = toBytes(options.baseSha256);
    if (!h) throw new RangeError('baseSha256 must be 32 bytes or 64 hex digits');
    if (!Number.isInteger(options.baseSize) || options.baseSize < 0 || options.baseSize > 0xffffffff) throw new RangeError('baseSize must be a u32');
    if (!Number.isInteger(options.maxTargetSize) || options.maxTargetSize < 0) throw new RangeError('maxTargetSize must be a non-negative integer');
    this.opts = options;
    this.baseHash = h;
    this.io = io;
  }

  /** The header, once its 88 bytes have arrived and passed the checks. */
  get header(): PatchHeader | null {
    return this.hdr;
  }
  /** Patch bytes consumed so far: after a restore, feed the patch from here. */
  get inputOffset(): number {
    return this.inPos;
  }
  /** Target bytes written so far. */
  get targetOffset(): number {
    return this.t;
  }

  process(chunk: Uint8Array): CodecError | null {
    if (this.error) return this.error;
    if (this.finished) return this.setError(codecError('bad_call', 'process', this.inPos, 'process() after finish()'));
    let i = 0;
    if (this.headerHave < PATCH_HEADER_SIZE) {
      const n = Math.min(PATCH_HEADER_SIZE - this.headerHave, chunk.length);
      this.headerBytes.set(chunk.subarray(0, n), this.headerHave);
      this.headerHave += n;
      this.inPos += n;
      i = n;
      if (this.headerHave < PATCH_HEADER_SIZE) return null;
      const e = this.acceptHeader();
      if (e) return this.setError(e);
    }
    if (i >= chunk.length) return null;
    const e = this.inflater!.process(chunk.subarray(i));
    this.inPos += chunk.length - i;
    if (e) return this.setError(e);
    return null;
  }

  finish(): CodecError | null {
    if (this.error) return this.error;
    this.finished = true;
    if (!this.hdr) return this.setError(codecError('truncated', 'header', this.headerHave, `the patch ends inside its ${PATCH_HEADER_SIZE}-byte header`));
    const e = this.inflater!.finish();
    if (e) return this.setError(e);
    if (this.rec !== Rec.Field || this.field !== 0 || this.accBytes !== 0 || this.t !== this.hdr.targetSize) {
      const name = this.rec === Rec.Field ? FIELDS[this.field]! : this.rec === Rec.Add ? 'add' : 'extra';
      return this.setError(codecError('truncated', `record[${this.record}].${name}`, this.bodyPos, `the record stream ends after ${this.t} of ${this.hdr.targetSize} target bytes`, 'body'));
    }
    return null;
  }

  private setError(e: CodecError): CodecError {
    this.error = e;
    return e;
  }

  private acceptHeader(): CodecError | null {
    const r = decodePatchHeader(this.headerBytes);
    if (!r.ok) return r.error;
    const h = r.value;
    if (h.baseSize !== this.opts.baseSize) {
      return codecError('base_size_mismatch', 'header.baseSize', 8, `the patch is for a ${h.baseSize}-byte base, this base is ${this.opts.baseSize} bytes`);
    }
    for (let k = 0; k < 32; k++) {
      if (h.baseSha256[k] !== this.baseHash[k]) {
        return codecError('base_mismatch', 'header.baseSha256', 12, `the patch is for base ${hexOf(h.baseSha256)}, this base is ${hexOf(this.baseHash)}`);
      }
    }
    if (h.targetSize > this.opts.maxTargetSize) {
      return codecError('target_too_large', 'header.targetSize', 44, `the target is ${h.targetSize} bytes, at most ${this.opts.maxTargetSize} fit`);
    }
    if (this.opts.targetSize !== undefined && h.targetSize !== this.opts.targetSize) {
      return codecError('bad_header', 'header.targetSize', 44, `the patch rebuilds ${h.targetSize} bytes, the transfer announced ${this.opts.targetSize}`);
    }
    this.hdr = h;
    this.carryMode = ((h.flags ?? 0) & FLAG_CARRY) !== 0;
    this.inflater = new Inflater({ windowBits: h.windowBits, outputSize: h.bodySize }, { write: (_o, bytes) => this.body(bytes) });
    return null;
  }

  private stop(reason: CodecErrorReason, name: string, message: string): never {
    throw new CodecStop(codecError(reason, `record[${this.record}].${name}`, this.fieldAt, message, 'body'));
  }

  /** Decoded record-stream bytes, in order. */
  private body(bytes: Uint8Array): void {
    const h = this.hdr!;
    let i = 0;
    while (i < bytes.length) {
      if (this.rec === Rec.Field) {
        if (this.accBytes === 0) this.fieldAt = this.bodyPos;
        const byte = bytes[i++]!;
        this.bodyPos++;
        const name = FIELDS[this.field]!;
        if (this.accBytes === 4 && byte > 0x0f) this.stop('length_overflow', name, `varint ${name} is longer than 32 bits`);
        this.acc += (byte & 0x7f) * 2 ** (7 * this.accBytes);
        this.accBytes++;
        if (byte & 0x80) continue;
        const v = this.acc;
        this.acc = 0;
        this.accBytes = 0;
        if (this.field === 0) {
          if (this.t + v > h.targetSize) this.stop('length_overflow', 'add', `add ${v} at target ${this.t} runs past the ${h.targetSize}-byte target`);
          if (this.b + v > h.baseSize) this.stop('copy_beyond_base', 'add', `add ${v} at base ${this.b} reads past the ${h.baseSize}-byte base`);
          this.addLen = v;
          this.field = 1;
        } else if (this.field === 1) {
          if (this.t + this.addLen + v > h.targetSize) this.stop('length_overflow', 'extra', `extra ${v} after add ${this.addLen} at target ${this.t} runs past the ${h.targetSize}-byte target`);
          this.extraLen = v;
          this.field = 2;
        } else {
          const seek = unzigzag(v);
          const nb = this.b + this.addLen + seek;
          if (nb < 0 || nb > h.baseSize) this.stop('seek_beyond_base', 'seek', `seek ${seek} moves the base cursor to ${nb}, outside 0..${h.baseSize}`);
          this.field = 0;
          this.rec = Rec.Add;
          this.left = this.addLen;
          this.carry = 0;
          this.fieldAt = this.bodyPos;
          this.pendingSeek = seek;
          if (this.left === 0) this.endAdd();
        }
        continue;
      }
      if (this.rec === Rec.Add) {
        const n = Math.min(this.left, bytes.length - i, BUF);
        const base = this.io.readBase(this.b, n);
        if (base.length < n) this.stop('bad_call', 'add', `readBase(${this.b}, ${n}) returned ${base.length} bytes`);
        const out = this.buf;
        if (this.carryMode) {
          let c = this.carry;
          for (let k = 0; k < n; k++) {
            const sum = base[k]! + bytes[i + k]! + c;
            out[k] = sum & 0xff;
            c = (this.t + k + 1) & 3 ? sum >> 8 : 0;
          }
          this.carry = c;
        } else {
          for (let k = 0; k < n; k++) out[k] = (base[k]! + bytes[i + k]!) & 0xff;
        }
        this.io.writeTarget(this.t, out.subarray(0, n));
        i += n;
        this.bodyPos += n;
        this.t += n;
        this.b += n;
        this.left -= n;
        if (this.left === 0) this.endAdd();
        continue;
      }
      // Extra
      const n = Math.min(this.left, bytes.length - i);
      this.io.writeTarget(this.t, bytes.subarray(i, i + n));
      i += n;
      this.bodyPos += n;
      this.t += n;
      this.left -= n;
      if (this.left === 0) this.endRecord();
    }
  }

  private pendingSeek = 0;
  /** FLAG_CARRY patches: the carry into the next add byte (0 or 1). */
  private carry = 0;
  private carryMode = false;

  private endAdd(): void {
    this.rec = Rec.Extra;
    this.left = this.extraLen;
    if (this.left === 0) this.endRecord();
  }

  private endRecord(): void {
    this.b += this.pendingSeek;
    this.pendingSeek = 0;
    this.rec = Rec.Field;
    this.record++;
  }

  /** The state between two `process()` calls: 148 bytes plus the decoder's (387 + up to 2^windowBits). */
  save(): Uint8Array {
    const inf = this.inflater ? this.inflater.save() : new Uint8Array(0);
    const out = new Uint8Array(STATE_FIXED + inf.length);
    const v = new DataView(out.buffer);
    v.setUint16(0, STATE_MAGIC);
    out[2] = STATE_VERSION;
    out[3] = (this.rec << 4) | (this.carry << 3) | this.field;
    out.set(this.headerBytes, 4);
    let o = 4 + PATCH_HEADER_SIZE;
    for (const x of [this.headerHave, this.acc, this.accBytes, this.fieldAt, this.record, this.addLen, this.extraLen, this.left, this.t, this.b, this.bodyPos, this.inPos]) {
      v.setUint32(o, x >>> 0);
      o += 4;
    }
    v.setFloat64(o, this.pendingSeek); // signed, up to ±2^32: a float64 keeps it exact
    out.set(inf, STATE_FIXED);
    return out;
  }

  static restore(state: Uint8Array, options: PatchApplyOptions, io: PatchIO): { ok: true; value: PatchApplier } | { ok: false; error: CodecError } {
    const bad = (field: string, offset: number, m: string) => ({ ok: false as const, error: codecError('bad_state', `state.${field}`, offset, m, 'state') });
    if (state.length < STATE_FIXED) return bad('length', 0, `a saved applier state is at least ${STATE_FIXED} bytes`);
    const v = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (v.getUint16(0) !== STATE_MAGIC || state[2] !== STATE_VERSION) return bad('magic', 0, 'not a saved applier state of this version');
    const a = new PatchApplier(options, io);
    a.headerBytes.set(state.subarray(4, 4 + PATCH_HEADER_SIZE));
    const words: number[] = [];
    for (let o = 4 + PATCH_HEADER_SIZE; o < STATE_FIXED - 8; o += 4) words.push(v.getUint32(o));
    const [headerHave = 0, acc = 0, accBytes = 0, fieldAt = 0, record = 0, addLen = 0, extraLen = 0, left = 0, t = 0, b = 0, bodyPos = 0, inPos = 0] = words;
    const rec = state[3]! >> 4;
    const field = state[3]! & 7;
    a.carry = (state[3]! >> 3) & 1;
    if (rec > 2 || field > 2 || accBytes > 4 || headerHave > PATCH_HEADER_SIZE) return bad('record', 3, 'a saved record field is out of range');
    Object.assign(a, { headerHave, acc, accBytes, fieldAt, record, addLen, extraLen, left, t, b, bodyPos, inPos, rec, field });
    a.pendingSeek = v.getFloat64(STATE_FIXED - 8);
    if (!Number.isInteger(a.pendingSeek)) return bad('seek', STATE_FIXED - 8, 'the saved seek is not an integer');
    if (headerHave < PATCH_HEADER_SIZE) {
      return state.length === STATE_FIXED ? { ok: true, value: a } : bad('length', STATE_FIXED, 'decoder state before the header is complete');
    }
    const e = a.acceptHeader();
    if (e) return { ok: false, error: e };
    const h = a.hdr!;
    if (t > h.targetSize || b > h.baseSize || left > Math.max(addLen, extraLen)) return bad('cursors', 4 + PATCH_HEADER_SIZE, 'saved cursors lie outside the announced sizes');
    const inf = Inflater.restore(state.subarray(STATE_FIXED), { windowBits: h.windowBits, outputSize: h.bodySize }, { write: (_o, bytes) => a.body(bytes) });
    if (!inf.ok) return inf;
    a.inflater = inf.value;
    return { ok: true, value: a };
  }
}

/**
 * RAM a C build of the applier needs on the device: its decoder with the window in RAM (the decoded
 * record stream is not stored anywhere, so its window cannot be read back from flash), the header, the
 * 256-byte base/target buffer and the counters above.
 */
export function applierRamBytes(windowBits: number): { total: number; parts: Record<string, number> } {
  const dec = inflateRamBytes(windowBits, 'ram');
  const parts = { ...dec.parts, header: PATCH_HEADER_SIZE, buffer: BUF, applierScalars: 56 };
  return { total: Object.values(parts).reduce((a, b) => a + b, 0), parts };
}
