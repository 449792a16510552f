import test from 'ava';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { crc32 as zcrc32 } from 'node:zlib';
import { PatchApplier, PATCH_HEADER_SIZE, isCodecError, applierRamBytes, type PatchApplyOptions } from '../src/engine/codec/index.js';
import { makePatch } from '../src/link/delta/index.js';
import { BitWriter, FixedBlock, applyAll, chunks, rng, storedBlock } from './codec-craft.js';

const sha = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());
const be32 = (v: number): number[] => [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];

/** The header exactly as the byte table in docs/delta.md lays it out. */
function header(f: { base: Uint8Array; target: Uint8Array; bodySize: number; baseSize?: number; windowBits?: number; version?: number; magic?: number[]; flags?: number }): Uint8Array {
  const h = [
    ...(f.magic ?? [0x48, 0x58, 0x44, 0x50]), // 0x00 magic "HXDP"
    f.version ?? 1, // 0x04 format version
    f.windowBits ?? 8, // 0x05 window bits of the body's deflate stream
    1, // 0x06 body encoding: raw deflate
    f.flags ?? 0, // 0x07 flags: bit 0 = carry differences
    ...be32(f.baseSize ?? f.base.length), // 0x08 base size
    ...sha(f.base), // 0x0C base SHA-256
    ...be32(f.target.length), // 0x2C target size
    ...sha(f.target), // 0x30 target SHA-256
    ...be32(f.bodySize), // 0x50 decoded body size
  ];
  const crc = zcrc32(Uint8Array.from(h)) >>> 0;
  return Uint8Array.from([...h, ...be32(crc)]); // 0x54 CRC-32 of 0x00..0x53
}

const BASE = Uint8Array.of(10, 20, 30, 40, 50, 60, 70, 80);
const TARGET = Uint8Array.of(11, 20, 30, 40, 0xaa, 0xbb, 60, 70, 80, 0x51);
/**
 * Two records, written out: add 4 (diff 1 0 0 0), extra 2 (AA BB), seek +1 (zigzag 2: skip base byte 50);
 * add 3 (diff 0 0 0), extra 1 (51), seek 0.
 */
const BODY = [0x04, 0x02, 0x02, 0x01, 0x00, 0x00, 0x00, 0xaa, 0xbb, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x51];
const opts = (o: Partial<PatchApplyOptions> = {}): PatchApplyOptions => ({ baseSize: BASE.length, baseSha256: sha(BASE), maxTargetSize: 64, ...o });
const handPatch = (body: number[] = BODY, f: Partial<Parameters<typeof header>[0]> = {}): Uint8Array =>
  Uint8Array.from([...header({ base: BASE, target: TARGET, bodySize: body.length, ...f }), ...storedBlock(body).done()]);

test('the byte table: a patch written by hand (header, one stored deflate block of two records) rebuilds the target', (t) => {
  const patch = handPatch();
  t.is(patch.length, PATCH_HEADER_SIZE + 5 + BODY.length);
  // the stored block: BFINAL 1, BTYPE 00, then LEN 16 and NLEN, little-endian
  t.deepEqual(Array.from(patch.subarray(88, 93)), [0x01, 0x10, 0x00, 0xef, 0xff]);
  for (const max of [1, 3, 1000]) {
    const r = applyAll(patch, BASE, opts(), chunks(patch, max, max));
    t.is(r.error, null);
    t.deepEqual(Array.from(r.out), Array.from(TARGET));
  }
  // the same records in a fixed-Huffman block: the body's compression does not matter to the records
  const fb = new FixedBlock();
  fb.lit(...BODY);
  const z = fb.end().done();
  const p2 = Uint8Array.from([...header({ base: BASE, target: TARGET, bodySize: BODY.length, windowBits: 12 }), ...z]);
  t.deepEqual(Array.from(applyAll(p2, BASE, opts()).out), Array.from(TARGET));
});

test('the byte table, carry flag: differences add with carry inside 32-bit little-endian words of the target', (t) => {
  const base = Uint8Array.of(0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x00);
  // the word 0x000000FF + 1 = 0x00000100, then at the word boundary (offset 4) the carry restarts
  const target = Uint8Array.of(0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01);
  const body = [0x08, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00];
  const bytes = Uint8Array.from([...header({ base, target, bodySize: body.length, flags: 1 }), ...storedBlock(body).done()]);
  const o = { baseSize: base.length, baseSha256: sha(base), maxTargetSize: 8 };
  for (const max of [1, 2, 100]) {
    const r = applyAll(bytes, base, o, chunks(bytes, max, max));
    t.is(r.error, null);
    t.deepEqual(Array.from(r.out), Array.from(target), `chunks ≤${max}`);
  }
  // without the flag the same body adds byte by byte
  const plain = Uint8Array.from([...header({ base, target: Uint8Array.of(0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00), bodySize: body.length }), ...storedBlock(body).done()]);
  t.deepEqual(Array.from(applyAll(plain, base, o).out), [0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00]);
  // the carry starts at 0 in every add run: two runs of 2 bytes, the first ends with a carry out
  const body2 = [0x02, 0x00, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00];
  const t2 = Uint8Array.of(0x00, 0x01, 0x00, 0x00);
  const p2 = Uint8Array.from([...header({ base: base.subarray(0, 4), target: t2, bodySize: body2.length, flags: 1 }), ...storedBlock(body2).done()]);
  const b4 = base.subarray(0, 4);
  t.deepEqual(Array.from(applyAll(p2, b4, { baseSize: 4, baseSha256: sha(b4), maxTargetSize: 4 }).out), [0x00, 0x01, 0x00, 0x00]);
  t.like(applyAll(handPatch(BODY, { flags: 2 }), BASE, opts()).error, { reason: 'bad_header', field: 'header.flags', offset: 7 });
});

test('the applier exposes the header: sizes and hashes for the intake to announce and verify', (t) => {
  const a = new PatchApplier(opts(), { readBase: (o, n) => BASE.subarray(o, o + n), writeTarget: () => {} });
  t.is(a.process(handPatch().subarray(0, 88)), null);
  t.is(a.header?.targetSize, TARGET.length);
  t.deepEqual(a.header?.targetSha256, sha(TARGET));
  t.is(a.header?.bodySize, BODY.length);
  t.is(a.inputOffset, 88);
});

// ---- errors name the field and the offset ----

test('a patch announced for another base: base_mismatch at header.baseSha256 (offset 12), nothing written', (t) => {
  const other = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
  const r = applyAll(handPatch(), other, opts({ baseSha256: sha(other) }));
  t.like(r.error, { reason: 'base_mismatch', field: 'header.baseSha256', offset: 12, in: 'input', code: 'EBADMSG' });
  t.is(r.maxEnd, 0);
  const hex = Buffer.from(sha(BASE)).toString('hex');
  t.is(applyAll(handPatch(), BASE, opts({ baseSha256: hex })).error, null, 'a hex hash works too');
  t.like(applyAll(handPatch(), BASE, opts({ baseSize: 9 })).error, { reason: 'base_size_mismatch', field: 'header.baseSize', offset: 8 });
});

test('header faults: magic, header CRC, version, window, target larger than the slot', (t) => {
  t.like(applyAll(handPatch(BODY, { magic: [0x48, 0x58, 0x44, 0x51] }), BASE, opts()).error, { reason: 'bad_magic', field: 'header.magic', offset: 3 });
  const p = handPatch();
  p[20] = p[20]! ^ 1;
  t.like(applyAll(p, BASE, opts()).error, { reason: 'bad_header', field: 'header.headerCrc', offset: 84 });
  t.like(applyAll(handPatch(BODY, { version: 2 }), BASE, opts()).error, { reason: 'bad_version', field: 'header.version', offset: 4 });
  t.like(applyAll(handPatch(BODY, { windowBits: 13 }), BASE, opts()).error, { reason: 'bad_header', field: 'header.windowBits', offset: 5 });
  t.like(applyAll(handPatch(), BASE, opts({ maxTargetSize: 9 })).error, { reason: 'target_too_large', field: 'header.targetSize', offset: 44, code: 'ENOSPC' });
});

test('an add run past the end of the base: copy_beyond_base at record[0].add, body offset 0', (t) => {
  const body = [0x09, 0x01, 0x00, ...Array(9).fill(0), 0x00];
  const r = applyAll(handPatch(body), BASE, opts());
  t.like(r.error, { reason: 'copy_beyond_base', field: 'record[0].add', offset: 0, in: 'body' });
  t.is(r.maxEnd, 0);
  // second record: the base cursor is at 5 after record 0, an add of 4 reads to 9 > 8
  const body2 = [0x04, 0x02, 0x02, 1, 0, 0, 0, 0xaa, 0xbb, 0x04, 0x00, 0x00, 0, 0, 0, 0];
  t.like(applyAll(handPatch(body2), BASE, opts()).error, { reason: 'copy_beyond_base', field: 'record[1].add', offset: 9 });
});

test('a seek outside the base: seek_beyond_base at record[0].seek with its body offset', (t) => {
  // add 0, extra 0, seek -9 (zigzag 17)
  const r = applyAll(handPatch([0x00, 0x00, 0x11]), BASE, opts());
  t.like(r.error, { reason: 'seek_beyond_base', field: 'record[0].seek', offset: 2, in: 'body' });
  t.like(applyAll(handPatch([0x00, 0x00, 0x12]), BASE, opts()).error, { reason: 'seek_beyond_base', field: 'record[0].seek' }); // +9
});

test('lengths that overflow: a varint over 32 bits, and runs longer than the target', (t) => {
  t.like(applyAll(handPatch([0xff, 0xff, 0xff, 0xff, 0x1f]), BASE, opts()).error, { reason: 'length_overflow', field: 'record[0].add', offset: 0 });
  t.like(applyAll(handPatch([0x00, 0xff, 0xff, 0xff, 0xff, 0x7f]), BASE, opts()).error, { reason: 'length_overflow', field: 'record[0].extra', offset: 1 });
  // add 4 + extra 7 = 11 > the 10-byte target
  t.like(applyAll(handPatch([0x04, 0x07, 0x00]), BASE, opts()).error, { reason: 'length_overflow', field: 'record[0].extra', offset: 1 });
  // a 2^32-1 add: refused before anything is read or allocated
  const r = applyAll(handPatch([0xff, 0xff, 0xff, 0xff, 0x0f]), BASE, opts());
  t.like(r.error, { reason: 'length_overflow', field: 'record[0].add' });
  t.is(r.maxEnd, 0);
});

test('a body that decodes to more than the announced size: output_overflow (deflate), ENOSPC', (t) => {
  const bytes = Uint8Array.from([...header({ base: BASE, target: TARGET, bodySize: 10 }), ...storedBlock(BODY).done()]);
  const r = applyAll(bytes, BASE, opts());
  t.like(r.error, { reason: 'output_overflow', field: 'deflate.LEN', code: 'ENOSPC', offset: 5 });
  t.true(r.maxEnd <= TARGET.length);
});

test('truncated patches: in the header, in the deflate stream, and a record stream that stops short of the target', (t) => {
  const p = handPatch();
  t.like(applyAll(p.subarray(0, 50), BASE, opts()).error, { reason: 'truncated', field: 'header', offset: 50 });
  t.like(applyAll(p.subarray(0, 100), BASE, opts()).error, { reason: 'truncated', field: 'deflate' });
  // a complete deflate stream holding only the first record: 6 of 10 target bytes
  const first = BODY.slice(0, 9);
  t.like(applyAll(handPatch(first), BASE, opts()).error, { reason: 'truncated', field: 'record[1].add', offset: 9, in: 'body' });
  // a record cut inside its varints
  t.like(applyAll(handPatch([0x04, 0x02]), BASE, opts()).error, { reason: 'truncated', field: 'record[0].seek', offset: 2 });
});

test('process() after finish() is a bad call; errors stick', (t) => {
  const a = new PatchApplier(opts(), { readBase: (o, n) => BASE.subarray(o, o + n), writeTarget: () => {} });
  t.is(a.process(handPatch()), null);
  t.is(a.finish(), null);
  t.like(a.process(Uint8Array.of(1)), { reason: 'bad_call', code: 'EINVAL' });
  t.like(a.finish(), { reason: 'bad_call' });
});

function randomPair(seed: number, n: number): { base: Uint8Array; target: Uint8Array } {
  const r = rng(seed);
  const base = new Uint8Array(n);
  for (let i = 0; i < n; i++) base[i] = r() < 0.5 ? Math.floor(r() * 8) : Math.floor(r() * 256);
  const parts: number[] = [];
  for (let i = 0; i < n; ) {
    const k = Math.floor(r() * 4);
    const len = 1 + Math.floor(r() * 200);
    if (k === 0) for (let j = 0; j < len; j++) parts.push(Math.floor(r() * 256));
    else {
      const at = Math.floor(r() * n);
      for (let j = 0; j < len && at + j < n; j++) parts.push(r() < 0.03 ? (base[at + j]! + 1) & 0xff : base[at + j]!);
    }
    i += len;
  }
  return { base, target: Uint8Array.from(parts) };
}

test('save/restore after every process() call of a patch gives the same target', (t) => {
  const { base, target } = randomPair(7, 3000);
  for (const [max, carry] of [[1, false], [40, false], [1, true], [25, true]] as const) {
    const patch = makePatch(base, target, { windowBits: 9, carry }).bytes;
    const out = new Uint8Array(target.length);
    const io = { readBase: (o: number, n: number) => base.subarray(o, o + n), writeTarget: (o: number, b: Uint8Array) => out.set(b, o) };
    const o = { baseSize: base.length, baseSha256: sha(base), maxTargetSize: target.length };
    let a = new PatchApplier(o, io);
    let biggest = 0;
    let calls = 0;
    for (const part of chunks(patch, max, max)) {
      t.is(a.process(part), null);
      const s = a.save();
      biggest = Math.max(biggest, s.length);
      const r = PatchApplier.restore(s, o, io);
      if (!r.ok) return t.fail(r.error.message);
      t.is(r.value.inputOffset, a.inputOffset);
      t.is(r.value.targetOffset, a.targetOffset);
      a = r.value;
      calls++;
    }
    t.is(a.finish(), null);
    t.true(Buffer.from(out).equals(Buffer.from(target)), `chunks ≤${max}, carry ${carry}, ${calls} cuts`);
    t.true(biggest <= 148 + 387 + 512, `state ${biggest} bytes`);
  }
});

test('fast-check: random pairs round-trip through makePatch and the applier in random chunks', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1 << 30 }), fc.integer({ min: 0, max: 2000 }), fc.integer({ min: 1, max: 300 }), fc.integer({ min: 9, max: 12 }), (seed, n, max, wb) => {
      const { base, target } = randomPair(seed, n);
      const p = makePatch(base, target, { windowBits: wb }).bytes;
      const r = applyAll(p, base, { baseSize: base.length, baseSha256: sha(base), maxTargetSize: target.length }, chunks(p, seed, max));
      return r.error === null && Buffer.from(r.out).equals(Buffer.from(target));
    }),
    { numRuns: 150 },
  );
  t.pass();
});

test('fast-check fuzz: mutated and random bodies give only typed errors, no read outside the base, no write past the target', (t) => {
  const { base, target } = randomPair(11, 1500);
  const good = makePatch(base, target, { windowBits: 10 }).bytes;
  const o = { baseSize: base.length, baseSha256: sha(base), maxTargetSize: 1 << 16 };
  const hdr = good.subarray(0, PATCH_HEADER_SIZE);
  fc.assert(
    fc.property(
      fc.oneof(
        fc.array(fc.tuple(fc.integer({ min: PATCH_HEADER_SIZE, max: good.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }).map((m) => {
          const b = good.slice();
          for (const [i, v] of m) b[i] = v;
          return b;
        }),
        fc.uint8Array({ maxLength: 400 }).map((body) => Uint8Array.from([...hdr, ...body])),
        // records written raw in a stored block, under a header that announces their size
        fc.uint8Array({ minLength: 1, maxLength: 200 }).map((body) => {
          const h = header({ base, target, bodySize: body.length, windowBits: 10 });
          return Uint8Array.from([...h, ...storedBlock(body).done()]);
        }),
      ),
      fc.integer({ min: 1, max: 64 }),
      (patch, max) => {
        const r = applyAll(patch, base, o, chunks(patch, max, max));
        if (r.maxEnd > target.length) return false;
        return r.error === null || (isCodecError(r.error) && r.error.offset >= 0);
      },
    ),
    { numRuns: 1500 },
  );
  t.pass();
});

test('applier RAM with a 2 KiB window stays within 4 KiB', (t) => {
  t.true(applierRamBytes(11).total <= 4096, `${applierRamBytes(11).total}`);
  t.true(applierRamBytes(12).total > 4096);
});

test('a fixed-Huffman body with a reserved symbol fails in the deflate layer, named as such', (t) => {
  const z = new FixedBlock().lit(0, 0).raw(287).end().done();
  const bytes = Uint8Array.from([...header({ base: BASE, target: TARGET, bodySize: 16 }), ...z]);
  t.like(applyAll(bytes, BASE, opts()).error, { reason: 'bad_symbol', field: 'deflate.length' });
  void BitWriter;
});

test('no allocation follows an announced length: a 4 GiB target, a 4 GiB body and a 4 GiB add cost no memory', (t) => {
  const huge = 0xffffffff;
  const h = [0x48, 0x58, 0x44, 0x50, 1, 12, 1, 0, ...be32(BASE.length), ...sha(BASE), ...be32(huge), ...new Uint8Array(32), ...be32(huge)];
  const hdr = Uint8Array.from([...h, ...be32(zcrc32(Uint8Array.from(h)) >>> 0)]);
  const body = new FixedBlock(undefined, false).lit(0xf0, 0xff, 0xff, 0xff, 0x0f).end().done(); // add = 2^32 - 16
  const before = process.memoryUsage().arrayBuffers;
  const r = applyAll(Uint8Array.from([...hdr, ...body]), BASE, { baseSize: BASE.length, baseSha256: sha(BASE), maxTargetSize: 16 });
  t.like(r.error, { reason: 'target_too_large' }, 'the slot check comes first');
  const a = new PatchApplier({ baseSize: BASE.length, baseSha256: sha(BASE), maxTargetSize: huge }, { readBase: (o, n) => BASE.subarray(o, o + n), writeTarget: () => {} });
  t.like(a.process(Uint8Array.from([...hdr, ...body])), { reason: 'copy_beyond_base', field: 'record[0].add' });
  t.true(process.memoryUsage().arrayBuffers - before < 1 << 20, 'under 1 MiB of buffers');
});
