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
 * CRC-32 of A followed by B, from crc(A), crc(B) and B's length, without reading either again.
 * Feeding n zero bytes through the CRC register is a linear map; it is built by repeated squaring
 * (log2 n steps of 32×32 bit operations) and applied to crc(A), and crc(B) is xored in. Lets one
 * pass over the body serve both the HXE CRC and the whole-stream CRC.
 */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB <= 0) return crcA >>> 0;
  const odd = new Uint32Array(32);
  const even = new Uint32Array(32);
  odd[0] = 0xedb88320; // the reflected polynomial: the operator for one zero bit
  for (let n = 1; n < 32; n++) odd[n] = 1 << (n - 1);
  gf2Square(even, odd); // two zero bits
  gf2Square(odd, even); // four zero bits
  let crc = crcA >>> 0;
  let n = lengthB;
  for (;;) {
    gf2Square(even, odd); // the first time round: eight zero bits, one byte
    if (n % 2 === 1) crc = gf2Times(even, crc);
    n = Math.floor(n / 2);
    if (n === 0) break;
    gf2Square(odd, even);
    if (n % 2 === 1) crc = gf2Times(odd, crc);
    n = Math.floor(n / 2);
    if (n === 0) break;
  }
  return (crc ^ crcB) >>> 0;
}

function headerSizeOf(bytes: Uint8Array): number {
  // version 1 → 32-byte header; anything else is treated as the 96-byte v2 layout
  const version = bytes.length >= 6 ? ((bytes[4] ?? 0) << 8) | (bytes[5] ?? 0) : 2;
  return version === 1 ? 32 : 96;
}
