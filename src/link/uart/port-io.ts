/**
 * The serial port's byte path. serialport's native binding (@serialport/bindings-cpp, the layer
 * under `SerialPort`) opens, locks, configures (raw termios, baud rate, 8N1) and closes the port,
 * and its poller (a libuv uv_poll on the descriptor) says when the port can be read or written.
 * The bytes themselves move with non-blocking read(2)/write(2) on the event-loop thread.
 *
 * Why not SerialPort's stream: it sends every read and every write through libuv's thread pool
 * and a promise chain, and a pty hands over at most ~4 KiB per read. Measured on a socat pty pair
 * (bench/uart.ts prints both): the stream reader needs about three times the CPU per MiB of this
 * path, and on a 2-core machine that CPU, not the pty, is what limits a fast line. The binding's
 * poller also has a bug this class sidesteps: `poll()` re-arms only the events named in the call,
 * so a reader starting to wait cancels a writer's wait. Here one place decides what is armed: always
 * "readable" (unless paused), plus "writable" while bytes are queued.
 *
 * A port that goes away (USB cable pulled, the pty's other end closed) shows up as a read or write
 * error, end-of-file or a poller error; each ends the port with one 'lost' event.
 */
import { EventEmitter } from 'node:events';
import { readSync, writeSync } from 'node:fs';
import { autoDetect } from '@serialport/bindings-cpp';

const UV_READABLE = 0b0001;
const UV_WRITABLE = 0b0010;
const UV_DISCONNECT = 0b0100;

/** Bytes queued beyond which write() asks the caller to wait for 'drain' (like a stream's highWaterMark). */
const DEFAULT_HIGH_WATER = 16 * 1024;
/** One read takes at most this much; a pty gives ~4 KiB, a USB adapter less. */
const READ_BUFFER_BYTES = 64 * 1024;

/** The part of the binding's port object used here (LinuxPortBinding and DarwinPortBinding both have it). */
interface BindingPort {
  fd: number | null;
  poller: EventEmitter & { poller: { poll(events: number): void } };
  close(): Promise<void>;
  drain(): Promise<void>;
}

export interface SerialPortIoEvents {
  /** Bytes read. The buffer is only valid during the call: it is reused for the next read (unless it is the consumer's own, see setReadTarget). */
  data: [chunk: Buffer];
  /** Everything queued has been handed to the OS after write() returned false. */
  drain: [];
  /** The port failed (removed, other end closed, I/O error); it is closed. Emitted once. */
  lost: [error: Error];
}

export class SerialPortIo extends EventEmitter<SerialPortIoEvents> {
  private readonly readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
  /** Buffers accepted by write() and not yet fully written; `queueOffset` bytes of the first are out. */
  private readonly queue: Uint8Array[] = [];
  private queueOffset = 0;
  private queued = 0;
  /** Waiters for urgent buffers: settled when the buffer's last byte is out, or the port ends. */
  private readonly urgentWaiters = new Map<Uint8Array, { resolve: () => void; reject: (e: Error) => void }>();
  private paused = false;
  private needDrain = false;
  /** Where the next read lands when the consumer offers its own memory (see setReadTarget). */
  private readTarget: (() => Buffer | null) | null = null;
  private state: 'open' | 'closed' | 'lost' = 'open';
  /** Successful read(2) calls (each returned data). */
  reads = 0;

  private constructor(
    readonly path: string,
    private readonly port: BindingPort,
    private readonly fd: number,
    private readonly highWater: number,
  ) {
    super();
    const poller = port.poller;
    // Persistent listeners (the wrapper's once() would also re-arm, with the bug described above).
    poller.on('readable', (e: Error | null) => (e ? this.pollerFailed(e) : this.onReadable()));
    poller.on('writable', (e: Error | null) => (e ? this.pollerFailed(e) : this.onWritable()));
    // A hang-up is reported as readable or disconnect; the read that follows reports the error.
    poller.on('disconnect', (e: Error | null) => (e ? this.pollerFailed(e) : this.readOnce()));
    this.arm();
  }

  /** Opens and configures the port through serialport's binding; rejects with the binding's error. */
  static async open(path: string, baudRate: number, options: { highWaterMark?: number } = {}): Promise<SerialPortIo> {
    const port = (await autoDetect().open({ path, baudRate })) as unknown as BindingPort;
    if (port.fd === null) throw new Error(`serial port ${path} opened without a descriptor`);
    return new SerialPortIo(path, port, port.fd, options.highWaterMark ?? DEFAULT_HIGH_WATER);
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  /** Bytes accepted by write() that the OS has not taken yet. */
  get queuedBytes(): number {
    return this.queued;
  }

  /** True after write() returned false and until 'drain'. */
  get needsDrain(): boolean {
    return this.needDrain;
  }

  /**
   * Writes what the port takes now and queues the rest (`bytes` is held, not copied, until written:
   * the caller must not reuse it). Returns false once the queue reaches the high-water mark; wait for
   * 'drain' before writing more. Throws when the port is not open.
   */
  write(bytes: Uint8Array): boolean {
    if (this.state !== 'open') throw new Error(`serial port ${this.path} is ${this.state}`);
    if (bytes.length > 0) {
      this.queue.push(bytes);
      this.queued += bytes.length;
      if (this.queue.length === 1) this.writeQueued();
      if (this.state === 'open') this.arm();
    }
    if (this.queued >= this.highWater) this.needDrain = true;
    return !this.needDrain;
  }

  /**
   * Queues `bytes` ahead of everything not started yet: right after the buffer being written now
   * (callers hand over whole frames, so this is a frame boundary). For a frame that must not wait
   * behind a window of data, like an ABORT on a slow line. Resolves once the OS has taken all of
   * it; rejects when the port is lost or closed first.
   */
  writeUrgent(bytes: Uint8Array): Promise<void> {
    if (this.state !== 'open') return Promise.reject(new Error(`serial port ${this.path} is ${this.state}`));
    if (bytes.length === 0) return Promise.resolve();
    const written = new Promise<void>((resolve, reject) => this.urgentWaiters.set(bytes, { resolve, reject }));
    this.queue.splice(this.queueOffset > 0 ? 1 : 0, 0, bytes);
    this.queued += bytes.length;
    this.writeQueued();
    this.arm();
    return written;
  }

  /**
   * Drops the queued bytes that have not started to go out (the buffer being written now is
   * finished, so the line stays at a frame boundary; urgent writes are kept). For frames that lost
   * their purpose, like the rest of a window after an ABORT. Returns the bytes dropped.
   */
  discardQueued(): number {
    const keepHead = this.queueOffset > 0 ? 1 : 0;
    let dropped = 0;
    const kept = this.queue.filter((buf, i) => {
      const keep = i < keepHead || this.urgentWaiters.has(buf);
      if (!keep) dropped += buf.length;
      return keep;
    });
    this.queue.length = 0;
    this.queue.push(...kept);
    this.queued -= dropped;
    if (this.queued === 0 && this.needDrain) {
      this.needDrain = false;
      this.emit('drain');
    }
    this.arm();
    return dropped;
  }

  /**
   * Lets the consumer say where each read lands: `target()` returns free memory the consumer owns
   * (or null for the port's own buffer), and the 'data' chunk is then a view of it. A parser that
   * keeps what it reads (the frame reader) saves copying every byte once more.
   */
  setReadTarget(target: (() => Buffer | null) | null): void {
    this.readTarget = target;
  }

  /** Stops reading (the OS buffers, then the sender is held up): flow control for a relay. */
  pause(): void {
    this.paused = true;
    this.arm();
  }

  resume(): void {
    this.paused = false;
    this.arm();
  }

  /** Waits until every byte written so far has left the port (tcdrain), at most `timeoutMs`. */
  async drain(timeoutMs: number): Promise<void> {
    if (this.state !== 'open') return;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs); });
    const queuedOut = this.queued === 0 ? Promise.resolve() : new Promise<void>((resolve) => {
      const done = (): void => { this.off('drain', done); this.off('lost', done); resolve(); };
      this.needDrain = true;
      this.on('drain', done);
      this.on('lost', done);
    });
    await Promise.race([queuedOut.then(() => (this.state === 'open' ? this.port.drain().catch(() => {}) : undefined)), expired]);
    clearTimeout(timer);
  }

  /**
   * Closes the port. Bytes still queued get one last non-blocking attempt; nothing waits for a
   * stalled line. A write held up in the binding cannot hold this up beyond `timeoutMs`.
   */
  async close(timeoutMs = 2000): Promise<void> {
    if (this.state !== 'open') return;
    if (this.queued > 0) this.writeQueued();
    if (this.state !== 'open') return; // the last write found the port gone
    this.state = 'closed';
    this.dropQueue();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.port.close().catch(() => {}),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs); }),
    ]);
    clearTimeout(timer);
  }

  /** Readable is always wanted; writable only while bytes wait. Re-armed after every event. */
  private arm(): void {
    if (this.state !== 'open') return;
    const want = (this.paused ? 0 : UV_READABLE) | UV_DISCONNECT | (this.queued > 0 ? UV_WRITABLE : 0);
    // The native poller re-arms everything it was ever asked for after each event, so the wanted
    // set is asked for again every time, not only when it changes.
    try {
      this.port.poller.poller.poll(want);
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private onReadable(): void {
    if (this.paused) return this.arm();
    this.readOnce();
  }

  private readOnce(): void {
    if (this.state !== 'open') return;
    // One read per wake-up: the poll is level-triggered, so bytes left over wake us again, and the
    // common case never pays for an EAGAIN exception.
    let n: number;
    const into = this.readTarget?.() ?? this.readBuffer;
    try {
      n = readSync(this.fd, into, 0, Math.min(into.length, READ_BUFFER_BYTES), null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') return this.arm();
      return this.fail(e as Error);
    }
    if (n === 0) return this.fail(new Error(`serial port ${this.path} hung up (end of file)`));
    this.reads++;
    this.emit('data', into.subarray(0, n));
    this.arm();
  }

  private onWritable(): void {
    if (this.state !== 'open') return;
    this.writeQueued();
    this.arm();
  }

  /** Writes queued buffers until the OS takes less than offered (then the poller says when to go on). */
  private writeQueued(): void {
    while (this.queue.length > 0 && this.state === 'open') {
      const head = this.queue[0]!;
      const want = head.length - this.queueOffset;
      let n: number;
      try {
        n = writeSync(this.fd, head, this.queueOffset, want);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') return;
        this.fail(e as Error);
        return;
      }
      this.queued -= n;
      if (n < want) {
        this.queueOffset += n;
        return;
      }
      this.queue.shift();
      this.queueOffset = 0;
      const waiter = this.urgentWaiters.get(head);
      if (waiter) {
        this.urgentWaiters.delete(head);
        waiter.resolve();
      }
    }
    if (this.queued === 0 && this.needDrain) {
      this.needDrain = false;
      this.emit('drain');
    }
  }

  private pollerFailed(e: Error): void {
    // The binding cancels its waiters with an error when it closes the port: that is not a loss.
    if (this.state === 'open') this.fail(e);
  }

  private fail(e: Error): void {
    if (this.state !== 'open') return;
    this.state = 'lost';
    this.dropQueue();
    void this.port.close().catch(() => {});
    this.emit('lost', e);
  }

  private dropQueue(): void {
    this.queue.length = 0;
    this.queueOffset = 0;
    this.queued = 0;
    for (const waiter of this.urgentWaiters.values()) waiter.reject(new Error(`serial port ${this.path} is ${this.state} before an urgent write went out`));
    this.urgentWaiters.clear();
  }
}
