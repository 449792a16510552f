/**
 * `hsx-gateway fleet demo`: a whole fleet on one machine. A broker (Mosquitto when installed, else an open aedes
 * broker in this process; or the brokers given with --broker), N `serve` processes, each with M simulated devices
 * on a virtual CAN bus of its own, then v1 on every device and a 2-wave rollout of v2 (docs/fleet.md "Demo").
 *
 * State (the devices' flash and the gateways' journals) is kept in `stateDir` between runs: a second run finds the
 * devices on v2, puts nothing on v1 and its v2 rollout skips every device (SKIPPED, no job); it exits 0 too,
 * because every device runs v2. `fresh` wipes the state first.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { sha256Hex as tokenHash } from '../gateway/control/auth.js';
import { createRollout, readFleet, RolloutController } from './controller.js';
import { sha256Hex } from './images.js';
import { FleetMqtt } from './mqtt.js';
import type { RolloutDoc } from './rollout.js';

export interface FleetDemoOptions {
  gateways: number;
  devices: number;
  /** Brokers already running (gateways spread over them round-robin; the fleet client gets them all); none: start one. */
  brokers: string[];
  stateDir: string;
  fresh: boolean;
  prefix: string;
  /** The repository root (configs/sd/apps holds the two images; the CLI entry runs the gateways). */
  root: string;
  /** argv to run this CLI again (node and its flags, the entry script). */
  cliArgv: string[];
  /** Each progress line: an object (for --json) and its text. */
  say(o: Record<string, unknown>, text: string): void;
  /** The summary, as soon as it is known (before `linger`). */
  onSummary(s: DemoSummary): void;
  /** Resolves when the demo should end after the rollout (--once: at once). */
  linger(): Promise<void>;
}

export interface DemoSummary {
  type: 'summary';
  succeeded: number;
  failed: number;
  skipped: number;
  timed_out: number;
  canceled: number;
  devices: number;
  on_v2: number;
  ok: boolean;
}

interface Broker {
  urls: string[];
  kind: 'given' | 'mosquitto' | 'aedes';
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => res(p));
    });
  });
}

const MOSQUITTO = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto'].find((p) => existsSync(p));

async function startBroker(dir: string): Promise<Broker> {
  const port = await freePort();
  if (MOSQUITTO) {
    const conf = join(dir, 'mosquitto.conf');
    const lines = [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', `log_dest file ${join(dir, 'mosquitto.log')}`];
    // As root Mosquitto would switch to its own user and lose access to the state directory.
    if (process.getuid?.() === 0) lines.push('user root');
    writeFileSync(conf, lines.join('\n') + '\n');
    const child = spawn(MOSQUITTO, ['-c', conf], { stdio: 'ignore' });
    await waitListening(port, child);
    return {
      urls: [`mqtt://127.0.0.1:${port}`],
      kind: 'mosquitto',
      stop: () => stopChild(child),
    };
  }
  const { Aedes } = await import('aedes');
  const aedes = await Aedes.createBroker();
  const server: Server = createServer((socket) => aedes.handle(socket));
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(port, '127.0.0.1', () => res());
  });
  return {
    urls: [`mqtt://127.0.0.1:${port}`],
    kind: 'aedes',
    stop: () => new Promise<void>((res) => server.close(() => aedes.close(() => res()))),
  };
}

async function waitListening(port: number, child: ChildProcess): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited (${child.exitCode}) before listening on ${port}`);
    const ok = await new Promise<boolean>((res) => {
      const c = connect(port, '127.0.0.1');
      c.once('connect', () => {
        c.destroy();
        res(true);
      });
      c.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port} within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((res) => {
    child.once('exit', () => res());
    child.kill(signal);
  });
}

/** A `serve --json` child: resolves once it says `serving`. */
function startGateway(argv: string[], config: string, cwd: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [...argv, 'serve', '--config', config, '--control-port', '0', '--json'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  return new Promise((res, rej) => {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      try {
        const o = JSON.parse(line) as { type?: string };
        if (o.type === 'serving') res(child);
      } catch {
        /* not ours */
      }
    });
    child.once('exit', (code, signal) => rej(new Error(`gateway ${config} exited (${code ?? signal}) before serving: ${stderr.trim().split('\n').slice(-3).join(' | ')}`)));
  });
}

const rotate = <T>(xs: T[], i: number): T[] => [...xs.slice(i % xs.length), ...xs.slice(0, i % xs.length)];

export async function runFleetDemo(o: FleetDemoOptions): Promise<DemoSummary> {
  const stateDir = resolve(o.stateDir);
  if (o.fresh) rmSync(stateDir, { recursive: true, force: true });
  mkdirSync(stateDir, { recursive: true });
  const v1File = join(o.root, 'configs', 'sd', 'apps', 'sensor.hxe');
  const v2File = join(o.root, 'configs', 'sd', 'apps', 'sensor-v2.hxe');
  const v1 = new Uint8Array(readFileSync(v1File));
  const v2 = new Uint8Array(readFileSync(v2File));
  const v2sha = sha256Hex(v2);
  // The operator token the demo's gateways know (a new one per run; only its hash is written down).
  const token = randomBytes(18).toString('base64url');
  const children: ChildProcess[] = [];
  let broker: Broker | null = null;
  let m: FleetMqtt | null = null;
  try {
    broker = o.brokers.length ? { urls: o.brokers, kind: 'given', stop: async () => {} } : await startBroker(stateDir);
    o.say({ type: 'broker', kind: broker.kind, urls: broker.urls }, `broker: ${broker.kind} ${broker.urls.join(' ')}`);
    const ids: string[] = [];
    for (let g = 1; g <= o.gateways; g++) {
      const id = `demo-gw-${g}`;
      ids.push(id);
      const dir = join(stateDir, id);
      mkdirSync(dir, { recursive: true });
      const urls = rotate(broker.urls, g - 1);
      const devices = Array.from({ length: o.devices }, (_, i) => `[[devices]]\nname = "node${i + 1}"\nstate_dir = "${join(dir, `node${i + 1}`)}"\nnode_id = ${i + 1}\n`);
      const config = join(dir, 'gateway.toml');
      writeFileSync(config, [
        `[gateway]\nid = "${id}"\nlog_level = "warn"\nstate_dir = "${join(dir, 'gateway')}"\n`,
        `[control]\nlisten = "127.0.0.1:0"\n`,
        `[[control.tokens]]\nname = "fleet-demo"\nrole = "operator"\nsha256 = "${tokenHash(token)}"\n`,
        `[mqtt]\nurls = [${urls.map((u) => JSON.stringify(u)).join(', ')}]\nprotocol_version = 4\ntopic_prefix = "${o.prefix}"\ncommands = true\n`,
        `[[links.can]]\nname = "bus"\ninterface = "${id}-bus"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
        ...devices,
      ].join('\n'));
      children.push(await startGateway(o.cliArgv, config, o.root));
      o.say({ type: 'gateway', gateway: id, devices: o.devices, broker: urls[0] }, `gateway ${id}: ${o.devices} simulated device(s), broker ${urls[0]}`);
    }
    m = await FleetMqtt.connect({ urls: broker.urls, prefix: o.prefix, persistent: false });
    const fleet = m;
    // Every device's inventory on the broker (each gateway scans its bus at start).
    const want = o.gateways * o.devices;
    const inv = new Map<string, string | null>();
    const seenAll = waitFor(fleet, `${o.prefix}/+/device/+/inventory`, (topic, payload) => {
      const gw = topic.split('/')[1]!;
      if (!ids.includes(gw)) return false;
      inv.set(topic, payload.length ? ((JSON.parse(payload.toString('utf8')) as { sha256?: string | null }).sha256 ?? null) : null);
      return inv.size >= want;
    }, 120_000, `the inventory of ${want} devices`);
    await fleet.subscribe([`${o.prefix}/+/device/+/inventory`]);
    await seenAll;
    const select = `gateway=demo-gw-*`;
    const onV2 = [...inv.values()].filter((s) => s === v2sha).length;
    if (onV2 === want) {
      o.say({ type: 'v1', skipped: true, reason: 'every device already runs v2 (state kept from an earlier run)' }, 'v1: skipped, every device already runs v2 (an earlier run; --fresh starts over)');
    } else {
      const d1 = await rollout(fleet, token, v1, 'sensor.hxe', select, '100%', 'v1', o);
      if (d1.state !== 'completed') throw new Error(`the v1 rollout ended ${d1.state}: ${d1.reason ?? ''}`);
    }
    const d2 = await rollout(fleet, token, v2, 'sensor-v2.hxe', select, '50%,100%', 'v2', o);
    // The devices' inventories after the rollout: each gateway rescans after its job.
    const onV2After = await waitFor(fleet, `${o.prefix}/+/device/+/inventory`, (topic, payload) => {
      if (!ids.includes(topic.split('/')[1]!)) return false;
      inv.set(topic, payload.length ? ((JSON.parse(payload.toString('utf8')) as { sha256?: string | null }).sha256 ?? null) : null);
      return [...inv.values()].every((s) => s === v2sha);
    }, 60_000, 'every device on v2')
      .then(() => want)
      .catch(async () => (await readFleet(fleet)).devices.filter((d) => ids.includes(d.gateway) && d.sha256 === v2sha).length);
    const t = d2.totals;
    const summary: DemoSummary = { type: 'summary', succeeded: t.succeeded, failed: t.failed, skipped: t.skipped, timed_out: t.timed_out, canceled: t.canceled, devices: want, on_v2: onV2After, ok: onV2After === want };
    o.onSummary(summary);
    await o.linger();
    return summary;
  } finally {
    await m?.close().catch(() => {});
    await Promise.all(children.map((c) => stopChild(c)));
    await broker?.stop().catch(() => {});
  }
}

async function rollout(m: FleetMqtt, token: string, image: Uint8Array, name: string, selector: string, waves: string, label: string, o: FleetDemoOptions): Promise<RolloutDoc> {
  const id = `demo-${label}-${new Date().toISOString().replace(/[-:TZ.]/g, '').slice(0, 14)}-${randomBytes(2).toString('hex')}`;
  const created = await createRollout(m, { id, image, imageName: name, selector, waves, abortFailureRate: 0.05, timeoutS: 600, partBytes: 256 * 1024 });
  const show = (d: RolloutDoc): void => {
    const t = d.totals;
    const wave = d.current_wave === null ? '' : ` wave ${d.current_wave + 1}/${d.waves.length}`;
    o.say({ type: 'rollout', image: label, id: d.id, version: d.version, state: d.state, current_wave: d.current_wave, totals: t }, `${label}: ${d.id} ${d.state}${wave}: ${t.succeeded} succeeded, ${t.skipped} skipped, ${t.failed} failed, ${t.timed_out} timed out of ${t.devices}`);
  };
  show(created);
  if (created.state !== 'running') return created;
  let last = created.version;
  const ctl = new RolloutController(m, id, {
    token,
    onDoc: (d) => {
      if (d.version <= last) return;
      last = d.version;
      show(d);
    },
  });
  return ctl.run();
}

/** Resolves when `pred` accepts a message on `filter` (subscribe separately), rejects after `ms`. */
function waitFor(m: FleetMqtt, filter: string, pred: (topic: string, payload: Buffer) => boolean, ms: number, what: string): Promise<void> {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`timed out waiting for ${what}`));
    }, ms);
    const off = m.on(filter, (topic, payload) => {
      let hit = false;
      try {
        hit = pred(topic, payload);
      } catch {
        hit = false;
      }
      if (!hit) return;
      clearTimeout(timer);
      off();
      res();
    });
  });
}

/** For the CLI: is Mosquitto installed (else the demo uses aedes). */
export function mosquittoInstalled(): boolean {
  return MOSQUITTO !== undefined && spawnSync(MOSQUITTO, ['-h'], { stdio: 'ignore' }).error === undefined;
}
