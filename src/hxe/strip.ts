import type { HxeImage, StrippedImage } from './types.js';

/**
 * What the VM loader receives: code, rodata, bss size and entry; every piece of metadata removed.
 * code and rodata are copies, so the loaded task owns them whatever happens to the image's buffer.
 */
export function strip(image: HxeImage): StrippedImage {
  return { entry: image.header.entry, code: image.code.slice(), rodata: image.rodata.slice(), bssSize: image.header.bssSize };
}
