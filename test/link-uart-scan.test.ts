/**
 * INFO over the UART link (docs/uart_protocol.md, "INFO"), on real pty pairs (socat): a simulated
 * device (flash and FRAM in a state directory) behind `runUartDevice`, scanned before any flash,
 * after a flash and during and after an update — every scan twice; a device from before INFO
 * (protocol version 1) is reported as unsupported, a malformed INFO as EBADMSG with its offset, a
 * cable with nobody on it as an empty scan; the documented INFO frames built by hand; and the
 * `scan --uart` command through the real CLI (test/hxe-cli-run.ts). Waits are on answers, never sleeps.
 */
import test, { type ExecutionContext } from 'ava';
import { runCli } from './hxe-cli-run.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { runUartDevice } from '../src/link/uart/device-command.js';
import { decodeFrame, FrameType, type Frame } from '../src/link/uart/frame.js';
import { sendImage } from '../src/link/uart/master.js';
import { decodeInfo, decodeInfoRequest, encodeError, encodeInfo, encodeInfoRequest, type InfoMessage } from '../src/link/uart/messages.js';
import { UartPortTransport } from '../src/link/uart/port-transport.js';
import { scanUart, scanUartReport } from '../src/link/uart/scan.js';
import { openSimulatedDevice, type SimulatedDevice } from '../src/persist/simulated-device.js';
import { haveSocat, startPtyPair, type PtyPair } from './support/pty.js';
import { sensorBuild, sha256Hex } from './update-images.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART link tests need it (apt-get install socat)');
});

const VM = !!process.env['HSX_HIL_VM'];
/** Per attempt; an answering device answers at once, so only the silent cases wait this long. */
const ATTEMPT_MS = VM ? 5000 : 500;

async function pair(t: ExecutionContext): Promise<PtyPair> {
  const p = await startPtyPair();
  t.teardown(() => p.stop());
  return p;
}

async function port(t: ExecutionContext, path: string): Promise<UartPortTransport> {
  const tr = new UartPortTransport({ path });
  await tr.open();
  t.teardown(() => tr.close());
  return tr;
}

/** `runUartDevice` for a simulated device on `path`; resolves once it listens. */
async function device(t: ExecutionContext, path: string, confirmWindowMs = 3_600_000): Promise<SimulatedDevice> {
  const state = mkdtempSync(join(tmpdir(), 'uart-scan-'));
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: { emit: () => {} }, confirmWindowMs });
  const controller = new AbortController();
  let listening!: () => void;
  const ready = new Promise<void>((resolve) => (listening = resolve));
  const done = runUartDevice({
    port: path, stateDir: state, json: true, intake: dev.intake, signal: controller.signal,
    out: (text) => {
      if ((JSON.parse(text) as Record<string, unknown>)['event'] === 'listening') listening();
    },
  });
  t.teardown(async () => {
    controller.abort();
    await done;
    await dev.close();
    rmSync(state, { recursive: true, force: true });
  });
  await ready;
  return dev;
}

/** A device that answers what `answer` makes of each frame (or nothing). */
async function fakeDevice(t: ExecutionContext, path: string, answer: (f: Frame) => Frame | null): Promise<void> {
  const tr = await port(t, path);
  tr.receive((f) => {
    const a = answer(f);
    if (a) void tr.send(a);
  });
}

async function scanTwice(t: ExecutionContext, master: UartPortTransport) {
  const first = await scanUartReport(master, { timeoutMs: ATTEMPT_MS });
  const second = await scanUartReport(master, { timeoutMs: ATTEMPT_MS });
  t.deepEqual(first.problems, []);
  t.deepEqual(second.entries, first.entries, 'a second scan says the same');
  t.is(first.attempts, 1, 'answered at the first request');
  t.is(first.entries.length, 1);
  return first.entries[0]!;
}

test('one device: before any flash, after a flash, inside and after an update\'s confirm window (each scan twice)', async (t) => {
  t.timeout(VM ? 600_000 : 60_000);
  const p = await pair(t);
  const dev = await device(t, p.b);
  const master = await port(t, p.a);
  const cap = dev.engine.slotCapacity()!;
  const says = () => ({ target: '1', ...dev.intake.inventory() });

  const fresh = await scanTwice(t, master);
  t.deepEqual(fresh, says());
  t.like(fresh, { target: '1', app_name: null, version: null, sha256: null, slot_bytes: cap });
  t.deepEqual(fresh.slots.map((s) => [s.slot, s.state, s.active]), [['A', 'empty', false], ['B', 'empty', false]]);

  const v1 = sensorBuild(71);
  const v2 = sensorBuild(72);
  const first = await sendImage(master, v1, { appName: 'sensor_app' });
  t.true(first.ok, JSON.stringify(first));
  const flashed = await scanTwice(t, master);
  t.deepEqual(flashed, says());
  t.like(flashed, { app_name: 'sensor_app', sha256: sha256Hex(v1), slot_bytes: cap });
  t.deepEqual(flashed.slots.map((s) => [s.slot, s.state, s.active, s.sha256]), [['A', 'good', true, sha256Hex(v1)], ['B', 'empty', false, null]]);

  const upd = await sendImage(master, v2, { appName: 'sensor_app' });
  t.true(upd.ok && upd.value.outcome === 'updated', JSON.stringify(upd));
  t.true(dev.intake.confirmPending, 'the update waits for its (hour-long) confirm window');
  const testing = await scanTwice(t, master);
  t.deepEqual(testing, says());
  t.like(testing, { sha256: sha256Hex(v2) });
  t.deepEqual(testing.slots.map((s) => [s.slot, s.state, s.active, s.sha256]), [['A', 'good', false, sha256Hex(v1)], ['B', 'test', true, sha256Hex(v2)]]);

  await dev.intake.confirmNow();
  const confirmed = await scanTwice(t, master);
  t.deepEqual(confirmed, says());
  t.deepEqual(confirmed.slots.map((s) => [s.slot, s.state, s.active]), [['A', 'good', false], ['B', 'good', true]]);
  t.deepEqual(await scanUart(master, { timeoutMs: ATTEMPT_MS }), [confirmed]);
});

test('a version 1 device (no INFO) is reported unsupported; nobody on the cable is an empty scan', async (t) => {
  t.timeout(VM ? 600_000 : 60_000);
  const p = await pair(t);
  const infoSeen: Frame[] = [];
  // A version 1 listener: INFO_REQ is an unknown frame type to it (dropped); OPEN of another version is refused.
  await fakeDevice(t, p.b, (f) => {
    if (f.type === FrameType.INFO_REQ) infoSeen.push(f);
    if (f.type !== FrameType.OPEN || f.payload[0] === 1) return null;
    return { type: FrameType.ERROR, tag: f.tag, seq: 0, payload: encodeError({ code: 'EPROTO', where: 'session', reason: 'unsupported_version' }) };
  });
  const master = await port(t, p.a);
  for (let i = 0; i < 2; i++) {
    const r = await scanUartReport(master, { timeoutMs: ATTEMPT_MS, retries: 1 });
    t.deepEqual(r.entries, []);
    t.is(r.attempts, 2);
    t.like(r.problems, [{ target: '1', code: 'ENOTSUP', reason: 'info_unsupported', protocolVersion: 1 }]);
  }
  t.is(infoSeen.length, 4, 'two INFO requests per scan reached it');

  // A version 2 listener from before INFO: silent to INFO_REQ, refuses the empty OPEN as version 2 does.
  const older = await pair(t);
  await fakeDevice(t, older.b, (f) => (f.type !== FrameType.OPEN ? null
    : { type: FrameType.ERROR, tag: f.tag, seq: 0, payload: encodeError({ code: 'EBADMSG', where: 'begin', reason: 'total_invalid' }) }));
  const m2 = await port(t, older.a);
  const r2 = await scanUartReport(m2, { timeoutMs: ATTEMPT_MS, retries: 0 });
  t.deepEqual(r2.entries, []);
  t.like(r2.problems, [{ target: '1', code: 'ENOTSUP', reason: 'info_unsupported', protocolVersion: 2 }]);

  const empty = await pair(t);
  const lonely = await port(t, empty.a);
  const r = await scanUartReport(lonely, { timeoutMs: VM ? 2000 : 200, retries: 1 });
  t.deepEqual(r, { entries: [], problems: [], cancelled: false, attempts: 2, elapsedMs: r.elapsedMs });
});

test('a malformed INFO is EBADMSG with its payload offset; an INFO_REQ of another version is refused', async (t) => {
  t.timeout(VM ? 600_000 : 60_000);
  const p = await pair(t);
  const good = encodeInfo({ app_name: null, version: null, sha256: null, slot_bytes: 4096, slots: [] });
  await fakeDevice(t, p.b, (f) => {
    if (f.type !== FrameType.INFO_REQ) return null;
    const bad = Buffer.from(good);
    bad[0] = 0x40; // an unknown flag
    return { type: FrameType.INFO, tag: f.tag, seq: f.seq, payload: bad };
  });
  const master = await port(t, p.a);
  const r = await scanUartReport(master, { timeoutMs: ATTEMPT_MS });
  t.deepEqual(r.entries, []);
  t.like(r.problems, [{ target: '1', code: 'EBADMSG', reason: 'bad_info', offset: 0 }]);

  // The real listener refuses an INFO_REQ of version 1 (INFO is a version 2 frame).
  const q = await pair(t);
  await device(t, q.b);
  const m2 = await port(t, q.a);
  const answer = new Promise<Frame>((resolve) => m2.receive((f) => f.tag === 0x33 && resolve(f)));
  await m2.send({ type: FrameType.INFO_REQ, tag: 0x33, seq: 7, payload: encodeInfoRequest(1) });
  const f = await answer;
  t.is(f.type, FrameType.ERROR);
});

// ---- docs/uart_protocol.md, "INFO examples": the frames by hand ---------------------------------

const doc = readFileSync(new URL('../docs/uart_protocol.md', import.meta.url), 'utf8');

function documented(name: string): { raw: Buffer; wire: Buffer } {
  const block = new RegExp('```hex ' + name + '\\n([\\s\\S]*?)```').exec(doc);
  if (!block) throw new Error(`docs/uart_protocol.md has no \`\`\`hex ${name} block`);
  const line = (k: string): Buffer => Buffer.from(new RegExp(`^${k}\\s+(.*(?:\\n[ \\t]+.*)*)`, 'm').exec(block[1]!)![1]!.replace(/\s+/g, ''), 'hex');
  return { raw: line('raw'), wire: line('wire') };
}

const u32 = (v: number): number[] => [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
function byHand(type: number, tag: number, seq: number, payload: number[]): Buffer {
  const body = Buffer.from([type, tag, ...u32(seq), (payload.length >> 8) & 0xff, payload.length & 0xff, ...payload]);
  return Buffer.concat([body, Buffer.from(u32(crc32(body)))]);
}
const ascii = (s: string): number[] => [...Buffer.from(s, 'ascii')];
const SHA = Array.from({ length: 32 }, (_, i) => i);
const SHA_HEX = Buffer.from(SHA).toString('hex');

test('docs/uart_protocol.md INFO examples: hand-built frames match the doc, the encoders and the decoders', (t) => {
  const req = documented('info-req');
  t.deepEqual(req.raw, byHand(0x0b, 0x2a, 0x01020304, [2]));
  t.deepEqual([...encodeInfoRequest()], [2]);
  const rf = decodeFrame(req.wire.subarray(0, -1));
  t.true(rf.ok);
  if (rf.ok) {
    t.like(rf.value, { type: FrameType.INFO_REQ, tag: 0x2a, seq: 0x01020304 });
    t.deepEqual(decodeInfoRequest(rf.value.payload), { ok: true, value: { version: 2 } });
  }

  const empty: InfoMessage = {
    app_name: null, version: null, sha256: null, slot_bytes: 36864,
    slots: [{ slot: 'A', state: 'empty', active: false, sha256: null, version: null }, { slot: 'B', state: 'empty', active: false, sha256: null, version: null }],
  };
  // flags CAPACITY|SLOTS, slot_bytes, slot A (0x41, empty, not active), slot B
  const emptyPayload = [0x06, ...u32(36864), 0x41, 0, 0, 0x42, 0, 0];
  const running: InfoMessage = {
    app_name: 'sensor_app', version: '1.0.0', sha256: SHA_HEX, slot_bytes: 36864,
    slots: [{ slot: 'A', state: 'good', active: true, sha256: SHA_HEX, version: '1.0.0' }, { slot: 'B', state: 'empty', active: false, sha256: null, version: null }],
  };
  // flags RUNNING|CAPACITY|SLOTS, slot_bytes, sha256, name, version, slot A (good, ACTIVE, sha256, version), slot B empty
  const runningPayload = [0x07, ...u32(36864), ...SHA, 10, ...ascii('sensor_app'), 5, ...ascii('1.0.0'), 0x41, 2, 1, ...SHA, 5, ...ascii('1.0.0'), 0x42, 0, 0];
  for (const [name, m, payload] of [['info-empty', empty, emptyPayload], ['info-running', running, runningPayload]] as const) {
    const d = documented(name);
    t.deepEqual(d.raw, byHand(0x0c, 0x2a, 0x01020304, [...payload]), `${name}: the tables' bytes`);
    t.deepEqual([...encodeInfo(m)], [...payload], `${name}: encodeInfo`);
    const f = decodeFrame(d.wire.subarray(0, -1));
    t.true(f.ok, name);
    if (f.ok) t.deepEqual(decodeInfo(f.value.payload), { ok: true, value: m });
  }
  // Refusals name the payload offset.
  const p = encodeInfo(running);
  const at = (i: number, v: number): Buffer => Buffer.from(p.map((x, j) => (j === i ? v : x)));
  t.like(decodeInfo(p.subarray(0, 4)), { ok: false, error: { offset: 4 } });
  t.like(decodeInfo(at(0, 0x10)), { ok: false, error: { offset: 0 } });
  t.like(decodeInfo(at(37, 33)), { ok: false, error: { offset: 37 } }, 'a name longer than 32');
  t.like(decodeInfo(at(54, 0x43)), { ok: false, error: { offset: 54 } }, 'slot byte not A');
  t.like(decodeInfo(at(55, 3)), { ok: false, error: { offset: 55 } }, 'slot state 3');
  t.like(decodeInfo(at(56, 2)), { ok: false, error: { offset: 56 } }, 'slot flags: a reserved bit');
  t.like(decodeInfo(Buffer.concat([p, Buffer.from([0])])), { ok: false, error: { offset: p.length } });
});

// ---- the command ------------------------------------------------------------------------------

/** `hsx-gateway scan …`, the real CLI. */
const runEntry = runCli;

test('`scan --uart`: JSON lines and a table (exit 0), nobody on the cable (exit 3), usage errors (exit 2)', async (t) => {
  t.timeout(VM ? 600_000 : 60_000);
  const p = await pair(t);
  const dev = await device(t, p.b);
  const json = await runEntry(['scan', '--uart', p.a, '--json']);
  t.is(json.code, 0, json.stderr);
  const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(lines[0], { type: 'entry', link: 'uart', target: '1', ...dev.intake.inventory() });
  t.like(lines[1], { type: 'summary', link: 'uart', answered: 1, problems: 0 });

  const table = await runEntry(['scan', '--uart', p.a]);
  t.is(table.code, 0, table.stderr);
  t.regex(table.stdout, /^target\s+app\s+version\s+sha256\s+slot A\s+slot B\s+slot size\n1\s+\(none\)\s+-\s+-\s+empty\s+empty\s+\d+ (KiB|B)\n/);

  const empty = await pair(t);
  const silent = await runEntry(['scan', '--uart', empty.a, '--timeout', VM ? '2000' : '200', '--json']);
  t.is(silent.code, 3, silent.stderr);
  t.like(JSON.parse(silent.stdout.trim()), { type: 'summary', answered: 0 });

  for (const args of [['--uart', p.a, '--nodes', '1'], ['--uart', p.a, '--baud', 'fast'], ['--uart', p.a, '--can', 'vcan0']]) {
    const u = await runEntry(['scan', ...args, '--json']);
    t.is(u.code, 2, `${args.join(' ')}: ${u.stderr}`);
    t.like(JSON.parse(u.stdout.trim()), { ok: false, error: { code: 'EUSAGE' } });
  }
  const missing = await runEntry(['scan', '--uart', join(empty.dir, 'no-such-port'), '--json']);
  t.is(missing.code, 1);
  t.like(JSON.parse(missing.stdout.trim()), { ok: false, type: 'error', error: { code: 'ENOENT' } });
});
