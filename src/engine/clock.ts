/**
 * Clocks for the engine. Every timeout in the engine goes through the injected `Clock`, so tests
 * drive time with `FakeClock.advance()` and never sleep.
 */
import type { Clock, TimerHandle } from './ports.js';

/**
 * Real time: a monotonic millisecond clock anchored to the wall clock at start-up (so event
 * timestamps read as epoch milliseconds but never go backwards when NTP steps the system time).
 * Timers are unref'd: a stalled provisioning session must not keep a process alive.
 */
const origin = Date.now() - performance.now();
export const systemClock: Clock = {
  now: () => origin + performance.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, Math.max(0, ms));
    t.unref();
    return t;
  },
  clearTimeout(handle) {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  },
};

interface FakeTimer {
  id: number;
  due: number;
  fn: () => void;
}

/**
 * Deterministic time. `advance(ms)` moves `now()` forward and fires every timer that falls due on
 * the way, in due-time order (ties in the order they were set), each with `now()` equal to its due
 * time; timers set while firing are honoured if they fall inside the advanced span.
 */
export class FakeClock implements Clock {
  private current: number;
  private nextId = 1;
  /** Binary min-heap on (due, id); cancelled timers are dropped lazily. */
  private heap: FakeTimer[] = [];
  private live = new Set<number>();

  constructor(start = 0) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: FakeTimer = { id: this.nextId++, due: this.current + Math.max(0, ms), fn };
    this.live.add(timer.id);
    this.push(timer);
    return { fakeTimer: timer.id };
  }

  clearTimeout(handle: TimerHandle): void {
    const id = (handle as { fakeTimer?: number }).fakeTimer;
    if (id !== undefined) this.live.delete(id);
  }

  /** Timers set and neither fired nor cleared: a leak check for sessions. */
  pendingTimers(): number {
    return this.live.size;
  }

  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`FakeClock.advance: ms must be >= 0, got ${ms}`);
    const target = this.current + ms;
    for (;;) {
      const top = this.heap[0];
      if (!top || top.due > target) break;
      this.pop();
      if (!this.live.delete(top.id)) continue;
      this.current = top.due;
      top.fn();
    }
    this.current = target;
  }

  private less(a: FakeTimer, b: FakeTimer): boolean {
    return a.due < b.due || (a.due === b.due && a.id < b.id);
  }

  private push(t: FakeTimer): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
      if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
}
