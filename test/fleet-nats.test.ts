/**
 * The fleet on a real three-node broker cluster: Debian's nats-server 2.9 with JetStream and an MQTT listener per
 * node (test/support/nats-cluster.ts). Four `serve` processes (MQTT 3.1.1: NATS speaks nothing else), each with its
 * own virtual CAN bus and four `device` processes, spread over the three nodes (each gateway's `mqtt.urls` starts
 * at its own node), the `fleet` CLI on a connection of its own. A 2-wave rollout completes; then, in the middle of
 * wave 2, the node serving the controlling client and one gateway is SIGKILLed: both fail over to another node, the
 * rollout completes, no job runs twice, and `fleet status` from a client on a third node shows the same document.
 * Every wait is on a line, a process exit or an MQTT message.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { sha256Hex } from '../src/fleet/images.js';
import type { RolloutDoc } from '../src/fleet/rollout.js';
import { ROOT } from './support/cli-argv.js';
import { openTestBus, spawnCli, type CliChild, type TestBus } from './support/can-bus.js';
import { natsAvailable, startNatsCluster, type NatsCluster } from './support/nats-cluster.js';
import { startServe, type ServeChild } from './support/serve-child.js';

const OPERATOR = 'fleet-nats-operator-1';
const APPS = join(ROOT, 'configs', 'sd', 'apps');
const V1_FILE = join(APPS, 'sensor.hxe');
const V2_FILE = join(APPS, 'sensor-v2.hxe');
const V1 = sha256Hex(new Uint8Array(readFileSync(V1_FILE)));
const V2 = sha256Hex(new Uint8Array(readFileSync(V2_FILE)));
const GATEWAYS = ['hall-b-1', 'hall-b-2', 'hall-b-3', 'hall-b-4'];
/** The node each gateway starts on: hall-b-3 (in the second wave) shares node 1 with the controlling client. */
const HOME = { 'hall-b-1': 1, 'hall-b-2': 2, 'hall-b-3': 0, 'hall-b-4': 1 } as Record<string, number>;
const NODES = 4;

interface Fleet {
  nats: NatsCluster;
  dir: string;
  gateways: Record<string, ServeChild>;
}

let fleet: Fleet | null = null;
const cleanups: Array<() => Promise<void>> = [];

/** The list starting at node `i`, then the others in order. */
const from = (urls: string[], i: number): string[] => [...urls.slice(i), ...urls.slice(0, i)];

async function startFleet(): Promise<Fleet> {
  const dir = mkdtempSync(join(tmpdir(), 'fleet-nats-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const nats = await startNatsCluster();
  cleanups.push(() => nats.stop());
  const buses: TestBus[] = [];
  const devices: CliChild[] = [];
  cleanups.push(async () => {
    for (const d of devices) d.child.kill('SIGTERM');
    await Promise.all(devices.map((d) => d.exited));
    for (const b of buses) await b.close();
  });
  const configs: Record<string, string> = {};
  for (const gw of GATEWAYS) {
    const bus = await openTestBus();
    buses.push(bus);
    const address = bus.processAddress();
    for (let n = 1; n <= NODES; n++) devices.push(spawnCli(['device', '--can', address, '--node', String(n), '--state', join(dir, `${gw}-node${n}`), '--json']));
    const images = join(dir, `${gw}-images`);
    mkdirSync(images);
    configs[gw] = join(dir, `${gw}.toml`);
    writeFileSync(configs[gw]!, [
      `[gateway]\nid = "${gw}"\nlog_level = "warn"\nstate_dir = "${join(dir, `${gw}-state`)}"\n`,
      `[control]\nlisten = "127.0.0.1:9998"\nimages_dir = "${images}"\n`,
      `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(OPERATOR)}"\n`,
      `[mqtt]\nurls = [${from(nats.urls, HOME[gw]!).map((u) => `"${u}"`).join(', ')}]\nprotocol_version = 4\ntopic_prefix = "hsx"\ncommands = true\n`,
      `[[links.can]]\nname = "bus"\ninterface = "${address.replace(/^virtual:/, '')}"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
    ].join('\n'));
  }
  await Promise.all(devices.map((d) => d.waitFor((l) => l['type'] === 'ready')));
  const gateways: Record<string, ServeChild> = {};
  for (const gw of GATEWAYS) gateways[gw] = await startServe(configs[gw]!);
  cleanups.push(async () => {
    const all = Object.values(gateways);
    for (const s of all) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    await Promise.all(all.map((s) => s.exited));
  });
  return { nats, dir, gateways };
}

/** Started by the first test (with a timeout of its own: three nodes, 16 devices and 4 gateways take a while on a busy machine). */
async function ensureFleet(t: ExecutionContext): Promise<boolean> {
  if (!natsAvailable()) return false;
  t.timeout(600_000, 'starting the NATS cluster and the fleet, then the test');
  fleet ??= await startFleet();
  return true;
}

test.after.always(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

const result = (lines: Array<Record<string, unknown>>): Record<string, unknown> => {
  const r = lines.find((l) => l['type'] === 'result' || l['type'] === 'error');
  if (!r) throw new Error(`no result line: ${JSON.stringify(lines.slice(-3))}`);
  return r;
};
const docOf = (lines: Array<Record<string, unknown>>): RolloutDoc => result(lines)['rollout'] as RolloutDoc;

/** `hsx-gateway fleet … --json` against `brokers`, to its exit. */
async function cli(args: string[], brokers: string[]): Promise<{ code: number; lines: Array<Record<string, unknown>>; stderr: string }> {
  const p = spawnCli(['fleet', ...args, ...brokers.flatMap((b) => ['--broker', b]), '--json']);
  const code = await p.exited;
  return { code, lines: p.lines, stderr: p.stderr() };
}

/** Waits until every gateway's 4 retained inventories, read on node `node`, show `sha`. */
async function inventoryShows(t: ExecutionContext, node: string, sha: string): Promise<void> {
  const c = await mqtt.connectAsync(node, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => c.endAsync(true));
  const latest = new Map<string, string | null>();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`inventories never all showed ${sha.slice(0, 12)}: ${JSON.stringify([...latest])}`)), 120_000);
    c.on('message', (topic, p) => {
      latest.set(topic, p.length ? ((JSON.parse(p.toString()) as { sha256?: string }).sha256 ?? null) : null);
      if (latest.size === GATEWAYS.length * NODES && [...latest.values()].every((s) => s === sha)) {
        clearTimeout(timer);
        resolve();
      }
    });
    c.subscribeAsync('hsx/+/device/+/inventory', { qos: 0 }).catch(reject);
  });
}

/** Every job document's client token for `rollout`, read on `node` (until a marker round trip). */
async function jobTokens(t: ExecutionContext, node: string, rollout: string): Promise<string[]> {
  const c = await mqtt.connectAsync(node, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => c.endAsync(true));
  const tokens: string[] = [];
  const marker = `hsx/sync-nats-${Date.now()}`;
  const done = new Promise<void>((resolve) => {
    c.on('message', (topic, p) => {
      if (topic === marker) return resolve();
      if (!p.length || !/^hsx\/[^/]+\/jobs\/[^/]+$/.test(topic)) return;
      const ct = (JSON.parse(p.toString()) as { client_token?: string }).client_token;
      if (ct?.startsWith(`${rollout}:`)) tokens.push(ct);
    });
  });
  // QoS 0: a NATS node makes no JetStream consumer for it (and does not refuse it while JetStream is busy).
  await c.subscribeAsync(['hsx/+/jobs/+', marker], { qos: 0 });
  await c.publishAsync(marker, 'x', { qos: 1 });
  await done;
  return tokens.sort();
}


test.serial('NATS cluster: 4 gateways × 4 devices over three nodes; v1 everywhere, then a 2-wave rollout of v2 completes', async (t) => {
  if (!(await ensureFleet(t))) return t.pass('nats-server not installed');
  const urls = fleet!.nats.urls;
  const ls = await cli(['ls'], from(urls, 2));
  t.is(ls.code, 0, ls.stderr);
  t.is(result(ls.lines)['gateways'], 4);
  t.is(result(ls.lines)['devices'], 16);
  const first = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--waves', '100%', '--token', OPERATOR, '--id', 'n-v1'], from(urls, 0));
  t.is(first.code, 0, JSON.stringify(result(first.lines)));
  t.is(docOf(first.lines).totals.succeeded, 16);
  await inventoryShows(t, urls[2]!, V1);
  const r = await cli(['rollout', 'create', '--image', V2_FILE, '--select', 'gateway=hall-b-*', '--waves', '50%,100%', '--token', OPERATOR, '--id', 'n-v2', '--max-message-bytes', '128'], from(urls, 0));
  t.is(r.code, 0, JSON.stringify(result(r.lines)));
  const d = docOf(r.lines);
  t.is(d.state, 'completed');
  t.is(d.image.parts, 3);
  t.deepEqual(d.waves.map((w) => w.targets.length), [8, 8]);
  t.is(d.totals.succeeded, 16);
  await inventoryShows(t, urls[1]!, V2);
  t.deepEqual(await jobTokens(t, urls[2]!, 'n-v2'), GATEWAYS.map((gw, i) => `n-v2:${i < 2 ? 0 : 1}:${gw}:bus`).sort());
});

test.serial('NATS cluster: the node serving the controller and one gateway SIGKILLed in wave 2: both fail over, the rollout completes, no job runs twice, status on a third node is the same', async (t) => {
  if (!(await ensureFleet(t))) return t.pass('nats-server not installed');
  const urls = fleet!.nats.urls;
  const [n1] = fleet!.nats.nodes;
  // Every device runs v2: roll v1 back out, the controller on node 1 (as hall-b-3, whose devices are in wave 2).
  const ctl = spawnCli(['fleet', 'rollout', 'create', ...from(urls, 0).flatMap((b) => ['--broker', b]), '--json', '--token', OPERATOR, '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--waves', '50%,100%', '--timeout', '3m', '--id', 'n-kill']);
  await ctl.waitFor((l) => l['type'] === 'rollout' && (l['rollout'] as RolloutDoc).waves[1]?.state === 'running');
  await n1!.kill('SIGKILL');
  t.is(await ctl.exited, 0, `${ctl.stderr()} ${JSON.stringify(ctl.lines.at(-1))}\nhall-b-3: ${fleet!.gateways['hall-b-3']!.stderr().slice(-3000)}`);
  const d = docOf(ctl.lines);
  t.is(d.state, 'completed');
  t.is(d.totals.succeeded, 16);
  t.true(d.waves.every((w) => w.targets.every((x) => x.state === 'SUCCEEDED')));
  // hall-b-3 lost its node and went on from another one.
  t.regex(fleet!.gateways['hall-b-3']!.stderr(), /failed over to mqtt:\/\/127\.0\.0\.1:(\d+)/);
  t.notRegex(fleet!.gateways['hall-b-3']!.stderr(), new RegExp(`failed over to ${urls[0]!.replace(/[.]/g, '\\.')}`));
  // One job per gateway and wave.
  t.deepEqual(await jobTokens(t, urls[2]!, 'n-kill'), GATEWAYS.map((gw, i) => `n-kill:${i < 2 ? 0 : 1}:${gw}:bus`).sort());
  // A client on the third node: once it sees the rollout finished, its status is the controller's last document.
  const watch = await cli(['rollout', 'watch', 'n-kill'], [urls[2]!]);
  t.is(watch.code, 0, `${watch.stderr} ${JSON.stringify(watch.lines.at(-1))}`);
  const st = await cli(['rollout', 'status', 'n-kill'], [urls[2]!]);
  t.is(st.code, 0, `${st.stderr} ${JSON.stringify(st.lines.at(-1))}`);
  t.deepEqual(docOf(st.lines), d);
  await inventoryShows(t, urls[1]!, V1);
});
