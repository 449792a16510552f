/**
 * The cross-process virtual bus: a hub on loopback TCP holds a `VirtualBus` (with its timing model)
 * and attaches one endpoint per connection, so several gateway and device processes share one bus.
 * `NetVirtualBus` is the client side; when nobody is listening at the address it hosts the hub
 * itself, and when the hosting process goes away the others re-host and reconnect (frames lost in
 * between are what the provisioning protocol recovers from anyway).
 *
 * Stream format, one record per frame: flags u8 (bit0 FD, bit1 extended id), id u32 BE, length u8,
 * then the payload.
 */
import net from 'node:net';
import { isLoopbackHost } from '../loopback.js';
import { CanBusBase } from './bus.js';
import type { CanFrame } from './frame.js';
import { VirtualBus, type VirtualBusOptions } from './virtual-bus.js';

export function encodeRecord(frame: CanFrame): Buffer {
  const out = Buffer.allocUnsafe(6 + frame.data.length);
  out[0] = (frame.fd ? 1 : 0) | (frame.ext ? 2 : 0);
  out.writeUInt32BE(frame.id >>> 0, 1);
  out[5] = frame.data.length;
  out.set(frame.data, 6);
  return out;
}

/** Splits a TCP byte stream into frames; a malformed record closes the connection. */
export class RecordReader {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer, onFrame: (f: CanFrame) => void): boolean {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    let off = 0;
    const buf = this.pending;
    while (buf.length - off >= 6) {
      const flags = buf[off]!;
      const len = buf[off + 5]!;
      if (len > 64 || flags > 3) return false;
      if (buf.length - off < 6 + len) break;
      const frame: CanFrame = { id: buf.readUInt32BE(off + 1), data: new Uint8Array(buf.subarray(off + 6, off + 6 + len)) };
      if (flags & 1) frame.fd = true;
      if (flags & 2) frame.ext = true;
      off += 6 + len;
      onFrame(frame);
    }
    this.pending = buf.subarray(off);
    return true;
  }
}

/** Why the hub cut a connection off. */
export type HubCutOffReason = 'flood' | 'malformed' | 'slow_reader';

export interface HubLimits {
  /**
   * Frames one connection may have waiting for the bus (default 4096). A provisioning master keeps
   * at most a few hundred unacknowledged frames in flight; a connection this far ahead of the bus
   * is flooding it and is cut off.
   */
  maxQueuedFrames?: number;
  /** Bytes one connection may send per second, sustained (default 32 MiB/s), … */
  maxBytesPerSecond?: number;
  /** … and in one burst (default 8 MiB). More is a flood: the connection is cut off. */
  burstBytes?: number;
  /** Bytes waiting to be written to one connection (default 4 MiB); a member that does not read is cut off. */
  maxOutputBytes?: number;
}

/** The defaults of `HubLimits` (docs/can_protocol.md; `[links.can.hub]` in the gateway config). */
export const DEFAULT_HUB_LIMITS: Readonly<Required<HubLimits>> = Object.freeze({
  maxQueuedFrames: 4096,
  maxBytesPerSecond: 32 * 1024 * 1024,
  burstBytes: 8 * 1024 * 1024,
  maxOutputBytes: 4 * 1024 * 1024,
});

export interface HubOptions extends VirtualBusOptions, HubLimits {
  /** Listen on a non-loopback address (the hub has no authentication; default false). */
  allowRemote?: boolean;
  /**
   * Where a `NetVirtualBus` that has to host the hub listens (default: the HOST members connect to).
   * A wildcard (`0.0.0.0`, `::`) or any other non-loopback address needs `allowRemote`.
   */
  bindHost?: string;
  /** Told about each connection the hub cuts off (it is also counted in `stats`). */
  onCutOff?: (event: HubCutOffEvent) => void;
}

export interface HubCutOffEvent {
  peer: string;
  reason: HubCutOffReason;
  detail: string;
  bytesIn: number;
  framesIn: number;
}

export interface VirtualHubStats {
  /** Connections open now, and accepted since the start. */
  connections: number;
  accepted: number;
  framesIn: number;
  bytesIn: number;
  /** Connections cut off, in all and by reason. */
  cutOff: number;
  cutOffBy: Record<HubCutOffReason, number>;
}

export interface VirtualHub {
  readonly bus: VirtualBus;
  readonly port: number;
  /** Where it listens and the limits in force. */
  readonly host: string;
  readonly limits: Readonly<Required<HubLimits>>;
  readonly stats: VirtualHubStats;
  close(): Promise<void>;
}

/** 127.0.0.0/8, ::1 and `localhost`: the only hosts a hub listens on unless told otherwise. */
export { isLoopbackHost };

/**
 * Listen on host:port (port 0 = any free one) and relay frames between all connections. A test
 * bus without authentication: loopback only unless `allowRemote`. Each connection is bounded:
 * a malformed record, more than `maxQueuedFrames` waiting for the bus, more bytes than the rate
 * allows, or more than `maxOutputBytes` it does not read cuts it off (counted in `stats`), so one
 * member cannot stall the others or the hosting process.
 */
export async function startVirtualHub(host: string, port: number, options: HubOptions = {}): Promise<VirtualHub> {
  if (!options.allowRemote && !isLoopbackHost(host)) {
    throw new Error(`virtual CAN hub: ${host} is not a loopback address; the hub has no authentication, so it listens on loopback only unless remote access is asked for explicitly (?remote=1)`);
  }
  const maxQueuedFrames = options.maxQueuedFrames ?? DEFAULT_HUB_LIMITS.maxQueuedFrames;
  const rate = options.maxBytesPerSecond ?? DEFAULT_HUB_LIMITS.maxBytesPerSecond;
  const burst = options.burstBytes ?? DEFAULT_HUB_LIMITS.burstBytes;
  const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_HUB_LIMITS.maxOutputBytes;
  const bus = new VirtualBus(options);
  const stats: VirtualHubStats = { connections: 0, accepted: 0, framesIn: 0, bytesIn: 0, cutOff: 0, cutOffBy: { flood: 0, malformed: 0, slow_reader: 0 } };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    stats.accepted++;
    stats.connections++;
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    const ep = bus.attach(`hub:${socket.remotePort}`);
    void ep.open();
    let cut = false;
    let bytesIn = 0;
    let framesIn = 0;
    let tokens = burst;
    let last = performance.now();
    const cutOff = (reason: HubCutOffReason, detail: string): void => {
      if (cut) return;
      cut = true;
      stats.cutOff++;
      stats.cutOffBy[reason]++;
      bus.purge(ep);
      void ep.close();
      socket.destroy();
      try {
        options.onCutOff?.({ peer, reason, detail, bytesIn, framesIn });
      } catch {
        // a observer's bug is not the hub's
      }
    };
    let corked = false;
    ep.receive((frame) => {
      if (cut) return;
      if (socket.writableLength > maxOutputBytes) {
        cutOff('slow_reader', `${socket.writableLength} bytes unread (limit ${maxOutputBytes})`);
        return;
      }
      if (!corked) {
        corked = true;
        socket.cork();
        process.nextTick(() => {
          corked = false;
          socket.uncork();
        });
      }
      socket.write(encodeRecord(frame));
    });
    const reader = new RecordReader();
    const onFrame = (f: CanFrame): void => {
      if (cut) return;
      framesIn++;
      stats.framesIn++;
      if (ep.queued >= maxQueuedFrames) {
        cutOff('flood', `${ep.queued} frames waiting for the bus (limit ${maxQueuedFrames})`);
        return;
      }
      ep.post(f);
    };
    socket.on('data', (chunk: Buffer) => {
      if (cut) return;
      bytesIn += chunk.length;
      stats.bytesIn += chunk.length;
      const now = performance.now();
      tokens = Math.min(burst, tokens + ((now - last) * rate) / 1000) - chunk.length;
      last = now;
      if (tokens < 0) {
        cutOff('flood', `more than ${burst} bytes at once or ${rate} bytes/s sustained`);
        return;
      }
      if (!reader.push(chunk, onFrame)) cutOff('malformed', 'malformed record');
    });
    const done = (): void => {
      sockets.delete(socket);
      stats.connections--;
      void ep.close();
    };
    socket.on('close', done);
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as net.AddressInfo;
  return {
    bus,
    port: addr.port,
    host,
    limits: Object.freeze({ maxQueuedFrames, maxBytesPerSecond: rate, burstBytes: burst, maxOutputBytes }),
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export class NetVirtualBus extends CanBusBase {
  private socket: net.Socket | null = null;
  private hosted: VirtualHub | null = null;
  private corked = false;
  private closing = false;
  private reconnectDelay = 50;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly hubOptions: HubOptions = {},
    fd = true,
  ) {
    super(`virtual:${host}:${port}`, fd);
  }

  /** The hub this process hosts, if it had to start one. */
  get hostedHub(): VirtualHub | null {
    return this.hosted;
  }

  async open(): Promise<void> {
    this.closing = false;
    await this.connectOrHost();
    this.setState('open');
  }

  async close(): Promise<void> {
    this.closing = true;
    const s = this.socket;
    this.socket = null;
    if (s && !s.destroyed) {
      // Frames posted just before close (a master's FINISH) may still sit in the corked buffer:
      // send them and close our side; the hub closes its side, then we are done (bounded wait).
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          s.destroy();
          resolve();
        }, 1000);
        s.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        s.uncork();
        s.end();
      });
    }
    if (this.hosted) {
      // Our hub relays what it received last before it goes (bus flush, then the sockets' uncork).
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      await this.hosted.close();
    }
    this.hosted = null;
    this.setState('closed');
  }

  protected transmit(frame: CanFrame): boolean {
    const s = this.socket;
    if (!s || s.destroyed) return false;
    if (!this.corked) {
      this.corked = true;
      s.cork();
      process.nextTick(() => {
        this.corked = false;
        s.uncork();
      });
    }
    s.write(encodeRecord(frame));
    return true;
  }

  private async connectOrHost(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        this.attach(await this.connect());
        return;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ECONNREFUSED' || attempt >= 5) throw new Error(`${this.name}: ${(e as Error).message}`);
      }
      try {
        this.hosted = await startVirtualHub(this.hubOptions.bindHost ?? this.host, this.port, {
          ...this.hubOptions,
          onCutOff: (e) => {
            this.hubOptions.onCutOff?.(e);
            this.emit('hub-cutoff', e);
          },
        });
      } catch (e) {
        // Another process won the race to host: connect to it on the next attempt.
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
      }
    }
  }

  private connect(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.connect(this.port, this.host);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
  }

  private attach(socket: net.Socket): void {
    socket.setNoDelay(true);
    this.socket = socket;
    this.reconnectDelay = 50;
    const reader = new RecordReader();
    socket.on('data', (chunk: Buffer) => {
      if (!reader.push(chunk, (f) => this.deliver(f))) socket.destroy();
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      if (this.closing || this.socket !== socket) return;
      this.socket = null;
      this.setState('error', 'hub connection lost; reconnecting');
      this.reconnect();
    });
  }

  private reconnect(): void {
    setTimeout(() => {
      if (this.closing) return;
      this.connectOrHost().then(
        () => this.setState('open'),
        () => {
          this.reconnectDelay = Math.min(this.reconnectDelay * 2, 1000);
          this.reconnect();
        },
      );
    }, this.reconnectDelay);
  }
}
