/**
 * The device-side intake with compressed and delta transfers (issue 25), on in-memory stores: the
 * announce carries the encoding; the intake decodes through openTransferDecoder (a patch reads the
 * active slot), checks size, CRC-32 and SHA-256 of the decoded image, then admits, stages and switches
 * as for a raw image. Every bad input is a typed error naming the field and offset, and the old image
 * keeps running with its values.
 */
import test from 'ava';
import { deflateRawSync, crc32 } from 'node:zlib';
import { CollectingEventSink, DeviceIntake, FakeClock, InMemoryImageStore, InMemoryValueStore, ProvisioningEngine, type EngineError, type IntakeAnnounce } from '../src/engine/index.js';
import { encodePatchHeader, PATCH_HEADER_SIZE, PATCH_VERSION, putVarint, zigzag } from '../src/engine/codec/index.js';
import { compressImage, makePatch, sha256 } from '../src/link/delta/index.js';
import type { Result } from '../src/hxe/result.js';
import { TEMP_OID, f16, sensorBuild, sha256Hex } from './update-images.js';

const V1 = sensorBuild(1, 2048);
const V2 = (() => {
  const b = sensorBuild(1, 2048).slice();
  return b;
})();
// v2: v1's code with a few bytes changed (a real update: same values, other code)
const V2B = sensorBuild(2, 2048);
const BIG = sensorBuild(3, 4096);

function device() {
  const clock = new FakeClock(1_000);
  const sink = new CollectingEventSink(clock);
  const imageStore = new InMemoryImageStore();
  const valueStore = new InMemoryValueStore();
  const engine = new ProvisioningEngine({ clock, events: sink, imageStore, valueStore });
  const intake = new DeviceIntake({ engine, clock, events: sink, confirmWindowMs: 1000 });
  return { clock, sink, imageStore, valueStore, engine, intake };
}

function unwrap<T>(r: Result<T, EngineError>): T {
  if (!r.ok) throw new Error(`unexpected error: ${JSON.stringify(r.error)}`);
  return r.value;
}

type Enc = Pick<IntakeAnnounce, 'encoding' | 'streamBytes' | 'baseSha256'>;

/** Streams `stream` (encoded `image`) through the intake in `step`-byte writes; the first error, or the verdict. */
async function send(intake: DeviceIntake, image: Uint8Array, stream: Uint8Array, enc: Enc, step = 61) {
  const opened = intake.open({ source: 'test', totalBytes: image.length, crc32: crc32(image), sha256: sha256Hex(image), ...enc });
  if (!opened.ok) return { error: opened.error, at: 'open' as const };
  if (opened.value.kind === 'current') return { current: true };
  const id = opened.value.id;
  for (let off = 0; off < stream.length; off += step) {
    const w = intake.write(id, off, stream.subarray(off, off + step));
    if (!w.ok) return { error: w.error, at: 'write' as const };
  }
  const v = await intake.finish(id);
  return v.ok ? { verdict: v.value } : { error: v.error, at: 'finish' as const };
}

async function runningV1() {
  const d = device();
  unwrap(await d.intake.load(V1, { source: 'test' }));
  unwrap(d.engine.setValue(TEMP_OID, f16(33.5)));
  await d.valueStore.flush();
  await d.intake.confirmNow();
  return d;
}

function assertV1Runs(t: import('ava').ExecutionContext, d: Awaited<ReturnType<typeof runningV1>>, what: string): void {
  t.is(d.engine.ps().length, 1, `${what}: one task`);
  t.is(d.engine.ps()[0]!.sha256, sha256Hex(V1), `${what}: v1 still runs`);
  t.is(d.imageStore.active()!.meta.sha256, sha256Hex(V1), `${what}: v1 still the active slot`);
  t.is(unwrap(d.engine.getValue(TEMP_OID)).value, 33.5, `${what}: value kept`);
  t.deepEqual(d.engine.sessions(), [], `${what}: no session left`);
}

test('a delta patch v1 → v2 rebuilds from the active slot, is verified and switches with the values kept', async (t) => {
  const d = await runningV1();
  const patch = makePatch(V1, V2B, { windowBits: 11 });
  t.true(patch.bytes.length < compressImage(V2B).bytes.length, 'the patch is smaller than the compressed image');
  for (const step of [1000, 61]) {
    const r = await send(d.intake, V2B, patch.bytes, { encoding: { kind: 'patch' }, streamBytes: patch.bytes.length, baseSha256: sha256Hex(V1) }, step);
    if (step === 61) {
      t.true(r.current === true, 'the second announce of v2 is CURRENT');
      break;
    }
    t.is(r.verdict?.outcome, 'updated', JSON.stringify(r.error));
    t.is(r.verdict?.task.sha256, sha256Hex(V2B));
    t.is(d.imageStore.active()!.meta.sha256, sha256Hex(V2B));
    t.deepEqual(d.imageStore.active()!.image, V2B);
    t.is(unwrap(d.engine.getValue(TEMP_OID)).value, 33.5, 'TEMP carried by persist key');
  }
});

test('a compressed full image installs and updates; a raw announce still works', async (t) => {
  const d = device();
  const c = compressImage(V1);
  const r = await send(d.intake, V1, c.bytes, { encoding: { kind: 'deflate', windowBits: c.windowBits }, streamBytes: c.bytes.length });
  t.is(r.verdict?.outcome, 'installed', JSON.stringify(r.error));
  const r2 = await send(d.intake, BIG, BIG, {});
  t.is(r2.verdict?.outcome, 'updated', JSON.stringify(r2.error));
  t.deepEqual(d.imageStore.active()!.image, BIG);
});

test('a patch for another base is refused at the announce, naming both SHA-256; nothing moves', async (t) => {
  const d = await runningV1();
  const patch = makePatch(V2B, BIG);
  const r = await send(d.intake, BIG, patch.bytes, { encoding: { kind: 'patch' }, streamBytes: patch.bytes.length, baseSha256: sha256Hex(V2B) });
  t.is(r.at, 'open');
  t.is(r.error?.reason, 'base_mismatch');
  t.is(r.error?.code, 'EBADMSG');
  t.regex(r.error!.message, new RegExp(`${sha256Hex(V2B)}.*${sha256Hex(V1)}`));
  t.is((r.error?.detail as Record<string, unknown>)['field'], 'baseSha256');
  assertV1Runs(t, d, 'wrong base');
  // announcing the right base but sending a patch made for another one: the patch header says so
  const r2 = await send(d.intake, BIG, patch.bytes, { encoding: { kind: 'patch' }, streamBytes: patch.bytes.length, baseSha256: sha256Hex(V1) });
  t.is(r2.at, 'write');
  t.regex(r2.error!.reason, /base_(size_)?mismatch/);
  t.regex(r2.error!.message, /header\.base(Sha256|Size) at input offset/);
  assertV1Runs(t, d, 'header for another base');
});

test('bad streams: corrupt, truncated, longer than announced, copy beyond base, overflowing length — typed, located, old image runs', async (t) => {
  const d = await runningV1();
  const patch = makePatch(V1, V2B, { windowBits: 11 });
  const enc = (bytes: Uint8Array): Enc => ({ encoding: { kind: 'patch' }, streamBytes: bytes.length, baseSha256: sha256Hex(V1) });

  // a flipped byte in the body: a deflate error, or a rebuilt image whose SHA-256 is not v2's
  for (const at of [PATCH_HEADER_SIZE + 3, Math.floor(patch.bytes.length / 2), patch.bytes.length - 2]) {
    const bad = patch.bytes.slice();
    bad[at] = bad[at]! ^ 0x5a;
    const r = await send(d.intake, V2B, bad, enc(bad));
    t.truthy(r.error, `flip at ${at}`);
    t.true(typeof r.error!.reason === 'string' && r.error!.message.length > 0);
    if (r.at !== 'finish' || r.error!.reason !== 'sha256_mismatch') {
      t.truthy((r.error!.detail as Record<string, unknown> | undefined)?.['field'], `flip at ${at}: names a field (${r.error!.reason})`);
      t.is(typeof (r.error!.detail as Record<string, unknown>)['offset'], 'number');
    }
    assertV1Runs(t, d, `flip at ${at}`);
  }
  // a flipped header byte: the header CRC
  {
    const bad = patch.bytes.slice();
    bad[0x30] = bad[0x30]! ^ 1;
    const r = await send(d.intake, V2B, bad, enc(bad));
    t.is(r.error?.reason, 'bad_header');
    t.is((r.error!.detail as Record<string, unknown>)['field'], 'header.headerCrc');
    assertV1Runs(t, d, 'header crc');
  }
  // truncated: the stream announce says the whole length, fewer bytes come, then finish
  {
    const opened = unwrap(d.intake.open({ source: 'test', totalBytes: V2B.length, crc32: crc32(V2B), sha256: sha256Hex(V2B), ...enc(patch.bytes) }));
    t.is(opened.kind, 'receiving');
    const id = (opened as { id: number }).id;
    unwrap(d.intake.write(id, 0, patch.bytes.subarray(0, patch.bytes.length - 5)));
    const f = await d.intake.finish(id);
    t.false(f.ok);
    d.intake.abort(id, 'test');
    assertV1Runs(t, d, 'incomplete stream');
    // a stream that ends early although announced short: finish says truncated
    const short = patch.bytes.subarray(0, patch.bytes.length - 5);
    const r = await send(d.intake, V2B, short, enc(short));
    t.is(r.error?.reason, 'truncated');
    t.is(r.at, 'finish');
    assertV1Runs(t, d, 'truncated');
  }
  // more than announced
  {
    const longer = new Uint8Array(patch.bytes.length + 10);
    longer.set(patch.bytes);
    const r = await send(d.intake, V2B, longer, enc(patch.bytes));
    t.is(r.error?.reason, 'exceeds_total');
    t.is((r.error!.detail as Record<string, unknown>)['field'], 'stream');
    assertV1Runs(t, d, 'more than announced');
  }
  // hand-made patches: an add run past the end of the base, and a varint over 32 bits
  const handMade = (body: number[]): Uint8Array => {
    const z = new Uint8Array(deflateRawSync(Uint8Array.from(body), { windowBits: 11 }));
    const h = encodePatchHeader({ version: PATCH_VERSION, windowBits: 11, baseSize: V1.length, baseSha256: sha256(V1), targetSize: BIG.length, targetSha256: sha256(BIG), bodySize: body.length });
    const out = new Uint8Array(PATCH_HEADER_SIZE + z.length);
    out.set(h);
    out.set(z, PATCH_HEADER_SIZE);
    return out;
  };
  {
    const body: number[] = [];
    putVarint(body, V1.length + 8);
    putVarint(body, 0);
    putVarint(body, zigzag(0));
    for (let i = 0; i < V1.length + 8; i++) body.push(0);
    const p = handMade(body);
    const r = await send(d.intake, BIG, p, enc(p));
    t.is(r.error?.reason, 'copy_beyond_base');
    t.regex(String((r.error!.detail as Record<string, unknown>)['field']), /record\[0\]\.add/);
    assertV1Runs(t, d, 'copy beyond base');
  }
  {
    const body = [0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0];
    const p = handMade(body);
    const r = await send(d.intake, BIG, p, enc(p));
    t.is(r.error?.reason, 'length_overflow');
    t.is(r.error?.code, 'EBADMSG');
    assertV1Runs(t, d, 'overflowing length');
  }
  // a compressed stream whose decoded image does not match the announced SHA-256
  {
    const c = compressImage(V2B);
    const opened = d.intake.open({ source: 'test', totalBytes: V2B.length, crc32: crc32(V2B), sha256: sha256Hex(BIG), encoding: { kind: 'deflate', windowBits: c.windowBits }, streamBytes: c.bytes.length });
    const id = (unwrap(opened) as { id: number }).id;
    unwrap(d.intake.write(id, 0, c.bytes));
    const f = await d.intake.finish(id);
    t.false(f.ok);
    if (!f.ok) t.is(f.error.reason, 'sha256_mismatch');
    assertV1Runs(t, d, 'decoded sha mismatch');
  }
  // a stream size missing from the announce
  const bad = d.intake.open({ source: 'test', totalBytes: V2B.length, sha256: sha256Hex(V2B), encoding: { kind: 'deflate', windowBits: 12 } });
  t.false(bad.ok);
  if (!bad.ok) t.is(bad.error.reason, 'stream_size_invalid');
  t.deepEqual(V2, V1); // (the unchanged rebuild of v1 used above as a control)
});

test('a device that decodes nothing (codec: false) or no patches refuses those encodings at the announce', async (t) => {
  const clock = new FakeClock(1_000);
  const sink = new CollectingEventSink(clock);
  const engine = new ProvisioningEngine({ clock, events: sink, imageStore: new InMemoryImageStore(), valueStore: new InMemoryValueStore() });
  const rawOnly = new DeviceIntake({ engine, clock, events: sink, codec: false });
  t.is(rawOnly.codec, null);
  const c = compressImage(V1);
  const r = await send(rawOnly, V1, c.bytes, { encoding: { kind: 'deflate', windowBits: c.windowBits }, streamBytes: c.bytes.length });
  t.like(r.error, { code: 'EPERM', reason: 'encoding_unsupported', where: 'begin' });
  t.is((await send(rawOnly, V1, V1, {})).verdict?.outcome, 'installed', 'raw still works');
  const noPatch = new DeviceIntake({ engine, clock, events: sink, codec: { deflate: true, patch: false, maxWindowBits: 10, ramBytes: 2048 } });
  const p = makePatch(V1, V2B).bytes;
  t.like((await send(noPatch, V2B, p, { encoding: { kind: 'patch' }, streamBytes: p.length, baseSha256: sha256Hex(V1) })).error, { reason: 'encoding_unsupported' });
  t.like((await send(noPatch, V2B, c.bytes, { encoding: { kind: 'deflate', windowBits: 12 }, streamBytes: c.bytes.length })).error, { reason: 'encoding_unsupported' }, 'a window above its own');
  t.deepEqual(engine.sessions(), []);
});
