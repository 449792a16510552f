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

function headerSizeOf(bytes: Uint8Array): number {
  // version 1 → 32-byte header; anything else is treated as the 96-byte v2 layout
  const version = bytes.length >= 6 ? ((bytes[4] ?? 0) << 8) | (bytes[5] ?? 0) : 2;
  return version === 1 ? 32 : 96;
}
