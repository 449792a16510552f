/**
 * Scan over CAN (docs/can_protocol.md, "Scan"): simulated devices with flash and FRAM in state
 * directories behind their intakes, on the bus the environment selects (the virtual bus, or SocketCAN
 * with HSX_CAN_IFACE=vcan0 in the HIL lane — same assertions). Every scan runs twice in a row and must
 * say the same. A scan given a node list ends once those nodes answered; the scans without one wait
 * their timeout (nothing here asserts timing). Plus the documented frames built by hand, and the
 * `scan` command through the real CLI (test/hxe-cli-run.ts).
 */
import test, { type ExecutionContext } from 'ava';
import { runCli } from './hxe-cli-run.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { CanBus } from '../src/link/can/bus.js';
import { BROADCAST, classifyId, DEFAULT_ID_PLAN, ProvOp, provId, ValueOp, valueId } from '../src/link/can/ids.js';
import { CanListener } from '../src/link/can/listener.js';
import { CanMaster } from '../src/link/can/master.js';
import {
  decodeInfoBody, decodeInfoRequest, encodeInfoBody, encodeInfoParts, encodeInfoRequest, InfoAssembler, type InfoBody,
} from '../src/link/can/messages.js';
import { scanCan, scanCanReport } from '../src/link/can/scan.js';
import type { InventoryEntry } from '../src/link/flasher.js';
import { openSimulatedDevice } from '../src/persist/simulated-device.js';
import { bootCanNode, type CanNode } from './support/can-node.js';
import { CAN_SERIAL, openTestBus, type TestBus } from './support/can-bus.js';
import { sensorBuild, sha256Hex } from './update-images.js';

const canTest = CAN_SERIAL ? test.serial : test;

const GEOMETRY = { flashSize: 96 << 10 };
const CONFIRM_MS = 30;
const VM = !!process.env['HSX_HIL_VM'];
const LONG = VM ? 1_800_000 : 120_000;
/** A scan without a node list waits this long (the VM runs JavaScript 9–20× slower). */
const FULL_SCAN_MS = VM ? 8000 : 800;
/** Upper bound for a scan with a node list (it ends as soon as they answered). */
const LISTED_SCAN_MS = VM ? 60_000 : 10_000;

type Dev = CanNode;

function boot(bus: TestBus, node: number, dir: string): Promise<Dev> {
  return bootCanNode(bus, node, dir, { confirmWindowMs: CONFIRM_MS, geometry: GEOMETRY, restore: false });
}

const settled = (d: Dev): boolean => !d.dev.intake.confirmPending && (d.dev.storage.imageStore.active()?.confirmed ?? true);

interface Rig {
  bus: TestBus;
  client: CanBus;
  devs: Dev[];
  nodes: number[];
}

async function rig(t: ExecutionContext, nodes: number[]): Promise<Rig> {
  const bus = await openTestBus();
  const root = mkdtempSync(join(tmpdir(), 'can-scan-'));
  const devs: Dev[] = [];
  for (const node of nodes) devs.push(await boot(bus, node, join(root, `node${node}`)));
  const r: Rig = { bus, client: await bus.endpoint(), devs, nodes };
  t.teardown(async () => {
    await Promise.all(devs.map((d) => d.until(() => settled(d))));
    for (const d of devs) {
      d.listener.stop();
      await d.dev.close();
    }
    await bus.close();
    rmSync(root, { recursive: true, force: true });
  });
  return r;
}

/** What the device itself says (its intake), as the scan should list it. */
const expected = (d: Dev): InventoryEntry => ({ target: String(d.node), ...d.dev.intake.inventory() });

/** Scans twice; both must list the same. */
async function scanTwice(t: ExecutionContext, r: Rig, opts: Parameters<typeof scanCan>[1] = { nodes: r.nodes, timeoutMs: LISTED_SCAN_MS }): Promise<InventoryEntry[]> {
  const first = await scanCanReport(r.client, opts);
  const second = await scanCanReport(r.client, opts);
  t.deepEqual(first.problems, [], 'no problems');
  t.deepEqual(second.entries, first.entries, 'a second scan lists the same');
  t.not(second.req, first.req, 'each scan has its own request id');
  return first.entries;
}

canTest('6 nodes: before any flash (no app), after a flash (app + SHA-256, slot A good), after an update (slot B test, then good)', async (t) => {
  t.timeout(LONG);
  const nodes = [1, 2, 3, 5, 8, 13];
  const r = await rig(t, nodes);
  const cap = r.devs[0]!.dev.engine.slotCapacity()!;

  const fresh = await scanTwice(t, r);
  t.deepEqual(fresh.map((e) => e.target), nodes.map(String), 'every node, sorted by node id');
  for (const e of fresh) {
    t.like(e, { app_name: null, version: null, sha256: null, slot_bytes: cap });
    t.deepEqual(e.slots.map((s) => [s.slot, s.state, s.active]), [['A', 'empty', false], ['B', 'empty', false]]);
  }
  // A scan without a node list (broadcast, waits its timeout) lists the same.
  t.deepEqual(await scanCan(r.client, { timeoutMs: FULL_SCAN_MS }), fresh, 'full scan');

  const v1 = sensorBuild(31);
  const v2 = sensorBuild(32);
  const flashed = await new CanMaster({ bus: r.client, image: v1, nodes, session: 41, timeoutMs: 1000 }).run();
  t.true(flashed.ok, JSON.stringify(flashed.verdicts));
  const after = await scanTwice(t, r);
  for (const d of r.devs) {
    const e = after.find((x) => x.target === String(d.node))!;
    t.deepEqual(e, expected(d), `node ${d.node}: the scan says what the device says`);
    t.like(e, { app_name: 'sensor_app', sha256: sha256Hex(v1), slot_bytes: cap });
    t.deepEqual(e.slots.map((s) => [s.slot, s.state, s.active, s.sha256]), [['A', 'good', true, sha256Hex(v1)], ['B', 'empty', false, null]]);
  }

  // An update: staged in B, committed in test mode, confirmed after the window (the next test scans inside it).
  const upd = await new CanMaster({ bus: r.client, image: v2, nodes, session: 42, timeoutMs: 1000 }).run();
  t.true(upd.ok, JSON.stringify(upd.verdicts));
  await Promise.all(r.devs.map((d) => d.until(() => settled(d))));
  const updated = await scanTwice(t, r);
  for (const d of r.devs) {
    const e = updated.find((x) => x.target === String(d.node))!;
    t.deepEqual(e, expected(d));
    t.like(e, { app_name: 'sensor_app', sha256: sha256Hex(v2) });
    t.deepEqual(e.slots.map((s) => [s.slot, s.state, s.active, s.sha256]), [['A', 'good', false, sha256Hex(v1)], ['B', 'good', true, sha256Hex(v2)]]);
  }
  // One node asked alone (an addressed request).
  const one = await scanCanReport(r.client, { nodes: [8], timeoutMs: LISTED_SCAN_MS });
  t.deepEqual(one.entries, [expected(r.devs.find((d) => d.node === 8)!)]);
});

canTest('an update inside its confirm window: slot B is listed as test and active, A as good', async (t) => {
  t.timeout(LONG);
  const bus = await openTestBus();
  const dir = mkdtempSync(join(tmpdir(), 'can-scan-held-'));
  // A confirm window no test outlasts: the update stays on test while it is scanned.
  const held = await openSimulatedDevice({ name: 'held', stateDir: dir, geometry: GEOMETRY, confirmWindowMs: 3_600_000, events: { emit: () => {} } });
  const listener = new CanListener({ bus: await bus.endpoint(), node: 4, intake: held.intake });
  listener.start();
  const client = await bus.endpoint();
  t.teardown(async () => {
    listener.stop();
    await held.close();
    await bus.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const v1 = sensorBuild(51);
  const v2 = sensorBuild(52);
  for (const [session, image] of [[52, v1], [53, v2]] as const) {
    const res = await new CanMaster({ bus: client, image, nodes: [4], session, timeoutMs: 1000 }).run();
    t.true(res.ok, JSON.stringify(res.verdicts));
  }
  t.true(held.intake.confirmPending);
  for (let i = 0; i < 2; i++) {
    const [e, ...rest] = await scanCan(client, { nodes: [4], timeoutMs: LISTED_SCAN_MS });
    t.deepEqual(rest, []);
    t.deepEqual(e, { target: '4', ...held.intake.inventory() });
    t.like(e, { target: '4', sha256: sha256Hex(v2) });
    t.deepEqual(e!.slots.map((s) => [s.slot, s.state, s.active, s.sha256]), [['A', 'good', false, sha256Hex(v1)], ['B', 'test', true, sha256Hex(v2)]]);
  }
});

canTest('a silent bus: an empty list, twice', async (t) => {
  t.timeout(LONG);
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const ep = await bus.endpoint();
  for (let i = 0; i < 2; i++) {
    const r = await scanCanReport(ep, { timeoutMs: FULL_SCAN_MS });
    t.deepEqual(r.entries, []);
    t.deepEqual(r.problems, []);
    t.false(r.cancelled);
  }
});

/** A node that answers every scan with what `answer` makes of the request's id. */
async function rogue(bus: TestBus, node: number, answer: (req: number) => Uint8Array[]): Promise<CanBus> {
  const ep = await bus.endpoint();
  ep.receive((f) => {
    const c = classifyId(DEFAULT_ID_PLAN, f.id);
    if (c.kind !== 'prov' || c.op !== ProvOp.INFO_REQ || (c.node !== 0 && c.node !== node)) return;
    const req = decodeInfoRequest(f.data);
    if (req) for (const p of answer(req.req)) ep.post({ id: valueId(DEFAULT_ID_PLAN, node, ValueOp.INFO), data: p });
  });
  return ep;
}

const SHA = Buffer.from(Array.from({ length: 32 }, (_, i) => i)).toString('hex');
const sample: InfoBody = {
  app_name: 'sensor_app', version: '1.0.0', sha256: SHA, slot_bytes: 36864,
  slots: [{ slot: 'A', state: 'good', active: true, sha256: SHA, version: '1.0.0' }, { slot: 'B', state: 'empty', active: false, sha256: null, version: null }],
};

canTest('garbage answers (bad CRC, bad version, a part beyond the body, an answer cut short) are reported with node and offset; the others are still listed', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, [1, 2, 3]);
  const body = encodeInfoBody(sample);
  await rogue(r.bus, 9, (req) => {
    const parts = encodeInfoParts(req, body);
    parts[3]![4] = parts[3]![4]! ^ 0xff; // body byte 20: inside the SHA-256, so only the CRC tells
    return parts;
  });
  await rogue(r.bus, 10, (req) => encodeInfoParts(req, Uint8Array.from(body, (b, i) => (i === 0 ? 7 : b))));
  await rogue(r.bus, 11, (req) => [...encodeInfoParts(req, body), Uint8Array.of(req, 40, 0, 0, 0, 0, 0, 0)].reverse());
  await rogue(r.bus, 12, (req) => encodeInfoParts(req, body).slice(0, 5));
  for (let round = 0; round < 2; round++) {
    const rep = await scanCanReport(r.client, { timeoutMs: FULL_SCAN_MS });
    t.deepEqual(rep.entries.map((e) => e.target), ['1', '2', '3'], 'the real nodes are listed');
    for (const e of rep.entries) t.deepEqual(e, expected(r.devs.find((d) => String(d.node) === e.target)!));
    t.deepEqual(rep.problems.map((p) => [p.target, p.code, p.reason, p.offset]), [
      ['9', 'EBADMSG', 'crc_mismatch', body.length - 4],
      ['10', 'EBADMSG', 'bad_version', 0],
      ['11', 'EBADMSG', 'part_out_of_range', 40 * 6],
      ['12', 'ETIMEDOUT', 'incomplete', 5 * 6],
    ]);
    for (const p of rep.problems) t.true(p.message.includes(`node ${p.node}`), p.message);
  }
  // Given a node list, the scan ends once every listed node answered or failed.
  const listed = await scanCanReport(r.client, { nodes: [1, 2, 3, 9, 10], timeoutMs: LISTED_SCAN_MS });
  t.deepEqual(listed.entries.map((e) => e.target), ['1', '2', '3']);
  t.deepEqual(listed.problems.map((p) => p.target), ['9', '10']);
});

canTest('a cancelled scan returns what answered so far', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, [2]);
  const controller = new AbortController();
  controller.abort();
  const rep = await scanCanReport(r.client, { signal: controller.signal, timeoutMs: LISTED_SCAN_MS });
  t.true(rep.cancelled);
  t.deepEqual(rep.entries, []);
  await t.throwsAsync(scanCan(r.client, { nodes: [64] }), { instanceOf: RangeError, message: /node id must be 1\.\.63/ });
  await t.throwsAsync(scanCan(r.client, { spacingMs: 300 }), { instanceOf: RangeError, message: /spacingMs/ });
});

// ---- the frames, by hand (pure: the same on every lane) ---------------------------------------

const doc = readFileSync(new URL('../docs/can_protocol.md', import.meta.url), 'utf8');
const hex = (id: number, bytes: Uint8Array | number[]): string =>
  `0x${id.toString(16).toUpperCase().padStart(3, '0')}  ${[...bytes].map((b) => b.toString(16).toUpperCase().padStart(2, '0')).join(' ')}`;
function documented(t: ExecutionContext, id: number, encoded: Uint8Array, byHand: number[]): void {
  t.deepEqual([...encoded], byHand, hex(id, byHand));
  t.true(doc.includes(hex(id, byHand)), `docs/can_protocol.md shows ${hex(id, byHand)}`);
}
const ascii = (s: string): number[] => [...Buffer.from(s, 'ascii')];
const u32 = (v: number): number[] => [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
const withCrc = (b: number[]): number[] => [...b, ...u32(crc32(Uint8Array.from(b)))];
const SHA_BYTES = Array.from({ length: 32 }, (_, i) => i);

test('docs/can_protocol.md "Scan": INFO_REQ and INFO frames built by hand from the tables', (t) => {
  const plan = DEFAULT_ID_PLAN;
  t.is(provId(plan, BROADCAST, ProvOp.INFO_REQ), 0x203);
  t.is(valueId(plan, 3, ValueOp.INFO), 0x01d);
  documented(t, 0x203, encodeInfoRequest({ req: 0x2a, spacingMs: 2 }), [0x2a, 0x01, 0x02]);
  documented(t, 0x21b, encodeInfoRequest({ req: 0x2a, spacingMs: 2 }), [0x2a, 0x01, 0x02]);
  t.deepEqual(decodeInfoRequest(Uint8Array.of(0x2a, 1, 2)), { req: 0x2a, spacingMs: 2 });
  t.is(decodeInfoRequest(Uint8Array.of(0x2a, 2, 2)), null, 'another version is ignored');
  t.is(decodeInfoRequest(Uint8Array.of(0x2a, 1)), null);

  // A device with flash and no image: version 1, flags CAPACITY|SLOTS, L = 14, slot size 0x9000, A empty, B empty, CRC.
  const empty: InfoBody = {
    app_name: null, version: null, sha256: null, slot_bytes: 36864,
    slots: [{ slot: 'A', state: 'empty', active: false, sha256: null, version: null }, { slot: 'B', state: 'empty', active: false, sha256: null, version: null }],
  };
  const emptyBody = withCrc([1, 0x06, 0, 14, ...u32(36864), 0x00, 0x00]);
  t.deepEqual([...encodeInfoBody(empty)], emptyBody);
  const emptyParts = encodeInfoParts(0x2a, Uint8Array.from(emptyBody));
  t.is(emptyParts.length, 3);
  documented(t, 0x01d, emptyParts[0]!, [0x2a, 0, ...emptyBody.slice(0, 6)]);
  documented(t, 0x01d, emptyParts[1]!, [0x2a, 1, ...emptyBody.slice(6, 12)]);
  documented(t, 0x01d, emptyParts[2]!, [0x2a, 2, ...emptyBody.slice(12), 0, 0, 0, 0]);
  t.deepEqual(decodeInfoBody(Uint8Array.from(emptyBody)), { ok: true, value: empty });

  // Running sensor_app 1.0.0 from slot A (good, ACTIVE = bit 7), B empty.
  const running = withCrc([
    1, 0x07, 0, 101, ...SHA_BYTES, 10, ...ascii('sensor_app'), 5, ...ascii('1.0.0'), ...u32(36864),
    0x82, ...SHA_BYTES, 5, ...ascii('1.0.0'), 0x00,
  ]);
  t.is(running.length, 101);
  t.deepEqual([...encodeInfoBody(sample)], running);
  const parts = encodeInfoParts(0x2a, Uint8Array.from(running));
  t.is(parts.length, 17);
  const pad = (b: number[]): number[] => [...b, ...Array(6 - b.length).fill(0)];
  for (const p of [0, 6, 9, 16]) documented(t, 0x01d, parts[p]!, [0x2a, p, ...pad(running.slice(p * 6, p * 6 + 6))]);
  t.deepEqual(decodeInfoBody(Uint8Array.from(running)), { ok: true, value: sample });

  // The assembler takes the parts in any order, repeated, and gives the body once.
  const asm = new InfoAssembler();
  const order = [...parts.keys()].reverse();
  for (const i of order.slice(0, -1)) t.like(asm.push(parts[i]!), { kind: 'pending' });
  t.like(asm.push(parts[5]!), { kind: 'pending' }, 'a repeated part');
  t.deepEqual(asm.push(parts[order.at(-1)!]!), { kind: 'done', info: sample });
});

test('INFO bodies that are refused name the reason and the body offset', (t) => {
  const body = encodeInfoBody(sample);
  const refuse = (b: Uint8Array): unknown => {
    const r = decodeInfoBody(b);
    return r.ok ? null : [r.error.reason, r.error.offset];
  };
  const fixCrc = (b: Uint8Array): Uint8Array => {
    const c = crc32(b.subarray(0, b.length - 4));
    b.set(u32(c), b.length - 4);
    return b;
  };
  const patched = (at: number, v: number): Uint8Array => fixCrc(Uint8Array.from(body, (x, i) => (i === at ? v : x)));
  t.deepEqual(refuse(Uint8Array.from(body, (x, i) => (i === 10 ? x ^ 1 : x))), ['crc_mismatch', body.length - 4]);
  t.deepEqual(refuse(patched(0, 2)), ['bad_version', 0]);
  t.deepEqual(refuse(patched(1, 0x0f)), ['bad_flags', 1]);
  t.deepEqual(refuse(patched(36, 40)), ['bad_field', 36], 'a name longer than 32');
  t.deepEqual(refuse(patched(37, 0xff)), ['bad_field', 37], 'a name that is not UTF-8');
  t.deepEqual(refuse(patched(57, 0x83)), ['bad_slot_state', 57], 'slot A: state 3');
  t.deepEqual(refuse(patched(57, 0x10)), ['bad_slot_state', 57], 'slot A: a reserved bit');
  t.deepEqual(refuse(patched(90, 24)), ['field_overrun', 90], 'slot A version running past the end');
  t.deepEqual(refuse(fixCrc(Uint8Array.from([1, 0, 0, 9, 0xaa, 0, 0, 0, 0]))), ['trailing_bytes', 4]);
  t.deepEqual(refuse(Uint8Array.from([1, 0, 0x10, 0, 0, 0, 0, 0])), ['bad_length', 2]);
  // Frames: short, conflicting.
  const parts = encodeInfoParts(1, body);
  t.like(new InfoAssembler().push(parts[0]!.subarray(0, 5)), { kind: 'problem', problem: { reason: 'short_frame', offset: 0 } });
  const asm = new InfoAssembler();
  asm.push(parts[2]!);
  t.like(asm.push(Uint8Array.from(parts[2]!, (x, i) => (i === 7 ? x ^ 1 : x))), { kind: 'problem', problem: { reason: 'part_conflict', offset: 12 } });
  t.throws(() => encodeInfoBody({ ...sample, sha256: 'xyz' }), { instanceOf: RangeError });
});

// ---- the command ------------------------------------------------------------------------------

/** `hsx-gateway scan …`, the real CLI. */
const runEntry = runCli;

canTest('`scan --can`: a table or JSON lines; exit 0 with answers, 3 on a silent bus, 1 when only garbage answered, 2 on usage errors', async (t) => {
  t.timeout(LONG);
  const r = await rig(t, [2, 7]);
  const v1 = sensorBuild(61);
  t.true((await new CanMaster({ bus: r.client, image: v1, nodes: [7], session: 61, timeoutMs: 1000 }).run()).ok);
  const address = r.bus.processAddress();
  const timeout = String(VM ? 20_000 : 3000);

  const json = await runEntry(['scan', '--can', address, '--nodes', '2,7', '--timeout', timeout, '--json']);
  t.is(json.code, 0, json.stderr);
  const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(lines.slice(0, 2), r.devs.map((d) => ({ type: 'entry', link: 'can', ...expected(d) })));
  t.like(lines[2], { type: 'summary', link: 'can', answered: 2, problems: 0 });
  t.is(lines.length, 3);

  const table = await runEntry(['scan', '--can', address, '--nodes', '2,7', '--timeout', timeout]);
  t.is(table.code, 0, table.stderr);
  t.log(table.stdout);
  const rows = table.stdout.split('\n');
  t.regex(rows[0]!, /^node\s+app\s+version\s+sha256\s+slot A\s+slot B\s+slot size$/);
  t.regex(rows[1]!, /^2\s+\(none\)\s+-\s+-\s+empty\s+empty\s+\d+ (KiB|B)$/);
  t.regex(rows[2]!, new RegExp(`^7\\s+sensor_app\\s+\\S+\\s+${sha256Hex(v1).slice(0, 12)}\\s+good\\*.*empty\\s+\\d+ (KiB|B)$`));
  t.true(table.stdout.includes('2 devices listed'));

  const silent = await runEntry(['scan', '--can', address, '--nodes', '40', '--timeout', '300', '--json']);
  t.is(silent.code, 3, silent.stderr);
  t.like(JSON.parse(silent.stdout.trim()), { type: 'summary', answered: 0, problems: 0 });

  await rogue(r.bus, 20, (req) => encodeInfoParts(req, Uint8Array.from(encodeInfoBody(sample), (b, i) => (i === 0 ? 9 : b))));
  const bad = await runEntry(['scan', '--can', address, '--nodes', '20', '--timeout', timeout, '--json']);
  t.is(bad.code, 1, bad.stderr);
  t.like(JSON.parse(bad.stdout.trim().split('\n')[0]!), { type: 'problem', target: '20', code: 'EBADMSG', reason: 'bad_version', offset: 0 });

  for (const args of [['scan'], ['scan', '--can', address, '--uart', '/dev/null'], ['scan', '--can', address, '--timeout', 'soon'], ['scan', '--can', 'no such bus'], ['scan', '--can', address, '--nodes', '0-3']]) {
    const u = await runEntry([...args, '--json']);
    t.is(u.code, 2, `${args.join(' ')}: ${u.stderr}`);
    t.like(JSON.parse(u.stdout.trim()), { ok: false, error: { code: 'EUSAGE' } });
  }
});
