/**
 * A fleet on a real three-node broker cluster, shared by test/fleet-nats.test.ts and the failover lane
 * (test/lanes/fleet-nats-failover.ts): Debian's nats-server 2.9 with JetStream and an MQTT listener per
 * node (nats-cluster.ts), four `serve` processes (MQTT 3.1.1: NATS speaks nothing else), each with its own
 * virtual CAN bus and four `device` processes, spread over the three nodes (each gateway's `mqtt.urls`
 * starts at its own node), and the `fleet` CLI on a connection of its own. Every wait is on a line, a
 * process exit or an MQTT message.
 */
import type { ExecutionContext } from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { sha256Hex as tokenHash } from '../../src/gateway/control/auth.js';
import { sha256Hex } from '../../src/fleet/images.js';
import type { RolloutDoc } from '../../src/fleet/rollout.js';
import { ROOT } from './cli-argv.js';
import { openTestBus, spawnCli, type CliChild, type TestBus } from './can-bus.js';
import { natsAvailable, startNatsCluster, type NatsCluster } from './nats-cluster.js';
import { startServe, type ServeChild } from './serve-child.js';

export const OPERATOR = 'fleet-nats-operator-1';
const APPS = join(ROOT, 'configs', 'sd', 'apps');
export const V1_FILE = join(APPS, 'sensor.hxe');
export const V2_FILE = join(APPS, 'sensor-v2.hxe');
export const V1 = sha256Hex(new Uint8Array(readFileSync(V1_FILE)));
export const V2 = sha256Hex(new Uint8Array(readFileSync(V2_FILE)));
export const GATEWAYS = ['hall-b-1', 'hall-b-2', 'hall-b-3', 'hall-b-4'];
/** The node each gateway starts on: hall-b-3 (in the second wave) shares node 1 with the controlling client. */
const HOME = { 'hall-b-1': 1, 'hall-b-2': 2, 'hall-b-3': 0, 'hall-b-4': 1 } as Record<string, number>;
export const NODES = 4;

export interface Fleet {
  nats: NatsCluster;
  dir: string;
  gateways: Record<string, ServeChild>;
}

export let fleet: Fleet | null = null;
const cleanups: Array<() => Promise<void>> = [];

/** The list starting at node `i`, then the others in order. */
export const from = (urls: string[], i: number): string[] => [...urls.slice(i), ...urls.slice(0, i)];

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
export async function ensureFleet(t: ExecutionContext): Promise<boolean> {
  if (!natsAvailable()) return false;
  t.timeout(600_000, 'starting the NATS cluster and the fleet, then the test');
  fleet ??= await startFleet();
  return true;
}

/** Stops everything ensureFleet started (a test file's `test.after.always`). */
export async function stopFleet(): Promise<void> {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  cleanups.length = 0;
  fleet = null;
}

export const result = (lines: Array<Record<string, unknown>>): Record<string, unknown> => {
  const r = lines.find((l) => l['type'] === 'result' || l['type'] === 'error');
  if (!r) throw new Error(`no result line: ${JSON.stringify(lines.slice(-3))}`);
  return r;
};
export const docOf = (lines: Array<Record<string, unknown>>): RolloutDoc => result(lines)['rollout'] as RolloutDoc;

/** `hsx-gateway fleet … --json` against `brokers`, to its exit. */
export async function cli(args: string[], brokers: string[]): Promise<{ code: number; lines: Array<Record<string, unknown>>; stderr: string }> {
  const p = spawnCli(['fleet', ...args, ...brokers.flatMap((b) => ['--broker', b]), '--json']);
  const code = await p.exited;
  return { code, lines: p.lines, stderr: p.stderr() };
}

/** Waits until every gateway's 4 retained inventories, read on node `node`, show `sha`. */
export async function inventoryShows(t: ExecutionContext, node: string, sha: string): Promise<void> {
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
export async function jobTokens(t: ExecutionContext, node: string, rollout: string): Promise<string[]> {
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


