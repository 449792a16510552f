import test from 'ava';
import { spawn } from 'node:child_process';
import mqtt, { type MqttClient } from 'mqtt';
import { MqttBridge, type BridgeEvent } from '../src/gateway/mqtt/bridge.js';
import { OutageBuffer } from '../src/gateway/mqtt/outage-buffer.js';
import { deviceStateTopic, eventTopic, statusTopic } from '../src/gateway/mqtt/topics.js';
import { startEmbeddedBroker } from '../src/gateway/mqtt/embedded-broker.js';
import { startMosquitto, mosquittoAvailable } from './support/mosquitto.js';

interface Received { topic: string; payload: string; retain: boolean }

async function subscriber(url: string, topic: string, extra: mqtt.IClientOptions = {}): Promise<{ client: MqttClient; got: Received[] }> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 200, ...extra });
  const got: Received[] = [];
  client.on('message', (t, p, packet) => got.push({ topic: t, payload: p.toString(), retain: packet.retain }));
  await client.subscribeAsync(topic, { qos: 1 });
  return { client, got };
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let seq = 0;
function ev(type: string, pid: number, data: Record<string, unknown> = {}, device = 'dev1'): BridgeEvent {
  seq++;
  return { seq, ts: 1000 + seq, type: type as BridgeEvent['type'], pid, phase: 'write', data, device };
}

const topics = { prefix: 'hsxtest', gatewayId: 'gw1' };

test('mosquitto is installed for the MQTT tests', (t) => {
  t.true(mosquittoAvailable(), 'mosquitto missing: .ci/run installs the Debian package mosquitto');
});

test('events go to documented topics with the envelope as payload; state is retained for late subscribers', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const sub = await subscriber(broker.url, 'hsxtest/#');
  const bridge = new MqttBridge({ url: broker.url, topics });
  await bridge.waitConnected();
  bridge.publishEvent(ev('provisioning.started', 1));
  bridge.publishEvent(ev('provisioning.progress', 1, { percent: 50 }));
  bridge.publishEvent(ev('provisioning.complete', 1, { app_name: 'blink', version: '1.2.0', crc32: 0x1234, source: 'uart:/dev/x' }));
  await until(() => sub.got.some((m) => m.topic === deviceStateTopic(topics, 'dev1')), 'retained state');
  t.is(sub.got.find((m) => m.topic === statusTopic(topics))?.payload.includes('"online"'), true);
  const started = sub.got.find((m) => m.topic === 'hsxtest/gw1/device/dev1/events/provisioning/started');
  t.truthy(started, 'started event on its topic');
  const env = JSON.parse(started!.payload);
  t.is(env.type, 'provisioning.started');
  t.is(env.pid, 1);
  t.is(typeof env.seq, 'number');
  t.truthy(sub.got.find((m) => m.topic === eventTopic(topics, 'provisioning.progress', 'dev1')));

  // A subscriber that arrives later still sees the last READY image and the availability.
  const late = await subscriber(broker.url, 'hsxtest/gw1/device/+/state');
  await until(() => late.got.length > 0, 'retained state for the late subscriber');
  const state = JSON.parse(late.got[0]!.payload);
  t.true(late.got[0]!.retain);
  t.is(state.app_name, 'blink');
  t.is(state.version, '1.2.0');
  t.is(state.crc32, 0x1234);
  t.is(state.source, 'uart:/dev/x');
  await bridge.stop();
  await sub.client.endAsync();
  await late.client.endAsync();
});

test('Last Will: a bridge process killed with SIGKILL shows offline to subscribers', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const sub = await subscriber(broker.url, statusTopic({ prefix: 'lwt', gatewayId: 'gwk' }));
  const child = spawn(process.execPath, ['--import=tsx', 'test/support/bridge-child.ts', broker.url, 'lwt', 'gwk'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => d.toString().includes('connected') && resolve()));
  await until(() => sub.got.some((m) => m.payload.includes('"online"')), 'online');
  child.kill('SIGKILL');
  await until(() => sub.got.some((m) => m.payload.includes('"offline"')), 'offline from the will', 15_000);
  const last = JSON.parse(sub.got.at(-1)!.payload);
  t.is(last.state, 'offline');
  t.is(last.reason, 'connection_lost');
  await sub.client.endAsync();
});

test('broker stopped and restarted mid-stream: every terminal event arrives, in order', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.stop());
  const sub = await subscriber(broker.url, 'hsxtest/gw1/device/+/events/provisioning/complete', { clean: false, clientId: 'outage-sub', protocolVersion: 4 });
  const bridge = new MqttBridge({ url: broker.url, topics, reconnectPeriodMs: 100 });
  // Stopped however the test ends: a bridge left reconnecting keeps the test process alive.
  t.teardown(() => bridge.stop().then(() => undefined));
  t.teardown(() => sub.client.endAsync());
  await bridge.waitConnected();
  const sent: number[] = [];
  for (let i = 0; i < 20; i++) {
    const e = ev('provisioning.complete', i);
    sent.push(e.seq);
    bridge.publishEvent(e);
  }
  await until(() => sub.got.length >= 20, 'first batch');
  await broker.stop();
  for (let i = 20; i < 60; i++) {
    bridge.publishEvent(ev('provisioning.progress', i, { percent: i }));
    const e = ev('provisioning.complete', i);
    sent.push(e.seq);
    bridge.publishEvent(e);
  }
  await until(() => !bridge.stats().connected, 'bridge noticed the outage');
  await broker.restart();
  // The subscriber's persistent session survives the restart, so messages flushed before it reconnects wait for it.
  await until(() => bridge.stats().connected, 'bridge reconnected');
  // Publish one marker after reconnect so we know the flush happened before it.
  const marker = ev('provisioning.complete', 999);
  sent.push(marker.seq);
  bridge.publishEvent(marker);
  await until(() => sub.got.some((m) => JSON.parse(m.payload).seq === marker.seq), 'marker after reconnect', 20_000);
  const seqs = sub.got.map((m) => JSON.parse(m.payload).seq as number);
  for (const s of sent) t.true(seqs.includes(s), `terminal event seq ${s} delivered`);
  const afterOutage = seqs.filter((s) => s > sent[19]!);
  t.deepEqual(afterOutage, [...afterOutage].sort((a, b) => a - b), 'flushed in order');
  t.is(bridge.stats().droppedTerminal, 0);
});

test('an ACL that denies the gateway a topic: a clear error in the log, no crash, other topics flow', async (t) => {
  const broker = await startMosquitto({
    users: { gw: 'gwpass', watcher: 'wpass' },
    acl: ['user gw', 'topic write acl/gw1/status', 'topic write acl/gw1/device/+/events/provisioning/started', 'user watcher', 'topic read acl/#'],
  });
  t.teardown(() => broker.stop());
  const sub = await subscriber(broker.url, 'acl/#', { username: 'watcher', password: 'wpass' });
  const errors: Array<{ obj: object; msg?: string }> = [];
  const logger = { info() {}, warn() {}, error: (obj: object, msg?: string) => errors.push({ obj, msg }) };
  const bridge = new MqttBridge({ url: broker.url, topics: { prefix: 'acl', gatewayId: 'gw1' }, username: 'gw', password: 'gwpass', logger });
  await bridge.waitConnected();
  bridge.publishEvent(ev('provisioning.complete', 7));
  bridge.publishEvent(ev('provisioning.started', 8));
  await until(() => sub.got.some((m) => m.topic.endsWith('/started')), 'allowed topic delivered');
  await until(() => errors.length > 0, 'refusal logged');
  t.regex(errors[0]!.msg ?? '', /refused by the broker/);
  t.like(errors[0]!.obj, { topic: 'acl/gw1/device/dev1/events/provisioning/complete' });
  t.false(sub.got.some((m) => m.topic.endsWith('/complete')), 'denied topic not delivered');
  t.true(bridge.stats().refused >= 1);
  await bridge.stop();
  await sub.client.endAsync();
});

test('embedded aedes broker speaks MQTT 3.1.1 to the bridge', async (t) => {
  // Access rules and bounds of the embedded broker: test/mqtt-broker-access.test.ts.
  const broker = await startEmbeddedBroker({ port: 0, topics, anonymousRead: true });
  t.teardown(() => broker.close());
  const sub = await subscriber(broker.url, 'hsxtest/#', { protocolVersion: 4 });
  const { username, password, clientId } = broker.internal;
  const bridge = new MqttBridge({ url: broker.url, topics, protocolVersion: 4, username, password, clientId });
  await bridge.waitConnected();
  bridge.publishEvent(ev('provisioning.error', 3, { code: 'EBADMSG' }));
  await until(() => sub.got.some((m) => m.topic.endsWith('/provisioning/error')), 'error event');
  t.pass();
  await bridge.stop();
  await sub.client.endAsync();
});

test('outage buffer drops progress first, keeps terminal events up to the hard limit, counts every loss', (t) => {
  const b = new OutageBuffer(4, 6);
  const msg = (i: number, terminal: boolean) => ({ topic: `t/${i}`, payload: String(i), qos: 1 as const, retain: false, terminal });
  b.push(msg(1, false));
  b.push(msg(2, true));
  b.push(msg(3, false));
  b.push(msg(4, true));
  b.push(msg(5, true)); // over soft limit: drops progress 1
  t.deepEqual(b.counters(), { droppedProgress: 1, droppedTerminal: 0, buffered: 4 });
  b.push(msg(6, true)); // drops progress 3
  b.push(msg(7, true)); // all terminal now: kept past the soft limit
  b.push(msg(8, true));
  t.is(b.size, 6);
  b.push(msg(9, true)); // over the hard limit: oldest terminal dropped and counted
  t.deepEqual(b.takeCounters(), { droppedProgress: 2, droppedTerminal: 1, buffered: 6 });
  t.deepEqual(b.drain().map((m) => m.payload), ['4', '5', '6', '7', '8', '9']);
  t.deepEqual(b.counters(), { droppedProgress: 0, droppedTerminal: 0, buffered: 0 });
  // Retained messages keep only the newest per topic.
  b.push({ topic: 's', payload: 'old', qos: 1, retain: true, terminal: true });
  b.push({ topic: 's', payload: 'new', qos: 1, retain: true, terminal: true });
  t.deepEqual(b.drain().map((m) => m.payload), ['new']);
});
