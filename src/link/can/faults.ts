/**
 * Receive-side fault injection for any bus backend: loss, duplication and reordering of the
 * frames one endpoint receives, from a seeded generator so a failing run can be replayed. It
 * wraps SocketCAN as well as the virtual bus, so the same lossy tests run on vcan0 in the HIL lane.
 */
import { CanBusBase, type CanBus } from './bus.js';
import type { CanFrame } from './frame.js';
import { seededRandom } from '../../persist/seeded-random.js';

export interface FaultOptions {
  /** Probability that a received frame is dropped. */
  loss?: number;
  /** Probability that a received frame is delivered twice. */
  dup?: number;
  /** Probability that a received frame is held back and delivered after the next one. */
  reorder?: number;
  seed?: number;
}

// Re-exported: tests and the package index take the generator from here.
export { seededRandom };

export function hasFaults(f: FaultOptions | undefined): boolean {
  return !!f && ((f.loss ?? 0) > 0 || (f.dup ?? 0) > 0 || (f.reorder ?? 0) > 0);
}

export class FaultyBus extends CanBusBase {
  private readonly random: () => number;
  private held: CanFrame | null = null;
  private releaseScheduled = false;
  private unsubscribe: (() => void) | null = null;
  readonly injected = { dropped: 0, duplicated: 0, reordered: 0 };

  constructor(
    private readonly inner: CanBus,
    private readonly faults: FaultOptions,
  ) {
    super(inner.name, inner.fd);
    this.random = seededRandom(faults.seed ?? 1);
    inner.on('status', (s) => this.emit('status', s));
    inner.on('error-frame', (e) => this.emit('error-frame', e));
  }

  async open(): Promise<void> {
    await this.inner.open();
    this.unsubscribe = this.inner.receive((f) => this.inject(f));
    this.setState('open');
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    await this.inner.close();
    this.setState('closed');
  }

  protected transmit(frame: CanFrame): boolean {
    return this.inner.post(frame);
  }

  override setFilters(filters: Parameters<CanBus['setFilters']>[0]): void {
    this.inner.setFilters(filters);
  }

  override status(): ReturnType<CanBus['status']> {
    const s = this.inner.status();
    return { ...s, counters: { ...s.counters, ...this.injected } };
  }

  private inject(frame: CanFrame): void {
    if (this.random() < (this.faults.loss ?? 0)) {
      this.injected.dropped++;
      return;
    }
    if (this.held === null && this.random() < (this.faults.reorder ?? 0)) {
      this.injected.reordered++;
      this.held = frame;
      // A held frame with nothing after it must still arrive: release it on the next turn.
      if (!this.releaseScheduled) {
        this.releaseScheduled = true;
        setImmediate(() => {
          this.releaseScheduled = false;
          this.release();
        });
      }
      return;
    }
    this.deliver(frame);
    if (this.random() < (this.faults.dup ?? 0)) {
      this.injected.duplicated++;
      this.deliver(frame);
    }
    this.release();
  }

  private release(): void {
    const held = this.held;
    this.held = null;
    if (held) this.deliver(held);
  }
}
