import test from 'ava';
import {
  EventRecorder, ManualClock, bootMemory, formatMemoryDevice, isPersistError, openStores, patternImage, testMeta,
  type DeviceGeometry,
} from '../src/persist/index.js';

/** The A/B image store: commit, confirm, rollback, boot policy, anti-downgrade, wear refusal. */
const GEOMETRY: Partial<DeviceGeometry> = { flashSize: 128 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 3, framSize: 8192 };
const SCHEMA = { valueType: 'f16' };

async function fresh(geometry: Partial<DeviceGeometry> = GEOMETRY) {
  const bytes = formatMemoryDevice(geometry);
  const events = new EventRecorder();
  const boot = async () => {
    const { flash, fram } = bootMemory(bytes.flashBytes, bytes.framBytes);
    return { ...(await openStores(flash, fram, events, { clock: new ManualClock(), emit: 'all' })), flash };
  };
  return { bytes, events, boot, ...(await boot()) };
}

test('commit writes the inactive slot, switches, alternates A/B and emits provisioning.persisted', async (t) => {
  const d = await fresh();
  t.is(d.imageStore.active(), null);
  const img1 = patternImage(1, 5000);
  t.deepEqual(await d.imageStore.commit(img1, testMeta('1.0', 1, { appName: 'blinky', source: 'uart:/dev/pts/3' }), 'permanent'), { slot: 'A', seq: 1 });
  const a = d.imageStore.active()!;
  t.deepEqual(a.image, img1);
  t.true(a.confirmed);
  t.is(a.meta.appName, 'blinky');
  t.is(a.meta.sha256.length, 64, 'the store fills in the image sha256');
  const r2 = await d.imageStore.commit(patternImage(2, 300), testMeta('2.0', 1), 'permanent');
  t.is(r2.slot, 'B');
  const r3 = await d.imageStore.commit(patternImage(3, 300), testMeta('3.0', 1), 'permanent');
  t.is(r3.slot, 'A');
  const persisted = d.events.ofType('provisioning.persisted');
  t.is(persisted.length, 3);
  t.like(persisted[0]!, { phase: 'persist', data: { slot: 'A', app_name: 'blinky', version: '1.0', image_len: 5000, mode: 'permanent' } });
  // survives a reboot
  const b = await d.boot();
  t.is(b.imageStore.active()?.meta.version, '3.0');
  t.deepEqual(b.imageStore.slots().map((s) => [s.slot, s.entry?.meta.version ?? null, s.active, s.rollbackTarget]),
    [['A', '3.0', true, false], ['B', '2.0', false, true]]);
  t.deepEqual(b.imageStore.audit(), []);
});

test('a test image reverts at the next boot unless confirmed; confirm makes it permanent', async (t) => {
  const d = await fresh();
  await d.imageStore.commit(patternImage(1, 1000), testMeta('1', 1), 'permanent');
  d.valueStore.write(0x20, 0x1111, SCHEMA);
  await d.imageStore.commit(patternImage(2, 1000), testMeta('2', 2), 'test');
  t.false(d.imageStore.active()!.confirmed);
  d.valueStore.write(0x20, 0x2222, SCHEMA); // the test image changes a value
  await d.valueStore.flush();

  const b = await d.boot(); // not confirmed
  t.is(b.imageStore.active()?.meta.version, '1');
  t.like(d.events.ofType('provisioning.rollback')[0]!, { phase: 'boot', data: { from: 'B', to: 'A', reason: 'test_not_confirmed', automatic: true } });
  t.deepEqual(b.valueStore.read(0x20, SCHEMA), { ok: true, raw: 0x1111 }, 'values return to the snapshot of the known-good image');
  t.is(b.imageStore.securityCounter(), 2, 'the security counter never moves back');

  await b.imageStore.commit(patternImage(3, 1000), testMeta('3', 3), 'test');
  await b.imageStore.confirm();
  const c = await d.boot();
  t.is(c.imageStore.active()?.meta.version, '3');
  t.true(c.imageStore.active()!.confirmed);
});

test('rollback on command returns to the previous image and its values; then nothing is left to roll back to', async (t) => {
  const d = await fresh();
  await d.imageStore.commit(patternImage(1, 1000), testMeta('1', 1), 'permanent');
  d.valueStore.write(0x20, 0x1111, SCHEMA);
  d.valueStore.write(0x21, 0x0001, SCHEMA);
  await d.imageStore.commit(patternImage(2, 1000), testMeta('2', 2), 'permanent');
  d.valueStore.write(0x20, 0x2222, SCHEMA);
  d.valueStore.write(0x22, 0x0003, SCHEMA); // a key only the new image knows
  const r = await d.imageStore.rollback('operator asked');
  t.is(r.slot, 'A');
  t.is(r.meta?.version, '1');
  t.like(d.events.ofType('provisioning.rollback')[0]!, { phase: 'persist', data: { from: 'B', to: 'A', reason: 'operator asked', automatic: false } });
  const b = await d.boot();
  t.is(b.imageStore.active()?.meta.version, '1');
  t.deepEqual(b.valueStore.read(0x20, SCHEMA), { ok: true, raw: 0x1111 });
  t.deepEqual(b.valueStore.read(0x21, SCHEMA), { ok: true, raw: 0x0001 });
  t.deepEqual(b.valueStore.read(0x22, SCHEMA), { ok: false, reason: 'missing' });
  const e = await t.throwsAsync(b.imageStore.rollback('again'));
  t.true(isPersistError(e) && e.code === 'ENOENT' && e.reason === 'no_previous_image');
  t.is(b.imageStore.securityCounter(), 2);
});

test('the security counter only moves forward, refuses downgrades, and survives reboots', async (t) => {
  const d = await fresh();
  await d.imageStore.commit(patternImage(1, 1000), testMeta('1', 5), 'permanent');
  const before = d.bytes.flashBytes.slice();
  const e = await t.throwsAsync(d.imageStore.commit(patternImage(2, 1000), testMeta('2', 4), 'permanent'));
  t.true(isPersistError(e) && e.code === 'EPERM' && e.reason === 'security_counter_downgrade');
  t.deepEqual(d.bytes.flashBytes, before, 'a refused commit writes nothing');
  await d.imageStore.commit(patternImage(3, 1000), testMeta('3', 5), 'permanent'); // equal is fine
  await d.imageStore.commit(patternImage(4, 1000), testMeta('4', 9), 'test');
  const b = await d.boot(); // test image reverts, counter stays
  t.is(b.imageStore.active()?.meta.version, '3');
  t.is(b.imageStore.securityCounter(), 9);
  await t.throwsAsync(b.imageStore.commit(patternImage(5, 1000), testMeta('5', 8), 'permanent'), { message: /below the device's 9/ });
});

test('an active image that fails verification at boot is rolled back, or dropped when nothing is left', async (t) => {
  const d = await fresh();
  await d.imageStore.commit(patternImage(1, 1000), testMeta('1', 1), 'permanent');
  await d.imageStore.commit(patternImage(2, 1000), testMeta('2', 1), 'permanent');
  const slotB = d.imageStore.slots()[1]!;
  const dataOffset = d.bytes.flashBytes.length - 128 * 1024;
  d.bytes.flashBytes[dataOffset + slotB.firstSector * 4096 + 10]! ^= 0x01; // bit rot in B
  const b = await d.boot();
  t.is(b.imageStore.active()?.meta.version, '1');
  t.like(d.events.ofType('provisioning.rollback').at(-1)!, { data: { reason: 'verify_failed', from: 'B', to: 'A' } });
  const slotA = b.imageStore.slots()[0]!;
  d.bytes.flashBytes[dataOffset + slotA.firstSector * 4096]! ^= 0x80;
  const c = await d.boot();
  t.is(c.imageStore.active(), null);
  t.like(d.events.ofType('provisioning.rollback').at(-1)!, { data: { reason: 'verify_failed', from: 'A', to: null } });
  t.deepEqual(c.imageStore.audit(), []);
});

test('refusals happen before any write: too large, bad sha256, long fields, empty image', async (t) => {
  const d = await fresh();
  const before = d.bytes.flashBytes.slice();
  const slotBytes = d.imageStore.slots()[0]!.bytes;
  const cases: [Uint8Array, ReturnType<typeof testMeta>, string, string][] = [
    [new Uint8Array(slotBytes + 1), testMeta('1', 1), 'ENOSPC', 'image_too_large'],
    [patternImage(1, 100), testMeta('1', 1, { sha256: '00'.repeat(32) }), 'EBADMSG', 'sha256_mismatch'],
    [patternImage(1, 100), testMeta('1', 1, { appName: 'x'.repeat(33) }), 'EINVAL', 'meta_field_too_long'],
    [new Uint8Array(0), testMeta('1', 1), 'EINVAL', 'empty_image'],
  ];
  for (const [img, meta, code, reason] of cases) {
    const e = await t.throwsAsync(d.imageStore.commit(img, meta, 'permanent'));
    t.true(isPersistError(e) && e.code === code && e.reason === reason, reason);
  }
  t.deepEqual(d.bytes.flashBytes, before);
  const e = await t.throwsAsync(d.imageStore.confirm());
  t.true(isPersistError(e) && e.reason === 'no_active_image');
});

test('wear: a commit that would erase a worn-out sector is refused with a clear error and changes nothing', async (t) => {
  const d = await fresh({ ...GEOMETRY, endurance: 6 });
  const warnings: unknown[] = [];
  (d.flash as unknown as { onWearWarning: (w: unknown) => void }).onWearWarning = (w) => warnings.push(w);
  let refused: unknown = null;
  let commits = 0;
  for (let i = 1; i <= 20 && !refused; i++) {
    try {
      await d.imageStore.commit(patternImage(i, 4000), testMeta(String(i), 1), 'permanent');
      commits++;
    } catch (e) {
      refused = e;
    }
  }
  t.true(isPersistError(refused) && refused.code === 'ENOSPC' && refused.reason === 'sector_worn_out');
  t.regex((refused as Error).message, /erased 6 times, its endurance is 6: refusing the commit/);
  t.is(commits, 12, 'each slot sector takes 6 erases, two slots alternate');
  t.true(warnings.length >= 2, 'wear warnings came first (80% of 6 = 5 erases)');
  const b = await d.boot();
  t.is(b.imageStore.active()?.meta.version, '12', 'the last good commit is intact');
  t.deepEqual(b.imageStore.audit(), []);
});

test('the status ring wraps over its sectors, spreading erases, and recovery finds the newest record', async (t) => {
  const d = await fresh();
  for (let i = 1; i <= 60; i++) await d.imageStore.commit(patternImage(i, 200), testMeta(String(i), i), 'permanent');
  const b = await d.boot();
  t.is(b.imageStore.active()?.meta.version, '60');
  const statusSectors = [1, 2, 3].map((s) => b.flash.eraseCount(s));
  t.true(statusSectors.every((c) => c >= 3), `every status sector took erases: ${statusSectors}`);
  t.true(Math.max(...statusSectors) - Math.min(...statusSectors) <= 1, `evenly: ${statusSectors}`);
  t.true(b.imageStore.statusHistory().length <= 3 * 8);
  t.is(b.imageStore.recovery.seq, b.imageStore.status().seq);
});

test('a torn status slot after the newest record is skipped, never programmed over', async (t) => {
  const d = await fresh();
  await d.imageStore.commit(patternImage(1, 300), testMeta('1', 1), 'permanent');
  // Garbage in the next record slot, as a torn write would leave it (status ring starts at sector 1).
  const dataOffset = d.bytes.flashBytes.length - 128 * 1024;
  d.bytes.flashBytes[dataOffset + 4096 + 512 + 3] = 0x00;
  const b = await d.boot();
  t.is(b.imageStore.recovery.tornRecords, 1);
  await b.imageStore.commit(patternImage(2, 300), testMeta('2', 1), 'permanent');
  const c = await d.boot();
  t.is(c.imageStore.active()?.meta.version, '2');
});

test('by default the store leaves operation events to the engine and emits only what it alone sees', async (t) => {
  const bytes = formatMemoryDevice(GEOMETRY);
  const events = new EventRecorder();
  const boot = async () => {
    const { flash, fram } = bootMemory(bytes.flashBytes, bytes.framBytes);
    return openStores(flash, fram, events, { clock: new ManualClock() });
  };
  const d = await boot();
  await d.imageStore.commit(patternImage(1, 500), testMeta('1', 1), 'permanent');
  await d.imageStore.commit(patternImage(2, 500), testMeta('2', 1), 'permanent');
  await d.imageStore.rollback('operator');
  t.deepEqual(d.valueStore.read(0x33, SCHEMA), { ok: false, reason: 'missing' });
  t.deepEqual(events.events, [], 'commit, commanded rollback and value reads: the engine reports those');
  await d.imageStore.commit(patternImage(3, 500), testMeta('3', 1), 'test');
  await boot();
  t.deepEqual(events.events.map((e) => [e.type, e.phase, e.data['reason']]), [['provisioning.rollback', 'boot', 'test_not_confirmed']]);
});
