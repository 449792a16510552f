import test from 'ava';
import { readFileSync } from 'node:fs';
import {
  EventRecorder, Fram, ManualClock, ValueJournal, formatMemoryDevice, isPersistError, memoryBacking,
} from '../src/persist/index.js';

/** The value journal (val.persist) over FRAM: restore-over-init, reserved keys, corruption, schema changes, debounce. */
const F16 = { valueType: 'f16' };
const RECORD = 16;

function journal(framBytes?: Uint8Array) {
  const bytes = framBytes ?? formatMemoryDevice({ flashSize: 64 * 1024, statusSectors: 2, framSize: 8192 }).framBytes;
  const events = new EventRecorder();
  const clock = new ManualClock();
  const fram = Fram.attach(memoryBacking(bytes));
  const j = ValueJournal.open(fram, { events, clock, emitReadEvents: true });
  return { j, events, clock, bytes, fram };
}

test('reference scenario: a persisted value is restored over the init value (the HSX reference overwrote it)', async (t) => {
  const ref = JSON.parse(readFileSync(new URL('./fixtures/reference/persistence_scenario.json', import.meta.url), 'utf8')) as {
    observed: { store_key17_before_load: number; value_258_after_load_f16: number; store_file_after_set: Record<string, number> };
  };
  const { j, bytes } = journal();
  j.write(17, ref.observed.store_key17_before_load, F16);
  await j.flush();
  const reboot = journal(bytes);
  const init = 0x4a40; // 12.5, the declared init of value (1,2)
  const r = reboot.j.read(17, F16);
  t.deepEqual(r, { ok: true, raw: 20480 });
  t.not(r.ok && r.raw, ref.observed.value_258_after_load_f16, 'not the reference behaviour (init wins)');
  t.not(r.ok && r.raw, init);
  reboot.j.write(17, 0x4f80, F16); // SET 30.0
  await reboot.j.flush();
  t.deepEqual(journal(bytes).j.read(17, F16), { ok: true, raw: ref.observed.store_file_after_set['17'] });
});

test('keys 0x0000 and 0xFFFF are reserved; keys and raw values must be u16', (t) => {
  const { j } = journal();
  for (const key of [0, 0xffff]) {
    const e = t.throws(() => j.write(key, 1, F16));
    t.true(isPersistError(e) && e.code === 'EINVAL' && e.reason === 'reserved_key');
    t.throws(() => j.read(key, F16), { message: /reserved/ });
  }
  t.throws(() => j.write(0x10000, 1, F16), { message: /not a u16/ });
  t.throws(() => j.write(5, 0x10000, F16), { message: /raw 65536/ });
});

test('a missing key falls back with a value.defaulted event naming key and reason', (t) => {
  const { j, events } = journal();
  t.deepEqual(j.read(0x42, F16), { ok: false, reason: 'missing' });
  t.like(events.ofType('value.defaulted')[0]!, { phase: 'restore', data: { key: 0x42, reason: 'missing' } });
});

test('a corrupt record is reported for its key (and an unreadable one as a warning), other keys unaffected', async (t) => {
  const { j, bytes } = journal();
  j.write(0x30, 0x1234, F16);
  j.write(0x31, 0x5678, F16);
  j.write(0x32, 0x0001, F16);
  await j.flush();
  const info = j.bankInfo();
  const dataOffset = bytes.length - 8192;
  const firstRecord = dataOffset + j.layout.banks[info.bank] + 16;
  bytes[firstRecord + 2]! ^= 0x01; // raw of key 0x30: CRC fails, key still readable
  bytes[firstRecord + 2 * RECORD]! ^= 0xff; // key of 0x32 and its check both broken
  bytes[firstRecord + 2 * RECORD + 12]! ^= 0x0f;
  const r = journal(bytes);
  t.deepEqual(r.j.read(0x30, F16), { ok: false, reason: 'corrupt' });
  t.like(r.events.ofType('value.defaulted')[0]!, { data: { key: 0x30, reason: 'corrupt' } });
  t.deepEqual(r.j.read(0x31, F16), { ok: true, raw: 0x5678 });
  t.deepEqual(r.j.read(0x32, F16), { ok: false, reason: 'missing' });
  t.like(r.events.ofType('warning')[0]!, { data: { reason: 'journal_record_corrupt' } });
  // writing the key again heals it
  r.j.write(0x30, 0x4321, F16);
  await r.j.flush();
  t.deepEqual(journal(bytes).j.read(0x30, F16), { ok: true, raw: 0x4321 });
});

test('schema changes (type or range) are detected: init value is used until the value is written again', async (t) => {
  const { j, bytes, events } = journal();
  j.write(0x40, 0x3c00, { valueType: 'f16', min: 0, max: 10 } as { valueType: string });
  await j.flush();
  const r = journal(bytes);
  t.deepEqual(r.j.read(0x40, { valueType: 'f16', max: 10, min: 0 } as { valueType: string }), { ok: true, raw: 0x3c00 }, 'key order does not matter');
  t.deepEqual(r.j.read(0x40, { valueType: 'f16', min: 0, max: 20 } as { valueType: string }), { ok: false, reason: 'schema_changed' });
  t.deepEqual(r.j.read(0x40, { valueType: 'u8' }), { ok: false, reason: 'schema_changed' });
  t.like(r.events.ofType('value.defaulted')[0]!, { data: { key: 0x40, reason: 'schema_changed' } });
  r.j.write(0x40, 7, { valueType: 'u8' });
  await r.j.flush();
  t.deepEqual(journal(bytes).j.read(0x40, { valueType: 'u8' }), { ok: true, raw: 7 });
  t.is(events.events.length, 0);
});

test('debounced writes coalesce: one record per key per window, readable at once, durable after the window', async (t) => {
  const { j, bytes, clock } = journal();
  const used0 = j.bankInfo().usedBytes;
  for (let i = 1; i <= 10; i++) j.write(0x50, i, F16, 100);
  j.write(0x51, 99, F16, 500);
  t.deepEqual(j.read(0x50, F16), { ok: true, raw: 10 }, 'reads see the pending value');
  t.deepEqual(journal(bytes.slice()).j.read(0x50, F16), { ok: false, reason: 'missing' }, 'nothing written yet');
  clock.advance(99);
  t.is(j.bankInfo().usedBytes, used0);
  clock.advance(1);
  await j.flush(); // waits for the timer-started flush
  t.is(j.bankInfo().usedBytes, used0 + 2 * RECORD, 'ten writes of one key became one record (and the other key rode along)');
  t.deepEqual(journal(bytes.slice()).j.read(0x50, F16), { ok: true, raw: 10 });
  t.is(clock.pending(), 0);
});

test('a full bank is compacted into the other bank; every key survives; too many keys is refused', async (t) => {
  const { j, bytes } = journal();
  const keys = j.layout.maxKeys;
  for (let k = 1; k <= keys; k++) j.write(k, k * 3, F16);
  await j.flush();
  for (let round = 0; round < 10; round++) {
    for (let k = 1; k <= 20; k++) j.write(k, (k * 3 + round + 1) & 0xffff, F16);
    await j.flush();
  }
  t.true(j.bankInfo().generation > 1, 'at least one compaction happened');
  const r = journal(bytes);
  for (let k = 1; k <= keys; k++) {
    const want = k <= 20 ? (k * 3 + 10) & 0xffff : k * 3;
    t.deepEqual(r.j.read(k, F16), { ok: true, raw: want });
  }
  const e = t.throws(() => r.j.write(keys + 1, 1, F16));
  t.true(isPersistError(e) && e.code === 'ENOSPC' && e.reason === 'too_many_keys');
});
