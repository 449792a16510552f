/**
 * One shape for the intake, whatever the master sent: a raw image, a compressed image (raw deflate) or
 * a delta patch. `openTransferDecoder` returns a machine with `process(bytes)` / `finish()` / `save()`
 * that writes the new image into the inactive slot through `SlotIO`, in increasing offsets, and reads
 * only what it must (the active slot for a patch, the bytes it already wrote for a compressed image).
 * The intake keeps its own checks (size, HXE CRC, announced SHA-256) over the bytes written; this layer
 * only turns transfer bytes into image bytes. Pure: no Node modules.
 */
import { PatchApplier } from './apply.js';
import { codecError, type CodecError } from './errors.js';
import { Inflater, MAX_WINDOW_BITS, MIN_WINDOW_BITS } from './inflate.js';

export type TransferEncoding =
  | { kind: 'raw' }
  /** Raw deflate with the window the master announced (8..12). */
  | { kind: 'deflate'; windowBits: number }
  /** An HSX delta patch (its header carries the window). */
  | { kind: 'patch' };

export interface SlotIO {
  /** Bytes of the new image, at increasing offsets; `bytes` is a view: program or copy before returning. */
  writeInactive(offset: number, bytes: Uint8Array): void;
  /** Bytes already written to the inactive slot (a compressed image's history), ≤ 256 per call. */
  readInactive(offset: number, length: number): Uint8Array;
  /** Bytes of the running image (a patch's base), ≤ 256 per call. */
  readActive(offset: number, length: number): Uint8Array;
}

export interface TransferTarget {
  /** The announced size of the new image (for a patch, also checked against the patch header). */
  imageSize: number;
  /** The inactive slot's capacity. */
  slotSize: number;
  /** The running image, for a patch: its size and SHA-256 (32 bytes or hex). */
  active?: { size: number; sha256: Uint8Array | string };
}

export interface TransferDecoder {
  readonly encoding: TransferEncoding;
  /** Transfer bytes consumed so far: after `restoreTransferDecoder`, feed the transfer from here. */
  readonly inputOffset: number;
  /** Image bytes written so far. */
  readonly outputOffset: number;
  process(chunk: Uint8Array): CodecError | null;
  finish(): CodecError | null;
  /** State between two `process()` calls (see docs/delta.md for sizes). */
  save(): Uint8Array;
}

type Result<T> = { ok: true; value: T } | { ok: false; error: CodecError };

class RawDecoder implements TransferDecoder {
  readonly encoding = { kind: 'raw' } as const;
  private pos = 0;
  private error: CodecError | null = null;
  constructor(private readonly size: number, private readonly io: SlotIO) {}
  get inputOffset(): number {
    return this.pos;
  }
  get outputOffset(): number {
    return this.pos;
  }
  process(chunk: Uint8Array): CodecError | null {
    if (this.error) return this.error;
    if (this.pos + chunk.length > this.size) {
      this.error = codecError('output_overflow', 'raw', this.size, `the image runs past its announced ${this.size} bytes`);
      return this.error;
    }
    this.io.writeInactive(this.pos, chunk);
    this.pos += chunk.length;
    return null;
  }
  finish(): CodecError | null {
    if (this.error) return this.error;
    if (this.pos !== this.size) this.error = codecError('truncated', 'raw', this.pos, `the image ends after ${this.pos} of ${this.size} bytes`);
    return this.error;
  }
  save(): Uint8Array {
    const out = new Uint8Array(5);
    out[0] = 0x52; // "R"
    new DataView(out.buffer).setUint32(1, this.pos);
    return out;
  }
  static restore(state: Uint8Array, size: number, io: SlotIO): Result<RawDecoder> {
    if (state.length !== 5 || state[0] !== 0x52) return { ok: false, error: codecError('bad_state', 'state', 0, 'not a saved raw transfer', 'state') };
    const pos = new DataView(state.buffer, state.byteOffset, 5).getUint32(1);
    if (pos > size) return { ok: false, error: codecError('bad_state', 'state.pos', 1, `position ${pos} past ${size}`, 'state') };
    const d = new RawDecoder(size, io);
    d.pos = pos;
    return { ok: true, value: d };
  }
}

class DeflateDecoder implements TransferDecoder {
  constructor(readonly encoding: TransferEncoding, private readonly inf: Inflater) {}
  get inputOffset(): number {
    return this.inf.inputOffset;
  }
  get outputOffset(): number {
    return this.inf.outputOffset;
  }
  process(chunk: Uint8Array): CodecError | null {
    return this.inf.process(chunk);
  }
  finish(): CodecError | null {
    return this.inf.finish();
  }
  save(): Uint8Array {
    return this.inf.save();
  }
}

class PatchDecoder implements TransferDecoder {
  readonly encoding = { kind: 'patch' } as const;
  constructor(private readonly a: PatchApplier) {}
  get inputOffset(): number {
    return this.a.inputOffset;
  }
  get outputOffset(): number {
    return this.a.targetOffset;
  }
  process(chunk: Uint8Array): CodecError | null {
    return this.a.process(chunk);
  }
  finish(): CodecError | null {
    return this.a.finish();
  }
  save(): Uint8Array {
    return this.a.save();
  }
}

function check(enc: TransferEncoding, target: TransferTarget): CodecError | null {
  if (!Number.isInteger(target.imageSize) || target.imageSize < 0 || target.imageSize > 0xffffffff) return codecError('bad_call', 'imageSize', 0, 'imageSize must be a u32');
  if (target.imageSize > target.slotSize) return codecError('target_too_large', 'imageSize', 0, `a ${target.imageSize}-byte image does not fit the ${target.slotSize}-byte slot`);
  if (enc.kind === 'deflate' && !(Number.isInteger(enc.windowBits) && enc.windowBits >= MIN_WINDOW_BITS && enc.windowBits <= MAX_WINDOW_BITS)) {
    return codecError('window_exceeded', 'windowBits', 0, `a ${enc.windowBits}-bit window is not ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}`);
  }
  if (enc.kind === 'patch' && !target.active) return codecError('bad_call', 'active', 0, 'a patch needs the running image (size and SHA-256)');
  return null;
}

function applierFor(target: TransferTarget, io: SlotIO): { options: ConstructorParameters<typeof PatchApplier>[0]; pio: ConstructorParameters<typeof PatchApplier>[1] } {
  return {
    options: { baseSize: target.active!.size, baseSha256: target.active!.sha256, maxTargetSize: target.slotSize, targetSize: target.imageSize },
    pio: { readBase: (o, n) => io.readActive(o, n), writeTarget: (o, b) => io.writeInactive(o, b) },
  };
}

/** The decoder for an announced transfer. A compressed image reads its history back from the slot. */
export function openTransferDecoder(encoding: TransferEncoding, target: TransferTarget, io: SlotIO): Result<TransferDecoder> {
  const e = check(encoding, target);
  if (e) return { ok: false, error: e };
  if (encoding.kind === 'raw') return { ok: true, value: new RawDecoder(target.imageSize, io) };
  if (encoding.kind === 'deflate') {
    const inf = new Inflater({ windowBits: encoding.windowBits, outputSize: target.imageSize, window: 'output' }, { write: (o, b) => io.writeInactive(o, b), readOutput: (o, n) => io.readInactive(o, n) });
    return { ok: true, value: new DeflateDecoder(encoding, inf) };
  }
  const { options, pio } = applierFor(target, io);
  try {
    return { ok: true, value: new PatchDecoder(new PatchApplier(options, pio)) };
  } catch (err) {
    return { ok: false, error: codecError('bad_call', 'active', 0, (err as Error).message) };
  }
}

/** Continues a transfer from `save()`'s bytes (after a power loss); feed it from `inputOffset`. */
export function restoreTransferDecoder(state: Uint8Array, encoding: TransferEncoding, target: TransferTarget, io: SlotIO): Result<TransferDecoder> {
  const e = check(encoding, target);
  if (e) return { ok: false, error: e };
  if (encoding.kind === 'raw') return RawDecoder.restore(state, target.imageSize, io);
  if (encoding.kind === 'deflate') {
    const r = Inflater.restore(state, { windowBits: encoding.windowBits, outputSize: target.imageSize, window: 'output' }, { write: (o, b) => io.writeInactive(o, b), readOutput: (o, n) => io.readInactive(o, n) });
    return r.ok ? { ok: true, value: new DeflateDecoder(encoding, r.value) } : r;
  }
  const { options, pio } = applierFor(target, io);
  try {
    const r = PatchApplier.restore(state, options, pio);
    return r.ok ? { ok: true, value: new PatchDecoder(r.value) } : r;
  } catch (err) {
    return { ok: false, error: codecError('bad_call', 'active', 0, (err as Error).message) };
  }
}
