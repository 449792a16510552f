/**
 * The event bus between the engine (and the rest of the gateway) and every consumer: control
 * server subscribers, the MQTT bridge, CLI progress bars, logs. It implements the engine's
 * `EventSink` port. It assigns the global `seq` and the `ts` (from the injected clock, never
 * going backwards as seq grows), coalesces progress per session, keeps a bounded history for
 * `since_seq` replay and fans out to subscribers, each with its own bounded queue. `emit`
 * never blocks and never throws because of a consumer.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Clock, EngineEvent, EventSink } from '../../engine/ports.js';
import { ProgressCoalescer } from './coalescer.js';
import { Fifo } from './queue.js';
import { Subscription, type SubscribeOptions, type SubscriptionHost, type SubscriptionMetrics } from './subscription.js';
import { DEFAULT_BUS_CONFIG, type BusEvent, type BusInput, type EventBusConfig, type SlowReason } from './types.js';

export interface EventBusOptions {
  clock: Clock;
  config?: Partial<EventBusConfig>;
  logger?: Logger;
}

export interface BusStats {
  published: number;
  offered: number;
  subscribers: number;
  /** Events dropped for a subscriber that was behind (each counted once per subscriber), since the bus started. */
  dropped: number;
  /** `slow_consumer` warnings given, and subscribers cut off (`slow_consumer_drop`), since the bus started. */
  slowWarnings: number;
  slowDrops: number;
  history: number;
  lastSeq: number;
}

export class EventBus implements EventSink {
  readonly config: EventBusConfig;
  private readonly clock: Clock;
  private readonly logger: Logger | undefined;
  private readonly coalescer: ProgressCoalescer;
  private readonly history = new Fifo<BusEvent>();
  private readonly subs = new Map<string, Subscription>();
  private nextSeq = 1;
  /** Highest seq evicted from history: replay from before it cannot be whole. */
  private evictedSeq = 0;
  private lastTs = -Infinity;
  private offered = 0;
  private published = 0;
  private dropped = 0;
  private slowWarnings = 0;
  private slowDrops = 0;
  private closed = false;
  private readonly host: SubscriptionHost;

  constructor(opts: EventBusOptions) {
    this.config = { ...DEFAULT_BUS_CONFIG, ...opts.config };
    this.clock = opts.clock;
    this.logger = opts.logger;
    this.coalescer = new ProgressCoalescer(this.clock, this.config.progressHz, (ev) => this.record(ev));
    const bus = this;
    this.host = {
      config: this.config,
      now: () => this.clock.now(),
      makeWarning: (data) => this.envelope({ type: 'warning', pid: null, phase: null, data }),
      detach: (sub) => {
        if (this.subs.get(sub.token) === sub) this.subs.delete(sub.token);
      },
      onSlow(sub: Subscription, reason: SlowReason, pending: number) {
        if (reason === 'slow_consumer_drop') bus.slowDrops++;
        else bus.slowWarnings++;
        bus.logger?.warn({ subscription: sub.token, reason, pending, drops: sub.dropCount }, 'event subscriber is behind');
      },
      onDrop(sub: Subscription, droppedSeq: number) {
        bus.dropped++;
        bus.logger?.debug({ subscription: sub.token, dropped_seq: droppedSeq, drops: sub.dropCount }, 'event dropped for subscriber');
      },
    };
  }

  /** The engine's port: every engine event enters here. */
  emit(event: EngineEvent): void {
    this.publish(event);
  }

  /** Any event (engine or gateway); progress is coalesced, everything else passes at once. */
  publish(event: BusInput): void {
    if (this.closed) return;
    this.offered++;
    this.coalescer.offer(event);
  }

  /** The last seq handed out (0 before any event). */
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  subscribe(opts: SubscribeOptions): Subscription {
    const token = opts.token ?? randomUUID();
    const old = this.subs.get(token);
    if (old) old.close('unsubscribed');
    const sub = new Subscription(this.host, opts, token, this.lastSeq);
    this.subs.set(token, sub);
    if (sub.sinceSeq !== null) this.replay(sub, sub.sinceSeq);
    return sub;
  }

  unsubscribe(token: string): boolean {
    const sub = this.subs.get(token);
    if (!sub) return false;
    sub.close('unsubscribed');
    return true;
  }

  get(token: string): Subscription | undefined {
    return this.subs.get(token);
  }

  /** Retained events with seq > sinceSeq, oldest first (for tests and diagnostics). */
  historySince(sinceSeq: number): BusEvent[] {
    this.pruneHistory();
    return this.history.toArray().filter((e) => e.seq > sinceSeq);
  }

  /** Every live subscription's metrics (diagnostics, `info`, benchmarks). */
  subscriptionMetrics(): SubscriptionMetrics[] {
    return [...this.subs.values()].map((s) => s.metrics());
  }

  stats(): BusStats {
    return {
      published: this.published,
      offered: this.offered,
      subscribers: this.subs.size,
      dropped: this.dropped,
      slowWarnings: this.slowWarnings,
      slowDrops: this.slowDrops,
      history: this.history.length,
      lastSeq: this.lastSeq,
    };
  }

  /** Ends every subscription and drops held progress; later events are ignored. */
  close(): void {
    this.closed = true;
    this.coalescer.clear();
    for (const sub of [...this.subs.values()]) sub.close('bus_closed');
  }

  private envelope(ev: BusInput): BusEvent {
    // ts never goes backwards as seq grows (the HSX executive's does: it stamps before it numbers).
    const ts = Math.max(this.lastTs, this.clock.now() / 1000);
    this.lastTs = ts;
    return { seq: this.nextSeq++, ts, type: ev.type, pid: ev.pid, phase: ev.phase, data: ev.data };
  }

  private record(input: BusInput): void {
    const ev = this.envelope(input);
    this.published++;
    this.history.push(ev);
    if (this.history.length > this.config.historySize) this.evict();
    for (const sub of this.subs.values()) sub.offer(ev);
  }

  private pruneHistory(): void {
    const horizon = this.clock.now() / 1000 - this.config.retentionMs / 1000;
    while (this.history.length && (this.history.peek() as BusEvent).ts < horizon) this.evict();
  }

  private evict(): void {
    const ev = this.history.shift();
    if (ev) this.evictedSeq = ev.seq;
  }

  private replay(sub: Subscription, sinceSeq: number): void {
    this.pruneHistory();
    const oldest = this.history.peek();
    for (const ev of this.history.toArray()) if (ev.seq > sinceSeq) sub.offer(ev, true);
    if (sinceSeq < this.evictedSeq) {
      // Some of what was asked for is gone: say so instead of pretending the stream is whole.
      // (It follows the replayed events so that seq keeps increasing on the subscriber's stream.)
      sub.offer(this.host.makeWarning({
        reason: 'history_truncated',
        since_seq: sinceSeq,
        oldest_seq: oldest ? oldest.seq : this.nextSeq,
        subscription: sub.token,
      }), true);
    }
  }
}
