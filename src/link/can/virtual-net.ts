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

export interface VirtualHub {
  readonly bus: VirtualBus;
  readonly port: number;
  close(): Promise<void>;
}

/** Listen on host:port (port 0 = any free one) and relay frames between all connections. */
export async function startVirtualHub(host: string, port: number, options: VirtualBusOptions = {}): Promise<VirtualHub> {
  const bus = new VirtualBus(options);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    const ep = bus.attach(`hub:${socket.remotePort}`);
    void ep.open();
    let corked = false;
    ep.receive((frame) => {
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
    socket.on('data', (chunk: Buffer) => {
      if (!reader.push(chunk, (f) => ep.post(f))) socket.destroy();
    });
    const done = (): void => {
      sockets.delete(socket);
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
    private readonly hubOptions: VirtualBusOptions = {},
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
        this.hosted = await startVirtualHub(this.host, this.port, this.hubOptions);
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
