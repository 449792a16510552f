/**
 * Default link settings, chosen for wire efficiency (image bytes / all bytes on the wire, both
 * directions) and speed on a clean line: an 8192-byte DATA frame costs 12 bytes of header+CRC,
 * 33 of COBS and 1 delimiter (99.4%), and the listener acknowledges at most once per 32 KiB
 * (`ackEveryBytes`). Per-frame costs (a parse, engine writes, timers and promises, the ACKs that
 * wake both ends), not the bytes, limit a fast line: over a pty pair on a 2-core machine 8 KiB
 * frames need about 25-30% less CPU per MiB than 4 KiB frames (bench/uart.ts, `--chunk`).
 *
 * On a noisy line large frames are wasted: at 1e-3 errors per byte an 8 KiB frame survives almost
 * never (a 268-byte frame ~76%). The master then goes on with smaller frames by itself, and back
 * up once they get through (master.ts, lineTooLossy and lineRecovered); `--chunk 256` starts small
 * on a line known to be bad.
 */
export const DEFAULT_BAUD = 921600;
export const DEFAULT_CHUNK = 8192;
/**
 * 256 KiB in flight. On a pty a round trip (the listener's ACK through socat back to the master)
 * costs several milliseconds on a loaded machine, longer than 64 KiB takes to move: with 64 KiB in
 * flight the master sat on a full window for half of a 1 MiB transfer. On a real 921600-baud line
 * the window only has to cover the turnaround; the retransmission timeout is sized from it
 * (rtoForLine).
 */
export const DEFAULT_WINDOW = 32;
/** The listener's limits, announced in ACCEPT: it never takes larger frames or a wider window. */
export const LISTENER_MAX_CHUNK = 16384;
/** The engine's default largest chunk (`maxChunkBytes`): the listener splits larger frames. */
export const ENGINE_CHUNK = 4096;
export const LISTENER_MAX_WINDOW = 256;
/** Smallest chunk the listener agrees to (keeps the header overhead bounded). */
export const MIN_CHUNK = 16;

export interface MasterTiming {
  /** First retransmission timeout; doubled on every timeout without progress (back-off). */
  rtoMs: number;
  /** Upper bound for the backed-off timeout. */
  maxRtoMs: number;
  /** Consecutive timeouts without progress before giving up. */
  maxRetries: number;
  /** Times one DATA frame may be retransmitted before giving up. */
  maxFrameRetransmits: number;
  /** How long to wait for the listener's verdict after END (engine verification and commit). */
  endTimeoutMs: number;
  /**
   * OPEN's own timeout: the first wait for ACCEPT (at most `rtoMs`), doubled up to `maxRtoMs`. An
   * ACCEPT is one small frame, so it does not wait a data window's RTO (rtoForLine).
   */
  openRtoMs: number;
  /** A device that answers no OPEN within this long (all waits together) is given up: `no_listener`. */
  openBudgetMs: number;
}

export const DEFAULT_MASTER_TIMING: MasterTiming = {
  rtoMs: 250,
  maxRtoMs: 2000,
  maxRetries: 8,
  maxFrameRetransmits: 40,
  endTimeoutMs: 30000,
  openRtoMs: 250,
  openBudgetMs: 5000,
};

export interface ListenerTiming {
  /** Acknowledge once this many bytes were newly delivered (at least every frame, at most every half window)… */
  ackEveryBytes: number;
  /** …or after this delay when fewer arrived (delayed ACK, like TCP). */
  ackDelayMs: number;
  /** A NAK for the same missing frame is not repeated sooner than this. */
  nakHoldoffMs: number;
  /** A session with no frame for this long is aborted (the master is gone). */
  idleTimeoutMs: number;
}

export const DEFAULT_LISTENER_TIMING: ListenerTiming = {
  // 32 KiB between ACKs (4 frames at the default chunk). Not more: the master's retransmission
  // timer runs from the last ACK, and on a loaded machine 64 KiB between ACKs came close to its 250 ms.
  ackEveryBytes: 32 * 1024,
  ackDelayMs: 3,
  nakHoldoffMs: 60,
  idleTimeoutMs: 15000,
};

/** The RTO must cover sending a whole window at the line rate plus the turnaround. */
export function rtoForLine(baud: number, chunk: number, window: number, base: number): number {
  const windowMs = ((chunk + 20) * window * 10 * 1000) / baud;
  return Math.max(base, Math.ceil(2 * windowMs + 50));
}
