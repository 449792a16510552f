/**
 * The gateway end to end, as a bench rig runs it: `hsx-gateway serve` in its own process with two
 * simulated devices on a virtual CAN bus and a real Mosquitto broker; a client flashes one device
 * through the control server; an MQTT subscriber sees the events on the documented topics; the
 * gateway is SIGKILLed and restarted; the device comes back with its image and persisted value,
 * and the availability topic went offline (Last Will) then online.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { ControlClient } from '../src/gateway/control/client.js';
import { startMosquitto } from './support/mosquitto.js';
import { startGateway, until } from './support/serve-process.js';

type Json = Record<string, unknown>;

test('serve + control-server flash + MQTT events + SIGKILL + restart: image, value and availability survive', async (t) => {
  t.timeout(180_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = mkdtempSync(join(tmpdir(), 'hsx-e2e-'));
  const config = join(dir, 'gateway.toml');
  writeFileSync(
    config,
    [
      '[gateway]', 'id = "e2e"', 'log_level = "warn"',
      '[control]', 'listen = "127.0.0.1:0"',
      '[mqtt]', `url = "${broker.url}"`, 'topic_prefix = "hsx"',
      '[[links.can]]', 'interface = "e2e-bus"', 'backend = "virtual"', 'timing = false', 'role = "master"',
      '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'node_id = 1', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
      '[[devices]]', 'name = "node2"', 'state_dir = "state/node2"', 'node_id = 2', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
      '[boot]', 'confirm_window_ms = 0',
    ].join('\n'),
  );

  const got: Array<{ topic: string; payload: string }> = [];
  const sub = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  sub.on('message', (topic, p) => got.push({ topic, payload: p.toString() }));
  await sub.subscribeAsync('hsx/e2e/#', { qos: 1 });
  t.teardown(() => sub.endAsync());

  let gw = await startGateway(config);
  t.teardown(() => gw.child.kill('SIGKILL'));
  await until(() => got.some((m) => m.topic === 'hsx/e2e/status' && m.payload.includes('"online"')), 'online');

  // Flash node1 through the control server: a streaming load, then persist.
  const image = readFileSync('test/fixtures/t04b_value_cmd_help.hxe');
  const c = await ControlClient.connect(gw.control);
  if (!c.ok) return t.fail(c.error.message);
  const client = c.value;
  const begin = await client.request('provision.begin', { device: 'node1', total_bytes: image.length });
  if (!begin.ok) return t.fail(begin.error.message);
  const sid = begin.value['session_id'] as number;
  for (let off = 0, seq = 0; off < image.length; off += 32, seq++) {
    const w = await client.request('provision.write', { device: 'node1', session_id: sid, seq, data: image.subarray(off, off + 32).toString('base64') });
    if (!w.ok) return t.fail(w.error.message);
  }
  const end = await client.request('provision.end', { device: 'node1', session_id: sid });
  if (!end.ok) return t.fail(end.error.message);
  const pid = (end.value['task'] as Json)['pid'] as number;
  const persisted = await client.request('provision.persist', { device: 'node1', pid, target: 'permanent' });
  t.true(persisted.ok, JSON.stringify(persisted));
  client.close();

  const evTopic = (type: string) => `hsx/e2e/device/node1/events/${type}`;
  await until(() => got.some((m) => m.topic === evTopic('provisioning/persisted')), 'persisted event');
  const order = got.filter((m) => m.topic.startsWith('hsx/e2e/device/node1/events/provisioning/')).map((m) => m.topic.split('/').pop());
  const idx = (x: string) => order.indexOf(x);
  t.true(idx('started') >= 0 && idx('started') < idx('progress') && idx('progress') < idx('complete') && idx('complete') < idx('persisted'), order.join(' → '));
  const complete = JSON.parse(got.find((m) => m.topic === evTopic('provisioning/complete'))!.payload) as Json;
  t.is(complete['type'], 'provisioning.complete');
  t.is(complete['pid'], pid);
  t.is(complete['device'], 'node1');
  t.truthy(got.find((m) => m.topic === 'hsx/e2e/device/node1/state'), 'retained device state');

  // SIGKILL: no goodbye, so the broker publishes the Last Will.
  got.length = 0;
  gw.child.kill('SIGKILL');
  await until(() => got.some((m) => m.topic === 'hsx/e2e/status' && m.payload.includes('"offline"')), 'offline from the Last Will');
  gw = await startGateway(config);
  await until(() => got.some((m) => m.topic === 'hsx/e2e/status' && m.payload.includes('"online"')), 'online again');
  const statuses = got.filter((m) => m.topic === 'hsx/e2e/status').map((m) => (JSON.parse(m.payload) as Json)['state']);
  t.deepEqual(statuses.slice(0, 2), ['offline', 'online']);

  const c2 = await ControlClient.connect(gw.control);
  if (!c2.ok) return t.fail(c2.error.message);
  const st = await c2.value.request('provision.status', { device: 'node1' });
  if (!st.ok) return t.fail(st.error.message);
  const tasks = st.value['tasks'] as Json[];
  t.is(tasks.length, 1, 'node1 restored its persisted image');
  t.is(tasks[0]!['app_name'] ?? tasks[0]!['appName'], 'sensor_app');
  const st2 = await c2.value.request('provision.status', { device: 'node2' });
  t.true(st2.ok && (st2.value['tasks'] as Json[]).length === 0, 'node2 was never flashed');
  // The persisted value came back (restored from FRAM, announced on MQTT).
  await until(() => got.some((m) => m.topic === 'hsx/e2e/device/node1/events/value/restored' || m.topic === 'hsx/e2e/device/node1/events/value/defaulted'), 'value restore event');
  c2.value.close();
  gw.child.kill('SIGTERM');
  await new Promise((r) => gw.child.once('exit', r));
});
