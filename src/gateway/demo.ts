/**
 * `hsx-gateway demo`: the whole product in one process, needing nothing but a fresh clone.
 * An embedded MQTT broker, four simulated devices on a virtual CAN bus (1 Mbit/s timing model),
 * a fifth on a UART pty pair where socat exists. The gateway scans its CAN master link at start;
 * the sample image then reaches the four CAN devices as a daemon job (submitted over the
 * gateway's own control port and followed to its end), and the UART device by a one-shot flash.
 * A value is read and written over CAN, one device is power-cycled (its files closed and
 * reopened) to show the image and the persisted value survive, and the task tables and the MQTT
 * topics to watch are printed. Then it keeps serving until Ctrl-C (`--once` exits instead).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeF16 } from '../hxe/index.js';
import { openCanBus } from '../link/can/address.js';
import { requestValue } from '../link/can/value-client.js';
import { runUartFlash } from '../link/uart/cli.js';
import { runUartDevice } from '../link/uart/device-command.js';
import { haveSocat, startPtyPair, type PtyPair } from '../link/uart/pty-pair.js';
import { linkName, loadConfig, type GatewayConfig } from './config.js';
import { ControlClient, type Reply } from './control/client.js';
import { LineReader } from './control/line-reader.js';
import { Gateway } from './gateway.js';
import type { LinkInventory } from './inventory.js';
import type { JobRecord, JobTarget } from './jobs/types.js';
import { createLogger } from './logger.js';
import { allTopics, deviceInventoryTopic, deviceValuesFilter, eventTopic, jobDocTopic } from './mqtt/topics.js';
import { openSimulatedDevice, type SimulatedDevice } from '../persist/simulated-device.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEMO_CONFIG = join(ROOT, 'configs', 'demo.toml');
export const DEMO_IMAGE = join(ROOT, 'configs', 'sd', 'apps', 'sensor.hxe');
/** temperature (group 1, id 2) in the sample image: persisted under key 17, init 12.5 °C. */
const TEMPERATURE_OID = (1 << 8) | 2;
const NEW_TEMPERATURE_RAW = 0x4f80; // 30.0 in f16

export interface DemoOptions {
  once: boolean;
  json: boolean;
  /** Where the devices' flash and FRAM files go (wiped at start unless keepState). */
  stateDir?: string;
  keepState?: boolean;
  controlPort?: number;
  mqttPort?: number;
  /** Serve the live page and /metrics on this port (0: a free one). */
  httpPort?: number;
  /** An already loaded and validated configuration (default: DEMO_CONFIG, loaded here). */
  config?: GatewayConfig;
  /** Log lines as `pretty` or `json` (default: pretty on a terminal, JSON otherwise). */
  logFormat?: 'pretty' | 'json';
}

export interface DemoOutcome {
  ok: boolean;
  steps: Record<string, boolean>;
}

export async function runDemo(o: DemoOptions): Promise<DemoOutcome> {
  const say = (obj: Record<string, unknown>, human: string) => process.stdout.write((o.json ? JSON.stringify(obj) : human) + '\n');
  const steps: Record<string, boolean> = {};
  let cfg: GatewayConfig;
  if (o.config) cfg = o.config;
  else {
    const loaded = loadConfig(DEMO_CONFIG);
    if (!loaded.ok) throw new Error(loaded.error.message);
    cfg = loaded.value;
  }
  const stateRoot = resolve(o.stateDir ?? join(ROOT, '.demo-state'));
  if (!o.keepState) rmSync(stateRoot, { recursive: true, force: true });
  mkdirSync(stateRoot, { recursive: true });
  for (const d of cfg.devices) d.state_dir = join(stateRoot, d.name);
  // The job journal and job images live next to the devices, so --keep-state keeps them too.
  cfg.gateway.state_dir = join(stateRoot, 'gateway');
  if (cfg.mqtt && o.mqttPort !== undefined) cfg.mqtt.embedded_port = o.mqttPort;
  const link = cfg.links.can[0]!;
  const canAddress = `virtual:${link.interface}?bitrate=${link.bitrate}`;

  const log = createLogger(cfg.gateway.log_level, o.logFormat ? { format: o.logFormat } : {});
  const overrides: { controlPort?: number; httpPort?: number } = {};
  if (o.controlPort !== undefined) overrides.controlPort = o.controlPort;
  if (o.httpPort !== undefined) overrides.httpPort = o.httpPort;
  const started = await Gateway.start(cfg, log, overrides);
  if (!started.ok) throw new Error(`${started.error.component}: ${started.error.message}`);
  const gw = started.value;
  const broker = gw.embeddedBroker;
  const control = gw.controlAddress();
  const http = gw.httpAddress();
  say({ type: 'started', devices: [...gw.devices.keys()], control, mqtt: broker?.url ?? null, can: canAddress, http },
    `hsx-gateway demo: ${gw.devices.size} simulated devices on CAN bus ${canAddress}; control ${control?.host}:${control?.port}; MQTT ${broker?.url ?? 'off'}` +
      (http ? `; live page http://${http.host}:${http.port}/` : ''));

  // 1. A job on the daemon: the gateway's own master on the CAN link flashes every node its
  //    start-up scan found, in one broadcast. Submitted over the control port, followed to its end.
  const nodes = cfg.devices.map((d) => d.node_id).filter((n): n is number => n !== undefined);
  const jobLink = linkName(link);
  const scanned = gw.inventory?.targets(jobLink) ?? [];
  steps['can_scan'] = nodes.every((n) => scanned.includes(String(n)));
  say({ type: 'inventory', link: jobLink, when: 'start', targets: scanned },
    `\n== the gateway scanned its master link ${jobLink} at start: ${scanned.length ? `node${scanned.length === 1 ? '' : 's'} ${scanned.join(', ')} answered` : 'no node answered'} ==`);
  const imageName = relative(cfg.control.images_dir, DEMO_IMAGE);
  say({ type: 'step', step: 'can_job', link: jobLink, image: imageName, targets: scanned },
    `\n== a job on the gateway: ${imageName} to every node of ${jobLink} (one broadcast by the daemon's master) ==`);
  const seqBefore = gw.bus.lastSeq;
  const job = control ? await runDemoJob({ control, link: jobLink, image: imageName, say, json: o.json }) : null;
  steps['can_job'] = job !== null && job.targets.length > 0 && job.targets.every((t) => t.state === 'SUCCEEDED' || t.state === 'SKIPPED');
  // After every job the gateway scans the link again (what the targets run has changed): wait for
  // that scan, so the bus is quiet for the next steps and the inventory below is the new one.
  const inv = job ? await nextScan(gw, jobLink, seqBefore, 10_000) : null;
  const sha = job?.image.sha256 ?? null;
  steps['can_inventory'] = inv !== null && nodes.every((n) => inv.entries.some((e) => e.target === String(n) && e.sha256 === sha));
  if (inv) {
    say({ type: 'inventory', link: jobLink, when: 'after_job', targets: inv.entries.map((e) => e.target), entries: inv.entries, error: inv.error },
      `the gateway rescanned ${jobLink} after the job: ` +
        (inv.entries.map((e) => `node ${e.target} ${e.app_name ?? '(none)'}${e.version ? ` ${e.version}` : ''} ${e.sha256 ? e.sha256.slice(0, 12) : '-'}`).join(' · ') || 'no node answered') +
        (inv.error ? ` (scan failed: ${inv.error})` : ''));
  } else if (job) {
    say({ type: 'inventory', link: jobLink, when: 'after_job', error: 'no rescan within 10 s' }, `the gateway did not rescan ${jobLink} within 10 s of the job`);
  }

  // 2. A fifth device on a UART cable (a pty pair), where socat exists.
  let uart: { pair: PtyPair; dev: SimulatedDevice; stop: AbortController; done: Promise<number> } | null = null;
  if (haveSocat()) {
    const pair = await startPtyPair();
    const dev = await openSimulatedDevice({ name: 'uart1', stateDir: join(stateRoot, 'uart1'), events: gw.bus });
    const stop = new AbortController();
    const done = runUartDevice({
      // With --keep-state the device runs what its flash holds, as a real one would (the flash may then say CURRENT).
      port: pair.b, intake: dev.intake, restore: true, json: true, signal: stop.signal, out: () => {},
    });
    uart = { pair, dev, stop, done };
    say({ type: 'step', step: 'uart_flash', port: pair.a }, `\n== flashing the same image to device uart1 over a serial cable (${pair.a} ↔ ${pair.b}) ==`);
    steps['uart_flash'] = (await runUartFlash(DEMO_IMAGE, { uart: pair.a, json: o.json })) === 0;
  } else {
    say({ type: 'step', step: 'uart_flash', skipped: 'socat not installed' }, '\n(socat is not installed: the UART device is left out; apt-get install socat)');
  }

  // 3. Read a value over CAN, then write one that persists.
  const bus = await openCanBus(canAddress);
  const fmt = (raw: number) => `${decodeF16(raw)} °C`;
  const got = await requestValue({ bus, node: 1, oid: TEMPERATURE_OID, timeoutMs: 500 });
  steps['can_get'] = got.ok;
  say({ type: 'value', op: 'get', node: 1, ...got }, `\n== CAN GET node 1 temperature (1:2): ${got.ok ? fmt(got.raw) : got.status} ==`);
  const set = await requestValue({ bus, node: 1, oid: TEMPERATURE_OID, raw: NEW_TEMPERATURE_RAW, timeoutMs: 500 });
  steps['can_set'] = set.ok;
  say({ type: 'value', op: 'set', node: 1, ...set }, `== CAN SET node 1 temperature := ${fmt(NEW_TEMPERATURE_RAW)}: ${set.ok ? 'ok (persisted to FRAM)' : set.status} ==`);
  await gw.devices.get('node1')?.storage.valueStore.flush();

  // 4. Power-cycle node1: its files are closed and reopened; it boots from its own flash.
  say({ type: 'step', step: 'power_cycle', device: 'node1' }, '\n== power-cycling node1 (closing and reopening its flash and FRAM files) ==');
  const node1 = await gw.powerCycle('node1');
  const after = node1.engine.getValue(TEMPERATURE_OID);
  const tasks1 = node1.engine.ps();
  steps['image_survived'] = tasks1.some((t) => t.appNameBase === 'sensor_app');
  steps['value_survived'] = after.ok && after.value.raw === NEW_TEMPERATURE_RAW;
  say({ type: 'power_cycle', device: 'node1', tasks: tasks1.map((t) => t.appName), temperature_raw: after.ok ? after.value.raw : null },
    `node1 is back: ${tasks1.map((t) => t.appName).join(', ') || 'no tasks'}; temperature ${after.ok ? fmt(after.value.raw) : 'unreadable'}`);
  const reread = await requestValue({ bus, node: 1, oid: TEMPERATURE_OID, timeoutMs: 500 });
  steps['can_get_after_cycle'] = reread.ok && reread.raw === NEW_TEMPERATURE_RAW;
  await bus.close();

  // 5. Task tables and where to watch.
  const all = [...gw.devices.values(), ...(uart ? [uart.dev] : [])];
  say({ type: 'step', step: 'tables' }, '\n== task table of every device ==');
  say({ type: 'ps_header' }, ` ${'device'.padEnd(8)} ${'pid'.padStart(4)}  ${'app'.padEnd(16)} ${'state'.padEnd(7)} ${'source'.padEnd(26)} code  ro  bss  values cmds mbox`);
  for (const dev of all) {
    for (const t of dev.engine.ps()) {
      say({ type: 'ps', device: dev.name, pid: t.pid, app: t.appName, state: t.state, source: t.source, sizes: t.sizes, counts: t.counts },
        ` ${dev.name.padEnd(8)} ${String(t.pid).padStart(4)}  ${t.appName.padEnd(16)} ${t.state.padEnd(7)} ${t.source.slice(0, 26).padEnd(26)} ${String(t.sizes.code).padStart(4)} ${String(t.sizes.rodata).padStart(3)} ${String(t.sizes.bss).padStart(4)}  ${String(t.counts.values).padStart(6)} ${String(t.counts.commands).padStart(4)} ${String(t.counts.mailboxes).padStart(4)}`);
    }
  }
  const topicRoot = { prefix: cfg.mqtt?.topic_prefix ?? 'hsx', gatewayId: cfg.gateway.id };
  const topics = allTopics(topicRoot);
  if (broker) {
    say({ type: 'mqtt', url: broker.url, topics },
      `\nWatch the events: mosquitto_sub -h 127.0.0.1 -p ${broker.port} -V mqttv311 -t '${topics}' -v`);
    const jobTopics = [jobDocTopic(topicRoot, '#'), eventTopic(topicRoot, 'job.#'), deviceInventoryTopic(topicRoot, '+')];
    say({ type: 'mqtt_jobs', url: broker.url, topics: jobTopics },
      `Watch the jobs:   mosquitto_sub -h 127.0.0.1 -p ${broker.port} -V mqttv311 ${jobTopics.map((t) => `-t '${t}'`).join(' ')} -v`);
    const valueTopics = deviceValuesFilter(topicRoot, '+');
    say({ type: 'mqtt_values', url: broker.url, topics: valueTopics },
      `Watch the values: mosquitto_sub -h 127.0.0.1 -p ${broker.port} -V mqttv311 -t '${valueTopics}' -v`);
  }
  if (control) {
    const at = `${control.host}:${control.port}`;
    say({ type: 'control', ...control }, `Ask the gateway:  hsx-gateway ps --connect ${at}`);
    say({ type: 'control_jobs', ...control, link: jobLink, list: `hsx-gateway job list --connect ${at}`, submit: `hsx-gateway job submit --connect ${at} --link ${jobLink} configs/sd/apps/sensor-v2.hxe` },
      `Its jobs:         hsx-gateway job list --connect ${at}\n` +
        `A new job:        hsx-gateway job submit --connect ${at} --link ${jobLink} configs/sd/apps/sensor-v2.hxe`);
  }

  const ok = Object.values(steps).every(Boolean);
  say({ type: 'demo_summary', ok, steps }, `\n${ok ? 'demo complete: every step succeeded' : `demo finished with failures: ${Object.entries(steps).filter(([, v]) => !v).map(([k]) => k).join(', ')}`}`);

  if (!o.once) {
    say({ type: 'serving' }, 'serving until Ctrl-C …');
    await new Promise<void>((res) => {
      process.once('SIGINT', () => res());
      process.once('SIGTERM', () => res());
    });
  }
  if (uart) {
    uart.stop.abort();
    await uart.done;
    await uart.dev.close();
    await uart.pair.stop();
  }
  await gw.stop();
  return { ok, steps };
}

type Say = (obj: Record<string, unknown>, human: string) => void;

const JOB_TERMINAL = new Set(['SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELED', 'TIMED_OUT']);
const short = (sha: string | null): string => (sha ? sha.slice(0, 12) : '-');

/**
 * Submits `image` (a name in the gateway's images directory) to every node of `link` over the
 * control port, as any client would, and follows the job to its end: a `job.watch` stream on a
 * second connection, replaying from the event cursor read before the submit (so no event is
 * missed), with `job.status` asked whenever the stream goes quiet or ends. Prints one line per
 * target verdict (SKIPPED, already current, is a success) and a summary. Null when the gateway
 * refused or did not answer.
 */
async function runDemoJob(o: { control: { host: string; port: number }; link: string; image: string; say: Say; json: boolean; timeoutMs?: number }): Promise<JobRecord | null> {
  const { say, json } = o;
  const at = `${o.control.host}:${o.control.port}`;
  const fail = (message: string): null => {
    say({ type: 'job_error', error: message }, `job: ${message}`);
    return null;
  };
  const c = await ControlClient.connect(at);
  if (!c.ok) return fail(c.error.message);
  const client = c.value;
  const deadline = Date.now() + (o.timeoutMs ?? 60_000);
  try {
    const info = await client.request('info');
    const cursor = info.ok ? (info.value['info'] as Reply | undefined)?.['event_seq'] : undefined;
    const submitted = await client.request('job.submit', { link: o.link, image: o.image });
    if (!submitted.ok) return fail(`the gateway refused the job: ${submitted.error.error ?? submitted.error.message}${submitted.error.detail?.['message'] ? ` (${String(submitted.error.detail['message'])})` : ''}`);
    const job = submitted.value['job'] as JobRecord;
    say({ type: 'job_submitted', id: job.id, link: job.link, image: job.image, targets: job.targets.map((t) => t.target), control: at },
      `submitted ${job.id} over the control port (${at}): ${job.image.name}, ${job.image.size} bytes, sha256 ${short(job.image.sha256)}…, ` +
        `to node${job.targets.length === 1 ? '' : 's'} ${job.targets.map((t) => t.target).join(', ')} of ${job.link}`);
    const size = job.image.size;
    say({ type: 'job_header' }, ` ${'node'.padStart(4)}  ${'state'.padEnd(10)} ${'outcome'.padEnd(10)} ${'acknowledged'.padStart(19)}  image before → after`);

    const printed = new Set<string>();
    const shownPercent = new Map<string, number>();
    const showTarget = (id: string, t: JobTarget): void => {
      if (!JOB_TERMINAL.has(t.state) || printed.has(t.target)) return;
      printed.add(t.target);
      const what = t.error ? `${t.error.code}:${t.error.reason} at ${t.error.where}: ${t.error.message}`
        : t.outcome === 'current' ? `${short(t.to ?? t.from)} (already runs it: nothing sent)`
        : `${short(t.from)} → ${short(t.to)}`;
      say({ type: 'job_target', job_id: id, target: t.target, state: t.state, outcome: t.outcome, from: t.from, to: t.to, acked_bytes: t.acked_bytes, error: t.error },
        ` ${t.target.padStart(4)}  ${t.state.padEnd(10)} ${(t.outcome ?? '-').padEnd(10)} ${(t.outcome === 'current' ? '-' : `${t.acked_bytes}/${size} bytes`).padStart(19)}  ${what}`);
    };
    const showJob = (j: JobRecord): void => {
      for (const t of j.targets) showTarget(j.id, t);
    };

    let latest = job;
    const see = (j: JobRecord | undefined): boolean => {
      if (j && j.revision >= latest.revision) latest = j;
      showJob(latest);
      return JOB_TERMINAL.has(latest.state);
    };
    const status = async (): Promise<boolean> => {
      const r = await client.request('job.status', { id: job.id });
      return see(r.ok ? (r.value['job'] as JobRecord) : undefined);
    };

    const watch = await openWatch(o.control, { id: job.id, ...(typeof cursor === 'number' ? { since_seq: cursor } : {}) });
    try {
      let done = see(watch?.reply['job'] as JobRecord | undefined);
      while (!done && Date.now() < deadline) {
        if (!watch || watch.reader.closedWith !== null) {
          // no stream (or it ended): ask until the job ends
          done = await status();
          if (!done) await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        const next = await watch.reader.next(Math.min(2_000, Math.max(1, deadline - Date.now())));
        if ('timeout' in next || 'closed' in next) {
          done = await status();
          continue;
        }
        let ev: Reply;
        try {
          ev = JSON.parse(next.line) as Reply;
        } catch {
          continue;
        }
        const data = (ev['data'] ?? {}) as Reply;
        if (ev['type'] === 'job.progress') {
          const target = String(data['target']);
          const percent = typeof data['percent'] === 'number' ? data['percent'] : null;
          if (percent === null || shownPercent.get(target) === percent || printed.has(target)) continue;
          shownPercent.set(target, percent);
          const line = { type: 'job_progress', job_id: job.id, target, acked_bytes: data['acked_bytes'], total_bytes: data['total_bytes'], percent };
          // A person sees the bytes moving; the start (0%) and the end (the verdict line) say nothing new.
          if (json || (percent > 0 && percent < 100)) {
            say(line, ` ${target.padStart(4)}  ${'sending'.padEnd(10)} ${'-'.padEnd(10)} ${`${String(data['acked_bytes'])}/${String(data['total_bytes'])} bytes`.padStart(19)}  (${percent}%)`);
          }
        } else if (ev['type'] === 'job.target' && data['target']) {
          showTarget(job.id, data['target'] as JobTarget);
          see(data['job'] as JobRecord | undefined);
        } else if (ev['type'] === 'job.finished' || ev['type'] === 'job.canceled') {
          done = see(data['job'] as JobRecord | undefined);
        } else if (typeof ev['type'] === 'string' && ev['type'].startsWith('job.')) {
          see(data['job'] as JobRecord | undefined);
        } else if (ev['type'] === 'warning') {
          done = await status(); // an event may have been dropped
        }
      }
      if (!done) return fail(`${job.id} did not end within ${Math.round((o.timeoutMs ?? 60_000) / 1000)} s (hsx-gateway job status ${job.id} --connect ${at})`);
    } finally {
      watch?.close();
    }

    const final = latest;
    const counts = new Map<string, number>();
    for (const t of final.targets) counts.set(t.state, (counts.get(t.state) ?? 0) + 1);
    const ok = final.targets.length > 0 && final.targets.every((t) => t.state === 'SUCCEEDED' || t.state === 'SKIPPED');
    const secs = final.started_ts !== null && final.finished_ts !== null ? Math.max(0, final.finished_ts - final.started_ts) : null;
    const outcomes = new Map<string, number>();
    for (const t of final.targets) if (t.outcome) outcomes.set(t.outcome, (outcomes.get(t.outcome) ?? 0) + 1);
    const why = final.state === 'SKIPPED' ? ': every node already ran this image, nothing was sent'
      : outcomes.size ? ` (${[...outcomes].map(([k, n]) => `${n} ${k}`).join(', ')})` : '';
    say({ type: 'job_result', ok, id: final.id, state: final.state, link: final.link, reason: final.reason, elapsed_s: secs,
      targets: final.targets.map((t) => ({ target: t.target, state: t.state, outcome: t.outcome })) },
      `job ${final.id} ${final.state}${secs !== null ? ` in ${secs.toFixed(2)} s` : ''}: ` +
        `${[...counts].map(([k, n]) => `${n} ${k}`).join(' · ')}${why}${final.reason ? ` (${final.reason})` : ''} — ${ok ? 'ok' : 'failed'}`);
    return final;
  } finally {
    client.close();
  }
}

/** A `job.watch` stream on its own connection: the reply, then only events. Null when it cannot be opened. */
async function openWatch(control: { host: string; port: number }, fields: Record<string, unknown>): Promise<{ reader: LineReader; reply: Reply; close: () => void } | null> {
  const socket = connect(control.port, control.host);
  const opened = await new Promise<boolean>((res) => {
    socket.once('connect', () => res(true));
    socket.once('error', () => res(false));
  });
  if (!opened) {
    socket.destroy();
    return null;
  }
  const reader = new LineReader(socket);
  const close = (): void => void socket.destroy();
  socket.write(`${JSON.stringify({ version: 1, cmd: 'job.watch', ...fields })}\n`);
  const first = await reader.next(10_000);
  let reply: Reply | null = null;
  if ('line' in first) {
    try {
      reply = JSON.parse(first.line) as Reply;
    } catch {
      reply = null;
    }
  }
  if (!reply || reply['status'] !== 'ok') {
    close();
    return null;
  }
  return { reader, reply, close };
}

/** The first scan of `link` the gateway reports after event `sinceSeq` (the rescan a job's end starts), or null. */
async function nextScan(gw: Gateway, link: string, sinceSeq: number, timeoutMs: number): Promise<LinkInventory | null> {
  let found = (): void => {};
  const scanned = new Promise<void>((res) => (found = res));
  const sub = gw.bus.subscribe({
    categories: ['inventory'],
    sinceSeq,
    deliver: (ev) => {
      if (ev.type === 'inventory.scanned' && ev.data['link'] === link) found();
      return true;
    },
  });
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), timeoutMs)));
  try {
    const r = await Promise.race([scanned.then(() => 'scanned' as const), timedOut]);
    return r === 'scanned' ? (gw.inventory?.get(link) ?? null) : null;
  } finally {
    clearTimeout(timer);
    gw.bus.unsubscribe(sub.token);
  }
}
