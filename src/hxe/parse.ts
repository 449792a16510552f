import { resolveLimits } from './constants.js';
import { hxeCrc32 } from './crc.js';
import { decodeHeader } from './header.js';
import { verifyBody } from './body.js';
import type { Result } from './result.js';
import type { HxeError, HxeImage, HxeLimits } from './types.js';

/**
 * Verifies and decodes a complete image. Never throws on bad input: every malformed image gives a typed
 * HxeError naming the field and the byte offset.
 *
 * `code` and `rodata` in the result are views into `bytes` (zero-copy, so a full verify runs at close to
 * the raw CRC rate); `strip()` returns copies, which is what a loader should keep.
 */
export function parseImage(bytes: Uint8Array, limits?: Partial<HxeLimits>): Result<HxeImage, HxeError> {
  const header = decodeHeader(bytes, resolveLimits(limits));
  if (!header.ok) return header;
  return verifyBody(bytes, header.value, hxeCrc32(bytes, header.value.headerSize));
}
