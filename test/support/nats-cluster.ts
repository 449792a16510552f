/**
 * A three-node NATS cluster (Debian's `nats-server` 2.9; `.ci/run` installs it) on loopback: each node its own
 * client, cluster-route, monitoring and MQTT ports, JetStream on with its own store dir, `server_name` set (the
 * MQTT listener needs both), routes to the other two. Started and stopped by PID. `startNatsCluster` resolves
 * once the cluster is usable over MQTT: a retained message published on node 1 is seen by a wildcard
 * subscriber on node 3 (JetStream has a meta leader and the MQTT streams exist, replicated).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { freePort } from './mosquitto.js';

const BIN = ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server'].find((p) => existsSync(p));

export function natsAvailable(): boolean {
  return BIN !== undefined;
}

export interface NatsNode {
  name: string;
  /** The node's MQTT listener. */
  url: string;
  mqttPort: number;
  clientPort: number;
  clusterPort: number;
  httpPort: number;
  readonly pid: number;
  readonly running: boolean;
  /** SIGKILL (a crash: no goodbye to the cluster) and wait for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start it again with the same ports and store. */
  start(): Promise<void>;
}

export interface NatsCluster {
  nodes: NatsNode[];
  /** Every node's MQTT URL, in node order. */
  urls: string[];
  dir: string;
  stop(): Promise<void>;
}

async function listening(port: number, deadline: number, child: ChildProcess, log: string): Promise<void> {
  const { connect } = await import('node:net');
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      let tail = '';
      try {
        tail = readFileSync(log, 'utf8').split('\n').slice(-8).join('\n');
      } catch {
        /* no log */
      }
      throw new Error(`nats-server exited (${child.exitCode ?? child.signalCode}); log ${log}:\n${tail}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const c = connect(port, '127.0.0.1');
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}; log ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Retained on node `from`, read by a wildcard subscriber on node `to`: true when seen, false on any failure or
 * after about `ms` (a node whose JetStream is not ready may leave a CONNECT or a QoS 1 publish unanswered).
 */
async function retainedCrosses(from: string, to: string, ms: number): Promise<boolean> {
  const clients: mqtt.MqttClient[] = [];
  let timer: NodeJS.Timeout | undefined;
  const bounded = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms * 2)));
  try {
    return await Promise.race([crossOnce(from, to, ms, clients), bounded]);
  } finally {
    clearTimeout(timer);
    for (const c of clients) await c.endAsync(true).catch(() => {});
  }
}

async function crossOnce(from: string, to: string, ms: number, clients: mqtt.MqttClient[]): Promise<boolean> {
  const topic = `hsx-ready/${Date.now()}-${Math.random().toString(16).slice(2)}`;
  const opts = { protocolVersion: 4 as const, reconnectPeriod: 0, connectTimeout: Math.min(ms, 10_000) };
  let pub: mqtt.MqttClient | null = null;
  let sub: mqtt.MqttClient | null = null;
  try {
    pub = mqtt.connect(from, opts);
    clients.push(pub);
    await new Promise<void>((resolve, reject) => {
      pub!.once('connect', () => resolve());
      pub!.once('close', () => reject(new Error('closed')));
    });
    await pub.publishAsync(topic, 'ready', { qos: 1, retain: true });
    sub = mqtt.connect(to, opts);
    clients.push(sub);
    await new Promise<void>((resolve, reject) => {
      sub!.once('connect', () => resolve());
      sub!.once('close', () => reject(new Error('closed')));
    });
    const seen = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      sub!.on('message', (t, p) => {
        if (t === topic && p.toString() === 'ready') {
          clearTimeout(timer);
          resolve(true);
        }
      });
    });
    await sub.subscribeAsync('hsx-ready/#', { qos: 0 });
    const ok = await seen;
    await pub.publishAsync(topic, '', { qos: 1, retain: true });
    return ok;
  } catch {
    return false;
  } finally {
    await pub?.endAsync(true).catch(() => {});
    await sub?.endAsync(true).catch(() => {});
  }
}

export async function startNatsCluster(o: { name?: string; readyTimeoutMs?: number } = {}): Promise<NatsCluster> {
  if (!BIN) throw new Error('nats-server is not installed (apt-get install -y nats-server); .ci/run installs it');
  const dir = mkdtempSync(join(tmpdir(), 'hsx-nats-'));
  const cluster = o.name ?? 'hsx';
  const ports: Array<{ client: number; cluster: number; http: number; mqtt: number }> = [];
  const taken = new Set<number>();
  const port = async (): Promise<number> => {
    for (;;) {
      const p = await freePort();
      if (!taken.has(p)) {
        taken.add(p);
        return p;
      }
    }
  };
  for (let i = 0; i < 3; i++) ports.push({ client: await port(), cluster: await port(), http: await port(), mqtt: await port() });
  const nodes: NatsNode[] = ports.map((p, i) => {
    const name = `n${i + 1}`;
    const store = join(dir, name);
    mkdirSync(store, { recursive: true });
    const conf = join(dir, `${name}.conf`);
    const routes = ports.filter((_, j) => j !== i).map((q) => `nats-route://127.0.0.1:${q.cluster}`);
    writeFileSync(conf, [
      `server_name: ${name}`,
      `listen: 127.0.0.1:${p.client}`,
      `http: 127.0.0.1:${p.http}`,
      `jetstream { store_dir: "${store}" }`,
      `cluster { name: ${cluster}, listen: 127.0.0.1:${p.cluster}, routes: [${routes.join(', ')}] }`,
      // Replicas 3: the MQTT streams (retained messages, sessions) keep a quorum when one node is lost; left to
      // itself a node that sees only one peer yet makes them with 2.
      `mqtt { listen: 127.0.0.1:${p.mqtt}, stream_replicas: 3 }`,
      '',
    ].join('\n'));
    const log = join(dir, `${name}.log`);
    let child: ChildProcess | null = null;
    const node: NatsNode = {
      name,
      url: `mqtt://127.0.0.1:${p.mqtt}`,
      mqttPort: p.mqtt,
      clientPort: p.client,
      clusterPort: p.cluster,
      httpPort: p.http,
      get pid() {
        return child?.pid ?? -1;
      },
      get running() {
        return child !== null && child.exitCode === null && child.signalCode === null;
      },
      async kill(signal: NodeJS.Signals = 'SIGKILL') {
        const c = child;
        if (!c || c.exitCode !== null || c.signalCode !== null) return;
        const exited = new Promise<void>((r) => c.once('exit', () => r()));
        c.kill(signal);
        await exited;
      },
      async start() {
        child = spawn(BIN!, ['-c', conf, '-l', log], { stdio: 'ignore' });
        const deadline = Date.now() + 30_000;
        await listening(p.mqtt, deadline, child, log);
      },
    };
    return node;
  });
  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.kill('SIGTERM')));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.all(nodes.map((n) => n.start()));
    // Usable when a retained message crosses the cluster (1 → 3, and 3 → 2): each try is bounded, the whole wait too.
    const deadline = Date.now() + (o.readyTimeoutMs ?? 120_000);
    for (;;) {
      if ((await retainedCrosses(nodes[0]!.url, nodes[2]!.url, 5_000)) && (await retainedCrosses(nodes[2]!.url, nodes[1]!.url, 5_000))) break;
      if (Date.now() > deadline) throw new Error(`the NATS cluster did not carry a retained message across nodes in time; logs in ${dir}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  } catch (e) {
    await stop().catch(() => {});
    throw e;
  }
  return { nodes, urls: nodes.map((n) => n.url), dir, stop };
}
