/**
 * A fault at each admission and registration step of an UPDATE through the device-side intake
 * (src/engine/intake.ts), on a device whose flash and FRAM are the real persist models in memory
 * (behind a counting FaultPlan that never cuts: every erase/program is counted and logged).
 *
 * Each refusal must leave v1 running and registered (engine.ps(), engine.metadata.valuesOf), its
 * values intact, its flash slot byte-for-byte untouched (the store's active image and the raw slot
 * region), nothing leaked (engine.resources(): staged 0, sessions 0, the same PIDs, arenas and
 * registry counts). A refusal before the commit writes nothing at all (no flash/FRAM operation, both
 * byte arrays identical). Every scenario runs twice on the same device, the second time starting
 * where the first ended, and over both intake paths where both apply (a stream: open/write/finish;
 * a whole image: load).
 */
import test, { type ExecutionContext } from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import {
  DeviceIntake, FakeClock, InProcessVmLoader, ProvisioningEngine, engineError,
  type EngineConfigInput, type EngineError, type EngineErrorCode, type EngineEvent, type EngineResources, type EventSink, type PreRegistrationGate,
  type VmLoader, type VmTask, type VmUsage,
} from '../src/engine/index.js';
import { policyGate } from '../src/engine/policy.js';
import { err, type Result } from '../src/hxe/result.js';
import type { StrippedImage } from '../src/hxe/types.js';
import { keyIdOf, signImage, type TrustedKeys } from '../src/hxe/signature.js';
import {
  FaultPlan, PersistError, bootMemory, formatMemoryDevice, openStores,
  type BlockDevice, type SlotImageStore, type ValueJournal,
} from '../src/persist/index.js';
import { GAIN, TEMP, TEMP_OID, f16, sensorBuild, sha256Hex } from './update-images.js';
import { WaitingSink } from './support/event-waiter.js';

const GEOMETRY = { flashSize: 64 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 2, framSize: 8192 };
const WINDOW = 1000;
const GAIN_OID = (1 << 8) | 4;
const OFFSET = { group: 1, id: 5, name: 'offset', flags: 0x02, init: 0, min: -10, max: 10, persistKey: 19 };
const OFFSET_OID = (1 << 8) | 5;
const CODE = 700;

const V1 = sensorBuild(1, CODE, { values: [TEMP, GAIN, OFFSET] });
/** v2 declares TEMP and GAIN only: OFFSET (key 19) is kept until v2 is confirmed, then dropped. */
const V2 = sensorBuild(2, CODE, { values: [TEMP, GAIN] });

// ───────────────────────────── the device ─────────────────────────────


/** A flash whose next program into an image slot fails once with EIO (a write error, not a power cut). */
class FlakyFlash implements BlockDevice {
  failNextSlotProgram = false;
  constructor(private readonly inner: BlockDevice, private readonly slotsStart: number) {}
  get kind() { return this.inner.kind; }
  get size() { return this.inner.size; }
  get eraseSize() { return this.inner.eraseSize; }
  get programSize() { return this.inner.programSize; }
  get needsErase() { return this.inner.needsErase; }
  get sectorCount() { return this.inner.sectorCount; }
  get endurance() { return this.inner.endurance; }
  read(o: number, l: number) { return this.inner.read(o, l); }
  view(o: number, l: number) { return this.inner.view(o, l); }
  eraseCount(s: number) { return this.inner.eraseCount(s); }
  erase(o: number, l: number) { this.inner.erase(o, l); }
  sync(o: number, l: number) { return this.inner.sync(o, l); }
  close() { this.inner.close(); }
  program(o: number, d: Uint8Array) {
    if (this.failNextSlotProgram && o >= this.slotsStart) {
      this.failNextSlotProgram = false;
      throw new PersistError('EIO', 'program', 'program_failed', `flash program at ${o} failed (injected)`, { offset: o });
    }
    this.inner.program(o, d);
  }
}

/** A VM whose next `load` fails (its arena is full at the switch, after every gate passed). */
class FlakyVm implements VmLoader {
  failNextLoad = false;
  readonly inner: InProcessVmLoader;
  constructor() {
    this.inner = new InProcessVmLoader({ arenas: { code: 1 << 20, rodata: 1 << 20, data: 1 << 20, stack: 1 << 20 }, maxTasks: 1024 });
  }
  reservePid() { return this.inner.reservePid(); }
  load(pid: number, image: StrippedImage, stackBytes: number): Result<VmTask, EngineError> {
    if (this.failNextLoad) {
      this.failNextLoad = false;
      return err(engineError('ENOSPC', 'end', 'arena_full', 'code arena: image needs 700 bytes, 0 available (injected)', { arena: 'code' }));
    }
    return this.inner.load(pid, image, stackBytes);
  }
  release(pid: number) { return this.inner.release(pid); }
  task(pid: number) { return this.inner.task(pid); }
  tasks() { return this.inner.tasks(); }
  usage(without?: number): VmUsage { return this.inner.usage(without); }
}

interface DeviceOptions { config?: EngineConfigInput; gates?: PreRegistrationGate[]; vm?: VmLoader; v1?: Uint8Array }

interface Dev {
  flashBytes: Uint8Array;
  framBytes: Uint8Array;
  plan: FaultPlan;
  flash: FlakyFlash;
  clock: FakeClock;
  sink: WaitingSink;
  imageStore: SlotImageStore;
  valueStore: ValueJournal;
  engine: ProvisioningEngine;
  intake: DeviceIntake;
  v1: Uint8Array;
  v1Sha: string;
}

async function device(opts: DeviceOptions = {}): Promise<Dev> {
  const { flashBytes, framBytes } = formatMemoryDevice(GEOMETRY);
  const plan = new FaultPlan();
  const models = bootMemory(flashBytes, framBytes, plan);
  const slotsStart = (1 + GEOMETRY.statusSectors) * GEOMETRY.sectorSize;
  const flash = new FlakyFlash(models.flash, slotsStart);
  const clock = new FakeClock(1_000);
  const sink = new WaitingSink();
  const { imageStore, valueStore } = await openStores(flash, models.fram, sink, { clock });
  const engine = new ProvisioningEngine({
    clock, events: sink, imageStore, valueStore,
    ...(opts.config ? { config: opts.config } : {}), ...(opts.gates ? { gates: opts.gates } : {}), ...(opts.vm ? { vm: opts.vm } : {}),
  });
  const intake = new DeviceIntake({ engine, clock, events: sink, confirmWindowMs: WINDOW });
  const v1 = opts.v1 ?? V1;
  const r = await intake.load(v1, { source: 'sd:test#v1' });
  if (!r.ok || r.value.outcome !== 'installed') throw new Error(`install v1: ${r.ok ? r.value.outcome : r.error.message}`);
  return { flashBytes, framBytes, plan, flash, clock, sink, imageStore, valueStore, engine, intake, v1, v1Sha: sha256Hex(v1) };
}

/** Values per run, so a second run cannot pass on the first run's values. */
const valuesFor = (run: number) => ({ temp: 30 + run * 1.5, gain: 7.5 - run, offset: 2.25 * run });

const valueOf = (d: Dev, oid: number): number | null => {
  const r = d.engine.getValue(oid);
  return r.ok ? r.value.value : null;
};

/** The confirm window on the fake clock; resolves once the intake has confirmed (and dropped what it drops). */
async function runWindow(d: Dev, expectDrop: boolean): Promise<void> {
  const done = d.sink.next((e) => e.type === 'provisioning.error'
    || (expectDrop ? e.type === 'value.dropped' : e.type === 'provisioning.persisted' && e.data['confirmed'] === true));
  d.clock.advance(WINDOW);
  const e = await done;
  if (e.type === 'provisioning.error') throw new Error(`confirm window: ${JSON.stringify(e.data)}`);
}

/** Make v1 the running, confirmed image (updating back to it if the last run ended elsewhere), with this run's values. */
async function startV1(d: Dev, run: number): Promise<void> {
  if (d.engine.ps().find((x) => x.sha256 === d.v1Sha) === undefined) {
    const r = await d.intake.load(d.v1, { source: 'sd:test#back-to-v1' });
    if (!r.ok) throw new Error(`back to v1: ${r.error.message}`);
    await runWindow(d, false);
  }
  if (!d.imageStore.active()?.confirmed) await d.intake.confirmNow();
  const v = valuesFor(run);
  for (const [oid, x] of [[TEMP_OID, v.temp], [GAIN_OID, v.gain], [OFFSET_OID, v.offset]] as const) {
    const s = d.engine.setValue(oid, f16(x));
    if (!s.ok) throw new Error(s.error.message);
  }
  await d.valueStore.flush();
}

interface Snapshot {
  pid: number;
  tasks: Array<{ pid: number; sha256: string }>;
  values: Array<[number, number]>;
  activeImage: Uint8Array;
  slotOffset: number;
  slotRegion: Uint8Array;
  flashBytes: Uint8Array;
  framBytes: Uint8Array;
  resources: EngineResources;
  ops: number;
  events: number;
}

function snapshot(d: Dev): Snapshot {
  const v1 = d.engine.ps().find((x) => x.sha256 === d.v1Sha);
  if (!v1) throw new Error('v1 does not run');
  const slot = d.imageStore.slots().find((s) => s.active)!;
  const slotOffset = slot.firstSector * GEOMETRY.sectorSize;
  return {
    pid: v1.pid,
    tasks: d.engine.ps().map((x) => ({ pid: x.pid, sha256: x.sha256 })),
    values: d.engine.metadata.valuesOf(v1.pid).map((v) => [v.oid, v.raw]),
    activeImage: d.imageStore.active()!.image,
    slotOffset,
    slotRegion: d.flash.read(slotOffset, slot.bytes),
    flashBytes: d.flashBytes.slice(),
    framBytes: d.framBytes.slice(),
    resources: d.engine.resources(),
    ops: d.plan.ops,
    events: d.sink.events.length,
  };
}

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.compare(a, b) === 0;

/**
 * v1 still runs, registered, with its values; its slot untouched; nothing leaked. `strict`: the
 * refusal came before the commit, so nothing was written at all (same PID, same bytes everywhere).
 */
function untouched(t: ExecutionContext, d: Dev, before: Snapshot, where: string, strict: boolean): void {
  const v1 = d.engine.ps().find((x) => x.sha256 === d.v1Sha);
  t.truthy(v1, `${where}: v1 no longer runs`);
  if (!v1) return;
  t.is(d.engine.ps().length, before.tasks.length, `${where}: task count`);
  if (strict) {
    t.deepEqual(d.engine.ps().map((x) => ({ pid: x.pid, sha256: x.sha256 })), before.tasks, `${where}: tasks`);
    t.is(v1.pid, before.pid, `${where}: v1's PID`);
  }
  const values = d.engine.metadata.valuesOf(v1.pid).map((v) => [v.oid, v.raw]);
  t.deepEqual(values, before.values, `${where}: v1's registered values`);
  t.is(d.imageStore.active()?.meta.sha256, d.v1Sha, `${where}: the store's active image`);
  t.true(d.imageStore.active()?.confirmed, `${where}: v1 is confirmed`);
  t.true(same(d.imageStore.active()!.image, before.activeImage), `${where}: the active image bytes`);
  const slot = d.imageStore.slots().find((s) => s.active)!;
  t.is(slot.firstSector * GEOMETRY.sectorSize, before.slotOffset, `${where}: the active slot moved`);
  t.true(same(d.flash.read(before.slotOffset, slot.bytes), before.slotRegion), `${where}: v1's raw slot region changed`);
  const r = d.engine.resources();
  t.is(r.staged, 0, `${where}: staged`);
  t.is(r.sessions, 0, `${where}: sessions`);
  t.deepEqual(r, before.resources, `${where}: resources (pids, arenas, registry, buffers)`);
  t.deepEqual(d.imageStore.audit(), [], `${where}: store audit`);
  if (strict) {
    t.is(d.plan.ops, before.ops, `${where}: flash/FRAM operations: ${d.plan.log.slice(before.ops).join(', ')}`);
    t.true(same(d.flashBytes, before.flashBytes), `${where}: flash bytes changed`);
    t.true(same(d.framBytes, before.framBytes), `${where}: FRAM bytes changed`);
  }
}

type Path = 'stream' | 'load';

/** Offer an image through one intake path; the first error, or the verdict. */
async function offer(d: Dev, bytes: Uint8Array, path: Path, announce: { sha256?: string; totalBytes?: number } = {}) {
  if (path === 'load') return d.intake.load(bytes, { source: 'control:test' });
  const opened = d.intake.open({ source: 'can:test', totalBytes: announce.totalBytes ?? bytes.length, sha256: announce.sha256 ?? sha256Hex(bytes) });
  if (!opened.ok) return opened;
  if (opened.value.kind === 'current') throw new Error('unexpected CURRENT');
  const id = opened.value.id;
  for (let off = 0; off < bytes.length; off += 128) {
    const w = d.intake.write(id, off, bytes.subarray(off, off + 128));
    if (!w.ok) {
      d.intake.abort(id, 'write refused');
      return w;
    }
  }
  return d.intake.finish(id);
}

interface Refusal {
  name: string;
  paths: Path[];
  device?: () => DeviceOptions;
  /** Set-up on the device (once, before the first run). */
  setup?: (d: Dev) => void;
  /** Called right before the offer (inject a fault). */
  arm?: (d: Dev) => void;
  image: (d: Dev) => Uint8Array;
  announce?: (d: Dev, bytes: Uint8Array) => { sha256?: string; totalBytes?: number };
  code: EngineErrorCode;
  reason: string | RegExp;
  message?: RegExp[];
  /** The refusal comes before the commit: nothing may be written. */
  strict: boolean;
  after?: (t: ExecutionContext, d: Dev, before: Snapshot, where: string) => void;
}

const key = () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey, id: keyIdOf(publicKey) };
};
const RELEASE = key();
const STRANGER = key();
const TRUSTED: TrustedKeys = { keys: new Map([[RELEASE.id, { name: 'release', publicKey: RELEASE.publicKey }]]), revoked: new Set() };
const signed = (bytes: Uint8Array, k: typeof RELEASE, securityCounter: number): Uint8Array => {
  const r = signImage(bytes, k.privateKey, { version: { major: 1, minor: securityCounter, patch: 0, build: 0 }, securityCounter });
  if (!r.ok) throw new Error(r.error.message);
  return r.value.bytes;
};
const policyDevice = (): DeviceOptions => ({ gates: [policyGate({ requireSignature: true, trustedKeys: TRUSTED })], v1: signed(V1, RELEASE, 5) });

const OTHER_VALUE = { group: 5, id: 1, name: 'other_level', flags: 0 };
const MULTI_VALUE = { group: 6, id: 1, name: 'multi_level', flags: 0 };

const REFUSALS: Refusal[] = [
  {
    name: 'announced SHA-256 mismatch', paths: ['stream'], image: () => V2,
    announce: () => ({ sha256: sha256Hex(V1).replace(/^./, (c) => (c === '0' ? '1' : '0')) }),
    code: 'EBADMSG', reason: 'sha256_mismatch', strict: true,
  },
  {
    name: 'bad CRC', paths: ['stream', 'load'],
    image: () => {
      const b = V2.slice();
      b[b.length - 40] = b[b.length - 40]! ^ 0x01;
      return b;
    },
    code: 'EBADMSG', reason: /crc/, strict: true,
  },
  {
    name: 'signature policy: unsigned image', paths: ['stream', 'load'], device: policyDevice, image: () => V2,
    code: 'EPERM', reason: 'unsigned', strict: true,
  },
  {
    name: 'signature policy: untrusted key', paths: ['stream', 'load'], device: policyDevice, image: () => signed(V2, STRANGER, 9),
    code: 'EPERM', reason: 'unknown_key', strict: true,
  },
  {
    name: 'anti-downgrade below the security counter', paths: ['stream', 'load'], device: policyDevice, image: () => signed(V2, RELEASE, 3),
    code: 'EPERM', reason: 'downgrade', message: [/3 is below the device's recorded counter 5/], strict: true,
    after: (t, d, _b, where) => t.is(d.imageStore.securityCounter(), 5, `${where}: the device counter`),
  },
  {
    name: 'capability gate', paths: ['stream', 'load'], image: () => sensorBuild(2, CODE, { values: [TEMP, GAIN], reqCaps: 0x100 }),
    code: 'EPERM', reason: 'caps', strict: true,
  },
  {
    name: 'budget gate', paths: ['stream', 'load'], device: () => ({ config: { imageLimits: { code: 2048 } } }),
    image: () => sensorBuild(2, 4096, { values: [TEMP, GAIN] }),
    code: 'ENOSPC', reason: 'budget', message: [/code arena/], strict: true,
  },
  {
    name: 'registry conflict with another app', paths: ['stream', 'load'],
    setup: (d) => {
      const other = sensorBuild(9, 16, { appName: 'other_app', values: [OTHER_VALUE], commands: [] });
      const r = d.engine.loadImage(other, { source: 'file:other.hxe' });
      if (!r.ok) throw new Error(r.error.message);
    },
    image: () => sensorBuild(2, CODE, { values: [TEMP, GAIN, OTHER_VALUE] }),
    code: 'EEXIST', reason: 'value_exists', message: [/\(5,1\)/, /other_app/, /another app/], strict: true,
  },
  {
    name: 'multi-instance image colliding with a running instance', paths: ['stream', 'load'],
    image: () => sensorBuild(2, CODE, { values: [TEMP, GAIN, OFFSET], allowMultipleInstances: true }),
    code: 'EEXIST', reason: 'value_exists', message: [/\(1,2\)/, /sensor_app/, /multi-instance/], strict: true,
  },
  {
    name: 'single-instance image colliding with a running multi-instance app', paths: ['stream', 'load'],
    setup: (d) => {
      const multi = sensorBuild(8, 16, { appName: 'multi_app', allowMultipleInstances: true, values: [MULTI_VALUE], commands: [] });
      const r = d.engine.loadImage(multi, { source: 'file:multi.hxe' });
      if (!r.ok) throw new Error(r.error.message);
    },
    image: () => sensorBuild(7, 16, { appName: 'newcomer', values: [MULTI_VALUE], commands: [] }),
    code: 'EEXIST', reason: 'value_exists', message: [/\(6,1\)/, /multi_app/, /multi-instance app, which an update never replaces/], strict: true,
  },
  {
    name: 'registry full', paths: ['stream', 'load'], device: () => ({ config: { registry: { maxValues: 3 } } }),
    image: () => sensorBuild(2, CODE, { values: [TEMP, GAIN, OFFSET, { group: 1, id: 6, name: 'extra', flags: 0 }] }),
    code: 'ENOSPC', reason: 'values_full', strict: true,
  },
  {
    name: 'announce bigger than a slot', paths: ['stream', 'load'],
    image: (d) => sensorBuild(2, Math.ceil((d.imageStore.slotCapacity() + 1) / 4) * 4, { values: [TEMP, GAIN] }),
    code: 'ENOSPC', reason: 'image_too_large', strict: true,
    after: (t, d, b, where) => t.is(d.plan.log.slice(b.ops).filter((op) => op.includes('erase')).length, 0, `${where}: erase operations`),
  },
  {
    name: 'VM arena full at the switch (store rolled back, v1 restored from flash)', paths: ['stream', 'load'],
    device: () => ({ vm: new FlakyVm() }),
    arm: (d) => { ((d.engine as unknown as { vm: FlakyVm }).vm).failNextLoad = true; },
    image: () => V2, code: 'ENOSPC', reason: 'arena_full', strict: false,
    after: (t, d, b, where) => {
      t.is(d.sink.since(b.events, 'provisioning.rollback').length, 1, `${where}: one rollback`);
      t.is(d.sink.since(b.events, 'provisioning.complete').filter((e) => String(e.data['source']).startsWith('store:')).length, 1, `${where}: v1 loaded from flash`);
      t.true(d.imageStore.slots().every((s) => s.active || s.entry === null), `${where}: the abandoned slot is emptied`);
    },
  },
  {
    name: 'store commit failure (flash program error)', paths: ['stream', 'load'],
    arm: (d) => { d.flash.failNextSlotProgram = true; },
    image: () => V2, code: 'EBUSY', reason: 'program_failed', message: [/commit failed/], strict: false,
    after: (t, d, b, where) => {
      t.false(d.flash.failNextSlotProgram, `${where}: the fault fired`);
      t.is(d.engine.ps().find((x) => x.sha256 === d.v1Sha)?.pid, b.pid, `${where}: v1 kept its PID (it never stopped)`);
      t.is(d.sink.since(b.events, 'provisioning.unloaded').length, 0, `${where}: nothing was unloaded`);
    },
  },
];

for (const s of REFUSALS) {
  test(`refused update, ${s.name}: v1 keeps running, registered, values and slot intact, nothing leaked (twice, ${s.paths.join(' + ')})`, async (t) => {
    const d = await device(s.device?.());
    s.setup?.(d);
    for (const path of s.paths) {
      for (const run of [1, 2]) {
        const where = `${s.name} [${path} run ${run}]`;
        await startV1(d, run);
        const before = snapshot(d);
        const bytes = s.image(d);
        s.arm?.(d);
        const r = await offer(d, bytes, path, s.announce?.(d, bytes));
        t.false(r.ok, `${where}: the update was accepted`);
        if (r.ok) continue;
        t.is(r.error.code, s.code, `${where}: ${r.error.message}`);
        if (typeof s.reason === 'string') t.is(r.error.reason, s.reason, `${where}: ${r.error.message}`);
        else t.regex(r.error.reason, s.reason, `${where}: ${r.error.message}`);
        for (const m of s.message ?? []) t.regex(r.error.message, m, `${where}: message`);
        untouched(t, d, before, where, s.strict);
        const v = valuesFor(run);
        t.is(valueOf(d, TEMP_OID), v.temp, `${where}: TEMP`);
        t.is(valueOf(d, OFFSET_OID), v.offset, `${where}: OFFSET`);
        t.is(d.valueStore.entries().get(17)?.raw, f16(v.temp), `${where}: TEMP in the journal`);
        s.after?.(t, d, before, where);
      }
    }
    // and the device still takes a good update afterwards
    await startV1(d, 3);
    const ok = s.device?.().gates ? signed(V2, RELEASE, 6) : V2;
    const good = await d.intake.load(ok, { source: 'control:test' });
    t.true(good.ok && good.value.outcome === 'updated', `${s.name}: a good update after the refusals`);
    t.is(valueOf(d, TEMP_OID), valuesFor(3).temp, `${s.name}: TEMP carried by the good update`);
  });
}

// ───────────────────────────── after the switch ─────────────────────────────

test('rollback command after a confirmed update: v1 with v1\'s values (twice)', async (t) => {
  const d = await device();
  for (const run of [1, 2]) {
    const where = `run ${run}`;
    await startV1(d, run);
    const before = snapshot(d);
    const u = await offer(d, V2, run === 1 ? 'stream' : 'load');
    t.true(u.ok && u.value.outcome === 'updated', `${where}: update`);
    await runWindow(d, true);
    t.true(d.imageStore.active()?.confirmed, `${where}: v2 confirmed`);
    t.false(d.valueStore.entries().has(19), `${where}: OFFSET dropped at the confirm`);
    // v2 changes TEMP while it runs
    t.true(d.engine.setValue(TEMP_OID, f16(99)).ok);
    await d.valueStore.flush();
    const rb = await d.intake.rollback('operator');
    t.true(rb.ok, `${where}: rollback ${rb.ok ? '' : rb.error.message}`);
    t.is(rb.ok ? rb.value.task?.sha256 : null, d.v1Sha, `${where}: v1 runs again`);
    untouched(t, d, before, where, false);
    const v = valuesFor(run);
    t.is(valueOf(d, TEMP_OID), v.temp, `${where}: TEMP is v1's, not the 99 v2 set`);
    t.is(valueOf(d, GAIN_OID), v.gain, `${where}: GAIN`);
    t.is(valueOf(d, OFFSET_OID), v.offset, `${where}: OFFSET (dropped at v2's confirm) is back`);
    t.is(d.valueStore.entries().get(19)?.raw, f16(v.offset), `${where}: OFFSET in the journal`);
  }
});

test('an update whose task is unloaded inside the confirm window rolls back to v1 and its values (twice)', async (t) => {
  const d = await device();
  for (const run of [1, 2]) {
    const where = `run ${run}`;
    await startV1(d, run);
    const before = snapshot(d);
    const u = await offer(d, V2, run === 1 ? 'stream' : 'load');
    t.true(u.ok && u.value.confirmPending, `${where}: update pending`);
    if (!u.ok) continue;
    t.true(d.engine.setValue(TEMP_OID, f16(99)).ok);
    await d.valueStore.flush();
    t.true(d.engine.unload(u.value.task.pid).ok);
    const back = d.sink.next((e) => e.type === 'provisioning.error'
      || (e.type === 'provisioning.complete' && String(e.data['source']).startsWith('store:')));
    d.clock.advance(WINDOW);
    const e = await back;
    t.is(e.type, 'provisioning.complete', `${where}: ${JSON.stringify(e.data)}`);
    t.truthy(d.sink.since(before.events, 'provisioning.rollback').find((x) => x.data['reason'] === 'not_confirmed'), `${where}: rollback not_confirmed`);
    untouched(t, d, before, where, false);
    t.is(valueOf(d, TEMP_OID), valuesFor(run).temp, `${where}: TEMP`);
    t.is(d.sink.since(before.events, 'value.dropped').length, 0, `${where}: nothing dropped`);
  }
});

test('a key v1 declared and v2 does not: kept until the confirm, then dropped; a rollback before the confirm keeps it (twice)', async (t) => {
  const d = await device();
  for (const run of [1, 2]) {
    // (a) confirmed: dropped at the confirm, not before
    await startV1(d, run);
    let before = snapshot(d);
    const u = await offer(d, V2, 'load');
    t.true(u.ok && u.value.outcome === 'updated');
    t.is(d.engine.metadata.value(OFFSET_OID), undefined, `run ${run}: v2 does not register OFFSET`);
    t.is(d.valueStore.entries().get(19)?.raw, f16(valuesFor(run).offset), `run ${run}: OFFSET still stored inside the window`);
    t.is(d.sink.since(before.events, 'value.dropped').length, 0);
    await runWindow(d, true);
    const dropped = d.sink.since(before.events, 'value.dropped');
    t.deepEqual(dropped.map((e) => e.data), [{ key: 19, reason: 'not_declared', from_app: 'sensor_app' }], `run ${run}: value.dropped`);
    t.is(dropped[0]?.pid, u.ok ? u.value.task.pid : -1);
    t.false(d.valueStore.entries().has(19), `run ${run}: OFFSET gone after the confirm`);
    t.true(d.valueStore.entries().has(17) && d.valueStore.entries().has(18), `run ${run}: the declared keys stay`);
    // (b) rolled back before the confirm: kept
    await startV1(d, run);
    before = snapshot(d);
    const u2 = await offer(d, V2, 'stream');
    t.true(u2.ok && u2.value.confirmPending);
    const rb = await d.intake.rollback('operator');
    t.true(rb.ok);
    untouched(t, d, before, `run ${run} rollback before confirm`, false);
    t.is(valueOf(d, OFFSET_OID), valuesFor(run).offset, `run ${run}: OFFSET restored with v1`);
    t.is(d.valueStore.entries().get(19)?.raw, f16(valuesFor(run).offset));
    d.clock.advance(WINDOW); // the cancelled window must not fire
    await d.valueStore.flush();
    t.is(d.sink.since(before.events, 'value.dropped').length, 0, `run ${run}: nothing dropped`);
  }
});

test('a value set while the update is being committed is the one carried into v2 (twice)', async (t) => {
  const d = await device();
  for (const run of [1, 2]) {
    await startV1(d, run);
    const pending = d.intake.load(V2, { source: 'control:test' });
    // the old app still runs while its successor is staged and committed: a SET reaches it
    t.true(d.engine.setValue(TEMP_OID, f16(55 + run)).ok);
    const u = await pending;
    t.true(u.ok && u.value.outcome === 'updated', `run ${run}: update`);
    t.is(valueOf(d, TEMP_OID), 55 + run, `run ${run}: the new task has the value the old one had at the switch`);
    await runWindow(d, true);
    await d.valueStore.flush();
    t.is(d.valueStore.entries().get(17)?.raw, f16(55 + run), `run ${run}: the journal agrees`);
  }
});
