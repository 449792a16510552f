/**
 * `[[links.uart]]` listeners in the gateway: a device fed through a real pty pair by the `flash`
 * CLI in another process, and a port that does not exist refused at start-up naming the link.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../src/gateway/config.js';
import { Gateway } from '../src/gateway/gateway.js';
import { createLogger } from '../src/gateway/logger.js';
import { haveSocat, startPtyPair } from './support/pty.js';

const silent = () => createLogger('silent', { pretty: false });

function config(dir: string, port: string) {
  const cfg = validateConfig({
    gateway: { id: 'uartgw', log_level: 'silent' },
    control: { listen: '127.0.0.1:0' },
    links: { uart: [{ port, baud: 921600, role: 'listener', device: 'u1' }] },
    devices: [{ name: 'u1', state_dir: join(dir, 'u1'), flash: { size: 262144 }, fram: { size: 16384 } }],
  });
  if (!cfg.ok) throw new Error(cfg.error.message);
  return cfg.value;
}

test('a UART listener link: the flash CLI in another process reaches READY and the image is persisted', async (t) => {
  t.timeout(120_000);
  t.true(haveSocat(), 'socat is needed (apt-get install socat; .ci/run installs it)');
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  const dir = mkdtempSync(join(tmpdir(), 'hsx-gwuart-'));
  const started = await Gateway.start(config(dir, pair.b), silent(), { controlPort: 0 });
  if (!started.ok) return t.fail(started.error.message);
  const gw = started.value;
  t.teardown(() => gw.stop());
  // Asynchronously: the gateway's listener runs in this very process and must keep serving.
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'flash', '--uart', pair.a, '--json', 'configs/sd/apps/sensor.hxe'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.is(code, 0, output);
  const dev = gw.devices.get('u1')!;
  t.is(dev.engine.ps()[0]?.appName, 'sensor_app');
  t.true(dev.engine.ps()[0]!.source.startsWith('uart:'));
  t.is(dev.storage.imageStore.active()?.meta.appName, 'sensor_app', 'persisted before READY was reported');
});

test('a UART listener on a port that does not exist: start-up fails naming the link and the port', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-gwuart-'));
  const started = await Gateway.start(config(dir, join(dir, 'no-such-tty')), silent(), { controlPort: 0 });
  t.false(started.ok);
  if (started.ok) return;
  t.regex(started.error.component, /^links\.uart\./);
  t.regex(started.error.message, /UART listener for u1 on .*no-such-tty/);
});
