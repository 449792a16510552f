/**
 * `DeviceIntake.loadEncoded` (issue 25): a whole compressed image or delta patch at once goes through
 * the stream path (open → write → finish), so it is decoded, checked (size, CRC-32, SHA-256 of the
 * decoded image) and installed exactly as one arriving over a link; a patch for another base or a
 * corrupted stream leaves the old image running with its values.
 */
import test from 'ava';
import { crc32 } from 'node:zlib';
import { CollectingEventSink, DeviceIntake, FakeClock, InMemoryImageStore, InMemoryValueStore, ProvisioningEngine } from '../src/engine/index.js';
import { compressImage, makePatch } from '../src/link/delta/index.js';
import { TEMP_OID, f16, sensorBuild, sha256Hex } from './update-images.js';

const V1 = sensorBuild(1, 2048);
const V2 = sensorBuild(2, 2048);

async function runningV1() {
  const clock = new FakeClock(1_000);
  const events = new CollectingEventSink(clock);
  const valueStore = new InMemoryValueStore();
  const engine = new ProvisioningEngine({ clock, events, imageStore: new InMemoryImageStore(), valueStore });
  const intake = new DeviceIntake({ engine, clock, events, confirmWindowMs: 1000 });
  const r = await intake.load(V1, { source: 'test' });
  if (!r.ok) throw new Error(JSON.stringify(r.error));
  if (!engine.setValue(TEMP_OID, f16(33.5)).ok) throw new Error('set');
  await valueStore.flush();
  return { engine, intake };
}
const announce = (image: Uint8Array) => ({ source: 'test', totalBytes: image.length, crc32: crc32(image), sha256: sha256Hex(image) });
const running = (engine: ProvisioningEngine): string[] => engine.ps().map((p) => p.sha256);

test('a whole patch and a whole compressed image install as a stream would; the same again is current', async (t) => {
  const d = await runningV1();
  const patch = makePatch(V1, V2, { windowBits: 11 }).bytes;
  const r = await d.intake.loadEncoded(patch, { ...announce(V2), encoding: { kind: 'patch' }, baseSha256: sha256Hex(V1) });
  t.true(r.ok, JSON.stringify(!r.ok && r.error));
  if (r.ok) t.like(r.value, { outcome: 'updated', from: { sha256: sha256Hex(V1) } });
  t.deepEqual(running(d.engine), [sha256Hex(V2)]);
  t.like(d.engine.getValue(TEMP_OID), { ok: true, value: { raw: f16(33.5) } });
  const again = await d.intake.loadEncoded(patch, { ...announce(V2), encoding: { kind: 'patch' }, baseSha256: sha256Hex(V1) });
  t.true(again.ok && again.value.outcome === 'current');
  const z = compressImage(V1);
  const back = await d.intake.loadEncoded(z.bytes, { ...announce(V1), encoding: { kind: 'deflate', windowBits: z.windowBits } });
  t.true(back.ok && back.value.outcome === 'updated', JSON.stringify(back));
  t.deepEqual(running(d.engine), [sha256Hex(V1)]);
});

test('a patch for another base, a corrupted stream and a raw "encoding" are refused with typed errors; v1 keeps running', async (t) => {
  const d = await runningV1();
  const patch = makePatch(V1, V2, { windowBits: 11 }).bytes;
  const other = await d.intake.loadEncoded(patch, { ...announce(V2), encoding: { kind: 'patch' }, baseSha256: sha256Hex(V2) });
  t.like(other, { ok: false, error: { code: 'EBADMSG', where: 'begin', reason: 'base_mismatch', detail: { field: 'baseSha256', expected: sha256Hex(V2), actual: sha256Hex(V1) } } });
  const bad = patch.slice();
  bad[bad.length - 5] = bad[bad.length - 5]! ^ 0xff;
  const corrupt = await d.intake.loadEncoded(bad, { ...announce(V2), encoding: { kind: 'patch' }, baseSha256: sha256Hex(V1) });
  t.false(corrupt.ok);
  if (!corrupt.ok) t.is(corrupt.error.code, 'EBADMSG', JSON.stringify(corrupt.error));
  const raw = await d.intake.loadEncoded(V2, { ...announce(V2), encoding: { kind: 'raw' } });
  t.like(raw, { ok: false, error: { code: 'EBADMSG', reason: 'encoding_required', detail: { field: 'encoding' } } });
  t.deepEqual(running(d.engine), [sha256Hex(V1)]);
  t.like(d.engine.getValue(TEMP_OID), { ok: true, value: { raw: f16(33.5) } });
  t.deepEqual(d.engine.sessions(), [], 'no session left open');
});
