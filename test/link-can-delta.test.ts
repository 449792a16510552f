/**
 * Compressed and delta transfers over CAN (issue 25; docs/delta.md, docs/can_protocol.md "Compressed and
 * delta transfers"). Devices with flash and FRAM in state directories, each behind its intake, on the bus
 * the environment selects (the cross-process virtual bus, or SocketCAN with HSX_CAN_IFACE=vcan0 in the HIL
 * lane). Three builds of one app that differ in a few bytes (v0, v1, v2), so patches are small and the
 * compressed image is not.
 *
 * - a `flash --can` process (the real CLI) with v0 and v1 in its store (--base): the v1 group and the v0
 *   group each get their own patch, current nodes are skipped, all end on v2 with their values;
 * - the same through the CanFlasher with 5 % frame loss at every node, repaired;
 * - no base in the store: one compressed broadcast to every node that needs the image;
 * - a store that resolves a node's base to an image it does not run: the node says so at the announce
 *   and gets the full image, never a patch for another base;
 * - a corrupted patch, a patch for another base: the old image keeps running, the verdict names why.
 *
 * Every workflow runs twice on the same state directories (the second time: everything CURRENT).
 * Waits are on events, never on sleeps; nothing here asserts timing.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage } from '../src/hxe/index.js';
import type { CanBus } from '../src/link/can/bus.js';
import type { FaultOptions } from '../src/link/can/faults.js';
import { CanFlasher, type CanFlashResult } from '../src/link/can/flasher.js';
import { CanMaster } from '../src/link/can/master.js';
import { requestValue } from '../src/link/can/value-client.js';
import { compressImage, makePatch, MemoryContentStore, type ImageSource } from '../src/link/delta/index.js';
import type { TargetVerdict } from '../src/link/flasher.js';
import { bootCanNode, type CanNode } from './support/can-node.js';
import { CAN_SERIAL, openTestBus, spawnCli, type TestBus } from './support/can-bus.js';
import { f16, GAIN, RESET, sha256Hex, TEMP, TEMP_OID } from './update-images.js';

const canTest = CAN_SERIAL ? test.serial : test;
const CONFIRM_MS = 30;
const LONG = process.env['HSX_HIL_VM'] ? 1_800_000 : 300_000;

/** Version `v` of one app: 6 KiB of code from a 16-symbol alphabet (compresses to about half), a few bytes edited per version. */
function build(v: number): Uint8Array {
  const code = new Uint8Array(6144);
  let x = 0x2545f491;
  for (let i = 0; i < code.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    code[i] = 0x40 + ((x >>> 16) & 15);
  }
  for (let k = 0; k < 3; k++) {
    const at = ((v + 1) * 997 + k * 1777) % (code.length - 8);
    for (let j = 0; j < 4; j++) code[at + j] = (v * 31 + j * 7 + k) & 0xff;
  }
  const r = buildImage({ appName: 'sensor_app', allowMultipleInstances: false, code, values: [TEMP, GAIN], commands: [RESET] });
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}
const V0 = build(0);
const V1 = build(1);
const V2 = build(2);
const sha = sha256Hex;

type Dev = CanNode;

function boot(bus: TestBus, node: number, dir: string, faults?: FaultOptions, codec?: false): Promise<Dev> {
  return bootCanNode(bus, node, dir, { confirmWindowMs: CONFIRM_MS, ...(faults ? { faults } : {}), ...(codec === false ? { codec } : {}) });
}

const settled = (d: Dev): boolean => !d.dev.intake.confirmPending && (d.dev.storage.imageStore.active()?.confirmed ?? true);
const runs = (d: Dev): string | undefined => d.dev.intake.primary()?.sha256;
const tempOf = (node: number): number => 20 + node * 0.5;

interface Rig {
  bus: TestBus;
  client: CanBus;
  devs: Dev[];
  root: string;
  faults: ((node: number) => FaultOptions | undefined) | undefined;
}

async function rig(t: ExecutionContext, count: number, faults?: (node: number) => FaultOptions | undefined, rawOnly: number[] = []): Promise<Rig> {
  const bus = await openTestBus();
  const root = mkdtempSync(join(tmpdir(), 'can-delta-'));
  const devs: Dev[] = [];
  for (let node = 1; node <= count; node++) devs.push(await boot(bus, node, join(root, `node${node}`), faults?.(node), rawOnly.includes(node) ? false : undefined));
  const r: Rig = { bus, client: await bus.endpoint(), devs, root, faults };
  t.teardown(async () => {
    await Promise.all(r.devs.map((d) => d.until(() => settled(d))));
    for (const d of r.devs) {
      d.listener.stop();
      await d.dev.close();
    }
    await bus.close();
    rmSync(root, { recursive: true, force: true });
  });
  return r;
}

/** Power-cycle every device after its confirm window (the second run starts from what the first left). */
async function restart(r: Rig): Promise<void> {
  await Promise.all(r.devs.map((d) => d.until(() => settled(d))));
  const out: Dev[] = [];
  for (const d of r.devs) {
    d.listener.stop();
    await d.dev.close();
    out.push(await boot(r.bus, d.node, d.dir, r.faults?.(d.node)));
  }
  r.devs = out;
}

let session = 100;
/** Puts `image` on `nodes` the plain way (raw, one broadcast) and gives each its own temperature. */
async function provision(t: ExecutionContext, r: Rig, image: Uint8Array, nodes: number[]): Promise<void> {
  const res = await new CanMaster({ bus: r.client, image, nodes, session: session++, timeoutMs: 1000 }).run();
  t.true(res.ok, JSON.stringify(res.verdicts));
  for (const n of nodes) {
    const d = r.devs[n - 1]!;
    await d.until(() => settled(d));
    t.true((await requestValue({ bus: r.client, node: n, oid: TEMP_OID, raw: f16(tempOf(n)) })).ok, `SET on node ${n}`);
  }
}

/** Nodes 1-8 on v1, 9-12 on v0, 13-16 on v2 (the fleet), each with its own value. */
async function fleet(t: ExecutionContext, r: Rig): Promise<void> {
  await provision(t, r, V1, [1, 2, 3, 4, 5, 6, 7, 8]);
  await provision(t, r, V0, [9, 10, 11, 12]);
  await provision(t, r, V2, [13, 14, 15, 16]);
}

async function allOnV2WithValues(t: ExecutionContext, r: Rig): Promise<void> {
  for (const d of r.devs) {
    t.is(runs(d), sha(V2), `node ${d.node} runs v2`);
    t.is(d.dev.engine.storedSha256(), sha(V2), `node ${d.node}: v2 in the active slot`);
    const v = await requestValue({ bus: r.client, node: d.node, oid: TEMP_OID });
    t.like(v, { ok: true, value: tempOf(d.node) }, `node ${d.node}: value carried`);
  }
}

const transferOf = (v: TargetVerdict | undefined): Extract<TargetVerdict, { ok: true }>['transfer'] => (v?.ok ? v.transfer : undefined);

canTest('a flash --can process, v0 and v1 in its store: the v1 and v0 groups each get their own patch, v2 nodes are CURRENT, all 16 end on v2 with their values (twice)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 16);
  await fleet(t, r);
  const files = mkdtempSync(join(tmpdir(), 'can-delta-files-'));
  t.teardown(() => rmSync(files, { recursive: true, force: true }));
  for (const [name, img] of [['v0', V0], ['v1', V1], ['v2', V2]] as const) writeFileSync(join(files, `${name}.hxe`), img);
  const cache = join(files, 'cache');
  const compressed = compressImage(V2).bytes.length;
  for (const round of [1, 2]) {
    const flash = spawnCli(['flash', '--can', r.bus.processAddress(), '--nodes', '1-16', '--json', '--can-timeout', '1000', '--can-session', String(10 * round),
      '--cache', cache, '--base', join(files, 'v0.hxe'), '--base', join(files, 'v1.hxe'), join(files, 'v2.hxe')]);
    const code = await flash.exited;
    t.is(code, 0, flash.stderr());
    const plan = flash.lines.find((l) => l['type'] === 'plan') as { current: number[]; broadcasts: Array<{ mode: string; nodes: number[]; base: string | null; stream_bytes: number }> };
    const verdicts = flash.lines.filter((l) => l['type'] === 'verdict');
    const summary = flash.lines.find((l) => l['type'] === 'summary')!;
    t.is(verdicts.length, 16);
    t.log(`round ${round}: plan ${JSON.stringify(plan.broadcasts.map((b) => [b.mode, b.nodes.join(','), b.stream_bytes]))}; ${JSON.stringify(summary['sent'])}`);
    // The plan came before any data (its line precedes every verdict).
    t.true(flash.lines.indexOf(plan) < flash.lines.indexOf(verdicts[0]!));
    if (round === 1) {
      t.deepEqual(plan.current, [13, 14, 15, 16]);
      t.deepEqual(plan.broadcasts.map((b) => [b.mode, b.nodes, b.base]), [
        ['DELTA', [1, 2, 3, 4, 5, 6, 7, 8], sha(V1)],
        ['DELTA', [9, 10, 11, 12], sha(V0)],
      ]);
      for (const b of plan.broadcasts) t.true(b.stream_bytes < compressed, `a patch (${b.stream_bytes}) is smaller than the compressed image (${compressed})`);
      for (const v of verdicts) {
        const n = v['node'] as number;
        if (n >= 13) {
          t.like(v, { status: 'CURRENT', mode: 'CURRENT', bytes_on_wire: 0, ratio: 0 });
          continue;
        }
        const b = plan.broadcasts[n <= 8 ? 0 : 1]!;
        t.like(v, { status: 'UPDATED', from: sha(n <= 8 ? V1 : V0).slice(0, 6), to: sha(V2).slice(0, 6), mode: 'DELTA', base: b.base, stream_bytes: b.stream_bytes });
        t.true((v['bytes_on_wire'] as number) >= b.stream_bytes && (v['ratio'] as number) < 0.5, `node ${n}: ${v['bytes_on_wire']} bytes, ratio ${v['ratio']}`);
      }
      // Only the two patches crossed the bus (one data pass each), never a full image.
      t.is((summary['sent'] as { data: number }).data, plan.broadcasts.reduce((n, b) => n + Math.ceil(b.stream_bytes / 8), 0));
    } else {
      t.deepEqual(plan.current, Array.from({ length: 16 }, (_, i) => i + 1));
      t.deepEqual(plan.broadcasts, []);
      for (const v of verdicts) t.like(v, { status: 'CURRENT', mode: 'CURRENT', bytes_on_wire: 0 });
      t.like(summary['sent'], { data: 0, sync: 0, repair: 0 });
      // The human output: the plan on stderr before anything moves, the transfer column per node.
      const human = spawnCli(['flash', '--can', r.bus.processAddress(), '--nodes', '1-16', '--can-timeout', '1000', '--can-session', '40', '--cache', cache, join(files, 'v2.hxe')]);
      t.is(await human.exited, 0, human.stderr());
      t.regex(human.stderr(), /plan: \d+-byte image; 16 CURRENT \(skipped\): nodes 1-16; 0 to send in 0 broadcasts/);
      const rows = human.lines.map((l) => String(l['text'] ?? '')).filter((l) => /^\s+\d+\s+CURRENT/.test(l));
      t.is(rows.length, 16);
      t.true(rows.every((l) => l.includes('CURRENT 0 B')), rows.join('\n'));
    }
    await allOnV2WithValues(t, r);
    await restart(r);
    await allOnV2WithValues(t, r);
  }
});

async function flashWith(r: Rig, store: ImageSource, image: Uint8Array, extra: { compress?: boolean; delta?: boolean } = {}): Promise<CanFlashResult> {
  const flasher = new CanFlasher({ name: 'test', bus: r.client, images: store });
  const res = await flasher.flash({ image, targets: r.devs.map((d) => String(d.node)), options: { timeoutMs: 1000, session: session, ...extra } });
  session = (session % 200) + 10;
  await Promise.all(r.devs.map((d) => d.until(() => settled(d))));
  return res;
}

canTest('the same with 5 % frame loss at every node: two patches, repaired, all 16 on v2 with their values (twice)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 16, (node) => ({ loss: 0.05, seed: 500 + node }));
  await fleet(t, r);
  const store = new MemoryContentStore();
  await store.put(V0);
  await store.put(V1);
  for (const round of [1, 2]) {
    const res = await flashWith(r, store, V2);
    t.true(res.ok, JSON.stringify(res.nodeVerdicts));
    const modes = res.verdicts.map((v) => transferOf(v)?.mode);
    t.log(`round ${round}: ${res.stats.repairedChunks} chunks repaired in ${res.stats.rounds} rounds; modes ${modes.join(',')}`);
    if (round === 1) {
      t.deepEqual(res.plan?.broadcasts.map((b) => [b.mode, b.nodes, b.base]), [['delta', [1, 2, 3, 4, 5, 6, 7, 8], sha(V1)], ['delta', [9, 10, 11, 12], sha(V0)]]);
      t.deepEqual(modes, [...Array(12).fill('delta'), ...Array(4).fill('current')]);
      t.true(res.stats.repairedChunks > 0, 'frames were lost and repaired');
      for (const v of res.nodeVerdicts) t.is(v.status, v.node <= 12 ? 'UPDATED' : 'CURRENT');
    } else {
      t.deepEqual(modes, Array(16).fill('current'));
      t.is(res.stats.sent.data, 0);
    }
    await allOnV2WithValues(t, r);
    await restart(r);
  }
});

canTest('no base in the store: every node that needs v2 gets the compressed image, in one broadcast (twice)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 16);
  await fleet(t, r);
  const store = new MemoryContentStore();
  const compressed = compressImage(V2).bytes.length;
  for (const round of [1, 2]) {
    const res = await flashWith(r, store, V2);
    t.true(res.ok, JSON.stringify(res.nodeVerdicts));
    if (round === 1) {
      t.deepEqual(res.plan?.broadcasts.map((b) => [b.mode, b.nodes, b.streamBytes]), [['compressed', [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], compressed]]);
      t.true(compressed < V2.length * 0.75, `compressed ${compressed} of ${V2.length}`);
      for (const v of res.verdicts) {
        const tr = transferOf(v);
        if (Number(v.target) <= 12) t.like(tr, { mode: 'compressed', base: null, stream_bytes: compressed, image_bytes: V2.length, bytes_on_wire: res.stats.payloadBytes });
        else t.like(tr, { mode: 'current', bytes_on_wire: 0 });
      }
      t.is(res.stats.sent.data, Math.ceil(compressed / 8), 'one compressed image of data frames');
    } else {
      t.true(res.verdicts.every((v) => transferOf(v)?.mode === 'current'));
      t.is(res.stats.sent.data, 0);
    }
    await allOnV2WithValues(t, r);
    await restart(r);
  }
});

/** A store that resolves every prefix to v0: its patch is for a base the v1 nodes do not run. */
class WrongBaseStore extends MemoryContentStore {
  override async resolve(_prefix: string): Promise<string | null> {
    return sha(V0);
  }
}

canTest('a node whose active slot does not hash to the base of its patch says so at the announce and gets the full image (twice)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 4);
  await provision(t, r, V1, [1, 2]);
  await provision(t, r, V0, [3, 4]);
  const store = new WrongBaseStore();
  await store.put(V0);
  for (const round of [1, 2]) {
    const plans: string[] = [];
    const flasher = new CanFlasher({ name: 'test', bus: r.client, images: store });
    const res = await flasher.flash({
      image: V2, targets: ['1', '2', '3', '4'], options: { timeoutMs: 1000, session: 40 + 10 * round },
      onPlan: (p) => plans.push(p.broadcasts.map((b) => `${b.mode}:${b.nodes.join(',')}`).join(' ')),
    });
    await Promise.all(r.devs.map((d) => d.until(() => settled(d))));
    t.true(res.ok, JSON.stringify(res.nodeVerdicts));
    if (round === 1) {
      // One patch from v0 for everyone (the store says so); nodes 1 and 2 refuse it and then get the compressed image.
      t.deepEqual(plans, ['delta:1,2,3,4', 'compressed:1,2']);
      for (const n of [1, 2]) t.like(transferOf(res.verdicts[n - 1]), { mode: 'compressed', fallback: 'base_mismatch' });
      for (const n of [3, 4]) t.like(transferOf(res.verdicts[n - 1]), { mode: 'delta', base: sha(V0) });
      for (const n of [1, 2]) t.like(r.devs[n - 1]!.listener.verdicts.find((v) => v.reason === 'base_mismatch'), { status: 'EBADMSG', where: 'begin' });
    } else {
      t.deepEqual(plans, ['']);
      t.true(res.verdicts.every((v) => transferOf(v)?.mode === 'current'));
    }
    for (const d of r.devs) t.is(runs(d), sha(V2));
    await restart(r);
  }
});

canTest('a patch for another base and a corrupted patch: the old image keeps running with its value; the verdict names the mismatch (twice)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 2);
  await provision(t, r, V1, [1, 2]);
  const patch = makePatch(V1, V2, { windowBits: 11 }).bytes;
  const fromV0 = makePatch(V0, V2, { windowBits: 11 }).bytes;
  for (const round of [1, 2]) {
    const send = (bytes: Uint8Array, base: Uint8Array): Promise<Awaited<ReturnType<CanMaster['run']>>> =>
      new CanMaster({ bus: r.client, image: V2, nodes: [1, 2], session: session++, timeoutMs: 1000, stream: { encoding: { kind: 'patch' }, bytes, baseSha256: base } }).run();
    // Announced for v0, the nodes run v1: refused at the announce, no data moves.
    const other = await send(fromV0, Buffer.from(sha(V0), 'hex'));
    for (const v of other.verdicts) t.like(v, { status: 'EBADMSG', where: 'begin', reason: 'base_mismatch' });
    t.is(other.stats.sent.data, 0);
    // Announced for v1 but made from v0 (the patch header names v0): refused by the applier at its header.
    const lying = await send(fromV0, Buffer.from(sha(V1), 'hex'));
    for (const v of lying.verdicts) t.like(v, { status: 'EBADMSG', reason: 'base_mismatch' });
    // A byte flipped in the body: the rebuilt image is not v2 (or does not decode).
    const bad = patch.slice();
    const at = Math.floor(bad.length * 0.6);
    bad[at] = bad[at]! ^ 0xa5;
    const corrupt = await send(bad, Buffer.from(sha(V1), 'hex'));
    for (const v of corrupt.verdicts) t.like(v, { status: 'EBADMSG', where: 'write', reason: 'bad_code_lengths' }, JSON.stringify(v));
    t.log(`round ${round}: corrupted patch → ${JSON.stringify(corrupt.verdicts)}`);
    // A compressed image whose decoded bytes do not hash to the announced SHA-256.
    const z = compressImage(V2);
    const flipped = z.bytes.slice();
    flipped[flipped.length - 3] = flipped[flipped.length - 3]! ^ 0x01;
    const badZ = await new CanMaster({ bus: r.client, image: V2, nodes: [1, 2], session: session++, timeoutMs: 1000, stream: { encoding: { kind: 'deflate', windowBits: z.windowBits }, bytes: flipped } }).run();
    // (the flip makes the stream decode past the announced size here: refused before a byte too many is written)
    for (const v of badZ.verdicts) t.like(v, { status: 'ENOSPC', reason: 'output_overflow' }, JSON.stringify(v));
    // A patch that rebuilds another image than the announced one: refused as a SHA-256 mismatch of the
    // rebuilt image, before anything is written to the inactive slot.
    const v2x = V2.slice();
    v2x[3000] = v2x[3000]! ^ 0x10; // in the code
    const elsewhere = await send(makePatch(V1, v2x, { windowBits: 11 }).bytes, Buffer.from(sha(V1), 'hex'));
    t.log(`round ${round}: patch to another image → ${JSON.stringify(elsewhere.verdicts)}`);
    for (const v of elsewhere.verdicts) t.like(v, { status: 'EBADMSG', reason: 'sha256_mismatch' }, JSON.stringify(v));
    t.log(`round ${round}: corrupted compressed image → ${JSON.stringify(badZ.verdicts)}`);
    for (const d of r.devs) {
      t.is(runs(d), sha(V1), `node ${d.node}: v1 still runs`);
      t.is(d.dev.engine.storedSha256(), sha(V1), `node ${d.node}: v1 still in the active slot`);
      t.like(await requestValue({ bus: r.client, node: d.node, oid: TEMP_OID }), { ok: true, value: tempOf(d.node) });
    }
    await restart(r);
  }
});

canTest('a node without codec support gets the raw image; --no-delta, --no-compress and both turned off (each flash twice: the second CURRENT)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 4, undefined, [4]);
  await provision(t, r, V1, [1, 2, 3, 4]);
  const store = new MemoryContentStore();
  await store.put(V1);
  const steps: Array<{ image: Uint8Array; options: { compress?: boolean; delta?: boolean }; modes: string[]; probe: boolean }> = [
    { image: V2, options: {}, modes: ['delta', 'delta', 'delta', 'raw'], probe: true },
    { image: build(3), options: { delta: false }, modes: ['compressed', 'compressed', 'compressed', 'raw'], probe: true },
    { image: build(4), options: { compress: false }, modes: ['delta', 'delta', 'delta', 'raw'], probe: true },
    { image: build(5), options: { compress: false, delta: false }, modes: ['raw', 'raw', 'raw', 'raw'], probe: false },
  ];
  for (const step of steps) {
    for (const pass of [1, 2]) {
      const res = await flashWith(r, store, step.image, step.options);
      const what = `${JSON.stringify(step.options)} pass ${pass}`;
      t.true(res.ok, `${what}: ${JSON.stringify(res.nodeVerdicts)}`);
      const modes = res.verdicts.map((v) => transferOf(v)?.mode);
      t.deepEqual(modes, pass === 1 ? step.modes : ['current', 'current', 'current', 'current'], what);
      // No probe when both are off: one raw broadcast, as before plans.
      t.is(res.stats.sessions.length, pass === 1 ? (step.probe ? new Set(step.modes).size + 1 : 1) : 1, `${what}: broadcasts`);
      if (pass === 1) {
        const raw = transferOf(res.verdicts[3]);
        t.like(raw, { stream_bytes: step.image.length, image_bytes: step.image.length });
        t.true(raw!.bytes_on_wire >= step.image.length);
      }
      for (const d of r.devs) t.is(runs(d), sha(step.image), `${what}: node ${d.node}`);
    }
  }
  for (const d of r.devs) t.like(await requestValue({ bus: r.client, node: d.node, oid: TEMP_OID }), { ok: true, value: tempOf(d.node) });
});

canTest('CAN FD: a patch per base in 64-byte chunks (version 2 announce in two parts), twice', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 3);
  await provision(t, r, V1, [1, 2]);
  await provision(t, r, V0, [3]);
  const fdClient = await r.bus.endpoint({ fd: true });
  const store = new MemoryContentStore();
  await store.put(V1);
  await store.put(V0);
  for (const round of [1, 2]) {
    const flasher = new CanFlasher({ name: 'test', bus: fdClient, images: store });
    const res = await flasher.flash({ image: V2, targets: ['1', '2', '3'], options: { fd: true, timeoutMs: 1000, session: 150 + 10 * round } });
    await Promise.all(r.devs.map((d) => d.until(() => settled(d))));
    t.true(res.ok, JSON.stringify(res.nodeVerdicts));
    t.is(res.stats.chunkSize, 64);
    const modes = res.verdicts.map((v) => transferOf(v)?.mode);
    if (round === 1) {
      t.deepEqual(modes, ['delta', 'delta', 'delta']);
      t.deepEqual(res.plan?.broadcasts.map((b) => [b.mode, b.nodes]), [['delta', [1, 2]], ['delta', [3]]]);
      t.deepEqual(res.stats.sessions.map((s) => s.sent.announce), [1, 2, 2], 'probe: 1 FD part (version 1); each broadcast: 2 (version 2)');
    } else t.deepEqual(modes, ['current', 'current', 'current']);
    for (const d of r.devs) t.is(runs(d), sha(V2));
  }
});
