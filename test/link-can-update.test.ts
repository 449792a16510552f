/**
 * Updates and skip over CAN (docs/can_protocol.md "Updates and skip"): devices with flash and FRAM in
 * state directories, each behind its device intake, on the bus the environment selects (the virtual
 * bus, or SocketCAN with HSX_CAN_IFACE=vcan0 in the HIL lane — same assertions). A new build of the
 * running app is an UPDATE (values kept), the running image is CURRENT (no data moves), a refused
 * image leaves the old one running, `force` sends anyway. Every workflow runs twice on the same state
 * directories, the second time from what the first left (devices restarted in between, after their
 * confirm window). Waits are on events, never on sleeps; nothing here asserts timing.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CanBus } from '../src/link/can/bus.js';
import { CanMaster, type MasterOptions, type MasterResult } from '../src/link/can/master.js';
import { requestValue } from '../src/link/can/value-client.js';
import { bootCanNode, type CanNode } from './support/can-node.js';
import { CAN_SERIAL, openTestBus, spawnCli, type CliChild, type TestBus } from './support/can-bus.js';
import { f16, sensorBuild, sensorOfSize, sha256Hex, TEMP_OID } from './update-images.js';

const canTest = CAN_SERIAL ? test.serial : test;

/** Small flash (slots of 36 KiB) so that an image larger than a slot is still a valid HXE. */
const GEOMETRY = { flashSize: 96 << 10 };
const CONFIRM_MS = 30;
/** JavaScript runs 9–20× slower in the HIL VM (hil/README.md). */
const LONG = process.env['HSX_HIL_VM'] ? 1_800_000 : 300_000;
const short = (image: Uint8Array): string => sha256Hex(image).slice(0, 6);

type Dev = CanNode;

function boot(bus: TestBus, node: number, dir: string): Promise<Dev> {
  return bootCanNode(bus, node, dir, { confirmWindowMs: CONFIRM_MS, geometry: GEOMETRY });
}

/** The update (if any) is confirmed: nothing pending, the store's active image is known-good. */
const settled = (d: Dev): boolean => !d.dev.intake.confirmPending && (d.dev.storage.imageStore.active()?.confirmed ?? true);

/** Power-cycle: wait for the confirm window first (an unconfirmed update would revert), then close and boot again. */
async function restart(bus: TestBus, devs: Dev[]): Promise<Dev[]> {
  await Promise.all(devs.map((d) => d.until(() => settled(d))));
  const out: Dev[] = [];
  for (const d of devs) {
    d.listener.stop();
    await d.dev.close();
    await d.ep.close();
    out.push(await boot(bus, d.node, d.dir));
  }
  return out;
}

async function shutdown(devs: Dev[]): Promise<void> {
  await Promise.all(devs.map((d) => d.until(() => settled(d))));
  for (const d of devs) {
    d.listener.stop();
    await d.dev.close();
  }
}

interface Rig {
  bus: TestBus;
  client: CanBus;
  devs: Dev[];
  session: number;
}

async function rig(t: ExecutionContext, count: number, firstSession: number): Promise<Rig> {
  const bus = await openTestBus();
  const root = mkdtempSync(join(tmpdir(), 'can-update-'));
  const devs: Dev[] = [];
  for (let node = 1; node <= count; node++) devs.push(await boot(bus, node, join(root, `node${node}`)));
  const r: Rig = { bus, client: await bus.endpoint(), devs, session: firstSession };
  t.teardown(async () => {
    await shutdown(r.devs);
    await bus.close();
    rmSync(root, { recursive: true, force: true });
  });
  return r;
}

async function flash(r: Rig, image: Uint8Array, nodes: number[], extra: Partial<MasterOptions> = {}): Promise<MasterResult> {
  return new CanMaster({ bus: r.client, image, nodes, session: r.session++, timeoutMs: 1000, ...extra }).run();
}

const all = (r: Rig): number[] => r.devs.map((d) => d.node);
const runs = (d: Dev): string | undefined => d.dev.intake.primary()?.sha256;
const statuses = (res: MasterResult): string[] => res.verdicts.map((v) => v.status);

async function getTemp(r: Rig, node: number): Promise<number | undefined> {
  const v = await requestValue({ bus: r.client, node, oid: TEMP_OID });
  return v.ok ? v.value : undefined;
}

async function setTemp(r: Rig, node: number, value: number): Promise<boolean> {
  return (await requestValue({ bus: r.client, node, oid: TEMP_OID, raw: f16(value) })).ok;
}

const tempOf = (node: number, round: number): number => 20 + node * 0.5 + round * 10;

canTest('16 nodes: v1, distinct values over CAN SET, v2 is UPDATED everywhere with the values kept; v2 again is CURRENT with no data', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 16, 1);
  const v1 = sensorBuild(1);
  const v2 = sensorBuild(2);
  for (const round of [1, 2]) {
    // v1: installed on fresh devices; the second round starts on v2, so v1 is an update (back).
    const first = await flash(r, v1, all(r));
    t.true(first.ok, JSON.stringify(first.verdicts));
    t.deepEqual(new Set(statuses(first)), new Set([round === 1 ? 'READY' : 'UPDATED']), `round ${round}: v1`);
    t.true(r.devs.every((d) => runs(d) === sha256Hex(v1)));
    for (const d of r.devs) t.true(await setTemp(r, d.node, tempOf(d.node, round)), `SET on node ${d.node}`);

    const upd = await flash(r, v2, all(r));
    t.true(upd.ok, JSON.stringify(upd.verdicts));
    for (const v of upd.verdicts) t.like(v, { status: 'UPDATED', from: short(v1), to: short(v2) });
    for (const d of r.devs) {
      t.is(runs(d), sha256Hex(v2), `node ${d.node} runs v2`);
      t.is(d.dev.engine.ps().length, 1, 'one instance: the old one was replaced');
      t.is(await getTemp(r, d.node), tempOf(d.node, round), `node ${d.node}: value carried`);
    }

    const again = await flash(r, v2, all(r));
    t.true(again.ok);
    for (const v of again.verdicts) t.like(v, { status: 'CURRENT', from: short(v2), to: short(v2) });
    t.is(again.stats.sent.data, 0, 'no data frames');
    t.is(again.stats.sent.sync, 0, 'no SYNC frames');
    t.is(again.stats.sent.repair, 0);
    t.is(again.stats.heard.verdict, 0, 'no VERDICT frames: CURRENT nodes take no part');
    const frames = again.stats.frameBytes / again.stats.chunkSize;
    t.is(frames, 9 + 16 + 1, 'announce + 16 JOIN CURRENT + FINISH');
    t.log(`round ${round}: v1 ${first.stats.frameBytes / 8} frames, update ${upd.stats.frameBytes / 8} frames, re-flash ${frames} frames`);

    r.devs = await restart(r.bus, r.devs);
    for (const d of r.devs) {
      t.is(runs(d), sha256Hex(v2), `node ${d.node} boots v2`);
      t.is(await getTemp(r, d.node), tempOf(d.node, round), `node ${d.node}: value survives the restart`);
    }
  }
});

canTest('4 of 16 nodes on v1: only they take the data (12 CURRENT + 4 UPDATED), one image of data frames', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 16, 60);
  const v1 = sensorOfSize(11, 8192); // 1024 classic chunks: 16 windows, so the ACK rotation matters
  const v2 = sensorOfSize(12, 8192);
  const behind = [3, 7, 11, 16];
  const ahead = all(r).filter((n) => !behind.includes(n));
  for (const round of [1, 2]) {
    const base = await flash(r, v1, all(r));
    t.true(base.ok, JSON.stringify(base.verdicts));
    const split = await flash(r, v2, ahead);
    t.true(split.ok, JSON.stringify(split.verdicts));
    t.deepEqual(new Set(statuses(split)), new Set(['UPDATED']));

    const res = await flash(r, v2, all(r));
    t.true(res.ok, JSON.stringify(res.verdicts));
    for (const v of res.verdicts) {
      if (behind.includes(v.node)) t.like(v, { status: 'UPDATED', from: short(v1), to: short(v2) });
      else t.like(v, { status: 'CURRENT', to: short(v2) });
    }
    const chunks = Math.ceil(v2.length / 8);
    t.is(res.stats.sent.data, chunks, 'one image worth of data frames');
    t.is(res.stats.repairedChunks, res.stats.sent.repair);
    t.is(res.stats.heard.verdict, behind.length, 'verdicts only from the nodes that took part');
    t.true(r.devs.every((d) => runs(d) === sha256Hex(v2)));
    t.log(`round ${round}: ${res.stats.frameBytes / 8} frames (${res.stats.sent.data} data, ${res.stats.sent.repair} repairs, ${res.stats.heard.ack} acks, ${res.stats.polls} polls of a live node)`);
    r.devs = await restart(r.bus, r.devs);
  }
});

canTest('a refused update (bad CRC, larger than a flash slot) leaves v1 running with its value', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 4, 100);
  const v1 = sensorBuild(1);
  const badCrc = sensorBuild(2).slice();
  badCrc[badCrc.length - 8] = badCrc[badCrc.length - 8]! ^ 0x5a; // a code byte: the image CRC no longer matches
  const cap = r.devs[0]!.dev.engine.slotCapacity()!;
  const tooBig = sensorOfSize(3, cap + 4096);
  t.true(tooBig.length > cap);
  for (const round of [1, 2]) {
    const base = await flash(r, v1, all(r));
    t.true(base.ok, JSON.stringify(base.verdicts));
    // Round 2 starts on v1 already: CURRENT.
    t.deepEqual(new Set(statuses(base)), new Set([round === 1 ? 'READY' : 'CURRENT']));
    for (const d of r.devs) t.true(await setTemp(r, d.node, tempOf(d.node, round)));

    const bad = await flash(r, badCrc, all(r));
    t.false(bad.ok);
    for (const v of bad.verdicts) t.like(v, { status: 'EBADMSG' });
    const big = await flash(r, tooBig, all(r));
    t.false(big.ok);
    for (const v of big.verdicts) t.like(v, { status: 'ENOSPC', where: 'begin' });
    t.is(big.stats.sent.data, 0, 'refused at the announce: no data moved');
    for (const d of r.devs) {
      t.is(runs(d), sha256Hex(v1), `node ${d.node} still runs v1`);
      t.is(d.dev.engine.ps().length, 1);
      t.is(d.dev.engine.sessions().length, 0, 'no intake session left open');
      t.is(await getTemp(r, d.node), tempOf(d.node, round), `node ${d.node}: value intact`);
    }
    r.devs = await restart(r.bus, r.devs);
    for (const d of r.devs) {
      t.is(runs(d), sha256Hex(v1));
      t.is(await getTemp(r, d.node), tempOf(d.node, round));
    }
  }
});

canTest('force sends the image to nodes that run it already (UPDATED again, value kept)', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, 4, 140);
  const v2 = sensorBuild(2);
  for (const round of [1, 2]) {
    const base = await flash(r, v2, all(r));
    t.deepEqual(new Set(statuses(base)), new Set([round === 1 ? 'READY' : 'CURRENT']));
    for (const d of r.devs) t.true(await setTemp(r, d.node, tempOf(d.node, round)));
    const forced = await flash(r, v2, all(r), { force: true });
    t.true(forced.ok, JSON.stringify(forced.verdicts));
    for (const v of forced.verdicts) t.true(v.status === 'READY' || v.status === 'UPDATED', JSON.stringify(v));
    t.true(forced.verdicts.every((v) => v.status !== 'CURRENT'));
    t.is(forced.stats.sent.data, Math.ceil(v2.length / 8), 'the data moved');
    for (const d of r.devs) {
      t.is(runs(d), sha256Hex(v2));
      t.is(d.dev.engine.ps().length, 1);
      t.is(await getTemp(r, d.node), tempOf(d.node, round));
    }
    r.devs = await restart(r.bus, r.devs);
  }
});

canTest('the issue: `device --state` + `flash` twice is CURRENT, a new build is UPDATED (from → to); text, JSON and exit codes', async (t) => {
  t.timeout(LONG);
  const bus = await openTestBus();
  const state = mkdtempSync(join(tmpdir(), 'can-update-cli-'));
  let device: CliChild | null = null;
  t.teardown(async () => {
    device?.child.kill('SIGTERM');
    await device?.exited;
    await bus.close();
    rmSync(state, { recursive: true, force: true });
  });
  const files = join(state, 'images');
  const dir = join(state, 'node7');
  mkdirSync(files, { recursive: true });
  const v1 = sensorBuild(1);
  const v2 = sensorBuild(2);
  // Damaged bytes never reach the bus (the master checks the image first); an image the device
  // refuses for its own reasons: a multi-instance build whose values collide with the running app's.
  const damaged = sensorBuild(3).slice();
  damaged[damaged.length - 8] = damaged[damaged.length - 8]! ^ 0x5a;
  const refusedByDevice = sensorBuild(4, 16, { allowMultipleInstances: true });
  for (const [name, img] of [['v1', v1], ['v2', v2], ['damaged', damaged], ['bad', refusedByDevice]] as const) writeFileSync(join(files, `${name}.hxe`), img);
  const address = bus.processAddress();
  const startDevice = async (): Promise<CliChild> => {
    const d = spawnCli(['device', '--can', address, '--node', '7', '--state', dir, '--confirm-window-ms', String(CONFIRM_MS), '--json']);
    await d.waitFor((l) => l['type'] === 'ready');
    return d;
  };
  const flashCli = async (image: string, extra: string[] = []): Promise<{ code: number; out: string; lines: Array<Record<string, unknown>> }> => {
    const f = spawnCli(['flash', '--can', address, '--nodes', '7', '--can-timeout', '400', ...extra, join(files, `${image}.hxe`)]);
    const code = await f.exited;
    return { code, out: f.lines.map((l) => String(l['text'] ?? JSON.stringify(l))).join('\n'), lines: f.lines };
  };
  /** The device confirmed its update (the store's image became known-good). */
  const confirmed = (d: CliChild, after: number): Promise<unknown> =>
    d.waitFor((l) => d.lines.indexOf(l) >= after && l['type'] === 'event' && l['event'] === 'provisioning.persisted' && (l['data'] as Record<string, unknown>)['confirmed'] === true);

  device = await startDevice();
  for (const round of [1, 2]) {
    // Round 1: a fresh device installs v1. Round 2 starts on v2: v1 is an update back.
    const mark1 = device.lines.length;
    const first = await flashCli('v1');
    t.is(first.code, 0, first.out);
    if (round === 1) t.regex(first.out, /^\s+7\s+READY\s/m);
    else {
      t.regex(first.out, new RegExp(`^\\s+7\\s+UPDATED \\(${short(v2)} → ${short(v1)}\\)`, 'm'));
      await confirmed(device, mark1);
    }
    // The bug: the second flash of the same image failed with EEXIST. Now: CURRENT, exit 0.
    const second = await flashCli('v1');
    t.is(second.code, 0, second.out);
    t.regex(second.out, /^\s+7\s+CURRENT\s/m);
    t.regex(second.out, /1 nodes: 0 READY · 0 UPDATED · 1 CURRENT · 0 failed/);
    t.regex(second.out, /\(0 data,/);

    const mark = device.lines.length;
    const upd = await flashCli('v2', ['--json']);
    t.is(upd.code, 0, upd.out);
    t.like(upd.lines.find((l) => l['type'] === 'verdict'), { node: 7, status: 'UPDATED', from: short(v1), to: short(v2) });
    t.like(upd.lines.find((l) => l['type'] === 'summary'), { ok: true, ready: 0, updated: 1, current: 0, failed: 0 });
    t.like(await device.waitFor((l) => device!.lines.indexOf(l) >= mark && l['type'] === 'verdict'), { status: 'UPDATED', from: short(v1), to: short(v2) });
    await confirmed(device, mark);

    const wireBeforeDamaged = bus.framesOnWire();
    const damagedFlash = await flashCli('damaged', ['--json']);
    t.is(damagedFlash.code, 1, damagedFlash.out);
    t.like(damagedFlash.lines.find((l) => l['type'] === 'error'), { ok: false, error: { code: 'EBADMSG', reason: 'crc_mismatch', where: 'image' } });
    t.is(bus.framesOnWire(), wireBeforeDamaged, 'nothing of a damaged image goes on the bus');

    const refused = await flashCli('bad');
    t.is(refused.code, 1, refused.out);
    t.regex(refused.out, /^\s+7\s+EEXIST\s+\S+\s+\S+/m, 'the reason column is filled');
    t.regex(refused.out, /1 nodes: 0 READY · 0 UPDATED · 0 CURRENT · 1 failed/);

    // Power-cycle the device: it boots v2 (confirmed), and v2 is CURRENT.
    device.child.kill('SIGTERM');
    t.is(await device.exited, 0);
    device = await startDevice();
    t.like(device.lines.find((l) => l['type'] === 'restore'), { ok: true, appName: 'sensor_app' });
    const wireBefore = bus.framesOnWire();
    const after = await flashCli('v2', ['--json']);
    t.is(after.code, 0, after.out);
    t.like(after.lines.find((l) => l['type'] === 'verdict'), { status: 'CURRENT', to: short(v2) });
    const summary = after.lines.find((l) => l['type'] === 'summary')!;
    t.is(summary['frames'], 9 + 1 + 1, 'announce, JOIN CURRENT, FINISH');
    // Every frame the master counted reached the wire, the FINISH it posts just before closing included.
    if (wireBefore !== null) t.is(bus.framesOnWire()! - wireBefore, summary['frames'] as number);
  }
  // --force sends it anyway.
  const mark = device.lines.length;
  const forced = await flashCli('v2', ['--force']);
  t.is(forced.code, 0, forced.out);
  t.regex(forced.out, /^\s+7\s+(READY|UPDATED \(\w{6} → \w{6}\))\s/m);
  await confirmed(device, mark);
});
