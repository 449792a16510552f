/**
 * The master side of the UART session protocol: OPEN with the image's size, CRC-32, SHA-256 and
 * app name; then DATA frames through a sliding window (never more than `window` frames past the
 * last cumulative ACK, so a listener that stops acknowledging stops the master), retransmitting
 * what a NAK names at once and the oldest frame on a timeout, with exponential back-off and retry
 * limits; then END and the device's verdict (INSTALLED or UPDATED). A device that already runs
 * the image answers OPEN with CURRENT and nothing is sent (unless `force`). Resume: the listener's
 * ACCEPT names the offset to start from, and only the rest is sent.
 *
 * It sees only Frames through the Transport interface.
 */
import { createHash, randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';
import type { Transport, TransportStatus } from '../transport.js';
import { err, ok, type Result } from '../../hxe/result.js';
import { FrameType, type Frame } from './frame.js';
import {
  CODEC_VERSION, RAW_VERSION, decodeAccept, type StreamEncoding, decodeCurrent, decodeError, decodeMissing, decodeResult, decodeResultV1, encodeAbort, encodeOpen,
  type ImageInfo,
} from './messages.js';
import { uartError, type UartError } from './errors.js';
import { UartLinkError } from './port-transport.js';
import { DEFAULT_CHUNK, DEFAULT_MASTER_TIMING, DEFAULT_WINDOW, MIN_CHUNK, type MasterTiming } from './settings.js';

export interface MasterOptions {
  /** The image's app name, announced in OPEN (informational for the device). */
  appName?: string;
  /** Send the image even when the device already runs it (OPEN's FORCE flag): no CURRENT answer. */
  force?: boolean;
  /**
   * Protocol version to speak (default RAW_VERSION, 2; an encoded stream always speaks CODEC_VERSION, 3). A device that answers a version 2 OPEN
   * with `EPROTO unsupported_version` is asked again in version 1 (no CURRENT, no FORCE, RESULT
   * without outcome), which `protocolVersion` in the outcome then says.
   */
  protocolVersion?: 1 | 2 | 3;
  /**
   * Send this encoded stream instead of the raw image (version 3 only: the device said it decodes it,
   * INFO's codec block). OPEN still announces the image's size, CRC-32 and SHA-256; DATA, ACKs and the
   * resume offset count in the stream.
   */
  encoded?: EncodedStream;
  chunkSize?: number;
  window?: number;
  timing?: Partial<MasterTiming>;
  onProgress?: (p: MasterProgress) => void;
  /**
   * Fit the frame size to the line, resuming from what the device holds each time: on a line that
   * loses more frames than it delivers, start over with frames a quarter the size (down to
   * ADAPTIVE_MIN_CHUNK); once the smaller frames get through many times in a row, go back up four
   * times (never above the size first agreed). Default true.
   */
  adaptChunk?: boolean;
  /** Called when a session is given up and a new one starts (see SessionRestart). */
  onRestart?: (r: SessionRestart) => void;
  signal?: AbortSignal;
}

/**
 * Why a transfer went on in a new session, resuming from what the device holds:
 * - `line_too_lossy`: frames of this size got through less than half the time; the next session
 *   uses frames a quarter the size;
 * - `line_recovered`: after a `line_too_lossy`, the smaller frames got through many times in a row
 *   (the noise was a burst); the next session uses frames four times the size, up to the size the
 *   transfer started with. The session ends where the new size resumes exactly: nothing is resent;
 * - `device_stalled`: the device's engine gave up waiting for the next bytes (its write timeout)
 *   while the line was repairing a gap; the next session re-feeds what the device kept.
 */
export interface SessionRestart {
  reason: 'line_too_lossy' | 'line_recovered' | 'device_stalled';
  /** Frame size before and after. */
  from: number;
  to: number;
  /** Bytes the device had acknowledged when the session ended. */
  ackedBytes: number;
  /** Frames resent and frames delivered in that session. */
  retransmits: number;
  delivered: number;
}

/** A compressed image or a delta patch, as `sendImage` sends it. */
export interface EncodedStream {
  kind: 'deflate' | 'patch';
  /** deflate: the window the stream uses. */
  windowBits: number;
  bytes: Uint8Array;
  /** patch: the SHA-256 of the base it applies to. */
  baseSha256?: Uint8Array;
}

export interface MasterProgress {
  phase: 'open' | 'data' | 'end';
  /** OPENs sent so far (a retry per timeout while no device answers). */
  openAttempts: number;
  totalBytes: number;
  /** Bytes the device has acknowledged (including a resumed prefix). */
  ackedBytes: number;
  resumeOffset: number;
  retransmits: number;
}

/** What the device did with the image: a first install, an update of a running app, or nothing (it runs it). */
export type FlashVerdict = 'installed' | 'updated' | 'current';

export interface FlashOutcome {
  outcome: FlashVerdict;
  pid: number;
  appName: string;
  /** The image the device runs now (for `current`: the one it already ran). Version 1 devices say only pid and name. */
  image: ImageInfo;
  /** For `updated`: the image it replaced. */
  from: ImageInfo | null;
  /** The update was committed in test mode and waits for the device's confirm window. */
  confirmPending: boolean;
  /** Flash slot the device committed the image to (null: no flash, `current`, or a version 1 device). */
  slot: 'A' | 'B' | null;
  protocolVersion: number;
  /** Bytes of the stream sent (the image, or its compressed/patch encoding). */
  totalBytes: number;
  /** The image's own size. */
  imageBytes: number;
  /** How the stream encoded the image. */
  encoding: 'raw' | 'deflate' | 'patch';
  chunkSize: number;
  window: number;
  /** Where the transfer started (> 0 when the device resumed a partial). */
  resumeOffset: number;
  /** Time the master had a full window and waited for the device's ACKs (the device was the bottleneck). */
  windowStallMs: number;
  /** Image bytes put in DATA frames, retransmissions included. */
  dataBytesSent: number;
  dataFramesSent: number;
  retransmits: number;
  timeouts: number;
  naks: number;
  elapsedMs: number;
  /** Sessions given up and started again, in order (empty on a clean line). */
  restarts: SessionRestart[];
}

type Phase = 'opening' | 'data' | 'ending' | 'done';

/** How long a failing transfer waits for its ABORT to be written (the rest of one 16 KiB batch at 115200 baud takes ~1.4 s). */
const ABORT_WAIT_MS = 1500;

/** Frames are not made smaller than this for a lossy line (12 bytes of header and CRC are ~5% of it). */
export const ADAPTIVE_MIN_CHUNK = 256;
/** A session is given up for smaller frames only after this many NAKed retransmissions (not on one burst of noise)… */
const ADAPT_AFTER_RETRANSMITS = 8;
/** …or after this many retransmission timeouts in a row without progress. */
const ADAPT_AFTER_TIMEOUTS = 3;

/** A transfer gives up after this many `device_stalled` restarts in a row without progress. */
const MAX_STALLED_RESTARTS = 3;

/**
 * Frames acknowledged in a row, none resent, before the master tries frames four times the size.
 * 32 clean frames put the loss rate at this size below a few percent, so frames four times the size
 * should still mostly get through. Each time a larger size proves lossy again, twice as many.
 */
const GROW_AFTER_CLEAN_FRAMES = 32;
/** Growing is not worth a new session when fewer than this many larger frames would be left. */
const GROW_MIN_FRAMES_LEFT = 4;

/** A larger frame size the session moves to once `afterFrames` frames in a row got through. */
interface GrowPlan {
  to: number;
  afterFrames: number;
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** What OPEN announces, computed once per transfer (not per session). */
interface Announce {
  crc32: number;
  sha256: Buffer;
  imageBytes: number;
  encoding: StreamEncoding | null;
}

export async function sendImage(transport: Transport<Frame, Frame>, image: Uint8Array, options: MasterOptions = {}): Promise<Result<FlashOutcome, UartError>> {
  const startedAt = Date.now();
  const enc = options.encoded;
  const announce: Announce = {
    crc32: crc32(image), sha256: createHash('sha256').update(image).digest(), imageBytes: image.length,
    encoding: enc ? { kind: enc.kind, windowBits: enc.kind === 'deflate' ? enc.windowBits : 0, streamBytes: enc.bytes.length, baseSha256: enc.baseSha256 ?? null } : null,
  };
  const stream = enc ? enc.bytes : image;
  // an encoded stream needs version 3; a raw one starts at the newest and steps down for older devices
  let version = enc ? CODEC_VERSION : options.protocolVersion ?? RAW_VERSION;
  const restarts: SessionRestart[] = [];
  const totals = { dataBytesSent: 0, dataFramesSent: 0, retransmits: 0, timeouts: 0, naks: 0, windowStallMs: 0 };
  const adapt = options.adaptChunk !== false;
  let chunkSize = options.chunkSize;
  let firstResume: number | null = null;
  let stalledInARow = 0;
  /** The frame size the device first agreed to: frames grow back up to it, never beyond. */
  let ceiling: number | null = null;
  let growAfter = GROW_AFTER_CLEAN_FRAMES;
  for (;;) {
    const grow: GrowPlan | null = adapt && ceiling !== null && chunkSize !== undefined && chunkSize < ceiling
      ? { to: Math.min(ceiling, chunkSize * 4), afterFrames: growAfter }
      : null;
    const session: MasterSession = new MasterSession(transport, stream, announce, version, chunkSize === undefined ? options : { ...options, chunkSize }, adapt, grow);
    const r = await session.run();
    if (!r.ok && r.error.remote && r.error.code === 'EPROTO' && r.error.reason === 'unsupported_version' && version > 1 && session.agreedChunk === null && !enc) {
      version -= 1; // an older device: ask again in its version (3 → 2 → 1)
      continue;
    }
    for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += session.stats[k];
    firstResume ??= session.resumedAt;
    ceiling ??= session.agreedChunk;
    if (r.ok) {
      return ok({ ...r.value, ...totals, resumeOffset: firstResume ?? r.value.resumeOffset, elapsedMs: Date.now() - startedAt, restarts });
    }
    const restart = session.restartFor(r.error);
    if (restart?.reason === 'device_stalled') stalledInARow = restart.ackedBytes > (restarts.at(-1)?.ackedBytes ?? -1) ? 1 : stalledInARow + 1;
    if (!restart || stalledInARow > MAX_STALLED_RESTARTS) {
      return restarts.length === 0 ? r : err({ ...r.error, detail: { ...r.error.detail, restarts } });
    }
    // A size that was grown into and proved lossy again: ask for a longer clean run next time.
    if (restart.reason === 'line_too_lossy' && restarts.some((c) => c.reason === 'line_recovered')) growAfter *= 2;
    restarts.push(restart);
    options.onRestart?.(restart);
    chunkSize = restart.to;
  }
}

class MasterSession {
  private readonly timing: MasterTiming;
  private readonly tag = randomInt(1, 256);
  private readonly nonce = randomInt(0, 2 ** 32);
  private readonly startedAt = Date.now();
  private phase: Phase = 'opening';
  private chunk = 0;
  private window = 0;
  private totalChunks = 0;
  private resumeOffset = 0;
  /** Cumulative ACK: every chunk below it is at the device. */
  private acked = 0;
  /** Next chunk never sent yet. */
  private next = 0;
  private readonly retxQueue: number[] = [];
  private readonly retxCount = new Map<number, number>();
  /** Frames queued for retransmission because a NAK named them (loss, not a slow device). */
  private readonly nakRequested = new Set<number>();
  /** Retransmissions a NAK asked for, in this session. */
  private nakRetransmits = 0;
  /** Frames past the cumulative ACK that a NAK showed the device holds (see onNak). */
  private readonly heldBeyondAck = new Set<number>();
  private pumping = false;
  private rto: number;
  /** Time spent waiting for ACCEPT so far (the waits of the OPENs already timed out). */
  private openWaitedMs = 0;
  private openAttempts = 1;
  private consecutiveTimeouts = 0;
  private timer: NodeJS.Timeout | null = null;
  private endDeadline = 0;
  readonly stats = { dataBytesSent: 0, dataFramesSent: 0, retransmits: 0, timeouts: 0, naks: 0, windowStallMs: 0 };
  /** Set when this session ended so that the transfer goes on in a new one (lineTooLossy, lineRecovered). */
  private restart: SessionRestart | null = null;
  /** Frames acknowledged since the last retransmission or timeout (see lineRecovered). */
  private cleanRun = 0;
  /** Once growing: no new frame at or past this one; the session ends when all before it are acknowledged. */
  private growStopAt: number | null = null;
  /** The device's resume offset, once ACCEPT named it. */
  resumedAt: number | null = null;
  /** The frame size the device agreed to (null before ACCEPT). */
  agreedChunk: number | null = null;
  /** When the window last filled up (the master waits for the device): 0 while not stalled. */
  private stalledSince = 0;
  private resolve!: (r: Result<FlashOutcome, UartError>) => void;
  private cleanup: Array<() => void> = [];
  private readonly openFrame: Frame;
  private readonly announced: { crc32: number; sha256: string };
  private readonly imageBytes: number;
  private readonly encodingName: 'raw' | 'deflate' | 'patch';
  private readonly proposed: { chunk: number; window: number };

  constructor(
    private readonly transport: Transport<Frame, Frame>,
    private readonly image: Uint8Array,
    announce: Announce,
    private readonly version: number,
    private readonly options: MasterOptions,
    private readonly adapt: boolean,
    private readonly grow: GrowPlan | null,
  ) {
    this.timing = { ...DEFAULT_MASTER_TIMING, ...options.timing };
    // Until ACCEPT, OPEN's own (short) timeout; progressed() sets the data RTO once the session is open.
    this.rto = Math.min(this.timing.rtoMs, this.timing.openRtoMs);
    this.proposed = {
      chunk: Math.max(MIN_CHUNK, Math.min(options.chunkSize ?? DEFAULT_CHUNK, 0xffff)),
      window: Math.max(1, Math.min(options.window ?? DEFAULT_WINDOW, 0xffff)),
    };
    this.announced = { crc32: announce.crc32, sha256: announce.sha256.toString('hex') };
    this.imageBytes = announce.imageBytes;
    this.encodingName = announce.encoding?.kind ?? 'raw';
    this.openFrame = {
      type: FrameType.OPEN, tag: this.tag, seq: this.nonce,
      payload: encodeOpen({
        version,
        chunkSize: this.proposed.chunk,
        window: this.proposed.window,
        totalBytes: announce.imageBytes,
        crc32: announce.crc32,
        sha256: announce.sha256,
        appName: options.appName ?? '',
        force: options.force === true,
        ...(announce.encoding ? { encoding: announce.encoding } : {}),
      }),
    };
  }

  run(): Promise<Result<FlashOutcome, UartError>> {
    return new Promise((resolve) => {
      this.resolve = resolve;
      if (this.image.length === 0 || this.image.length > 0xffffffff) {
        this.fail(uartError('EINVAL', 'open', 'bad_image_size', `image of ${this.image.length} bytes cannot be sent`), false);
        return;
      }
      this.cleanup.push(this.transport.receive((f) => this.onFrame(f)));
      const onStatus = (s: TransportStatus): void => {
        if (s.state === 'error' || s.state === 'closed') this.onLinkLost(s);
      };
      this.transport.on('status', onStatus);
      this.cleanup.push(() => this.transport.off('status', onStatus));
      const signal = this.options.signal;
      if (signal) {
        const onAbort = (): void => this.fail(uartError('ECANCELED', this.phaseName(), 'cancelled', 'transfer cancelled'), true);
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        this.cleanup.push(() => signal.removeEventListener('abort', onAbort));
      }
      this.progress();
      this.sendFrame(this.openFrame);
      this.armTimer();
    });
  }

  private phaseName(): string {
    return this.phase === 'opening' ? 'session' : this.phase === 'data' ? 'data' : 'end';
  }

  private onLinkLost(s: TransportStatus): void {
    const lost = (this.transport as { lost?: () => UartError | null }).lost?.();
    this.fail(lost ?? uartError('EIO', 'link', 'port_lost', `link lost: ${s.detail ?? s.state}`), false);
  }

  private sendFrame(frame: Frame): Promise<boolean> {
    return this.transport.send(frame).then(
      () => true,
      (e: unknown) => {
        const info = e instanceof UartLinkError ? e.info : uartError('EIO', 'link', 'write_failed', `write failed: ${String(e)}`);
        this.fail(info, false);
        return false;
      },
    );
  }

  private onFrame(f: Frame): void {
    if (this.phase === 'done' || f.tag !== this.tag) return;
    switch (f.type) {
      case FrameType.ACCEPT:
        if (this.phase === 'opening' && f.seq === this.nonce) this.onAccept(f);
        return;
      case FrameType.CURRENT:
        if (this.phase === 'opening' && f.seq === this.nonce && this.version >= 2) this.onCurrent(f);
        return;
      case FrameType.ACK:
        if (this.phase === 'data') this.onAck(f.seq);
        return;
      case FrameType.NAK:
        if (this.phase === 'data') this.onNak(f);
        return;
      case FrameType.RESULT:
        if (this.phase === 'ending') this.onResult(f);
        return;
      case FrameType.ERROR: {
        const e = decodeError(f.payload);
        if (!e.ok) {
          this.fail(uartError('EPROTO', this.phaseName(), 'bad_error_frame', `device sent an unreadable ERROR: ${e.error.message}`), true);
          return;
        }
        const { code, where, reason } = e.value;
        this.fail({ code, where, reason, remote: true, message: `device reported ${code} at ${where}: ${reason}` }, false);
        return;
      }
      default:
        return;
    }
  }

  private onAccept(f: Frame): void {
    const a = decodeAccept(f.payload);
    const proposed = this.proposed;
    if (!a.ok) {
      this.fail(uartError('EPROTO', 'session', 'bad_accept', `unreadable ACCEPT: ${a.error.message}`), true);
      return;
    }
    const { chunkSize, window, resumeOffset } = a.value;
    if (a.value.version !== this.version) {
      this.fail(uartError('EPROTO', 'session', 'bad_accept', `device answered a version ${this.version} OPEN in version ${a.value.version}`), true);
      return;
    }
    if (chunkSize < MIN_CHUNK || chunkSize > proposed.chunk || window < 1 || window > proposed.window
        || resumeOffset % chunkSize !== 0 || resumeOffset > this.image.length) {
      this.fail(uartError('EPROTO', 'session', 'bad_accept', `device answered chunk ${chunkSize}, window ${window}, resume ${resumeOffset}: outside what was offered`), true);
      return;
    }
    this.chunk = chunkSize;
    this.agreedChunk = chunkSize;
    this.window = window;
    this.resumeOffset = resumeOffset;
    this.totalChunks = Math.ceil(this.image.length / chunkSize);
    this.acked = this.next = resumeOffset / chunkSize;
    this.resumedAt = resumeOffset;
    this.phase = 'data';
    this.progressed();
    this.progress();
    void this.pump();
  }

  private onAck(seq: number): void {
    if (seq <= this.acked || seq > this.next) return;
    this.cleanRun += seq - this.acked;
    this.acked = seq;
    if (this.stalledSince !== 0) {
      this.stats.windowStallMs += performance.now() - this.stalledSince;
      this.stalledSince = 0;
    }
    while (this.retxQueue.length && this.retxQueue[0]! < seq) this.retxQueue.shift();
    for (const s of this.retxCount.keys()) if (s < seq) this.retxCount.delete(s);
    for (const s of this.heldBeyondAck) if (s < seq) this.heldBeyondAck.delete(s);
    for (const s of this.nakRequested) if (s < seq) this.nakRequested.delete(s);
    this.progressed();
    this.progress();
    if (this.lineRecovered()) return;
    void this.pump();
  }

  private onNak(f: Frame): void {
    this.stats.naks++;
    const missing = decodeMissing(f.payload);
    this.onAck(f.seq);
    if (!missing.ok) return;
    for (const seq of missing.value) {
      if (seq >= this.acked && seq < this.next && !this.retxQueue.includes(seq)) {
        this.retxQueue.push(seq);
        this.nakRequested.add(seq);
      }
    }
    // The device holds every frame between the cumulative ACK and its highest missing one that it
    // did not name: delivered, though not yet acknowledged (a hole holds the cumulative ACK back).
    if (missing.value.length > 0) {
      const named = new Set(missing.value);
      const top = Math.min(Math.max(...missing.value), this.next - 1);
      for (let seq = this.acked; seq < top; seq++) if (!named.has(seq)) this.heldBeyondAck.add(seq);
    }
    void this.pump();
  }

  /** Sends what the window allows: requested retransmissions first, then new frames. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.phase === 'data') {
        const again = this.retxQueue.shift();
        if (again !== undefined) {
          if (again >= this.acked && again < this.next && !(await this.sendData(again, true))) return;
          continue;
        }
        if (this.next < this.totalChunks && this.next < this.acked + this.window && (this.growStopAt === null || this.next < this.growStopAt)) {
          if (!(await this.sendData(this.next++, false))) return;
          continue;
        }
        if (this.next < this.totalChunks && this.next >= this.acked + this.window && this.stalledSince === 0) this.stalledSince = performance.now();
        break;
      }
    } finally {
      this.pumping = false;
    }
    if (this.phase === 'data' && this.acked === this.totalChunks) this.startEnd();
  }

  private async sendData(seq: number, retransmit: boolean): Promise<boolean> {
    if (retransmit) {
      const n = (this.retxCount.get(seq) ?? 0) + 1;
      if (n > this.timing.maxFrameRetransmits) {
        this.fail(uartError('ETIMEDOUT', 'data', 'retry_limit', `frame ${seq} was retransmitted ${n - 1} times without being acknowledged`, { seq }), true);
        return false;
      }
      this.retxCount.set(seq, n);
      this.stats.retransmits++;
      // Loss again: stay with this size (and let the window fill again).
      this.cleanRun = 0;
      this.growStopAt = null;
      if (this.nakRequested.delete(seq)) this.nakRetransmits++;
      if (this.lineTooLossy()) return false;
    }
    const start = seq * this.chunk;
    const payload = this.image.subarray(start, Math.min(start + this.chunk, this.image.length));
    this.stats.dataBytesSent += payload.length;
    this.stats.dataFramesSent++;
    if (!this.timer) this.armTimer();
    return this.sendFrame({ type: FrameType.DATA, tag: this.tag, seq, payload });
  }

  /**
   * Whether frames of this size get through less than half the time. Evidence: the device asked
   * (NAK) for more frames again than it received, or three retransmission timeouts passed in a row
   * without any progress (the frame resent each time was lost again: a device that is merely slow
   * answers a resent frame it already holds with an ACK). With frames a quarter the size each has a
   * far better chance (at 1e-3 errors per byte: 2% for 4 KiB, 77% for 256 bytes), so the session
   * ends here and sendImage starts over with smaller frames; the device keeps what it has and
   * resumes.
   */
  private lineTooLossy(): boolean {
    if (!this.adapt || this.chunk <= ADAPTIVE_MIN_CHUNK) return false;
    const delivered = this.deliveredFrames();
    const nakEvidence = this.nakRetransmits >= ADAPT_AFTER_RETRANSMITS && this.nakRetransmits > delivered;
    const silenceEvidence = this.consecutiveTimeouts >= ADAPT_AFTER_TIMEOUTS;
    if (!nakEvidence && !silenceEvidence) return false;
    const to = Math.max(ADAPTIVE_MIN_CHUNK, Math.floor(this.chunk / 4));
    const retransmits = this.stats.retransmits;
    this.endForRestart({ reason: 'line_too_lossy', from: this.chunk, to, ackedBytes: this.ackedBytes(), retransmits, delivered },
      `${retransmits} frames resent for ${delivered} delivered with ${this.chunk}-byte frames`);
    return true;
  }

  /**
   * After an ACK: whether this session ends so the next can use larger frames (GrowPlan). Once
   * `afterFrames` frames got through in a row, the master sends no frame past a point where the
   * larger size lines up (a multiple of both sizes), so the next session resumes exactly there and
   * nothing is sent twice; when everything before it is acknowledged, the session ends.
   */
  private lineRecovered(): boolean {
    const grow = this.grow;
    if (!grow || grow.to <= this.chunk) return false;
    if (this.growStopAt === null) {
      if (this.cleanRun < grow.afterFrames) return false;
      const step = (this.chunk * grow.to) / gcd(this.chunk, grow.to);
      const stopBytes = Math.ceil((this.next * this.chunk) / step) * step;
      if (this.image.length - stopBytes < GROW_MIN_FRAMES_LEFT * grow.to) return false;
      this.growStopAt = stopBytes / this.chunk;
    }
    if (this.acked < this.growStopAt) return false;
    this.endForRestart({ reason: 'line_recovered', from: this.chunk, to: grow.to, ackedBytes: this.ackedBytes(), retransmits: this.stats.retransmits, delivered: this.deliveredFrames() },
      `${this.cleanRun} frames in a row got through with ${this.chunk}-byte frames`);
    return true;
  }

  /** Ends this session (ABORT to the device, which keeps what it has) for sendImage to start the next. */
  private endForRestart(restart: SessionRestart, message: string): void {
    this.restart = restart;
    this.fail(uartError('EIO', 'data', restart.reason, message), true);
  }

  /** Frames of this session the device has: acknowledged, or shown held by a NAK (see onNak). */
  private deliveredFrames(): number {
    return this.acked - this.resumeOffset / this.chunk + this.heldBeyondAck.size;
  }

  private ackedBytes(): number {
    return Math.min(this.acked * this.chunk, this.image.length);
  }

  /** Whether the transfer should go on in a new session after this one ended with `e` (see SessionRestart). */
  restartFor(e: UartError): SessionRestart | null {
    if (this.restart) return this.restart;
    // The engine's write timeout, reported by the device while data was flowing: not a verdict on
    // the image. The device keeps what it acknowledged (only EBADMSG discards it).
    // Likewise a session the device aborted (it heard nothing for its idle timeout): it kept the bytes.
    if (e.remote && ((e.code === 'ETIMEDOUT' && e.reason === 'write_timeout') || (e.code === 'ECANCELED' && e.reason === 'session_aborted')) && this.chunk > 0) {
      return { reason: 'device_stalled', from: this.chunk, to: this.chunk, ackedBytes: this.ackedBytes(), retransmits: this.stats.retransmits, delivered: this.deliveredFrames() };
    }
    return null;
  }

  private startEnd(): void {
    this.phase = 'ending';
    this.endDeadline = Date.now() + this.timing.endTimeoutMs;
    this.progressed();
    this.progress();
    void this.sendFrame({ type: FrameType.END, tag: this.tag, seq: this.totalChunks, payload: new Uint8Array(0) });
  }

  /** The device already runs this image: nothing moves, the transfer ends here with CURRENT. */
  private onCurrent(f: Frame): void {
    const c = decodeCurrent(f.payload);
    if (!c.ok) {
      this.fail(uartError('EPROTO', 'session', 'bad_current', `unreadable CURRENT: ${c.error.message}`), true);
      return;
    }
    if (c.value.sha256 !== this.announced.sha256) {
      this.fail(uartError('EPROTO', 'session', 'bad_current', `device answered CURRENT for SHA-256 ${c.value.sha256}, the image is ${this.announced.sha256}`), true);
      return;
    }
    this.finish(ok(this.outcome('current', c.value, null, false, null)));
  }

  private onResult(f: Frame): void {
    if (this.version < 2) {
      const r = decodeResultV1(f.payload);
      if (!r.ok) {
        this.fail(uartError('EPROTO', 'end', 'bad_result', `unreadable RESULT: ${r.error.message}`), true);
        return;
      }
      // A version 1 device says only READY: pid and name.
      const image: ImageInfo = { pid: r.value.pid, appName: r.value.appName, version: '', ...this.announced };
      this.finish(ok(this.outcome('installed', image, null, false, null)));
      return;
    }
    const r = decodeResult(f.payload);
    if (!r.ok) {
      this.fail(uartError('EPROTO', 'end', 'bad_result', `unreadable RESULT: ${r.error.message}`), true);
      return;
    }
    this.finish(ok(this.outcome(r.value.outcome, r.value.image, r.value.from, r.value.confirmPending, r.value.slot)));
  }

  private outcome(outcome: FlashVerdict, image: ImageInfo, from: ImageInfo | null, confirmPending: boolean, slot: 'A' | 'B' | null): FlashOutcome {
    return {
      outcome, pid: image.pid, appName: image.appName, image, from, confirmPending, slot, protocolVersion: this.version,
      totalBytes: this.image.length, imageBytes: this.imageBytes, encoding: this.encodingName, chunkSize: this.chunk, window: this.window,
      resumeOffset: this.resumeOffset, ...this.stats, elapsedMs: Date.now() - this.startedAt, restarts: [],
    };
  }

  /** Progress resets the back-off and the retry budget. */
  private progressed(): void {
    this.rto = this.timing.rtoMs;
    this.consecutiveTimeouts = 0;
    this.armTimer();
  }

  private armTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.phase === 'done') return;
    if (this.phase === 'data' && this.acked === this.next) return; // nothing in flight
    // After END the verdict deadline cuts the last wait short, so `no_verdict` fires at END +
    // endTimeoutMs, not at the first backed-off timeout after it.
    const wait = this.phase === 'ending' ? Math.max(0, Math.min(this.rto, this.endDeadline - Date.now())) : this.rto;
    this.timer = setTimeout(() => this.onTimeout(), wait);
  }

  private onTimeout(): void {
    this.timer = null;
    if (this.phase === 'done') return;
    this.stats.timeouts++;
    this.consecutiveTimeouts++;
    this.cleanRun = 0;
    this.growStopAt = null;
    if (this.phase === 'ending') {
      if (Date.now() >= this.endDeadline - 1) { // a timer may fire up to 1 ms before its time
        this.fail(uartError('ETIMEDOUT', 'end', 'no_verdict', `the device gave no verdict within ${this.timing.endTimeoutMs} ms after END`), true);
        return;
      }
    } else if (this.phase === 'opening' && this.openWaitedMs + this.rto >= this.timing.openBudgetMs) {
      this.fail(uartError('ETIMEDOUT', 'session', 'no_listener',
        `no device answered OPEN within ${Math.round((this.openWaitedMs + this.rto) / 100) / 10} s (${this.consecutiveTimeouts} attempts)`), true);
      return;
    } else if (this.consecutiveTimeouts > this.timing.maxRetries) {
      const where = this.phaseName();
      const reason = this.phase === 'opening' ? 'no_listener' : 'retry_limit';
      this.fail(uartError('ETIMEDOUT', where, reason, this.phase === 'opening'
        ? `no device answered OPEN after ${this.timing.maxRetries + 1} attempts`
        : `no acknowledgement after ${this.timing.maxRetries} retransmission timeouts (at byte ${this.acked * this.chunk} of ${this.image.length})`), true);
      return;
    }
    if (this.phase === 'opening') {
      // OPEN backs off to maxRtoMs, and its last wait ends where the open budget does.
      this.openWaitedMs += this.rto;
      this.rto = Math.min(this.rto * 2, this.timing.maxRtoMs, this.timing.openBudgetMs - this.openWaitedMs);
      this.openAttempts++;
      this.progress();
      void this.sendFrame(this.openFrame);
      this.armTimer();
      return;
    }
    // Back-off never shrinks the timeout: a slow line's first RTO (rtoForLine) may exceed maxRtoMs.
    this.rto = Math.min(this.rto * 2, Math.max(this.timing.maxRtoMs, this.timing.rtoMs));
    if (this.phase === 'ending') void this.sendFrame({ type: FrameType.END, tag: this.tag, seq: this.totalChunks, payload: new Uint8Array(0) });
    else if (!this.retxQueue.includes(this.acked)) {
      this.retxQueue.unshift(this.acked);
      void this.pump();
    }
    this.armTimer();
  }

  private progress(): void {
    this.options.onProgress?.({
      phase: this.phase === 'opening' ? 'open' : this.phase === 'data' ? 'data' : 'end',
      openAttempts: this.openAttempts,
      totalBytes: this.image.length,
      ackedBytes: Math.min(this.acked * this.chunk, this.image.length),
      resumeOffset: this.resumeOffset,
      retransmits: this.stats.retransmits,
    });
  }

  private fail(e: UartError, tellDevice: boolean): void {
    if (this.phase === 'done') return;
    this.stop();
    if (!tellDevice) {
      this.resolve(err(e));
      return;
    }
    // Best effort: the device aborts its engine session now instead of waiting for its idle
    // timeout. The ABORT goes ahead of the DATA still queued (the transport's urgent frames), and
    // the verdict waits until it is written — at most ABORT_WAIT_MS, for a line that no longer
    // moves — so a caller that closes the port right after does not lose it.
    const sent = this.transport.send({ type: FrameType.ABORT, tag: this.tag, seq: 0, payload: encodeAbort(e.reason) }).catch(() => {});
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise((r) => { timer = setTimeout(r, ABORT_WAIT_MS); });
    void Promise.race([sent, waited]).then(() => {
      clearTimeout(timer);
      this.resolve(err(e));
    });
  }

  private finish(r: Result<FlashOutcome, UartError>): void {
    if (this.phase === 'done') return;
    this.stop();
    this.resolve(r);
  }

  private stop(): void {
    this.phase = 'done';
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const c of this.cleanup) c();
    this.cleanup = [];
  }
}
