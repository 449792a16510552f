/**
 * Power cut at every flash/FRAM operation of an UPDATE through the device-side intake
 * (src/engine/intake.ts), torn writes included: device (in-memory flash + FRAM behind one FaultPlan)
 * → engine with its stores → DeviceIntake. v1 is installed and confirmed, its persisted values set
 * and flushed; then the update to v2 runs (stage, test-mode commit, switch, confirm window on a
 * FakeClock, confirm, drop of the key v2 no longer declares) with the power failing at operation k,
 * for every k until the update completes without a cut, and every tear mode.
 *
 * After each cut: the stores are reopened from the surviving bytes, a new engine + intake boots
 * (`engine.restore()`), and the device runs v1 or v2 (by the task's SHA-256), never neither, with
 * the values of the image it runs: TEMP (key 17) is 33.5 either way (carried), GAIN (key 18) is
 * v1's stored 7.5 under v1 and v2's init 1 under v2 (v2 narrows GAIN's range, so v1's value is out
 * of it), OFFSET (key 19, v1 only) keeps its value under v1. Which one runs is fixed by where the
 * cut fell: v1 until the confirm record is on flash, v2 after. Then a second update is run on the
 * recovered device and must work.
 */
import test, { type ExecutionContext } from 'ava';
import { DeviceIntake, FakeClock, type EngineEvent, type EventSink } from '../src/engine/index.js';
import { FaultPlan, formatMemoryDevice, type TearMode } from '../src/persist/index.js';
import { GAIN, TEMP, TEMP_OID, f16, sensorBuild, sha256Hex } from './update-images.js';
import { boot as bootFaultDevice, copy, type Bytes, type Dev } from './support/fault-device.js';

const GEOMETRY = { flashSize: 64 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 2, framSize: 8192 };
const TEARS: TearMode[] = ['none', 'prefix', 'bits'];
const WINDOW = 1000;
const GAIN_OID = (1 << 8) | 4;
const OFFSET = { group: 1, id: 5, name: 'offset', flags: 0x02, init: 0, min: -10, max: 10, persistKey: 19 };
const OFFSET_OID = (1 << 8) | 5;
/** v2 narrows GAIN to [0, 5]: v1's stored 7.5 is out of it, so v2 runs with GAIN's init value (1). */
const GAIN_V2 = { ...GAIN, max: 5 };

const CODE = 700; // ~1 KB images: several page programs per commit
const V1 = sensorBuild(1, CODE, { values: [TEMP, GAIN, OFFSET] });
const V2 = sensorBuild(2, CODE, { values: [TEMP, GAIN_V2] });
const V3 = sensorBuild(3, CODE, { values: [TEMP, GAIN_V2] });
const SHA = { v1: sha256Hex(V1), v2: sha256Hex(V2), v3: sha256Hex(V3) };
const nameOf = (sha: string | undefined): string => Object.entries(SHA).find(([, s]) => s === sha)?.[0] ?? `unknown(${sha})`;

const TEMP_VALUE = 33.5;
/** What the new app sets TEMP to inside its confirm window (so v1's and v2's TEMP differ too). */
const TEMP_V2_VALUE = 40;
const GAIN_V1_VALUE = 7.5;
const OFFSET_VALUE = 2.25;

interface Marks { committed?: number; written?: number; confirmed?: number }
const boot = (b: Bytes, plan?: FaultPlan): Promise<Dev> => bootFaultDevice(b, WINDOW, plan);

const valueOf = (d: Dev, oid: number): number | null => {
  const r = d.engine.getValue(oid);
  return r.ok ? r.value.value : null;
};

/**
 * The update: load the image through the intake, then run the confirm window on the fake clock and
 * wait until the intake has settled it (confirmed and dropped, or failed). Stops as soon as the
 * power is gone. Returns where it got to.
 */
async function update(d: Dev, image: Uint8Array, plan: FaultPlan | null, marks?: Marks, tempUnderNew?: number): Promise<string> {
  // the intake drops OFFSET (key 19) at the confirm when the replaced task declared it and the new image does not
  const drops = d.engine.metadata.value(OFFSET_OID) !== undefined && image !== V1;
  const verdict = await d.intake.load(image, { source: 'sd:test#update' });
  if (plan?.tripped) return 'cut in commit';
  if (!verdict.ok) throw new Error(`update refused without a power cut: ${verdict.error.message}`);
  if (verdict.value.outcome !== 'updated' || !verdict.value.confirmPending) throw new Error(`unexpected verdict ${JSON.stringify(verdict.value.outcome)}`);
  if (marks && plan) marks.committed = plan.ops;
  if (tempUnderNew !== undefined) {
    // the new app changes TEMP while it runs in its window: a rollback must bring back v1's value
    const set = d.engine.setValue(TEMP_OID, f16(tempUnderNew));
    if (!set.ok) throw new Error(set.error.message);
    await d.valueStore.flush().catch(() => undefined);
    if (plan?.tripped) return 'cut in value write';
    if (marks && plan) marks.written = plan.ops;
  }
  const confirmed = d.sink.next((e) => (e.type === 'provisioning.persisted' && e.data['confirmed'] === true) || e.type === 'provisioning.error');
  const settled = d.sink.next((e) => e.type === 'provisioning.error' || (e.type === 'value.dropped') || (!drops && e.type === 'provisioning.persisted' && e.data['confirmed'] === true));
  d.clock.advance(WINDOW);
  const c = await confirmed;
  if (plan?.tripped) return 'cut in confirm';
  if (c.type === 'provisioning.error') throw new Error(`confirm failed without a power cut: ${JSON.stringify(c.data)}`);
  if (marks && plan) marks.confirmed = plan.ops;
  const s = await settled;
  if (plan?.tripped) return 'cut in drop';
  if (s.type === 'provisioning.error') throw new Error(`settle failed without a power cut: ${JSON.stringify(s.data)}`);
  return 'complete';
}

/** A device running v1 (installed permanently), its persisted values set and flushed; `preUpdates` shifts the status ring's phase. */
async function baseDevice(preUpdates: number): Promise<Bytes> {
  const b = formatMemoryDevice(GEOMETRY);
  const d = await boot(b);
  // earlier life of the device: installed, then updated back and forth between v3 and v1, each confirmed, ending on v1
  const life = [...Array(preUpdates + 1).keys()].map((j) => ((preUpdates - j) % 2 === 0 ? V1 : V3));
  const r = await d.intake.load(life[0]!, { source: 'sd:test#install' });
  if (!r.ok || r.value.outcome !== 'installed') throw new Error('install failed');
  for (const next of life.slice(1)) if ((await update(d, next, null)) !== 'complete') throw new Error('pre-update failed');
  if (d.engine.ps()[0]?.sha256 !== SHA.v1) throw new Error('base device does not run v1');
  for (const [oid, v] of [[TEMP_OID, TEMP_VALUE], [GAIN_OID, GAIN_V1_VALUE], [OFFSET_OID, OFFSET_VALUE]] as const) {
    const set = d.engine.setValue(oid, f16(v));
    if (!set.ok) throw new Error(set.error.message);
  }
  await d.valueStore.flush();
  if (!d.imageStore.active()?.confirmed) throw new Error('v1 is not confirmed');
  return b;
}

/** What a recovered device must show: one task, v1 or v2, with that image's values. */
function checkRecovered(t: ExecutionContext, d: Dev, where: string, expect: 'v1' | 'v2'): void {
  t.deepEqual(d.imageStore.audit(), [], `${where}: manifest/status inconsistent`);
  const ps = d.engine.ps();
  t.is(ps.length, 1, `${where}: ${ps.length} tasks run`);
  const runs = nameOf(ps[0]?.sha256);
  t.is(runs, expect, `${where}: runs ${runs}, expected ${expect}`);
  t.is(d.imageStore.active()?.meta.sha256, ps[0]?.sha256, `${where}: the store's active image is not what runs`);
  t.true(d.imageStore.active()?.confirmed, `${where}: an unconfirmed image survived a reboot`);
  t.is(valueOf(d, TEMP_OID), runs === 'v1' ? TEMP_VALUE : TEMP_V2_VALUE, `${where}: TEMP`);
  if (runs === 'v1') {
    t.is(valueOf(d, GAIN_OID), GAIN_V1_VALUE, `${where}: GAIN under v1`);
    t.is(valueOf(d, OFFSET_OID), OFFSET_VALUE, `${where}: OFFSET under v1`);
  } else {
    t.is(valueOf(d, GAIN_OID), 1, `${where}: GAIN under v2 (v1's 7.5 is outside v2's range)`);
    t.is(valueOf(d, OFFSET_OID), null, `${where}: v2 declares no OFFSET`);
  }
}

interface SweepResult { points: number; ops: number; log: string[]; committedAt: number; writtenAt: number; confirmedAt: number }

/**
 * Count the update's operations on `base`, then replay it failing at each with each tear mode;
 * after each, reboot and check, reboot again (idempotent), run a second update and reboot into it.
 */
async function sweep(t: ExecutionContext, label: string, base: Bytes): Promise<SweepResult> {
  const countPlan = new FaultPlan();
  const d0 = await boot(copy(base), countPlan);
  const before = countPlan.ops;
  const marks: Marks = {};
  t.is(await update(d0, V2, countPlan, marks, TEMP_V2_VALUE), 'complete', `${label}: the uncut update completes`);
  const n = countPlan.ops - before;
  const log = countPlan.log.slice(before);
  const committedAt = marks.committed! - before;
  const writtenAt = marks.written! - before;
  const confirmedAt = marks.confirmed! - before;
  t.true(n > 0 && committedAt > 0 && confirmedAt > committedAt, `${label}: ops ${n}, commit ends at ${committedAt}, confirm at ${confirmedAt}`);
  t.truthy(d0.sink.events.find((e) => e.type === 'value.migrated' && e.data['key'] === 17), `${label}: TEMP migrated`);
  t.truthy(d0.sink.events.find((e) => e.type === 'value.defaulted' && e.data['key'] === 18 && e.data['reason'] === 'out_of_range'), `${label}: GAIN defaulted`);
  t.truthy(d0.sink.events.find((e) => e.type === 'value.dropped' && e.data['key'] === 19), `${label}: OFFSET dropped`);
  let points = 0;
  const seen = new Set<string>();
  for (let k = 1; k <= n; k++) {
    for (const tear of TEARS) {
      const where = `${label} op ${k}/${n} (${log[k - 1]}) tear=${tear}`;
      const b = copy(base);
      const plan = new FaultPlan(before + k, tear, k * 7 + tear.length);
      const d = await boot(b, plan);
      const got = await update(d, V2, plan, undefined, TEMP_V2_VALUE);
      t.not(got, 'complete', `${where}: the power did not fail`);
      t.true(plan.tripped, `${where}: the plan did not trip`);
      d.intake.dispose();
      // reboot from the surviving bytes
      const expect = k <= confirmedAt ? 'v1' : 'v2';
      const r = await boot(b);
      checkRecovered(t, r, `${where} [${got}]`, expect);
      seen.add(`${got}->${expect}`);
      // recovery is idempotent
      const r2 = await boot(b);
      t.deepEqual(r2.imageStore.status(), r.imageStore.status(), `${where}: a second reboot changed the state`);
      checkRecovered(t, r2, `${where} (second reboot)`, expect);
      // a second update works: to v2 if v1 runs, else to v3 (the same declarations as v2)
      const next = expect === 'v1' ? V2 : V3;
      t.is(await update(r2, next, null), 'complete', `${where}: the second update`);
      t.is(nameOf(r2.engine.ps()[0]?.sha256), nameOf(sha256Hex(next)), `${where}: runs the second update`);
      const r3 = await boot(b);
      t.deepEqual(r3.imageStore.audit(), [], `${where}: inconsistent after the second update`);
      t.is(nameOf(r3.engine.ps()[0]?.sha256), nameOf(sha256Hex(next)), `${where}: the second update survives a reboot`);
      t.is(valueOf(r3, TEMP_OID), expect === 'v1' ? TEMP_VALUE : TEMP_V2_VALUE, `${where}: TEMP carried by the second update`);
      t.is(valueOf(r3, GAIN_OID), 1, `${where}: GAIN after the second update`);
      if (expect === 'v1') t.false(r3.valueStore.entries().has(19), `${where}: OFFSET dropped by the second update's confirm`);
      points++;
    }
  }
  t.true(seen.has('cut in commit->v1') && seen.has('cut in value write->v1') && seen.has('cut in confirm->v1') && seen.has('cut in drop->v2'),
    `${label}: cuts in every phase (${[...seen].join(', ')})`);
  // the update without a cut, rebooted
  const done = copy(base);
  const dd = await boot(done);
  t.is(await update(dd, V2, null, undefined, TEMP_V2_VALUE), 'complete');
  checkRecovered(t, await boot(done), `${label} completed`, 'v2');
  return { points, ops: n, log, committedAt, writtenAt, confirmedAt };
}

const statusErase = (log: string[]) => log.some((op) => /^flash\.erase@(4096|8192)\+/.test(op));
const statusRecords = (r: SweepResult) => r.log.filter((op) => /^flash\.program@\d+\+512$/.test(op)).length;

test('update interrupted at every flash/FRAM operation, whole and torn: v1 or v2 with its own values, and a second update works', async (t) => {
  t.timeout(120_000);
  const results: Array<[string, SweepResult]> = [];
  // fresh device: slot B empty, no status-sector erase
  results.push(['fresh', await sweep(t, 'update[fresh]', await baseDevice(0))]);
  // a device with history: slot B holds an older image (invalidated first), and the first ring phase
  // where the update's status records need a status-sector erase
  let erasePhase = -1;
  for (let p = 1; p <= 12 && erasePhase < 0; p++) {
    const plan = new FaultPlan();
    const d = await boot(copy(await baseDevice(p)), plan);
    const before = plan.ops;
    await update(d, V2, plan, undefined, TEMP_V2_VALUE);
    if (statusErase(plan.log.slice(before))) erasePhase = p;
  }
  t.true(erasePhase > 0, 'found a ring phase where the update erases a status sector');
  results.push([`history ${1}`, await sweep(t, 'update[history 1]', await baseDevice(1))]);
  results.push([`ring phase ${erasePhase}`, await sweep(t, `update[ring phase ${erasePhase}]`, await baseDevice(erasePhase))]);
  t.true(statusErase(results[2]![1].log), 'the ring-phase sweep covers a status-sector erase');
  const total = results.reduce((s, [, r]) => s + r.points, 0);
  for (const [name, r] of results) {
    const line = `persist-update-fault: update sweep [${name}]: ${r.ops} operations (commit ${r.committedAt}, v2's value write ${r.writtenAt - r.committedAt}, confirm ${r.confirmedAt - r.writtenAt}, drop ${r.ops - r.confirmedAt}; ${statusRecords(r)} status records) × ${TEARS.length} tears = ${r.points} fault points`;
    t.log(line);
    console.log(line);
  }
  const line = `persist-update-fault: ${total} fault points covered (torn ones included)`;
  t.log(line);
  console.log(line);
  t.true(total > 0);
});

test('boot into an unconfirmed update, interrupted at every operation of its recovery: v1 with v1 values', async (t) => {
  t.timeout(60_000);
  // a device whose power failed right after the update's switch record (before the confirm)
  const base = await baseDevice(0);
  {
    const plan = new FaultPlan();
    const d = await boot(copy(base), plan);
    const before = plan.ops;
    const marks: Marks = {};
    await update(d, V2, plan, marks, TEMP_V2_VALUE);
    const cut = new FaultPlan(marks.written! + 1, 'none');
    const dc = await boot(base, cut);
    t.is(await update(dc, V2, cut, undefined, TEMP_V2_VALUE), 'cut in confirm');
    t.is(dc.valueStore.entries().get(17)?.raw, f16(TEMP_V2_VALUE), 'v2 wrote its TEMP before the cut');
    t.true(marks.committed! > before);
  }
  // the reboot's recovery (roll back the test image, restore v1's values snapshot) counted, then cut at each op
  const countPlan = new FaultPlan();
  const d0 = await boot(copy(base), countPlan);
  const n = countPlan.ops;
  t.true(n > 0, 'recovery writes (rollback record, values restore)');
  checkRecovered(t, d0, 'recovery uncut', 'v1');
  let points = 0;
  for (let k = 1; k <= n; k++) {
    for (const tear of TEARS) {
      const where = `recovery op ${k}/${n} (${countPlan.log[k - 1]}) tear=${tear}`;
      const b = copy(base);
      const plan = new FaultPlan(k, tear, k * 11 + tear.length);
      await boot(b, plan).then(() => t.fail(`${where}: the power did not fail`), () => undefined);
      const r = await boot(b);
      checkRecovered(t, r, where, 'v1');
      t.is(await update(r, V2, null, undefined, TEMP_V2_VALUE), 'complete', `${where}: the update after recovery`);
      checkRecovered(t, await boot(b), `${where}: after the update`, 'v2');
      points++;
    }
  }
  const line = `persist-update-fault: recovery of an unconfirmed update: ${n} operations × ${TEARS.length} tears = ${points} fault points`;
  t.log(line);
  console.log(line);
});
