/**
 * Fleet bench (issue 26): one JSON object per line ({"bench":"fleet","measure":...}), then a `summary` with each
 * goal and whether it passed. A missed goal is reported, never an exit code.
 *
 *   npx tsx bench/fleet.ts [--gateways 8] [--devices 8] [--kib 32]
 *
 * The rig: a real Mosquitto (test/support/mosquitto.ts), G `serve` processes, each with D simulated devices in
 * its own process on its own virtual CAN bus with the 1 Mbit/s timing model (so a job takes the time a real bus
 * gives it), and the fleet client (controller) in this process. v1 is put on every device first (not measured),
 * then the measured rollout of v2 (KiB-sized builds of one app) in 2 waves (50%, 100%).
 *
 * 1. messages_per_device — a subscriber to `#` (QoS 0) counts every message published to the broker by anyone
 *    from the create to the completed document, divided by the devices: `coordination` (everything but
 *    progress: rollout documents, the image, submit requests and answers, job documents, job and provisioning
 *    events, inventory, status, sync markers) against the goal ≤ 20, and `progress` (job.progress and
 *    provisioning.progress, at the gateways' configured rate) reported beside it. These are publishes; a
 *    broker's deliveries are this times its subscribers per topic.
 * 2. coordination_overhead — the rollout's wall time (create → completed) against its baseline, measured in the
 *    same run from the gateways' own job records: per wave, the slowest job's started_ts → finished_ts, summed
 *    over the waves (what the gateways would take if coordination cost nothing). overhead = wall − that; goal:
 *    ≤ 10 % of it.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { createRollout, RolloutController } from '../src/fleet/controller.js';
import { FleetMqtt } from '../src/fleet/mqtt.js';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import type { JobRecord } from '../src/gateway/jobs/types.js';
import { cliArgv, ROOT } from '../test/support/cli-argv.js';
import { startMosquitto } from '../test/support/mosquitto.js';
import { sensorOfSize } from '../test/update-images.js';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const G = arg('gateways', 8);
const D = arg('devices', 8);
const KIB = arg('kib', 32);
const TOKEN = 'fleet-bench-operator';
const PREFIX = 'hsxbench';
const out = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify({ bench: 'fleet', ...o })}\n`);

function serve(config: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [...cliArgv(), 'serve', '--config', config, '--control-port', '0', '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] });
  return new Promise((res, rej) => {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l.includes('"type":"serving"')) res(child);
    });
    child.once('exit', (c) => rej(new Error(`serve ${config} exited ${c}`)));
  });
}

async function rollout(m: FleetMqtt, id: string, image: Uint8Array, waves: string): Promise<void> {
  const d = await createRollout(m, { id, image, imageName: `${id}.hxe`, selector: 'gateway=bench-*', waves, abortFailureRate: 0.05, timeoutS: 1800, partBytes: 256 * 1024 });
  if (d.state !== 'running') throw new Error(`rollout ${id} did not start: ${d.state} ${d.reason}`);
  const end = await new RolloutController(m, id, { token: TOKEN }).run();
  if (end.state !== 'completed' || end.totals.succeeded + end.totals.skipped !== end.totals.devices) throw new Error(`rollout ${id} ended ${end.state}: ${JSON.stringify(end.totals)}`);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'fleet-bench-'));
  const broker = await startMosquitto();
  const children: ChildProcess[] = [];
  try {
    for (let g = 1; g <= G; g++) {
      const gdir = join(dir, `bench-${g}`);
      mkdirSync(gdir);
      const config = join(gdir, 'gateway.toml');
      const devices = Array.from({ length: D }, (_, i) => `[[devices]]\nname = "node${i + 1}"\nstate_dir = "${join(gdir, `node${i + 1}`)}"\nnode_id = ${i + 1}\n`);
      writeFileSync(config, [
        `[gateway]\nid = "bench-${g}"\nlog_level = "warn"\nstate_dir = "${join(gdir, 'state')}"\n`,
        `[control]\nlisten = "127.0.0.1:0"\n`,
        `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(TOKEN)}"\n`,
        `[mqtt]\nurl = "${broker.url}"\nprotocol_version = 4\ntopic_prefix = "${PREFIX}"\ncommands = true\n`,
        `[[links.can]]\nname = "bus"\ninterface = "bench-${g}-bus"\nbackend = "virtual"\nbitrate = 1000000\nrole = "master"\ntiming = true\n`,
        ...devices,
      ].join('\n'));
      children.push(await serve(config));
    }
    const m = await FleetMqtt.connect({ urls: [broker.url], prefix: PREFIX, persistent: false });
    // Wait for every inventory.
    await new Promise<void>((res) => {
      const seen = new Set<string>();
      m.on(`${PREFIX}/+/device/+/inventory`, (t) => {
        seen.add(t);
        if (seen.size >= G * D) res();
      });
      void m.subscribe([`${PREFIX}/+/device/+/inventory`]);
    });
    const v1 = sensorOfSize(1, KIB * 1024);
    const v2 = sensorOfSize(2, KIB * 1024);
    await rollout(m, 'bench-v1', v1, '100%');

    // The counter and the job records.
    const counter = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
    let counting = false;
    let coordination = 0;
    let progress = 0;
    const byKind = new Map<string, number>();
    const jobs = new Map<string, JobRecord>();
    counter.on('message', (topic, payload, packet) => {
      if (/\/jobs\/[^/]+$/.test(topic) && payload.length && !topic.endsWith('/submit')) {
        try {
          const j = JSON.parse(payload.toString()) as JobRecord;
          if (j.client_token?.startsWith('bench-v2:')) jobs.set(topic, j);
        } catch {
          /* not a job */
        }
      }
      if (!counting || packet.retain) return;
      const kind = /progress$/.test(topic) ? 'progress' : topic.replace(/^[^/]+\/[^/]+\//, '').replace(/\/[^/]*\d[^/]*$/, '/*').replace(/device\/[^/]+\//, 'device/*/');
      byKind.set(kind, (byKind.get(kind) ?? 0) + 1);
      if (/progress$/.test(topic)) progress++;
      else coordination++;
    });
    await counter.subscribeAsync('#', { qos: 0 });
    counting = true;
    const t0 = Date.now();
    await rollout(m, 'bench-v2', v2, '50%,100%');
    const wallMs = Date.now() - t0;
    // Everything published before the completed document has reached the counter: a marker round trip.
    const marked = new Promise<void>((res) => counter.on('message', (t) => t === `${PREFIX}/bench-marker` && res()));
    await counter.publishAsync(`${PREFIX}/bench-marker`, 'x', { qos: 1 });
    await marked;
    counting = false;
    coordination -= 1; // the marker
    const devices = G * D;
    out({ measure: 'messages_per_device', gateways: G, devices, image_bytes: v2.length, coordination_per_device: +(coordination / devices).toFixed(2), progress_per_device: +(progress / devices).toFixed(2), coordination_total: coordination, progress_total: progress, by_kind: Object.fromEntries([...byKind].sort((a, b) => b[1] - a[1])) });
    // The baseline from the gateways' own job records: per wave, the slowest job.
    const waveOf = (j: JobRecord): number => Number(j.client_token!.split(':')[1]);
    const slowest = new Map<number, number>();
    for (const j of jobs.values()) {
      if (j.started_ts === null || j.finished_ts === null) continue;
      const ms = (j.finished_ts - j.started_ts) * 1000;
      slowest.set(waveOf(j), Math.max(slowest.get(waveOf(j)) ?? 0, ms));
    }
    const baselineMs = [...slowest.values()].reduce((a, b) => a + b, 0);
    const overheadMs = wallMs - baselineMs;
    const ratio = overheadMs / baselineMs;
    out({ measure: 'coordination_overhead', gateways: G, devices, jobs: jobs.size, wall_ms: wallMs, baseline_ms: Math.round(baselineMs), slowest_job_ms_per_wave: [...slowest.entries()].sort((a, b) => a[0] - b[0]).map(([, v]) => Math.round(v)), overhead_ms: Math.round(overheadMs), overhead_ratio: +ratio.toFixed(3) });
    const perDevice = coordination / devices;
    out({
      measure: 'summary',
      goals: [
        { goal: 'MQTT messages per device per rollout ≤ 20 plus progress', value: +perDevice.toFixed(2), passed: perDevice <= 20 },
        { goal: 'coordination overhead ≤ 10% of the slowest gateways\' own job time', value: +ratio.toFixed(3), passed: ratio <= 0.1 },
      ],
    });
    await counter.endAsync(true);
    await m.close();
  } finally {
    await Promise.all(children.map((c) => new Promise<void>((res) => (c.exitCode !== null ? res() : (c.once('exit', () => res()), c.kill('SIGTERM'))))));
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
