/**
 * A device in its own process for the UART link tests: an engine (config from --config, so a
 * test can admit a 1 MiB image) behind a device intake without flash, the UART listener on --port,
 * partials in --state. After READY it prints the SHA-256 of the image the engine holds for the task
 * (so the test can check it is byte-identical to what was sent) and, with --unload, unloads it so
 * the next image with the same names can load. Prints JSON lines (runUartDevice's events).
 */
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { DeviceIntake, ProvisioningEngine, systemClock, nullEventSink } from '../src/engine/index.js';
import { runUartDevice } from '../src/link/uart/device-command.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    state: { type: 'string' },
    config: { type: 'string' },
    unload: { type: 'boolean', default: false },
  },
});
const engine = new ProvisioningEngine({ clock: systemClock, events: nullEventSink, ...(values.config ? { config: JSON.parse(values.config) } : {}) });
const intake = new DeviceIntake({ engine, clock: systemClock, events: nullEventSink });
const print = (line: string): void => void process.stdout.write(`${line}\n`);
const controller = new AbortController();
process.once('SIGTERM', () => controller.abort());

// Every line the device prints, and after a verdict the SHA-256 of the image the engine holds for the task.
const out = (line: string): void => {
  print(line);
  const e = JSON.parse(line) as { event?: string; pid?: number };
  if (e.event !== 'ready' || e.pid === undefined) return;
  const task = engine.task(e.pid);
  const image = engine.taskImage(e.pid);
  print(JSON.stringify({ event: 'stored', pid: e.pid, appName: task?.appName ?? null, bytes: image?.length ?? 0,
    sha256: image ? createHash('sha256').update(image).digest('hex') : null }));
  if (values.unload) engine.unload(e.pid);
};

const code = await runUartDevice({
  port: values.port!,
  json: true,
  intake,
  out,
  signal: controller.signal,
  ...(values.state ? { stateDir: values.state } : {}),
});
intake.dispose();
process.exit(code);
