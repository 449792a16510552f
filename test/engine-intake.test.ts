/**
 * The device-side intake (src/engine/intake.ts) on in-memory stores and a fake clock: install,
 * update with values carried, CURRENT, refusals that leave the old app running, confirm and
 * rollback. The same rules over real links and mapped flash are tested in the link and persist suites.
 */
import test from 'ava';
import { CollectingEventSink, DeviceIntake, FakeClock, InMemoryImageStore, InMemoryValueStore, ProvisioningEngine, StoreError, type EngineError } from '../src/engine/index.js';
import { encodeF16 } from '../src/hxe/index.js';
import type { Result } from '../src/hxe/result.js';
import { build, code } from './engine-harness.js';

const TEMP = { group: 1, id: 2, name: 'temperature', flags: 0x02, init: 12.5, min: -40, max: 125, persistKey: 17 };
const GAIN = { group: 1, id: 4, name: 'gain', flags: 0x02, init: 1, min: 0, max: 10, persistKey: 18 };

export function sensor(seed: number, values = [TEMP, GAIN], name = 'sensor_app'): Uint8Array {
  return build({ appName: name, allowMultipleInstances: false, code: code(4, seed), values });
}

function device(opts: { confirmWindowMs?: number } = {}) {
  const clock = new FakeClock(1_000);
  const sink = new CollectingEventSink(clock);
  const imageStore = new InMemoryImageStore();
  const valueStore = new InMemoryValueStore();
  const engine = new ProvisioningEngine({ clock, events: sink, imageStore, valueStore });
  const intake = new DeviceIntake({ engine, clock, events: sink, confirmWindowMs: opts.confirmWindowMs ?? 1000 });
  return { clock, sink, imageStore, valueStore, engine, intake };
}

function unwrap<T>(r: Result<T, EngineError>): T {
  if (!r.ok) throw new Error(`unexpected error: ${JSON.stringify(r.error)}`);
  return r.value;
}

async function streamed(intake: DeviceIntake, bytes: Uint8Array, sha?: string) {
  const { createHash } = await import('node:crypto');
  const opened = unwrap(intake.open({ source: 'can:test', totalBytes: bytes.length, sha256: sha ?? createHash('sha256').update(bytes).digest('hex') }));
  if (opened.kind === 'current') return { current: opened.running };
  for (let off = 0; off < bytes.length; off += 64) unwrap(intake.write(opened.id, off, bytes.subarray(off, off + 64)));
  return { verdict: await intake.finish(opened.id) };
}

test('install, then an update of the running app keeps its persisted value and is confirmed after the window', async (t) => {
  const d = device();
  const v1 = sensor(1);
  const v2 = sensor(2);
  for (const run of [1, 2]) {
    const r1 = await streamed(d.intake, v1);
    // the first run installs v1; the second finds it running already (the first run ended on v1)
    const first = run === 1 ? unwrap(r1.verdict!) : { outcome: 'current', task: { sha256: r1.current!.sha256 } };
    t.is(first.outcome, run === 1 ? 'installed' : 'current');
    const oid = (1 << 8) | 2;
    unwrap(d.engine.setValue(oid, encodeF16(33.5)));
    const upd = unwrap((await streamed(d.intake, v2)).verdict!);
    t.is(upd.outcome, 'updated');
    t.is(upd.from?.sha256, first.task.sha256);
    t.true(upd.confirmPending);
    t.is(d.engine.ps().length, 1);
    t.is(unwrap(d.engine.getValue(oid)).value, 33.5);
    t.truthy(d.sink.events.find((e) => e.type === 'value.migrated' && e.data['key'] === 17));
    t.truthy(d.sink.events.find((e) => e.type === 'provisioning.updated'));
    t.false(d.imageStore.active()!.confirmed);
    d.clock.advance(1000);
    await new Promise((r) => setImmediate(r));
    t.true(d.imageStore.active()!.confirmed);
    // the same image again: CURRENT, no bytes
    const again = await streamed(d.intake, v2);
    t.is(again.current?.sha256, upd.task.sha256);
    // back to v1 for the second run (an update too)
    unwrap((await streamed(d.intake, v1)).verdict!);
    d.clock.advance(1000);
    await new Promise((r) => setImmediate(r));
  }
});

test('a refused update leaves the old app running, registered and its slot untouched', async (t) => {
  const d = device();
  const v1 = sensor(1);
  unwrap((await streamed(d.intake, v1)).verdict!);
  const before = d.imageStore.active()!;
  // bytes that do not match the announced SHA-256
  const bad = await streamed(d.intake, sensor(2), '00'.repeat(32));
  t.false(bad.verdict!.ok);
  if (!bad.verdict!.ok) t.is(bad.verdict!.error.reason, 'sha256_mismatch');
  // a store that fails the commit
  d.imageStore.failNextCommit = new StoreError('ENOSPC', 'sector_worn_out', 'worn');
  const failed = await streamed(d.intake, sensor(3));
  t.false(failed.verdict!.ok);
  t.is(d.engine.ps().length, 1);
  t.is(d.engine.ps()[0]!.sha256, before.meta.sha256);
  t.is(d.imageStore.active()!.meta.sha256, before.meta.sha256);
  t.deepEqual(d.engine.resources().staged, 0);
  // an update that collides with another app
  const other = build({ appName: 'other', allowMultipleInstances: false, code: code(4, 9), values: [{ group: 1, id: 2, name: 'x' }, { group: 5, id: 1, name: 'y' }] });
  const foreign = unwrap((await streamed(d.intake, build({ appName: 'third', allowMultipleInstances: false, code: code(4, 7), values: [{ group: 5, id: 1, name: 'y' }] }))).verdict!);
  t.is(foreign.outcome, 'installed');
  const clash = await streamed(d.intake, other);
  t.false(clash.verdict!.ok);
  if (!clash.verdict!.ok) t.is(clash.verdict!.error.code, 'EEXIST');
});

test('rollback after an update: the old image with the old values', async (t) => {
  const d = device();
  const oid = (1 << 8) | 2;
  unwrap((await streamed(d.intake, sensor(1))).verdict!);
  unwrap(d.engine.setValue(oid, encodeF16(20)));
  unwrap((await streamed(d.intake, sensor(2))).verdict!);
  d.clock.advance(1000);
  await new Promise((r) => setImmediate(r));
  unwrap(d.engine.setValue(oid, encodeF16(99)));
  const rb = unwrap(await d.intake.rollback('operator'));
  t.is(rb.task?.sha256, (await import('node:crypto')).createHash('sha256').update(sensor(1)).digest('hex'));
  t.is(d.engine.ps().length, 1);
});
