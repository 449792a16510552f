/**
 * The UART framing layer and message codecs, in process: COBS, the frame layout and its checks,
 * the session messages, and the byte examples in docs/uart_protocol.md built by hand from its
 * tables.
 */
import test from 'ava';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { cobsDecode, cobsEncodeStaged, cobsEncodeWithDelimiter, cobsMaxEncodedLength, cobsReserve } from '../src/link/uart/cobs.js';
import { FrameType, decodeFrame, encodeFrame, frameBytes, parseFrameBytes, type Frame, type FrameTypeValue } from '../src/link/uart/frame.js';
import {
  decodeAccept, decodeCurrent, decodeError, decodeMissing, decodeOpen, decodeResult, decodeResultV1, encodeAccept, encodeCurrent, encodeError,
  encodeMissing, encodeOpen, encodeResult, encodeResultV1, type ImageInfo,
} from '../src/link/uart/messages.js';

const types = Object.values(FrameType) as FrameTypeValue[];
const arbFrame = fc.record({
  type: fc.constantFrom(...types),
  tag: fc.integer({ min: 0, max: 255 }),
  seq: fc.integer({ min: 0, max: 0xffffffff }),
  payload: fc.oneof(fc.uint8Array({ maxLength: 600 }), fc.uint8Array({ maxLength: 600, min: 0, max: 2 })),
});

test('COBS: round trip, no zero before the delimiter, bounded overhead', (t) => {
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 2000 }), fc.uint8Array({ maxLength: 2000, min: 0, max: 1 })), (bytes) => {
    const wire = cobsEncodeWithDelimiter(bytes);
    if (wire.indexOf(0) !== wire.length - 1) return false;
    if (wire.length > cobsMaxEncodedLength(bytes.length) + 1) return false;
    const back = cobsDecode(wire.subarray(0, wire.length - 1));
    return back !== null && back.equals(Buffer.from(bytes));
  }), { numRuns: 500 });
  t.pass();
});

test('COBS: runs of exactly 254 and 255 non-zero bytes, and an empty input', (t) => {
  for (const n of [0, 1, 253, 254, 255, 508, 509]) {
    const bytes = Buffer.alloc(n, 0x41);
    const wire = cobsEncodeWithDelimiter(bytes);
    t.deepEqual(cobsDecode(wire.subarray(0, -1)), bytes, `n=${n}`);
  }
  t.deepEqual([...cobsEncodeWithDelimiter(new Uint8Array(0))], [0x01, 0x00]);
  t.deepEqual([...cobsEncodeWithDelimiter(Uint8Array.from([0]))], [0x01, 0x01, 0x00]);
});

/** Textbook byte-at-a-time COBS encoder, the oracle for the block-copying one. */
function referenceCobs(bytes: Uint8Array): number[] {
  const out: number[] = [0];
  let codeAt = 0;
  let code = 1;
  for (const b of bytes) {
    if (b !== 0) {
      out.push(b);
      code++;
    }
    if (b === 0 || code === 0xff) {
      out[codeAt] = code;
      codeAt = out.length;
      out.push(0);
      code = 1;
    }
  }
  out[codeAt] = code;
  out.push(0);
  return out;
}

test('COBS: encoding in place matches a byte-at-a-time encoder and touches nothing outside its span', (t) => {
  // Long zero-free runs (full 254-byte blocks) as well as dense zeros.
  const arbBytes = fc.oneof(
    fc.uint8Array({ maxLength: 1200 }),
    fc.uint8Array({ minLength: 240, maxLength: 1200, min: 1, max: 255 }),
    fc.uint8Array({ maxLength: 1200, min: 0, max: 1 }),
  );
  fc.assert(fc.property(arbBytes, fc.nat(40), fc.nat(3), (bytes, at, phase) => {
    const room = cobsMaxEncodedLength(bytes.length) + 1;
    // Filler around the span, zeros mixed in: a zero after the span must not end the input late.
    const out = Buffer.alloc(at + room + 64);
    for (let i = 0; i < out.length; i++) out[i] = (i + phase) % 3 === 0 ? 0 : 0x5a;
    const before = Buffer.from(out);
    out.set(bytes, at + cobsReserve(bytes.length));
    const end = cobsEncodeStaged(out, at, bytes.length);
    const expected = referenceCobs(bytes);
    if (end - at !== expected.length) return false;
    if (!out.subarray(at, end).equals(Buffer.from(expected))) return false;
    if (!out.subarray(0, at).equals(before.subarray(0, at))) return false;
    if (!out.subarray(at + room).equals(before.subarray(at + room))) return false;
    // The decoder gives the same bytes whether it decodes into its input or into a new buffer.
    const block = Buffer.from(out.subarray(at, end - 1));
    const copied = cobsDecode(block, false);
    const inPlace = cobsDecode(block, true);
    return copied !== null && inPlace !== null && copied.equals(Buffer.from(bytes)) && inPlace.equals(Buffer.from(bytes));
  }), { numRuns: 800 });
  t.pass();
});

test('COBS: a zero inside a block or a code running past the end is rejected', (t) => {
  t.is(cobsDecode(Uint8Array.from([0x03, 0x11, 0x00, 0x22])), null);
  t.is(cobsDecode(Uint8Array.from([0x05, 0x11, 0x22])), null);
});

test('frames: round trip through the wire form', (t) => {
  fc.assert(fc.property(arbFrame, (f) => {
    const d = decodeFrame(encodeFrame(f).subarray(0, -1));
    return d.ok && d.value.type === f.type && d.value.tag === f.tag && d.value.seq === f.seq && Buffer.from(d.value.payload).equals(Buffer.from(f.payload));
  }), { numRuns: 300 });
  t.pass();
});

test('frames: every single-bit error on the wire is caught, never delivered', (t) => {
  let flips = 0;
  fc.assert(fc.property(arbFrame, fc.nat(), (f, at) => {
    const wire = Buffer.from(encodeFrame(f).subarray(0, -1));
    const bit = at % (wire.length * 8);
    wire[bit >> 3]! ^= 1 << (bit & 7);
    flips++;
    // A flip that makes a 0x00 splits the block on a real line; either way no frame comes out whole.
    const parts = wire.indexOf(0) === -1 ? [wire] : [wire.subarray(0, wire.indexOf(0)), wire.subarray(wire.indexOf(0) + 1)];
    return parts.every((p) => !decodeFrame(p).ok);
  }), { numRuns: 1000 });
  t.log(`${flips} single-bit faults injected, all rejected`);
  t.is(flips, 1000);
});

test('frames: each check has its own drop reason and offset', (t) => {
  const good = frameBytes({ type: FrameType.ACK, tag: 1, seq: 2, payload: Uint8Array.from([9, 9]) });
  const short = parseFrameBytes(good.subarray(0, 11));
  t.like(short, { ok: false, error: { reason: 'too_short' } });
  const longer = Buffer.concat([good, Buffer.from([1])]);
  t.like(parseFrameBytes(longer), { ok: false, error: { reason: 'length_mismatch', offset: 6 } });
  const badCrc = Buffer.from(good);
  badCrc[9]! ^= 0xff;
  t.like(parseFrameBytes(badCrc), { ok: false, error: { reason: 'crc_mismatch', offset: 10 } });
  const unknown = Buffer.from(good);
  unknown[0] = 0x7f;
  unknown.writeUInt32BE(crc32(unknown.subarray(0, 10)), 10);
  t.like(parseFrameBytes(unknown), { ok: false, error: { reason: 'unknown_type', offset: 0 } });
  t.like(parseFrameBytes(good, 1), { ok: false, error: { reason: 'too_long', offset: 6 } });
  t.like(decodeFrame(Buffer.alloc(200, 1), 16), { ok: false, error: { reason: 'too_long' } });
  t.like(decodeFrame(Uint8Array.from([0x05, 1])), { ok: false, error: { reason: 'cobs_invalid' } });
});

test('messages: round trips', (t) => {
  const open = { version: 2, chunkSize: 4096, window: 16, totalBytes: 123456, crc32: 0xdeadbeef, sha256: new Uint8Array(32).fill(7), appName: 'blinky', force: true };
  t.deepEqual(decodeOpen(encodeOpen(open)), { ok: true, value: open });
  t.deepEqual(decodeOpen(encodeOpen({ ...open, force: false })), { ok: true, value: { ...open, force: false } });
  // Version 1 has no flags: FORCE is never sent, and a set bit is not read as FORCE.
  const v1 = encodeOpen({ ...open, version: 1 });
  t.is(v1[1], 0);
  v1[1] = 1;
  t.deepEqual(decodeOpen(v1), { ok: true, value: { ...open, version: 1, force: false } });
  const accept = { version: 1, chunkSize: 256, window: 4, resumeOffset: 1024 };
  t.deepEqual(decodeAccept(encodeAccept(accept)), { ok: true, value: accept });
  t.deepEqual(decodeMissing(encodeMissing([1, 5, 0xffffffff])), { ok: true, value: [1, 5, 0xffffffff] });
  t.deepEqual(decodeResultV1(encodeResultV1({ pid: 9, appName: 'x_#0' })), { ok: true, value: { pid: 9, appName: 'x_#0' } });
  const image: ImageInfo = { pid: 9, crc32: 0x01020304, sha256: 'ab'.repeat(32), appName: 'x_#0', version: '1.2.3' };
  const from: ImageInfo = { pid: 3, crc32: 0xfffffffe, sha256: '00'.repeat(32), appName: 'x', version: '' };
  t.deepEqual(decodeCurrent(encodeCurrent(image)), { ok: true, value: image });
  for (const r of [
    { outcome: 'installed' as const, confirmPending: false, slot: null, image, from: null },
    { outcome: 'installed' as const, confirmPending: false, slot: 'A' as const, image, from: null },
    { outcome: 'updated' as const, confirmPending: true, slot: 'B' as const, image, from },
  ]) t.deepEqual(decodeResult(encodeResult(r)), { ok: true, value: r });
  t.throws(() => encodeResult({ outcome: 'updated', confirmPending: false, slot: null, image, from: null }));
  const e = { code: 'ENOSPC', where: 'verify', reason: 'code_too_large' };
  t.deepEqual(decodeError(encodeError(e)), { ok: true, value: e });
});

test('messages: malformed payloads are typed errors, not exceptions', (t) => {
  const open = encodeOpen({ version: 1, chunkSize: 4096, window: 16, totalBytes: 1, crc32: 0, sha256: new Uint8Array(32), appName: 'ab', force: false });
  t.like(decodeOpen(open.subarray(0, 20)), { ok: false, error: { offset: 20 } });
  const longName = Buffer.from(open);
  longName[46] = 40;
  t.like(decodeOpen(longName), { ok: false, error: { offset: 46 } });
  t.like(decodeOpen(Buffer.concat([open, Buffer.from([0])])), { ok: false });
  t.like(decodeAccept(Buffer.alloc(9)), { ok: false });
  t.like(decodeMissing(Buffer.alloc(6)), { ok: false, error: { offset: 4 } });
  t.like(decodeResultV1(Buffer.from([0, 0, 0, 1, 9, 0x41])), { ok: false });
  const image: ImageInfo = { pid: 1, crc32: 2, sha256: '11'.repeat(32), appName: 'app', version: '1.0' };
  const result = encodeResult({ outcome: 'updated', confirmPending: false, slot: 'A', image, from: image });
  t.like(decodeResult(result.subarray(0, result.length - 1)), { ok: false });
  t.like(decodeResult(Buffer.concat([result, Buffer.from([0])])), { ok: false });
  const badOutcome = Buffer.from(result);
  badOutcome[0] = 3;
  t.like(decodeResult(badOutcome), { ok: false, error: { offset: 0 } });
  const badSlot = Buffer.from(result);
  badSlot[2] = 0x43;
  t.like(decodeResult(badSlot), { ok: false, error: { offset: 2 } });
  t.like(decodeResult(Buffer.from([1, 0])), { ok: false });
  const current = encodeCurrent(image);
  t.like(decodeCurrent(current.subarray(0, 41)), { ok: false });
  t.like(decodeCurrent(Buffer.concat([current, Buffer.from([0])])), { ok: false });
  t.like(decodeError(Buffer.from([3, 0x41, 0x42])), { ok: false });
  t.like(decodeError(Buffer.concat([encodeError({ code: 'A', where: 'B', reason: 'C' }), Buffer.from([1])])), { ok: false });
});

// ---- docs/uart_protocol.md ----------------------------------------------------------------------

const doc = readFileSync(new URL('../docs/uart_protocol.md', import.meta.url), 'utf8');

function documented(name: string): { raw: Buffer; wire: Buffer } {
  const block = new RegExp('```hex ' + name + '\\n([\\s\\S]*?)```').exec(doc);
  if (!block) throw new Error(`docs/uart_protocol.md has no \`\`\`hex ${name} block`);
  // A field may go on over indented lines.
  const line = (k: string): Buffer => Buffer.from(new RegExp(`^${k}\\s+(.*(?:\\n[ \\t]+.*)*)`, 'm').exec(block[1]!)![1]!.replace(/\s+/g, ''), 'hex');
  return { raw: line('raw'), wire: line('wire') };
}

/** Frame bytes laid out by hand from the doc's "Frame" table. */
function byHand(type: number, tag: number, seq: number, payload: number[]): Buffer {
  const head = [type, tag, (seq >>> 24) & 0xff, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff, (payload.length >> 8) & 0xff, payload.length & 0xff];
  const body = Buffer.from([...head, ...payload]);
  const c = crc32(body);
  return Buffer.concat([body, Buffer.from([(c >>> 24) & 0xff, (c >>> 16) & 0xff, (c >>> 8) & 0xff, c & 0xff])]);
}

const ascii = (s: string): number[] => [...Buffer.from(s, 'ascii')];
const u32 = (v: number): number[] => [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
const u16 = (v: number): number[] => [(v >> 8) & 0xff, v & 0xff];

// Version 2 examples (docs/uart_protocol.md, "Version 2 examples"): one image SHA-256 (bytes 0x00..0x1f) throughout.
const SHA = Array.from({ length: 32 }, (_, i) => i);
const SHA_HEX = Buffer.from(SHA).toString('hex');
/** IMAGE table: pid, crc32, sha256, n + app_name, v + version. */
const imageBlock = (pid: number, crc: number, name: string, version: string): number[] =>
  [...u32(pid), ...u32(crc), ...SHA, name.length, ...ascii(name), version.length, ...ascii(version)];
const OTHER_SHA = Array.from({ length: 32 }, () => 0xee);
const v2 = {
  // OPEN table: version 2, flags FORCE, chunk 8192, window 32, total 4096, crc32 0xdeadbeef, sha256, app name
  open: [2, 0x01, ...u16(8192), ...u16(32), ...u32(4096), ...u32(0xdeadbeef), ...SHA, 10, ...ascii('sensor_app')],
  // CURRENT: the IMAGE the device runs (pid 1, version 1.0.0)
  current: imageBlock(1, 0xdeadbeef, 'sensor_app', '1.0.0'),
  // RESULT table: UPDATED (2), confirm pending (1), slot 'B'; IMAGE of the new task (pid 2), IMAGE of the replaced one (pid 1, another SHA-256)
  result: [2, 0x01, 0x42, ...imageBlock(2, 0xdeadbeef, 'sensor_app', '1.1.0'),
    ...u32(1), ...u32(0x12345678), ...OTHER_SHA, 10, ...ascii('sensor_app'), 5, ...ascii('1.0.0')],
};

const examples: Array<{ name: string; raw: Buffer; expect: Frame }> = [
  { name: 'ack', raw: byHand(0x04, 0x2a, 16, []), expect: { type: FrameType.ACK, tag: 0x2a, seq: 16, payload: new Uint8Array(0) } },
  { name: 'data', raw: byHand(0x03, 0x2a, 1, [0x00, 0x11, 0x00]), expect: { type: FrameType.DATA, tag: 0x2a, seq: 1, payload: Uint8Array.from([0, 0x11, 0]) } },
  { name: 'nak', raw: byHand(0x05, 0x2a, 5, [0, 0, 0, 5, 0, 0, 0, 7]), expect: { type: FrameType.NAK, tag: 0x2a, seq: 5, payload: Uint8Array.from([0, 0, 0, 5, 0, 0, 0, 7]) } },
  // ACCEPT table: version 1, flags 0, chunk 4096, window 16, resume 8192
  { name: 'accept', raw: byHand(0x02, 0x2a, 0x01020304, [1, 0, 0x10, 0x00, 0x00, 0x10, 0, 0, 0x20, 0]), expect: { type: FrameType.ACCEPT, tag: 0x2a, seq: 0x01020304, payload: Uint8Array.from([1, 0, 0x10, 0, 0, 0x10, 0, 0, 0x20, 0]) } },
  // ERROR table: length-prefixed code, where, reason
  { name: 'open-v2', raw: byHand(0x01, 0x2a, 0x01020304, v2.open), expect: { type: FrameType.OPEN, tag: 0x2a, seq: 0x01020304, payload: Uint8Array.from(v2.open) } },
  { name: 'current', raw: byHand(0x0a, 0x2a, 0x01020304, v2.current), expect: { type: FrameType.CURRENT, tag: 0x2a, seq: 0x01020304, payload: Uint8Array.from(v2.current) } },
  { name: 'result-updated', raw: byHand(0x07, 0x2a, 1, v2.result), expect: { type: FrameType.RESULT, tag: 0x2a, seq: 1, payload: Uint8Array.from(v2.result) } },
  { name: 'error', raw: byHand(0x08, 0x2a, 0, [6, ...ascii('EEXIST'), 8, ...ascii('register'), 10, ...ascii('app_exists')]), expect: { type: FrameType.ERROR, tag: 0x2a, seq: 0, payload: Uint8Array.from([6, ...ascii('EEXIST'), 8, ...ascii('register'), 10, ...ascii('app_exists')]) } },
];

for (const ex of examples) {
  test(`docs/uart_protocol.md example "${ex.name}": the hand-built bytes match the doc, and decode`, (t) => {
    const d = documented(ex.name);
    t.deepEqual(ex.raw, d.raw, 'raw frame bytes as the tables lay them out');
    t.deepEqual(cobsEncodeWithDelimiter(ex.raw), d.wire, 'COBS + delimiter');
    t.is(d.wire[d.wire.length - 1], 0);
    const frame = decodeFrame(d.wire.subarray(0, -1));
    t.true(frame.ok);
    if (frame.ok) t.deepEqual({ ...frame.value, payload: Uint8Array.from(frame.value.payload) }, ex.expect);
  });
}

test('docs/uart_protocol.md examples decode to the documented message fields', (t) => {
  const accept = decodeFrame(documented('accept').wire.subarray(0, -1));
  t.true(accept.ok);
  if (accept.ok) t.deepEqual(decodeAccept(accept.value.payload), { ok: true, value: { version: 1, chunkSize: 4096, window: 16, resumeOffset: 8192 } });
  const error = decodeFrame(documented('error').wire.subarray(0, -1));
  if (error.ok) t.deepEqual(decodeError(error.value.payload), { ok: true, value: { code: 'EEXIST', where: 'register', reason: 'app_exists' } });
  const nak = decodeFrame(documented('nak').wire.subarray(0, -1));
  if (nak.ok) t.deepEqual(decodeMissing(nak.value.payload), { ok: true, value: [5, 7] });
});

test('docs/uart_protocol.md version 2 examples: the encoders build exactly the documented payloads, and the decoders read the fields back', (t) => {
  const open = { version: 2, chunkSize: 8192, window: 32, totalBytes: 4096, crc32: 0xdeadbeef, sha256: Uint8Array.from(SHA), appName: 'sensor_app', force: true };
  t.deepEqual([...encodeOpen(open)], v2.open, 'encodeOpen');
  const frame = (name: string): Uint8Array => {
    const f = decodeFrame(documented(name).wire.subarray(0, -1));
    if (!f.ok) throw new Error(`${name}: ${f.error.message}`);
    return f.value.payload;
  };
  t.deepEqual(decodeOpen(frame('open-v2')), { ok: true, value: open });

  const running: ImageInfo = { pid: 1, crc32: 0xdeadbeef, sha256: SHA_HEX, appName: 'sensor_app', version: '1.0.0' };
  t.deepEqual([...encodeCurrent(running)], v2.current, 'encodeCurrent');
  t.deepEqual(decodeCurrent(frame('current')), { ok: true, value: running });

  const result = {
    outcome: 'updated' as const, confirmPending: true, slot: 'B' as const,
    image: { pid: 2, crc32: 0xdeadbeef, sha256: SHA_HEX, appName: 'sensor_app', version: '1.1.0' },
    from: { pid: 1, crc32: 0x12345678, sha256: 'ee'.repeat(32), appName: 'sensor_app', version: '1.0.0' },
  };
  t.deepEqual([...encodeResult(result)], v2.result, 'encodeResult');
  t.deepEqual(decodeResult(frame('result-updated')), { ok: true, value: result });
});
