/**
 * Test support for the control server tests: a real server on an ephemeral port in front of a
 * real engine and event bus, a captured pino log, and a line-oriented TCP client.
 */
import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { FakeClock, InMemoryImageStore, InMemoryValueStore, ProvisioningEngine, systemClock } from '../src/engine/index.js';
import type { Clock } from '../src/engine/ports.js';
import { EventBus, type EventBusConfig } from '../src/gateway/events/index.js';
import { ControlServer, type ControlServerOptions } from '../src/gateway/control/server.js';
import { LineReader } from '../src/gateway/control/line-reader.js';

export const fixture = (name: string): Uint8Array => new Uint8Array(readFileSync(new URL(`./fixtures/${name}`, import.meta.url)));
export const fixturePath = (name: string): string => new URL(`./fixtures/${name}`, import.meta.url).pathname;
/** The harness's default images directory: requests name fixtures by their bare file name. */
export const fixturesDir = new URL('./fixtures/', import.meta.url).pathname;

export interface Harness {
  server: ControlServer;
  port: number;
  bus: EventBus;
  engine: ProvisioningEngine;
  clock: Clock;
  logs: Record<string, unknown>[];
  /** The same lines as written (to check what a parsed object hides, e.g. a repeated key). */
  rawLogs: string[];
  client(): Promise<LineClient>;
  close(): Promise<void>;
}

export function makeEngine(clock: Clock, bus: EventBus): ProvisioningEngine {
  return new ProvisioningEngine({ clock, events: bus, imageStore: new InMemoryImageStore(), valueStore: new InMemoryValueStore() });
}

export async function startHarness(
  opts: Partial<ControlServerOptions> & { busConfig?: Partial<EventBusConfig>; fakeClock?: boolean } = {},
): Promise<Harness> {
  const clock: Clock = opts.fakeClock ? new FakeClock(Date.now()) : systemClock;
  const logs: Record<string, unknown>[] = [];
  const rawLogs: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => { rawLogs.push(s); logs.push(JSON.parse(s) as Record<string, unknown>); } });
  const bus = opts.bus ?? new EventBus({ clock, ...(opts.busConfig ? { config: opts.busConfig } : {}) });
  const engine = makeEngine(clock, bus);
  const created = ControlServer.create({
    engine,
    env: {},
    port: 0,
    // as the gateway gives them (gateway.ts); a test's own logger gets both
    logger: (opts.logger ?? logger).child({ component: 'control' }), auditLogger: (opts.logger ?? logger).child({ component: 'audit' }),
    clock,
    imagesDir: fixturesDir,
    ...Object.fromEntries(Object.entries(opts).filter(([k]) => k !== 'logger')),
    bus,
  });
  if (!created.ok) throw new Error(created.error.message);
  const server = created.value;
  const listened = await server.listen();
  if (!listened.ok) throw new Error(listened.error.message);
  const port = listened.value.port;
  const clients: LineClient[] = [];
  return {
    server,
    port,
    bus,
    engine,
    clock,
    logs, rawLogs,
    async client() {
      const c = await LineClient.connect(port);
      clients.push(c);
      return c;
    },
    async close() {
      for (const c of clients) c.destroy();
      await server.close();
      bus.close();
    },
  };
}

/** A raw JSON-lines client (it can send any bytes) reading through the client's LineReader. */
export class LineClient {
  private readonly reader: LineReader;

  private constructor(readonly socket: Socket) {
    this.reader = new LineReader(socket);
  }

  /** The server ended or closed the connection. */
  get ended(): boolean {
    return this.reader.closedWith !== null;
  }

  /** `localAddress`: connect from another loopback address (127.0.0.2: another address for the per-address limits). */
  static connect(port: number, localAddress?: string): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) }, () => resolve(new LineClient(s)));
      s.once('error', reject);
    });
  }

  /** The next unread line (waits up to `ms`); null at EOF or timeout. */
  async next(ms = 5000): Promise<string | null> {
    const next = await this.reader.next(ms);
    return 'line' in next ? next.line : null;
  }

  async nextJson(ms = 5000): Promise<Record<string, unknown>> {
    const line = await this.next(ms);
    if (line === null) throw new Error('no line (EOF or timeout)');
    return JSON.parse(line) as Record<string, unknown>;
  }

  sendRaw(text: string | Buffer): void {
    this.socket.write(text);
  }

  async request(obj: Record<string, unknown>, ms = 5000): Promise<Record<string, unknown>> {
    this.socket.write(`${JSON.stringify({ version: 1, ...obj })}\n`);
    return this.nextJson(ms);
  }

  /** Waits until the server closes the connection. */
  async waitEnd(ms = 5000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.ended;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
