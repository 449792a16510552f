/**
 * docs/mqtt.md against a real Mosquitto: every payload example in its "Payloads" section is parsed
 * from the doc, and a real message on that topic, made by a real gateway (a device booted from a
 * preload directory on a virtual CAN bus with a master link), must have exactly its keys (nested
 * ones included) and values of the same JSON types; every `ts` is seconds. Also: a device's values
 * are retained for a late subscriber after a CAN SET changes one, and a CAN node's PUB frame (built
 * by hand from docs/can_protocol.md) is republished the same way. The Jobs section's payloads are
 * checked by test/mqtt-jobs.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { encodeF16 } from '../src/hxe/index.js';
import { validateConfig } from '../src/gateway/config.js';
import { Gateway } from '../src/gateway/gateway.js';
import { createLogger } from '../src/gateway/logger.js';
import { EventBus } from '../src/gateway/events/index.js';
import { MqttBridge } from '../src/gateway/mqtt/bridge.js';
import { toBridgeEvent } from '../src/gateway/gateway.js';
import { systemClock } from '../src/engine/index.js';
import { openCanBus } from '../src/link/can/address.js';
import { requestValue } from '../src/link/can/value-client.js';
import { startMosquitto } from './support/mosquitto.js';
import { spawnCli } from './support/can-bus.js';
import { startVirtualHub } from '../src/link/can/virtual-net.js';

type Json = Record<string, unknown>;
interface Msg { topic: string; payload: string; retain: boolean; qos: number }

const doc = readFileSync(new URL('../docs/mqtt.md', import.meta.url), 'utf8');

/** The "Payloads" section's examples: `On \`<topic>\` …:` followed by a ```json block. */
function documented(): Array<{ topic: string; what: string; payload: Json }> {
  const start = doc.indexOf('\n## Payloads');
  const section = doc.slice(start, doc.indexOf('\n## ', start + 1));
  return [...section.matchAll(/^On `([^`]+)`([^\n]*):\n\n```json\n([\s\S]*?)```/gm)].map((m) => ({
    topic: m[1]!,
    what: m[2]!.trim(),
    payload: JSON.parse(m[3]!) as Json,
  }));
}

/** Every key path with its JSON type (arrays: their elements under `[]`), sorted. */
function shape(v: unknown, at = '$'): string[] {
  const type = v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
  if (Array.isArray(v)) return [...new Set([`${at}:array`, ...v.flatMap((x) => shape(x, `${at}[]`))])].sort();
  if (type !== 'object') return [`${at}:${type}`];
  const out = [`${at}:object`];
  for (const [k, x] of Object.entries(v as Json)) out.push(...shape(x, `${at}.${k}`));
  return out.sort();
}

/** Keys only (a documented `null` may be a value in another real message, and vice versa). */
const keys = (v: unknown): string[] => shape(v).map((s) => s.slice(0, s.lastIndexOf(':'))).filter((k, i, a) => a.indexOf(k) === i);

/** Documented topic pattern (`<prefix>`, `<gw>`, `<device>`… placeholders) as a regular expression. */
function topicRe(pattern: string): RegExp {
  const esc = pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/<type>/g, '.+').replace(/<[a-z]+>/g, '[^/]+');
  return new RegExp(`^${esc}$`);
}

/** A subscriber that keeps everything and lets the test wait for the first message (old or new) that matches. */
class Watch {
  readonly got: Msg[] = [];
  private waiters: Array<{ pred: (m: Msg) => boolean; resolve: (m: Msg) => void }> = [];
  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, p, packet) => {
      const m = { topic, payload: p.toString(), retain: packet.retain, qos: packet.qos };
      this.got.push(m);
      for (const w of [...this.waiters]) if (w.pred(m)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(m);
      }
    });
  }
  static async open(url: string, filter: string, opts: mqtt.IClientOptions = {}): Promise<Watch> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 0, ...opts });
    const w = new Watch(client);
    await client.subscribeAsync(filter, { qos: 1 });
    return w;
  }
  next(pred: (m: Msg) => boolean, from = 0): Promise<Msg> {
    const old = this.got.slice(from).find(pred);
    return old ? Promise.resolve(old) : new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }
  close(): Promise<void> {
    return this.client.endAsync();
  }
}

const json = (m: Msg): Json => JSON.parse(m.payload) as Json;

/** Checks a real message against the doc's example for its topic (and what it is, when one topic has several). */
function matchesDoc(t: ExecutionContext, m: Msg, what = ''): void {
  const docs = documented().filter((d) => topicRe(d.topic).test(m.topic) && d.what.includes(what));
  t.is(docs.length, 1, `one documented payload for ${m.topic} ${what}: ${docs.map((d) => d.what).join(' | ')}`);
  const d = docs[0]!;
  t.deepEqual(keys(json(m)), keys(d.payload), `${m.topic} ${what}: keys as documented`);
  // Types too, where the doc's example is not null.
  const real = new Map(shape(json(m)).map((s) => [s.slice(0, s.lastIndexOf(':')), s.slice(s.lastIndexOf(':') + 1)]));
  for (const s of shape(d.payload)) {
    const [path, type] = [s.slice(0, s.lastIndexOf(':')), s.slice(s.lastIndexOf(':') + 1)];
    if (type !== 'null' && real.get(path) !== 'null') t.is(real.get(path), type, `${m.topic} ${what}: ${path} is a ${type}`);
  }
  // One unit: every `ts` (and `*_ts`) is seconds since the epoch, a float near now.
  for (const [k, v] of Object.entries(json(m))) {
    if ((k === 'ts' || k.endsWith('_ts')) && typeof v === 'number') t.true(Math.abs(v - Date.now() / 1000) < 600, `${m.topic}: ${k}=${v} is seconds`);
  }
}

/** The topic table (outside Jobs): topic pattern, retained, QoS column. */
function tableRows(): Array<{ topic: string; retained: string; qos: string }> {
  const table = doc.slice(doc.indexOf('| topic | retained | QoS | payload |'), doc.indexOf('\n## Event envelope'));
  return [...table.matchAll(/^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|/gm)]
    .map((m) => ({ topic: m[1]!, retained: m[2]!.trim(), qos: m[3]!.trim() }))
    .filter((r) => !r.topic.includes('/jobs/'));
}

/** The table row a real topic falls under: the most literal pattern that matches it. */
function rowOf(topic: string): { topic: string; retained: string; qos: string } | undefined {
  const rows = tableRows().filter((r) => topicRe(r.topic).test(topic));
  return rows.sort((a, b) => (a.topic.match(/</g) ?? []).length - (b.topic.match(/</g) ?? []).length)[0];
}

const FIXTURE = 'test/fixtures/t04b_value_cmd_help.hxe';
const TEMPERATURE = { group: 1, id: 2, oid: 0x0102 };

async function startGw(t: ExecutionContext, url: string, bus: string, role: 'master' | 'listener' = 'master') {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-mqttdocs-'));
  mkdirSync(join(dir, 'preload'));
  copyFileSync(FIXTURE, join(dir, 'preload', 'sensor.hxe'));
  const cfg = validateConfig({
    gateway: { id: 'docs', log_level: 'silent' },
    control: { listen: '127.0.0.1:0' },
    mqtt: { url, topic_prefix: 'hsx' },
    links: { can: [{ interface: bus, backend: 'virtual', timing: false, role }] },
    devices: [{ name: 'node1', state_dir: join(dir, 'node1'), node_id: 1, flash: { size: 262144 }, fram: { size: 16384 } }],
    boot: { preload_dir: join(dir, 'preload'), confirm_window_ms: 0 },
  });
  if (!cfg.ok) throw new Error(cfg.error.message);
  const started = await Gateway.start(cfg.value, createLogger('silent', { pretty: false }), { controlPort: 0 });
  if (!started.ok) throw new Error(started.error.message);
  t.teardown(() => started.value.stop().then(() => undefined));
  return started.value;
}

test('docs/mqtt.md "Payloads": the examples cover every topic of the topic table outside Jobs', (t) => {
  const table = doc.slice(doc.indexOf('| topic | retained | QoS | payload |'), doc.indexOf('\n## Event envelope'));
  const topics = [...table.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]!).filter((x) => !x.includes('/jobs/'));
  t.true(topics.length >= 7, topics.join(' '));
  const examples = documented();
  for (const topic of topics) t.true(examples.some((e) => e.topic === topic || topicRe(topic).test(e.topic)), `an example for ${topic}`);
  for (const e of examples) t.true(topics.some((topic) => e.topic === topic || topicRe(topic).test(e.topic)), `${e.topic} is in the table`);
});

test('a real gateway on Mosquitto: every documented payload has exactly the documented keys; values are retained for late subscribers; a CAN PUB is republished', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const all = await Watch.open(broker.url, 'hsx/docs/#');
  t.teardown(() => all.close());
  const gw = await startGw(t, broker.url, 'mqttdocs-bus');
  const at = (suffix: string) => (m: Msg) => m.topic === `hsx/docs/${suffix}`;

  const online = await all.next((m) => at('status')(m) && m.payload.includes('"online"'));
  matchesDoc(t, online, 'online');
  const complete = await all.next(at('device/node1/events/provisioning/complete'));
  matchesDoc(t, complete);
  const state = await all.next(at('device/node1/state'));
  matchesDoc(t, state);
  const done = json(complete)['data'] as Json;
  t.like(json(state), { app_name: 'sensor_app', pid: json(complete)['pid'], crc32: done['crc32'], version: done['version'], sha256: done['sha256'], source: done['source'] });
  t.is(typeof json(state)['version'], 'string', 'the retained state has the version');
  t.is(typeof json(state)['crc32'], 'number', 'the retained state has the CRC-32');
  const initial = await all.next(at(`device/node1/values/${TEMPERATURE.group}:${TEMPERATURE.id}`));
  matchesDoc(t, initial);
  t.like(json(initial), { value: 12.5, f16: encodeF16(12.5), unit: 'degC', name: 'temperature' });
  const changedInit = await all.next((m) => at('device/node1/events/value/changed')(m) && (json(m)['data'] as Json)['cause'] === 'init');
  matchesDoc(t, changedInit, 'task');
  const inventory = await all.next(at('device/node1/inventory'));
  matchesDoc(t, inventory);
  const scanned = await all.next(at('events/inventory/scanned'));
  matchesDoc(t, scanned);

  // A CAN SET changes the temperature: one value.changed (cause set), the retained value replaced.
  const bus = await openCanBus('virtual:mqttdocs-bus');
  t.teardown(() => bus.close());
  const mark = all.got.length;
  const set = await requestValue({ bus, node: 1, oid: TEMPERATURE.oid, raw: encodeF16(33.5) });
  t.true(set.ok, JSON.stringify(set));
  const changed = await all.next((m) => at('device/node1/events/value/changed')(m) && (json(m)['data'] as Json)['cause'] === 'set', mark);
  matchesDoc(t, changed, 'task');
  t.like(json(changed)['data'] as Json, { oid: TEMPERATURE.oid, group: 1, id: 2, raw: encodeF16(33.5), value: 33.5, name: 'temperature', unit: 'degC' });
  await all.next((m) => at(`device/node1/values/1:2`)(m) && json(m)['value'] === 33.5, mark);
  const late = await Watch.open(broker.url, 'hsx/docs/device/node1/values/#');
  t.teardown(() => late.close());
  const retained = await late.next(at('device/node1/values/1:2'));
  t.true(retained.retain, 'retained');
  t.deepEqual(json(retained), { value: 33.5, f16: encodeF16(33.5), unit: 'degC', name: 'temperature', ts: json(changed)['ts'] });
  // Every value of the task is there for the late subscriber, not just the one that changed.
  const speed = await late.next(at('device/node1/values/2:1'));
  t.like(json(speed), { value: 1, name: 'speed', unit: 'rpm' });

  // A CAN node the gateway does not host announces a value: PUB (op 2) from node 9, oid 3:4 = -2.5,
  // identifier valueBase | 9<<3 | 2 = 0x04A, payload [oid hi, oid lo, f16 hi, f16 lo].
  const raw = encodeF16(-2.5);
  await bus.send({ id: 0x04a, data: Uint8Array.of(0x03, 0x04, raw >> 8, raw & 0xff) });
  const pub = await all.next(at('device/mqttdocs-bus-9/events/value/changed'));
  matchesDoc(t, pub, 'PUB');
  t.like(json(pub), { pid: null, phase: null, device: 'mqttdocs-bus-9' });
  t.like(json(pub)['data'] as Json, { link: 'mqttdocs-bus', node: 9, oid: 0x0304, group: 3, id: 4, raw, value: -2.5, cause: 'pub' });
  const pubLate = await Watch.open(broker.url, 'hsx/docs/device/mqttdocs-bus-9/values/+');
  t.teardown(() => pubLate.close());
  const pubValue = await pubLate.next(at('device/mqttdocs-bus-9/values/3:4'));
  t.true(pubValue.retain);
  t.deepEqual(json(pubValue), { value: -2.5, f16: raw, unit: null, name: null, ts: json(pub)['ts'] });
  // A PUB from the gateway's own device is not taken twice (its engine reports its changes).
  const own = encodeF16(99);
  await bus.send({ id: 0x00a, data: Uint8Array.of(0x01, 0x02, own >> 8, own & 0xff) });
  await bus.send({ id: 0x04a, data: Uint8Array.of(0x03, 0x04, 0x00, 0x00) });
  await all.next((m) => at('device/mqttdocs-bus-9/values/3:4')(m) && json(m)['f16'] === 0);
  t.false(all.got.some((m) => m.topic.startsWith('hsx/docs/device/node1/values/') && json(m)['value'] === 99), 'own node\'s PUB ignored');

  // The table's QoS column holds for every message seen (subscribed at QoS 1, so what arrives is what was published)...
  for (const m of all.got) {
    const row = rowOf(m.topic);
    if (!row) {
      t.fail(`${m.topic} is in no row of the topic table`);
      continue;
    }
    const progress = m.topic.endsWith('/progress');
    const qos = row.qos === '1' ? 1 : row.qos === 'progress 0, others 1' ? (progress ? 0 : 1) : NaN;
    t.is(m.qos, qos, `${m.topic}: QoS ${row.qos}`);
  }
  // ...and its retained column: a late subscriber to everything gets a retained message on every "yes" row
  // (jobs aside) and on no other. The retained marker subscribed to after it arrives after all of them.
  const marker = await mqtt.connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
  await marker.publishAsync('docs-marker/end', 'end', { qos: 1, retain: true });
  await marker.endAsync();
  const everything = await Watch.open(broker.url, 'hsx/docs/#');
  t.teardown(() => everything.close());
  await everything.client.subscribeAsync('docs-marker/end', { qos: 1 });
  await everything.next((m) => m.topic === 'docs-marker/end');
  const stored = everything.got.filter((m) => m.topic.startsWith('hsx/docs/'));
  t.true(stored.every((m) => m.retain && rowOf(m.topic)?.retained === 'yes'), stored.map((m) => m.topic).join(' '));
  for (const row of tableRows().filter((r) => r.retained === 'yes')) t.true(stored.some((m) => topicRe(row.topic).test(m.topic)), `a retained ${row.topic}`);
  t.true(tableRows().filter((r) => r.retained === 'no').length >= 3);

  // The task unloaded: its values' retained topics are cleared (empty retained messages); a CAN node's stay.
  const unloadMark = all.got.length;
  const pid = json(complete)['pid'] as number;
  t.true(gw.devices.get('node1')!.engine.unload(pid).ok);
  for (const v of ['1:2', '1:3', '2:1']) await all.next((m) => at(`device/node1/values/${v}`)(m) && m.payload === '', unloadMark);
  t.false(all.got.slice(unloadMark).some((m) => m.topic.includes('/mqttdocs-bus-9/values/')), 'the CAN node\'s value stays');

  // A clean shutdown says so, with the documented keys.
  const stopMark = all.got.length;
  await gw.stop();
  const offline = await all.next((m) => at('status')(m) && m.payload.includes('"shutdown"'), stopMark);
  matchesDoc(t, offline, 'shutdown');
});

test('the Last Will and the gateway-level warning after an outage have the documented keys (the warning in the envelope)', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.stop());
  const topics = { prefix: 'hsx', gatewayId: 'docsw' };
  const bus = new EventBus({ clock: systemClock });
  const bridge = new MqttBridge({ url: broker.url, topics, bufferLimit: 2, reconnectPeriodMs: 100, events: bus });
  t.teardown(() => bridge.stop().then(() => undefined));
  // As the gateway wires them (gateway.ts startMqtt).
  bus.subscribe({ maxEvents: 2048, deliver: (ev) => (bridge.publishEvent(toBridgeEvent(ev)), true) });
  const client = (bridge as unknown as { client: MqttClient }).client;
  await bridge.waitConnected();
  // A persistent session (MQTT 3.1.1, clean = false): what is published while it is away waits for it.
  const sub = await Watch.open(broker.url, 'hsx/docsw/#', { protocolVersion: 4, clean: false, clientId: 'docs-watch', reconnectPeriod: 100 });
  t.teardown(() => sub.close());
  await sub.next((m) => m.topic === 'hsx/docsw/status');
  // The bridge notices the broker is gone, then the outage costs messages (limit 2).
  const closed = new Promise<void>((r) => client.once('close', () => r()));
  await broker.stop();
  await closed;
  for (let i = 0; i < 6; i++) bus.publish({ type: 'provisioning.progress', pid: 1, phase: 'write', data: { device: 'd1', percent: i, bytes_written: i, total_bytes: 6 } });
  for (let i = 0; i < 12; i++) bus.publish({ type: 'provisioning.complete', pid: i, phase: 'end', data: { device: 'd1' } });
  await broker.restart();
  const warning = await sub.next((m) => m.topic === 'hsx/docsw/events/warning');
  matchesDoc(t, warning);
  t.like(json(warning), { type: 'warning', pid: null, phase: null });
  t.is(typeof json(warning)['seq'], 'number');
  t.like(json(warning)['data'] as Json, { reason: 'mqtt_buffer_overflow' });

  // The Last Will: the gateway's connection drops without a DISCONNECT.
  const mark = sub.got.length;
  (client as unknown as { stream: { destroy(): void } }).stream.destroy();
  const will = await sub.next((m) => m.topic === 'hsx/docsw/status' && m.payload.includes('connection_lost'), mark);
  matchesDoc(t, will, 'Last Will');
  t.is(json(will)['ts'], null);
});

test('a listener hub (no master link) republishes a CAN node\'s PUB too, also after a power cycle of its device', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const all = await Watch.open(broker.url, 'hsx/docs/#');
  t.teardown(() => all.close());
  const gw = await startGw(t, broker.url, 'mqttdocs-hub', 'listener');
  const bus = await openCanBus('virtual:mqttdocs-hub');
  t.teardown(() => bus.close());
  const pub = (raw: number) => bus.send({ id: (12 << 3) | 2, data: Uint8Array.of(0x05, 0x06, raw >> 8, raw & 0xff) });
  await pub(encodeF16(7));
  const first = await all.next((m) => m.topic === 'hsx/docs/device/mqttdocs-hub-12/values/5:6');
  t.like(json(first), { value: 7, unit: null, name: null });
  await gw.powerCycle('node1');
  await pub(encodeF16(8));
  const second = await all.next((m) => m.topic === 'hsx/docs/device/mqttdocs-hub-12/values/5:6' && json(m)['value'] === 8);
  t.like(json(second), { f16: encodeF16(8) });
  // The device itself answers a SET on the hub as before, and its change is on MQTT under its own name.
  const set = await requestValue({ bus, node: 1, oid: TEMPERATURE.oid, raw: encodeF16(-3) });
  t.true(set.ok, JSON.stringify(set));
  await all.next((m) => m.topic === 'hsx/docs/device/node1/values/1:2' && json(m)['value'] === -3);
});

test('a CAN node in its own process (device --can) sends a PUB when a SET changes a value; a master gateway puts it on MQTT', async (t) => {
  t.timeout(90_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const hub = await startVirtualHub('127.0.0.1', 0);
  t.teardown(() => hub.close());
  const dir = mkdtempSync(join(tmpdir(), 'hsx-mqttdocs-node-'));
  const node = spawnCli(['device', '--can', `virtual:127.0.0.1:${hub.port}`, '--node', '7', '--state', join(dir, 'node7'), '--json']);
  t.teardown(async () => {
    node.child.kill('SIGTERM');
    await node.exited;
  });
  await node.waitFor((l) => l['type'] === 'ready');
  const all = await Watch.open(broker.url, 'hsx/docsn/#');
  t.teardown(() => all.close());
  const cfg = validateConfig({
    gateway: { id: 'docsn', log_level: 'silent' },
    control: { listen: '127.0.0.1:0' },
    mqtt: { url: broker.url, topic_prefix: 'hsx' },
    links: { can: [{ name: 'hub', interface: `127.0.0.1:${hub.port}`, backend: 'virtual', timing: false, role: 'master' }] },
  });
  if (!cfg.ok) return t.fail(cfg.error.message);
  const started = await Gateway.start(cfg.value, createLogger('silent', { pretty: false }), { controlPort: 0 });
  if (!started.ok) return t.fail(started.error.message);
  const gw = started.value;
  t.teardown(() => gw.stop().then(() => undefined));
  // The gateway flashes the node over its master link (the values a load registers are not PUBed: no storm at the
  // end of a broadcast), then a SET on the bus changes one: the node PUBs it.
  const flashed = await gw.flashers.get('hub')!.flash({ image: new Uint8Array(readFileSync(FIXTURE)), targets: ['7'] });
  t.true(flashed.verdicts[0]!.ok, JSON.stringify(flashed.verdicts));
  const ep = hub.bus.attach();
  await ep.open();
  t.teardown(() => ep.close());
  const set = await requestValue({ bus: ep, node: 7, oid: TEMPERATURE.oid, raw: encodeF16(40) });
  t.true(set.ok, JSON.stringify(set));
  const changed = await all.next((m) => m.topic === 'hsx/docsn/device/hub-7/values/1:2' && json(m)['value'] === 40);
  t.like(json(changed), { f16: encodeF16(40), unit: null, name: null });
  t.false(all.got.some((m) => m.topic === 'hsx/docsn/device/hub-7/values/2:1'), 'only the value that changed');
  const ev = await all.next((m) => m.topic === 'hsx/docsn/device/hub-7/events/value/changed' && (json(m)['data'] as Json)['value'] === 40);
  t.like(json(ev)['data'] as Json, { link: 'hub', node: 7, cause: 'pub' });
});
