import test, { type ExecutionContext } from 'ava';
import {
  FaultPlan, PowerFail, bootMemory, formatMemoryDevice, openStores, patternImage, testMeta, ManualClock,
  type SlotImageStore, type TearMode, type ValueJournal,
} from '../src/persist/index.js';

/**
 * Power-fail sweeps (MCUboot simulator style, plus torn writes): an operation sequence is run
 * once to count its erase/program operations (N), then replayed from the same starting bytes
 * with the power failing at every operation 1..N, with the failing operation not happening,
 * happening as a byte prefix, or (flash) clearing only some of its bits. After each failure the
 * devices are "rebooted" (fresh models over the surviving bytes), recovered, and checked.
 */
const GEOMETRY = { flashSize: 64 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 2, framSize: 8192 };
const TEARS: TearMode[] = ['none', 'prefix', 'bits'];
const SCHEMA = { valueType: 'f16' };
const KEYS = [0x11, 0x12, 0x13, 0x14];

interface Stores { imageStore: SlotImageStore; valueStore: ValueJournal; clock: ManualClock }
interface Bytes { flashBytes: Uint8Array; framBytes: Uint8Array }

const copy = (b: Bytes): Bytes => ({ flashBytes: b.flashBytes.slice(), framBytes: b.framBytes.slice() });

async function open(b: Bytes, plan?: FaultPlan): Promise<Stores> {
  const { flash, fram } = bootMemory(b.flashBytes, b.framBytes, plan);
  const clock = new ManualClock();
  return { ...(await openStores(flash, fram, undefined, { clock })), clock };
}

function valueOf(s: Stores, key: number): number | null {
  const r = s.valueStore.read(key, SCHEMA);
  return r.ok ? r.raw : null;
}

const IMG1 = patternImage(1, 1500);
const IMG2 = patternImage(2, 2100);
const IMG3 = patternImage(3, 900);
const oldValue = (k: number) => 0x3c00 + k;
const newValue = (k: number) => 0x4000 + k;

async function commit(s: Stores, img: Uint8Array, version: string, sc: number, mode: 'test' | 'permanent' = 'permanent') {
  return s.imageStore.commit(img, testMeta(version, sc), mode);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** Which of the candidate images the device holds, wholly; null if none. */
function activeIs(s: Stores, candidates: Record<string, Uint8Array>): string | null {
  const a = s.imageStore.active();
  if (!a) return null;
  for (const [name, img] of Object.entries(candidates)) if (sameBytes(a.image, img) && a.meta.version === name) return name;
  return 'garbage';
}

/**
 * Count the operations of `action`, then replay it failing at each one with each tear mode.
 * `check` gets the recovered stores; afterwards a further commit must succeed and survive a reboot.
 */
async function sweep(t: ExecutionContext, label: string, base: Bytes, action: (s: Stores) => Promise<void>, check: (s: Stores, where: string) => void): Promise<number> {
  const dry = copy(base);
  const countPlan = new FaultPlan();
  const s0 = await open(dry, countPlan);
  const before = countPlan.ops;
  await action(s0);
  const n = countPlan.ops - before;
  t.true(n > 0, `${label}: the action issued no device operations`);
  let points = 0;
  for (let k = 1; k <= n; k++) {
    for (const tear of TEARS) {
      const where = `${label} op ${k}/${n} (${countPlan.log[before + k - 1]}) tear=${tear}`;
      const b = copy(base);
      const plan = new FaultPlan(before + k, tear, k * 7 + tear.length);
      const s = await open(b, plan);
      const err = await action(s).then(() => null, (e: unknown) => e);
      t.true(err instanceof PowerFail, `${where}: expected the power to fail, got ${String(err)}`);
      // reboot + recover
      const r = await open(b);
      t.deepEqual(r.imageStore.audit(), [], `${where}: manifest/status inconsistent`);
      check(r, where);
      // recovery is idempotent: a second reboot sees the same state
      const r2 = await open(b);
      t.deepEqual(r2.imageStore.status(), r.imageStore.status(), `${where}: second reboot changed the state`);
      // and the device still works
      const sc = r2.imageStore.securityCounter();
      await commit(r2, IMG3, 'v3', sc);
      const r3 = await open(b);
      t.is(activeIs(r3, { v3: IMG3 }), 'v3', `${where}: commit after recovery did not stick`);
      t.deepEqual(r3.imageStore.audit(), [], `${where}: inconsistent after the second commit`);
      points++;
    }
  }
  // And the power failing just after the last operation: the action completed.
  const done = copy(base);
  await action(await open(done));
  const r = await open(done);
  t.deepEqual(r.imageStore.audit(), [], `${label} completed: manifest/status inconsistent`);
  check(r, `${label} completed`);
  return points;
}

/** A device holding image v1 (good) and old values; `extraCommits` shifts the status ring's phase. */
async function baseDevice(extraCommits: number): Promise<Bytes> {
  const b = formatMemoryDevice(GEOMETRY);
  const s = await open(b);
  for (const k of KEYS) s.valueStore.write(k, oldValue(k), SCHEMA);
  await s.valueStore.flush();
  for (let i = 0; i < extraCommits; i++) await commit(s, patternImage(100 + i, 300), `pre${i}`, 1);
  await commit(s, IMG1, 'v1', 1);
  return b;
}

function valuesOldOrNew(t: ExecutionContext, s: Stores, where: string): 'old' | 'new' | 'mixed' {
  const got = KEYS.map((k) => valueOf(s, k));
  KEYS.forEach((k, i) => t.true(got[i] === oldValue(k) || got[i] === newValue(k), `${where}: key ${k} is ${got[i]}, neither old nor new`));
  if (got.every((v, i) => v === oldValue(KEYS[i]!))) return 'old';
  if (got.every((v, i) => v === newValue(KEYS[i]!))) return 'new';
  return 'mixed';
}

test('commit interrupted at every operation, whole and torn, recovers to old or new', async (t) => {
  t.timeout(120_000);
  let points = 0;
  const outcomes = new Set<string>();
  const action = async (s: Stores) => {
    for (const k of KEYS) s.valueStore.write(k, newValue(k), SCHEMA, 60_000); // pending, flushed by the commit
    await commit(s, IMG2, 'v2', 2);
  };
  // Phase 0: a fresh ring, slot B empty (no invalidation record). Then the first ring phase
  // (number of earlier commits) where the commit's status records enter the next status sector,
  // so the sweep also interrupts a status-sector erase (and the target slot must be invalidated first).
  let erasePhase = -1;
  for (let k = 1; k <= 24 && erasePhase < 0; k++) {
    const plan = new FaultPlan();
    await action(await open(copy(await baseDevice(k)), plan));
    const statusErase = plan.log.some((op) => /^flash\.erase@(4096|8192)\+/.test(op));
    if (statusErase) erasePhase = k;
  }
  t.true(erasePhase > 0, 'found a ring phase where the commit erases a status sector');
  for (const phase of [0, erasePhase]) {
    const base = await baseDevice(phase);
    points += await sweep(t, `commit[phase ${phase}]`, base, action, (s, where) => {
      const which = activeIs(s, { v1: IMG1, v2: IMG2 });
      t.true(which === 'v1' || which === 'v2', `${where}: active image is ${which}`);
      outcomes.add(which!);
      t.is(s.imageStore.securityCounter(), which === 'v2' ? 2 : s.imageStore.securityCounter(), where);
      t.true(s.imageStore.securityCounter() >= 1, `${where}: security counter went backwards`);
      valuesOldOrNew(t, s, where);
    });
  }
  t.log(`commit: ${points} interruption points covered`);
  console.log(`persist-fault: commit sweep covered ${points} interruption points (ring phases 0 and ${erasePhase})`);
  t.true(points > 0);
  t.deepEqual([...outcomes].sort(), ['v1', 'v2'], 'the sweep saw both outcomes');
});

test('test-mode commit interrupted anywhere: the unconfirmed image never survives a reboot', async (t) => {
  t.timeout(120_000);
  const base = await baseDevice(0);
  const points = await sweep(t, 'commit[test]', base, async (s) => {
    for (const k of KEYS) s.valueStore.write(k, newValue(k), SCHEMA, 60_000);
    await commit(s, IMG2, 'v2', 2, 'test');
  }, (s, where) => {
    t.is(activeIs(s, { v1: IMG1, v2: IMG2 }), 'v1', `${where}: an unconfirmed test image must revert at boot`);
    valuesOldOrNew(t, s, where);
  });
  console.log(`persist-fault: test-mode commit sweep covered ${points} interruption points`);
  t.true(points > 0);
});

test('rollback interrupted at every operation: old image with old values, or new image with new values', async (t) => {
  t.timeout(120_000);
  const b = await baseDevice(0);
  const s = await open(b);
  await commit(s, IMG2, 'v2', 2);
  for (const k of KEYS) s.valueStore.write(k, newValue(k), SCHEMA);
  await s.valueStore.flush();
  const seen = new Set<string>();
  const points = await sweep(t, 'rollback', b, async (st) => {
    await st.imageStore.rollback('operator');
  }, (st, where) => {
    const which = activeIs(st, { v1: IMG1, v2: IMG2 });
    const vals = valuesOldOrNew(t, st, where);
    t.true((which === 'v2' && vals === 'new') || (which === 'v1' && vals === 'old'), `${where}: image ${which} with ${vals} values`);
    seen.add(which!);
  });
  console.log(`persist-fault: rollback sweep covered ${points} interruption points`);
  t.true(points > 0);
  t.deepEqual([...seen].sort(), ['v1', 'v2']);
});

test('value journal interrupted at every operation (appends and a compaction): each key old or new', async (t) => {
  t.timeout(120_000);
  const b = await baseDevice(0);
  const s = await open(b);
  // Fill the live bank to 5 free records so the action's second flush must compact.
  const info = s.valueStore.bankInfo();
  const free = (info.bankSize - info.usedBytes) / 16;
  for (let i = 0; i < free - 5; i++) {
    s.valueStore.write(0x99, i & 0xffff, SCHEMA);
    await s.valueStore.flush(); // one record per flush (writes of one key coalesce)
  }
  t.is((s.valueStore.bankInfo().bankSize - s.valueStore.bankInfo().usedBytes) / 16, 5);
  const filler = valueOf(s, 0x99);
  const genBefore = s.valueStore.bankInfo().generation;
  let compacted = false;
  const points = await sweep(t, 'journal', b, async (st) => {
    for (const group of [[0x11, 0x12, 0x13], [0x14, 0x11], [0x12]]) {
      for (const k of group) st.valueStore.write(k, newValue(k), SCHEMA, 60_000);
      await st.valueStore.flush();
    }
    compacted = st.valueStore.bankInfo().generation > genBefore;
  }, (st, where) => {
    valuesOldOrNew(t, st, where);
    t.is(valueOf(st, 0x99), filler, `${where}: an untouched key changed`);
  });
  t.true(compacted, 'the sweep covered a bank compaction');
  console.log(`persist-fault: value journal sweep covered ${points} interruption points`);
  t.true(points > 0);
});
