/**
 * Fleet rollouts end to end, with real parts only: a real Mosquitto, four `serve` processes (each with
 * its own cross-process virtual CAN bus and four `device` processes on it), and the `fleet` CLI as a
 * child process. Every wait is on a line, a process exit or an MQTT message.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { sha256Hex } from '../src/fleet/images.js';
import type { RolloutDoc } from '../src/fleet/rollout.js';
import { ROOT } from './support/cli-argv.js';
import { openTestBus, spawnCli, type CliChild, type TestBus } from './support/can-bus.js';
import { mosquittoAvailable, startMosquitto, type Mosquitto } from './support/mosquitto.js';
import { startServe, type ServeChild } from './support/serve-child.js';
import { startVirtualHub } from '../src/link/can/virtual-net.js';
import type { JobRecord } from '../src/gateway/jobs/types.js';
import { sensorOfSize } from './update-images.js';

const OPERATOR = 'fleet-operator-secret-1';
const APPS = join(ROOT, 'configs', 'sd', 'apps');
const V1_FILE = join(APPS, 'sensor.hxe');
const V2_FILE = join(APPS, 'sensor-v2.hxe');
const V1 = sha256Hex(new Uint8Array(readFileSync(V1_FILE)));
const V2 = sha256Hex(new Uint8Array(readFileSync(V2_FILE)));
const GATEWAYS = ['hall-b-1', 'hall-b-2', 'hall-b-3', 'hall-b-4'];
const NODES = 4;

interface Fleet {
  broker: Mosquitto;
  dir: string;
  gateways: ServeChild[];
}

let fleet: Fleet | null = null;
const cleanups: Array<() => Promise<void>> = [];

async function startFleet(): Promise<Fleet> {
  const dir = mkdtempSync(join(tmpdir(), 'fleet-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  // Persistence: retained documents and images survive the restart of the broker test.
  const broker = await startMosquitto({ persistence: true });
  cleanups.push(() => broker.stop());
  const buses: TestBus[] = [];
  const devices: CliChild[] = [];
  cleanups.push(async () => {
    for (const d of devices) d.child.kill('SIGTERM');
    await Promise.all(devices.map((d) => d.exited));
    for (const b of buses) await b.close();
  });
  const configs: string[] = [];
  for (const gw of GATEWAYS) {
    const bus = await openTestBus();
    buses.push(bus);
    const address = bus.processAddress();
    for (let n = 1; n <= NODES; n++) devices.push(spawnCli(['device', '--can', address, '--node', String(n), '--state', join(dir, `${gw}-node${n}`), '--json']));
    const images = join(dir, `${gw}-images`);
    mkdirSync(images);
    const config = join(dir, `${gw}.toml`);
    writeFileSync(config, [
      `[gateway]\nid = "${gw}"\nlog_level = "warn"\nstate_dir = "${join(dir, `${gw}-state`)}"\n`,
      `[control]\nlisten = "127.0.0.1:9998"\nimages_dir = "${images}"\n`,
      `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(OPERATOR)}"\n`,
      `[mqtt]\nurl = "${broker.url}"\ntopic_prefix = "hsx"\ncommands = true\n`,
      `[[links.can]]\nname = "bus"\ninterface = "${address.replace(/^virtual:/, '')}"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
    ].join('\n'));
    configs.push(config);
  }
  await Promise.all(devices.map((d) => d.waitFor((l) => l['type'] === 'ready')));
  const gateways = await Promise.all(configs.map((c) => startServe(c)));
  cleanups.push(async () => {
    for (const s of gateways) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    await Promise.all(gateways.map((s) => s.exited));
  });
  return { broker, dir, gateways };
}

test.before(async () => {
  if (mosquittoAvailable()) fleet = await startFleet();
});

test.after.always(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** `hsx-gateway fleet …--json` to its exit: the code and every line. */
async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; lines: Array<Record<string, unknown>>; stderr: string }> {
  const p = spawnCliEnv(['fleet', ...args, '--broker', fleet!.broker.url, '--json'], env);
  const code = await p.exited;
  return { code, lines: p.lines, stderr: p.stderr() };
}

function spawnCliEnv(args: string[], env: Record<string, string>): CliChild {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    return spawnCli(args);
  } finally {
    for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k];
  }
}

const result = (lines: Array<Record<string, unknown>>): Record<string, unknown> => {
  const r = lines.find((l) => l['type'] === 'result' || l['type'] === 'error');
  if (!r) throw new Error(`no result line: ${JSON.stringify(lines.slice(-3))}`);
  return r;
};
const docOf = (lines: Array<Record<string, unknown>>): RolloutDoc => result(lines)['rollout'] as RolloutDoc;

/** A plain MQTT client that collects what it is subscribed to. */
async function client(t: ExecutionContext, filters: string[]): Promise<{ c: MqttClient; next(pred: (topic: string, body: any) => boolean, what: string): Promise<{ topic: string; body: any }> }> {
  const c = await mqtt.connectAsync(fleet!.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => c.endAsync(true));
  const seen: Array<{ topic: string; body: any }> = [];
  const waiters = new Set<() => void>();
  c.on('message', (topic, payload) => {
    let body: unknown = null;
    try {
      body = payload.length ? JSON.parse(payload.toString()) : null;
    } catch {
      body = payload.toString();
    }
    seen.push({ topic, body });
    for (const w of [...waiters]) w();
  });
  if (filters.length) await c.subscribeAsync(filters, { qos: 1 });
  return {
    c,
    next: (pred, what) => new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = seen.find((m) => pred(m.topic, m.body));
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
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

/** Every device's retained inventory shows `sha` (the gateways rescan after each job). */
async function inventoryShows(t: ExecutionContext, sha: string): Promise<void> {
  const w = await client(t, ['hsx/+/device/+/inventory']);
  const latest = new Map<string, string | null>();
  await w.next((topic, b) => {
    latest.set(topic, b?.sha256 ?? null);
    return latest.size === GATEWAYS.length * NODES && [...latest.values()].every((s) => s === sha);
  }, `every inventory at ${sha.slice(0, 12)}`);
}

/** Jobs each gateway has, from their retained documents. */
async function jobCount(t: ExecutionContext): Promise<number> {
  const w = await client(t, []);
  const ids = new Set<string>();
  w.c.on('message', (topic, p) => {
    if (p.length && /^hsx\/[^/]+\/jobs\/[^/]+$/.test(topic) && !topic.endsWith('/submit')) ids.add(topic);
  });
  await w.c.subscribeAsync(['hsx/+/jobs/+', 'hsx/sync-test'], { qos: 1 });
  await w.c.publishAsync('hsx/sync-test', 'x', { qos: 1 });
  await w.next((topic) => topic === 'hsx/sync-test', 'sync marker');
  return ids.size;
}

const skip = (): boolean => fleet === null;

test.serial('fleet ls lists 4 gateways × 4 devices from the retained documents', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const r = await cli(['ls']);
  t.is(r.code, 0, r.stderr);
  t.is(result(r.lines)['gateways'], 4);
  t.is(result(r.lines)['devices'], 16);
  const gws = r.lines.filter((l) => l['type'] === 'gateway');
  t.deepEqual(gws.map((g) => `${g['gateway']}:${g['state']}:${g['devices']}`), GATEWAYS.map((g) => `${g}:online:4`));
  const dev = r.lines.find((l) => l['type'] === 'device')!;
  t.deepEqual(Object.keys(dev).sort(), ['app_name', 'device', 'gateway', 'gateway_state', 'link', 'scanned_ts', 'sha256', 'target', 'type', 'version']);
});

test.serial('bad input: a selector matching nothing, thresholds out of range, no token, a bad wave list; nothing published, no device touched', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const before = await jobCount(t);
  const none = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-z-*', '--token', OPERATOR, '--id', 'r-none']);
  t.is(none.code, 1);
  t.is(result(none.lines)['reason'], 'no_match');
  t.regex(String(result(none.lines)['message']), /matches no device \(16 device\(s\) on 4 gateway\(s\)/);
  for (const [flag, value, reason] of [['--abort-failure-rate', '150%', 'bad_threshold'], ['--abort-failure-rate', '-1', 'bad_threshold'], ['--timeout', '0s', 'bad_timeout'], ['--waves', '1,10%', 'bad_waves'], ['--waves', '0,100%', 'bad_waves']] as const) {
    const r = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--token', OPERATOR, '--id', 'r-bad', flag, value]);
    t.is(r.code, 2, `${flag} ${value}`);
    t.is(result(r.lines)['reason'], reason, `${flag} ${value}`);
  }
  const noToken = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--id', 'r-bad'], { HSX_GATEWAY_TOKEN: '' });
  t.is(noToken.code, 2);
  const list = await cli(['rollout', 'list']);
  t.is(result(list.lines)['rollouts'], 0, 'no rollout document was published');
  t.is(await jobCount(t), before, 'no job was submitted');
});

test.serial('a forged job request without a token, or with a stale rollout, is refused by every gateway', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const w = await client(t, ['hsx/+/jobs/submit/+']);
  for (const gw of GATEWAYS) {
    await w.c.publishAsync(`hsx/${gw}/jobs/submit`, JSON.stringify({ clientToken: `forged-${gw}`, link: 'bus', image_sha256: V1, rollout: { id: 'r-forged', wave: 0 } }), { qos: 1 });
    await w.c.publishAsync(`hsx/${gw}/jobs/submit`, JSON.stringify({ clientToken: `stale-${gw}`, token: OPERATOR, link: 'bus', image_sha256: V1, rollout: { id: 'r-gone', wave: 0 } }), { qos: 1 });
  }
  for (const gw of GATEWAYS) {
    const a = await w.next((topic, b) => topic.startsWith(`hsx/${gw}/jobs/submit/`) && b?.clientToken === `forged-${gw}`, `answer of ${gw} to the forged request`);
    t.is(a.topic, `hsx/${gw}/jobs/submit/rejected`);
    t.is(`${a.body.code}:${a.body.reason}`, 'EPERM:token_required');
    const s = await w.next((topic, b) => topic.startsWith(`hsx/${gw}/jobs/submit/`) && b?.clientToken === `stale-${gw}`, `answer of ${gw} to the stale request`);
    t.is(s.topic, `hsx/${gw}/jobs/submit/rejected`);
    t.is(`${s.body.code}:${s.body.reason}`, 'ESTALE:unknown_rollout');
  }
  t.is(await jobCount(t), 0);
});

test.serial('an image whose bytes do not match its hash is refused', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const w = await client(t, ['hsx/hall-b-1/jobs/submit/+']);
  const fake = '0'.repeat(64);
  await w.c.publishAsync(`hsx/fleet/images/${fake}`, readFileSync(V1_FILE), { qos: 1, retain: true });
  await w.c.publishAsync('hsx/hall-b-1/jobs/submit', JSON.stringify({ clientToken: 'bad-hash', token: OPERATOR, link: 'bus', image_sha256: fake }), { qos: 1 });
  const a = await w.next((_t, b) => b?.clientToken === 'bad-hash', 'answer');
  t.is(a.topic, 'hsx/hall-b-1/jobs/submit/rejected');
  t.is(`${a.body.code}:${a.body.reason}`, 'EBADMSG:image_hash_mismatch');
  await w.c.publishAsync(`hsx/fleet/images/${fake}`, '', { qos: 1, retain: true });
});

test.serial('v1 to all 16 devices in one wave, then a 3-wave rollout of v2 (image in parts) watched by a second client, then v2 again: all SKIPPED', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const first = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--waves', '100%', '--token', OPERATOR, '--id', 'r-v1']);
  t.is(first.code, 0, JSON.stringify(result(first.lines)));
  t.is(docOf(first.lines).totals.succeeded, 16);
  await inventoryShows(t, V1);

  // A second client watches from before the rollout exists.
  const watcher = spawnCli(['fleet', 'rollout', 'watch', 'r-v2', '--broker', fleet!.broker.url, '--json']);
  const r = await cli(['rollout', 'create', '--image', V2_FILE, '--select', 'app=sensor_app,gateway=hall-b-*', '--waves', '1,10%,100%', '--abort-failure-rate', '5%', '--timeout', '10m', '--max-message-bytes', '128', '--token', OPERATOR, '--id', 'r-v2']);
  t.is(r.code, 0, JSON.stringify(result(r.lines)));
  const d = docOf(r.lines);
  t.is(d.state, 'completed');
  t.is(d.image.parts, 3, 'the 333-byte image went in 3 parts of 128');
  t.deepEqual(d.waves.map((w) => w.targets.length), [1, 1, 14]);
  t.true(d.waves.every((w) => w.state === 'done' && w.targets.every((x) => x.state === 'SUCCEEDED' && x.job_id !== null)));
  t.is(d.totals.succeeded, 16);
  t.is(d.totals.devices, 16);
  // The versions the controller wrote rise; the watcher saw the same final document and only states the controller wrote.
  const written = r.lines.filter((l) => l['type'] === 'rollout').map((l) => l['rollout'] as RolloutDoc);
  t.true(written.every((x, i) => i === 0 || x.version > written[i - 1]!.version));
  t.is(await watcher.exited, 0, watcher.stderr());
  const watched = watcher.lines.filter((l) => l['type'] === 'rollout').map((l) => l['rollout'] as RolloutDoc);
  t.deepEqual(docOf(watcher.lines), d);
  const byVersion = new Map(written.map((x) => [x.version, JSON.stringify(x)]));
  for (const x of watched) if (byVersion.has(x.version)) t.is(JSON.stringify(x), byVersion.get(x.version)!);
  t.deepEqual([...new Set(watched.map((x) => x.state))], ['running', 'completed']);
  await inventoryShows(t, V2);

  const status = await cli(['rollout', 'status', 'r-v2']);
  t.deepEqual(docOf(status.lines), d);

  const jobsBefore = await jobCount(t);
  const again = await cli(['rollout', 'create', '--image', V2_FILE, '--select', 'app=sensor_app,gateway=hall-b-*', '--token', OPERATOR, '--id', 'r-v2-again']);
  t.is(again.code, 0);
  const a = docOf(again.lines);
  t.is(a.state, 'completed');
  t.is(a.totals.skipped, 16);
  t.is(a.waves.length, 0);
  t.is(await jobCount(t), jobsBefore, 'no job for devices already on the image');
});

test.serial('a cancelled rollout: its requests are refused by the gateways afterwards and resume refuses it; no device touched', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const jobsBefore = await jobCount(t);
  const c = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--waves', '1,100%', '--token', OPERATOR, '--id', 'r-cancel', '--no-run']);
  t.is(c.code, 0, JSON.stringify(c.lines));
  t.is(docOf(c.lines).state, 'running');
  const x = await cli(['rollout', 'cancel', 'r-cancel', '--token', OPERATOR]);
  t.is(x.code, 0, JSON.stringify(x.lines));
  t.is(docOf(x.lines).state, 'cancelled');
  t.true(docOf(x.lines).waves.every((w) => w.targets.every((tg) => tg.state === 'CANCELED')));
  // A request of that rollout arriving late (a gateway coming back, a replay) is refused.
  const first = docOf(x.lines).waves[0]!.targets[0]!;
  const w = await client(t, [`hsx/${first.gateway}/jobs/submit/+`]);
  await w.c.publishAsync(`hsx/${first.gateway}/jobs/submit`, JSON.stringify({ clientToken: 'r-cancel:0:late', token: OPERATOR, link: 'bus', targets: [first.target], image_sha256: V1, rollout: { id: 'r-cancel', wave: 0 } }), { qos: 1 });
  const a = await w.next((_t, b) => b?.clientToken === 'r-cancel:0:late', 'answer to the late request');
  t.is(`${a.body.code}:${a.body.reason}`, 'ESTALE:rollout_cancelled');
  const res = await cli(['rollout', 'resume', 'r-cancel', '--token', OPERATOR]);
  t.is(res.code, 1);
  t.is(result(res.lines)['reason'], 'rollout_cancelled');
  t.is(await jobCount(t), jobsBefore);
  await inventoryShows(t, V2);
});

test.serial('a paused rollout is resumed by another client; a rollout document edited into an invalid state is refused everywhere', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const c = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-1', '--waves', '2,100%', '--token', OPERATOR, '--id', 'r-pause', '--no-run']);
  t.is(c.code, 0);
  const p = await cli(['rollout', 'pause', 'r-pause']);
  t.is(docOf(p.lines).state, 'paused');
  const w = await client(t, ['hsx/hall-b-1/jobs/submit/+']);
  await w.c.publishAsync('hsx/hall-b-1/jobs/submit', JSON.stringify({ clientToken: 'r-pause:0:late', token: OPERATOR, link: 'bus', image_sha256: V1, rollout: { id: 'r-pause', wave: 0 } }), { qos: 1 });
  t.is((await w.next((_t, b) => b?.clientToken === 'r-pause:0:late', 'answer')).body.reason, 'rollout_paused');
  const r = await cli(['rollout', 'resume', 'r-pause', '--token', OPERATOR]);
  t.is(r.code, 0, JSON.stringify(result(r.lines)));
  t.deepEqual(docOf(r.lines).waves.map((x) => x.targets.map((y) => y.state)), [['SUCCEEDED', 'SUCCEEDED'], ['SUCCEEDED', 'SUCCEEDED']]);

  // Edited by hand: a running rollout whose current wave does not exist.
  const bad = { ...docOf(r.lines), id: 'r-edited', state: 'running', current_wave: 7, version: 99 };
  await w.c.publishAsync('hsx/fleet/rollouts/r-edited', JSON.stringify(bad), { qos: 1, retain: true });
  const jobsBefore = await jobCount(t);
  const res = await cli(['rollout', 'resume', 'r-edited', '--token', OPERATOR]);
  t.is(res.code, 1);
  t.is(result(res.lines)['reason'], 'bad_rollout_doc');
  t.regex(String(result(res.lines)['message']), /current_wave must be null or 0\.\.1/);
  const st = await cli(['rollout', 'status', 'r-edited']);
  t.is(result(st.lines)['reason'], 'bad_rollout_doc');
  await w.c.publishAsync('hsx/hall-b-1/jobs/submit', JSON.stringify({ clientToken: 'r-edited:7:x', token: OPERATOR, link: 'bus', image_sha256: V1, rollout: { id: 'r-edited', wave: 7 } }), { qos: 1 });
  t.is((await w.next((_t, b) => b?.clientToken === 'r-edited:7:x', 'answer')).body.reason, 'bad_rollout_doc');
  t.is(await jobCount(t), jobsBefore);
  const list = await cli(['rollout', 'list']);
  t.truthy(list.lines.find((l) => l['type'] === 'invalid' && l['id'] === 'r-edited'));
});

test.serial('a gateway offline (its Last Will) when its wave starts: its devices are TIMED_OUT after the timeout and the threshold pauses the rollout', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  const w = await client(t, []);
  // A gateway that went away: its status is the Last Will, its inventory still retained.
  await w.c.publishAsync('hsx/ghost-1/status', JSON.stringify({ state: 'offline', reason: 'connection_lost', ts: null, pid: 1 }), { qos: 1, retain: true });
  for (const n of ['1', '2']) {
    await w.c.publishAsync(`hsx/ghost-1/device/bus-${n}/inventory`, JSON.stringify({ link: 'bus', target: n, app_name: 'sensor_app', version: '1', sha256: V1, slots: [], slot_bytes: null, scanned_ts: 1 }), { qos: 1, retain: true });
  }
  const r = await cli(['rollout', 'create', '--image', V2_FILE, '--select', 'gateway=ghost-*', '--waves', '1,100%', '--timeout', '2s', '--token', OPERATOR, '--id', 'r-ghost']);
  t.is(r.code, 1);
  const d = docOf(r.lines);
  t.is(d.state, 'paused');
  t.regex(d.reason!, /failure rate 100% after wave 0 is over the threshold 5%/);
  t.deepEqual(d.waves[0]!.targets.map((x) => `${x.state}:${x.error}`), ['TIMED_OUT:ETIMEDOUT:gateway_offline']);
  t.is(d.waves[1]!.state, 'pending');
  t.is(d.current_wave, 1);
  for (const topic of ['hsx/ghost-1/status', 'hsx/ghost-1/device/bus-1/inventory', 'hsx/ghost-1/device/bus-2/inventory']) await w.c.publishAsync(topic, '', { qos: 1, retain: true });
});

test.serial('the controlling client SIGKILLed mid-rollout: resume from another client completes it, and no job runs twice', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  // hall-b-1 runs v1 since the pause test; the others run v2.
  const ctl = spawnCli(['fleet', 'rollout', 'create', '--broker', fleet!.broker.url, '--json', '--token', OPERATOR, '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--waves', '1,100%', '--id', 'r-takeover']);
  // Killed once the second wave has started (its requests may or may not have reached the gateways).
  await ctl.waitFor((l) => l['type'] === 'rollout' && (l['rollout'] as RolloutDoc).waves[1]?.state === 'running');
  ctl.child.kill('SIGKILL');
  await ctl.exited;
  const st = await cli(['rollout', 'status', 'r-takeover']);
  t.is(docOf(st.lines).state, 'running', 'the document still says running: its controller is gone');
  const r = await cli(['rollout', 'resume', 'r-takeover', '--token', OPERATOR]);
  t.is(r.code, 0, JSON.stringify(result(r.lines)));
  const d = docOf(r.lines);
  t.is(d.state, 'completed');
  t.is(d.totals.skipped, 4);
  t.is(d.totals.succeeded, 12);
  t.not(d.controller, docOf(st.lines).controller);
  // One job per gateway and wave, whatever the takeover resent: the gateways answered a resent request with its job.
  const w = await client(t, []);
  const tokens: string[] = [];
  w.c.on('message', (topic, p) => {
    if (!p.length || !/^hsx\/[^/]+\/jobs\/[^/]+$/.test(topic)) return;
    const ct = (JSON.parse(p.toString()) as { client_token?: string }).client_token;
    if (ct?.startsWith('r-takeover:')) tokens.push(ct);
  });
  await w.c.subscribeAsync(['hsx/+/jobs/+', 'hsx/sync-takeover'], { qos: 1 });
  await w.c.publishAsync('hsx/sync-takeover', 'x', { qos: 1 });
  await w.next((topic) => topic === 'hsx/sync-takeover', 'sync marker');
  t.deepEqual(tokens.sort(), ['r-takeover:0:hall-b-2:bus', 'r-takeover:1:hall-b-2:bus', 'r-takeover:1:hall-b-3:bus', 'r-takeover:1:hall-b-4:bus']);
  // Each gateway fetched v1 from the broker once and keeps it in its cache.
  for (const gw of GATEWAYS) t.true(existsSync(join(fleet!.dir, `${gw}-state`, 'fleet-images', `${V1}.hxe`)), gw);
  // With the image gone from the broker, a gateway that holds it still takes a request naming it (from its cache).
  const answers = await client(t, ['hsx/hall-b-3/jobs/submit/+', 'hsx/hall-b-3/jobs/+']);
  await answers.c.publishAsync(`hsx/fleet/images/${V1}`, '', { qos: 1, retain: true });
  await answers.c.publishAsync('hsx/hall-b-3/jobs/submit', JSON.stringify({ clientToken: 'from-cache', token: OPERATOR, link: 'bus', targets: ['1'], image_sha256: V1 }), { qos: 1 });
  const a = await answers.next((topic, b) => /\/(accepted|rejected)$/.test(topic) && b?.clientToken === 'from-cache', 'answer');
  t.is(a.topic, 'hsx/hall-b-3/jobs/submit/accepted', JSON.stringify(a.body));
  await answers.next((topic, b) => topic === `hsx/hall-b-3/jobs/${a.body.job.id}` && b?.state === 'SKIPPED', 'the job: SKIPPED (node 1 runs v1)');
});

test.serial('a gateway SIGKILLed mid-wave: its devices TIMED_OUT, the threshold pauses the rollout, the other gateway is unaffected; after its restart nothing runs twice', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  // Two more gateways under their own prefix: slow-1 on a bus with real timing (a 48 KiB image takes seconds), slow-2 on a plain one.
  const dir = fleet!.dir;
  const hub = await startVirtualHub('127.0.0.1', 0, { bitrate: 125_000 });
  const plain = await openTestBus();
  const devices: CliChild[] = [];
  t.teardown(async () => {
    for (const d of devices) d.child.kill('SIGTERM');
    await Promise.all(devices.map((d) => d.exited));
    await hub.close();
    await plain.close();
  });
  const addr = { 'slow-1': `virtual:127.0.0.1:${hub.port}`, 'slow-2': plain.processAddress() };
  const configs: Record<string, string> = {};
  for (const [gw, address] of Object.entries(addr)) {
    for (let n = 1; n <= 2; n++) devices.push(spawnCli(['device', '--can', address, '--node', String(n), '--state', join(dir, `${gw}-node${n}`), '--json']));
    configs[gw] = join(dir, `${gw}.toml`);
    writeFileSync(configs[gw]!, [
      `[gateway]\nid = "${gw}"\nlog_level = "warn"\nstate_dir = "${join(dir, `${gw}-state`)}"\n`,
      `[control]\nlisten = "127.0.0.1:9998"\n`,
      `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(OPERATOR)}"\n`,
      `[mqtt]\nurl = "${fleet!.broker.url}"\ntopic_prefix = "slow"\ncommands = true\n`,
      `[[links.can]]\nname = "bus"\ninterface = "${address.replace(/^virtual:/, '')}"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
    ].join('\n'));
  }
  await Promise.all(devices.map((d) => d.waitFor((l) => l['type'] === 'ready')));
  const running: ServeChild[] = [];
  t.teardown(async () => {
    for (const s of running) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    await Promise.all(running.map((s) => s.exited));
  });
  const slow1 = await startServe(configs['slow-1']!);
  running.push(slow1, await startServe(configs['slow-2']!));
  const big = join(dir, 'big.hxe');
  writeFileSync(big, sensorOfSize(7, 48 * 1024, true)); // random code: it does not compress, so the transfer takes its time

  const w = await client(t, ['slow/+/jobs/+']);
  const ctl = spawnCli(['fleet', 'rollout', 'create', '--broker', fleet!.broker.url, '--prefix', 'slow', '--json', '--token', OPERATOR, '--image', big, '--select', 'gateway=slow-*', '--waves', '3,100%', '--timeout', '8s', '--id', 'r-kill']);
  const started = await w.next((topic, b) => topic.startsWith('slow/slow-1/jobs/') && b?.state === 'IN_PROGRESS', 'slow-1 runs its job');
  slow1.child.kill('SIGKILL');
  await slow1.exited;
  t.is(await ctl.exited, 1, ctl.stderr());
  const d = docOf(ctl.lines);
  t.is(d.state, 'paused');
  t.regex(d.reason!, /failure rate 66\.7% after wave 0 is over the threshold 5%/);
  t.deepEqual(d.waves[0]!.targets.map((x) => `${x.gateway}:${x.target}:${x.state}`), ['slow-1:1:TIMED_OUT', 'slow-1:2:TIMED_OUT', 'slow-2:1:SUCCEEDED']);
  t.true(d.waves[0]!.targets.slice(0, 2).every((x) => x.error === 'ETIMEDOUT:gateway_offline'));
  t.deepEqual(d.waves[1]!.targets.map((x) => `${x.gateway}:${x.target}:${x.state}`), ['slow-2:2:PENDING']);

  // slow-1 comes back: its journal has the job cut off (FAILED interrupted); nothing is run again.
  const again = await startServe(configs['slow-1']!);
  running.push(again);
  const id = (started.body as JobRecord).id;
  t.true(((again.lines.find((l) => l['type'] === 'serving')!['recovered'] as { interrupted: string[] }).interrupted).includes(id));
  const after = await w.next((topic, b) => topic === `slow/slow-1/jobs/${id}` && b?.state === 'FAILED', 'the interrupted job document');
  t.is(after.body.reason, 'interrupted');
  const status = await cli(['rollout', 'status', 'r-kill', '--prefix', 'slow']);
  t.deepEqual(docOf(status.lines), d, 'the paused document is as the controller left it');
  const ids = new Set<string>();
  const sync = await client(t, []);
  sync.c.on('message', (topic, p) => {
    if (p.length && topic.startsWith('slow/slow-1/jobs/')) ids.add(topic);
  });
  await sync.c.subscribeAsync(['slow/slow-1/jobs/+', 'slow/sync-kill'], { qos: 1 });
  await sync.c.publishAsync('slow/sync-kill', 'x', { qos: 1 });
  await sync.next((topic) => topic === 'slow/sync-kill', 'sync');
  t.deepEqual([...ids], [`slow/slow-1/jobs/${id}`], 'one job on slow-1, ever');
});

test.serial('the broker restarted mid-rollout: nothing is lost (retained documents and images persist, clients reconnect), the rollout completes, no job runs twice', async (t) => {
  if (skip()) return t.pass('mosquitto not installed');
  // Every hall-b device runs v1 now.
  const ctl = spawnCli(['fleet', 'rollout', 'create', '--broker', fleet!.broker.url, '--json', '--token', OPERATOR, '--image', V2_FILE, '--select', 'gateway=hall-b-*', '--waves', '1,50%,100%', '--id', 'r-restart']);
  await ctl.waitFor((l) => l['type'] === 'rollout' && (l['rollout'] as RolloutDoc).waves[0]?.state === 'done');
  await fleet!.broker.stop();
  await fleet!.broker.restart();
  t.is(await ctl.exited, 0, `${ctl.stderr()} ${JSON.stringify(ctl.lines.at(-1))}`);
  const d = docOf(ctl.lines);
  t.is(d.state, 'completed');
  t.is(d.totals.succeeded, 16);
  const st = await cli(['rollout', 'status', 'r-restart']);
  t.deepEqual(docOf(st.lines), d, 'the retained document is the controller\'s last');
  const w = await client(t, []);
  const tokens: string[] = [];
  w.c.on('message', (topic, p) => {
    if (!p.length || !/^hsx\/[^/]+\/jobs\/[^/]+$/.test(topic)) return;
    const ct = (JSON.parse(p.toString()) as { client_token?: string }).client_token;
    if (ct?.startsWith('r-restart:')) tokens.push(ct);
  });
  await w.c.subscribeAsync(['hsx/+/jobs/+', 'hsx/sync-restart'], { qos: 1 });
  await w.c.publishAsync('hsx/sync-restart', 'x', { qos: 1 });
  await w.next((topic) => topic === 'hsx/sync-restart', 'sync marker');
  t.deepEqual(tokens.sort(), ['r-restart:0:hall-b-1:bus', 'r-restart:1:hall-b-1:bus', 'r-restart:1:hall-b-2:bus', 'r-restart:2:hall-b-3:bus', 'r-restart:2:hall-b-4:bus']);
});
