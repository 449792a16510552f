import test from 'ava';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { deflateRawOptimal, diffRecords, encodeRecords, limitedLengths, patchWindowBitsFor, planTransfer } from '../src/link/delta/index.js';
import { applierRamBytes } from '../src/engine/codec/index.js';
import { chunks, inflateAll, rng } from './codec-craft.js';

const PAIRS = '/work/shared/vectors/firmware-pairs/';

/** Sparse differences between long zero runs, like a patch body, and text-like runs. */
function patchLike(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    if (r() < 0.05) out[i] = [4, 8, 16, 255, 1][Math.floor(r() * 5)]!;
    else if (r() < 0.02 && i > 300 && i + 20 <= n) out.set(out.subarray(i - 300, i - 280), i);
  }
  return out;
}

const roundTrip = (data: Uint8Array, windowBits: number, seed = 1): boolean => {
  const z = deflateRawOptimal(data, { windowBits });
  if (!Buffer.from(inflateRawSync(z)).equals(Buffer.from(data))) return false;
  const r = inflateAll(z, { windowBits, outputSize: data.length }, chunks(z, seed, 50));
  return r.error === null && Buffer.from(r.out).equals(Buffer.from(data));
};

test('the optimal encoder: zlib and our decoder (with the same window limit) read back every firmware file', (t) => {
  for (const name of ['klipper-v3-usart2-usb-clock.new.bin', 'marlin-v3-ender3-usb-clock.new.bin']) {
    const data = new Uint8Array(readFileSync(PAIRS + name));
    t.true(roundTrip(data, 12), name);
    t.true(roundTrip(data.subarray(0, 30_000), 9), `${name} window 9`);
  }
});

test('the optimal encoder is smaller than zlib -9 on a patch body', (t) => {
  const base = new Uint8Array(readFileSync(`${PAIRS}marlin-v3-ender3-usb-clock.old.bin`));
  const target = new Uint8Array(readFileSync(`${PAIRS}marlin-v3-ender3-usb-clock.new.bin`));
  const body = encodeRecords(base, target, diffRecords(base, target), true);
  const ours = deflateRawOptimal(body, { windowBits: 12 });
  const zlib = deflateRawSync(body, { windowBits: 12, level: 9, memLevel: 9 });
  t.true(ours.length < zlib.length, `${ours.length} vs ${zlib.length}`);
  t.true(Buffer.from(inflateRawSync(ours)).equals(Buffer.from(body)));
});

test('fast-check: the optimal encoder round-trips random, repetitive and patch-like data at windows 9..12', (t) => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 4000 }),
        fc.tuple(fc.integer({ min: 0, max: 20_000 }), fc.integer()).map(([n, s]) => patchLike(n, s)),
        fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 40 }), fc.integer({ min: 1, max: 300 })).map(([unit, k]) => Uint8Array.from({ length: unit.length * k }, (_, i) => unit[i % unit.length]!)),
      ),
      fc.integer({ min: 9, max: 12 }),
      (data, wb) => roundTrip(data, wb, data.length),
    ),
    { numRuns: 200 },
  );
  t.true(roundTrip(new Uint8Array(0), 12));
  t.true(roundTrip(new Uint8Array(70_000), 9), 'one long zero run');
});

test('limitedLengths: complete codes within the limit (Kraft sum exactly 1)', (t) => {
  fc.assert(
    fc.property(fc.array(fc.nat(100_000), { minLength: 2, maxLength: 288 }), fc.constantFrom(7, 15), (freq, limit) => {
      const lens = limitedLengths(freq, limit);
      let kraft = 0;
      for (const l of lens) if (l) kraft += 2 ** -l;
      const max = Math.max(...lens);
      const usedOk = freq.every((f, i) => (f > 0 ? lens[i]! > 0 : true));
      return max <= limit && Math.abs(kraft - 1) < 1e-12 && usedOk;
    }),
    { numRuns: 500 },
  );
  // Fibonacci frequencies force a depth beyond 15 without the limit
  const fib = [1, 1];
  while (fib.length < 30) fib.push(fib[fib.length - 1]! + fib[fib.length - 2]!);
  t.true(Math.max(...limitedLengths(fib, 15)) <= 15);
});

test('the patch window follows the device RAM: 4 KiB gives windowBits 11, 6 KiB 12, too little none', (t) => {
  t.is(patchWindowBitsFor(4096), 11);
  t.is(patchWindowBitsFor(applierRamBytes(12).total), 12);
  t.is(patchWindowBitsFor(1000), null);
  const base = new Uint8Array(readFileSync(`${PAIRS}klipper-v3-usart2-usb-clock.old.bin`));
  const target = new Uint8Array(readFileSync(`${PAIRS}klipper-v3-usart2-usb-clock.new.bin`));
  const plan = planTransfer(target, base, { deviceRamBytes: 4096 });
  t.is(plan.kind, 'patch');
  t.is(plan.payload[5], 11, 'header windowBits');
  t.is(planTransfer(target, base, { deviceRamBytes: 1000 }).kind, 'compressed');
});
