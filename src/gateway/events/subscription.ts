/**
 * One subscriber's view of the bus: its filters, its bounded queue, ACK window and
 * back-pressure state. The bus pushes every matching event in with `offer`, which never blocks:
 * a full queue drops its oldest droppable event (and says so with a `warning`), a subscriber that
 * falls too far behind is told `slow_consumer`, and past the hard limit `slow_consumer_drop`,
 * after which it is unsubscribed. Delivery is a synchronous callback that reports whether the
 * consumer can take more; `resume()` restarts delivery when it can.
 */
import { Fifo } from './queue.js';
import { isDroppable, type BusEvent, type EventBusConfig, type SlowReason } from './types.js';

export type CloseReason = 'unsubscribed' | 'slow_consumer_drop' | 'bus_closed';

export interface SubscribeOptions {
  /** Only events of these pids (warnings for this subscriber always pass). */
  pids?: Iterable<number> | null;
  /** Only these event types, or categories: "provisioning" matches "provisioning.*". */
  categories?: Iterable<string> | null;
  /** Replay retained events with seq > sinceSeq before live ones. */
  sinceSeq?: number | null;
  /** Queue depth (droppable events); defaults to the bus's `queueDepth`. */
  maxEvents?: number;
  /** ACK mode: at most this many delivered-but-unacknowledged events. */
  ackWindow?: number | null;
  /** Defaults to a fresh UUID. */
  token?: string;
  /** Do not deliver until `start()` (lets the server send its reply before replayed events). */
  deferStart?: boolean;
  /** Hands one event to the consumer; false when it can take no more until `resume()`. */
  deliver: (ev: BusEvent) => boolean;
  onClose?: (reason: CloseReason) => void;
}

/** The reference executive's metrics shape (events_scenario.json), plus our ACK fields. */
export interface SubscriptionMetrics {
  token: string;
  pending: number;
  high_water: number;
  drop_count: number;
  slow_count: number;
  last_ack: number;
  delivered_seq: number;
  max_events: number;
  active: boolean;
  slow_warning_active: boolean;
  queued: number;
  unacked: number;
  ack_window: number | null;
}

/** What a subscription needs from its bus. */
export interface SubscriptionHost {
  readonly config: EventBusConfig;
  now(): number;
  /** A fresh envelope with the next global seq, not kept in history (subscriber-specific). */
  makeWarning(data: Record<string, unknown>): BusEvent;
  detach(sub: Subscription): void;
  onSlow?(sub: Subscription, reason: SlowReason, pending: number): void;
  onDrop?(sub: Subscription, droppedSeq: number): void;
}

export class Subscription {
  readonly token: string;
  readonly maxEvents: number;
  readonly ackWindow: number | null;
  readonly sinceSeq: number | null;
  private readonly pids: ReadonlySet<number> | null;
  private readonly types: ReadonlySet<string> | null;
  private readonly prefixes: readonly string[];
  /**
   * The queue is kept as two FIFOs, droppable and essential events, each in seq order, plus a slot
   * for the one pending drop warning; delivery merges them by seq, so the subscriber sees one
   * stream in order. Dropping the oldest droppable event is then a shift, and superseding the
   * drop warning a replacement: the work per event never depends on how far behind it is.
   */
  private readonly droppable = new Fifo<BusEvent>();
  private readonly essential = new Fifo<BusEvent>();
  /** Seqs delivered and not yet acknowledged (ACK mode only), oldest first. */
  private readonly unacked = new Fifo<number>();
  private readonly createdAt: number;
  private started: boolean;
  private consumerFull = false;
  private delivering = false;
  private pendingDropWarning: BusEvent | null = null;

  active = true;
  lastAck: number;
  deliveredSeq: number;
  dropCount = 0;
  slowCount = 0;
  highWater = 0;
  slowWarningActive = false;
  private droppedSinceProgress = 0;
  private lastWarningAt = -Infinity;

  constructor(
    private readonly host: SubscriptionHost,
    private readonly opts: SubscribeOptions,
    token: string,
    cursor: number,
  ) {
    const cfg = host.config;
    this.token = token;
    this.maxEvents = Math.max(2, Math.min(opts.maxEvents ?? cfg.queueDepth, cfg.queueDepthMax));
    this.ackWindow = opts.ackWindow && opts.ackWindow > 0 ? Math.floor(opts.ackWindow) : null;
    this.sinceSeq = opts.sinceSeq ?? null;
    this.pids = opts.pids ? new Set(opts.pids) : null;
    const cats = opts.categories ? [...opts.categories] : null;
    this.types = cats ? new Set(cats) : null;
    this.prefixes = cats ? cats.filter((c) => !c.includes('.')).map((c) => `${c}.`) : [];
    this.lastAck = this.sinceSeq ?? cursor;
    this.deliveredSeq = this.lastAck;
    this.createdAt = host.now();
    this.started = !opts.deferStart;
  }

  get warnThreshold(): number {
    const c = this.host.config;
    return Math.max(this.maxEvents * c.warnFactor, c.warnFloor);
  }

  get dropThreshold(): number {
    const c = this.host.config;
    return Math.max(this.maxEvents * c.dropFactor, c.dropFloor);
  }

  /** Events held and not yet delivered. */
  private get queueLength(): number {
    return this.droppable.length + this.essential.length + (this.pendingDropWarning ? 1 : 0);
  }

  /** How far behind the subscriber is: held for it, plus dropped since it last took one. */
  get pending(): number {
    return this.queueLength + this.unacked.length + this.droppedSinceProgress;
  }

  matches(ev: BusEvent): boolean {
    if (this.pids && (ev.pid === null || !this.pids.has(ev.pid))) return false;
    if (this.types && !this.types.has(ev.type) && !this.prefixes.some((p) => ev.type.startsWith(p))) return false;
    return true;
  }

  /** Called by the bus for every event; never blocks. `replay` skips back-pressure verdicts. */
  offer(ev: BusEvent, replay = false): void {
    if (!this.active || !this.matches(ev)) return;
    // When nothing queued is droppable the queue grows past its depth; the hard limit in
    // applyBackpressure bounds it, because essential events are never dropped silently.
    const dropped = this.queueLength >= this.maxEvents ? this.droppable.shift() : undefined;
    (isDroppable(ev.type) ? this.droppable : this.essential).push(ev);
    if (dropped) this.noteDrop(dropped.seq);
    this.trackHighWater();
    this.flush();
    if (!replay) this.applyBackpressure();
  }

  /** Starts delivery of a `deferStart` subscription. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.flush();
  }

  /** The consumer can take events again (e.g. its socket drained). */
  resume(): void {
    this.consumerFull = false;
    this.flush();
  }

  /** Acknowledges every event up to `seq`; trims the queue and reopens the ACK window. */
  ack(seq: number): void {
    if (!this.active) return;
    if (seq > this.lastAck) {
      this.lastAck = seq;
      this.droppedSinceProgress = 0;
    }
    while (this.unacked.length && (this.unacked.peek() as number) <= seq) this.unacked.shift();
    for (const q of [this.droppable, this.essential]) while (q.length && (q.peek() as BusEvent).seq <= seq) q.shift();
    if (this.pendingDropWarning && this.pendingDropWarning.seq <= seq) this.pendingDropWarning = null;
    if (this.pending < this.warnThreshold) this.slowWarningActive = false;
    this.flush();
  }

  metrics(): SubscriptionMetrics {
    return {
      token: this.token,
      pending: this.pending,
      high_water: this.highWater,
      drop_count: this.dropCount,
      slow_count: this.slowCount,
      last_ack: this.lastAck,
      delivered_seq: this.deliveredSeq,
      max_events: this.maxEvents,
      active: this.active,
      slow_warning_active: this.slowWarningActive,
      queued: this.queueLength,
      unacked: this.unacked.length,
      ack_window: this.ackWindow,
    };
  }

  /** Events still queued (undelivered), oldest first. */
  queued(): BusEvent[] {
    const all = [...this.droppable.toArray(), ...this.essential.toArray()];
    if (this.pendingDropWarning) all.push(this.pendingDropWarning);
    return all.sort((a, b) => a.seq - b.seq);
  }

  close(reason: CloseReason): void {
    if (!this.active) return;
    this.active = false;
    this.droppable.clear();
    this.essential.clear();
    this.pendingDropWarning = null;
    this.unacked.clear();
    this.host.detach(this);
    this.opts.onClose?.(reason);
  }

  private windowOpen(): boolean {
    return this.ackWindow === null || this.unacked.length < this.ackWindow;
  }

  private flush(): void {
    // Re-entrancy guard: a consumer may ack or emit from inside its deliver callback.
    if (this.delivering) return;
    this.delivering = true;
    try {
      let ev: BusEvent | undefined;
      while (this.active && this.started && !this.consumerFull && this.windowOpen() && (ev = this.takeOldest())) {
        this.deliveredSeq = Math.max(this.deliveredSeq, ev.seq);
        if (this.ackWindow !== null) this.unacked.push(ev.seq);
        this.droppedSinceProgress = 0;
        let more = true;
        try {
          more = this.opts.deliver(ev);
        } catch {
          more = false; // a throwing consumer is treated as a full one; back-pressure handles the rest
        }
        if (!more) this.consumerFull = true;
      }
    } finally {
      this.delivering = false;
    }
  }

  /** Removes and returns the queued event with the lowest seq (the three parts are each in order). */
  private takeOldest(): BusEvent | undefined {
    const d = this.droppable.peek();
    const e = this.essential.peek();
    const w = this.pendingDropWarning;
    let from: Fifo<BusEvent> | null = d ? this.droppable : null;
    let best = d;
    if (e && (!best || e.seq < best.seq)) {
      from = this.essential;
      best = e;
    }
    if (w && (!best || w.seq < best.seq)) {
      this.pendingDropWarning = null;
      return w;
    }
    return from?.shift();
  }

  private noteDrop(droppedSeq: number): void {
    this.dropCount++;
    this.droppedSinceProgress++;
    this.host.onDrop?.(this, droppedSeq);
    // One drop warning at a time: a newer one supersedes the queued one (its counts are cumulative).
    this.pendingDropWarning = this.host.makeWarning({
      reason: 'event_dropped',
      dropped_seq: droppedSeq,
      drops: this.dropCount,
      subscription: this.token,
    });
  }

  private trackHighWater(): void {
    const p = this.pending;
    if (p > this.highWater) this.highWater = p;
  }

  private applyBackpressure(): void {
    if (!this.active) return;
    const now = this.host.now();
    if (now - this.createdAt < this.host.config.graceMs) return;
    const pending = this.pending;
    if (pending >= this.warnThreshold) {
      if (now - this.lastWarningAt >= this.host.config.slowWarningIntervalMs) {
        this.lastWarningAt = now;
        this.slowWarningActive = true;
        this.slowCount++;
        this.host.onSlow?.(this, 'slow_consumer', pending);
        this.sendNow(this.slowWarning('slow_consumer', pending));
      }
    } else {
      this.slowWarningActive = false;
    }
    if (pending >= this.dropThreshold) {
      this.host.onSlow?.(this, 'slow_consumer_drop', pending);
      this.sendNow(this.slowWarning('slow_consumer_drop', pending));
      this.close('slow_consumer_drop');
    }
  }

  /**
   * Warnings about the subscription itself skip the queue and the ACK window: a consumer that
   * is behind must hear it now (the queue is exactly what it is not reading), and the last word
   * before a cut-off must reach it. So these may arrive ahead of older queued events.
   */
  private sendNow(w: BusEvent): void {
    try {
      if (!this.opts.deliver(w)) this.consumerFull = true;
    } catch {
      this.consumerFull = true;
    }
  }

  private slowWarning(reason: SlowReason, pending: number): BusEvent {
    return this.host.makeWarning({
      reason,
      pending,
      high_water: this.highWater,
      drops: this.dropCount,
      subscription: this.token,
    });
  }
}
