/**
 * A UART device in this test process and the master's transport to it, shared by the UART update and
 * delta tests: an event log to wait on, `runUartDevice` as the CLI runs it, a master transport that
 * counts (and can cut) DATA frames, and small readers of what the device runs.
 */
import { EventEmitter } from 'node:events';
import type { EngineEvent, EventSink } from '../../src/engine/index.js';
import type { Transport, TransportStatus } from '../../src/link/transport.js';
import { runUartDevice } from '../../src/link/uart/device-command.js';
import { FrameType, type Frame } from '../../src/link/uart/frame.js';
import { UartPortTransport } from '../../src/link/uart/port-transport.js';
import type { SimulatedDevice } from '../../src/persist/simulated-device.js';
import { TEMP_OID } from '../update-images.js';

/** Collects the device's events and lets a test wait for one that comes after a mark. */
export class EventLog implements EventSink {
  readonly events: EngineEvent[] = [];
  private readonly bus = new EventEmitter();
  emit(e: EngineEvent): void {
    this.events.push(e);
    this.bus.emit('event', e);
  }
  mark(): number {
    return this.events.length;
  }
  /** The first event at or after `from` that matches (already logged or still to come). */
  waitFor(pred: (e: EngineEvent) => boolean, from: number, what: string, timeoutMs = 20_000): Promise<EngineEvent> {
    const seen = this.events.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.bus.off('event', on);
        reject(new Error(`no ${what} event; last: ${JSON.stringify(this.events.slice(-5).map((e) => e.type))}`));
      }, timeoutMs);
      const on = (e: EngineEvent): void => {
        if (!pred(e)) return;
        clearTimeout(timer);
        this.bus.off('event', on);
        resolve(e);
      };
      this.bus.on('event', on);
    });
  }
}

/** The store's event when an update's confirm window passed. */
export const confirmed = (e: EngineEvent): boolean => e.type === 'provisioning.persisted' && e.data['confirmed'] === true;

export interface DeviceLink {
  lines: Array<Record<string, unknown>>;
  /** Resolves with the device's exit code (1 once its port is lost). */
  done: Promise<number>;
  stop(): Promise<number>;
}

/** `runUartDevice` for this device on `port`, as the CLI runs it; resolves once it listens. */
export async function listen(dev: SimulatedDevice, port: string, state: string,
  opts: { restore?: boolean; maxProtocol?: number; onLine?: (l: Record<string, unknown>) => void } = {}): Promise<DeviceLink> {
  const lines: Array<Record<string, unknown>> = [];
  const controller = new AbortController();
  let listening!: () => void;
  const ready = new Promise<void>((resolve) => (listening = resolve));
  const done = runUartDevice({
    port, stateDir: state, json: true, intake: dev.intake, restore: opts.restore === true, signal: controller.signal,
    ...(opts.maxProtocol !== undefined ? { maxProtocol: opts.maxProtocol } : {}),
    out: (text) => {
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      opts.onLine?.(line);
      if (line['event'] === 'listening') listening();
    },
  });
  const early = await Promise.race([ready.then(() => null), done]);
  if (early !== null) throw new Error(`device did not start: ${JSON.stringify(lines)}`);
  return {
    lines, done,
    stop: async () => {
      controller.abort();
      return done;
    },
  };
}

/** The master's transport, counting the DATA frames it sends; `cutAt` swallows DATA from that chunk on (a dying cable). */
export class CountingTransport extends EventEmitter implements Transport<Frame, Frame> {
  readonly name = 'counting';
  dataFrames = 0;
  cutAt: number | null = null;
  constructor(readonly inner: UartPortTransport) {
    super();
    inner.on('status', (s: TransportStatus) => this.emit('status', s));
  }
  open(): Promise<void> { return this.inner.open(); }
  async send(f: Frame): Promise<void> {
    if (f.type === FrameType.DATA) {
      if (this.cutAt !== null && f.seq >= this.cutAt) return;
      this.dataFrames++;
    }
    await this.inner.send(f);
  }
  receive(h: (f: Frame) => void): () => void { return this.inner.receive(h); }
  close(): Promise<void> { return this.inner.close(); }
  status(): TransportStatus { return this.inner.status(); }
}

/** A counting master transport on `port`, opened. */
export async function masterOn(port: string): Promise<CountingTransport> {
  const inner = new UartPortTransport({ path: port });
  await inner.open();
  return new CountingTransport(inner);
}

/** The raw f16 of the sensor's temperature value. */
export const tempOf = (dev: SimulatedDevice): number => {
  const v = dev.engine.getValue(TEMP_OID);
  if (!v.ok) throw new Error(`temperature: ${v.error.message}`);
  return v.value.raw;
};

/** The SHA-256 of every image the device runs. */
export const runningSha = (dev: SimulatedDevice): string[] => dev.engine.ps().map((t) => t.sha256);
