import test from 'ava';
import fc from 'fast-check';
import { crc32 } from 'node:zlib';
import { parseImage, InPlaceVerifier, StreamingVerifier, buildImage } from '../src/hxe/index.js';
import { crc32Combine, hxeCrc32 } from '../src/hxe/crc.js';
import { fixture, fixtureNames, rawImage, u16, u32 } from './hxe-craft.js';

/** The streaming verifier: any chunking gives parseImage's verdict; header faults are caught at the header. */

for (const size of [1, 2, 3, 5, 16, 64, 1000]) {
  test(`every fixture streamed in ${size}-byte chunks equals parseImage`, (t) => {
    for (const name of fixtureNames()) {
      const bytes = fixture(name);
      const sv = new StreamingVerifier();
      for (let i = 0; i < bytes.length; i += size) t.is(sv.push(bytes.subarray(i, i + size)), null, name);
      t.is(sv.bytesReceived, bytes.length);
      t.deepEqual(sv.finish(), parseImage(bytes), name);
    }
  });
}

/** Pushes one byte at a time and returns the 1-based count of bytes after which the first error appeared. */
function firstErrorAt(bytes: Uint8Array, limits?: object, totalBytes?: number): { at: number; reason?: string } {
  const sv = new StreamingVerifier(limits, totalBytes === undefined ? {} : { totalBytes });
  for (let i = 0; i < bytes.length; i++) {
    const e = sv.push(bytes.subarray(i, i + 1));
    if (e) return { at: i + 1, reason: e.reason };
  }
  return { at: -1 };
}

test('bad magic is rejected at the 4th byte, a bad version at the 6th', (t) => {
  const a = rawImage();
  a[1] = 0;
  t.deepEqual(firstErrorAt(a), { at: 4, reason: 'bad_magic' });
  const b = rawImage();
  u16(b, 4, 9);
  t.deepEqual(firstErrorAt(b), { at: 6, reason: 'unsupported_version' });
});

test('reserved bytes, app name, lengths and alignment are rejected the moment the header is complete', (t) => {
  const cases: Array<[string, (b: Uint8Array) => void, object?]> = [
    ['reserved_nonzero', (b) => { b[0x50] = 1; }],
    ['app_name_not_ascii', (b) => { b[0x20] = 1; }],
    ['code_unaligned', (b) => { u32(b, 0x0c, 6); }],
    ['entry_out_of_range', (b) => { u32(b, 0x08, 0x40); }],
    ['meta_inconsistent', (b) => { u32(b, 0x44, 3); }],
    ['code_too_large', (b) => { u32(b, 0x0c, 0x7ffffff0); }],
    ['bss_too_large', (b) => { u32(b, 0x14, 0xffffffff); }],
  ];
  for (const [reason, mutate] of cases) {
    const b = rawImage({ code: new Uint8Array(64) });
    mutate(b);
    t.deepEqual(firstErrorAt(b), { at: 96, reason }, reason);
  }
  const v1 = rawImage({ version: 1, code: new Uint8Array(8) });
  u32(v1, 0x0c, 5);
  t.deepEqual(firstErrorAt(v1), { at: 32, reason: 'code_unaligned' }, 'v1 header completes at 32 bytes');
});

test('with totalBytes announced, impossible lengths are rejected at the header and overruns at once', (t) => {
  const b = rawImage({ code: new Uint8Array(64) });
  t.deepEqual(firstErrorAt(b, undefined, b.length - 1), { at: 96, reason: 'truncated' });
  const m = fixture('t04_value_cmd.hxe').slice();
  u32(m, 0x44, 1000);
  t.deepEqual(firstErrorAt(m, undefined, m.length), { at: 96, reason: 'meta_table_out_of_bounds' });
  const sv = new StreamingVerifier(undefined, { totalBytes: 10 });
  t.is(sv.push(new Uint8Array(11))?.reason, 'truncated');
});

test('after an error every push returns it and finish() reports it', (t) => {
  const sv = new StreamingVerifier();
  const e = sv.push(new Uint8Array([1, 2, 3, 4]));
  t.is(e?.reason, 'bad_magic');
  t.is(sv.push(fixture('t01_minimal.hxe')), e);
  const r = sv.finish();
  t.false(r.ok);
  if (!r.ok) t.is(r.error as unknown, e as unknown);
  t.is(sv.capacity, 0, 'buffer released on error');
});

test('finish() before the header is complete: too_small / header_truncated, same as parseImage', (t) => {
  const full = fixture('t01_minimal.hxe');
  for (const n of [0, 3, 20, 31, 32, 60, 95]) {
    const sv = new StreamingVerifier();
    sv.push(full.subarray(0, n));
    t.deepEqual(sv.finish(), parseImage(full.subarray(0, n)), `${n} bytes`);
  }
});

test('the header is exposed as soon as it is valid; the running CRC matches at the end', (t) => {
  const bytes = fixture('t09_stdlib_plus_pragmas.hxe');
  const sv = new StreamingVerifier();
  sv.push(bytes.subarray(0, 95));
  t.is(sv.header, null);
  sv.push(bytes.subarray(95, 96));
  t.is(sv.header?.appName, 'stdlib_app');
  sv.push(bytes.subarray(96));
  t.is(sv.runningCrc as number | undefined, sv.header?.crc32);
  t.true(sv.finish().ok);
});

test('memory: the buffer never exceeds the bytes pushed + 64 KiB, whatever the header claims', (t) => {
  // a header that claims 64 KiB code, 64 KiB rodata and a huge metadata table, followed by little data
  const liar = rawImage({ code: new Uint8Array(4) });
  u32(liar, 0x0c, 0x10000);
  u32(liar, 0x10, 0x10000);
  const sv = new StreamingVerifier();
  let pushed = 0;
  for (let i = 0; i < liar.length; i++) {
    sv.push(liar.subarray(i, i + 1));
    pushed++;
    t.true(sv.capacity <= pushed + 64 * 1024);
  }
  t.true(sv.capacity <= 256, `capacity ${sv.capacity} for ${pushed} bytes`);
  t.is(sv.finish().ok, false);

  // a real 300 KiB image in 8-byte chunks: bounded slack at every step
  const big = buildImage({ code: new Uint8Array(300 * 1024), limits: { maxCode: 1 << 20 } });
  if (!big.ok) return t.fail(big.error.message);
  const s2 = new StreamingVerifier({ maxCode: 1 << 20 });
  let worst = 0;
  for (let i = 0; i < big.value.length; i += 8) {
    s2.push(big.value.subarray(i, i + 8));
    worst = Math.max(worst, s2.capacity - s2.bytesReceived);
  }
  t.true(worst <= 64 * 1024, `worst slack ${worst}`);
  t.true(s2.finish().ok);
});

test('the image returned does not alias the pushed chunks', (t) => {
  const bytes = fixture('t11_c_hello_v2.hxe').slice();
  const sv = new StreamingVerifier();
  sv.push(bytes);
  const r = sv.finish();
  bytes.fill(0);
  t.true(r.ok && r.value.code.some((x) => x !== 0));
});

test('InPlaceVerifier reads the caller\'s growing buffer: parseImage\'s verdict, and the image is a view into the kept bytes', (t) => {
  for (const name of fixtureNames()) {
    const bytes = fixture(name);
    const v = new InPlaceVerifier(undefined, { totalBytes: bytes.length });
    // The caller's buffer moves when it grows, like the engine's session buffer.
    let buffer = new Uint8Array(16);
    for (let len = 0; len < bytes.length;) {
      const next = Math.min(bytes.length, len + 7);
      if (next > buffer.length) {
        const grown = new Uint8Array(Math.min(bytes.length, buffer.length * 2));
        grown.set(buffer.subarray(0, len));
        buffer = grown;
      }
      buffer.set(bytes.subarray(len, next), len);
      len = next;
      t.is(v.advance(buffer, len), null, name);
    }
    const exact = buffer.length === bytes.length ? buffer : buffer.slice(0, bytes.length);
    const verdict = v.finish(exact);
    t.deepEqual(verdict, parseImage(bytes), name);
    if (verdict.ok && verdict.value.code.length > 0) t.is(verdict.value.code.buffer, exact.buffer, `${name}: code is a view, not a copy`);
  }
  // More than announced is refused before the caller stores anything; a shrinking stream is a caller bug.
  const v = new InPlaceVerifier(undefined, { totalBytes: 10 });
  t.is(v.admitLength(11)?.reason, 'truncated');
  t.throws(() => new InPlaceVerifier().advance(new Uint8Array(4), 5), { instanceOf: RangeError });
});

test('crc32Combine: the CRC of A then B from the two CRCs and B\'s length, for any split', (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 3000 }), (a, b) =>
    crc32Combine(crc32(a), crc32(b), b.length) === crc32(Buffer.concat([a, b]))), { numRuns: 500 });
  t.is(crc32Combine(0x12345678, 0, 0), 0x12345678, 'nothing appended');
});

test('the whole-stream CRC comes from the body pass: equal to zlib over the bytes, at any point of the stream', (t) => {
  for (const name of fixtureNames()) {
    const bytes = fixture(name);
    const v = new InPlaceVerifier(undefined, { totalBytes: bytes.length });
    for (let len = 1; len <= bytes.length; len += 37) {
      t.is(v.advance(bytes, len), null, name);
      t.is(v.streamCrc(), crc32(bytes.subarray(0, len)), `${name} at ${len}`);
    }
    t.is(v.advance(bytes, bytes.length), null);
    t.is(v.streamCrc(), crc32(bytes), name);
    t.is(v.runningCrc, hxeCrc32(bytes), name);
  }
});
