/**
 * A device in its own process for the UART link tests: an engine (config from --config, so a
 * test can admit a 1 MiB image), the UART listener on --port, partials in --state. After READY it
 * prints the SHA-256 of the image the engine holds for the task (so the test can check it is
 * byte-identical to what was sent) and, with --unload, unloads it so the next image with the same
 * names can load. Prints JSON lines (runUartDevice's events).
 */
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ProvisioningEngine, systemClock, nullEventSink, type TaskInfo } from '../src/engine/index.js';
import { ok } from '../src/hxe/result.js';
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
const out = (line: string): void => void process.stdout.write(`${line}\n`);
const controller = new AbortController();
process.once('SIGTERM', () => controller.abort());

const code = await runUartDevice({
  port: values.port!,
  json: true,
  engine,
  out,
  signal: controller.signal,
  ...(values.state ? { stateDir: values.state } : {}),
  afterReady: async (task: TaskInfo) => {
    const image = engine.taskImage(task.pid);
    out(JSON.stringify({ event: 'stored', pid: task.pid, appName: task.appName, bytes: image?.length ?? 0,
      sha256: image ? createHash('sha256').update(image).digest('hex') : null }));
    if (values.unload) engine.unload(task.pid);
    return ok(undefined);
  },
});
process.exit(code);
