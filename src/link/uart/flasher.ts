/**
 * The UART link's `Flasher`: one device per cable, so exactly one target, "1". A `flash()` is one
 * `sendImage` (master.ts) over the link's Transport of Frames.
 *
 * The transport is the caller's: `new UartFlasher({ name, transport })` uses an open transport and
 * `close()` leaves it open; `UartFlasher.open(name, { path, baudRate })` opens a serial port
 * (UartPortTransport) and closes it in `close()`.
 *
 * Verdicts: the device's outcome (installed, updated, current) with from/to the full SHA-256 of the
 * images it ran and runs, and whether the update waits for its confirm window; a failure carries the
 * UartError's code, where, reason and message (a cancelled transfer: ECANCELED, the device told
 * ABORT, keeping the image it ran).
 */
import { chooseTransfer, type DeviceCodecState, type ImageSource, type TransferChoice } from '../delta/index.js';
import { LinkLock, type TransferReport, type Flasher, type FlashProgress, type FlashRequest, type FlashResult, type InventoryEntry, type ScanOptions, type TargetProgress, type TargetVerdict } from '../flasher.js';
import { queryCodec, scanUart } from './scan.js';
import type { Transport } from '../transport.js';
import type { UartError } from './errors.js';
import type { Frame } from './frame.js';
import { sendImage, type FlashOutcome, type MasterOptions, type MasterProgress, type SessionRestart } from './master.js';
import { UartPortTransport } from './port-transport.js';
import { DEFAULT_BAUD, DEFAULT_CHUNK, DEFAULT_MASTER_TIMING, DEFAULT_WINDOW, rtoForLine } from './settings.js';

/** The one target a UART link addresses. */
export const UART_TARGET = '1';

export interface UartFlasherOptions {
  /** The link's name (config `name`, else the port). */
  name: string;
  /** An open transport; `close()` does not close it. */
  transport: Transport<Frame, Frame>;
  /** The line's baud rate, for the default retransmission timeout (default DEFAULT_BAUD). */
  baudRate?: number;
  /**
   * The content-addressed image store (src/link/delta/image-store.ts): every image flashed goes in,
   * and a base the device runs is looked up there for a delta. Without one: compressed or raw only.
   */
  images?: ImageSource;
  /** How long to wait for the INFO (version 3) answer before data moves (default 500 ms, asked twice). */
  infoTimeoutMs?: number;
}

/** What the UART flasher takes beyond `FlashRequest` (the CLI's display uses the link's own view). */
export interface UartFlashRequest extends FlashRequest {
  /** The UART master's own progress (resume offset, retransmits). */
  onLinkProgress?: (p: MasterProgress) => void;
  /** A session given up and started again (lossy line, stalled device). */
  onRestart?: (r: SessionRestart) => void;
}

export interface UartFlashResult extends FlashResult {
  /** What sendImage resolved with: the outcome, or the error (exactly one is set). */
  outcome: FlashOutcome | null;
  error: UartError | null;
  /** The plan and what it cost (also in the verdict when ok). */
  transfer: TransferReport | null;
}

export class UartFlasher implements Flasher {
  readonly kind = 'uart' as const;
  readonly link: string;
  readonly transport: Transport<Frame, Frame>;
  private readonly baudRate: number;
  private readonly ownsTransport: boolean;
  private closed = false;
  private readonly lock = new LinkLock();
  private readonly images: ImageSource | null;
  private readonly infoTimeoutMs: number;

  constructor(options: UartFlasherOptions, internal: { ownsTransport?: boolean } = {}) {
    this.link = options.name;
    this.transport = options.transport;
    this.baudRate = options.baudRate ?? DEFAULT_BAUD;
    this.ownsTransport = internal.ownsTransport === true;
    this.images = options.images ?? null;
    this.infoTimeoutMs = options.infoTimeoutMs ?? 500;
  }

  /** Opens the serial port and owns it (`close()` closes it). Rejects with a UartLinkError (its `info` says why). */
  static async open(name: string, port: { path: string; baudRate?: number }, extra: Pick<UartFlasherOptions, 'images' | 'infoTimeoutMs'> = {}): Promise<UartFlasher> {
    const baudRate = port.baudRate ?? DEFAULT_BAUD;
    const transport = new UartPortTransport({ path: port.path, baudRate });
    await transport.open();
    return new UartFlasher({ name, transport, baudRate, ...extra }, { ownsTransport: true });
  }

  checkTarget(target: string): string | null {
    return target === UART_TARGET ? null : `a UART link has one target, "${UART_TARGET}", got ${JSON.stringify(target)}`;
  }

  flash(req: UartFlashRequest): Promise<UartFlashResult> {
    return this.lock.run(() => this.transfer(req));
  }

  /** The device on the cable and what it runs (INFO, src/link/uart/scan.ts), between transfers. */
  scan(options: ScanOptions = {}): Promise<InventoryEntry[]> {
    if (this.closed) return Promise.reject(new Error(`${this.link}: the flasher is closed`));
    const { targets: _one, ...rest } = options; // one device per cable: always the whole scan
    return this.lock.run(() => scanUart(this.transport, rest));
  }

  private async transfer(req: UartFlashRequest): Promise<UartFlashResult> {
    if (this.closed) throw new Error(`${this.link}: the flasher is closed`);
    if (!Array.isArray(req.targets) || req.targets.length === 0) throw new RangeError(`targets: the UART link's target "${UART_TARGET}" is required`);
    for (const t of req.targets) {
      const bad = this.checkTarget(t);
      if (bad) throw new RangeError(`targets: ${bad}`);
    }
    if (req.targets.length > 1) throw new RangeError(`targets: a UART link has one target, "${UART_TARGET}", named once`);
    if (req.image.length === 0) throw new RangeError('image: empty');
    const o = req.options ?? {};
    const chunk = o.chunk ?? DEFAULT_CHUNK;
    const window = o.window ?? DEFAULT_WINDOW;
    const rtoMs = o.timeoutMs ?? rtoForLine(this.baudRate, chunk, window, DEFAULT_MASTER_TIMING.rtoMs);
    const started = performance.now();
    // Every image flashed goes into the store: the next update of this device can be a delta from it.
    if (this.images) await this.images.put(req.image).catch(() => undefined);
    // Before data moves: what the device runs and what it decodes (INFO version 3). An older device
    // (or --no-compress --no-delta) gets the raw image in the version it speaks.
    let device: DeviceCodecState = { sha256: null, codec: null };
    if (o.compress !== false || o.delta !== false) {
      const q = await queryCodec(this.transport, { timeoutMs: this.infoTimeoutMs, ...(req.signal ? { signal: req.signal } : {}) });
      if (q.ok) device = { sha256: q.info.sha256, codec: q.info.codec ?? null };
    }
    const choose = (excludeBase?: string): Promise<TransferChoice> => chooseTransfer(req.image, device, this.images, {
      compress: o.compress !== false, delta: o.delta !== false, force: o.force === true, ...(excludeBase ? { excludeBase } : {}),
    });
    let choice = await choose();
    // The Flasher's progress counts image bytes (as every link's does): the device's acknowledged share
    // of the encoded stream, scaled to the image; the link's own progress (onLinkProgress) counts stream bytes.
    const totalBytes = req.image.length;
    let streamBytes = choice.encoded?.bytes.length ?? req.image.length;
    const asImage = (acked: number): number => (streamBytes > 0 ? Math.min(totalBytes, Math.floor((acked * totalBytes) / streamBytes)) : 0);
    let ackedBytes = 0;
    const options: MasterOptions = {
      chunkSize: chunk, window, force: o.force === true, timing: { rtoMs },
      onProgress: (p) => {
        ackedBytes = asImage(p.ackedBytes);
        req.onLinkProgress?.(p);
        req.onProgress?.(progressOf(p.phase === 'open' ? 'announce' : 'data', ackedBytes, totalBytes, []));
      },
    };
    if (req.appName !== undefined) options.appName = req.appName;
    if (req.onRestart) options.onRestart = req.onRestart;
    if (req.signal) options.signal = req.signal;
    let r = await sendImage(this.transport, req.image, choice.encoded ? { ...options, encoded: choice.encoded } : options);
    let fallback: string | undefined;
    if (!r.ok && r.error.remote && (r.error.reason === 'base_mismatch' || r.error.reason === 'base_size_mismatch') && choice.mode === 'delta') {
      // The device's active slot does not hash to the base it said it runs: never a patch for another
      // base; it gets the full image.
      fallback = 'base_mismatch';
      choice = await choose(choice.base ?? undefined);
      streamBytes = choice.encoded?.bytes.length ?? req.image.length;
      r = await sendImage(this.transport, req.image, choice.encoded ? { ...options, encoded: choice.encoded } : options);
    }
    const transfer = r.ok ? reportOf(choice, r.value, req.image.length, fallback) : null;
    const verdict: TargetVerdict = r.ok ? okVerdict(r.value, transfer!) : failVerdict(r.error);
    req.onProgress?.(progressOf('done', r.ok ? totalBytes : ackedBytes, totalBytes, [verdict]));
    return {
      verdicts: [verdict],
      stats: r.ok ? statsOf(r.value) : { restarts: Array.isArray(r.error.detail?.['restarts']) ? (r.error.detail['restarts'] as unknown[]).length : 0 },
      elapsedMs: performance.now() - started,
      outcome: r.ok ? r.value : null,
      error: r.ok ? null : r.error,
      transfer,
    };
  }

  /** Closes the transport only when `UartFlasher.open` opened it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsTransport) await this.transport.close();
  }
}

function reportOf(choice: TransferChoice, r: FlashOutcome, imageBytes: number, fallback?: string): TransferReport {
  const current = r.outcome === 'current';
  const mode = current ? 'current' : choice.mode === 'current' ? 'raw' : choice.mode;
  const stream = current ? 0 : r.totalBytes;
  const wire = current ? 0 : r.dataBytesSent;
  const t: TransferReport = {
    mode, base: mode === 'delta' ? choice.base : null, image_bytes: imageBytes, stream_bytes: stream, bytes_on_wire: wire,
    ratio: imageBytes > 0 ? Math.round((wire / imageBytes) * 10000) / 10000 : 0,
  };
  if (fallback) t.fallback = fallback;
  return t;
}

function okVerdict(r: FlashOutcome, transfer: TransferReport): TargetVerdict {
  const to = r.image.sha256 || null;
  const from = r.outcome === 'current' ? to : (r.from?.sha256 || null);
  return { target: UART_TARGET, ok: true, outcome: r.outcome, from, to, confirmPending: r.confirmPending, transfer };
}

function failVerdict(e: UartError): TargetVerdict {
  return { target: UART_TARGET, ok: false, code: e.code, where: e.where, reason: e.reason, message: e.message };
}

function statsOf(r: FlashOutcome): Record<string, unknown> {
  return {
    protocolVersion: r.protocolVersion, totalBytes: r.totalBytes, imageBytes: r.imageBytes, encoding: r.encoding, chunkSize: r.chunkSize, window: r.window, resumeOffset: r.resumeOffset,
    dataBytesSent: r.dataBytesSent, dataFramesSent: r.dataFramesSent, retransmits: r.retransmits, timeouts: r.timeouts, naks: r.naks,
    windowStallMs: r.windowStallMs, restarts: r.restarts.length, ms: r.elapsedMs,
  };
}

function progressOf(phase: FlashProgress['phase'], ackedBytes: number, totalBytes: number, verdicts: TargetVerdict[]): FlashProgress {
  const target: TargetProgress = { target: UART_TARGET, phase, ackedBytes, totalBytes };
  return { phase, sentBytes: ackedBytes, totalBytes, targets: [target], verdicts };
}
