/**
 * Power cut at every flash/FRAM operation of a DELTA update (issue 25), torn writes included: the
 * device (in-memory flash + FRAM behind one FaultPlan) runs v1 with persisted values; a patch v1 → v2
 * comes through the intake (rebuilt from the active slot, staged in RAM, verified by SHA-256, committed
 * to the inactive slot in test mode, switched, confirmed after the window). The power fails at
 * operation k for every k and every tear mode; after the reboot the device runs v1 or v2, never
 * neither, with the values of the one it runs, and a second delta update from whatever it runs works.
 */
import test from 'ava';
import { crc32 } from 'node:zlib';
import { FaultPlan, formatMemoryDevice, type TearMode } from '../src/persist/index.js';
import { makePatch } from '../src/link/delta/index.js';
import { GAIN, TEMP, TEMP_OID, f16, sensorBuild, sha256Hex } from './update-images.js';
import { boot as bootFaultDevice, copy, type Bytes, type Dev } from './support/fault-device.js';

const GEOMETRY = { flashSize: 64 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 2, framSize: 8192 };
const TEARS: TearMode[] = ['none', 'prefix', 'bits'];
const WINDOW = 1000;
const V1 = sensorBuild(1, 4000, { values: [TEMP, GAIN] });
const V2 = sensorBuild(2, 4000, { values: [TEMP, GAIN] });
const V3 = sensorBuild(3, 4000, { values: [TEMP, GAIN] });
const SHA: Record<string, string> = { v1: sha256Hex(V1), v2: sha256Hex(V2), v3: sha256Hex(V3) };
const nameOf = (sha: string | undefined): string => Object.entries(SHA).find(([, s]) => s === sha)?.[0] ?? `unknown(${sha})`;
const TEMP_V1 = 33.5;
const TEMP_V2 = 40;

const boot = (b: Bytes, plan?: FaultPlan): Promise<Dev> => bootFaultDevice(b, WINDOW, plan);

const temp = (d: Dev): number | null => {
  const r = d.engine.getValue(TEMP_OID);
  return r.ok ? r.value.value : null;
};

/** A delta update through the intake: patch from what runs to `to`, 100-byte writes, then the confirm window. */
async function deltaUpdate(d: Dev, from: Uint8Array, to: Uint8Array, plan: FaultPlan | null, tempUnderNew?: number): Promise<string> {
  const patch = makePatch(from, to, { windowBits: 11 }).bytes;
  const opened = d.intake.open({
    source: 'uart:test', totalBytes: to.length, crc32: crc32(to), sha256: sha256Hex(to),
    encoding: { kind: 'patch' }, streamBytes: patch.length, baseSha256: sha256Hex(from),
  });
  if (!opened.ok || opened.value.kind !== 'receiving') throw new Error(`open: ${JSON.stringify(opened)}`);
  const id = opened.value.id;
  for (let off = 0; off < patch.length; off += 100) {
    const w = d.intake.write(id, off, patch.subarray(off, off + 100));
    if (!w.ok) throw new Error(`write refused without a power cut: ${w.error.message}`);
  }
  const verdict = await d.intake.finish(id);
  if (plan?.tripped) return 'cut in commit';
  if (!verdict.ok) throw new Error(`update refused without a power cut: ${verdict.error.message}`);
  if (verdict.value.outcome !== 'updated') throw new Error(`unexpected verdict ${verdict.value.outcome}`);
  if (tempUnderNew !== undefined) {
    const set = d.engine.setValue(TEMP_OID, f16(tempUnderNew));
    if (!set.ok) throw new Error(set.error.message);
    await d.valueStore.flush().catch(() => undefined);
    if (plan?.tripped) return 'cut in value write';
  }
  const confirmed = d.sink.next((e) => (e.type === 'provisioning.persisted' && e.data['confirmed'] === true) || e.type === 'provisioning.error');
  d.clock.advance(WINDOW);
  const c = await confirmed;
  if (plan?.tripped) return 'cut in confirm';
  if (c.type === 'provisioning.error') throw new Error(`confirm failed without a power cut: ${JSON.stringify(c.data)}`);
  return 'complete';
}

async function baseDevice(): Promise<Bytes> {
  const b = formatMemoryDevice(GEOMETRY);
  const d = await boot(b);
  const r = await d.intake.load(V1, { source: 'sd:test#install' });
  if (!r.ok || r.value.outcome !== 'installed') throw new Error('install failed');
  const set = d.engine.setValue(TEMP_OID, f16(TEMP_V1));
  if (!set.ok) throw new Error(set.error.message);
  await d.valueStore.flush();
  return b;
}

test('delta update cut at every flash/FRAM operation, whole and torn: v1 or v2 with its values, never neither; a second delta works', async (t) => {
  t.timeout(180_000);
  t.not(SHA['v1'], SHA['v2']);
  const base = await baseDevice();
  const countPlan = new FaultPlan();
  const d0 = await boot(copy(base), countPlan);
  const before = countPlan.ops;
  t.is(await deltaUpdate(d0, V1, V2, countPlan, TEMP_V2), 'complete');
  const n = countPlan.ops - before;
  t.true(n > 0);
  let points = 0;
  const seen = new Set<string>();
  for (let k = 1; k <= n; k++) {
    for (const tear of TEARS) {
      const where = `op ${k}/${n} (${countPlan.log[before + k - 1]}) tear=${tear}`;
      const b = copy(base);
      const plan = new FaultPlan(before + k, tear, k * 7 + tear.length);
      const d = await boot(b, plan);
      let got: string;
      try {
        got = await deltaUpdate(d, V1, V2, plan, TEMP_V2);
      } catch (e) {
        if (!plan.tripped) throw e;
        got = 'cut (refused)';
      }
      t.true(plan.tripped, `${where}: the plan did not trip (${got})`);
      d.intake.dispose();
      const r = await boot(b);
      t.deepEqual(r.imageStore.audit(), [], `${where}: manifest/status inconsistent`);
      const ps = r.engine.ps();
      t.is(ps.length, 1, `${where}: ${ps.length} tasks run`);
      const runs = nameOf(ps[0]?.sha256);
      t.true(runs === 'v1' || runs === 'v2', `${where}: runs ${runs}`);
      t.is(r.imageStore.active()?.meta.sha256, ps[0]?.sha256, `${where}: the active slot is what runs`);
      t.is(temp(r), runs === 'v1' ? TEMP_V1 : TEMP_V2, `${where}: TEMP of ${runs}`);
      seen.add(`${got}->${runs}`);
      // a second delta update from whatever runs (its active slot is the base) works and survives a reboot
      const from = runs === 'v1' ? V1 : V2;
      const next = runs === 'v1' ? V2 : V3;
      t.is(await deltaUpdate(r, from, next, null), 'complete', `${where}: the second delta update`);
      const r2 = await boot(b);
      t.is(nameOf(r2.engine.ps()[0]?.sha256), nameOf(sha256Hex(next)), `${where}: the second update survives a reboot`);
      points++;
    }
  }
  // until the confirm record is whole on flash the device boots v1 (an unconfirmed test image is rolled back)
  t.true(seen.has('cut in commit->v1') && seen.has('cut in confirm->v1'), `cuts in every phase (${[...seen].join(', ')})`);
  // the uncut delta update, rebooted: v2 with v2's value
  const done = copy(base);
  t.is(await deltaUpdate(await boot(done), V1, V2, null, TEMP_V2), 'complete');
  const rd = await boot(done);
  t.is(nameOf(rd.engine.ps()[0]?.sha256), 'v2');
  t.is(temp(rd), TEMP_V2);
  const line = `persist-delta-fault: delta update v1 → v2: ${n} flash/FRAM operations × ${TEARS.length} tears = ${points} fault points (${[...seen].join(', ')})`;
  t.log(line);
  console.log(line);
});
