/**
 * Unit tests of the engine's modules: config validation, clocks, the state machine, the VM loader
 * model, the registries, the app-name policy, the gates and the in-memory stores.
 */
import test from 'ava';
import {
  ARENA_KINDS, CollectingEventSink, EngineConfigValidationError, FakeClock, InMemoryImageStore, InMemoryValueStore,
  InProcessVmLoader, LoadStateMachine, MetadataRegistry, ProvisioningEngine, TRANSITIONS, assignInstanceName, canTransition,
  capabilityGate, checkBudgets, engineConfigSchema, fallbackAppName, oidOf, systemClock, trimUtf8, validateEngineConfig,
  valueSchemaOf, type ImageMeta, type LoadState, type StateChange,
} from '../src/engine/index.js';
import { parseImage, f16FromRaw, type HxeImage } from '../src/hxe/index.js';
import { StreamSession } from '../src/engine/session.js';
import { build, code, fixture } from './engine-harness.js';

// ───────────── config ─────────────

test('config: defaults are the HSX desktop profile', (t) => {
  const r = validateEngineConfig({});
  t.true(r.ok);
  if (!r.ok) return;
  t.is(r.value.registry.maxValues, 256);
  t.is(r.value.registry.maxCommands, 256);
  t.is(r.value.registry.stringTableBytes, 4096);
  t.is(r.value.registry.maxMailboxes, 256);
  t.is(r.value.registry.maxNameBytes, 32);
  t.is(r.value.maxAppNameBytes, 31);
  t.is(r.value.imageLimits.code, 0x10000);
});

test('config: a bad value is an error naming the key', (t) => {
  const bad = validateEngineConfig({ writeTimeoutMs: -1 });
  t.false(bad.ok);
  if (!bad.ok) {
    t.is(bad.error.key, 'writeTimeoutMs');
    t.regex(bad.error.message, /writeTimeoutMs/);
  }
  const nested = validateEngineConfig({ arenas: { code: 'big' } });
  t.false(nested.ok);
  if (!nested.ok) t.is(nested.error.key, 'arenas.code');
  const unknown = validateEngineConfig({ registry: { maxValuez: 3 } });
  t.false(unknown.ok);
  if (!unknown.ok) {
    t.is(unknown.error.key, 'registry.maxValuez');
    t.regex(unknown.error.problems[0]!, /unknown key/);
  }
});

test('config: the engine constructor refuses a bad config with the key', (t) => {
  const e = t.throws(() => new ProvisioningEngine({ clock: new FakeClock(), events: new CollectingEventSink(), config: { maxChunkBytes: 0 } }),
    { instanceOf: EngineConfigValidationError });
  t.is(e?.key, 'maxChunkBytes');
});

test('config: the schema is exported for the gateway', (t) => {
  t.true(engineConfigSchema.safeParse({ maxSessions: 10 }).success);
});

// ───────────── clocks ─────────────

test('FakeClock fires due timers in order, each at its due time, and honours timers set while firing', (t) => {
  const c = new FakeClock(100);
  const log: string[] = [];
  c.setTimeout(() => log.push(`b@${c.now()}`), 20);
  c.setTimeout(() => {
    log.push(`a@${c.now()}`);
    c.setTimeout(() => log.push(`c@${c.now()}`), 5);
  }, 10);
  const gone = c.setTimeout(() => log.push('never'), 15);
  c.setTimeout(() => log.push(`tie1@${c.now()}`), 20);
  c.clearTimeout(gone);
  t.is(c.pendingTimers(), 3);
  c.advance(9);
  t.deepEqual(log, []);
  c.advance(30);
  t.deepEqual(log, ['a@110', 'c@115', 'b@120', 'tie1@120']);
  t.is(c.now(), 139);
  t.is(c.pendingTimers(), 0);
  t.throws(() => c.advance(-1));
});

test('systemClock is monotonic and its timers fire', async (t) => {
  const a = systemClock.now();
  const b = systemClock.now();
  t.true(b >= a);
  t.true(Math.abs(a - Date.now()) < 5_000);
  await new Promise<void>((resolve) => systemClock.setTimeout(resolve, 1));
  const h = systemClock.setTimeout(() => t.fail('cleared timer fired'), 1);
  systemClock.clearTimeout(h);
  await new Promise((r) => setTimeout(r, 5));
  t.pass();
});

test('CollectingEventSink numbers events and stamps them from the clock', (t) => {
  const c = new FakeClock(5);
  const s = new CollectingEventSink(c);
  s.emit({ type: 'provisioning.started', pid: 1, phase: 'begin', data: {} });
  c.advance(3);
  s.emit({ type: 'provisioning.complete', pid: 1, phase: 'end', data: {} });
  t.deepEqual(s.events.map((e) => [e.seq, e.ts, e.type]), [[1, 0.005, 'provisioning.started'], [2, 0.008, 'provisioning.complete']]);
  t.is(s.ofType('provisioning.complete').length, 1);
  t.is(s.forPid(1).length, 2);
});

// ───────────── state machine ─────────────

test('state machine: exactly the design transitions are allowed, every other is refused', (t) => {
  const states: LoadState[] = ['IDLE', 'LOADING', 'VERIFY', 'READY', 'FAILED', 'ABORTING'];
  const allowed = new Set(['IDLE>LOADING', 'LOADING>VERIFY', 'LOADING>FAILED', 'LOADING>ABORTING', 'VERIFY>READY', 'VERIFY>FAILED',
    'READY>IDLE', 'FAILED>ABORTING', 'ABORTING>IDLE']);
  let count = 0;
  for (const from of states) {
    for (const to of states) {
      t.is(canTransition(from, to), allowed.has(`${from}>${to}`), `${from} → ${to}`);
      count++;
    }
  }
  t.is(count, 36);
  t.is(Object.values(TRANSITIONS).flat().length, allowed.size);
});

test('state machine: callbacks on every change; an invalid transition is an error and changes nothing', (t) => {
  const seen: StateChange[] = [];
  const sm = new LoadStateMachine(7, (c) => seen.push(c));
  t.true(sm.transition('LOADING', 'begin').ok);
  const bad = sm.transition('READY', 'skip verify');
  t.false(bad.ok);
  if (!bad.ok) t.deepEqual(bad.error, { from: 'LOADING', to: 'READY' });
  t.is(sm.state, 'LOADING');
  t.true(sm.transition('VERIFY', 'end').ok);
  t.deepEqual(seen.map((c) => `${c.pid}:${c.from}>${c.to}:${c.reason}`), ['7:IDLE>LOADING:begin', '7:LOADING>VERIFY:end']);
});

// ───────────── VM loader model ─────────────

const stripped = (codeLen: number, roLen: number, bss: number) => ({ entry: 0, code: new Uint8Array(codeLen), rodata: new Uint8Array(roLen), bssSize: bss });

test('VM: PIDs count up, arenas are allocated first-fit, release frees everything', (t) => {
  const vm = new InProcessVmLoader({ arenas: { code: 100, rodata: 100, data: 100, stack: 100 }, maxTasks: 8 });
  const p1 = vm.reservePid();
  const p2 = vm.reservePid();
  t.deepEqual([p1.ok && p1.value, p2.ok && p2.value], [1, 2]);
  const a = vm.load(1, stripped(40, 10, 20), 30);
  t.true(a.ok);
  if (a.ok) t.deepEqual(a.value.arenas.code, { base: 0, size: 40 });
  const b = vm.load(2, stripped(40, 10, 20), 30);
  if (b.ok) t.deepEqual(b.value.arenas.code, { base: 40, size: 40 });
  t.is(vm.usage().arenas.code.used, 80);
  t.true(vm.release(1).ok);
  t.is(vm.usage().arenas.code.used, 40);
  // the freed hole at 0 is reused
  const p3 = vm.reservePid();
  t.true(p3.ok && p3.value === 3);
  const c = vm.load(3, stripped(40, 0, 0), 0);
  if (c.ok) t.deepEqual(c.value.arenas.code, { base: 0, size: 40 });
  t.deepEqual(vm.tasks().map((x) => x.pid).sort(), [2, 3]);
});

test('VM: ENOSPC when an arena does not fit, and nothing of that load stays allocated', (t) => {
  const vm = new InProcessVmLoader({ arenas: { code: 100, rodata: 100, data: 100, stack: 50 }, maxTasks: 8 });
  for (const kind of ARENA_KINDS) {
    const pid = vm.reservePid();
    if (!pid.ok) return t.fail();
    const wants = { code: 1, rodata: 1, data: 1, stack: 1, [kind]: 101 };
    const r = vm.load(pid.value, stripped(wants.code, wants.rodata, wants.data), wants.stack);
    t.false(r.ok, kind);
    if (!r.ok) {
      t.is(r.error.code, 'ENOSPC');
      t.is(r.error.detail?.['arena'], kind);
      t.is(r.error.detail?.['required'], 101);
    }
    const u = vm.usage();
    t.deepEqual(ARENA_KINDS.map((k) => u.arenas[k].used), [0, 0, 0, 0], `${kind}: nothing left allocated`);
    t.true(vm.release(pid.value).ok);
  }
  t.is(vm.usage().pids, 0);
});

test('VM: ESRCH for an unknown PID, ENOSPC when the task table is full, PIDs wrap skipping those in use', (t) => {
  const vm = new InProcessVmLoader({ arenas: { code: 10, rodata: 10, data: 10, stack: 10 }, maxTasks: 2, maxPid: 3 });
  const r = vm.release(42);
  t.false(r.ok);
  if (!r.ok) t.is(r.error.code, 'ESRCH');
  t.false(vm.load(42, stripped(0, 0, 0), 0).ok);
  t.true(vm.reservePid().ok); // 1
  t.true(vm.reservePid().ok); // 2
  const full = vm.reservePid();
  t.false(full.ok);
  if (!full.ok) t.is(full.error.code, 'ENOSPC');
  vm.release(1);
  const p3 = vm.reservePid();
  t.true(p3.ok && p3.value === 3);
  vm.release(3);
  const wrapped = vm.reservePid(); // wraps past 3 to 1 (2 is in use)
  t.true(wrapped.ok && wrapped.value === 1);
});

// ───────────── registries ─────────────

function parsed(bytes: Uint8Array): HxeImage {
  const r = parseImage(bytes);
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}

const limits = { maxValues: 256, maxCommands: 256, stringTableBytes: 4096, maxMailboxes: 256, maxNameBytes: 32 };

test('registry: values, commands and mailboxes keep what the design says', (t) => {
  const reg = new MetadataRegistry(limits);
  const img = parsed(fixture('t04b_value_cmd_help.hxe'));
  const r = reg.register(1, img);
  t.true(r.ok);
  const temp = reg.value(oidOf(1, 2))!;
  t.is(temp.raw, 19008); // init 12.5
  t.is(temp.persistKey, 17);
  t.true(temp.persisted);
  t.is(temp.unit, 'degC');
  t.is(temp.min.value, -40);
  const cmd = reg.command(oidOf(1, 7))!;
  t.is(cmd.handlerOffset, 8);
  t.true(cmd.pinned);
  t.false(cmd.async);
  t.true(reg.command(oidOf(1, 8))!.async);
  const mbx = new MetadataRegistry(limits);
  mbx.register(2, parsed(fixture('t05_mailbox_json.hxe')));
  t.deepEqual(mbx.mailboxesOf(2).map((m) => [m.target, m.capacity, m.mode]),
    [['app:telemetry', 96, 19], ['pid:7', 64, 3], ['shared:metrics', 192, 19], ['svc:log', 64, 7]]);
});

test('registry: a non-zero persist key implies PERSIST', (t) => {
  const reg = new MetadataRegistry(limits);
  reg.register(1, parsed(build({ code: code(1), values: [{ group: 3, id: 1, flags: 0, persistKey: 9 }, { group: 3, id: 2, flags: 0 }] })));
  t.true(reg.value(oidOf(3, 1))!.persisted);
  t.is(reg.value(oidOf(3, 1))!.flags & 0x02, 0x02);
  t.false(reg.value(oidOf(3, 2))!.persisted);
});

test('registry: all-or-nothing — a conflict late in the load registers nothing', (t) => {
  const reg = new MetadataRegistry(limits);
  t.true(reg.register(1, parsed(build({ code: code(1), commands: [{ group: 1, id: 7, name: 'reset' }] }))).ok);
  const before = reg.counts();
  const r = reg.register(2, parsed(build({
    code: code(1), values: [{ group: 9, id: 9, name: 'fresh' }], commands: [{ group: 1, id: 7, name: 'clash' }],
    mailboxes: [{ target: 'app:x' }],
  })));
  t.false(r.ok);
  if (!r.ok) {
    t.is(r.error.code, 'EEXIST');
    t.is(r.error.reason, 'command_exists');
    t.is(r.error.detail?.['ownerPid'], 1);
  }
  t.deepEqual(reg.counts(), before);
  t.is(reg.value(oidOf(9, 9)), undefined);
  t.deepEqual(reg.owners(), [1]);
});

test('registry: limits (count, string table, name length) are checked before anything is applied', (t) => {
  const small = new MetadataRegistry({ ...limits, maxValues: 2, stringTableBytes: 12, maxNameBytes: 8 });
  const tooMany = small.register(1, parsed(build({ code: code(1), values: [{ group: 1, id: 1 }, { group: 1, id: 2 }, { group: 1, id: 3 }] })));
  t.false(tooMany.ok);
  if (!tooMany.ok) t.deepEqual([tooMany.error.code, tooMany.error.reason, tooMany.error.detail?.['limit']], ['ENOSPC', 'values_full', 2]);
  const longName = small.register(1, parsed(build({ code: code(1), values: [{ group: 1, id: 1, name: 'much_too_long' }] })));
  t.false(longName.ok);
  if (!longName.ok) t.deepEqual([longName.error.code, longName.error.reason, longName.error.detail?.['bytes']], ['EBADMSG', 'name_too_long', 13]);
  const strings = small.register(1, parsed(build({ code: code(1), values: [{ group: 1, id: 1, name: 'abcdefg', unit: 'hijklmn' }] })));
  t.false(strings.ok);
  if (!strings.ok) t.deepEqual([strings.error.reason, strings.error.detail?.['requested']], ['string_table_full', 16]);
  t.deepEqual(small.counts(), { values: 0, commands: 0, mailboxes: 0, stringBytes: 0 });
  const mbx = new MetadataRegistry({ ...limits, maxMailboxes: 1 });
  const m = mbx.register(1, parsed(build({ code: code(1), mailboxes: [{ target: 'app:a' }, { target: 'app:b' }] })));
  t.false(m.ok);
  if (!m.ok) t.is(m.error.reason, 'mailboxes_full');
});

test('registry: release removes every entry of a PID and frees its string bytes', (t) => {
  const reg = new MetadataRegistry(limits);
  reg.register(1, parsed(fixture('t09_stdlib_plus_pragmas.hxe')));
  t.true(reg.counts().values > 0 && reg.counts().stringBytes > 0);
  t.is(reg.release(1), 5 + 3 + 3);
  t.deepEqual(reg.counts(), { values: 0, commands: 0, mailboxes: 0, stringBytes: 0 });
  t.is(reg.release(1), 0);
});

test('registry: value schema names the type and the declared range', (t) => {
  t.deepEqual(valueSchemaOf({ flags: 0x10, min: f16FromRaw(0), max: f16FromRaw(0x3c00) }), { valueType: 'bool[0x0000,0x3c00]' });
  t.deepEqual(valueSchemaOf({ flags: 0, min: f16FromRaw(0xd100), max: f16FromRaw(0x57d0) }), { valueType: 'f16[0xd100,0x57d0]' });
});

// ───────────── app-name policy ─────────────

test('naming: trimUtf8 never splits a character', (t) => {
  t.is(trimUtf8('abcdef', 4), 'abcd');
  t.is(trimUtf8('aé€', 4), 'aé');
  t.is(trimUtf8('aé€', 6), 'aé€');
});

test('naming: bare name, then _#N with the base trimmed to fit 31 bytes', (t) => {
  const taken = new Set<string>();
  const take = (base: string, multi: boolean) => {
    const n = assignInstanceName(base, multi, (x) => taken.has(x), 31);
    if (n) taken.add(n.appName);
    return n?.appName ?? null;
  };
  const x32 = 'X'.repeat(32);
  t.deepEqual([take(x32, true), take(x32, true), take(x32, true)],
    ['X'.repeat(31), 'X'.repeat(28) + '_#0', 'X'.repeat(28) + '_#1']);
  t.is(take('solo', false), 'solo');
  t.is(take('solo', false), null);
  taken.delete('X'.repeat(28) + '_#0');
  t.is(take(x32, true), 'X'.repeat(28) + '_#0', 'the lowest free instance number is reused');
});

test('naming: fallback is the file stem, the SD entry stem, or stream_<pid>', (t) => {
  t.is(fallbackAppName('file:/images/my_image.hxe', 4), 'my_image');
  t.is(fallbackAppName('file:C:\\img\\boot.v2.hxe', 4), 'boot.v2');
  t.is(fallbackAppName('sd:/mnt/sd/manifest.toml#apps/sensor.hxe', 4), 'sensor');
  t.is(fallbackAppName('can:vcan0/master:1', 9), 'stream_9');
  t.is(fallbackAppName('uart:/dev/ttyUSB0', 2), 'stream_2');
  t.is(fallbackAppName('file:', 3), 'stream_3');
});

// ───────────── gates ─────────────

test('capability gate: EPERM naming the missing bits', (t) => {
  const img = parsed(fixture('t02_single_instance_reqcap.hxe')); // req_caps 5: mailbox + FRAM
  const config = { ...validateEngineConfigOrThrow(), capabilities: 0x1 };
  const vm = new InProcessVmLoader({ arenas: config.arenas, maxTasks: 4 }).usage();
  const e = capabilityGate(img, new Uint8Array(), { source: 's', mode: 'monolithic', pid: null, config, stackBytes: 0, vm });
  t.truthy(e);
  t.deepEqual([e?.code, e?.reason, e?.detail?.['missing'], e?.detail?.['missingNames']], ['EPERM', 'caps', 4, ['fram']]);
  t.regex(e!.message, /0x4 \(fram\)/);
  t.is(capabilityGate(img, new Uint8Array(), { source: 's', mode: 'monolithic', pid: null, config: { ...config, capabilities: 0x5 }, stackBytes: 0, vm }), null);
});

function validateEngineConfigOrThrow() {
  const r = validateEngineConfig({});
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}

test('budget check: the target budget, then the free arena, naming the arena and both numbers', (t) => {
  const config = { ...validateEngineConfigOrThrow(), imageLimits: { code: 64, rodata: 64, bss: 64, stack: 64 } };
  const vm = new InProcessVmLoader({ arenas: { code: 1000, rodata: 1000, data: 1000, stack: 32 }, maxTasks: 4 }).usage();
  const cases: Array<[string, { codeLen: number; roLen: number; bssSize: number }, number, string, number, number]> = [
    ['code', { codeLen: 68, roLen: 0, bssSize: 0 }, 0, 'budget', 68, 64],
    ['rodata', { codeLen: 4, roLen: 65, bssSize: 0 }, 0, 'budget', 65, 64],
    ['data', { codeLen: 4, roLen: 0, bssSize: 100 }, 0, 'budget', 100, 64],
    ['stack', { codeLen: 4, roLen: 0, bssSize: 0 }, 65, 'budget', 65, 64],
    ['stack', { codeLen: 4, roLen: 0, bssSize: 0 }, 40, 'arena_full', 40, 32],
  ];
  for (const [arena, h, stack, reason, required, other] of cases) {
    const e = checkBudgets(h, stack, config, vm);
    t.is(e?.code, 'ENOSPC', arena);
    t.is(e?.reason, reason);
    t.is(e?.detail?.['arena'], arena);
    t.is(e?.detail?.['required'], required);
    t.is(e?.detail?.[reason === 'budget' ? 'limit' : 'available'], other);
    t.true(e!.message.includes(String(required)) && e!.message.includes(String(other)));
  }
  t.is(checkBudgets({ codeLen: 64, roLen: 64, bssSize: 64 }, 32, config, vm), null);
});

// ───────────── stores ─────────────

const meta = (appName: string, securityCounter = 0): ImageMeta => ({
  appName, version: '1.0.0', securityCounter, reqCaps: 0, codeLen: 4, roLen: 0, bssSize: 0, source: 'file:x', crc32: 0, sha256: '', bootPriority: 0,
});

test('InMemoryImageStore: A/B commits, confirm, rollback, forward-only security counter', async (t) => {
  const s = new InMemoryImageStore();
  t.is(s.active(), null);
  await t.throwsAsync(s.confirm());
  const a = await s.commit(new Uint8Array([1]), meta('one', 3), 'permanent');
  t.deepEqual(a, { slot: 'A', seq: 1 });
  const b = await s.commit(new Uint8Array([2]), meta('two', 2), 'test');
  t.deepEqual(b, { slot: 'B', seq: 2 });
  t.is(s.active()?.meta.appName, 'two');
  t.false(s.active()!.confirmed);
  t.is(s.securityCounter(), 3);
  const r = await s.rollback('not confirmed');
  t.is(r.slot, 'A');
  t.is(r.meta?.appName, 'one');
  t.deepEqual([...s.active()!.image], [1]);
  await s.confirm();
  t.true(s.active()!.confirmed);
});

test('InMemoryValueStore: missing, corrupt, schema_changed, write-through', (t) => {
  const s = new InMemoryValueStore();
  const schema = { valueType: 'f16[0x0000,0x5640]' };
  t.deepEqual(s.read(5, schema), { ok: false, reason: 'missing' });
  s.write(5, 0x4000, schema);
  t.deepEqual(s.read(5, schema), { ok: true, raw: 0x4000 });
  t.deepEqual(s.read(5, { valueType: 'bool[0x0000,0x3c00]' }), { ok: false, reason: 'schema_changed' });
  s.corrupt(5);
  t.deepEqual(s.read(5, schema), { ok: false, reason: 'corrupt' });
  t.is(s.writes.length, 1);
});

// ───────────── streaming session buffer (the hot path) ─────────────

test('session buffer: 64 KiB in 8-byte chunks grows geometrically (never a whole-buffer copy per chunk); sized once with a total', (t) => {
  const run = (initial: number) => {
    const s = new StreamSession(1, 'uart:x', undefined, undefined, undefined, 0, new LoadStateMachine(1, () => {}), initial);
    let grows = 0;
    let copied = 0;
    const grow = s.grow.bind(s);
    s.grow = (capacity: number) => {
      grows++;
      copied += s.length;
      grow(capacity);
    };
    const chunk = new Uint8Array(8);
    for (let i = 0; i < 8192; i++) {
      chunk.fill(i & 0xff);
      t.is(s.classify(i, chunk), 'next');
      const need = s.growthNeeded(8, 1 << 20);
      if (need) s.grow(need);
      s.append(chunk, i);
    }
    t.is(s.length, 65536);
    t.is(s.buffer[65535], 8191 & 0xff);
    t.is(s.classify(8191, chunk), 'duplicate');
    return { grows, copied };
  };
  const unknown = run(256);
  t.is(unknown.grows, 8, '256 → 512 → … → 65536');
  t.true(unknown.copied < 65536, `copied ${unknown.copied} bytes in growths for a 65536-byte image`);
  t.deepEqual(run(65536), { grows: 0, copied: 0 });
});
