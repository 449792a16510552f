import type { F16 } from './types.js';

/**
 * IEEE 754 half precision. Decoding is exact (every f16 is a double); encoding rounds to nearest,
 * ties to even, overflowing to ±Infinity the way Python's struct '<e' + the HSX linker do.
 */
/** 2^(e-25) for each exponent field value: decoding is then one multiply (it runs per value field). */
const SCALE = Float64Array.from({ length: 32 }, (_, e) => 2 ** (e === 0 ? -24 : e - 25));

export function decodeF16(raw: number): number {
  const exp = (raw >> 10) & 0x1f;
  const frac = raw & 0x3ff;
  let v: number;
  if (exp === 0) v = frac * (SCALE[0] as number); // zero and subnormals
  else if (exp === 0x1f) v = frac === 0 ? Infinity : NaN;
  else v = (1024 + frac) * (SCALE[exp] as number);
  return raw & 0x8000 ? -v : v;
}

export function encodeF16(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const abs = Math.abs(value);
  if (abs === Infinity) return sign | 0x7c00;
  if (abs === 0) return sign;
  // Express abs as m * 2^e with 1 <= m < 2.
  let e = Math.floor(Math.log2(abs));
  if (2 ** e > abs) e -= 1;
  if (2 ** (e + 1) <= abs) e += 1;
  if (e < -14) {
    // Subnormal: units of 2^-24.
    const units = roundHalfEven(abs / 2 ** -24);
    return sign | units; // units == 1024 rolls into the smallest normal, which is the right encoding
  }
  let mant = roundHalfEven((abs / 2 ** e - 1) * 1024);
  if (mant === 1024) {
    mant = 0;
    e += 1;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | mant;
}

function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const diff = x - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

export function f16FromRaw(raw: number): F16 {
  return { raw: raw & 0xffff, value: decodeF16(raw & 0xffff) };
}

/** A spec may give a number (encoded) or an F16 (its raw bits win, so rebuilds are exact). */
export function f16Raw(v: number | F16 | undefined): number {
  if (v === undefined) return 0;
  if (typeof v === 'number') return encodeF16(v);
  return v.raw & 0xffff;
}
