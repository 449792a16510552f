/**
 * A serial "cable" with a real line rate, for tests and the benchmark: two socat pty pairs joined
 * through this process, which passes bytes on in each direction no faster than `baud` / 10 bytes
 * per second (8N1: a start and a stop bit per byte), like a USB-serial bridge at that baud rate. A
 * pty alone moves bytes as fast as the CPUs let it; on this cable the line is the limit, as on a
 * bench rig. Like a bridge, it buffers only a little (FIFO_BYTES per direction) and then stops
 * reading, so a sender's backlog stays in the sender (the ptys still hold ~64 KiB each way).
 *
 *   writer/master ── pty pair ──▶ [this process, paced] ──▶ pty pair ── reader/device
 *               cable.a                                               cable.b
 */
import { SerialPortIo } from '../../src/link/uart/port-io.js';
import { startPtyPair } from '../../src/link/uart/pty-pair.js';

/** What the relay holds per direction before it stops reading (a USB-serial bridge's FIFO is a few KiB). */
const FIFO_BYTES = 4096;

export interface PacedCable {
  /** The port the sending side opens. */
  a: string;
  /** The port the receiving side opens. */
  b: string;
  bytesPerSecond: number;
  stop(): Promise<void>;
}

/** Passes `from`'s bytes to `to` at `bytesPerSecond`, in ticks of about a millisecond. */
function pace(from: SerialPortIo, to: SerialPortIo, bytesPerSecond: number): () => void {
  const queue: Buffer[] = [];
  let queued = 0;
  let credit = 0;
  let last = performance.now();
  let timer: NodeJS.Timeout | null = null;
  let waitingForDrain = false;
  // At most 2 ms of line time in one go: a tick that comes late does not turn into a burst.
  const burst = Math.max(64, Math.ceil(bytesPerSecond / 500));
  const tick = (): void => {
    timer = null;
    const now = performance.now();
    credit = Math.min(burst, credit + ((now - last) * bytesPerSecond) / 1000);
    last = now;
    while (queued > 0 && credit >= 1 && !waitingForDrain && to.isOpen) {
      const head = queue[0]!;
      const n = Math.min(head.length, Math.floor(credit));
      const more = to.write(head.subarray(0, n));
      credit -= n;
      queued -= n;
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      if (!more) {
        waitingForDrain = true;
        to.once('drain', () => {
          waitingForDrain = false;
          schedule();
        });
      }
    }
    if (queued < FIFO_BYTES) from.resume();
    if (queued > 0) schedule();
  };
  const schedule = (): void => {
    if (timer || waitingForDrain) return;
    if (queued === 0) return;
    timer = setTimeout(tick, 1);
  };
  from.on('data', (chunk) => {
    if (queued === 0) {
      // An idle line has no credit saved up beyond one burst.
      last = performance.now();
      credit = Math.min(credit, burst);
    }
    queue.push(Buffer.from(chunk)); // the port reuses its read buffer
    queued += chunk.length;
    if (queued >= FIFO_BYTES) from.pause();
    schedule();
  });
  return () => {
    if (timer) clearTimeout(timer);
    timer = null;
    queue.length = 0;
    queued = 0;
  };
}

export async function startPacedCable(baud: number): Promise<PacedCable> {
  const bytesPerSecond = baud / 10;
  const near = await startPtyPair();
  const far = await startPtyPair();
  const x = await SerialPortIo.open(near.b, 921600);
  const y = await SerialPortIo.open(far.a, 921600);
  const stopForward = pace(x, y, bytesPerSecond);
  const stopBack = pace(y, x, bytesPerSecond);
  return {
    a: near.a,
    b: far.b,
    bytesPerSecond,
    stop: async () => {
      stopForward();
      stopBack();
      await x.close();
      await y.close();
      await near.stop();
      await far.stop();
    },
  };
}
