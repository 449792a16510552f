/** An event sink for tests that keeps every event and lets a test wait for the next one that matches. */
import type { EngineEvent, EventSink } from '../../src/engine/index.js';

export class WaitingSink implements EventSink {
  readonly events: EngineEvent[] = [];
  private waiters: Array<{ pred: (e: EngineEvent) => boolean; resolve: (e: EngineEvent) => void }> = [];

  emit(e: EngineEvent): void {
    this.events.push(e);
    for (const w of [...this.waiters]) {
      if (w.pred(e)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(e);
      }
    }
  }

  /** Resolves with the next event (from now on) that `pred` accepts. */
  next(pred: (e: EngineEvent) => boolean): Promise<EngineEvent> {
    return new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }

  /** Events of `type` from index `n` on. */
  since(n: number, type: EngineEvent['type']): EngineEvent[] {
    return this.events.slice(n).filter((e) => e.type === type);
  }
}
