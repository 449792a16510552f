/**
 * Compressed full transfer on the master: raw DEFLATE (RFC 1951, no zlib/gzip wrapper) with a window of
 * at most 4 KiB, so the device's decoder (src/engine/codec/inflate.ts) needs no more than that and, when
 * it reads back-references from the slot it writes, no window RAM at all.
 */
import { deflateRawSync } from 'node:zlib';
import { MAX_WINDOW_BITS, MIN_WINDOW_BITS } from '../../engine/codec/inflate.js';
import { deflateRawOptimal } from './deflate.js';

export interface CompressOptions {
  /** 8..12; node's raw deflate has no 256-byte window and writes 9 for 8. Default 12. */
  windowBits?: number;
  /** zlib level 1..9, default 9. */
  level?: number;
  /** 'optimal' (default: deflate.ts, or zlib's stream when that is smaller) or 'zlib' (fast). */
  encoder?: 'optimal' | 'zlib';
}

export interface CompressedImage {
  bytes: Uint8Array;
  /** The window the stream really uses (what the announce carries to the device). */
  windowBits: number;
  rawSize: number;
}

/** zlib's raw deflate refuses windowBits 8 (it is silently made 9): say so instead of pretending. */
export function nodeWindowBits(windowBits: number): number {
  if (!Number.isInteger(windowBits) || windowBits < MIN_WINDOW_BITS || windowBits > MAX_WINDOW_BITS) {
    throw new RangeError(`windowBits must be ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}, got ${windowBits}`);
  }
  return Math.max(9, windowBits);
}

export function compressImage(bytes: Uint8Array, options: CompressOptions = {}): CompressedImage {
  const windowBits = nodeWindowBits(options.windowBits ?? MAX_WINDOW_BITS);
  const z = deflateRawSync(bytes, { windowBits, level: options.level ?? 9, memLevel: 9 });
  let out: Uint8Array = new Uint8Array(z.buffer, z.byteOffset, z.byteLength);
  if ((options.encoder ?? 'optimal') === 'optimal') {
    const opt = deflateRawOptimal(bytes, { windowBits });
    if (opt.length < out.length) out = opt;
  }
  return { bytes: out, windowBits, rawSize: bytes.length };
}
