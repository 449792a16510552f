/**
 * The receive-side splitter/decoder (frame-reader.ts), in process: for any byte stream (frames,
 * line noise, idle delimiters) cut into reads at any points, it delivers exactly the frames — and
 * counts exactly the drops — of the reference path: @serialport/parser-delimiter splits the same
 * reads at 0x00, then decodeFrame decodes each block.
 * Also: delivered payloads stay intact while later frames arrive (the partial store keeps them).
 */
import test from 'ava';
import fc from 'fast-check';
import { FrameType, decodeFrame, encodeFrame, encodeFrameInto, wireBytesForPayload, type Frame, type FrameDropReason, type FrameTypeValue } from '../src/link/uart/frame.js';
import { CobsFrameReader } from '../src/link/uart/frame-reader.js';
import { DelimiterParser } from '@serialport/parser-delimiter';

const types = Object.values(FrameType) as FrameTypeValue[];
const arbFrame = fc.record({
  type: fc.constantFrom(...types),
  tag: fc.integer({ min: 0, max: 255 }),
  seq: fc.integer({ min: 0, max: 0xffffffff }),
  payload: fc.oneof(fc.uint8Array({ maxLength: 700 }), fc.uint8Array({ maxLength: 700, min: 0, max: 2 })),
});
/** A piece of the stream: a frame's wire bytes (maybe damaged), raw noise, or idle delimiters. */
const arbPiece = fc.oneof(
  { weight: 5, arbitrary: fc.record({ frame: arbFrame, flip: fc.option(fc.nat(), { freq: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ noise: fc.uint8Array({ minLength: 1, maxLength: 40 }) }) },
  { weight: 1, arbitrary: fc.record({ zeros: fc.integer({ min: 1, max: 3 }) }) },
);

type Out = { frames: Frame[]; drops: FrameDropReason[] };

/** Read boundaries: sorted, distinct offsets inside the stream. */
function readPoints(stream: Buffer, cuts: number[]): number[] {
  return [...[...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b), stream.length];
}

/** The reference: serialport's delimiter parser cuts the reads into blocks, decodeFrame judges each. */
async function reference(stream: Buffer, cuts: number[], maxPayload: number): Promise<Out> {
  const out: Out = { frames: [], drops: [] };
  const parser = new DelimiterParser({ delimiter: [0] });
  parser.on('data', (block: Buffer) => {
    if (block.length === 0) return; // back-to-back delimiters: idle, not a frame
    const d = decodeFrame(block, maxPayload);
    if (d.ok) out.frames.push(d.value);
    else out.drops.push(d.error.reason);
  });
  let from = 0;
  for (const p of readPoints(stream, cuts)) {
    if (p > from) parser.write(Buffer.from(stream.subarray(from, p)));
    from = Math.max(from, p);
  }
  // The parser hands blocks on asynchronously. A trailing partial block (no delimiter yet) stays in
  // it, as in the frame reader: the parser is never ended, so it is not flushed as a block.
  await new Promise((resolve) => setImmediate(resolve));
  return out;
}

/**
 * Feeds the reader the reads a port would make. `direct`: like the port with setReadTarget, each read
 * lands in the reader's own slab when it offers room (a read larger than the room is cut, as read(2)
 * would), so the reader un-stuffs in place; otherwise a fresh buffer per read.
 */
function viaReader(stream: Buffer, cuts: number[], maxPayload: number, direct = false): Out {
  const out: Out = { frames: [], drops: [] };
  const reader = new CobsFrameReader(maxPayload, { frame: (f) => out.frames.push(f), drop: (r) => out.drops.push(r) });
  let from = 0;
  for (const p of readPoints(stream, cuts)) {
    while (p > from) {
      const target = direct ? reader.readTarget() : null;
      const n = target ? Math.min(target.length, p - from) : p - from;
      const chunk = target ? target.subarray(0, n) : Buffer.allocUnsafe(n);
      stream.copy(chunk, 0, from, from + n);
      reader.push(chunk);
      from += n;
    }
  }
  return out;
}

const same = (a: Frame, b: Frame): boolean =>
  a.type === b.type && a.tag === b.tag && a.seq === b.seq && Buffer.from(a.payload).equals(Buffer.from(b.payload));

test('any stream, any read boundaries, read into the slab or not: the same frames and drops as parser-delimiter then decode', async (t) => {
  let frames = 0;
  let drops = 0;
  await fc.assert(fc.asyncProperty(fc.array(arbPiece, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }), fc.constantFrom(64, 300, 1000), async (pieces, cuts, maxPayload) => {
    const parts: Buffer[] = [];
    for (const p of pieces) {
      if ('frame' in p) {
        const wire = Buffer.from(encodeFrame(p.frame));
        if (p.flip !== null) {
          const at = p.flip % wire.length;
          wire[at] = wire[at]! ^ (1 << (p.flip % 8));
        }
        parts.push(wire);
      } else if ('noise' in p) parts.push(Buffer.from(p.noise));
      else parts.push(Buffer.alloc(p.zeros));
    }
    const stream = Buffer.concat(parts);
    const want = await reference(stream, cuts, maxPayload);
    // A trailing partial frame (no delimiter yet) is held by both: neither delivers it.
    frames += want.frames.length;
    drops += want.drops.length;
    return [false, true].every((direct) => {
      const got = viaReader(stream, cuts, maxPayload, direct);
      return got.frames.length === want.frames.length && got.frames.every((f, i) => same(f, want.frames[i]!))
        && got.drops.length === want.drops.length && got.drops.every((r, i) => r === want.drops[i]);
    });
  }), { numRuns: 400 });
  t.log(`compared ${frames} delivered frames and ${drops} dropped blocks`);
  t.true(frames > 100 && drops > 20, 'the generator produced both good and bad frames');
});

test('a payload delivered earlier is not overwritten by the frames after it, nor by reads into the slab', (t) => {
  const sent: Frame[] = [];
  for (let seq = 0; seq < 400; seq++) { // several slabs' worth
    const payload = Buffer.alloc(4096, seq & 0xff);
    payload[0] = 0; // a zero in every payload: COBS has to restore it
    sent.push({ type: FrameType.DATA, tag: 7, seq, payload });
  }
  const stream = Buffer.concat(sent.map((f) => encodeFrame(f)));
  for (const direct of [false, true]) {
    const kept: Frame[] = [];
    const reader = new CobsFrameReader(4096, { frame: (f) => kept.push(f), drop: () => t.fail('no frame should drop') });
    // Reads of 3001 bytes: most frames span two or three of them.
    for (let from = 0; from < stream.length;) {
      const target = direct ? reader.readTarget() : null;
      const n = Math.min(3001, stream.length - from, target?.length ?? Infinity);
      const chunk = target ? target.subarray(0, n) : Buffer.allocUnsafe(n);
      stream.copy(chunk, 0, from, from + n);
      reader.push(chunk);
      from += n;
    }
    t.is(kept.length, sent.length, direct ? 'direct' : 'copied');
    t.true(kept.every((f, i) => same(f, sent[i]!)), direct ? 'direct' : 'copied');
  }
});

test('a frame longer than the limit is dropped as too_long and the next one still arrives', (t) => {
  const out: Out = { frames: [], drops: [] };
  const reader = new CobsFrameReader(100, { frame: (f) => out.frames.push(f), drop: (r) => out.drops.push(r) });
  const big: Frame = { type: FrameType.DATA, tag: 1, seq: 1, payload: Buffer.alloc(101, 5) };
  const ok: Frame = { type: FrameType.ACK, tag: 1, seq: 2, payload: new Uint8Array(0) };
  reader.push(Buffer.concat([encodeFrame(big), encodeFrame(ok)]));
  t.deepEqual(out.drops, ['too_long']);
  t.is(out.frames.length, 1);
  t.true(same(out.frames[0]!, ok));
});

test('encodeFrameInto writes the same bytes as encodeFrame, back to back', (t) => {
  fc.assert(fc.property(fc.array(arbFrame, { minLength: 1, maxLength: 6 }), (frames) => {
    const out = Buffer.alloc(frames.reduce((n, f) => n + wireBytesForPayload(f.payload.length), 0));
    let at = 0;
    for (const f of frames) at = encodeFrameInto(f, out, at);
    return out.subarray(0, at).equals(Buffer.concat(frames.map((f) => encodeFrame(f))));
  }), { numRuns: 200 });
  t.pass();
});
