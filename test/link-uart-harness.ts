/**
 * Shared set-up for the UART link tests (test/link-uart-*.test.ts): test images, child processes
 * (a device and a master, each a small script run with tsx), a fault-injecting relay between two
 * pty pairs, and an in-process rig (master and listener transports on one pty pair).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { SerialPort } from 'serialport';
import { buildImage } from '../src/hxe/index.js';
import { DeviceIntake, ProvisioningEngine, InMemoryImageStore, CollectingEventSink, systemClock, type EngineConfigInput } from '../src/engine/index.js';
import { UartPortTransport } from '../src/link/uart/port-transport.js';
import { UartListener, type ListenerEvent, type ListenerOptions } from '../src/link/uart/listener.js';
import { MemoryPartialStore } from '../src/link/uart/partial-store.js';
import { startPtyPair, type PtyPair } from './support/pty.js';

const fixtureDir = new URL('./fixtures/', import.meta.url);
export const fixtureNames: string[] = readdirSync(fixtureDir).filter((f) => f.endsWith('.hxe')).sort();
export const fixturePath = (name: string): string => new URL(name, fixtureDir).pathname;
export const fixture = (name: string): Uint8Array => new Uint8Array(readFileSync(new URL(name, fixtureDir)));
export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** A valid HXE v2 image of exactly `totalBytes` (code and rodata of deterministic filler). */
export function makeImage(totalBytes: number, appName: string, seed = 1): Uint8Array {
  const body = totalBytes - 96;
  const codeLen = Math.floor(body / 2 / 4) * 4;
  const code = new Uint8Array(codeLen);
  const rodata = new Uint8Array(body - codeLen);
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x & 0xff;
  };
  for (let i = 0; i < code.length; i++) code[i] = next();
  for (let i = 0; i < rodata.length; i++) rodata[i] = next();
  const big = { maxCode: 0x7fffffff, maxRodata: 0x7fffffff, maxBss: 0x7fffffff };
  const r = buildImage({ code, rodata, appName, allowMultipleInstances: true, limits: big });
  if (!r.ok) throw new Error(`buildImage: ${r.error.field}: ${r.error.message}`);
  if (r.value.length !== totalBytes) throw new Error(`built ${r.value.length} bytes, wanted ${totalBytes}`);
  return r.value;
}

/** Engine budgets that admit images up to `bytes` (the VM's defaults stop at 64 KiB of code). */
/**
 * Waits until `done()` holds, checking every 10 ms, for at most `limitMs` (then returns false):
 * for effects that follow a frame still queued behind a window of DATA on a loaded machine.
 */
export async function until(done: () => boolean, limitMs = 5000): Promise<boolean> {
  const deadline = Date.now() + limitMs;
  while (!done()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return true;
}

export function roomFor(bytes: number): EngineConfigInput {
  return { maxImageBytes: Math.max(bytes, 1 << 20), imageLimits: { code: bytes, rodata: bytes, bss: 0x10000, stack: 0x10000 } };
}

// ---- child processes ------------------------------------------------------------------------

export interface Child {
  proc: ChildProcess;
  lines: Array<Record<string, unknown>>;
  /** Resolves with the first JSON line (already seen or future) that matches. */
  waitFor(pred: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
  stderr(): string;
}

/** Runs a TypeScript script in its own Node process (tsx), reading its stdout as JSON lines. */
export function runScript(script: string, args: string[]): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', new URL(script, import.meta.url).pathname, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: new URL('..', import.meta.url).pathname,
  });
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => { if (err.length < 20000) err += d.toString(); });
  createInterface({ input: proc.stdout! }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      line = { event: 'text', text };
    }
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.pred(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return {
    proc,
    lines,
    exited,
    stderr: () => err,
    waitFor(pred, timeoutMs = 30000) {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve: (l: Record<string, unknown>) => { clearTimeout(timer); resolve(l); } };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`timed out waiting for a line from ${script}; got ${JSON.stringify(lines.slice(-5))}\n${err}`));
        }, timeoutMs);
        waiters.push(w);
        void exited.then(() => setTimeout(() => {
          if (waiters.includes(w)) {
            clearTimeout(timer);
            waiters.splice(waiters.indexOf(w), 1);
            reject(new Error(`${script} exited before the line came; got ${JSON.stringify(lines.slice(-5))}\n${err}`));
          }
        }, 50));
      });
    },
  };
}

/** Starts the device child on `port` and waits until its port is open. */
export async function startDevice(port: string, opts: { state?: string; config?: EngineConfigInput; unload?: boolean } = {}): Promise<Child> {
  const args = ['--port', port];
  if (opts.state) args.push('--state', opts.state);
  if (opts.config) args.push('--config', JSON.stringify(opts.config));
  if (opts.unload) args.push('--unload');
  const child = runScript('./link-uart-device-child.ts', args);
  await child.waitFor((l) => l['event'] === 'listening');
  return child;
}

export async function stopChild(child: Child): Promise<void> {
  if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGTERM');
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), 3000);
  await child.exited;
  clearTimeout(timer);
}

// ---- in-process rig -------------------------------------------------------------------------

export interface Rig {
  pair: PtyPair;
  master: UartPortTransport;
  device: UartPortTransport;
  engine: ProvisioningEngine;
  /** The device's intake the listener feeds (over `engine`, with an in-memory flash). */
  intake: DeviceIntake;
  sink: CollectingEventSink;
  listener: UartListener;
  events: ListenerEvent[];
  close(): Promise<void>;
}

/** A listener on `pair.b` (opened first: opening flushes the port) and a master port on `pair.a`. */
export async function rig(opts: { config?: EngineConfigInput; listener?: Partial<ListenerOptions>; pair?: PtyPair; masterPath?: string } = {}): Promise<Rig> {
  const pair = opts.pair ?? (await startPtyPair());
  const device = new UartPortTransport({ path: pair.b });
  await device.open();
  const master = new UartPortTransport({ path: opts.masterPath ?? pair.a });
  await master.open();
  const sink = new CollectingEventSink();
  const engine = new ProvisioningEngine({ clock: systemClock, events: sink, imageStore: new InMemoryImageStore(), ...(opts.config ? { config: opts.config } : {}) });
  const intake = new DeviceIntake({ engine, clock: systemClock, events: sink, confirmWindowMs: 200 });
  const listener = new UartListener(device, intake, { source: `uart:${pair.b}`, partials: new MemoryPartialStore(), ...opts.listener });
  const events: ListenerEvent[] = [];
  listener.on('event', (e: ListenerEvent) => events.push(e));
  listener.start();
  return {
    pair, master, device, engine, intake, sink, listener, events,
    async close() {
      await listener.stop('test over');
      intake.dispose();
      await master.close();
      await device.close();
      await pair.stop();
    },
  };
}

// ---- noise relay ----------------------------------------------------------------------------

export type FaultKind = 'flip' | 'drop' | 'duplicate' | 'garbage';

/** xorshift32: a seeded generator so a failing noise run can be replayed. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
}

async function openRaw(path: string): Promise<SerialPort> {
  const port = new SerialPort({ path, baudRate: 921600, autoOpen: false });
  await new Promise<void>((resolve, reject) => port.open((e) => (e ? reject(e) : resolve())));
  return port;
}

/**
 * Forwards bytes between two ports (both directions), damaging each byte with probability `rate`:
 * a flipped bit, a dropped byte, a duplicated byte or an inserted garbage byte, equally likely.
 */
export class NoiseRelay {
  rate = 0;
  readonly faults: Record<FaultKind, number> = { flip: 0, drop: 0, duplicate: 0, garbage: 0 };
  bytes = 0;
  private ports: SerialPort[] = [];

  constructor(private readonly random: () => number) {}

  async start(left: string, right: string): Promise<void> {
    const a = await openRaw(left);
    const b = await openRaw(right);
    this.ports = [a, b];
    a.on('data', (d: Buffer) => b.write(this.damage(d)));
    b.on('data', (d: Buffer) => a.write(this.damage(d)));
  }

  private damage(input: Buffer): Buffer {
    this.bytes += input.length;
    if (this.rate === 0) return input;
    const out: number[] = [];
    for (const byte of input) {
      if (this.random() >= this.rate) {
        out.push(byte);
        continue;
      }
      const kinds: FaultKind[] = ['flip', 'drop', 'duplicate', 'garbage'];
      const kind = kinds[Math.floor(this.random() * 4)]!;
      this.faults[kind]++;
      if (kind === 'flip') out.push(byte ^ (1 << Math.floor(this.random() * 8)));
      else if (kind === 'duplicate') out.push(byte, byte);
      else if (kind === 'garbage') out.push(byte, Math.floor(this.random() * 256));
      // drop: nothing
    }
    return Buffer.from(out);
  }

  async stop(): Promise<void> {
    await Promise.all(this.ports.map((p) => new Promise<void>((r) => (p.isOpen ? p.close(() => r()) : r()))));
  }
}
