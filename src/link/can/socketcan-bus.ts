/**
 * The SocketCAN backend (`can0` on a USB adapter, `vcan0` in CI) through the `socketcan` package,
 * loaded lazily so hosts without it (or without CAN in the kernel) can still use the virtual bus.
 * Sends are non-blocking: when the kernel refuses a frame (`send` returns -1: TX queue full) it is
 * kept in an ordered backlog and retried with back-off, so a slow adapter never blocks the event
 * loop and frames never overtake each other.
 */
import { createRequire } from 'node:module';
import { CanBusBase, type CanFilter } from './bus.js';
import type { CanFrame } from './frame.js';
import type { SocketcanModule, SocketcanRawChannel } from './socketcan-types.js';

/** CAN_ERR_MASK: deliver every error class as an error frame. */
const CAN_ERR_MASK = 0x1fff_ffff;
const MAX_BACKLOG = 4096;

let loaded: SocketcanModule | null = null;

export function loadSocketcan(): SocketcanModule {
  if (!loaded) loaded = createRequire(import.meta.url)('socketcan') as SocketcanModule;
  return loaded;
}

export class SocketCanBus extends CanBusBase {
  private channel: SocketcanRawChannel | null = null;
  private backlog: CanFrame[] = [];
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelay = 1;

  constructor(
    readonly iface: string,
    fd: boolean,
  ) {
    super(iface, fd);
  }

  async open(): Promise<void> {
    let channel: SocketcanRawChannel;
    try {
      channel = loadSocketcan().createRawChannelWithOptions(this.iface, { non_block_send: true });
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      this.setState('error', why);
      throw new Error(
        `cannot open SocketCAN interface "${this.iface}": ${why} (is the interface up, and does the kernel have CAN? ` +
          'use virtual:NAME or virtual:HOST:PORT on hosts without CAN)',
      );
    }
    channel.addListener('onMessage', (msg) => {
      if (msg.err) {
        this.errorFrame({ errorClass: msg.id, data: new Uint8Array(msg.data), message: `error frame class 0x${msg.id.toString(16)}` });
        return;
      }
      if (msg.rtr) return;
      const frame: CanFrame = { id: msg.id, data: msg.data };
      if (msg.data.length > 8) frame.fd = true;
      if (msg.ext) frame.ext = true;
      this.deliver(frame);
    });
    channel.addListener('onStopped', () => {
      if (this.state === 'open') this.setState('error', 'channel stopped (interface down?)');
    });
    channel.setErrorFilters(CAN_ERR_MASK);
    channel.start();
    this.channel = channel;
    this.setState('open');
  }

  async close(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    // Frames still in the backlog (a master's FINISH after a burst) go out before the socket closes
    // (bounded: a bus that takes nothing for 200 ms loses them).
    const deadline = Date.now() + 200;
    while (this.backlog.length > 0) {
      while (this.backlog.length > 0 && this.write(this.backlog[0]!)) this.backlog.shift();
      if (this.backlog.length === 0 || Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    this.backlog = [];
    const ch = this.channel;
    this.channel = null;
    this.setState('closed');
    try {
      ch?.stop();
    } catch {
      // the channel had stopped by itself (interface gone): its "Channel not started" is no news
    }
  }

  override setFilters(filters: CanFilter[]): void {
    super.setFilters(filters);
    // Filtering in the kernel saves the receive buffer for frames we want.
    this.channel?.setRxFilters(filters.length === 0 ? [{ id: 0, mask: 0 }] : filters.map((f) => ({ id: f.id, mask: f.mask })));
  }

  protected transmit(frame: CanFrame): boolean {
    if (this.backlog.length > 0) return this.queue(frame);
    return this.write(frame) || this.queue(frame);
  }

  private write(frame: CanFrame): boolean {
    const ch = this.channel;
    if (!ch) return false;
    const data = Buffer.from(frame.data.buffer, frame.data.byteOffset, frame.data.byteLength);
    const n = frame.fd ? ch.sendFD({ id: frame.id, data, ext: !!frame.ext, fd_brs: true }) : ch.send({ id: frame.id, data, ext: !!frame.ext });
    return n >= 0;
  }

  private queue(frame: CanFrame): boolean {
    if (this.backlog.length >= MAX_BACKLOG) return false;
    this.counters['backlogged'] = (this.counters['backlogged'] ?? 0) + 1;
    this.backlog.push({ ...frame, data: frame.data.slice() });
    this.scheduleRetry();
    return true;
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      while (this.backlog.length > 0 && this.write(this.backlog[0]!)) this.backlog.shift();
      if (this.backlog.length > 0) {
        this.retryDelay = Math.min(this.retryDelay * 2, 50);
        this.scheduleRetry();
      } else this.retryDelay = 1;
    }, this.retryDelay);
  }
}
