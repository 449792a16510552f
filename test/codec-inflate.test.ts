import test from 'ava';
import fc from 'fast-check';
import { readFileSync, readdirSync } from 'node:fs';
import { deflateRawSync, constants } from 'node:zlib';
import { Inflater, inflateRamBytes, isCodecError } from '../src/engine/codec/index.js';
import { BitWriter, FixedBlock, chunks, inflateAll, rng, storedBlock } from './codec-craft.js';

const PAIRS = '/work/shared/vectors/firmware-pairs/';
const pairFiles = (): string[] => readdirSync(PAIRS).filter((f) => f.endsWith('.bin')).sort();
const deflate = (b: Uint8Array, windowBits = 12, extra: object = {}): Uint8Array =>
  new Uint8Array(deflateRawSync(b, { windowBits, level: 9, memLevel: 9, ...extra }));

function randomish(n: number, seed: number, alphabet: number): Uint8Array {
  const r = rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = r() < 0.3 && i > 16 ? out[i - 1 - Math.floor(r() * 16)]! : Math.floor(r() * alphabet);
  return out;
}

test('every firmware file decodes like zlib at windows 9..12, whole and in random chunks, window in RAM or read back', (t) => {
  for (const f of pairFiles()) {
    const data = new Uint8Array(readFileSync(PAIRS + f));
    for (const wb of [9, 12]) {
      const z = deflate(data, wb);
      for (const [seed, max] of [[1, 1 << 20], [f.length, 97], [wb, 1]] as const) {
        for (const window of ['ram', 'output'] as const) {
          if (max === 1 && window === 'output') continue;
          const r = inflateAll(z, { windowBits: wb, outputSize: data.length, window }, chunks(z, seed, max));
          t.is(r.error, null, `${f} wb ${wb}`);
          t.true(Buffer.from(r.out).equals(Buffer.from(data)), `${f} wb ${wb} chunks ≤${max} ${window}`);
        }
      }
    }
  }
});

test('stored, fixed and dynamic blocks from zlib, all strategies and levels', (t) => {
  const data = randomish(40_000, 3, 40);
  for (const level of [0, 1, 6, 9]) {
    for (const strategy of [constants.Z_DEFAULT_STRATEGY, constants.Z_FIXED, constants.Z_RLE, constants.Z_HUFFMAN_ONLY, constants.Z_FILTERED]) {
      const z = deflate(data, 10, { level, strategy });
      const r = inflateAll(z, { windowBits: 10, outputSize: data.length }, chunks(z, level + strategy, 300));
      t.is(r.error, null);
      t.true(Buffer.from(r.out).equals(Buffer.from(data)), `level ${level} strategy ${strategy}`);
    }
  }
});

test('fast-check: random data (and its chunking) decodes as zlib encoded it', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 3000 }), fc.integer({ min: 9, max: 12 }), fc.integer({ min: 1, max: 64 }), fc.integer(), (data, wb, max, seed) => {
      const z = deflate(data, wb);
      const r = inflateAll(z, { windowBits: wb, outputSize: data.length }, chunks(z, seed, max));
      return r.error === null && Buffer.from(r.out).equals(Buffer.from(data));
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('an empty stream and a hand-made fixed block with an overlapping match', (t) => {
  const empty = deflate(new Uint8Array(0));
  t.is(inflateAll(empty, { windowBits: 12, outputSize: 0 }).error, null);
  // "abcabcabca": three literals, then a 7-byte match at distance 3 (copies what it writes)
  const s = new FixedBlock().lit(0x61, 0x62, 0x63).match(7, 3).end().done();
  for (const window of ['ram', 'output'] as const) {
    const r = inflateAll(s, { windowBits: 8, outputSize: 10, window }, chunks(s, 5, 1));
    t.is(r.error, null);
    t.is(Buffer.from(r.out).toString(), 'abcabcabca');
  }
  const st = storedBlock([1, 2, 3], false, new BitWriter());
  const two = storedBlock([4, 5], true, st).done();
  t.deepEqual(Array.from(inflateAll(two, { windowBits: 8, outputSize: 5 }, chunks(two, 2, 1)).out), [1, 2, 3, 4, 5]);
});

/** Save after every process() call, restore into a fresh decoder, continue: the output is the same. */
test('save/restore cut at every process() call gives the same output (RAM and flash windows)', (t) => {
  const data = randomish(6000, 9, 20);
  for (const window of ['ram', 'output'] as const) {
    for (const wb of [8, 12]) {
      const z = deflate(data, Math.max(9, wb));
      const useWb = Math.max(9, wb);
      const parts = chunks(z, wb, 13);
      const out = new Uint8Array(data.length);
      const io = { write: (o: number, b: Uint8Array) => out.set(b, o), readOutput: (o: number, n: number) => out.slice(o, o + n) };
      const limits = { windowBits: useWb, outputSize: data.length, window };
      let inf = new Inflater(limits, io);
      let maxState = 0;
      for (const p of parts) {
        t.is(inf.process(p), null);
        const state = inf.save();
        maxState = Math.max(maxState, state.length);
        const r = Inflater.restore(state, limits, io);
        if (!r.ok) return t.fail(r.error.message);
        t.is(r.value.outputOffset, inf.outputOffset);
        inf = r.value;
      }
      t.is(inf.finish(), null);
      t.true(Buffer.from(out).equals(Buffer.from(data)), `${window} wb ${useWb}`);
      t.true(maxState <= 387 + (window === 'ram' ? 1 << useWb : 0), `state ${maxState} bytes`);
    }
  }
});

test('a saved state that does not fit is refused with bad_state', (t) => {
  const io = { write: () => {} };
  const inf = new Inflater({ windowBits: 10, outputSize: 100 }, io);
  const s = inf.save();
  const other = Inflater.restore(s, { windowBits: 11, outputSize: 100 }, io);
  t.false(other.ok);
  if (!other.ok) t.is(other.error.reason, 'bad_state');
  const cut = Inflater.restore(s.subarray(0, 10), { windowBits: 10, outputSize: 100 }, io);
  t.false(cut.ok);
  const junk = s.slice();
  junk[3] = 200;
  const r = Inflater.restore(junk, { windowBits: 10, outputSize: 100 }, io);
  t.false(r.ok);
  if (!r.ok) t.is(r.error.field, 'state.mode');
});

// ---- each bad input names its field and offset ----

test('a distance beyond the configured window: window_exceeded, field deflate.distance, at the byte of the distance', (t) => {
  // 600 literals then a match at distance 520 > the 512-byte window of windowBits 9
  const b = new FixedBlock();
  for (let i = 0; i < 600; i++) b.lit(i & 0xff);
  const s = b.match(10, 520).end().done();
  const r = inflateAll(s, { windowBits: 9, outputSize: 610 });
  t.is(r.error?.reason, 'window_exceeded');
  t.is(r.error?.field, 'deflate.distance');
  t.is(r.error?.in, 'input');
  // 3 header bits + 600 literals of 8 or 9 bits + 7-bit length code: the distance starts in the byte after them
  const bitsBefore = 3 + Array.from({ length: 600 }, (_, i) => ((i & 0xff) < 144 ? 8 : 9)).reduce((a, c) => a + c, 0) + 7;
  t.is(r.error?.offset, Math.floor((bitsBefore + 5) / 8)); // the byte holding the distance's extra bits
  t.true(r.maxEnd <= 610);
  // the same stream is fine with a 1 KiB window
  t.is(inflateAll(s, { windowBits: 10, outputSize: 610 }).error, null);
  // a zlib stream made with a 32 KiB window, decoded with 4 KiB
  const far = new Uint8Array(20_000);
  const r2 = rng(4);
  for (let i = 0; i < 8000; i++) far[i] = Math.floor(r2() * 256);
  far.set(far.subarray(0, 8000), 10_000);
  const e = inflateAll(deflate(far, 15), { windowBits: 12, outputSize: far.length }).error;
  t.is(e?.reason, 'window_exceeded');
  t.is(e?.code, 'EBADMSG');
});

test('a distance before the start of the output: distance_before_start', (t) => {
  const s = new FixedBlock().lit(1, 2).match(3, 3).end().done();
  const r = inflateAll(s, { windowBits: 8, outputSize: 5 });
  t.is(r.error?.reason, 'distance_before_start');
  t.is(r.error?.field, 'deflate.distance');
  t.is(r.error?.offset, 3); // 3 + 8 + 8 + 7 + 5 bits: the distance code ends in byte 3
});

test('a stream that decodes to more than the announced size: output_overflow, nothing written past it', (t) => {
  const data = randomish(5000, 2, 50);
  const z = deflate(data);
  for (const size of [0, 1, 100, 4999]) {
    for (const max of [1, 50, 1 << 20]) {
      const r = inflateAll(z, { windowBits: 12, outputSize: size }, chunks(z, size, max));
      t.is(r.error?.reason, 'output_overflow');
      t.is(r.error?.code, 'ENOSPC');
      t.regex(r.error?.field ?? '', /^deflate\.(literal|length|LEN)$/);
      t.true(r.maxEnd <= size, `wrote to ${r.maxEnd} of ${size}`);
      t.true(Buffer.from(r.out).equals(Buffer.from(data.subarray(0, size))));
    }
  }
  const stored = storedBlock([1, 2, 3, 4]).done();
  const e = inflateAll(stored, { windowBits: 8, outputSize: 3 }).error;
  t.is(e?.field, 'deflate.LEN');
  t.is(e?.offset, 5);
});

test('truncated streams: finish() says truncated with the input offset; short of the announced size too', (t) => {
  const data = randomish(3000, 5, 30);
  const z = deflate(data);
  for (const cut of [0, 1, 2, 10, z.length - 1]) {
    const r = inflateAll(z.subarray(0, cut), { windowBits: 12, outputSize: data.length });
    t.is(r.error?.reason, 'truncated', `cut at ${cut}`);
    t.is(r.error?.field, 'deflate');
    t.is(r.error?.offset, cut);
  }
  const r = inflateAll(z, { windowBits: 12, outputSize: data.length + 1 });
  t.is(r.error?.reason, 'truncated');
  t.is(r.error?.field, 'deflate.outputSize');
});

test('bytes after the final block: trailing_data', (t) => {
  const s = storedBlock([7]).done();
  const withTail = Uint8Array.of(...s, 0);
  const r = inflateAll(withTail, { windowBits: 8, outputSize: 1 }, chunks(withTail, 1, 1));
  t.is(r.error?.reason, 'trailing_data');
  t.is(r.error?.offset, s.length);
});

test('malformed blocks name the field: BTYPE 3, NLEN, reserved symbols, bad code lengths', (t) => {
  const bt3 = new BitWriter().bits(1, 1).bits(3, 2).done();
  t.like(inflateAll(bt3, { windowBits: 8, outputSize: 1 }).error, { reason: 'bad_block_type', field: 'deflate.BTYPE', offset: 0 });
  const nlen = new BitWriter().bits(1, 1).bits(0, 2).align().bits(3, 16).bits(3, 16).bytes([1, 2, 3]).done();
  t.like(inflateAll(nlen, { windowBits: 8, outputSize: 3 }).error, { reason: 'stored_length_mismatch', field: 'deflate.NLEN', offset: 3 });
  const r286 = new FixedBlock().lit(1).raw(286).end().done();
  t.like(inflateAll(r286, { windowBits: 8, outputSize: 9 }).error, { reason: 'bad_symbol', field: 'deflate.length' });
  const d30 = new FixedBlock().lit(1);
  d30.raw(257);
  d30.w.code(30, 5);
  t.like(inflateAll(d30.end().done(), { windowBits: 8, outputSize: 9 }).error, { reason: 'bad_symbol', field: 'deflate.distance' });
  // dynamic block, HLIT 30 (287 codes)
  const hlit = new BitWriter().bits(1, 1).bits(2, 2).bits(30, 5).bits(0, 5).bits(0, 4).done();
  t.like(inflateAll(hlit, { windowBits: 8, outputSize: 1 }).error, { reason: 'bad_code_lengths', field: 'deflate.HLIT', offset: 0 });
  // dynamic block whose code-length code is all zeros (incomplete)
  const clen = new BitWriter().bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(0, 4).bits(0, 12).done();
  t.like(inflateAll(clen, { windowBits: 8, outputSize: 1 }).error, { reason: 'bad_code_lengths', field: 'deflate.HCLEN' });
});

test('fast-check fuzz: random and mutated streams give only typed errors and never write past the announced size', (t) => {
  const seedData = randomish(2000, 8, 64);
  const good = deflate(seedData, 11);
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 600 }),
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }).map((muts) => {
          const b = good.slice();
          for (const [i, v] of muts) b[i] = v;
          return b;
        }),
      ),
      fc.integer({ min: 0, max: 3000 }),
      fc.integer({ min: 8, max: 12 }),
      fc.integer({ min: 1, max: 100 }),
      fc.boolean(),
      (stream, size, wb, max, flash) => {
        const r = inflateAll(stream, { windowBits: wb, outputSize: size, window: flash ? 'output' : 'ram' }, chunks(stream, size + max, max));
        if (r.maxEnd > size) return false;
        return r.error === null || (isCodecError(r.error) && typeof r.error.offset === 'number' && r.error.offset >= 0 && r.error.offset <= stream.length);
      },
    ),
    { numRuns: 1500 },
  );
  t.pass();
});

test('limits out of range are refused at init', (t) => {
  t.throws(() => new Inflater({ windowBits: 13, outputSize: 1 }, { write: () => {} }), { instanceOf: RangeError });
  t.throws(() => new Inflater({ windowBits: 7, outputSize: 1 }, { write: () => {} }), { instanceOf: RangeError });
  t.throws(() => new Inflater({ windowBits: 12, outputSize: 1, window: 'output' }, { write: () => {} }), { instanceOf: RangeError });
});

test('the RAM figures in docs/delta.md are the ones computed from the decoder', (t) => {
  const doc = readFileSync(new URL('../docs/delta.md', import.meta.url), 'utf8');
  const flash = inflateRamBytes(12, 'output').total;
  const ram12 = inflateRamBytes(12, 'ram').total;
  t.true(flash <= 4096, `${flash}`);
  t.true(doc.includes(`${flash.toLocaleString('en-US')} bytes`), `docs quote ${flash}`);
  t.true(doc.includes(`${ram12.toLocaleString('en-US')} bytes`), `docs quote ${ram12}`);
});

test('the codec imports no Node module and nothing outside its folder (it runs on the device side as is)', (t) => {
  const dir = new URL('../src/engine/codec/', import.meta.url);
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.ts'))) {
    const src = readFileSync(new URL(f, dir), 'utf8');
    const specs = [...src.matchAll(/\bfrom\s+'([^']+)'|\bimport\(\s*'([^']+)'\s*\)|\brequire\(\s*'([^']+)'/g)].map((m) => m[1] ?? m[2] ?? m[3]);
    for (const s of specs) t.true(s !== undefined && s.startsWith('./'), `${f} imports ${s}`);
    t.false(/\bBuffer\b/.test(src), `${f} uses Buffer`);
  }
});
