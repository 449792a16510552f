import { u16be, u32be, putU16be, putU32be } from './bytes.js';
import {
  APP_NAME_SIZE, FLAG_ALLOW_MULTIPLE, FLAG_MANIFEST_PRESENT, HEADER_V1_SIZE, HEADER_V2_SIZE, HXE_MAGIC,
  META_ENTRY_SIZE, MIN_HEADER_SIZE, OFF_APP_NAME, OFF_BSS_SIZE, OFF_CODE_LEN, OFF_CRC, OFF_ENTRY, OFF_FLAGS,
  OFF_MAGIC, OFF_META_COUNT, OFF_META_OFFSET, OFF_RESERVED, OFF_REQ_CAPS, OFF_RO_LEN, OFF_VERSION, RESERVED_SIZE,
} from './constants.js';
import { fail, hex } from './errors.js';
import { ok, type Result } from './result.js';
import type { HxeError, HxeHeader, HxeLimits } from './types.js';

/**
 * How many leading bytes the header decoder needs before it can give a verdict, given what it has.
 * A streaming caller feeds a growing prefix; the decoder rejects as soon as the bytes it has allow.
 */
export function headerSizeForVersion(version: number): 32 | 96 {
  return version === 1 ? HEADER_V1_SIZE : HEADER_V2_SIZE;
}

/**
 * Checks the part of the header a prefix of `len` bytes allows: magic once 4 bytes are in, version once 6
 * are. Returns null when the prefix is fine so far, or the error. Used by the streaming verifier to reject
 * garbage before the header is complete.
 */
export function checkHeaderPrefix(b: Uint8Array, len: number): HxeError | null {
  if (len >= 4) {
    const magic = u32be(b, OFF_MAGIC);
    if (magic !== HXE_MAGIC) {
      return fail('bad_magic', `magic at offset 0x0 is ${hex(magic)}, expected ${hex(HXE_MAGIC)} ('HSXE')`, OFF_MAGIC).error;
    }
  }
  if (len >= 6) {
    const version = u16be(b, OFF_VERSION);
    if (version !== 1 && version !== 2) {
      return fail('unsupported_version', `version at offset 0x4 is ${version}, expected 1 or 2`, OFF_VERSION).error;
    }
  }
  return null;
}

/**
 * Decodes and checks a complete header. `b` must hold at least the header (the caller checks size first
 * through `headerShortfall`). Checks are ordered as the docs list them; the first failing one is reported.
 * `totalBytes`, when known, lets impossible lengths be rejected before the body arrives.
 */
export function decodeHeader(b: Uint8Array, limits: HxeLimits, totalBytes?: number): Result<HxeHeader, HxeError> {
  const prefixError = checkHeaderPrefix(b, b.length);
  if (prefixError) return { ok: false, error: prefixError };
  const short = headerShortfall(b, b.length);
  if (short) return { ok: false, error: short };
  const version = u16be(b, OFF_VERSION) as 1 | 2;
  const headerSize = headerSizeForVersion(version);
  const flags = u16be(b, OFF_FLAGS);
  const entry = u32be(b, OFF_ENTRY);
  const codeLen = u32be(b, OFF_CODE_LEN);
  const roLen = u32be(b, OFF_RO_LEN);
  const bssSize = u32be(b, OFF_BSS_SIZE);
  const reqCaps = u32be(b, OFF_REQ_CAPS);
  const crc32 = u32be(b, OFF_CRC);
  let appName = '';
  let metaOffset = 0;
  let metaCount = 0;

  if (version === 2) {
    for (let i = 0; i < RESERVED_SIZE; i++) {
      if (b[OFF_RESERVED + i] !== 0) {
        const at = OFF_RESERVED + i;
        return fail('reserved_nonzero', `reserved header byte at offset ${hex(at)} is ${hex(b[at] ?? 0)}, must be 0`, at);
      }
    }
    const name = decodeAppName(b);
    if (!name.ok) return name;
    appName = name.value;
    metaOffset = u32be(b, OFF_META_OFFSET);
    metaCount = u32be(b, OFF_META_COUNT);
  }

  if (codeLen > limits.maxCode) {
    return fail('code_too_large', `code_len ${codeLen} at offset 0xc exceeds the limit of ${limits.maxCode} bytes`, OFF_CODE_LEN);
  }
  if (roLen > limits.maxRodata) {
    return fail('ro_too_large', `ro_len ${roLen} at offset 0x10 exceeds the limit of ${limits.maxRodata} bytes`, OFF_RO_LEN);
  }
  if (bssSize > limits.maxBss) {
    return fail('bss_too_large', `bss_size ${bssSize} at offset 0x14 exceeds the limit of ${limits.maxBss} bytes`, OFF_BSS_SIZE);
  }
  if (codeLen % 4 !== 0) {
    return fail('code_unaligned', `code_len ${codeLen} at offset 0xc is not a multiple of 4`, OFF_CODE_LEN);
  }
  if (entry % 4 !== 0) {
    return fail('entry_unaligned', `entry ${hex(entry)} at offset 0x8 is not a multiple of 4`, OFF_ENTRY);
  }
  if (entry >= codeLen) {
    return fail('entry_out_of_range', `entry ${hex(entry)} at offset 0x8 is outside the ${codeLen}-byte code section`, OFF_ENTRY);
  }
  if (metaOffset === 0 && metaCount > 0) {
    return fail('meta_inconsistent', `meta_count ${metaCount} at offset 0x44 with meta_offset 0: the metadata table has no location`, OFF_META_COUNT);
  }
  if (metaOffset !== 0 && metaCount === 0) {
    return fail('meta_inconsistent', `meta_offset ${hex(metaOffset)} at offset 0x40 with meta_count 0`, OFF_META_OFFSET);
  }
  const roEnd = headerSize + codeLen + roLen;
  if (metaCount > 0 && metaOffset < roEnd) {
    return fail('meta_table_overlap', `meta_offset ${hex(metaOffset)} at offset 0x40 lies inside the header, code or rodata (which end at ${hex(roEnd)})`, OFF_META_OFFSET);
  }
  if (totalBytes !== undefined && roEnd > totalBytes) {
    return fail('truncated', `header announces ${roEnd} bytes of header, code and rodata but the image is ${totalBytes} bytes`, totalBytes);
  }
  const tableEnd = metaOffset + metaCount * META_ENTRY_SIZE;
  // Offsets are u32: a table that cannot end below 4 GiB cannot exist in any file.
  if (metaCount > 0 && (tableEnd > 0xffffffff || (totalBytes !== undefined && tableEnd > totalBytes))) {
    return fail('meta_table_out_of_bounds', `metadata table at ${hex(metaOffset)} with ${metaCount} entries ends at ${hex(tableEnd)}, past the end of the image`, OFF_META_COUNT);
  }

  return ok({
    version, flags, entry, codeLen, roLen, bssSize, reqCaps, crc32, appName, metaOffset, metaCount,
    manifestPresent: (flags & FLAG_MANIFEST_PRESENT) !== 0,
    // v1 has no instance policy: the reference treats every v1 image as allowing multiple instances
    allowMultipleInstances: version === 1 ? true : (flags & FLAG_ALLOW_MULTIPLE) !== 0,
    headerSize,
  });
}

/** `too_small` below the smallest header, `header_truncated` when a v2 header is cut short. */
export function headerShortfall(b: Uint8Array, len: number): HxeError | null {
  if (len < MIN_HEADER_SIZE) {
    return fail('too_small', `image is ${len} bytes, smaller than the ${MIN_HEADER_SIZE}-byte minimum header`, len).error;
  }
  const version = u16be(b, OFF_VERSION);
  const need = headerSizeForVersion(version);
  if (len < need) {
    return fail('header_truncated', `v${version} header needs ${need} bytes, image has ${len}`, len).error;
  }
  return null;
}

/**
 * app_name: printable ASCII, NUL-terminated and NUL-padded. The CRC does not cover it, so anything after
 * the terminator must be NUL too: otherwise two images with the same CRC could carry different names.
 */
function decodeAppName(b: Uint8Array): Result<string, HxeError> {
  let end = APP_NAME_SIZE;
  for (let i = 0; i < APP_NAME_SIZE; i++) {
    const c = b[OFF_APP_NAME + i] ?? 0;
    if (c === 0) {
      end = i;
      break;
    }
    if (c < 0x20 || c > 0x7e) {
      return fail('app_name_not_ascii', `app_name byte at offset ${hex(OFF_APP_NAME + i)} is ${hex(c)}, not printable ASCII`, OFF_APP_NAME + i);
    }
  }
  for (let i = end; i < APP_NAME_SIZE; i++) {
    if (b[OFF_APP_NAME + i] !== 0) {
      return fail('app_name_not_ascii', `app_name byte at offset ${hex(OFF_APP_NAME + i)} follows the NUL terminator but is not NUL`, OFF_APP_NAME + i);
    }
  }
  let name = '';
  for (let i = 0; i < end; i++) name += String.fromCharCode(b[OFF_APP_NAME + i] ?? 0);
  return ok(name);
}

/** Header fields the writer takes (the decoded header's, less what is derived); the CRC is patched in afterwards. */
export type HeaderFields = Pick<HxeHeader, 'version' | 'flags' | 'entry' | 'codeLen' | 'roLen' | 'bssSize' | 'reqCaps' | 'appName' | 'metaOffset' | 'metaCount'>;

export function encodeHeader(target: Uint8Array, h: HeaderFields): void {
  putU32be(target, OFF_MAGIC, HXE_MAGIC);
  putU16be(target, OFF_VERSION, h.version);
  putU16be(target, OFF_FLAGS, h.flags);
  putU32be(target, OFF_ENTRY, h.entry);
  putU32be(target, OFF_CODE_LEN, h.codeLen);
  putU32be(target, OFF_RO_LEN, h.roLen);
  putU32be(target, OFF_BSS_SIZE, h.bssSize);
  putU32be(target, OFF_REQ_CAPS, h.reqCaps);
  putU32be(target, OFF_CRC, 0);
  if (h.version === 2) {
    for (let i = 0; i < APP_NAME_SIZE; i++) target[OFF_APP_NAME + i] = i < h.appName.length ? h.appName.charCodeAt(i) : 0;
    putU32be(target, OFF_META_OFFSET, h.metaOffset);
    putU32be(target, OFF_META_COUNT, h.metaCount);
    target.fill(0, OFF_RESERVED, OFF_RESERVED + RESERVED_SIZE);
  }
}
