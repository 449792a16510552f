/**
 * What a master checks before anything goes on a wire: the image is a well-formed HXE (header,
 * sections, CRC). Budgets, capabilities and signature policy are the device's to judge; an image a
 * device could never accept in any case is not worth sending to a whole bus.
 */
import { parseImage } from '../hxe/index.js';

/** Format only: the device's budgets decide sizes. */
const FORMAT_ONLY = { maxCode: 0x7fffffff, maxRodata: 0x7fffffff, maxBss: 0x7fffffff };

export interface ImageToSendError {
  code: string;
  where: 'image';
  reason: string;
  message: string;
  detail: { offset: number | null };
}

export function checkImageToSend(bytes: Uint8Array, path: string):
  { ok: true; appName: string } | { ok: false; error: ImageToSendError } {
  const parsed = parseImage(bytes, FORMAT_ONLY);
  if (parsed.ok) return { ok: true, appName: parsed.value.header.appName };
  const { code, reason, message, offset } = parsed.error;
  return {
    ok: false,
    error: { code, where: 'image', reason, message: `${path} is not a valid image: ${message}`, detail: { offset: offset ?? null } },
  };
}
