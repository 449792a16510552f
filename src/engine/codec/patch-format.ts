/**
 * The HSX delta patch format (docs/delta.md has the byte tables). A patch is an 88-byte header followed
 * by ONE raw-DEFLATE stream (window 2^windowBits ≤ 4 KiB) whose decoded bytes are the record stream:
 *
 *   record = add (varint) · extra (varint) · seek (zigzag varint) · add diff bytes · extra bytes
 *
 * Rebuilding: target[t + k] = base[b + k] + diff[k] (mod 256) for k < add; then `extra` literal bytes;
 * then t += add + extra, b += add + seek. The controls and the data of a record are interleaved in one
 * stream in the order the applier needs them, so the applier runs on bytes as they arrive in order
 * (a bus), with one decoder and one window. Pure: no Node modules.
 */
import { codecError, type CodecError } from './errors.js';
import { MAX_WINDOW_BITS, MIN_WINDOW_BITS } from './inflate.js';

export const PATCH_MAGIC = Uint8Array.of(0x48, 0x58, 0x44, 0x50); // "HXDP"
export const PATCH_VERSION = 1;
export const PATCH_HEADER_SIZE = 88;
/** Body encodings: 1 = raw DEFLATE (the only one). */
export const BODY_DEFLATE = 1;
/**
 * Header flag: an add run adds with carry inside 32-bit little-endian words aligned to the target
 * offset (the carry out of byte t goes into byte t + 1 unless t + 1 is a multiple of 4 or the run ends),
 * so a pointer that moved by Δ differs by the same bytes wherever it sits.
 */
export const FLAG_CARRY = 0x01;

export interface PatchHeader {
  version: number;
  windowBits: number;
  baseSize: number;
  baseSha256: Uint8Array;
  targetSize: number;
  targetSha256: Uint8Array;
  /** Decoded size of the record stream (the deflate stream's announced output). */
  bodySize: number;
  /** FLAG_CARRY: differences are added with carry inside 32-bit little-endian words (see docs/delta.md). */
  flags?: number;
}

/** Header field offsets (big-endian, as everywhere in HSX layouts). */
export const H = {
  magic: 0,
  version: 4,
  windowBits: 5,
  encoding: 6,
  flags: 7,
  baseSize: 8,
  baseSha256: 12,
  targetSize: 44,
  targetSha256: 48,
  bodySize: 80,
  headerCrc: 84,
} as const;

let crcTable: Uint32Array | null = null;
/** CRC-32 (the zlib polynomial), table-driven; the codec imports no Node module. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

export function encodePatchHeader(h: PatchHeader): Uint8Array {
  const out = new Uint8Array(PATCH_HEADER_SIZE);
  const v = new DataView(out.buffer);
  out.set(PATCH_MAGIC, H.magic);
  out[H.version] = h.version;
  out[H.windowBits] = h.windowBits;
  out[H.encoding] = BODY_DEFLATE;
  out[H.flags] = h.flags ?? 0;
  v.setUint32(H.baseSize, h.baseSize);
  out.set(h.baseSha256.subarray(0, 32), H.baseSha256);
  v.setUint32(H.targetSize, h.targetSize);
  out.set(h.targetSha256.subarray(0, 32), H.targetSha256);
  v.setUint32(H.bodySize, h.bodySize);
  v.setUint32(H.headerCrc, crc32(out.subarray(0, H.headerCrc)));
  return out;
}

/** Checks and reads a complete 88-byte header. Offsets in errors are patch-file offsets. */
export function decodePatchHeader(b: Uint8Array): { ok: true; value: PatchHeader } | { ok: false; error: CodecError } {
  const fail = (reason: Parameters<typeof codecError>[0], field: string, offset: number, m: string) => ({ ok: false as const, error: codecError(reason, `header.${field}`, offset, m) });
  if (b.length < PATCH_HEADER_SIZE) return fail('truncated', 'length', b.length, `a patch header is ${PATCH_HEADER_SIZE} bytes, got ${b.length}`);
  for (let i = 0; i < 4; i++) if (b[i] !== PATCH_MAGIC[i]) return fail('bad_magic', 'magic', i, 'not an HSX delta patch (magic "HXDP")');
  const v = new DataView(b.buffer, b.byteOffset, PATCH_HEADER_SIZE);
  const crc = crc32(b.subarray(0, H.headerCrc));
  if (v.getUint32(H.headerCrc) !== crc) return fail('bad_header', 'headerCrc', H.headerCrc, `header CRC 0x${v.getUint32(H.headerCrc).toString(16)}, computed 0x${crc.toString(16)}`);
  if (b[H.version] !== PATCH_VERSION) return fail('bad_version', 'version', H.version, `format version ${b[H.version]}, this applier reads ${PATCH_VERSION}`);
  const wb = b[H.windowBits]!;
  if (wb < MIN_WINDOW_BITS || wb > MAX_WINDOW_BITS) return fail('bad_header', 'windowBits', H.windowBits, `window bits ${wb}, allowed ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}`);
  if (b[H.encoding] !== BODY_DEFLATE) return fail('bad_header', 'encoding', H.encoding, `body encoding ${b[H.encoding]}, only 1 (raw deflate) exists`);
  if ((b[H.flags]! & ~FLAG_CARRY) !== 0) return fail('bad_header', 'flags', H.flags, `unknown flag bits 0x${b[H.flags]!.toString(16)}`);
  return {
    ok: true,
    value: {
      version: PATCH_VERSION,
      windowBits: wb,
      baseSize: v.getUint32(H.baseSize),
      baseSha256: b.slice(H.baseSha256, H.baseSha256 + 32),
      targetSize: v.getUint32(H.targetSize),
      targetSha256: b.slice(H.targetSha256, H.targetSha256 + 32),
      bodySize: v.getUint32(H.bodySize),
      flags: b[H.flags]!,
    },
  };
}

/** Appends an unsigned LEB128 varint (7 bits per byte, low first, high bit = more). */
export function putVarint(out: number[], v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`varint out of range: ${v}`);
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

/** Zigzag: 0, -1, 1, -2 … → 0, 1, 2, 3 … */
export const zigzag = (v: number): number => (v >= 0 ? v * 2 : -v * 2 - 1);
export const unzigzag = (u: number): number => (u % 2 === 0 ? u / 2 : -(u + 1) / 2);

export const hexOf = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
