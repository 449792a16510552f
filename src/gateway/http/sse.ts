/**
 * One live page's event stream: `GET /api/events`, server-sent events (text/event-stream), fed by
 * an event-bus subscription with the bus's own rules (docs/jobs.md, src/gateway/events/): a bounded
 * queue per stream, progress dropped oldest-first when the page is behind, `slow_consumer` warnings,
 * and past the hard limit the subscription is cut off (`slow_consumer_drop`) and the connection
 * destroyed. Delivery stops as soon as the socket's buffer is full (`res.write` false) and resumes on
 * `drain`, so a browser that stops reading holds at most one event in Node's buffer plus the bus's
 * bounded queue; it never makes the gateway's memory grow.
 */
import type { ServerResponse } from 'node:http';
import { eventJson, type BusEvent, type EventBus, type Subscription } from '../events/index.js';

/** What the page follows: job changes and progress, scans, boots, and the device errors and alerts. */
export const PAGE_EVENT_CATEGORIES = [
  'job',
  'inventory',
  'boot',
  'provisioning.error',
  'provisioning.rollback',
  'provisioning.wear_warning',
  'provisioning.persisted',
] as const;

/** A page's progress bars move at most this often (the bus carries job progress at 10 Hz per target). */
export const PAGE_PROGRESS_MS = 250;

export interface PageStreamOptions {
  bus: EventBus;
  res: ServerResponse;
  /** Replay from after this seq (the state the page holds), when still in the bus's history. */
  sinceSeq: number | null;
  /** A comment line this often keeps proxies and the browser from timing the stream out. */
  heartbeatMs?: number;
  onClose?: (reason: string) => void;
}

export class PageStream {
  readonly sub: Subscription;
  private closed = false;
  private heartbeat: NodeJS.Timeout | null = null;
  private full = false;
  /**
   * Events delivered in this turn of the event loop, written together at its end: a job's progress
   * arrives as one event per target at once, and one write (one syscall, one TCP segment) for all of
   * them costs the gateway a fraction of one per event.
   */
  private batch = '';
  private flushScheduled = false;
  /**
   * Job progress held for the next progress tick, the newest per job and target: a bar needs a few
   * updates a second, not one per target per 100 ms. A job's other events drop what is held for it
   * (they carry the record, acked bytes included), so a bar never moves after its target's verdict.
   */
  private readonly heldProgress = new Map<string, BusEvent>();
  private lastProgressAt = -Infinity;
  /** A job's newest record-carrying event (`job.target`, `job.started`, ...) in this turn of the event loop. */
  private readonly heldJobs = new Map<string, BusEvent>();
  private progressTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: PageStreamOptions) {
    const { res } = opts;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
      connection: 'keep-alive',
    });
    res.write(`retry: 2000\n: hsx-gateway live events\n\n`);
    this.sub = opts.bus.subscribe({
      categories: PAGE_EVENT_CATEGORIES,
      sinceSeq: opts.sinceSeq,
      deliver: (ev) => this.write(ev),
      onClose: (reason) => this.end(reason),
    });
    res.on('drain', () => {
      this.full = false;
      this.sub.resume();
    });
    // the stream's first bytes go out at once (the page shows itself live when they arrive)
    res.flushHeaders();
    res.on('close', () => this.end('client_closed'));
    const every = opts.heartbeatMs ?? 15_000;
    this.heartbeat = setInterval(() => {
      if (!this.full && !this.closed) this.full = !res.write(': ping\n\n');
    }, every);
    this.heartbeat.unref();
  }

  private write(ev: BusEvent): boolean {
    if (this.closed) return false;
    const job = typeof ev.data['job_id'] === 'string' ? ev.data['job_id'] : null;
    if (ev.type === 'job.progress' && job !== null) {
      this.heldProgress.set(`${job}\u0000${String(ev.data['target'])}`, ev);
      const wait = this.lastProgressAt + PAGE_PROGRESS_MS - Date.now();
      if (wait <= 0) this.releaseProgress();
      else if (!this.progressTimer) {
        this.progressTimer = setTimeout(() => {
          this.progressTimer = null;
          this.releaseProgress();
          this.flush();
        }, wait);
        this.progressTimer.unref();
      }
      return !this.full;
    }
    if (job !== null && this.heldProgress.size) {
      for (const [k, held] of this.heldProgress) if (held.data['job_id'] === job) this.heldProgress.delete(k);
    }
    if (job !== null && ev.type.startsWith('job.') && ev.data['job'] !== undefined) {
      // Every such event carries the job's whole record, so in one turn of the event loop (a job's
      // targets change together, one event each) the newest says all the others did.
      this.heldJobs.set(job, ev);
      this.scheduleFlush();
      return !this.full;
    }
    return this.append(ev);
  }

  /** Everything held goes into the batch (the newest progress per job and target). */
  private releaseProgress(): void {
    this.lastProgressAt = Date.now();
    const held = [...this.heldProgress.values()].sort((a, b) => a.seq - b.seq);
    this.heldProgress.clear();
    for (const ev of held) this.append(ev);
  }

  private append(ev: BusEvent): boolean {
    this.drainHeldJobs();
    this.batch += `id: ${ev.seq}\ndata: ${eventJson(ev)}\n\n`;
    // a burst is not held whole: past 64 KiB it goes to the socket now, and the socket's answer counts
    if (this.batch.length >= 64 * 1024) return this.flush();
    this.scheduleFlush();
    return !this.full;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
      // when the socket is full, nothing more is delivered until it drains ('drain' resumes the subscription)
    });
  }

  /** Held job events go into the batch, in bus order, before anything delivered after them. */
  private drainHeldJobs(): void {
    if (!this.heldJobs.size) return;
    const held = [...this.heldJobs.values()].sort((a, b) => a.seq - b.seq);
    this.heldJobs.clear();
    for (const ev of held) this.batch += `id: ${ev.seq}\ndata: ${eventJson(ev)}\n\n`;
  }

  /** Writes the batch; false when the socket's buffer is full (delivery then waits for 'drain'). */
  private flush(): boolean {
    this.drainHeldJobs();
    if (this.closed || this.batch === '') return !this.full;
    const text = this.batch;
    this.batch = '';
    if (!this.opts.res.write(text)) this.full = true;
    return !this.full;
  }

  /** Bytes written to the socket and not yet taken by the kernel (for tests and diagnostics). */
  get buffered(): number {
    return this.opts.res.writableLength;
  }

  end(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.batch = '';
    this.heldProgress.clear();
    this.heldJobs.clear();
    if (this.progressTimer) clearTimeout(this.progressTimer);
    this.progressTimer = null;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    if (this.sub.active) this.sub.close('unsubscribed');
    const res = this.opts.res;
    // A stream cut off for being behind is not read: nothing would flush a polite end, so it goes now.
    if (reason === 'slow_consumer_drop') res.destroy();
    else if (!res.writableEnded) res.end();
    this.opts.onClose?.(reason);
  }
}
