/**
 * Access control and bounds of the embedded MQTT broker (issue 23 item 5), and the bridge's
 * re-assert of its retained topics against an external Mosquitto. Real sockets, mqtt.js clients;
 * every wait is on an event (a message, a close, a log line), bounded.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { sha256Hex } from '../src/gateway/control/auth.js';
import { validateConfig } from '../src/gateway/config.js';
import { Gateway } from '../src/gateway/gateway.js';
import { createLogger } from '../src/gateway/logger.js';
import { MqttBridge } from '../src/gateway/mqtt/bridge.js';
import { startEmbeddedBroker, FrameScanner } from '../src/gateway/mqtt/embedded-broker.js';
import { deviceStateTopic, statusTopic } from '../src/gateway/mqtt/topics.js';
import { freePort, startMosquitto } from './support/mosquitto.js';
import { startServe } from './support/serve-child.js';

interface Received { topic: string; payload: string; retain: boolean }

const MONITOR_TOKEN = 'monitor-token-0123456789';
const OPERATOR_TOKEN = 'operator-token-0123456789';
const tokens = [
  { name: 'monitor', role: 'viewer' as const, sha256: sha256Hex(MONITOR_TOKEN) },
  { name: 'ops', role: 'operator' as const, sha256: sha256Hex(OPERATOR_TOKEN) },
];

/** Resolves with the first `event` whose arguments `pred` accepts; rejects after `ms`. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Emitter = { on(event: string, f: (...args: any[]) => void): unknown; off(event: string, f: (...args: any[]) => void): unknown };

function once<T extends unknown[]>(em: Emitter, event: string, what: string, pred: (...args: T) => boolean = () => true, ms = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      em.off(event, on);
      reject(new Error(`timed out waiting for ${what}`));
    }, ms);
    const on = (...args: unknown[]): void => {
      if (!pred(...(args as T))) return;
      clearTimeout(timer);
      em.off(event, on);
      resolve(args as T);
    };
    em.on(event, on);
  });
}

/** A client that keeps every message; `next` waits for one that matches, from index `from` of `got` on (already received ones count). */
async function watcher(url: string, topic: string | string[], extra: IClientOptions = {}): Promise<{ client: MqttClient; got: Received[]; next(pred: (m: Received) => boolean, what: string, from?: number): Promise<Received> }> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, ...extra });
  const got: Received[] = [];
  const arrived = new EventEmitter();
  client.on('message', (t, p, packet) => {
    got.push({ topic: t, payload: p.toString(), retain: packet.retain });
    arrived.emit('message');
  });
  const next = async (pred: (m: Received) => boolean, what: string, from = 0): Promise<Received> => {
    const find = (): Received | undefined => got.slice(from).find(pred);
    const hit = find();
    if (hit) return hit;
    await once(arrived, 'message', what, () => find() !== undefined);
    return find()!;
  };
  await client.subscribeAsync(topic, { qos: 1 });
  return { client, got, next };
}

/** Connects; resolves with the CONNACK refusal code, or 0 when accepted (the client is then closed). */
async function connectResult(url: string, extra: IClientOptions): Promise<number> {
  const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, ...extra });
  try {
    return await new Promise<number>((resolve) => {
      client.once('connect', () => resolve(0));
      client.once('error', (e) => resolve((e as Error & { code?: number }).code ?? -1));
      client.once('close', () => resolve(-1));
    });
  } finally {
    client.end(true);
  }
}

/** Publishes and waits for the broker to cut the connection off (the refusal with MQTT 3.1.1). */
async function publishIsRefused(client: MqttClient, topic: string, payload: string | Buffer, retain = true): Promise<void> {
  client.on('error', () => undefined);
  const closed = once(client, 'close', `the broker closing the connection after a publish to ${topic}`);
  client.publish(topic, payload, { qos: 1, retain });
  await closed;
}

function silentLog() {
  return createLogger('silent', { pretty: false });
}

async function startGateway(t: import('ava').ExecutionContext, mqttExtra: Record<string, unknown> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-mqtt-acl-'));
  const cfg = validateConfig({
    gateway: { id: 'acl', log_level: 'silent' },
    control: { listen: '127.0.0.1:0', tokens },
    mqtt: { embedded: true, embedded_port: 0, topic_prefix: 'hsxacl', ...mqttExtra },
    devices: [{ name: 'd1', state_dir: join(dir, 'd1'), flash: { size: 262144 }, fram: { size: 16384 } }],
  });
  if (!cfg.ok) throw new Error(cfg.error.message);
  const started = await Gateway.start(cfg.value, silentLog(), { controlPort: 0 });
  if (!started.ok) throw new Error(started.error.message);
  const gw = started.value;
  t.teardown(() => gw.stop());
  await gw.bridge!.waitConnected();
  return { gw, url: gw.embeddedBroker!.url, topics: { prefix: 'hsxacl', gatewayId: 'acl' } };
}

test('embedded broker: anonymous and unknown credentials are refused at CONNECT; a token (any role) reads the gateway\'s events', async (t) => {
  t.timeout(60_000);
  const { gw, url, topics } = await startGateway(t);
  t.is(await connectResult(url, {}), 5, 'anonymous: 5 not authorized');
  t.is(await connectResult(url, { username: 'monitor', password: 'wrong-token-xxxxxxxx' }), 4, 'wrong token: 4 bad username or password');
  t.is(await connectResult(url, { username: 'nobody', password: MONITOR_TOKEN }), 4, 'token under another name: 4');
  t.is(await connectResult(url, { username: gw.embeddedBroker!.internal.username, password: 'guess' }), 4, "the gateway's username with a guessed password: 4");
  t.is(await connectResult(url, { username: 'monitor', password: MONITOR_TOKEN, clientId: gw.embeddedBroker!.internal.clientId }), 2, "the gateway's client id is reserved: 2");
  t.is(await connectResult(url, { username: 'monitor', password: MONITOR_TOKEN, clean: false, clientId: 'persistent-1' }), 5, 'no persistent sessions (unbounded offline queues)');

  for (const [user, token] of [['monitor', MONITOR_TOKEN], ['ops', OPERATOR_TOKEN]] as const) {
    const w = await watcher(url, `${topics.prefix}/${topics.gatewayId}/#`, { username: user, password: token });
    const status = await w.next((m) => m.topic === statusTopic(topics), `${user}: retained status`);
    t.like(JSON.parse(status.payload), { state: 'online', pid: process.pid });
    gw.bus.publish({ type: 'provisioning.complete', pid: 3, phase: 'end', data: { app_name: `app-${user}`, device: 'd1' } });
    const ev = await w.next((m) => m.topic.endsWith('/device/d1/events/provisioning/complete') && m.payload.includes(`app-${user}`), `${user}: the event`);
    t.is(JSON.parse(ev.payload).type, 'provisioning.complete');
    await w.next((m) => m.topic === deviceStateTopic(topics, 'd1') && m.payload.includes(`app-${user}`), `${user}: the device state`);
    await w.client.endAsync();
  }
});

test("embedded broker: a monitor's publish under the prefix (retained status overwrite) is refused; the retained status stays the gateway's", async (t) => {
  t.timeout(60_000);
  const { gw, url, topics } = await startGateway(t);
  const forged = JSON.stringify({ state: 'offline', reason: 'forged' });
  for (const [user, token] of [['monitor', MONITOR_TOKEN], ['ops', OPERATOR_TOKEN]] as const) {
    const attacker = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: user, password: token });
    await publishIsRefused(attacker, statusTopic(topics), forged);
    const attacker2 = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: user, password: token });
    await publishIsRefused(attacker2, deviceStateTopic(topics, 'd1'), forged);
    const attacker3 = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: user, password: token });
    await publishIsRefused(attacker3, 'elsewhere/topic', 'x', false);
  }
  // A Last Will is a publish too: a will on the status topic is refused when the connection dies.
  const willer = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: 'monitor', password: MONITOR_TOKEN, will: { topic: statusTopic(topics), payload: Buffer.from(forged), qos: 1, retain: true } });
  willer.stream.destroy();
  await once(willer, 'close', 'the will client gone');

  const late = await watcher(url, [statusTopic(topics), deviceStateTopic(topics, '+')], { username: 'monitor', password: MONITOR_TOKEN });
  const status = await late.next((m) => m.topic === statusTopic(topics), 'retained status for a late subscriber');
  t.true(status.retain);
  t.like(JSON.parse(status.payload), { state: 'online', pid: process.pid }, "still the gateway's");
  const stats = gw.embeddedBroker!.stats();
  t.true(stats.refusedPublishes >= 6, `refused publishes counted (${stats.refusedPublishes})`);
  t.false(late.got.some((m) => m.payload.includes('forged')));
  await late.client.endAsync();
});

test('embedded broker with mqtt.anonymous_read = true: an anonymous client subscribes and cannot publish', async (t) => {
  t.timeout(60_000);
  const { gw, url, topics } = await startGateway(t, { anonymous_read: true });
  const anon = await watcher(url, `${topics.prefix}/#`);
  const status = await anon.next((m) => m.topic === statusTopic(topics), 'retained status');
  t.like(JSON.parse(status.payload), { state: 'online' });
  gw.bus.publish({ type: 'provisioning.started', pid: 1, phase: 'begin', data: { device: 'd1' } });
  await anon.next((m) => m.topic.endsWith('/device/d1/events/provisioning/started'), 'a live event');
  await publishIsRefused(anon.client, statusTopic(topics), JSON.stringify({ state: 'offline' }));
  t.is(await connectResult(url, { username: 'monitor', password: 'wrong-token-xxxxxxxx' }), 4, 'wrong credentials are still refused');
  const late = await watcher(url, statusTopic(topics));
  t.like(JSON.parse((await late.next(() => true, 'status')).payload), { state: 'online' });
  await late.client.endAsync();
});

test('embedded broker: retained messages beyond max_retained are delivered but not stored; connections beyond max_connections are refused', async (t) => {
  t.timeout(60_000);
  const topics = { prefix: 'hsxlim', gatewayId: 'gw' };
  const warnings: string[] = [];
  const logger = { info() {}, error() {}, warn: (_o: object, msg?: string) => warnings.push(msg ?? '') };
  const broker = await startEmbeddedBroker({ port: 0, topics, tokens, maxRetained: 10, maxConnections: 3, logger });
  t.teardown(() => broker.close());
  // The gateway's own client (the only one that may publish), 100 retained topics.
  const gwClient = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, ...broker.internal });
  for (let i = 0; i < 100; i++) await gwClient.publishAsync(`hsxlim/gw/r/${i}`, `value-${i}`, { qos: 1, retain: true });
  const s = broker.stats();
  t.is(s.retained, 10);
  t.is(s.retainedNotStored, 90);
  t.true(warnings.some((w) => w.includes('retained limit')));
  // Outside its own root even the gateway's client may not publish.
  await publishIsRefused(gwClient, 'other/gw/status', 'x');

  const mons: MqttClient[] = [];
  // Topics in this order: a stored r/99 would come before r/5 in the retained stream.
  const w = await watcher(broker.url, ['hsxlim/gw/r/99', 'hsxlim/gw/r/5'], { username: 'monitor', password: MONITOR_TOKEN });
  mons.push(w.client);
  await w.next((m) => m.topic === 'hsxlim/gw/r/5', 'a stored retained message');
  t.false(w.got.some((m) => m.topic === 'hsxlim/gw/r/99'), 'the 100th was not stored');
  for (let i = 0; i < 2; i++) mons.push(await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'monitor', password: MONITOR_TOKEN }));
  t.is(await connectResult(broker.url, { username: 'monitor', password: MONITOR_TOKEN }), 3, 'a 4th monitor: 3 server unavailable');
  for (const m of mons) await m.endAsync();
});

test('the frame scanner finds an oversized packet from its fixed header, across chunk boundaries', (t) => {
  const s = new FrameScanner(1000);
  // PINGREQ, then a PUBLISH header announcing 2,000,000 bytes split over two chunks.
  t.is(s.feed(Buffer.from([0xc0, 0x00, 0x30])), null);
  t.is(s.feed(Buffer.from([0x80, 0x89])), null);
  t.is(s.feed(Buffer.from([0x7a])), 2_000_000);
  const ok = new FrameScanner(1000);
  const body = Buffer.alloc(900);
  t.is(ok.feed(Buffer.concat([Buffer.from([0x30, 0x84, 0x07]), body.subarray(0, 400)])), null);
  t.is(ok.feed(Buffer.concat([body.subarray(400), Buffer.from([0xc0, 0x00])])), null);
  t.is(new FrameScanner(10).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff])), -1, 'a malformed remaining length');
});

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

test('serve with the embedded broker: 100 × 1 MB and one 50 MB publish are cut off without growing its RSS; status stays the gateway\'s', async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-mqtt-rss-'));
  const port = await freePort();
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "rss"', 'log_level = "error"',
    '[control]', 'listen = "127.0.0.1:0"',
    '[[control.tokens]]', 'name = "monitor"', 'role = "viewer"', `sha256 = "${sha256Hex(MONITOR_TOKEN)}"`,
    '[mqtt]', 'embedded = true', `embedded_port = ${port}`, 'topic_prefix = "hsx"',
    '[[devices]]', 'name = "d1"', 'state_dir = "state/d1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ].join('\n'));
  const gw = await startServe(config);
  t.teardown(() => gw.child.kill('SIGKILL'));
  const url = `mqtt://127.0.0.1:${port}`;
  const auth = { username: 'monitor', password: MONITOR_TOKEN };
  const topics = { prefix: 'hsx', gatewayId: 'rss' };
  // Warm up: one monitor that reads the status, so the baseline includes a served connection.
  const warm = await watcher(url, statusTopic(topics), auth);
  await warm.next(() => true, 'status');
  await warm.client.endAsync();
  const start = rssKiB(gw.child.pid!);
  // The same connection churn with small (refused) publishes, so the baseline has paid for it.
  for (let i = 0; i < 100; i++) {
    const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, ...auth });
    await publishIsRefused(c, `hsx/rss/small/${i}`, 'x');
  }
  const before = rssKiB(gw.child.pid!);
  t.log(`serve RSS: at start ${(start / 1024).toFixed(1)} MiB, after 100 connections with small refused publishes ${(before / 1024).toFixed(1)} MiB`);

  const mib = Buffer.alloc(1024 * 1024, 0x41);
  for (let i = 0; i < 100; i++) {
    const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, ...auth });
    await publishIsRefused(c, `hsx/rss/big/${i}`, mib);
  }
  const afterMiB = rssKiB(gw.child.pid!);
  const huge = Buffer.alloc(50 * 1024 * 1024, 0x42);
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, ...auth });
  await publishIsRefused(c, statusTopic(topics), huge);
  const after = rssKiB(gw.child.pid!);
  t.log(`serve RSS: before ${(before / 1024).toFixed(1)} MiB, after 100 × 1 MB ${(afterMiB / 1024).toFixed(1)} MiB, after 50 MB ${(after / 1024).toFixed(1)} MiB (growth ${((after - before) / 1024).toFixed(1)} MiB)`);
  // Stored, these would be 150 MiB. What remains is V8/Node sizing: each cut-off connection leaves
  // one 64 KiB read buffer as garbage until the next GC (100 × 64 KiB = 6.25 MiB), heap growth aside.
  t.true(afterMiB - before < 16 * 1024, `100 × 1 MB: RSS grew by ${((afterMiB - before) / 1024).toFixed(1)} MiB`);
  t.true(after - afterMiB < 4 * 1024, `50 MB: RSS grew by ${((after - afterMiB) / 1024).toFixed(1)} MiB`);

  const late = await watcher(url, [statusTopic(topics), 'hsx/rss/big/+'], auth);
  const status = await late.next((m) => m.topic === statusTopic(topics), 'status after the flood');
  t.like(JSON.parse(status.payload), { state: 'online' });
  t.false(late.got.some((m) => m.topic.startsWith('hsx/rss/big/')), 'nothing was stored');
  await late.client.endAsync();
});

test('against Mosquitto: another client overwrites the retained status and a device state; the bridge re-asserts them (warning names the topic), bounded per topic', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const topics = { prefix: 'hsxre', gatewayId: 'gw1' };
  const status = statusTopic(topics);
  const state = deviceStateTopic(topics, 'dev1');
  const warnings: Array<{ obj: Record<string, unknown>; msg: string }> = [];
  const logs = new EventEmitter();
  const logger = { info() {}, error() {}, warn: (obj: object, msg?: string) => { warnings.push({ obj: obj as Record<string, unknown>, msg: msg ?? '' }); logs.emit('warn', obj); } };
  const bridge = new MqttBridge({ url: broker.url, topics, logger });
  t.teardown(() => bridge.stop());
  const live = await watcher(broker.url, `${topics.prefix}/#`, { protocolVersion: 5 });
  await bridge.waitConnected();
  const online = await live.next((m) => m.topic === status && m.payload.includes('"online"'), 'online');
  bridge.publishEvent({ seq: 1, ts: 1, type: 'provisioning.complete', pid: 1, phase: 'end', data: { app_name: 'blink', crc32: 1 }, device: 'dev1' });
  const ownState = await live.next((m) => m.topic === state, 'device state');

  const attacker = await mqtt.connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
  const forged = JSON.stringify({ state: 'offline', reason: 'forged' });
  const warned = once<[Record<string, unknown>]>(logs, 'warn', 'a warning naming the status topic', (o) => o['topic'] === status);
  await attacker.publishAsync(status, forged, { qos: 1, retain: true });
  await warned;
  t.regex(warnings.find((w) => w.obj['topic'] === status)!.msg, /hsxre\/gw1\/status overwritten by another client/);
  // The bridge and the live subscriber are two clients: either may hear the forgery first.
  await live.next((m) => m.topic === status && m.payload === forged, 'the forged status at the live subscriber');
  const forgedAt = live.got.findIndex((m) => m.topic === status && m.payload === forged);
  await live.next((m) => m.topic === status && m.payload === online.payload, 're-asserted status', forgedAt + 1);
  const late = await watcher(broker.url, status, { protocolVersion: 5 });
  const seen = await late.next(() => true, 'retained status for a late subscriber');
  t.true(seen.retain);
  t.is(seen.payload, online.payload, "the gateway's own payload");
  await late.client.endAsync();

  // A burst of overwrites of the device state: re-asserted at most once per second per topic, and the last word is ours.
  const started = Date.now();
  const burst = 20;
  const before = bridge.stats().reasserted;
  for (let i = 0; i < burst; i++) await attacker.publishAsync(state, JSON.stringify({ forged: i }), { qos: 1, retain: true });
  // After the last forged message arrives, a re-assert of ours must follow it.
  await live.next((x) => x.topic === state && x.payload.includes(`"forged":${burst - 1}`), 'the last forged state');
  const lastForged = live.got.findIndex((x) => x.topic === state && x.payload.includes(`"forged":${burst - 1}`));
  await live.next((x) => x.topic === state && x.payload === ownState.payload, 'state re-asserted after the burst', lastForged + 1);
  const elapsed = Date.now() - started;
  const reasserts = bridge.stats().reasserted - before;
  t.log(`${burst} forged states → ${reasserts} re-assert(s) in ${elapsed} ms`);
  t.true(reasserts >= 1 && reasserts <= 1 + Math.ceil(elapsed / 1000), `${reasserts} re-asserts for ${burst} overwrites`);
  const late2 = await watcher(broker.url, state, { protocolVersion: 5 });
  t.is((await late2.next(() => true, 'retained state')).payload, ownState.payload);
  await late2.client.endAsync();
  await attacker.endAsync();
  await live.client.endAsync();
});
