/**
 * Holds MQTT messages while the broker is unreachable. Bounded: when full, progress-like
 * (droppable) messages go first, oldest first; terminal messages are kept past the soft limit
 * up to a hard limit, and only then is the oldest terminal one dropped — and counted, because
 * losing one is an incident the operator must hear about.
 */
export interface BufferedMessage {
  topic: string;
  payload: string;
  qos: 0 | 1 | 2;
  retain: boolean;
  /** Terminal messages (complete, error, aborted, persisted, rollback, state) are kept first. */
  terminal: boolean;
}

export interface OutageCounters {
  droppedProgress: number;
  droppedTerminal: number;
  buffered: number;
}

export class OutageBuffer {
  private queue: BufferedMessage[] = [];
  private droppedProgress = 0;
  private droppedTerminal = 0;
  /** Drops since the buffer was made (takeCounters does not reset these): for /metrics. */
  private lifetime = { progress: 0, terminal: 0 };

  constructor(
    private readonly softLimit: number,
    private readonly hardLimit = softLimit * 4,
  ) {}

  push(msg: BufferedMessage): void {
    if (msg.retain) {
      // A retained topic only ever needs its newest value.
      const i = this.queue.findIndex((m) => m.retain && m.topic === msg.topic);
      if (i >= 0) this.queue.splice(i, 1);
    }
    this.queue.push(msg);
    if (this.queue.length <= this.softLimit) return;
    const droppable = this.queue.findIndex((m) => !m.terminal);
    if (droppable >= 0) {
      this.queue.splice(droppable, 1);
      this.droppedProgress++;
      this.lifetime.progress++;
      return;
    }
    if (this.queue.length > this.hardLimit) {
      this.queue.shift();
      this.droppedTerminal++;
      this.lifetime.terminal++;
    }
  }

  /** Takes every buffered message, oldest first. */
  drain(): BufferedMessage[] {
    const out = this.queue;
    this.queue = [];
    return out;
  }

  /** A retained message for this topic is waiting. */
  hasRetained(topic: string): boolean {
    return this.queue.some((m) => m.retain && m.topic === topic);
  }

  get size(): number {
    return this.queue.length;
  }

  counters(): OutageCounters {
    return { droppedProgress: this.droppedProgress, droppedTerminal: this.droppedTerminal, buffered: this.queue.length };
  }

  /** Messages dropped since the buffer was made, by kind. */
  droppedTotals(): { progress: number; terminal: number } {
    return { ...this.lifetime };
  }

  /** Counters since the last call, so each reconnect reports only its own outage. */
  takeCounters(): OutageCounters {
    const c = this.counters();
    this.droppedProgress = 0;
    this.droppedTerminal = 0;
    return c;
  }
}
