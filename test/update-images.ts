/**
 * Images for the update tests on every link: one single-instance app in several builds (same
 * values, other code), so a later build is an update of an earlier one, plus a large build for
 * transfer-sized tests. `TEMP_OID` is a persisted value (persist key 17) every build declares.
 */
import { createHash } from 'node:crypto';
import { buildImage, encodeF16, type ImageSpec } from '../src/hxe/index.js';

export const TEMP = { group: 1, id: 2, name: 'temperature', unit: 'degC', flags: 0x02, init: 12.5, min: -40, max: 125, epsilon: 0.1, persistKey: 17 };
export const TEMP_OID = (1 << 8) | 2;
export const GAIN = { group: 1, id: 4, name: 'gain', flags: 0x02, init: 1, min: 0, max: 10, persistKey: 18 };
export const RESET = { group: 1, id: 7, name: 'reset', help: 'Soft reset', flags: 0x01, auth: 1, handlerOffset: 0 };

/** Build `seed` of sensor_app: `codeBytes` of code (a multiple of 4) that differ per seed. */
export function sensorBuild(seed: number, codeBytes = 16, extra: Partial<ImageSpec> = {}): Uint8Array {
  const code = new Uint8Array(codeBytes);
  for (let i = 0; i < code.length; i++) code[i] = (seed * 131 + i * 7 + (i >> 8)) & 0xff;
  const r = buildImage({
    appName: 'sensor_app', allowMultipleInstances: false, code, values: [TEMP, GAIN], commands: [RESET], ...extra,
  });
  if (!r.ok) throw new Error(`buildImage: ${r.error.field}: ${r.error.message}`);
  return r.value;
}

/**
 * Build `seed` of sensor_app, about `bytes` long in total (code fills the rest). `random`: the code is
 * seeded random bytes, so the image does not compress (a transfer that must take its time on the bus).
 */
export function sensorOfSize(seed: number, bytes: number, random = false): Uint8Array {
  const probe = sensorBuild(seed, 4);
  const codeBytes = Math.max(4, Math.floor((bytes - probe.length + 4) / 4) * 4);
  if (!random) return sensorBuild(seed, codeBytes);
  let x = (seed * 2654435761) >>> 0 || 1;
  const code = Uint8Array.from({ length: codeBytes }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x & 0xff;
  });
  return sensorBuild(seed, codeBytes, { code });
}

export const sha256Hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export const f16 = encodeF16;
