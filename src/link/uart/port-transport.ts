/**
 * The UART framing layer as a Transport: opens a serial port (port-io.ts: serialport's binding
 * opens and configures it, bytes move with non-blocking reads and writes), writes COBS frames with
 * back-pressure, splits the byte stream at 0x00 and un-stuffs it in one pass (frame-reader.ts),
 * and delivers only frames that pass their length and CRC checks (the rest are counted and
 * dropped). The session protocol above it (master.ts, listener.ts) only sees Frames.
 */
import { EventEmitter } from 'node:events';
import type { Transport, TransportStatus } from '../transport.js';
import { FrameType, encodeFrame, encodeFrameInto, wireBytesForPayload, type Frame, type FrameDropReason, type FrameTypeValue } from './frame.js';
import { CobsFrameReader } from './frame-reader.js';
import { openFailure, uartError, type UartError } from './errors.js';
import { SerialPortIo } from './port-io.js';
import { DEFAULT_BAUD, LISTENER_MAX_CHUNK } from './settings.js';

/** Frames that end a session and must not wait behind queued DATA (see send()). */
const URGENT_FRAMES: ReadonlySet<FrameTypeValue> = new Set([FrameType.ABORT, FrameType.ERROR]);

/** Frames queued in one tick are written together up to this many bytes. */
const WRITE_BATCH_BYTES = 16 * 1024;

export interface UartPortOptions {
  path: string;
  baudRate?: number;
  /** Largest frame payload accepted on receive; longer blocks are dropped before decoding. */
  maxPayload?: number;
}

/** Thrown (rejected) by open/send: carries the typed error. */
export class UartLinkError extends Error {
  constructor(readonly info: UartError) {
    super(info.message);
    this.name = 'UartLinkError';
  }
}

export class UartPortTransport extends EventEmitter implements Transport<Frame, Frame> {
  readonly name: string;
  private port: SerialPortIo | null = null;
  private state: TransportStatus['state'] = 'closed';
  private detail: string | undefined;
  private closing = false;
  private readonly handlers = new Set<(frame: Frame) => void>();
  private readonly maxPayload: number;
  private lostError: UartError | null = null;
  /** Frames queued in this tick, already encoded for the wire, back to back. */
  private batch: Buffer | null = null;
  private batchBytes = 0;
  private batchScheduled = false;
  private drainWait: Promise<void> | null = null;
  /** Rejects the pending drain wait when close() ends the port under it. */
  private readonly closeWaiters = new Set<() => void>();
  /** Wire-level counters; `bytesWritten`/`bytesRead` include COBS overhead and delimiters. */
  readonly counters = {
    bytesWritten: 0,
    bytesRead: 0,
    /** Frames of an ended session dropped before they went out (see send(): ABORT, ERROR). */
    bytesDiscarded: 0,
    /** Reads that returned data (a pty hands over at most ~4 KiB per read). */
    readChunks: 0,
    framesSent: 0,
    framesReceived: 0,
    framesDropped: 0,
    dropped_cobs_invalid: 0,
    dropped_too_short: 0,
    dropped_too_long: 0,
    dropped_length_mismatch: 0,
    dropped_crc_mismatch: 0,
    dropped_unknown_type: 0,
  };

  constructor(private readonly options: UartPortOptions) {
    super();
    this.name = `uart:${options.path}`;
    this.maxPayload = options.maxPayload ?? LISTENER_MAX_CHUNK + 64;
  }

  async open(): Promise<void> {
    if (this.port) throw new UartLinkError(uartError('EINVAL', 'open', 'already_open', `${this.options.path} is already open`));
    this.setState('opening');
    let port: SerialPortIo;
    try {
      port = await SerialPortIo.open(this.options.path, this.options.baudRate ?? DEFAULT_BAUD);
    } catch (e) {
      const info = openFailure(this.options.path, e);
      this.setState('error', info.message);
      throw new UartLinkError(info);
    }
    this.port = port;
    const reader = new CobsFrameReader(this.maxPayload, {
      frame: (frame) => {
        this.counters.framesReceived++;
        for (const handler of this.handlers) handler(frame);
      },
      drop: (reason: FrameDropReason) => {
        this.counters.framesDropped++;
        this.counters[`dropped_${reason}`]++;
      },
    });
    // The port reads straight into the reader's slab, where the frames are un-stuffed and kept.
    port.setReadTarget(() => reader.readTarget());
    port.on('data', (chunk: Buffer) => {
      this.counters.bytesRead += chunk.length;
      this.counters.readChunks++;
      reader.push(chunk);
    });
    port.once('lost', (e: Error) => {
      if (this.closing) return;
      // The other end went away (cable pulled, pty master closed): a clear, typed error.
      this.lostError = uartError('EIO', 'link', 'port_lost', `serial port ${this.options.path} was lost (${e.message})`, { path: this.options.path });
      this.port = null;
      this.batch = null;
      this.batchBytes = 0;
      this.setState('error', this.lostError.message);
      this.emit('lost', this.lostError);
    });
    this.setState('open');
    // One delimiter first: the peer's parser drops whatever partial frame it holds (noise, or the
    // tail of a transfer this port's previous owner left), so our first frame is not merged with it.
    // It also wakes a relay (socat) that stalled on a full pty while nobody had the port open.
    void this.writeRaw(Buffer.from([0])).catch(() => {});
  }

  /**
   * Queues one frame for writing. ABORT and ERROR end a session: the frames still waiting (the
   * rest of a window of DATA: seconds on a slow cable) are dropped, the ABORT or ERROR goes right
   * after the batch being written now, and the call resolves once it is written, so a caller that
   * closes the port next does not lose it. Other frames sent in the
   * same tick are coalesced into one port write
   * (one syscall and one read on the other side instead of one per frame: per-write costs, not the
   * line, limit a pty). Resolves at once while the port keeps up; when its buffer is full, resolves
   * on 'drain' — the back-pressure the window logic above relies on.
   */
  async send(frame: Frame): Promise<void> {
    const port = this.port;
    if (!port) throw new UartLinkError(this.lostError ?? uartError('EIO', 'link', 'port_closed', `serial port ${this.options.path} is not open`));
    if (URGENT_FRAMES.has(frame.type)) {
      // The session is over: whatever of it still waits (the batch, the port's queue) is dropped.
      const fromBatch = this.batchBytes;
      const fromPort = port.discardQueued();
      this.batch = null;
      this.batchBytes = 0;
      this.counters.bytesWritten -= fromPort; // counted when handed to the port; they never go out
      this.counters.bytesDiscarded += fromBatch + fromPort;
      const bytes = encodeFrame(frame);
      this.counters.bytesWritten += bytes.length;
      this.counters.framesSent++;
      try {
        await port.writeUrgent(bytes);
      } catch {
        throw new UartLinkError(this.lostError ?? uartError('EIO', 'link', 'port_closed', `serial port ${this.options.path} closed before the ${frame.type === FrameType.ABORT ? 'ABORT' : 'ERROR'} went out`));
      }
      return;
    }
    // Encoded straight into the batch buffer that goes to the port: no buffer per frame, no concat.
    const room = wireBytesForPayload(frame.payload.length);
    if (!this.batch || this.batch.length - this.batchBytes < room) this.growBatch(room);
    this.batchBytes = encodeFrameInto(frame, this.batch!, this.batchBytes);
    this.counters.framesSent++;
    if (this.batchBytes >= WRITE_BATCH_BYTES) {
      await this.flushBatch();
    } else if (!this.batchScheduled) {
      this.batchScheduled = true;
      setImmediate(() => {
        this.batchScheduled = false;
        this.flushBatch().catch(() => {}); // a lost port is reported through 'lost'
      });
    }
  }

  /** A batch buffer with `room` more bytes free (the port keeps each handed-over buffer until written). */
  private growBatch(room: number): void {
    const old = this.batch;
    const next = Buffer.allocUnsafe(Math.max(WRITE_BATCH_BYTES + wireBytesForPayload(LISTENER_MAX_CHUNK), this.batchBytes + room));
    if (old) old.copy(next, 0, 0, this.batchBytes);
    this.batch = next;
  }

  private flushBatch(): Promise<void> {
    if (!this.batch || this.batchBytes === 0) return this.waitDrainIfNeeded();
    const bytes = this.batch.subarray(0, this.batchBytes);
    // The rest of the buffer is not reused: the port holds `bytes` until they are written.
    const rest = this.batch.length - this.batchBytes;
    this.batch = rest >= 4096 ? this.batch.subarray(this.batchBytes) : null;
    this.batchBytes = 0;
    return this.writeRaw(bytes);
  }

  private waitDrainIfNeeded(): Promise<void> {
    const port = this.port;
    return port && port.needsDrain ? this.waitDrain(port) : Promise.resolve();
  }

  /** Writes raw bytes (the bench's baseline); waits for 'drain' when the port's queue is full. */
  async writeRaw(bytes: Uint8Array): Promise<void> {
    const port = this.port;
    if (!port) throw new UartLinkError(this.lostError ?? uartError('EIO', 'link', 'port_closed', `serial port ${this.options.path} is not open`));
    this.counters.bytesWritten += bytes.length;
    if (port.write(bytes)) return;
    await this.waitDrain(port);
  }

  /** One shared wait per congestion episode (not a listener pair per waiting write). */
  private waitDrain(port: SerialPortIo): Promise<void> {
    this.drainWait ??= new Promise<void>((resolve, reject) => {
      const done = (): void => {
        port.off('drain', onDrain);
        port.off('lost', onLost);
        this.closeWaiters.delete(onLost);
        this.drainWait = null;
      };
      const onDrain = (): void => { done(); resolve(); };
      const onLost = (): void => {
        done();
        reject(new UartLinkError(this.lostError ?? uartError('EIO', 'link', 'port_closed', `serial port ${this.options.path} closed while writing`)));
      };
      port.on('drain', onDrain);
      port.on('lost', onLost);
      this.closeWaiters.add(onLost);
    });
    return this.drainWait;
  }

  /** Resolves once everything written so far has left the port (tcdrain), or after `timeoutMs`. */
  async flush(timeoutMs = 2000): Promise<void> {
    const port = this.port;
    if (!port) return;
    void this.flushBatch().catch(() => {});
    await port.drain(timeoutMs);
  }

  receive(handler: (frame: Frame) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  async close(): Promise<void> {
    // Hand the last frames to the port, but never wait for a drain here: a stalled line must not
    // keep close() from returning.
    void this.flushBatch().catch(() => {});
    const port = this.port;
    this.closing = true;
    this.port = null;
    // A write waiting for room ends now (its caller sees the port closed).
    for (const wake of [...this.closeWaiters]) wake();
    if (port) await port.close();
    if (this.state !== 'error') this.setState('closed');
  }

  /** The error that ended the link (port lost), if any. */
  lost(): UartError | null {
    return this.lostError;
  }

  status(): TransportStatus {
    // queuedBytes: accepted by send() but not yet handed to the OS (back-pressure in action).
    const queuedBytes = this.batchBytes + (this.port?.queuedBytes ?? 0);
    const s: TransportStatus = { state: this.state, counters: { ...this.counters, queuedBytes } };
    if (this.detail !== undefined) s.detail = this.detail;
    return s;
  }

  private setState(state: TransportStatus['state'], detail?: string): void {
    this.state = state;
    if (detail !== undefined) this.detail = detail;
    this.emit('status', this.status());
  }
}
