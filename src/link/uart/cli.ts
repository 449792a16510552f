/**
 * The UART branches of `flash` and `device`: option checking (a bad number is a usage error,
 * exit 2) and dispatch. The shared command shells in src/cli/commands only call these.
 */
import { uartFlashCommand } from './flash-command.js';
import { deviceCommand } from './device-command.js';
import { LISTENER_MAX_CHUNK, LISTENER_MAX_WINDOW, MIN_CHUNK } from './settings.js';

type Checked = { ok: true; value: number | undefined } | { ok: false; message: string };

function intOption(name: string, raw: unknown, min: number, max: number): Checked {
  if (raw === undefined) return { ok: true, value: undefined };
  const n = Number(raw);
  if (typeof raw !== 'string' || !/^\d+$/.test(raw) || n < min || n > max) {
    return { ok: false, message: `${name} must be an integer from ${min} to ${max}, got ${String(raw)}` };
  }
  return { ok: true, value: n };
}

function usage(command: string, message: string, json = false): number {
  if (json) process.stdout.write(`${JSON.stringify({ ok: false, error: { code: 'EUSAGE', reason: 'bad_usage', message: `${command}: ${message}` } })}\n`);
  else process.stderr.write(`${command}: ${message}\n`);
  return 2;
}

export async function runUartFlash(image: string, o: {
  uart: string; baud?: unknown; chunk?: unknown; window?: unknown; force?: boolean; json: boolean;
  cache?: string; bases?: string[]; compress?: boolean; delta?: boolean;
}): Promise<number> {
  const baud = intOption('--baud', o.baud, 50, 20_000_000);
  const chunk = intOption('--chunk', o.chunk, MIN_CHUNK, LISTENER_MAX_CHUNK);
  const window = intOption('--window', o.window, 1, LISTENER_MAX_WINDOW);
  for (const c of [baud, chunk, window]) if (!c.ok) return usage('flash', c.message, o.json);
  return uartFlashCommand({
    port: o.uart, image, json: o.json, force: o.force === true, compress: o.compress !== false, delta: o.delta !== false,
    ...(o.cache !== undefined ? { cache: o.cache } : {}),
    ...(o.bases !== undefined ? { bases: o.bases } : {}),
    ...(baud.ok && baud.value !== undefined ? { baud: baud.value } : {}),
    ...(chunk.ok && chunk.value !== undefined ? { chunk: chunk.value } : {}),
    ...(window.ok && window.value !== undefined ? { window: window.value } : {}),
  });
}

export async function runUartDeviceCommand(o: { uart: string; baud?: unknown; state?: string; confirmWindowMs?: unknown; json: boolean; protocol?: unknown }): Promise<number> {
  const baud = intOption('--baud', o.baud, 50, 20_000_000);
  if (!baud.ok) return usage('device', baud.message, o.json);
  const confirm = intOption('--confirm-window-ms', o.confirmWindowMs, 0, 86_400_000);
  if (!confirm.ok) return usage('device', confirm.message, o.json);
  const protocol = intOption('--protocol', o.protocol, 1, 3);
  if (!protocol.ok) return usage('device', protocol.message, o.json);
  return deviceCommand({
    port: o.uart, json: o.json,
    ...(baud.value !== undefined ? { baud: baud.value } : {}),
    ...(confirm.value !== undefined ? { confirmWindowMs: confirm.value } : {}),
    ...(protocol.value !== undefined ? { maxProtocol: protocol.value } : {}),
    ...(o.state !== undefined ? { stateDir: o.state } : {}),
  });
}
