import test from 'ava';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { decodePatchHeader, PATCH_HEADER_SIZE } from '../src/engine/codec/index.js';
import { cheapestTransfer, compressImage, diffRecords, makePatch, planTransfer, suffixArray } from '../src/link/delta/index.js';
import { applyAll, chunks, inflateAll, rng } from './codec-craft.js';

const PAIRS = '/work/shared/vectors/firmware-pairs/';
const pairs = (): string[] => readdirSync(PAIRS).filter((f) => f.endsWith('.old.bin')).map((f) => f.slice(0, -'.old.bin'.length)).sort();
const load = (name: string): { base: Uint8Array; target: Uint8Array } => ({
  base: new Uint8Array(readFileSync(`${PAIRS}${name}.old.bin`)),
  target: new Uint8Array(readFileSync(`${PAIRS}${name}.new.bin`)),
});
const sha = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());

test('there are firmware pairs to test on', (t) => {
  t.true(pairs().length >= 5);
});

for (const name of pairs()) {
  test(`${name}: makePatch + streaming apply in random chunks rebuilds the new image; the patch beats the compressed image`, (t) => {
    const { base, target } = load(name);
    const p = makePatch(base, target);
    const h = decodePatchHeader(p.bytes);
    if (!h.ok) return t.fail(h.error.message);
    t.is(h.value.targetSize, target.length);
    t.deepEqual(h.value.targetSha256, sha(target));
    t.deepEqual(h.value.baseSha256, sha(base));
    for (const [seed, max] of [[1, 7], [2, 500], [3, 1 << 20]] as const) {
      const r = applyAll(p.bytes, base, { baseSize: base.length, baseSha256: sha(base), maxTargetSize: 1 << 20 }, chunks(p.bytes, seed, max));
      t.is(r.error, null);
      t.true(Buffer.from(r.out).equals(Buffer.from(target)), `chunks ≤${max}`);
    }
    t.true(p.bytes.length < compressImage(target).bytes.length);
  });
}

test('compressed full images decode with the device decoder (window read back from the output) and with zlib', (t) => {
  for (const name of pairs()) {
    const { target } = load(name);
    const c = compressImage(target);
    t.is(c.windowBits, 12);
    t.true(Buffer.from(inflateRawSync(c.bytes)).equals(Buffer.from(target)));
    const r = inflateAll(c.bytes, { windowBits: c.windowBits, outputSize: target.length, window: 'output' }, chunks(c.bytes, 4, 200));
    t.is(r.error, null);
    t.true(Buffer.from(r.out).equals(Buffer.from(target)));
  }
});

test('compressImage: windowBits 8 is written as 9 (what zlib really does), out of range is refused', (t) => {
  const data = new Uint8Array(5000).map((_, i) => (i * 7) & 0x3f);
  t.is(compressImage(data, { windowBits: 8 }).windowBits, 9);
  t.throws(() => compressImage(data, { windowBits: 13 }), { instanceOf: RangeError });
  t.throws(() => makePatch(data, data, { windowBits: 15 }), { instanceOf: RangeError });
});

test('suffixArray equals a naive sort on small random texts over small alphabets', (t) => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 80 }), (arr) => {
      const text = Uint8Array.from(arr);
      const naive = Array.from({ length: text.length }, (_, i) => i).sort((a, b) => Buffer.compare(Buffer.from(text.subarray(a)), Buffer.from(text.subarray(b))));
      return Array.from(suffixArray(text)).join() === naive.join();
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('diffRecords covers the target exactly and keeps every base access inside the base', (t) => {
  const r = rng(5);
  const base = Uint8Array.from({ length: 4000 }, () => Math.floor(r() * 16));
  const target = Uint8Array.from([...base.subarray(1000, 3000), ...Array.from({ length: 300 }, () => 200), ...base.subarray(0, 900)]);
  const recs = diffRecords(base, target);
  let tpos = 0;
  let b = 0;
  for (const x of recs) {
    t.true(b >= 0 && b + x.add <= base.length);
    tpos += x.add + x.extra;
    b += x.add + x.seek;
  }
  t.is(tpos, target.length);
});

test('identical and empty images: tiny patches that apply', (t) => {
  const data = new Uint8Array(10_000).map((_, i) => (i * 13) & 0xff);
  for (const [base, target] of [[data, data], [new Uint8Array(0), data], [data, new Uint8Array(0)], [new Uint8Array(0), new Uint8Array(0)]] as const) {
    const p = makePatch(base, target);
    const r = applyAll(p.bytes, base, { baseSize: base.length, baseSha256: sha(base), maxTargetSize: target.length });
    t.is(r.error, null);
    t.true(Buffer.from(r.out).equals(Buffer.from(target)));
  }
  t.true(makePatch(data, data).bytes.length < PATCH_HEADER_SIZE + 40);
});

test('cheapestTransfer: a patch only when strictly smaller than the compressed image; compressed only when smaller than raw', (t) => {
  t.deepEqual(cheapestTransfer({ raw: 1000, compressed: 700, patch: 50 }), { kind: 'patch', bytes: 50 });
  t.deepEqual(cheapestTransfer({ raw: 1000, compressed: 700, patch: 700 }), { kind: 'compressed', bytes: 700 });
  t.deepEqual(cheapestTransfer({ raw: 1000, compressed: 700, patch: 900 }), { kind: 'compressed', bytes: 700 });
  t.deepEqual(cheapestTransfer({ raw: 1000, compressed: 1001, patch: null }), { kind: 'raw', bytes: 1000 });
  t.deepEqual(cheapestTransfer({ raw: 1000, compressed: 1200, patch: 1100 }), { kind: 'raw', bytes: 1000 });
  t.deepEqual(cheapestTransfer({ raw: 1000 }), { kind: 'raw', bytes: 1000 });
});

test('planTransfer picks the patch for a Marlin pair, the compressed image without a base, skip when current', (t) => {
  const { base, target } = load('marlin-v3-ender3-usb-clock');
  const withBase = planTransfer(target, base);
  t.is(withBase.kind, 'patch');
  t.true(withBase.payload.length === withBase.sizes.patch);
  const noBase = planTransfer(target, null);
  t.is(noBase.kind, 'compressed');
  t.is(noBase.sizes.patch, null);
  t.is(planTransfer(target, target, { sameAsBase: true }).kind, 'skip');
  // random bytes do not compress: raw
  const r = rng(3);
  const noise = Uint8Array.from({ length: 3000 }, () => Math.floor(r() * 256));
  t.is(planTransfer(noise, null).kind, 'raw');
});
