/**
 * The in-process virtual CAN bus: every attached endpoint sees every frame another endpoint sends
 * (never its own, as with SocketCAN). Without a bit rate it delivers in batches on the next
 * event-loop turn; with one, it models the wire: one frame at a time, the lowest identifier among
 * the senders' queue heads wins arbitration, and each frame holds the bus for the time its bits
 * (with stuffing) take at the nominal and FD data rates — so throughput figures mean something.
 */
import { CanBusBase } from './bus.js';
import { frameBits, type CanFrame } from './frame.js';

export interface VirtualBusOptions {
  /** Nominal bit rate in bit/s; 0 or absent = no timing model (deliver as fast as possible). */
  bitrate?: number;
  /** CAN FD data-phase bit rate (BRS); defaults to 4 × the nominal rate. */
  dataBitrate?: number;
  /** Whether endpoints may send FD frames (default true). */
  fd?: boolean;
}

/** Everything that went over the wire, for efficiency figures. */
export interface VirtualBusStats {
  frames: number;
  payloadBytes: number;
  nominalBits: number;
  dataBits: number;
  /** Microseconds of bus occupancy (timing model only). */
  busMicros: number;
}

interface Pending {
  from: VirtualEndpoint;
  frame: CanFrame;
}

const nowMicros = (): number => performance.now() * 1000;

export class VirtualBus {
  readonly stats: VirtualBusStats = { frames: 0, payloadBytes: 0, nominalBits: 0, dataBits: 0, busMicros: 0 };
  private readonly endpoints = new Set<VirtualEndpoint>();
  private readonly bitrate: number;
  private readonly dataBitrate: number;
  readonly fd: boolean;
  // untimed mode
  private batch: Pending[] = [];
  private flushScheduled = false;
  // timed mode: per-sender FIFO queues
  private readonly queues = new Map<VirtualEndpoint, CanFrame[]>();
  /** The frame on the wire (timed mode) and when its last bit is sent, in µs. */
  private current: { from: VirtualEndpoint; frame: CanFrame; end: number } | null = null;
  private pumpTimer: NodeJS.Timeout | null = null;
  private pumping = false;

  constructor(options: VirtualBusOptions = {}) {
    this.bitrate = options.bitrate ?? 0;
    this.dataBitrate = options.dataBitrate ?? this.bitrate * 4;
    this.fd = options.fd ?? true;
  }

  get timed(): boolean {
    return this.bitrate > 0;
  }

  attach(name = `virtual#${this.endpoints.size}`): VirtualEndpoint {
    return new VirtualEndpoint(this, name, this.fd);
  }

  /** @internal */
  join(ep: VirtualEndpoint): void {
    this.endpoints.add(ep);
  }

  /** @internal */
  leave(ep: VirtualEndpoint): void {
    this.endpoints.delete(ep);
    this.queues.delete(ep);
    ep.queued = 0;
  }

  /** Drops every frame `ep` posted that has not gone out yet (a hub cutting off a flooder). */
  purge(ep: VirtualEndpoint): void {
    this.batch = this.batch.filter((p) => p.from !== ep);
    this.queues.delete(ep);
    ep.queued = 0;
  }

  resetStats(): void {
    Object.assign(this.stats, { frames: 0, payloadBytes: 0, nominalBits: 0, dataBits: 0, busMicros: 0 });
  }

  /** @internal */
  enqueue(from: VirtualEndpoint, frame: CanFrame): void {
    // The sender may reuse its buffer once post() returns: keep our own copy.
    const copy: CanFrame = { id: frame.id, data: frame.data.slice() };
    if (frame.fd) copy.fd = true;
    if (frame.ext) copy.ext = true;
    from.queued++;
    if (!this.timed) {
      this.account(copy, 0);
      this.batch.push({ from, frame: copy });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
      return;
    }
    let q = this.queues.get(from);
    if (!q) this.queues.set(from, (q = []));
    q.push(copy);
    // An idle bus starts sending at once; otherwise the frame contends when the current one ends.
    if (!this.current && !this.pumping) this.startNext(nowMicros());
  }

  private account(frame: CanFrame, micros: number): void {
    this.stats.frames++;
    this.stats.payloadBytes += frame.data.length;
    this.stats.busMicros += micros;
  }

  private flush(): void {
    this.flushScheduled = false;
    // Only what was queued before this turn: frames sent by receivers go out on the next turn,
    // so a chatty pair of endpoints cannot starve the event loop.
    const batch = this.batch;
    this.batch = [];
    for (const p of batch) p.from.queued = 0;
    for (const { from, frame } of batch) this.broadcast(from, frame);
  }

  private broadcast(from: VirtualEndpoint, frame: CanFrame): void {
    for (const ep of this.endpoints) if (ep !== from) ep.arrive(frame);
  }

  /** Arbitration: the lowest identifier among the senders' queue heads takes the bus at time `t`. */
  private startNext(t: number): void {
    let winner: VirtualEndpoint | null = null;
    let frame: CanFrame | undefined;
    for (const [ep, q] of this.queues) {
      const head = q[0];
      if (head && (!frame || head.id < frame.id)) {
        winner = ep;
        frame = head;
      }
    }
    if (!winner || !frame) return;
    this.queues.get(winner)!.shift();
    winner.queued = Math.max(0, winner.queued - 1);
    const bits = frameBits(frame);
    const micros = (bits.nominal * 1e6) / this.bitrate + (bits.data * 1e6) / (frame.fd ? this.dataBitrate : this.bitrate);
    this.current = { from: winner, frame, end: t + micros };
    this.account(frame, micros);
    this.stats.nominalBits += bits.nominal;
    this.stats.dataBits += bits.data;
    this.schedulePump();
  }

  private schedulePump(): void {
    if (this.pumpTimer || !this.current) return;
    const delay = (this.current.end - nowMicros()) / 1000;
    this.pumpTimer = setTimeout(() => {
      this.pumpTimer = null;
      this.pump();
    }, Math.max(0, delay));
  }

  /** Deliver every frame whose last bit is due by now (timers fire late; the wire's clock does not). */
  private pump(): void {
    const now = nowMicros();
    this.pumping = true; // frames sent by receivers contend at the end of this one, not "now"
    try {
      while (this.current && this.current.end <= now) {
        const { from, frame, end } = this.current;
        this.current = null;
        this.broadcast(from, frame);
        this.startNext(end);
      }
    } finally {
      this.pumping = false;
    }
    if (!this.current) this.startNext(now);
    this.schedulePump();
  }
}

export class VirtualEndpoint extends CanBusBase {
  /**
   * Frames this endpoint posted that the bus has not put on the wire yet (timed: its queue;
   * untimed: this turn's batch). A sender far ahead of the bus is flooding it (the loopback hub
   * cuts such a connection off).
   */
  queued = 0;

  constructor(
    private readonly bus: VirtualBus,
    name: string,
    fd: boolean,
  ) {
    super(name, fd);
  }

  async open(): Promise<void> {
    this.bus.join(this);
    this.setState('open');
  }

  async close(): Promise<void> {
    this.bus.leave(this);
    this.setState('closed');
  }

  protected transmit(frame: CanFrame): boolean {
    this.bus.enqueue(this, frame);
    return true;
  }

  /** @internal */
  arrive(frame: CanFrame): void {
    if (this.state === 'open') this.deliver(frame);
  }
}

/** Named in-process buses, so `virtual:NAME` addresses the same bus from anywhere in a process. */
const named = new Map<string, VirtualBus>();

export function namedVirtualBus(name: string, options?: VirtualBusOptions): VirtualBus {
  let bus = named.get(name);
  if (!bus) named.set(name, (bus = new VirtualBus(options)));
  return bus;
}
