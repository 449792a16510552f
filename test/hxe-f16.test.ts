import test from 'ava';
import { decodeF16, encodeF16 } from '../src/hxe/index.js';

/** f16 decoding is exact for every one of the 65536 bit patterns; encoding rounds to nearest even. */

test('known values: zero, -0, subnormals, the largest finite, infinities, NaN', (t) => {
  t.is(decodeF16(0x0000), 0);
  t.true(Object.is(decodeF16(0x8000), -0));
  t.is(decodeF16(0x0001), 2 ** -24);
  t.is(decodeF16(0x03ff), 1023 * 2 ** -24);
  t.is(decodeF16(0x0400), 2 ** -14);
  t.is(decodeF16(0x3c00), 1);
  t.is(decodeF16(0xc000), -2);
  t.is(decodeF16(0x7bff), 65504);
  t.is(decodeF16(0xfbff), -65504);
  t.is(decodeF16(0x7c00), Infinity);
  t.is(decodeF16(0xfc00), -Infinity);
  t.true(Number.isNaN(decodeF16(0x7e00)));
  t.true(Number.isNaN(decodeF16(0xfc01)));
});

test('encode(decode(raw)) === raw for every non-NaN pattern; NaN encodes to the quiet NaN 0x7e00', (t) => {
  let mismatches = 0;
  for (let raw = 0; raw < 0x10000; raw++) {
    const v = decodeF16(raw);
    if (Number.isNaN(v)) {
      if (encodeF16(v) !== 0x7e00) mismatches++;
    } else if (encodeF16(v) !== raw) {
      mismatches++;
    }
  }
  t.is(mismatches, 0);
});

test('rounding: ties to even, overflow to infinity, underflow to (signed) zero', (t) => {
  t.is(encodeF16(1 + 2 ** -11), 0x3c00, 'halfway between 1 and the next f16 rounds to even (1)');
  t.is(encodeF16(1 + 3 * 2 ** -11), 0x3c02, 'halfway to an odd mantissa rounds up to even');
  t.is(encodeF16(65519), 0x7bff);
  t.is(encodeF16(65520), 0x7c00, '65520 rounds to infinity like Python struct("e") overflow in the linker');
  t.is(encodeF16(-1e9), 0xfc00);
  t.is(encodeF16(2 ** -25), 0x0000, 'exactly half the smallest subnormal rounds to even (0)');
  t.is(encodeF16(3 * 2 ** -26), 0x0001);
  t.is(encodeF16(-(2 ** -30)), 0x8000);
  t.is(encodeF16(2 ** -14 - 2 ** -25), 0x0400, 'rounds up out of the subnormal range into the smallest normal');
  t.is(encodeF16(0.1), 0x2e66);
});
