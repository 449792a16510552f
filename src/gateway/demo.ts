/**
 * `hsx-gateway demo`: the whole product in one process, needing nothing but a fresh clone.
 * An embedded MQTT broker, four simulated devices on a virtual CAN bus (1 Mbit/s timing model),
 * a fifth on a UART pty pair where socat exists; the sample image is flashed to all of them,
 * a value is read and written over CAN, one device is power-cycled (its files closed and
 * reopened) to show the image and the persisted value survive, and the task tables and the MQTT
 * topics to watch are printed. Then it keeps serving until Ctrl-C (`--once` exits instead).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeF16 } from '../hxe/index.js';
import { runCanFlash } from '../link/can/cli.js';
import { openCanBus } from '../link/can/address.js';
import { requestValue } from '../link/can/value-client.js';
import { runUartFlash } from '../link/uart/cli.js';
import { runUartDevice } from '../link/uart/device-command.js';
import { haveSocat, startPtyPair, type PtyPair } from '../link/uart/pty-pair.js';
import { loadConfig, type GatewayConfig } from './config.js';
import { Gateway } from './gateway.js';
import { createLogger } from './logger.js';
import { allTopics } from './mqtt/topics.js';
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
}

export interface DemoOutcome {
  ok: boolean;
  steps: Record<string, boolean>;
}

export async function runDemo(o: DemoOptions): Promise<DemoOutcome> {
  const say = (obj: Record<string, unknown>, human: string) => process.stdout.write((o.json ? JSON.stringify(obj) : human) + '\n');
  const steps: Record<string, boolean> = {};
  const loaded = loadConfig(DEMO_CONFIG);
  if (!loaded.ok) throw new Error(loaded.error.message);
  const cfg: GatewayConfig = loaded.value;
  const stateRoot = resolve(o.stateDir ?? join(ROOT, '.demo-state'));
  if (!o.keepState) rmSync(stateRoot, { recursive: true, force: true });
  mkdirSync(stateRoot, { recursive: true });
  for (const d of cfg.devices) d.state_dir = join(stateRoot, d.name);
  if (cfg.mqtt && o.mqttPort !== undefined) cfg.mqtt.embedded_port = o.mqttPort;
  const link = cfg.links.can[0]!;
  const canAddress = `virtual:${link.interface}?bitrate=${link.bitrate}`;

  const log = createLogger(cfg.gateway.log_level);
  const overrides: { controlPort?: number } = {};
  if (o.controlPort !== undefined) overrides.controlPort = o.controlPort;
  const started = await Gateway.start(cfg, log, overrides);
  if (!started.ok) throw new Error(`${started.error.component}: ${started.error.message}`);
  const gw = started.value;
  const broker = gw.embeddedBroker;
  const control = gw.controlAddress();
  say({ type: 'started', devices: [...gw.devices.keys()], control, mqtt: broker?.url ?? null, can: canAddress },
    `hsx-gateway demo: ${gw.devices.size} simulated devices on CAN bus ${canAddress}; control ${control?.host}:${control?.port}; MQTT ${broker?.url ?? 'off'}`);

  // 1. One broadcast flashes all four CAN nodes.
  const nodes = cfg.devices.map((d) => d.node_id).filter((n): n is number => n !== undefined);
  say({ type: 'step', step: 'can_flash', nodes }, `\n== flashing ${DEMO_IMAGE.split('/').pop()} to nodes ${nodes.join(', ')} over CAN (one broadcast) ==`);
  steps['can_flash'] = (await runCanFlash(DEMO_IMAGE, { can: canAddress, nodes: `${Math.min(...nodes)}-${Math.max(...nodes)}`, json: o.json })) === 0;

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
  const topics = allTopics({ prefix: cfg.mqtt?.topic_prefix ?? 'hsx', gatewayId: cfg.gateway.id });
  if (broker) {
    say({ type: 'mqtt', url: broker.url, topics },
      `\nWatch the events: mosquitto_sub -h 127.0.0.1 -p ${broker.port} -V mqttv311 -t '${topics}' -v`);
  }
  if (control) say({ type: 'control', ...control }, `Ask the gateway:  hsx-gateway ps --connect ${control.host}:${control.port}`);

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
