/**
 * `serve` stops within its bound (5 s, STOP_DEADLINE_MS) whatever the others do, and says what it
 * could not flush: real `serve` processes against an MQTT broker that accepts the connection and
 * then never answers a publish, one that accepts TCP and never answers at all, a control client
 * that never reads its event stream, and a CAN transfer in progress on a slow virtual bus. A second
 * signal exits at once. Times are printed, not asserted (the only bound here is the test timeout).
 */
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlClient } from '../src/gateway/control/client.js';
import { CanMaster } from '../src/link/can/master.js';
import { startVirtualHub } from '../src/link/can/virtual-net.js';
import { startServe, type ServeChild } from './support/serve-child.js';
import { STOP_UNFLUSHED_EXIT } from '../src/cli/commands/serve.js';

type Json = Record<string, unknown>;

/** A "broker" on 127.0.0.1 that swallows every byte; with `connack`, it first accepts the MQTT 3.1.1 CONNECT. */
async function hungBroker(connack: boolean): Promise<{ url: string; bytes: () => number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let bytes = 0;
  const server = net.createServer((s) => {
    sockets.add(s);
    let acked = false;
    s.on('data', (d: Buffer) => {
      bytes += d.length;
      if (connack && !acked) {
        acked = true;
        s.write(Buffer.from([0x20, 0x02, 0x00, 0x00])); // CONNACK, session not present, accepted
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    bytes: () => bytes,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

function writeConfig(dir: string, id: string, lines: string[]): string {
  const config = join(dir, 'gateway.toml');
  mkdirSync(join(dir, 'images'), { recursive: true });
  writeFileSync(config, [`[gateway]`, `id = "${id}"`, 'log_level = "warn"', '[control]', 'listen = "127.0.0.1:0"', ...lines, '[boot]', 'confirm_window_ms = 0'].join('\n'));
  return config;
}

function tempDir(t: { teardown: (f: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-shutdown-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function killOnTeardown(t: { teardown: (f: () => void) => void }, gw: ServeChild): void {
  t.teardown(() => {
    if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
  });
}

test('SIGTERM with a hung broker, a client that never reads and a CAN transfer mid-way: exits in time, names what it could not flush', async (t) => {
  t.timeout(120_000);
  const broker = await hungBroker(true);
  t.teardown(() => broker.close());
  // The test hosts the bus hub, slow (20 kbit/s), so the transfer is still running when the signal comes.
  const hub = await startVirtualHub('127.0.0.1', 0, { bitrate: 20_000 });
  t.teardown(() => hub.close());
  const dir = tempDir(t);
  const config = writeConfig(dir, 'sd1', [
    '[mqtt]', `url = "${broker.url}"`, 'protocol_version = 4',
    '[[links.can]]', `interface = "127.0.0.1:${hub.port}"`, 'backend = "virtual"', 'timing = false', 'role = "master"',
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'node_id = 1', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ]);
  const gw = await startServe(config);
  killOnTeardown(t, gw);

  // A control client subscribes to the event stream and then never reads another byte.
  const c = await ControlClient.connect(gw.control);
  if (!c.ok) return t.fail(c.error.message);
  const opened = await c.value.request('session.open', { client: 'never-reads', capabilities: { features: ['events'], max_events: 64 } });
  if (!opened.ok) return t.fail(opened.error.message);
  const sid = (opened.value['session'] as Json)['id'] as string;
  const stream = net.connect(Number(gw.control.split(':')[1]), '127.0.0.1');
  t.teardown(() => stream.destroy());
  stream.write(JSON.stringify({ version: 1, cmd: 'events.subscribe', session: sid }) + '\n');
  await new Promise<void>((resolve) => stream.once('data', () => resolve()));
  stream.pause();

  // A CAN transfer to node1; SIGTERM once data frames flow.
  const ep = hub.bus.attach('master');
  await ep.open();
  t.teardown(() => ep.close());
  const image = new Uint8Array(readFileSync('test/fixtures/t10_test_stdio_mailbox.hxe'));
  let signalled = 0;
  let onData: () => void = () => undefined;
  const dataFlowing = new Promise<void>((r) => (onData = r));
  const master = new CanMaster({
    bus: ep, image, nodes: [1], session: 41, timeoutMs: 1_000, retries: 1,
    onProgress: (p) => {
      if (p.phase === 'data' && p.sent > 0) onData();
    },
  }).run();
  await dataFlowing;
  signalled = performance.now();
  gw.child.kill('SIGTERM');
  const exit = await gw.exited;
  const ms = Math.round(exit.at - signalled);
  const unflushed = gw.lines.filter((l) => l['type'] === 'unflushed');
  const stopped = gw.lines.find((l) => l['type'] === 'stopped');
  t.log(`SIGTERM → exit ${exit.code ?? exit.signal} in ${ms} ms (bound 5000 ms); stop() said it took ${stopped?.['elapsed_ms']} ms; broker swallowed ${broker.bytes()} bytes`);
  for (const u of unflushed) t.log(`  not flushed: ${u['component']}: ${u['what']}`);
  t.not(exit.code, null, 'exited by itself, not killed');
  t.is(exit.code, STOP_UNFLUSHED_EXIT, 'not 0: something was not flushed');
  t.truthy(stopped, gw.stderr());
  t.truthy(unflushed.find((u) => u['component'] === 'mqtt' && /not delivered to mqtt:\/\/127\.0\.0\.1/.test(String(u['what']))), 'names the MQTT messages the broker never acknowledged');
  t.truthy(unflushed.find((u) => u['component'] === 'devices.node1' && /CAN transfer \(session 41\) aborted/.test(String(u['what']))), 'names the CAN transfer it aborted');
  const m = await master;
  t.log(`master: ${JSON.stringify(m.verdicts.map((v) => [v.node, v.status]))}`);
});

test('SIGTERM with an external broker that accepts TCP and never answers: exits in time, says the events were not delivered', async (t) => {
  t.timeout(120_000);
  const broker = await hungBroker(false);
  t.teardown(() => broker.close());
  const dir = tempDir(t);
  const config = writeConfig(dir, 'sd2', [
    '[mqtt]', `url = "${broker.url}"`,
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ]);
  const gw = await startServe(config);
  killOnTeardown(t, gw);
  const signalled = performance.now();
  gw.child.kill('SIGTERM');
  const exit = await gw.exited;
  const unflushed = gw.lines.filter((l) => l['type'] === 'unflushed');
  t.log(`SIGTERM → exit ${exit.code ?? exit.signal} in ${Math.round(exit.at - signalled)} ms (bound 5000 ms)`);
  for (const u of unflushed) t.log(`  not flushed: ${u['component']}: ${u['what']}`);
  t.not(exit.code, null, `${JSON.stringify(gw.lines)}\n${gw.stderr()}`);
  t.is(exit.code, STOP_UNFLUSHED_EXIT);
  t.truthy(gw.lines.find((l) => l['type'] === 'stopped'), gw.stderr());
  t.truthy(unflushed.find((u) => u['component'] === 'mqtt' && /not connected/.test(String(u['what']))), 'says the buffered events never reached the broker');
});

test('a second SIGTERM exits at once, non-zero, and says so', async (t) => {
  t.timeout(120_000);
  const broker = await hungBroker(true); // stop() waits for this broker's acknowledgements
  t.teardown(() => broker.close());
  const dir = tempDir(t);
  const config = writeConfig(dir, 'sd3', [
    '[mqtt]', `url = "${broker.url}"`, 'protocol_version = 4',
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ]);
  const gw = await startServe(config);
  killOnTeardown(t, gw);
  gw.child.kill('SIGTERM');
  await gw.waitFor((l) => l['type'] === 'stopping', 'stopping');
  const second = performance.now();
  gw.child.kill('SIGTERM');
  const exit = await gw.exited;
  const said = gw.lines.find((l) => l['type'] === 'exit');
  t.log(`second SIGTERM → exit ${exit.code} in ${Math.round(exit.at - second)} ms; said ${JSON.stringify(said)}`);
  t.is(exit.code, 143);
  t.like(said, { reason: 'second_signal', signal: 'SIGTERM', code: 143 });
  t.falsy(gw.lines.find((l) => l['type'] === 'stopped'), 'it did not wait for the stop to finish');
});

test('a broker that went away: events buffered for it are not flushed, serve says so and exits 4; with nothing lost it exits 0', async (t) => {
  t.timeout(120_000);
  const broker = await hungBroker(true);
  const dir = tempDir(t);
  const config = writeConfig(dir, 'sd4', [
    '[mqtt]', `url = "${broker.url}"`, 'protocol_version = 4',
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ]);
  const gw = await startServe(config);
  killOnTeardown(t, gw);
  // the broker goes away (sockets and listener), then the gateway has something to say: a load's events
  await broker.close();
  const c = await ControlClient.connect(gw.control);
  if (!c.ok) return t.fail(c.error.message);
  const image = readFileSync('test/fixtures/t01_minimal.hxe');
  const loaded = await c.value.request('provision.load', { data: image.toString('base64'), source: 'ci:outage' });
  t.true(loaded.ok, JSON.stringify(loaded));
  c.value.close();
  gw.child.kill('SIGTERM');
  const exit = await gw.exited;
  const unflushed = gw.lines.filter((l) => l['type'] === 'unflushed');
  const stopped = gw.lines.find((l) => l['type'] === 'stopped');
  for (const u of unflushed) t.log(`  not flushed: ${u['component']}: ${u['what']}`);
  t.log(`stopped: ${JSON.stringify(stopped)}; exit code ${exit.code}`);
  t.truthy(unflushed.find((u) => u['component'] === 'mqtt' && /message\(s\) not delivered to mqtt:\/\/127\.0\.0\.1/.test(String(u['what']))), 'names the buffered messages');
  t.like(stopped, { clean: false, code: STOP_UNFLUSHED_EXIT });
  t.is(exit.code, STOP_UNFLUSHED_EXIT);

  // the same gateway without MQTT and without clients: nothing to lose, exit 0
  const dir2 = tempDir(t);
  const clean = await startServe(writeConfig(dir2, 'sd5', [
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ]));
  killOnTeardown(t, clean);
  clean.child.kill('SIGTERM');
  const cleanExit = await clean.exited;
  t.like(clean.lines.find((l) => l['type'] === 'stopped'), { clean: true, code: 0 });
  t.is(cleanExit.code, 0);
});
