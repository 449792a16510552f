/**
 * The loopback virtual CAN hub (`virtual:HOST:PORT`) under a flood: a raw TCP client sends 20 MiB
 * of garbage, then 20 MiB of valid frames, as fast as the socket takes them. Each flooder is cut
 * off and counted in the hub's stats while two other bus members keep exchanging frames; and a
 * `serve` that hosts the hub keeps answering control pings (latencies printed, not asserted).
 * Also: a non-loopback hub address is refused unless asked for (`?remote=1`).
 *
 * Not a `link-can-*` file on purpose: it is about the virtual hub only, not SocketCAN (HIL lane).
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlClient } from '../src/gateway/control/client.js';
import { openCanBus, parseCanAddress } from '../src/link/can/address.js';
import { validateConfig } from '../src/gateway/config.js';
import { canAddress, canBusOptions } from '../src/gateway/masters.js';
import type { CanBus } from '../src/link/can/bus.js';
import { requestValue } from '../src/link/can/value-client.js';
import { DEFAULT_HUB_LIMITS, encodeRecord, NetVirtualBus, startVirtualHub } from '../src/link/can/virtual-net.js';
import { startServe } from './support/serve-child.js';

const MiB = 1024 * 1024;
const FLOOD_BYTES = 20 * MiB;

/** 64 KiB of valid classic frames (id 0x7f0, 8 bytes each). */
function validChunk(): Buffer {
  const one = encodeRecord({ id: 0x7f0, data: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) });
  return Buffer.concat(Array.from({ length: Math.floor(65536 / one.length) }, () => one));
}

/**
 * Writes `total` bytes as fast as the sockets take them; when the hub cuts the connection off, the
 * flooder comes back on a new one until all is written (bounded: 2,000 connections, 60 s).
 */
async function flood(port: number, chunk: Buffer, total = FLOOD_BYTES): Promise<{ written: number; connections: number; cutOffs: number; ms: number }> {
  const t0 = performance.now();
  let written = 0;
  let connections = 0;
  let cutOffs = 0;
  while (written < total && connections < 2_000 && performance.now() - t0 < 60_000) {
    const r = await floodOnce(port, chunk, total - written);
    written += r.written;
    connections++;
    if (r.cutOff) cutOffs++;
  }
  return { written, connections, cutOffs, ms: Math.round(performance.now() - t0) };
}

async function floodOnce(port: number, chunk: Buffer, total: number): Promise<{ written: number; cutOff: boolean }> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  let closed = false;
  const gone = new Promise<void>((resolve) => s.once('close', () => ((closed = true), resolve())));
  s.on('error', () => undefined);
  const t0 = performance.now();
  let written = 0;
  while (written < total && !closed && performance.now() - t0 < 30_000) {
    written += chunk.length;
    if (!s.write(chunk)) await Promise.race([new Promise((r) => s.once('drain', r)), gone]);
  }
  const cutOff = closed;
  s.destroy();
  await gone;
  return { written, cutOff };
}

/** Round trips between two members (a asks with 0x123, b answers with 0x321) until `stop()` is called; bounded in count. */
function pingPong(a: CanBus, b: CanBus): { stop: () => Promise<number>; count: () => number } {
  let n = 0;
  let stopped = false;
  let idle: () => void = () => undefined;
  const offB = b.receive((f) => {
    if (f.id === 0x123) b.post({ id: 0x321, data: f.data });
  });
  const offA = a.receive((f) => {
    if (f.id !== 0x321) return;
    n++;
    if (stopped || n >= 1_000_000) return idle();
    a.post({ id: 0x123, data: new Uint8Array(4).fill(n & 0xff) });
  });
  a.post({ id: 0x123, data: new Uint8Array(4) });
  return {
    count: () => n,
    stop: () => {
      stopped = true;
      // the round trip in flight ends the loop
      return new Promise<number>((resolve) => {
        idle = () => {
          offA();
          offB();
          resolve(n);
        };
      });
    },
  };
}

test('the hub cuts off a garbage flooder and a frame flooder, counts them, and the other members keep talking', async (t) => {
  t.timeout(120_000);
  const hub = await startVirtualHub('127.0.0.1', 0);
  const a = new NetVirtualBus('127.0.0.1', hub.port);
  const b = new NetVirtualBus('127.0.0.1', hub.port);
  await a.open();
  await b.open();
  t.teardown(async () => {
    await a.close();
    await b.close();
    await hub.close();
  });

  const loop = pingPong(a, b);
  const garbage = await flood(hub.port, randomBytes(65536));
  const frames = await flood(hub.port, validChunk());
  const during = await loop.stop();
  t.log(`garbage flood: ${(garbage.written / MiB).toFixed(1)} MiB written in ${garbage.ms} ms over ${garbage.connections} connections, ${garbage.cutOffs} cut off`);
  t.log(`frame flood: ${(frames.written / MiB).toFixed(1)} MiB written in ${frames.ms} ms over ${frames.connections} connections, ${frames.cutOffs} cut off`);
  t.log(`hub stats: ${JSON.stringify(hub.stats)}; ${during} round trips between the other members meanwhile`);
  t.true(garbage.written >= FLOOD_BYTES && frames.written >= FLOOD_BYTES);
  t.true(garbage.cutOffs >= 1 && frames.cutOffs >= 1);
  // (the last connection of each flood may have written its share before it saw the cut)
  t.true(hub.stats.cutOffBy.malformed >= garbage.cutOffs && hub.stats.cutOffBy.malformed <= garbage.connections);
  t.true(hub.stats.cutOffBy.flood >= frames.cutOffs && hub.stats.cutOffBy.flood <= frames.connections);
  t.is(hub.stats.cutOffBy.slow_reader, 0);
  t.is(hub.stats.connections, 2, 'the two members are still connected');
  t.true(during > 0);

  // After the flood: 200 more round trips, each answered.
  const after = pingPong(a, b);
  await new Promise<void>((resolve) => {
    const off = a.receive(() => {
      if (after.count() >= 200) {
        off();
        resolve();
      }
    });
  });
  t.true((await after.stop()) >= 200);
  t.is(a.status().state, 'open');
  t.is(b.status().state, 'open');
});

test('a member that stops reading is cut off as a slow reader', async (t) => {
  t.timeout(60_000);
  const hub = await startVirtualHub('127.0.0.1', 0, { maxOutputBytes: 256 * 1024 });
  t.teardown(() => hub.close());
  const sender = hub.bus.attach('sender');
  await sender.open();
  const sleeper = net.connect(hub.port, '127.0.0.1');
  sleeper.on('error', () => undefined);
  await new Promise((r) => sleeper.once('connect', r));
  sleeper.pause();
  // Bounded: 64-byte FD frames, 256 per turn, until the hub gives up on the sleeper (at most 1M
  // frames, 70 MB: the kernel's socket buffers on loopback take several MB before the hub sees any).
  let posted = 0;
  for (let i = 0; i < 4000 && hub.stats.cutOff === 0; i++) {
    for (let k = 0; k < 256; k++) sender.post({ id: 0x100, data: new Uint8Array(64), fd: true });
    posted += 256;
    await new Promise((r) => setImmediate(r));
  }
  t.log(`hub stats: ${JSON.stringify(hub.stats)} after ${posted} frames posted`);
  t.is(hub.stats.cutOffBy.slow_reader, 1, 'the sleeper was cut off');
  sleeper.destroy();
  await sender.close();
});

test('a non-loopback hub address is refused unless ?remote=1 asks for it, and the error says why', async (t) => {
  const refused = parseCanAddress('virtual:10.0.0.5:47000');
  t.false(refused.ok);
  if (!refused.ok) {
    t.regex(refused.message, /not a loopback address/);
    t.regex(refused.message, /without authentication/);
    t.regex(refused.message, /\?remote=1/);
  }
  t.false(parseCanAddress('virtual:0.0.0.0:47000').ok);
  for (const ok of ['virtual:127.0.0.1:47000', 'virtual:localhost:47000', 'virtual:::1:47000', 'virtual:127.0.0.2:47000']) t.true(parseCanAddress(ok).ok, ok);
  const remote = parseCanAddress('virtual:0.0.0.0:47000?remote=1');
  t.true(remote.ok && remote.address.kind === 'virtual-net' && remote.address.remote === true);
  t.false(parseCanAddress('vcan0?remote=1').ok);
  await t.throwsAsync(startVirtualHub('0.0.0.0', 0), { message: /not a loopback address/ });
});

test('serve hosting the hub keeps answering control pings while a client floods the hub', async (t) => {
  t.timeout(180_000);
  // A free loopback port for the bus; the gateway, first on it, hosts the hub.
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const dir = mkdtempSync(join(tmpdir(), 'hsx-hub-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'images'));
  const config = join(dir, 'gateway.toml');
  writeFileSync(
    config,
    [
      '[gateway]', 'id = "hub"', 'log_level = "warn"',
      '[control]', 'listen = "127.0.0.1:0"',
      '[[links.can]]', `interface = "127.0.0.1:${port}"`, 'backend = "virtual"', 'timing = false', 'role = "master"',
      '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'node_id = 1', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
      '[boot]', 'confirm_window_ms = 0',
    ].join('\n'),
  );
  const gw = await startServe(config);
  t.teardown(() => {
    if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
  });
  const c = await ControlClient.connect(gw.control, { timeoutMs: 10_000 });
  if (!c.ok) return t.fail(c.error.message);
  const client = c.value;
  t.teardown(() => client.close());

  // Pings, one after the other, for as long as the floods last (bounded in count).
  const latencies: number[] = [];
  let failures = 0;
  let flooding = true;
  const pinger = (async () => {
    for (let i = 0; i < 100_000 && flooding; i++) {
      const t0 = performance.now();
      const r = await client.request('ping');
      latencies.push(performance.now() - t0);
      if (!r.ok) failures++;
    }
  })();
  const garbage = await flood(port, randomBytes(65536));
  const frames = await flood(port, validChunk());
  flooding = false;
  await pinger;
  const sorted = [...latencies].sort((x, y) => x - y);
  const pct = (p: number): string => (sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN).toFixed(1);
  t.log(`garbage flood: ${(garbage.written / MiB).toFixed(1)} MiB in ${garbage.ms} ms, ${garbage.cutOffs}/${garbage.connections} connections cut off; frame flood: ${(frames.written / MiB).toFixed(1)} MiB in ${frames.ms} ms, ${frames.cutOffs}/${frames.connections} cut off`);
  t.log(`control pings during the floods: ${latencies.length}, median ${pct(0.5)} ms, p99 ${pct(0.99)} ms, max ${pct(1)} ms (goal: within 100 ms)`);
  t.true(latencies.length > 0);
  t.is(failures, 0, 'every ping was answered');
  t.true(garbage.cutOffs >= 1 && frames.cutOffs >= 1, 'the flooders were cut off');

  // The gateway's device still answers on the bus (a value request gets a reply, whatever it says).
  const member = new NetVirtualBus('127.0.0.1', port);
  await member.open();
  t.teardown(() => member.close());
  t.is(member.hostedHub, null, 'the gateway still hosts the hub');
  const reply = await requestValue({ bus: member, node: 1, oid: 0x0102, timeoutMs: 500 });
  t.log(`value request to node1 after the flood: ${JSON.stringify(reply)}`);
  t.not(reply.ok ? 'ok' : reply.status, 'ETIMEDOUT');
  const after = await client.request('ping');
  t.true(after.ok);

  // The gateway logged both cut-offs.
  const log = gw.stderr();
  const cuts = log.split('\n').filter((l) => l.includes('virtual CAN hub: connection cut off'));
  for (const l of cuts) t.log(l);
  t.true(cuts.some((l) => l.includes('"reason":"malformed"')));
  t.true(cuts.some((l) => l.includes('"reason":"flood"')));
});


/** Writes `total` bytes of `chunk` on one connection, then waits (on its 'close', bounded) for the hub to cut it off. */
async function floodUntilCut(port: number, chunk: Buffer, total: number, ms = 10_000): Promise<{ written: number; cutOff: boolean }> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  s.on('error', () => undefined);
  let closed = false;
  const gone = new Promise<void>((resolve) => s.once('close', () => ((closed = true), resolve())));
  let written = 0;
  while (written < total && !closed) {
    written += chunk.length;
    if (!s.write(chunk)) await Promise.race([new Promise((r) => s.once('drain', r)), gone]);
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([gone, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
  const cutOff = closed;
  s.destroy();
  return { written, cutOff };
}

// ---- the hub's limits from the gateway config ([links.can.hub]) ------------------------------------

test('config: [links.can.hub] keys have the documented defaults, name their problems, and reach the hub a gateway link hosts', async (t) => {
  const base = (hub: Record<string, unknown> | undefined, iface = '127.0.0.1:47000', backend = 'virtual') => ({
    gateway: { id: 'g' },
    links: { can: [{ interface: iface, backend, role: 'master', ...(hub ? { hub } : {}) }] },
  });
  // defaults = the hub's own defaults
  const d = validateConfig(base({}));
  if (!d.ok) return t.fail(d.error.message);
  const dh = d.value.links.can[0]!.hub!;
  t.deepEqual({ max_queued_frames: dh.max_queued_frames, max_bytes_per_second: dh.max_bytes_per_second, burst_bytes: dh.burst_bytes, max_output_bytes: dh.max_output_bytes, allow_remote: dh.allow_remote, bind: dh.bind },
    { max_queued_frames: DEFAULT_HUB_LIMITS.maxQueuedFrames, max_bytes_per_second: DEFAULT_HUB_LIMITS.maxBytesPerSecond, burst_bytes: DEFAULT_HUB_LIMITS.burstBytes, max_output_bytes: DEFAULT_HUB_LIMITS.maxOutputBytes, allow_remote: false, bind: undefined });
  // problems name the key and why
  const problems = (r: ReturnType<typeof validateConfig>): string => (r.ok ? '' : r.error.problems.join('\n'));
  t.regex(problems(validateConfig(base({}, 'vcan0', 'socketcan'))), /links\.can\[0\]\.hub: applies to backend = "virtual" links written HOST:PORT only/);
  t.regex(problems(validateConfig(base({ bind: '0.0.0.0' }))), /links\.can\[0\]\.hub\.bind: "0\.0\.0\.0" is not a loopback address; the hub has no authentication, so set allow_remote = true/);
  t.regex(problems(validateConfig(base({ bind: '10.1.2.3', allow_remote: true }))), /links\.can\[0\]\.hub\.bind: "10\.1\.2\.3" is neither the link's host/);
  t.regex(problems(validateConfig(base({ max_queued_frames: 0 }))), /links\.can\[0\]\.hub\.max_queued_frames/);
  t.regex(problems(validateConfig(base({ flood: 1 }))), /links\.can\[0\]\.hub.*"flood"/);
  t.true(validateConfig(base({ bind: '0.0.0.0', allow_remote: true })).ok);
  t.true(validateConfig(base({ bind: '::' }, '127.0.0.1:47000?remote=1')).ok, '?remote=1 in the interface counts as allow_remote');

  // a link opened as the gateway opens it hosts the hub with the configured limits and bind address
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const cfg = validateConfig(base({ max_queued_frames: 64, burst_bytes: 65536, max_bytes_per_second: 1048576, max_output_bytes: 65536, bind: '0.0.0.0', allow_remote: true }, `127.0.0.1:${port}`));
  if (!cfg.ok) return t.fail(cfg.error.message);
  const link = cfg.value.links.can[0]!;
  const bus = (await openCanBus(canAddress(link), canBusOptions(link))) as NetVirtualBus;
  t.teardown(() => bus.close());
  const hub = bus.hostedHub;
  if (!hub) return t.fail('the first on the address hosts the hub');
  t.is(hub.host, '0.0.0.0');
  t.deepEqual({ ...hub.limits }, { maxQueuedFrames: 64, burstBytes: 65536, maxBytesPerSecond: 1048576, maxOutputBytes: 65536 });
  // and enforces them: 256 KiB of valid frames at once is over a 64 KiB burst (or 64 queued frames)
  const r = await floodUntilCut(port, validChunk(), 4 * 65536);
  t.true(r.cutOff, 'cut off');
  t.log(`config-driven hub: cut off after ${r.written} bytes written; stats ${JSON.stringify(hub.stats)}`);
  t.is(hub.stats.cutOffBy.flood, 1);
});

test('serve: a hub it hosts takes its limits from [links.can.hub] (the cut-off names the configured limit)', async (t) => {
  t.timeout(120_000);
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const dir = mkdtempSync(join(tmpdir(), 'hsx-hubcfg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "hubcfg"', 'log_level = "warn"',
    '[control]', 'listen = "127.0.0.1:0"',
    '[[links.can]]', `interface = "127.0.0.1:${port}"`, 'backend = "virtual"', 'timing = false', 'role = "master"',
    '[links.can.hub]', 'max_queued_frames = 100', 'burst_bytes = 70000',
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'node_id = 1', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
    '[boot]', 'confirm_window_ms = 0',
  ].join('\n'));
  const gw = await startServe(config);
  t.teardown(() => {
    if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
  });
  const r = await floodUntilCut(port, validChunk(), 8 * 65536);
  t.true(r.cutOff);
  const cutLine = (): string | undefined => gw.stderr().split('\n').find((l) => l.includes('virtual CAN hub: connection cut off'));
  // on the log's own output, not a poll
  const cut = cutLine() ?? await new Promise<string | undefined>((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 10_000);
    const onData = (): void => {
      const l = cutLine();
      if (l === undefined) return;
      clearTimeout(timer);
      gw.child.stderr!.off('data', onData);
      resolve(l);
    };
    gw.child.stderr!.on('data', onData);
  });
  t.log(cut ?? '(no cut-off line)');
  t.truthy(cut);
  t.regex(cut ?? '', /"reason":"flood"/);
  t.regex(cut ?? '', /\(limit 100\)|more than 70000 bytes at once/, 'the configured limit, not the default');
});
