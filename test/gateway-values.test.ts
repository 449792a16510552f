/**
 * The value rule (src/gateway/values.ts) on its own, as an MQTT `val.set` handler would call it:
 * a device, an oid, a value as received and the caller's auth level; typed errors naming the field.
 */
import test from 'ava';
import { FakeClock, InMemoryImageStore, InMemoryValueStore, ProvisioningEngine } from '../src/engine/index.js';
import { authLevelOf, deviceTarget, getValue, listValues, parseOid, parseValue, setValue, unitCode, VAL_STATUS, ValueError, type ValueTarget } from '../src/gateway/values.js';
import { fixture } from './control-harness.js';

function device(): { target: ValueTarget; flushes: () => number; store: InMemoryValueStore } {
  const store = new InMemoryValueStore();
  const engine = new ProvisioningEngine({ clock: new FakeClock(0), events: { emit: () => {} }, imageStore: new InMemoryImageStore(), valueStore: store });
  const r = engine.loadImage(fixture('t04b_value_cmd_help.hxe'), { source: 'test' });
  if (!r.ok) throw new Error(r.error.message);
  let n = 0;
  return { target: { kind: 'local', name: 'd', engine, flush: async () => void n++ }, flushes: () => n, store };
}

test('parseOid: numbers, decimal and hex strings, GROUP:ID; anything else is EINVAL:oid', (t) => {
  for (const [input, oid] of [[258, 258], ['258', 258], ['0x102', 258], ['1:2', 258], [' 2:1 ', 513]] as const) {
    const r = parseOid(input);
    t.deepEqual(r, { ok: true, value: oid }, String(input));
  }
  for (const input of [-1, 65536, 1.5, 'abc', '1:256', null, {}, true]) {
    const r = parseOid(input);
    t.false(r.ok, String(input));
    if (!r.ok) {
      t.true(r.error instanceof ValueError);
      t.is(r.error.error, 'EINVAL:oid');
      t.is(r.error.field, 'oid');
    }
  }
});

test('parseValue: finite numbers an f16 holds; NaN, ±Infinity, overflow and non-numbers are EINVAL:value', (t) => {
  t.deepEqual(parseValue(21.5), { ok: true, value: { raw: 19808, value: 21.5 } });
  t.deepEqual(parseValue('21.5'), { ok: true, value: { raw: 19808, value: 21.5 } });
  t.deepEqual(parseValue(true), { ok: true, value: { raw: 0x3c00, value: 1 } });
  t.deepEqual(parseValue(65504), { ok: true, value: { raw: 0x7bff, value: 65504 } });
  for (const input of [NaN, Infinity, -Infinity, 'nan', 'inf', '-Infinity', 70000, 'warm', '', [], null, undefined]) {
    const r = parseValue(input);
    t.false(r.ok, String(input));
    if (!r.ok) {
      t.is(r.error.error, 'EINVAL:value');
      t.is(r.error.field, 'value');
      t.is(r.error.status, null, 'malformed input is not a registry status');
    }
  }
});

test('authLevelOf: viewer PUBLIC, operator USER, admin ADMIN', (t) => {
  t.is(authLevelOf('viewer'), 0);
  t.is(authLevelOf(null), 0);
  t.is(authLevelOf('operator'), 1);
  t.is(authLevelOf('admin'), 2);
});

test('setValue: the rule, once — read-only, auth, range, unknown oid; PERSIST values are flushed before the answer', async (t) => {
  const { target, flushes, store } = device();
  const ro = await setValue(target, 259, 0, { auth: 2 });
  t.like(ro, { ok: false, error: { code: 'EPERM', reason: 'read_only', field: 'oid', status: VAL_STATUS.EPERM } });
  const auth = await setValue(target, 513, 5, { auth: authLevelOf('operator') });
  t.like(auth, { ok: false, error: { code: 'EPERM', reason: 'auth_level', status: VAL_STATUS.EPERM } });
  const range = await setValue(target, 258, -41, { auth: 2 });
  t.like(range, { ok: false, error: { code: 'EINVAL', reason: 'out_of_range', field: 'value', status: VAL_STATUS.EINVAL } });
  const missing = await setValue(target, 0x0909, 1, { auth: 2 });
  t.like(missing, { ok: false, error: { code: 'ENOENT', reason: 'unknown_oid', field: 'oid', status: VAL_STATUS.ENOENT } });
  if (!missing.ok) t.regex(missing.error.message, /device d has no value with oid 2313 \(group 9, id 9\)/);
  const nan = await setValue(target, 258, 'NaN', { auth: 2 });
  t.like(nan, { ok: false, error: { error: 'EINVAL:value', field: 'value' } });
  t.is(flushes(), 0, 'nothing refused reached the journal');

  const ok = await setValue(target, 258, 30, { auth: 0 });
  t.like(ok, { ok: true, value: { oid: 258, pid: 1, value: 30, persisted: true } });
  t.is(flushes(), 1, 'the PERSIST value was flushed');
  t.like(store.read(17, { valueType: 'f16[0xd100,0x57d0]' }), { ok: true, raw: 0x4f80 });
  const plain = await setValue(target, 513, 3, { auth: 2 });
  t.like(plain, { ok: true, value: { value: 3, persisted: false } });
  t.is(flushes(), 1, 'a value that is not PERSIST is not flushed');
  t.like(await getValue(target, 513), { ok: true, value: { value: 3, f16: 0x4200 } });
  const list = listValues(target, { group: 1 });
  t.deepEqual(list.ok ? list.value.map((v) => v.oid) : [], [258, 259]);
});

test('unitCode packs the unit\'s bytes little-endian, as the reference lists it', (t) => {
  t.is(unitCode('degC'), 1130849636);
  t.is(unitCode('rpm'), 7172210);
  t.is(unitCode(''), 0);
});

test('deviceTarget: a simulated device as the MQTT handler will pass it (engine + value journal flush)', async (t) => {
  const store = new InMemoryValueStore();
  const engine = new ProvisioningEngine({ clock: new FakeClock(0), events: { emit: () => {} }, imageStore: new InMemoryImageStore(), valueStore: store });
  t.true(engine.loadImage(fixture('t04b_value_cmd_help.hxe'), { source: 'test' }).ok);
  let flushed = 0;
  const target = deviceTarget({ name: 'node1', engine, storage: { valueStore: { flush: async () => void flushed++ } } });
  const r = await setValue(target, 258, '25', { auth: authLevelOf('operator') });
  t.like(r, { ok: true, value: { value: 25, persisted: true } });
  t.is(flushed, 1);
  const denied = await setValue(target, 513, 1, { auth: authLevelOf('viewer') });
  t.like(denied, { ok: false, error: { error: 'EPERM:auth_level', field: 'oid', status: 2 } });
});
