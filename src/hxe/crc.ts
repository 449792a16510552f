import { crc32 } from 'node:zlib';
import { CRC_PREFIX_END } from './constants.js';

/**
 * The HXE CRC: zlib CRC-32 over bytes 0x00..0x1B, then over everything from the end of the
 * header to the end of the file. The stored CRC itself, the app name, the metadata pointers and the
 * reserved bytes are not covered (only a signature protects those).
 */
export function hxeCrc32(bytes: Uint8Array, headerSize: number = headerSizeOf(bytes)): number {
  const prefix = crc32(bytes.subarray(0, Math.min(CRC_PREFIX_END, bytes.length)));
  if (bytes.length <= headerSize) return prefix >>> 0;
  return crc32(bytes.subarray(headerSize), prefix) >>> 0;
}

/** Continue a running CRC over more bytes (`zlib.crc32` with the previous value). */
export function crcUpdate(running: number, bytes: Uint8Array): number {
  return bytes.length === 0 ? running : crc32(bytes, running) >>> 0;
}

/** Multiplies the 32×32 matrix over GF(2) `mat` (one u32 per column) by the vector `vec`. */
function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i]!;
  return sum >>> 0;
}

function gf2Square(out: Uint32Array, mat: Uint32Array): void {
  for (let n = 0; n < 32; n++) out[n] = gf2Times(mat, mat[n]!);
}

/**
 * The operator "feed 2^k zero bytes through the CRC register" for k = 0..31, each a 32×32 matrix
 * over GF(2): built once by repeated squaring of the one-zero-bit operator, then shared.
 */
let zeroByteOperators: Uint32Array[] | null = null;

function operators(): Uint32Array[] {
  if (zeroByteOperators) return zeroByteOperators;
  let bit = new Uint32Array(32);
  bit[0] = 0xedb88320; // the reflected polynomial: the operator for one zero bit
  for (let n = 1; n < 32; n++) bit[n] = 1 << (n - 1);
  for (let i = 0; i < 3; i++) {
    const sq = new Uint32Array(32);
    gf2Square(sq, bit);
    bit = sq; // 2, 4, then 8 zero bits: one byte
  }
  const ops = [bit];
  for (let k = 1; k < 32; k++) {
    const sq = new Uint32Array(32);
    gf2Square(sq, ops[k - 1]!);
    ops.push(sq);
  }
  zeroByteOperators = ops;
  return ops;
}

/**
 * CRC-32 of A followed by B, from crc(A), crc(B) and B's length, without reading either again.
 * Feeding n zero bytes through the CRC register is a linear map: the product of the cached
 * operators for the bits set in n (they are powers of one matrix, so their order does not matter),
 * applied to crc(A); crc(B) is xored in. Lets one pass over the body serve both the HXE CRC and
 * the whole-stream CRC.
 */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB <= 0) return crcA >>> 0;
  const ops = operators();
  let crc = crcA >>> 0;
  for (let k = 0, n = lengthB; n > 0; k++, n = Math.floor(n / 2)) {
    if (n % 2 === 1) crc = gf2Times(ops[k]!, crc);
  }
  return (crc ^ crcB) >>> 0;
}

function headerSizeOf(bytes: Uint8Array): number {
  // version 1 → 32-byte header; anything else is treated as the 96-byte v2 layout
  const version = bytes.length >= 6 ? ((bytes[4] ?? 0) << 8) | (bytes[5] ?? 0) : 2;
  return version === 1 ? 32 : 96;
}
