/**
 * The one bus factory of the CAN suite (test/link-can-*.test.ts). The environment picks the bus:
 *   HSX_CAN_IFACE unset   → the virtual bus (an in-process hub on loopback TCP, so child processes
 *                           can join it as `virtual:127.0.0.1:PORT`)
 *   HSX_CAN_IFACE=vcan0   → SocketCAN on that interface (each endpoint its own socket; child
 *                           processes open it by name); HSX_CAN_IFACE2 names a second interface.
 * Faults (loss, duplication, reordering) are injected at the receiving endpoint, identically on both.
 * On SocketCAN every test shares the wire, so the suite runs serially there (see `CAN_SERIAL`).
 */
import { cliArgv, ROOT } from './cli-argv.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { CanBus } from '../../src/link/can/bus.js';
import { FaultyBus, hasFaults, type FaultOptions } from '../../src/link/can/faults.js';
import { SocketCanBus } from '../../src/link/can/socketcan-bus.js';
import { startVirtualHub, type VirtualHub } from '../../src/link/can/virtual-net.js';

export const CAN_IFACE = process.env['HSX_CAN_IFACE'] || undefined;
export const CAN_IFACE2 = process.env['HSX_CAN_IFACE2'] || undefined;

/** Tests share one wire on SocketCAN: run them one at a time there (`CAN_SERIAL ? test.serial : test`). */
export const CAN_SERIAL = CAN_IFACE !== undefined;

export interface TestBus {
  readonly kind: 'virtual' | 'socketcan';
  readonly describe: string;
  /** A new endpoint on the bus (opened); closed by `close()`. */
  endpoint(options?: { faults?: FaultOptions; fd?: boolean }): Promise<CanBus>;
  /** The `--can` address a child process uses, with faults as query options. */
  processAddress(faults?: FaultOptions): string;
  /** Frames that crossed the virtual bus (null on SocketCAN, where the kernel does not count for us). */
  framesOnWire(): number | null;
  close(): Promise<void>;
}

function query(f: FaultOptions | undefined): string {
  if (!hasFaults(f)) return '';
  const parts = Object.entries(f!).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`);
  return `?${parts.join('&')}`;
}

export async function openTestBus(options: { iface?: string } = {}): Promise<TestBus> {
  const iface = options.iface ?? CAN_IFACE;
  const opened: CanBus[] = [];
  const wrap = async (bus: CanBus, faults?: FaultOptions): Promise<CanBus> => {
    const b = hasFaults(faults) ? new FaultyBus(bus, faults!) : bus;
    await b.open();
    opened.push(b);
    return b;
  };
  if (iface) {
    return {
      kind: 'socketcan',
      describe: `SocketCAN ${iface}`,
      endpoint: (o = {}) => wrap(new SocketCanBus(iface, o.fd ?? true), o.faults),
      processAddress: (faults) => `${iface}${query(faults)}`,
      framesOnWire: () => null,
      close: async () => {
        for (const b of opened.splice(0)) await b.close();
      },
    };
  }
  const hub: VirtualHub = await startVirtualHub('127.0.0.1', 0);
  return {
    kind: 'virtual',
    describe: `virtual bus (hub 127.0.0.1:${hub.port})`,
    endpoint: (o = {}) => wrap(hub.bus.attach(), o.faults),
    processAddress: (faults) => `virtual:127.0.0.1:${hub.port}${query(faults)}`,
    framesOnWire: () => hub.bus.stats.frames,
    close: async () => {
      for (const b of opened.splice(0)) await b.close();
      await hub.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Child processes running the real CLI (devices and masters of the cross-process tests)

export interface CliChild {
  child: ChildProcess;
  /** JSON lines printed so far. */
  lines: Array<Record<string, unknown>>;
  /** Resolves with the first line matching, or rejects when the process exits first. */
  waitFor(pred: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  exited: Promise<number>;
  stderr(): string;
}

export function spawnCli(args: string[]): CliChild {
  const child = spawn(process.execPath, [...cliArgv(), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void; reject: (e: Error) => void }> = [];
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      line = { text };
    }
    lines.push(line);
    for (const w of waiters.splice(0)) {
      if (w.pred(line)) w.resolve(line);
      else waiters.push(w);
    }
  });
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
  void exited.then(() => {
    for (const w of waiters.splice(0)) w.reject(new Error(`process exited before the expected line; stderr: ${err}`));
  });
  return {
    child, lines, exited,
    stderr: () => err,
    waitFor: (pred) => {
      const found = lines.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => waiters.push({ pred, resolve, reject }));
    },
  };
}
