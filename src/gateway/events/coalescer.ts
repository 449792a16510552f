/**
 * Progress coalescing, per provisioning session. A streaming load can report progress for every
 * 64-byte chunk; subscribers (a person's progress bar, an MQTT dashboard) need a few updates a
 * second. Rules:
 *  - a progress event passes only when its whole percent is above the last one passed, and at
 *    most `progressHz` times per second; a newer value held back by the rate limit is sent when
 *    the interval ends (so a bar never stalls on a stale value);
 *  - progress never goes backwards;
 *  - `complete` is always preceded by a 100% progress event (made here when the producer's last
 *    one was held back or below 100);
 *  - terminal events pass untouched and end the session's state.
 */
import type { Clock, TimerHandle } from '../../engine/ports.js';
import { PROGRESS_TYPE, isTerminal, type BusInput } from './types.js';

interface SessionProgress {
  /** Whole percent last passed on; -1 before the first. */
  lastPercent: number;
  lastAt: number;
  /** The newest event held back by the rate limit, with its whole percent. */
  held: { event: BusInput; percent: number } | null;
  timer: TimerHandle | null;
  /** The last progress event's data, to build a final 100% from. */
  lastData: Record<string, unknown>;
  pid: number | null;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/**
 * Which session an event belongs to: the engine's streaming session id when the event carries
 * one (a streaming load has no pid until `end`), else the pid.
 */
export function progressKey(ev: BusInput): string | number | null {
  const d = ev.data;
  const sid = d['sessionId'] ?? d['session_id'] ?? d['session'];
  if (typeof sid === 'number' || typeof sid === 'string') return `s:${sid}`;
  return ev.pid; // a number key: the common case stays cheap (no string per event)
}

/** Whole percent of a progress event: `percent`, else bytes over total; null when unknown. */
export function progressPercent(data: Record<string, unknown>): number | null {
  const p = num(data['percent']);
  if (p !== null) return Math.max(0, Math.min(100, Math.floor(p)));
  const done = num(data['bytes']) ?? num(data['bytesWritten']) ?? num(data['bytes_written']) ?? num(data['received']);
  const total = num(data['total']) ?? num(data['totalBytes']) ?? num(data['total_bytes']);
  if (done === null || total === null || total <= 0) return null;
  return Math.max(0, Math.min(100, Math.floor((done * 100) / total)));
}

export class ProgressCoalescer {
  private readonly sessions = new Map<string | number, SessionProgress>();
  private readonly minIntervalMs: number;

  constructor(
    private readonly clock: Clock,
    progressHz: number,
    /** Where events that pass go (the bus's publish). */
    private readonly pass: (ev: BusInput) => void,
  ) {
    this.minIntervalMs = progressHz > 0 ? 1000 / progressHz : 0;
  }

  /** Takes one producer event; passes on what subscribers should see, in order. */
  offer(ev: BusInput): void {
    const key = progressKey(ev);
    if (ev.type === PROGRESS_TYPE && key !== null) {
      this.onProgress(key, ev);
      return;
    }
    // An error the engine marks non-terminal (the session goes on) keeps the session's progress.
    if (key !== null && isTerminal(ev.type) && ev.data['terminal'] !== false) {
      const s = this.sessions.get(key);
      if (s) {
        this.sessions.delete(key);
        if (s.timer !== null) this.clock.clearTimeout(s.timer);
        if (ev.type === 'provisioning.complete' && s.lastPercent < 100) {
          const base = s.held ? s.held.event : { type: PROGRESS_TYPE, pid: s.pid, phase: 'write' as const, data: s.lastData };
          this.pass({ ...base, pid: ev.pid ?? base.pid, data: { ...base.data, percent: 100 } });
        }
      }
    }
    this.pass(ev);
  }

  /** Sessions with progress state (for tests and leak checks). */
  get activeSessions(): number {
    return this.sessions.size;
  }

  /** Drops every held event and timer (bus shutdown). */
  clear(): void {
    for (const s of this.sessions.values()) if (s.timer !== null) this.clock.clearTimeout(s.timer);
    this.sessions.clear();
  }

  private onProgress(key: string | number, ev: BusInput): void {
    const percent = progressPercent(ev.data);
    let s = this.sessions.get(key);
    if (!s) {
      s = { lastPercent: -1, lastAt: -Infinity, held: null, timer: null, lastData: ev.data, pid: ev.pid };
      this.sessions.set(key, s);
    }
    if (ev.pid !== null) s.pid = ev.pid;
    s.lastData = ev.data;
    // Without a percent there is no step to compare: treat every event as a new step (rate only).
    const p = percent ?? Math.max(s.lastPercent + 1, 0);
    if (p <= s.lastPercent) return; // not a new whole percent, or backwards: never shown
    const now = this.clock.now();
    if (now - s.lastAt >= this.minIntervalMs && s.timer === null) {
      this.emitProgress(s, ev, p, now);
      return;
    }
    if (!s.held || p > s.held.percent) s.held = { event: ev, percent: p };
    if (s.timer === null) {
      const wait = Math.max(0, s.lastAt + this.minIntervalMs - now);
      s.timer = this.clock.setTimeout(() => this.flushHeld(key), wait);
    }
  }

  private flushHeld(key: string | number): void {
    const s = this.sessions.get(key);
    if (!s) return;
    s.timer = null;
    const held = s.held;
    s.held = null;
    if (held && held.percent > s.lastPercent) this.emitProgress(s, held.event, held.percent, this.clock.now());
  }

  private emitProgress(s: SessionProgress, ev: BusInput, percent: number, now: number): void {
    s.lastPercent = percent;
    s.lastAt = now;
    s.held = null;
    this.pass(ev.data['percent'] === percent ? ev : { ...ev, data: { ...ev.data, percent } });
  }
}
