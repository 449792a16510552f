/**
 * The master side of every link, as one interface: flash one image to a set of targets on one
 * link, report progress and a verdict per target, cancel through an AbortSignal. The CAN broadcast
 * master (can/flasher.ts) and the UART master (uart/flasher.ts) implement it; the `flash` CLI and
 * the daemon's job runner (gateway/jobs) both call it, so whatever one can do the other can.
 *
 * A target is named by a string: the CAN node id in decimal ("7"), or, on a UART link (one device
 * per cable), the link's single target "1".
 */

/** What a target did with the image. */
export type TargetOutcome = 'installed' | 'updated' | 'current';

/** How a target's transfer ended. `ok` verdicts carry an outcome; the others an error code and reason. */
export type TargetVerdict =
  | {
      target: string;
      ok: true;
      outcome: TargetOutcome;
      /** SHA-256 (hex; a prefix where the link carries only one) of the image the target ran before. */
      from: string | null;
      /** SHA-256 (hex, or a prefix) of the image it runs now. */
      to: string | null;
      /** The update waits for the device's confirm window (UART says so; CAN does not carry it: false). */
      confirmPending: boolean;
      /** How the image went (issue 25): absent where the link does not plan transfers. */
      transfer?: TransferReport;
    }
  | {
      target: string;
      ok: false;
      /** errno-style code: ETIMEDOUT (the target went silent), ECANCELED (cancelled), EBADMSG, EEXIST, ... */
      code: string;
      /** Where it failed: announce, data, verify, register, persist, ... */
      where: string;
      reason: string;
      message: string;
    };

/** How an image went to a target: what was planned and the bytes it cost. */
export interface TransferReport {
  /** current: nothing sent; delta: a patch from `base`; compressed: the deflated image; raw: the image. */
  mode: 'current' | 'delta' | 'compressed' | 'raw';
  /** The base a delta applied to (SHA-256 hex), else null. */
  base: string | null;
  image_bytes: number;
  /** Bytes of the stream the mode sends (patch, compressed or raw image; 0 for current). */
  stream_bytes: number;
  /** Stream bytes put in data frames in this transfer, retransmissions included (less when resumed). */
  bytes_on_wire: number;
  /** bytes_on_wire / image_bytes. */
  ratio: number;
  /** Why the first plan was given up (`base_mismatch`: the device does not run the patch's base). */
  fallback?: string;
}

/** Options every flasher takes; a link ignores what it has no use for (FD on UART, window units differ). */
export interface FlashOptions {
  /** Send even to targets that already run the image (they update instead of answering CURRENT). */
  force?: boolean;
  /** UART: bytes per DATA frame. */
  chunk?: number;
  /** Frames in flight (UART) or data frames per flow-control window (CAN). */
  window?: number;
  /** CAN FD: 64-byte data frames (the bus must be opened with FD). */
  fd?: boolean;
  /** CAN: base timeout for joins, acks and reports (doubled per retry). UART: retransmission timeout. */
  timeoutMs?: number;
  /** CAN: retries before a silent node is dropped with ETIMEDOUT. */
  retries?: number;
  /** CAN: session id 1..255 (random when absent). */
  session?: number;
  /** Send the compressed image to targets that decode it (default true). */
  compress?: boolean;
  /** Send a delta patch where the store holds the base the target runs (default true). */
  delta?: boolean;
}

/** Progress of one target: bytes it has acknowledged of the image. */
export interface TargetProgress {
  target: string;
  /** Where the target is: waiting to join/open, data, repair, done. */
  phase: 'announce' | 'data' | 'repair' | 'done';
  ackedBytes: number;
  totalBytes: number;
}

export interface FlashProgress {
  /** Link-level phase (the CAN broadcast has one for all targets). */
  phase: 'announce' | 'data' | 'repair' | 'done';
  /** Image bytes sent so far (the data pass; repairs not counted twice). */
  sentBytes: number;
  totalBytes: number;
  targets: TargetProgress[];
  /** Verdicts reached so far, in the order they arrived. */
  verdicts: TargetVerdict[];
}

export interface FlashRequest {
  image: Uint8Array;
  /** The image's app name (UART announces it; informational). */
  appName?: string;
  targets: readonly string[];
  options?: FlashOptions;
  onProgress?: (p: FlashProgress) => void;
  /** Aborting cancels the transfer: targets without a verdict get ECANCELED and keep their old image. */
  signal?: AbortSignal;
}

export interface FlashResult {
  /** One verdict per requested target, in the order requested. */
  verdicts: TargetVerdict[];
  /** Link-specific counters (frames, retransmits, rounds...), for `--json` and benchmarks. */
  stats: Record<string, unknown>;
  elapsedMs: number;
}

/** What one target answered to a scan (`hsx-gateway scan`, the daemon's inventory). */
export interface InventoryEntry {
  target: string;
  /** The app it runs, or null when it runs none. */
  app_name: string | null;
  version: string | null;
  /** SHA-256 (hex) of the image it runs. */
  sha256: string | null;
  /** Flash slots A and B: what each holds (`empty`, `test`, `good`) and which one is active. */
  slots: Array<{ slot: 'A' | 'B'; state: 'empty' | 'test' | 'good'; active: boolean; sha256: string | null; version: string | null }>;
  /** Bytes one flash slot holds: the largest image the target can take. */
  slot_bytes: number | null;
}

export interface ScanOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * Only these targets (CAN: the scan ends as soon as each answered, instead of waiting out the
   * timeout for nodes nobody knows of). Absent: every target that answers.
   */
  targets?: readonly string[];
}

export interface Flasher {
  /** The link's name (config `name`, else its interface or port). */
  readonly link: string;
  readonly kind: 'can' | 'uart';
  /**
   * Flashes and resolves with every target's verdict; it does not reject for a target's failure
   * (that is a verdict). It rejects only for a bad request (no targets, a target the link cannot
   * address): a RangeError naming the field.
   */
  flash(req: FlashRequest): Promise<FlashResult>;
  /** A target name the link can address, or why not (for submit-time validation). */
  checkTarget(target: string): string | null;
  /** Which targets answer on the link and what each runs (CAN: every node id that answers; UART: the one device). */
  scan?(options?: ScanOptions): Promise<InventoryEntry[]>;
  close(): Promise<void>;
}

/** The verdict a job records for a target: SKIPPED for `current`, TIMED_OUT for ETIMEDOUT, ... */
export function isCancelled(v: TargetVerdict): boolean {
  return !v.ok && v.code === 'ECANCELED';
}

/**
 * One use of a link at a time: a scan and a transfer (or two transfers) on one bus or cable would
 * interleave their frames. Each flasher runs `flash` and `scan` through its own lock, so callers
 * (a job, the daemon's inventory refresh, the CLI) need not coordinate.
 */
export class LinkLock {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}
