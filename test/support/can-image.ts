/**
 * Valid HXE images of a chosen size for the CAN suite and bench (the fixtures are all < 1 KiB):
 * built with the HXE library, code and rodata filled from a seeded generator so every chunk differs.
 */
import { buildImage } from '../../src/hxe/index.js';
import { seededRandom } from '../../src/link/can/faults.js';

export function imageOfSize(totalBytes: number, seed = 1, appName = 'can_bulk'): Uint8Array {
  const body = totalBytes - 96;
  if (body < 8) throw new RangeError('image too small');
  const codeLen = Math.min(0x10000, Math.floor(body / 2 / 4) * 4);
  const roLen = body - codeLen;
  if (roLen > 0x10000) throw new RangeError('image too large for the HSX limits');
  const random = seededRandom(seed);
  const fill = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => (random() * 256) | 0);
  const built = buildImage({ code: fill(codeLen), rodata: fill(roLen), appName, allowMultipleInstances: true });
  if (!built.ok) throw new Error(`buildImage: ${JSON.stringify(built.error)}`);
  if (built.value.length !== totalBytes) throw new Error(`built ${built.value.length} bytes, wanted ${totalBytes}`);
  return built.value;
}
