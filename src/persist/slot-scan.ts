import { createHash } from 'node:crypto';
import type { ImageMeta } from '../engine/ports.js';
import { resolveLimits } from '../hxe/constants.js';
import { decodeHeader } from '../hxe/header.js';
import { checkLayout } from '../hxe/layout.js';
import { parseImage } from '../hxe/parse.js';
import { formatVersion, hasTrailerMagic } from '../hxe/trailer.js';
import type { HxeImage } from '../hxe/types.js';

/**
 * Finding an image in a flash slot without its status record: the last resort of recovery when no
 * intact status record describes the slots (docs/persistence.md, "Damaged state").
 *
 * An HXE image checks itself: its header says where the body ends and its CRC-32 covers it. The
 * store programs an image from the slot's first byte and pads the last page with 0xFF over erased
 * sectors, so the image ends at the body's end, at the end of a signature trailer, or (for an image
 * with trailing bytes) between the last non-0xFF byte and the end of that page. Each candidate length
 * is verified whole; the first one whose CRC holds is the image.
 */
export interface FoundImage {
  imageLen: number;
  meta: ImageMeta;
}

/** The largest sections a slot can hold: the slot size, not the loader's defaults. */
function slotLimits(slotBytes: number) {
  return resolveLimits({ maxCode: slotBytes, maxRodata: slotBytes, maxBss: 0x7fffffff });
}

function lastProgrammed(slot: Uint8Array): number {
  let end = slot.length;
  while (end > 0 && slot[end - 1] === 0xff) end--;
  return end;
}

function candidateLengths(slot: Uint8Array, pageSize: number): number[] {
  const header = decodeHeader(slot, slotLimits(slot.length));
  if (!header.ok) return [];
  const layout = checkLayout(slot, header.value, []);
  if (!layout.ok) return [];
  const lengths = new Set<number>();
  const bodyEnd = layout.value.bodyEnd;
  lengths.add(bodyEnd);
  if (bodyEnd + 8 <= slot.length && hasTrailerMagic(slot, bodyEnd)) {
    lengths.add(bodyEnd + new DataView(slot.buffer, slot.byteOffset + bodyEnd + 4, 4).getUint32(0));
  }
  const last = lastProgrammed(slot);
  const pageEnd = Math.min(slot.length, Math.ceil(last / pageSize) * pageSize);
  for (let n = Math.max(last, bodyEnd); n <= pageEnd; n++) lengths.add(n);
  return [...lengths].filter((n) => n > 0 && n <= slot.length).sort((a, b) => a - b);
}

/** The image at the start of `slot`, verified by its own CRC-32, or null when there is none. */
export function findSlotImage(slot: Uint8Array, pageSize: number, source: string): FoundImage | null {
  for (const len of candidateLengths(slot, pageSize)) {
    const bytes = slot.subarray(0, len);
    const parsed = parseImage(bytes, slotLimits(slot.length));
    if (parsed.ok) return { imageLen: len, meta: metaOf(parsed.value, bytes, source) };
  }
  return null;
}

function metaOf(image: HxeImage, bytes: Uint8Array, source: string): ImageMeta {
  const h = image.header;
  return {
    appName: h.appName,
    version: image.trailer ? formatVersion(image.trailer.version) : '0.0.0+0',
    // No signature is checked here (the engine checks it again when it runs the image), so no
    // security counter is vouched for: the device's counter restarts from what survives.
    securityCounter: 0,
    reqCaps: h.reqCaps, codeLen: h.codeLen, roLen: h.roLen, bssSize: h.bssSize,
    source, crc32: h.crc32,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    bootPriority: 0,
  };
}
