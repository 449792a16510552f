/**
 * `hsx-gateway device --uart PORT [--state DIR] [--confirm-window-ms N]`: a simulated device
 * listening on a serial port. `runUartDevice` runs a listener for the device intake it is given
 * (tests, the gateway and the demo give it their device's); `deviceCommand` assembles the device
 * the CLI uses (system clock, an event sink that prints, and with a state directory the persisted
 * flash and FRAM of openSimulatedDevice, whose stored image runs again at start).
 */
import { join } from 'node:path';
import { DeviceIntake, ProvisioningEngine, systemClock, type EngineEvent, type EventSink } from '../../engine/index.js';
import { openSimulatedDevice, type SimulatedDevice } from '../../persist/simulated-device.js';
import { UartPortTransport, UartLinkError } from './port-transport.js';
import { UartListener, type ListenerEvent, type ListenerOptions } from './listener.js';
import { DirectoryPartialStore, MemoryPartialStore } from './partial-store.js';
import { DEFAULT_BAUD } from './settings.js';
import type { UartError } from './errors.js';
import type { BootAlert } from '../../persist/image-store.js';
import { restoreAtBoot } from '../device-boot.js';

export interface UartDeviceOptions {
  port: string;
  /** Highest UART protocol version the device speaks (default 3; 2 = a device from before compressed transfers). */
  maxProtocol?: number;
  baud?: number;
  /** Where partial transfers are kept across restarts (`<state>/uart-partial`). */
  stateDir?: string;
  json: boolean;
  /** Where received images go: the device's intake (it verifies, stages, switches and persists). */
  intake: DeviceIntake;
  /**
   * Before listening, run the image the device's flash holds again (`engine.restore()`, every
   * check repeated) and say so (`restored`). The CLI's device does; a gateway boots its devices itself.
   */
  restore?: boolean;
  /** Damaged state the device's stores found when opened, said before the restore (`boot_alert`). */
  alerts?: readonly BootAlert[];
  maxImageBytes?: number;
  /** Exit after the first transfer ends (0 READY, 1 otherwise). */
  once?: boolean;
  out?: (line: string) => void;
  /** Ends the device (exit code 0). */
  signal?: AbortSignal;
}

function describe(e: ListenerEvent): string {
  switch (e.type) {
    case 'open':
      return `receiving ${e.appName || '(unnamed)'}: ${e.totalBytes} bytes, ${e.chunkSize}-byte frames, window ${e.window}` +
        (e.resumeOffset > 0 ? `, resuming at byte ${e.resumeOffset}` : '');
    case 'current':
      return `CURRENT: already running ${e.appName}${e.version ? ` ${e.version}` : ''} pid ${e.pid} (sha256 ${e.sha256.slice(0, 16)}…): nothing to receive`;
    case 'ready':
      return e.outcome === 'updated' && e.from
        ? `UPDATED: ${e.from.appName}${e.from.appVersion ? ` ${e.from.appVersion}` : ''} (sha256 ${e.from.sha256.slice(0, 16)}…) → ${e.appName}${e.version ? ` ${e.version}` : ''} pid ${e.pid} (${e.totalBytes} bytes, sha256 ${e.sha256.slice(0, 16)}…${e.slot ? `, slot ${e.slot}` : ''}${e.confirmPending ? ', confirm pending' : ''})`
        : `READY: ${e.appName} pid ${e.pid} (${e.totalBytes} bytes, sha256 ${e.sha256.slice(0, 16)}…${e.slot ? `, slot ${e.slot}` : ''})`;
    case 'error':
      return `transfer failed: ${e.error.code} at ${e.error.where}: ${e.error.reason}${e.error.message ? ` (${e.error.message})` : ''}`;
    case 'aborted':
      return `transfer aborted: ${e.reason} (${e.heldBytes} bytes kept for a resume)`;
  }
}

/** Runs the listener until the port is lost (1), the signal fires (0) or, with `once`, a transfer ends. */
export async function runUartDevice(o: UartDeviceOptions): Promise<number> {
  const out = o.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  const say = (event: string, data: Record<string, unknown>, human: string): void =>
    out(o.json ? JSON.stringify({ event, ...data }) : human);
  const sayError = (e: UartError): void => say('error', { error: e }, `device: ${e.message}`);

  const transport = new UartPortTransport({ path: o.port, baudRate: o.baud ?? DEFAULT_BAUD });
  try {
    await transport.open();
  } catch (e) {
    sayError(e instanceof UartLinkError ? e.info : { code: 'EIO', where: 'open', reason: 'open_failed', remote: false, message: String(e) });
    return 1;
  }
  if (o.restore) {
    for (const l of restoreAtBoot(o.intake.engine, o.alerts ?? [])) {
      if (l.kind === 'alert') say('boot_alert', { ...l.alert }, l.text);
      else if (l.kind === 'restored') say('restored', { pid: l.pid, appName: l.appName, version: l.version, sha256: l.sha256 }, l.text);
      else say('restore_failed', { error: l.error }, `device: ${l.text}`);
    }
  }
  const partials = o.stateDir ? new DirectoryPartialStore(join(o.stateDir, 'uart-partial')) : new MemoryPartialStore();
  const listenerOptions: ListenerOptions = { source: `uart:${o.port}`, partials };
  if (o.maxImageBytes !== undefined) listenerOptions.maxImageBytes = o.maxImageBytes;
  if (o.maxProtocol !== undefined) listenerOptions.versions = [1, 2, 3].filter((v) => v <= o.maxProtocol!);
  const listener = new UartListener(transport, o.intake, listenerOptions);

  return new Promise<number>((resolve) => {
    let done = false;
    const stop = async (code: number, reason: string): Promise<void> => {
      if (done) return;
      done = true;
      await listener.stop(reason);
      await transport.close();
      resolve(code);
    };
    listener.on('event', (e: ListenerEvent) => {
      const { type, ...data } = e;
      say(type, data, describe(e));
      if (o.once && (type === 'ready' || type === 'current' || type === 'error')) {
        // Let the verdict frame reach the master before the port closes.
        void transport.flush().then(() => stop(type === 'error' ? 1 : 0, 'once'));
      }
    });
    transport.on('lost', (e: UartError) => {
      sayError(e);
      void stop(1, 'port_lost');
    });
    if (o.signal) {
      if (o.signal.aborted) return void stop(0, 'stopped');
      o.signal.addEventListener('abort', () => void stop(0, 'stopped'), { once: true });
    }
    listener.start();
    say('listening', { port: o.port, stateDir: o.stateDir ?? null }, `device listening on ${o.port}`);
  });
}

/** Prints engine events (progress left out: the master shows progress). */
function printingSink(json: boolean, out: (line: string) => void): EventSink {
  let seq = 0;
  return {
    emit(e: EngineEvent): void {
      seq++;
      if (e.type === 'provisioning.progress') return;
      out(json ? JSON.stringify({ event: 'engine', seq, ts: systemClock.now() / 1000, ...e }) : `engine: ${e.type}${e.pid !== null ? ` pid ${e.pid}` : ''}`);
    },
  };
}

/** The CLI's device: engine + persisted stores of the state directory + intake + listener. */
export async function deviceCommand(o: { port: string; baud?: number; stateDir?: string; json: boolean; confirmWindowMs?: number; maxProtocol?: number }): Promise<number> {
  const out = (line: string): void => void process.stdout.write(`${line}\n`);
  const events = printingSink(o.json, out);
  const confirmWindowMs = o.confirmWindowMs ?? 10_000;
  let device: SimulatedDevice | null = null;
  if (o.stateDir) {
    try {
      device = await openSimulatedDevice({ name: 'uart', stateDir: o.stateDir, events, confirmWindowMs });
    } catch (e) {
      const message = `device: cannot open the state directory ${o.stateDir}: ${(e as Error).message}`;
      out(o.json ? JSON.stringify({ ok: false, event: 'error', error: { code: (e as { code?: string }).code ?? 'EIO', where: 'persist', reason: (e as { reason?: string }).reason ?? 'open_failed', message } }) : message);
      return 1;
    }
  }
  // Without a state directory: a device without flash (nothing persists, nothing to restore).
  const intake = device?.intake ?? new DeviceIntake({ engine: new ProvisioningEngine({ clock: systemClock, events }), clock: systemClock, events, confirmWindowMs });
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const options: UartDeviceOptions = { port: o.port, json: o.json, intake, restore: device !== null, alerts: device?.storage.alerts ?? [], signal: controller.signal, out };
  if (o.baud !== undefined) options.baud = o.baud;
  if (o.stateDir !== undefined) options.stateDir = o.stateDir;
  if (o.maxProtocol !== undefined) options.maxProtocol = o.maxProtocol;
  try {
    return await runUartDevice(options);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (device) await device.close();
    else intake.dispose();
  }
}
