/**
 * The CAN bus interface every backend (SocketCAN, in-process virtual bus, loopback virtual bus)
 * implements: the project's `Transport` over `CanFrame`s, plus a synchronous `post` for the hot
 * path (a Promise per frame would cost more than the frame itself at 80k frames/s), acceptance
 * filters and error frames surfaced as events.
 */
import { EventEmitter } from 'node:events';
import type { Transport, TransportStatus } from '../transport.js';
import { frameProblem, type CanFrame } from './frame.js';

/** Accept a frame when `(frame.id & mask) === (id & mask)`. An empty filter list accepts all. */
export interface CanFilter {
  id: number;
  mask: number;
}

/** An error frame or controller state change, as SocketCAN reports it. */
export interface CanErrorEvent {
  /** Error class bits (linux/can/error.h) or 0 for a backend-level error. */
  errorClass: number;
  data: Uint8Array;
  message: string;
}

export interface CanBus extends Transport<CanFrame, CanFrame> {
  /** Whether CAN FD frames may be sent. */
  readonly fd: boolean;
  /** Queue a frame for transmission; false when the backend refused it (counted in status). */
  post(frame: CanFrame): boolean;
  setFilters(filters: CanFilter[]): void;
  // events: 'status' (TransportStatus), 'error-frame' (CanErrorEvent)
}

type Handler = (frame: CanFrame) => void;

/** Receiver bookkeeping, filters, counters and status shared by the backends. */
export abstract class CanBusBase extends EventEmitter implements CanBus {
  private handlers: Handler[] = [];
  private filters: CanFilter[] = [];
  protected state: TransportStatus['state'] = 'opening';
  protected detail: string | undefined;
  protected readonly counters: Record<string, number> = { sent: 0, received: 0, filtered: 0, refused: 0, handlerErrors: 0 };

  constructor(
    readonly name: string,
    readonly fd: boolean,
  ) {
    super();
  }

  abstract open(): Promise<void>;
  abstract close(): Promise<void>;
  /** Backend transmit of a validated frame; false when refused. */
  protected abstract transmit(frame: CanFrame): boolean;

  post(frame: CanFrame): boolean {
    const problem = frameProblem(frame, this.fd);
    if (problem !== null || this.state !== 'open') {
      this.counters['refused']!++;
      return false;
    }
    if (!this.transmit(frame)) {
      this.counters['refused']!++;
      return false;
    }
    this.counters['sent']!++;
    return true;
  }

  async send(frame: CanFrame): Promise<void> {
    const problem = frameProblem(frame, this.fd);
    if (problem !== null) throw new Error(`${this.name}: ${problem}`);
    if (this.state !== 'open') throw new Error(`${this.name}: bus is ${this.state}`);
    if (!this.post(frame)) throw new Error(`${this.name}: frame 0x${frame.id.toString(16)} refused by the backend`);
  }

  receive(handler: Handler): () => void {
    this.handlers = [...this.handlers, handler];
    return () => {
      this.handlers = this.handlers.filter((h) => h !== handler);
    };
  }

  setFilters(filters: CanFilter[]): void {
    this.filters = filters.map((f) => ({ id: f.id >>> 0, mask: f.mask >>> 0 }));
  }

  status(): TransportStatus {
    const s: TransportStatus = { state: this.state, counters: { ...this.counters } };
    if (this.detail !== undefined) s.detail = this.detail;
    return s;
  }

  protected setState(state: TransportStatus['state'], detail?: string): void {
    this.state = state;
    this.detail = detail;
    this.emit('status', this.status());
  }

  /** Hand a received frame to every receiver; a throwing receiver never breaks the bus. */
  protected deliver(frame: CanFrame): void {
    if (this.filters.length > 0 && !this.filters.some((f) => ((frame.id ^ f.id) & f.mask) === 0)) {
      this.counters['filtered']!++;
      return;
    }
    this.counters['received']!++;
    for (const h of this.handlers) {
      try {
        h(frame);
      } catch (e) {
        this.counters['handlerErrors']!++;
        this.emit('handler-error', e);
      }
    }
  }

  protected errorFrame(event: CanErrorEvent): void {
    this.counters['errorFrames'] = (this.counters['errorFrames'] ?? 0) + 1;
    this.emit('error-frame', event);
  }
}
