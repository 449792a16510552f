/**
 * A list of broker URLs with failover (src/gateway/mqtt/failover.ts), shared by the gateway's bridge and the
 * `fleet` client: the config keys (`mqtt.urls`, `mqtt.url` as a list of one) and, against two real, independent
 * Mosquitto processes, the broker in use SIGKILLed: both clients go to the other one, subscribe again there and
 * publish their retained state again. Every wait is on an MQTT message or a connect event.
 */
import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { loadConfig, mqttUrls, validateConfig } from '../src/gateway/config.js';
import { MqttBridge } from '../src/gateway/mqtt/bridge.js';
import { FailoverClient, parseBrokerUrl } from '../src/gateway/mqtt/failover.js';
import { deviceStateTopic, statusTopic } from '../src/gateway/mqtt/topics.js';
import { FleetMqtt } from '../src/fleet/mqtt.js';
import { freePort, mosquittoAvailable, startMosquitto } from './support/mosquitto.js';

const problems = (raw: unknown): string[] => {
  const r = validateConfig(raw);
  return r.ok ? [] : r.error.problems;
};

test('config: mqtt.urls is a list; mqtt.url is a list of one; bad lists are refused naming the key', (t) => {
  const two = validateConfig({ gateway: { id: 'g' }, mqtt: { urls: ['mqtt://a:1883', 'mqtts://b:8883'] } });
  t.true(two.ok);
  if (two.ok) t.deepEqual(mqttUrls(two.value.mqtt), ['mqtt://a:1883', 'mqtts://b:8883']);
  const one = validateConfig({ gateway: { id: 'g' }, mqtt: { url: 'mqtt://a:1883' } });
  t.true(one.ok);
  if (one.ok) t.deepEqual(mqttUrls(one.value.mqtt), ['mqtt://a:1883']);
  t.deepEqual(mqttUrls(undefined), []);
  t.deepEqual(problems({ gateway: { id: 'g' }, mqtt: { urls: ['mqtt://a:1', 'http://b:2'] } }), ['mqtt.urls[1] = "http://b:2": expected an mqtt:// or mqtts:// URL (host:port, no path)']);
  t.deepEqual(problems({ gateway: { id: 'g' }, mqtt: { urls: [] } }), ['mqtt.urls: must be >= 1 (array length)']);
  t.deepEqual(problems({ gateway: { id: 'g' }, mqtt: { url: 'mqtt://a:1', urls: ['mqtt://b:1'] } }), ['mqtt.urls: give either url (one broker) or urls (a list), not both']);
  t.deepEqual(problems({ gateway: { id: 'g' }, mqtt: { urls: ['mqtt://a:1', 'mqtt://a:1'] } }), ['mqtt.urls: a broker is listed twice']);
  t.deepEqual(problems({ gateway: { id: 'g' }, mqtt: { embedded: true, urls: ['mqtt://a:1'] } }), ['mqtt.urls: give either embedded = true or urls, not both']);
  // From a file: the file is named, and a TOML slip in the list gets its line and column.
  const dir = mkdtempSync(join(tmpdir(), 'hsx-urls-'));
  const f = join(dir, 'gw.toml');
  writeFileSync(f, '[gateway]\nid = "g"\n[mqtt]\nurls = ["mqtt://a:1", 7]\n');
  const r = loadConfig(f);
  t.false(r.ok);
  if (!r.ok) t.regex(r.error.message, /gw\.toml: invalid configuration:\n {2}mqtt\.urls\[1\] = 7: /);
  writeFileSync(f, '[gateway]\nid = "g"\n[mqtt]\nurls = ["mqtt://a:1" "mqtt://b:1"]\n');
  const s = loadConfig(f);
  t.false(s.ok);
  if (!s.ok) t.regex(s.error.message, /gw\.toml:4:\d+: TOML syntax error/);
});

test('parseBrokerUrl: host, port (default by scheme) and protocol; other schemes refused', (t) => {
  t.deepEqual(parseBrokerUrl('mqtt://127.0.0.1:1884'), { url: 'mqtt://127.0.0.1:1884', protocol: 'mqtt', host: '127.0.0.1', port: 1884 });
  t.is(parseBrokerUrl('mqtts://broker').port, 8883);
  t.is(parseBrokerUrl('mqtt://[::1]:1883').host, '::1');
  t.throws(() => parseBrokerUrl('ws://x:1'), { message: /expected an mqtt:\/\/ or mqtts:\/\/ URL/ });
  t.throws(() => parseBrokerUrl('nonsense'), { message: /not a URL/ });
});

test('no broker of the list answers: one error naming each URL', async (t) => {
  const [a, b] = [await freePort(), await freePort()];
  const c = new FailoverClient([`mqtt://127.0.0.1:${a}`, `mqtt://127.0.0.1:${b}`], { reconnectPeriod: 50, connectTimeout: 2_000 });
  t.teardown(() => c.client.endAsync(true));
  const e = await t.throwsAsync(c.waitConnected(60_000));
  t.regex(e!.message, new RegExp(`no broker answered \\(mqtt://127.0.0.1:${a}: .*ECONNREFUSED.*; mqtt://127.0.0.1:${b}: .*ECONNREFUSED`));
});

/** A plain client on one broker that keeps what it gets and lets the test wait for a message. */
async function watcher(url: string, filters: string[]): Promise<{ c: MqttClient; next(pred: (topic: string, payload: string, retain: boolean) => boolean, what: string): Promise<string> }> {
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  const seen: Array<{ topic: string; payload: string; retain: boolean }> = [];
  const waiters = new Set<() => void>();
  c.on('message', (topic, p, packet) => {
    seen.push({ topic, payload: p.toString(), retain: packet.retain });
    for (const w of [...waiters]) w();
  });
  await c.subscribeAsync(filters, { qos: 1 });
  return {
    c,
    next: (pred, what) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = seen.find((m) => pred(m.topic, m.payload, m.retain));
          if (!hit) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit.payload);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no MQTT message: ${what}`));
        }, 60_000);
        waiters.add(check);
        check();
      }),
  };
}

test.serial('two independent Mosquittos, the one in use SIGKILLed: the bridge and the fleet client fail over, subscribe again and publish their retained state there', async (t) => {
  if (!mosquittoAvailable()) return t.pass('mosquitto not installed');
  const a = await startMosquitto();
  const b = await startMosquitto();
  t.teardown(() => a.stop());
  t.teardown(() => b.stop());
  const topics = { prefix: 'hsxfo', gatewayId: 'gw-fo' };
  const bridge = new MqttBridge({ urls: [a.url, b.url], topics, protocolVersion: 4, reconnectPeriodMs: 100 });
  t.teardown(() => bridge.stop().then(() => undefined));
  await bridge.waitConnected(30_000);
  t.is(bridge.url, a.url);
  const commands: string[] = [];
  let commandCame: () => void = () => {};
  const command = new Promise<void>((r) => (commandCame = r));
  bridge.onCommands([`hsxfo/gw-fo/jobs/submit`], (m) => {
    commands.push(m.payload.toString());
    commandCame();
  });
  bridge.publishRetained('hsxfo/gw-fo/device/d1/inventory', JSON.stringify({ sha256: 'abc' }));
  bridge.publishEvent({ seq: 1, ts: 1, type: 'provisioning.complete', pid: 1, phase: 'end', data: { app_name: 'app', version: '1' }, device: 'd1' });
  const fleet = await FleetMqtt.connect({ urls: [a.url, b.url], prefix: 'hsxfo', persistent: false, connectTimeoutMs: 2_000 });
  t.teardown(() => fleet.close());
  t.is(fleet.url, a.url);
  const docs: string[] = [];
  fleet.on('hsxfo/fleet/rollouts/+', (_t, p) => docs.push(p.toString()));
  await fleet.subscribe(['hsxfo/fleet/rollouts/+']);
  await fleet.publish('hsxfo/fleet/rollouts/r-1', JSON.stringify({ id: 'r-1', version: 3 }), true);
  await fleet.publish('hsxfo/fleet/images/x', Buffer.alloc(1000, 7), true);
  const onA = await watcher(a.url, ['hsxfo/#']);
  await onA.next((topic, _p, retain) => topic === 'hsxfo/gw-fo/device/d1/inventory' && retain, 'the inventory on A');
  await onA.next((topic) => topic === deviceStateTopic(topics, 'd1'), 'the device state on A');
  onA.c.end(true);

  // B knows nothing yet. A dies without a goodbye.
  const onB = await watcher(b.url, ['hsxfo/#']);
  const bridgeBack = new Promise<void>((r) => bridge['client'].once('connect', () => r()));
  const fleetBack = new Promise<void>((r) => fleet.client.once('connect', () => r()));
  await a.kill('SIGKILL');
  await Promise.all([bridgeBack, fleetBack]);
  t.is(bridge.url, b.url);
  t.is(fleet.url, b.url);
  t.is(bridge.stats().failovers, 1);
  // The bridge said online again on B and published its retained documents there.
  t.regex(await onB.next((topic) => topic === statusTopic(topics), 'status on B'), /"online"/);
  t.is(await onB.next((topic) => topic === 'hsxfo/gw-fo/device/d1/inventory', 'inventory on B'), JSON.stringify({ sha256: 'abc' }));
  t.regex(await onB.next((topic) => topic === deviceStateTopic(topics, 'd1'), 'device state on B'), /"app_name":"app"/);
  // The fleet client published what it held retained and B lacked.
  t.is(await fleet.republished, 2);
  t.is(await onB.next((topic) => topic === 'hsxfo/fleet/rollouts/r-1', 'rollout doc on B'), JSON.stringify({ id: 'r-1', version: 3 }));
  t.is((await onB.next((topic) => topic === 'hsxfo/fleet/images/x', 'image on B')).length, 1000);
  // Subscriptions were made again on B: a command reaches the bridge, a document the fleet client.
  await onB.c.publishAsync('hsxfo/gw-fo/jobs/submit', 'req-on-b', { qos: 1 });
  await onB.c.publishAsync('hsxfo/fleet/rollouts/r-2', JSON.stringify({ id: 'r-2', version: 1 }), { qos: 1, retain: true });
  await fleet.sync();
  await onB.next((topic) => topic === 'hsxfo/gw-fo/jobs/submit', 'the request on B');
  await command;
  t.deepEqual(commands, ['req-on-b']);
  t.true(docs.includes(JSON.stringify({ id: 'r-2', version: 1 })));
  // Events published after the failover go to B.
  bridge.publishEvent({ seq: 2, ts: 2, type: 'provisioning.started', pid: 2, phase: 'begin', data: {}, device: 'd1' });
  await onB.next((topic) => topic === 'hsxfo/gw-fo/device/d1/events/provisioning/started', 'an event on B');
  onB.c.end(true);
  await fleet.close();
});

test.serial('a fleet client whose broker already holds a newer rollout document after the failover keeps that one', async (t) => {
  if (!mosquittoAvailable()) return t.pass('mosquitto not installed');
  const a = await startMosquitto();
  const b = await startMosquitto();
  t.teardown(() => a.stop());
  t.teardown(() => b.stop());
  const fleet = await FleetMqtt.connect({ urls: [a.url, b.url], prefix: 'hsxnv', persistent: false, connectTimeoutMs: 2_000 });
  t.teardown(() => fleet.close());
  await fleet.publish('hsxnv/fleet/rollouts/r-1', JSON.stringify({ id: 'r-1', version: 3 }), true);
  const other = await mqtt.connectAsync(b.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => other.endAsync(true));
  await other.publishAsync('hsxnv/fleet/rollouts/r-1', JSON.stringify({ id: 'r-1', version: 5 }), { qos: 1, retain: true });
  const back = new Promise<void>((r) => fleet.client.once('connect', () => r()));
  await a.kill('SIGKILL');
  await back;
  t.is(await fleet.republished, 0);
  const got = await fleet.snapshot(['hsxnv/fleet/rollouts/r-1']);
  t.is(got.get('hsxnv/fleet/rollouts/r-1')?.toString(), JSON.stringify({ id: 'r-1', version: 5 }));
});
