/**
 * `val.set` over MQTT (issue 18 item 2; docs/mqtt.md "Value commands") against a real gateway and a
 * real Mosquitto: the token and role rules of the job plane, the one value rule of
 * src/gateway/values.ts, audit lines like the job plane's, and a value set over MQTT or over the
 * control port ending as the same retained `<prefix>/<gw>/device/<d>/values/<group>:<id>` document
 * that a late subscriber sees. Each refusal is typed and names the field.
 */
import test, { type ExecutionContext } from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { sha256Hex } from '../src/gateway/control/auth.js';
import { ControlClient } from '../src/gateway/control/client.js';
import { validateConfig } from '../src/gateway/config.js';
import { Gateway } from '../src/gateway/gateway.js';
import { encodeF16 } from '../src/hxe/f16.js';
import { startMosquitto } from './support/mosquitto.js';

type Json = Record<string, unknown>;
interface Msg { topic: string; payload: string; retain: boolean }

const OPERATOR = 'operator-secret-val-0123456789';
const VIEWER = 'viewer-secret-val-0123456789';
const ADMIN = 'admin-secret-val-0123456789';
const FIXTURE = 'test/fixtures/t04b_value_cmd_help.hxe';

/** A subscriber that keeps everything and lets the test wait for the first message (old or new) that matches. */
class Watch {
  readonly got: Msg[] = [];
  private waiters: Array<{ pred: (m: Msg) => boolean; resolve: (m: Msg) => void }> = [];
  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, p, packet) => {
      const m = { topic, payload: p.toString(), retain: packet.retain };
      this.got.push(m);
      for (const w of [...this.waiters]) if (w.pred(m)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(m);
      }
    });
  }
  static async open(url: string, filter: string): Promise<Watch> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 0 });
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

async function startGw(t: ExecutionContext, url: string | null, commands: boolean, canBus?: string) {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-mqttvals-'));
  mkdirSync(join(dir, 'preload'));
  copyFileSync(FIXTURE, join(dir, 'preload', 'sensor.hxe'));
  const cfg = validateConfig({
    gateway: { id: 'vals', log_level: 'info' },
    control: {
      listen: '127.0.0.1:0',
      tokens: [
        { name: 'ops', role: 'operator', sha256: sha256Hex(OPERATOR) },
        { name: 'watcher', role: 'viewer', sha256: sha256Hex(VIEWER) },
        { name: 'boss', role: 'admin', sha256: sha256Hex(ADMIN) },
      ],
    },
    mqtt: url === null ? { embedded: true, embedded_port: 0, topic_prefix: 'hsx', commands } : { url, topic_prefix: 'hsx', commands },
    ...(canBus ? { links: { can: [{ interface: canBus, backend: 'virtual', timing: false, role: 'master' }] } } : {}),
    devices: [{ name: 'node1', state_dir: join(dir, 'node1'), flash: { size: 262144 }, fram: { size: 16384 }, ...(canBus ? { node_id: 1 } : {}) }],
    boot: { preload_dir: join(dir, 'preload'), confirm_window_ms: 0 },
  });
  if (!cfg.ok) throw new Error(cfg.error.message);
  const logFile = join(dir, 'gateway.log');
  const log = pino({ level: 'info' }, pino.destination({ dest: logFile, sync: true }));
  const started = await Gateway.start(cfg.value, log, { controlPort: 0 });
  if (!started.ok) throw new Error(started.error.message);
  t.teardown(() => started.value.stop().then(() => undefined));
  const audit = (): Json[] => readFileSync(logFile, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Json).filter((l) => l['audit'] === true);
  return { gw: started.value, audit, logText: () => readFileSync(logFile, 'utf8') };
}

test('val.set over MQTT: operator+ only, the one value rule, typed refusals naming the field, audited; MQTT and control-port sets both end as the retained value a late subscriber sees', async (t) => {
  t.timeout(90_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const all = await Watch.open(broker.url, 'hsx/vals/#');
  t.teardown(() => all.close());
  const { gw, audit, logText } = await startGw(t, broker.url, true);
  const at = (suffix: string) => (m: Msg) => m.topic === `hsx/vals/${suffix}`;
  const initial = await all.next(at('device/node1/values/1:2'));
  t.like(json(initial), { value: 12.5 });

  const requester = await mqtt.connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
  t.teardown(() => requester.endAsync());
  let n = 0;
  const ask = async (body: Json): Promise<{ verdict: 'accepted' | 'rejected'; answer: Json }> => {
    const clientToken = `req-${++n}`;
    const from = all.got.length;
    await requester.publishAsync('hsx/vals/values/set', JSON.stringify({ clientToken, ...body }), { qos: 1 });
    const m = await all.next((x) => (x.topic === 'hsx/vals/values/set/accepted' || x.topic === 'hsx/vals/values/set/rejected') && json(x)['clientToken'] === clientToken, from);
    return { verdict: m.topic.endsWith('accepted') ? 'accepted' : 'rejected', answer: json(m) };
  };

  // granted: the answer, then the retained value document
  const mark = all.got.length;
  const ok = await ask({ token: OPERATOR, device: 'node1', oid: '1:2', value: 33.5 });
  t.is(ok.verdict, 'accepted');
  t.deepEqual(ok.answer, { clientToken: 'req-1', device: 'node1', oid: 258, group: 1, id: 2, value: 33.5, f16: encodeF16(33.5), pid: 1, persisted: true });
  const changed = await all.next((m) => at('device/node1/events/value/changed')(m) && (json(m)['data'] as Json)['cause'] === 'set', mark);
  t.like(json(changed)['data'] as Json, { oid: 258, value: 33.5 });
  await all.next((m) => at('device/node1/values/1:2')(m) && json(m)['value'] === 33.5, mark);
  const late1 = await Watch.open(broker.url, 'hsx/vals/device/node1/values/#');
  t.teardown(() => late1.close());
  const retained1 = await late1.next(at('device/node1/values/1:2'));
  t.true(retained1.retain);
  t.like(json(retained1), { value: 33.5, f16: encodeF16(33.5), unit: 'degC', name: 'temperature' });

  // the same value set over the control port ends as the same retained document
  const addr = gw.controlAddress()!;
  const c = await ControlClient.connect(`${addr.host}:${addr.port}`, { token: OPERATOR });
  if (!c.ok) throw new Error(c.error.message);
  t.teardown(() => c.value.close());
  const viaControl = await c.value.request('val.set', { device: 'node1', oid: 258, value: 20 });
  t.true(viaControl.ok, JSON.stringify(viaControl));
  await all.next((m) => at('device/node1/values/1:2')(m) && json(m)['value'] === 20);
  const late2 = await Watch.open(broker.url, 'hsx/vals/device/node1/values/1:2');
  t.teardown(() => late2.close());
  const retained2 = await late2.next(at('device/node1/values/1:2'));
  t.true(retained2.retain);
  t.like(json(retained2), { value: 20, f16: encodeF16(20), unit: 'degC', name: 'temperature' });

  // an admin may write the ADMIN-level value the operator may not
  const speedOp = await ask({ token: OPERATOR, device: 'node1', oid: '2:1', value: 5 });
  t.like(speedOp, { verdict: 'rejected', answer: { code: 'EPERM', reason: 'auth_level', field: 'oid', status: 2 } });
  const speedAdmin = await ask({ token: ADMIN, device: 'node1', oid: 0x201, value: 5 });
  t.like(speedAdmin, { verdict: 'accepted', answer: { oid: 513, value: 5 } });

  // a task locked by a control-port session is not written over MQTT (no session there), until the lock goes
  const lock = await c.value.request('session.open', { client: 'holder', pid_lock: 1 });
  if (!lock.ok) throw new Error(lock.error.message);
  const lockSid = ((lock.value as Json)['session'] as Json)['id'] as string;
  const whileLocked = await ask({ token: OPERATOR, device: 'node1', oid: '1:2', value: 21 });
  t.like(whileLocked, { verdict: 'rejected', answer: { code: 'EPERM', reason: 'pid_locked', field: 'oid' } });
  t.true((await c.value.request('session.close', { session: lockSid })).ok);
  t.like(await ask({ token: OPERATOR, device: 'node1', oid: '1:2', value: 20 }), { verdict: 'accepted' });

  // refusals: each typed, naming the field
  const cases: Array<[string, Json, Json]> = [
    ['no token', { device: 'node1', oid: '1:2', value: 1 }, { code: 'EPERM', reason: 'token_required', field: 'token' }],
    ['an unknown token', { token: 'nope', device: 'node1', oid: '1:2', value: 1 }, { code: 'EPERM', reason: 'invalid_token', field: 'token' }],
    ['a viewer', { token: VIEWER, device: 'node1', oid: '1:2', value: 1 }, { code: 'EPERM', reason: 'operator_required' }],
    ['read-only', { token: OPERATOR, device: 'node1', oid: '1:3', value: 0 }, { code: 'EPERM', reason: 'read_only', field: 'oid', status: 2 }],
    ['out of range', { token: OPERATOR, device: 'node1', oid: '1:2', value: 500 }, { code: 'EINVAL', reason: 'out_of_range', field: 'value', status: 4 }],
    ['an unknown oid', { token: OPERATOR, device: 'node1', oid: '9:9', value: 1 }, { code: 'ENOENT', reason: 'unknown_oid', field: 'oid', status: 1 }],
    ['a malformed oid', { token: OPERATOR, device: 'node1', oid: 'temperature', value: 1 }, { code: 'EINVAL', reason: 'oid', field: 'oid' }],
    ['NaN', { token: OPERATOR, device: 'node1', oid: '1:2', value: 'NaN' }, { code: 'EINVAL', reason: 'value', field: 'value' }],
    ['Infinity', { token: OPERATOR, device: 'node1', oid: '1:2', value: 'Infinity' }, { code: 'EINVAL', reason: 'value', field: 'value' }],
    ['not a number', { token: OPERATOR, device: 'node1', oid: '1:2', value: 'warm' }, { code: 'EINVAL', reason: 'value', field: 'value' }],
    ['no value', { token: OPERATOR, device: 'node1', oid: '1:2' }, { code: 'EINVAL', reason: 'value', field: 'value' }],
    ['an unknown device', { token: OPERATOR, device: 'node9', oid: '1:2', value: 1 }, { code: 'ENODEV', reason: 'unknown_device', field: 'device' }],
    ['an unknown field', { token: OPERATOR, device: 'node1', oid: '1:2', value: 1, force: true }, { code: 'EINVAL', reason: 'unknown_field', field: 'force' }],
    ['a link that is not one', { token: OPERATOR, link: 'can9', node: 3, oid: '1:2', value: 1 }, { code: 'ENOENT', reason: 'no_such_link', field: 'link' }],
  ];
  for (const [what, body, want] of cases) {
    const r = await ask(body);
    t.is(r.verdict, 'rejected', what);
    t.like(r.answer, want, what);
    t.is(typeof r.answer['message'], 'string', what);
  }
  // docs/mqtt.md "Value commands": the documented request, accepted and rejected payloads have the real keys
  const md = readFileSync(new URL('../docs/mqtt.md', import.meta.url), 'utf8');
  const start = md.indexOf('\n## Value commands');
  const section = md.slice(start, md.indexOf('\n## ', start + 1));
  const [docReq, docAccepted, docRejected] = [...section.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1]!) as Json);
  t.truthy(docReq && docAccepted && docRejected, 'three examples');
  const { clientToken: _ct, ...docBody } = docReq!;
  const documented = await ask({ ...docBody, token: OPERATOR });
  t.is(documented.verdict, 'accepted');
  t.deepEqual(Object.keys(documented.answer).sort(), Object.keys(docAccepted!).sort());
  t.deepEqual({ ...documented.answer, clientToken: 'cal-7' }, docAccepted, 'the documented answer, value for value');
  const docRange = await ask({ ...docBody, token: OPERATOR, value: 500 });
  t.deepEqual({ ...docRange.answer, clientToken: 'cal-7' }, docRejected, 'the documented refusal, word for word');
  const back = all.got.length;
  t.true(await c.value.request('val.set', { device: 'node1', oid: 258, value: 20 }).then((r) => r.ok));
  await all.next((m) => at('device/node1/values/1:2')(m) && json(m)['value'] === 20, back);

  // nothing refused changed the value
  t.is(all.got.filter((m) => at('device/node1/values/1:2')(m)).map((m) => json(m)['value']).at(-1), 20);

  // audit: one line per request, like the job plane's; never a token
  const lines = audit().filter((l) => l['cmd'] === 'val.set' && l['peer'] === 'mqtt');
  t.is(lines.length, 7 + cases.length, JSON.stringify(lines.map((l) => [l['verdict'], l['reason']])));
  t.like(lines[0], { who: 'ops', role: 'operator', verdict: 'ok', target_via: 'mqtt', target_topic: 'hsx/vals/values/set', target_device: 'node1', target_oid: 258 });
  t.like(lines.find((l) => l['reason'] === 'EPERM:operator_required'), { who: 'watcher', role: 'viewer', verdict: 'denied' });
  t.like(lines.find((l) => l['reason'] === 'EPERM:token_required'), { who: 'anonymous', verdict: 'denied' });
  t.like(lines.find((l) => l['reason'] === 'EINVAL:out_of_range'), { who: 'ops', verdict: 'error' });
  for (const secret of [OPERATOR, VIEWER, ADMIN]) t.false(logText().includes(secret), 'no token in the log');
});

test('val.set over MQTT is off unless mqtt.commands = true: no subscription, no answer', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const { gw } = await startGw(t, broker.url, false);
  t.is((gw as unknown as { mqttValues: unknown }).mqttValues, null);
  const all = await Watch.open(broker.url, 'hsx/vals/#');
  t.teardown(() => all.close());
  const requester = await mqtt.connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
  t.teardown(() => requester.endAsync());
  await requester.publishAsync('hsx/vals/values/set', JSON.stringify({ clientToken: 'x', token: OPERATOR, device: 'node1', oid: '1:2', value: 30 }), { qos: 1 });
  // the control port's set goes through after it: its retained document arrives, and no answer came, nor a change to 30
  const addr = gw.controlAddress()!;
  const c = await ControlClient.connect(`${addr.host}:${addr.port}`, { token: OPERATOR });
  if (!c.ok) throw new Error(c.error.message);
  t.teardown(() => c.value.close());
  t.true((await c.value.request('val.set', { device: 'node1', oid: 258, value: 21 })).ok);
  await all.next((m) => m.topic === 'hsx/vals/device/node1/values/1:2' && json(m)['value'] === 21);
  t.false(all.got.some((m) => m.topic.startsWith('hsx/vals/values/set/')), 'no answer');
  t.false(all.got.some((m) => m.topic === 'hsx/vals/device/node1/values/1:2' && json(m)['value'] === 30));
});

test('the embedded broker: an operator may publish a value set, a viewer may not; a monitor reading # sees the answer, never the request', async (t) => {
  t.timeout(60_000);
  const { gw } = await startGw(t, null, true);
  const url = gw.embeddedBroker!.url;
  const monitor = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: 'watcher', password: VIEWER });
  t.teardown(() => monitor.endAsync(true));
  const seen: Msg[] = [];
  const waiters: Array<() => void> = [];
  monitor.on('message', (topic, p, packet) => {
    seen.push({ topic, payload: p.toString(), retain: packet.retain });
    for (const w of waiters.splice(0)) w();
  });
  await monitor.subscribeAsync('#', { qos: 1 });
  const until = (pred: (m: Msg) => boolean): Promise<Msg> => new Promise((resolve) => {
    const check = (): void => {
      const hit = seen.find(pred);
      if (hit) resolve(hit);
      else waiters.push(check);
    };
    check();
  });
  const op = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: 'ops', password: OPERATOR });
  t.teardown(() => op.endAsync(true));
  await op.publishAsync('hsx/vals/values/set', JSON.stringify({ clientToken: 'e1', token: OPERATOR, device: 'node1', oid: '1:2', value: 40 }), { qos: 1 });
  const answer = await until((m) => m.topic === 'hsx/vals/values/set/accepted');
  t.like(json(answer), { clientToken: 'e1', value: 40 });
  await until((m) => m.topic === 'hsx/vals/device/node1/values/1:2' && json(m)['value'] === 40);
  t.false(seen.some((m) => m.topic === 'hsx/vals/values/set'), 'the request (with its token) never reaches a monitor');
  t.false(seen.some((m) => m.payload.includes(OPERATOR)), 'no token on any topic a monitor reads');
  // a viewer's login may not publish there at all: the broker closes its connection
  const viewer = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: 'watcher', password: VIEWER });
  viewer.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => viewer.once('close', () => resolve()));
  viewer.publish('hsx/vals/values/set', JSON.stringify({ clientToken: 'e2', token: VIEWER, device: 'node1', oid: '1:2', value: 41 }), { qos: 1 });
  await closed;
  t.true(gw.embeddedBroker!.stats().refusedPublishes >= 1);
});

test('val.set over MQTT to a node on a CAN master link (link, node): the CAN SET, the node\'s own rule, the retained value', async (t) => {
  t.timeout(60_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const all = await Watch.open(broker.url, 'hsx/vals/#');
  t.teardown(() => all.close());
  await startGw(t, broker.url, true, 'mqttvals-bus');
  await all.next((m) => m.topic === 'hsx/vals/device/node1/values/1:2');
  const requester = await mqtt.connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
  t.teardown(() => requester.endAsync());
  const ask = async (clientToken: string, body: Json): Promise<Msg> => {
    const from = all.got.length;
    await requester.publishAsync('hsx/vals/values/set', JSON.stringify({ clientToken, token: OPERATOR, link: 'mqttvals-bus', node: 1, ...body }), { qos: 1 });
    return all.next((x) => x.topic.startsWith('hsx/vals/values/set/') && json(x)['clientToken'] === clientToken, from);
  };
  const ok = await ask('c1', { oid: '1:2', value: 44 });
  t.is(ok.topic, 'hsx/vals/values/set/accepted', ok.payload);
  t.like(json(ok), { device: null, link: 'mqttvals-bus', node: 1, oid: 258, value: 44, pid: null, persisted: false });
  await all.next((m) => m.topic === 'hsx/vals/device/node1/values/1:2' && json(m)['value'] === 44);
  const ro = await ask('c2', { oid: '1:3', value: 0 });
  t.is(ro.topic, 'hsx/vals/values/set/rejected');
  t.like(json(ro), { code: 'EPERM', reason: 'read_only', field: 'oid' });
  const badNode = await ask('c3', { oid: '1:2', value: 1, node: 64 });
  t.like(json(badNode), { code: 'EINVAL', reason: 'node', field: 'node' });
});
