/**
 * Event production helpers. The engine only produces events (`EngineEvent`); numbering,
 * timestamps, coalescing and delivery belong to the sink (the gateway's event bus).
 * `CollectingEventSink` is the simplest real sink: it numbers and keeps everything, for tests
 * and for tools that want the whole transcript.
 */
import type { Clock, EngineEvent, EventEnvelope, EventSink, ProvisioningEventType } from './ports.js';

export class CollectingEventSink implements EventSink {
  readonly events: EventEnvelope[] = [];
  private seq = 0;

  /** `ts` in seconds (a float, like the event bus's): the clock's `now()` / 1000, without a clock `Date.now()` / 1000. */
  constructor(private readonly clock?: Pick<Clock, 'now'>) {}

  emit(event: EngineEvent): void {
    this.events.push({ seq: ++this.seq, ts: (this.clock ? this.clock.now() : Date.now()) / 1000, ...event });
  }

  ofType(type: ProvisioningEventType): EventEnvelope[] {
    return this.events.filter((e) => e.type === type);
  }

  forPid(pid: number): EventEnvelope[] {
    return this.events.filter((e) => e.pid === pid);
  }

  clear(): void {
    this.events.length = 0;
  }
}

/** A sink that drops everything (benchmarks that measure the engine alone). */
export const nullEventSink: EventSink = { emit() {} };
