/**
 * The device-side intake: the one place where an image offered to a device becomes its running
 * app, whatever carried it (a CAN broadcast, a UART session, the control port, a boot source).
 * Links only move bytes and report loss; the rules that must hold the same on every link live here
 * (docs/provisioning.md, "Updates"):
 *
 *   announce → already current? (answer CURRENT, no data moves) → bytes by offset → verify and
 *   admit (engine) → stage in the inactive slot (the running app keeps running; the bytes are
 *   checked against the announced SHA-256 before anything is erased) → switch → verdict:
 *   INSTALLED, UPDATED or CURRENT
 *
 * An update is committed in test mode with the replaced image as the rollback target and
 * confirmed once the new task has stayed up for the confirm window; a failure before the switch
 * leaves the old app running, registered and its slot untouched; a failure after it, or a task that
 * did not survive the window, rolls back to the old image and its values.
 */
import { createHash, type Hash } from 'node:crypto';
import { err, ok, type Result } from '../hxe/result.js';
import type { ProvisioningEngine, StagedLoad, TaskInfo, UpdatePolicy, WriteAck } from './engine.js';
import { engineError, type EngineError } from './errors.js';
import type { Clock, EventSink, TimerHandle } from './ports.js';
import { openTransferDecoder, type CodecError, type TransferDecoder, type TransferEncoding } from './codec/index.js';

export interface IntakeOptions {
  engine: ProvisioningEngine;
  clock: Clock;
  /** Where the intake's own events go (`provisioning.updated`, `value.dropped`): the engine's sink. */
  events: EventSink;
  /** What an image of a running app does by default: `replace` (update it, the default) or `reject`. */
  update?: UpdatePolicy;
  /** A test-committed update is confirmed once its task stayed loaded this long (default 10 s). */
  confirmWindowMs?: number;
  /**
   * What the device decodes (issue 25), the same for every link: a link tells masters (UART INFO and
   * ACCEPT, CAN next) and the intake refuses any other encoding. Default: deflate and patches, window 12,
   * 4096 bytes of decoder RAM. `false`: raw images only.
   */
  codec?: CodecCaps | false;
}

/** A device's decoding capabilities (docs/delta.md). */
export interface CodecCaps {
  deflate: boolean;
  patch: boolean;
  /** Largest deflate window (bits, ≤ 12). */
  maxWindowBits: number;
  /** RAM offered to the decoder and patch applier: the master picks the patch window from it. */
  ramBytes: number;
}

export const DEFAULT_CODEC_CAPS: CodecCaps = { deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096 };

/** What an image announces before its bytes move. */
export interface IntakeAnnounce {
  /** `can:IFACE`, `uart:PORT`, `control:PEER`, `sd:MANIFEST#ENTRY`, … */
  source: string;
  totalBytes: number;
  /** zlib CRC-32 of the whole stream, checked at the end. */
  crc32?: number;
  /** SHA-256 of the whole image (hex or 32 bytes): what "already current" compares and the bytes must match. */
  sha256?: string | Uint8Array;
  /** The name the sender gave (for its own messages): the task's name comes from the image header. */
  appName?: string;
  /** The version to record when the image carries no signature trailer. */
  version?: string;
  /** Receive even when the device already runs this image. */
  force?: boolean;
  /** Overrides the device's update policy for this image (the executive protocol's `load` rejects). */
  update?: UpdatePolicy;
  /**
   * Commit to the device's flash as part of the install (default true). The executive protocol's
   * `load` runs an image in RAM only; persisting is its own request (`provision.persist`).
   */
  persist?: boolean;
  /**
   * Commit a first install in test mode and confirm it after the window, as updates always are
   * (boot sources: an image that does not stay up is rolled back).
   */
  trial?: boolean;
  /** This image's confirm window, instead of the device's. */
  confirmWindowMs?: number;
  /** Recorded with the image in the store's manifest (boot sources). */
  bootPriority?: number;
  /**
   * How the bytes that follow encode the image (default raw). `totalBytes`, `crc32` and `sha256` stay
   * those of the decoded image; `streamBytes` is the length of the encoded stream, and `write` offsets
   * count in it. A patch also names its base (`baseSha256`): the intake refuses it before any data
   * unless the active slot's image hashes to exactly that.
   */
  encoding?: TransferEncoding;
  /** Length of the encoded stream (required unless the encoding is raw). */
  streamBytes?: number;
  /** A patch's base: the SHA-256 the device's active image must hash to. */
  baseSha256?: string | Uint8Array;
  /**
   * Asked after the image is verified and before anything is committed or switched, with the pids
   * of the running tasks the install would replace (empty for a new app): an error refuses the
   * install (the staged image is discarded, nothing running changes). The control port's pid locks.
   */
  admit?: (replaces: readonly number[]) => EngineError | null;
}

/** An image a device runs, as a master or a person wants to see it. */
export interface RunningImage {
  pid: number;
  appName: string;
  appVersion: string;
  sha256: string;
  crc32: number;
}

export type IntakeOpen =
  | { kind: 'current'; running: RunningImage }
  | { kind: 'receiving'; id: number };

export type IntakeOutcome = 'installed' | 'updated' | 'current';

/** What a device tells a scan (`hsx-gateway scan`, the daemon's inventory): the shape of link/flasher.ts `InventoryEntry` without its target. */
export interface DeviceInventory {
  /** The app it runs (`primary()`), or null when it runs none. */
  app_name: string | null;
  version: string | null;
  /** SHA-256 (hex) of the image it runs. */
  sha256: string | null;
  /** Flash slots A and B (empty for a device without an image store, or one that does not say). */
  slots: Array<{ slot: 'A' | 'B'; state: 'empty' | 'test' | 'good'; active: boolean; sha256: string | null; version: string | null }>;
  /** Bytes one flash slot holds, or null without an image store. */
  slot_bytes: number | null;
}

export interface IntakeVerdict {
  outcome: IntakeOutcome;
  task: TaskInfo;
  /** For `updated`: the image it replaced. */
  from: RunningImage | null;
  /** The flash slot the image was committed to (null: a device without an image store, or `current`). */
  slot: 'A' | 'B' | null;
  /** True while a test-committed update waits for its confirm window. */
  confirmPending: boolean;
}

interface Receiving {
  id: number;
  /** Announced size. */
  total: number;
  received: number;
  seq: number;
  /**
   * Hashes what arrives, to check it against the announce; null when the image goes to flash: the
   * store hashes the image once before it erases anything and refuses it (`sha256_mismatch`) unless
   * it matches the announced SHA-256, so each byte is hashed once on the device either way.
   */
  hash: Hash | null;
  sha256: string | null;
  /** How the image is installed once it is complete (from the announce). */
  plan: InstallPlan;
  /** A compressed or patched stream: decodes what arrives into `image` (RAM staging). */
  decoder: { d: TransferDecoder; image: Uint8Array; encoding: TransferEncoding } | null;
}

/** How one image is installed once staged. */
interface InstallPlan {
  persist: boolean;
  trial: boolean;
  confirmWindowMs: number;
  bootPriority?: number;
}

interface PendingConfirm {
  pid: number;
  from: RunningImage | null;
  /** Persist keys the replaced image declared and the new one does not: dropped once confirmed. */
  orphanKeys: number[];
  timer: TimerHandle;
}

const SHA_HEX = /^[0-9a-f]{64}$/;

export function runningOf(t: TaskInfo): RunningImage {
  return { pid: t.pid, appName: t.appName, appVersion: t.appVersion, sha256: t.sha256, crc32: t.crc32 };
}

/** The announce and the bytes disagree: said the same whether the intake or the store found it. */
function shaMismatch(expected: string, actual: string, what = 'the received bytes hash'): EngineError {
  return engineError('EBADMSG', 'verify', 'sha256_mismatch', `${what} to ${actual}, the announce said ${expected}`, { expected, actual });
}

function shaHex(v: string | Uint8Array | undefined): string | null | EngineError {
  if (v === undefined) return null;
  const hex = typeof v === 'string' ? v.toLowerCase() : Buffer.from(v).toString('hex');
  if (!SHA_HEX.test(hex)) {
    return engineError('EBADMSG', 'begin', 'sha256_invalid', `announced SHA-256 must be 32 bytes (64 hex digits), got ${typeof v === 'string' ? `"${v.slice(0, 80)}"` : `${v.length} bytes`}`);
  }
  return hex;
}

/** Carries an engine refusal out of a decoder's write callback to the intake's boundary. */
class EngineStop {
  constructor(readonly error: EngineError) {}
}

/** A codec error as the intake's: same code and reason, the field and offset in the detail and the message. */
function fromCodec(e: CodecError, where: 'begin' | 'write' | 'end'): EngineError {
  const detail: Record<string, unknown> = { field: e.field, offset: e.offset, in: e.in, ...(e.detail ?? {}) };
  return engineError(e.code === 'EINVAL' ? 'EBADMSG' : e.code, where, e.reason, e.message, detail);
}

/** Runs a decoder step: its codec error, or the engine's refusal of a write it made, as one EngineError. */
function guarded(step: () => CodecError | null, where: 'write' | 'end'): EngineError | null {
  try {
    const ce = step();
    return ce ? fromCodec(ce, where) : null;
  } catch (x) {
    if (x instanceof EngineStop) return x.error;
    throw x;
  }
}

export class DeviceIntake {
  readonly engine: ProvisioningEngine;
  private readonly clock: Clock;
  private readonly events: EventSink;
  private readonly policy: UpdatePolicy;
  private readonly confirmWindowMs: number;
  /** What this device decodes (null: raw only). */
  readonly codec: CodecCaps | null;
  private readonly receiving = new Map<number, Receiving>();
  private pending: PendingConfirm | null = null;
  /** Serialises installs: a second image waits until the first is switched (or refused). */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(options: IntakeOptions) {
    this.engine = options.engine;
    this.clock = options.clock;
    this.events = options.events;
    this.policy = options.update ?? 'replace';
    this.confirmWindowMs = options.confirmWindowMs ?? 10_000;
    this.codec = options.codec === false ? null : options.codec ?? DEFAULT_CODEC_CAPS;
  }

  /** The running image with this SHA-256 (hex), if the device runs it. */
  current(sha256: string): RunningImage | null {
    const want = sha256.toLowerCase();
    const t = this.engine.taskBySha256(want);
    return t ? runningOf(t) : null;
  }

  /** The image a master should be told the device runs: the one in the store, else the first task. */
  primary(): RunningImage | null {
    const tasks = this.engine.ps();
    const stored = this.engine.storedSha256();
    const t = tasks.find((x) => x.sha256 === stored) ?? tasks[0];
    return t ? runningOf(t) : null;
  }

  /** What the device runs and what its flash slots hold, for a scan (CAN INFO, UART INFO). */
  inventory(): DeviceInventory {
    const p = this.primary();
    const slots = this.engine.slotStates();
    return {
      app_name: p?.appName ?? null,
      version: p ? p.appVersion : null,
      sha256: p?.sha256 ?? null,
      slots: slots.map((s) => ({
        slot: s.slot, state: s.entry?.state ?? 'empty', active: s.active,
        sha256: s.entry && s.entry.state !== 'empty' ? s.entry.meta.sha256 : null,
        version: s.entry && s.entry.state !== 'empty' ? s.entry.meta.version : null,
      })),
      slot_bytes: this.engine.slotCapacity(),
    };
  }

  /** Value access for links that carry it (CAN GET/SET): the device's registry, persisted values written through. */
  getValue(oid: number): ReturnType<ProvisioningEngine['getValue']> {
    return this.engine.getValue(oid);
  }

  setValue(oid: number, raw: number): ReturnType<ProvisioningEngine['setValue']> {
    return this.engine.setValue(oid, raw);
  }

  /** Whether a test-committed update waits for its confirm window. */
  get confirmPending(): boolean {
    return this.pending !== null;
  }

  // ───────────────────────────── streamed images ─────────────────────────────

  /**
   * An image is announced: answer CURRENT when the device already runs it (no data needs to move),
   * refuse it when it cannot fit (before anything is erased), or open a session for its bytes.
   */
  open(a: IntakeAnnounce): Result<IntakeOpen, EngineError> {
    const sha = shaHex(a.sha256);
    if (sha !== null && typeof sha !== 'string') return err(sha);
    if (sha && !a.force) {
      const running = this.current(sha);
      if (running) return ok({ kind: 'current', running });
    }
    const capacity = this.engine.slotCapacity();
    if (capacity !== null && Number.isSafeInteger(a.totalBytes) && a.totalBytes > capacity) {
      return err(engineError('ENOSPC', 'begin', 'image_too_large', `image of ${a.totalBytes} bytes does not fit a flash slot of ${capacity} bytes`,
        { totalBytes: a.totalBytes, slotBytes: capacity }));
    }
    const opts: Parameters<ProvisioningEngine['begin']>[0] = { source: a.source, totalBytes: a.totalBytes, update: a.update ?? this.policy };
    if (a.crc32 !== undefined) opts.expectedCrc = a.crc32 >>> 0;
    if (a.version !== undefined) opts.appVersion = a.version;
    const encoding = a.encoding ?? { kind: 'raw' };
    let streamTotal = a.totalBytes;
    let base: Uint8Array | null = null;
    if (encoding.kind !== 'raw') {
      const caps = this.codec;
      if (!caps || !caps[encoding.kind] || (encoding.kind === 'deflate' && encoding.windowBits > caps.maxWindowBits)) {
        return err(engineError('EPERM', 'begin', 'encoding_unsupported', `this device does not decode ${encoding.kind === 'deflate' ? `a ${encoding.windowBits}-bit deflate stream` : 'delta patches'}`,
          { field: 'encoding' }));
      }
      if (a.streamBytes === undefined || !Number.isSafeInteger(a.streamBytes) || a.streamBytes <= 0 || a.streamBytes > 0xffffffff) {
        return err(engineError('EBADMSG', 'begin', 'stream_size_invalid', `a ${encoding.kind} transfer must announce its stream size (a u32 > 0), got ${String(a.streamBytes)}`,
          { field: 'streamBytes' }));
      }
      streamTotal = a.streamBytes;
      if (encoding.kind === 'patch') {
        const checked = this.patchBase(a.baseSha256);
        if (!checked.ok) return checked;
        base = checked.value;
      }
    }
    const begun = this.engine.begin(opts);
    if (!begun.ok) return begun;
    const id = begun.value.sessionId;
    const plan = this.planFor(a);
    const storeChecks = sha !== null && plan.persist && this.engine.hasImageStore;
    const r: Receiving = { id, total: streamTotal, received: 0, seq: 0, hash: storeChecks ? null : createHash('sha256'), sha256: sha, plan, decoder: null };
    if (encoding.kind !== 'raw') {
      const made = this.openDecoder(r, encoding, a.totalBytes, base);
      if (!made.ok) {
        this.engine.abort(id, made.error.reason);
        return made;
      }
      r.decoder = made.value;
    }
    this.receiving.set(id, r);
    return ok({ kind: 'receiving', id });
  }

  /**
   * The running image a patch is rebuilt from: the active slot's bytes (the RAM copy of a task without
   * a store), hashed here, never trusted from metadata. A patch for any other base is refused before
   * any data moves (`base_mismatch`, naming both SHA-256).
   */
  private patchBase(announced: string | Uint8Array | undefined): Result<Uint8Array, EngineError> {
    const want = shaHex(announced);
    if (want === null || typeof want !== 'string') {
      return err(engineError('EBADMSG', 'begin', 'base_sha256_invalid', 'a patch must announce its base SHA-256 (32 bytes)', { field: 'baseSha256' }));
    }
    let base = this.engine.activeImageBytes();
    if (base === null && !this.engine.hasImageStore) {
      const p = this.primary();
      base = p ? this.engine.taskImage(p.pid) ?? null : null;
    }
    if (base === null) {
      return err(engineError('EBADMSG', 'begin', 'base_mismatch', `the patch is for base SHA-256 ${want}, but the device runs no image to rebuild from`,
        { field: 'baseSha256', expected: want, actual: 'none' }));
    }
    const actual = createHash('sha256').update(base).digest('hex');
    if (actual !== want) {
      return err(engineError('EBADMSG', 'begin', 'base_mismatch', `the patch is for base SHA-256 ${want}, the active image hashes to ${actual}: send the full image`,
        { field: 'baseSha256', expected: want, actual }));
    }
    return ok(base);
  }

  /**
   * Decoded bytes are staged in RAM (`image`, and the engine's session buffer they are fed to); the
   * store commits them to the inactive slot only after the whole image verified. So the rebuild reads
   * the active slot (the patch's base) and nothing is written to flash before the SHA-256 check.
   */
  private openDecoder(r: Receiving, encoding: TransferEncoding, imageSize: number, base: Uint8Array | null): Result<NonNullable<Receiving['decoder']>, EngineError> {
    const image = new Uint8Array(imageSize);
    const slotSize = this.engine.slotCapacity() ?? imageSize;
    const target: Parameters<typeof openTransferDecoder>[1] = { imageSize, slotSize };
    if (base) target.active = { size: base.length, sha256: createHash('sha256').update(base).digest() };
    const opened = openTransferDecoder(encoding, target, {
      writeInactive: (offset, bytes) => {
        image.set(bytes, offset);
        const max = this.engine.config.maxChunkBytes;
        for (let at = 0; at < bytes.length; at += max) {
          const part = bytes.subarray(at, at + max);
          const w = this.engine.write(r.id, r.seq++, part);
          if (!w.ok) throw new EngineStop(w.error);
          r.hash?.update(part);
        }
      },
      readInactive: (offset, length) => image.subarray(offset, offset + length),
      readActive: (offset, length) => base!.subarray(offset, offset + length),
    });
    if (!opened.ok) return err(fromCodec(opened.error, 'begin'));
    return ok({ d: opened.value, image, encoding });
  }

  /**
   * Bytes at `offset` of the image. Bytes arrive in order; a repeat of bytes already taken is
   * ignored (a link resending after a lost acknowledgement), a gap is an error.
   */
  write(id: number, offset: number, bytes: Uint8Array): Result<WriteAck, EngineError> {
    const r = this.receiving.get(id);
    if (!r) return err(engineError('ESRCH', 'write', 'unknown_session', `no intake session ${id}`, { sessionId: id }));
    if (offset + bytes.length <= r.received) return ok({ bytesWritten: bytes.length, duplicate: true, totalBytesWritten: r.received });
    if (offset !== r.received) {
      return err(engineError('EBADMSG', 'write', 'offset_gap', `bytes at offset ${offset}, but ${r.received} bytes were received so far`,
        { offset, received: r.received, sessionId: id }));
    }
    if (r.decoder) return this.writeEncoded(r, bytes);
    const max = this.engine.config.maxChunkBytes;
    for (let at = 0; at < bytes.length; at += max) {
      const part = bytes.subarray(at, at + max);
      const w = this.engine.write(id, r.seq++, part);
      if (!w.ok) {
        if (w.error.code === 'ETIMEDOUT' || this.engine.sessions().every((s) => s.sessionId !== id)) this.receiving.delete(id);
        return w;
      }
      r.hash?.update(part);
      r.received += part.length;
    }
    return ok({ bytesWritten: bytes.length, duplicate: false, totalBytesWritten: r.received });
  }

  /** Encoded bytes (in stream order) through the decoder; its writes feed the engine session. */
  private writeEncoded(r: Receiving, bytes: Uint8Array): Result<WriteAck, EngineError> {
    const dec = r.decoder!;
    if (r.received + bytes.length > r.total) {
      const at = r.received;
      this.abort(r.id, 'exceeds_total');
      return err(engineError('EBADMSG', 'write', 'exceeds_total', `bytes at stream offset ${at} take the ${dec.encoding.kind} stream to ${at + bytes.length} bytes, past the announced ${r.total}`,
        { field: 'stream', offset: at, received: at + bytes.length, totalBytes: r.total }));
    }
    const e = guarded(() => dec.d.process(bytes), 'write');
    if (e) {
      this.abort(r.id, e.reason);
      return err(e);
    }
    r.received += bytes.length;
    return ok({ bytesWritten: bytes.length, duplicate: false, totalBytesWritten: r.received });
  }

  /** All bytes are in: check them against the announce, then admit, stage and switch. */
  async finish(id: number): Promise<Result<IntakeVerdict, EngineError>> {
    const r = this.receiving.get(id);
    if (!r) return err(engineError('ESRCH', 'end', 'unknown_session', `no intake session ${id}`, { sessionId: id }));
    // The SHA-256 the engine records for the task: hashed here as the bytes arrived, or the announced
    // one when the store will check it against the bytes before anything is written (see `hash`).
    if (r.decoder && r.received >= r.total) {
      // the stream is all here: it must end exactly at the announced image size
      const dec = r.decoder;
      const e = guarded(() => dec.d.finish(), 'end');
      if (e) {
        this.abort(id, e.reason);
        return err(e);
      }
      // A decoded image is checked against the announced SHA-256 here, before the engine's CRC-32:
      // a patch that rebuilds another image is a SHA-256 mismatch, said so (the store hashes it again).
      if (r.sha256 !== null && r.hash === null) {
        const rebuilt = createHash('sha256').update(dec.image).digest('hex');
        if (rebuilt !== r.sha256) {
          this.receiving.delete(id);
          this.engine.abort(id, 'sha256_mismatch');
          return err(shaMismatch(r.sha256, rebuilt, 'the rebuilt image hashes'));
        }
      }
    }
    const complete = r.received >= r.total;
    const actual = complete && r.hash ? r.hash.copy().digest('hex') : undefined;
    if (r.sha256 !== null && actual !== undefined && actual !== r.sha256) {
      this.receiving.delete(id);
      this.engine.abort(id, 'sha256_mismatch');
      return err(shaMismatch(r.sha256, actual));
    }
    const known = actual ?? (complete && r.hash === null ? r.sha256 ?? undefined : undefined);
    const staged = this.engine.endStaged(id, known !== undefined ? { sha256: known } : {});
    if (!staged.ok) {
      // an incomplete stream stays open for the link to go on; any other refusal ends the session
      // here, engine side included (a FAILED session would otherwise linger until it expires)
      if (staged.error.reason !== 'incomplete') this.abort(id, `${staged.error.code} ${staged.error.reason}`);
      return staged;
    }
    this.receiving.delete(id);
    return this.serial(() => this.install(staged.value, r.plan));
  }

  private planFor(a: Pick<IntakeAnnounce, 'persist' | 'trial' | 'confirmWindowMs' | 'bootPriority'>): InstallPlan {
    const plan: InstallPlan = { persist: a.persist ?? true, trial: a.trial ?? false, confirmWindowMs: a.confirmWindowMs ?? this.confirmWindowMs };
    if (a.bootPriority !== undefined) plan.bootPriority = a.bootPriority;
    return plan;
  }

  /**
   * Ends a session a client drove on the engine itself (the control port's `provision.begin/write`,
   * whose sequence numbers the engine checks): the same admit, stage and switch as any image.
   */
  async finishSession(id: number, options: { persist?: boolean; admit?: IntakeAnnounce['admit'] } = {}): Promise<Result<IntakeVerdict, EngineError>> {
    const staged = this.engine.endStaged(id);
    if (!staged.ok) return staged;
    return this.serial(() => this.admitted(staged.value, this.planFor(options), options.admit));
  }

  abort(id: number, reason: string): void {
    this.receiving.delete(id);
    if (this.engine.sessions().some((s) => s.sessionId === id)) this.engine.abort(id, reason);
  }

  // ───────────────────────────── whole images ─────────────────────────────

  /** A whole image at once (the control port, boot sources): the same rules as a stream. */
  async load(bytes: Uint8Array, a: Omit<IntakeAnnounce, 'totalBytes' | 'sha256' | 'crc32'>): Promise<Result<IntakeVerdict, EngineError>> {
    const sha = createHash('sha256').update(bytes).digest('hex');
    if (!a.force) {
      const t = this.engine.taskBySha256(sha);
      if (t) return ok({ outcome: 'current', task: t, from: null, slot: null, confirmPending: this.pending?.pid === t.pid });
    }
    const capacity = this.engine.slotCapacity();
    if (capacity !== null && bytes.length > capacity) {
      return err(engineError('ENOSPC', 'verify', 'image_too_large', `image of ${bytes.length} bytes does not fit a flash slot of ${capacity} bytes`,
        { totalBytes: bytes.length, slotBytes: capacity }));
    }
    const opts: Parameters<ProvisioningEngine['stageImage']>[1] = { source: a.source, update: a.update ?? this.policy, sha256: sha };
    if (a.version !== undefined) opts.appVersion = a.version;
    const staged = this.engine.stageImage(bytes, opts);
    if (!staged.ok) return staged;
    return this.serial(() => this.admitted(staged.value, this.planFor(a), a.admit));
  }

  /**
   * A whole encoded stream at once (a compressed image or a delta patch the control port or a boot source
   * holds complete): the announce names the encoding and the decoded image's size (and its CRC-32 and
   * SHA-256, when known); the stream goes through the same decoder and checks as one arriving by link
   * (open → write → finish), so the rules are those of a stream.
   */
  async loadEncoded(stream: Uint8Array, a: Omit<IntakeAnnounce, 'streamBytes'>): Promise<Result<IntakeVerdict, EngineError>> {
    if (!a.encoding || a.encoding.kind === 'raw') {
      return err(engineError('EBADMSG', 'begin', 'encoding_required', 'loadEncoded takes a deflate stream or a patch; a raw image goes to load()', { field: 'encoding' }));
    }
    const opened = this.open({ ...a, streamBytes: stream.length });
    if (!opened.ok) return opened;
    if (opened.value.kind === 'current') {
      const t = this.engine.taskBySha256(opened.value.running.sha256)!;
      return ok({ outcome: 'current', task: t, from: null, slot: null, confirmPending: this.pending?.pid === t.pid });
    }
    const id = opened.value.id;
    const w = this.write(id, 0, stream);
    if (!w.ok) {
      this.abort(id, w.error.reason);
      return w;
    }
    return this.finish(id);
  }

  /** The `admit` hook (in the serial section, so no other install moves the tasks under it), then the install. */
  private async admitted(staged: StagedLoad, plan: InstallPlan, admit: IntakeAnnounce['admit']): Promise<Result<IntakeVerdict, EngineError>> {
    const refused = admit?.(staged.replaces ? [staged.replaces.pid] : []) ?? null;
    if (refused) {
      this.engine.discard(staged, `${refused.code} ${refused.reason}`);
      return err(refused);
    }
    return this.install(staged, plan);
  }

  // ───────────────────────────── stage → switch ─────────────────────────────

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Commit to the inactive slot while the old app runs (an update in test mode, with the old image as
   * the rollback target), then switch. Refusals before the switch change nothing that runs.
   */
  private async install(staged: StagedLoad, plan: InstallPlan): Promise<Result<IntakeVerdict, EngineError>> {
    const update = staged.replaces !== null;
    const trial = update || plan.trial;
    // A newer trial while the previous one waits for its window: the running image has held up
    // until now, so it becomes the known-good one the new image can fall back to.
    if (this.pending && trial && plan.persist) await this.settle(true);
    let slot: 'A' | 'B' | null = null;
    if (plan.persist && this.engine.hasImageStore) {
      const meta = plan.bootPriority !== undefined ? { bootPriority: plan.bootPriority } : undefined;
      const committed = await this.engine.commitStaged(staged, trial ? 'test' : 'permanent', meta);
      if (!committed.ok) {
        this.engine.discard(staged, `${committed.error.code} ${committed.error.reason}`);
        const d = committed.error.detail;
        if (committed.error.reason === 'sha256_mismatch' && typeof d?.['actual'] === 'string') {
          // the store's check of the announced SHA-256 (see Receiving.hash)
          return err(shaMismatch(String(d['expected']), d['actual']));
        }
        return committed;
      }
      slot = committed.value.slot;
    }
    const replacedKeys = staged.replaces ? this.persistKeysOf(staged.replaces.pid) : [];
    const switched = this.engine.activate(staged);
    if (!switched.ok) {
      if (slot !== null) await this.restorePrevious('switch_failed', switched.error.detail?.['replacedGone'] === true);
      return switched;
    }
    const { task, replaced } = switched.value;
    const from = replaced ? runningOf(replaced) : null;
    if (from) {
      this.events.emit({
        type: 'provisioning.updated', pid: task.pid, phase: 'end',
        data: {
          from: { app_name: from.appName, version: from.appVersion, sha256: from.sha256, crc32: from.crc32, pid: from.pid },
          to: { app_name: task.appName, version: task.appVersion, sha256: task.sha256, crc32: task.crc32, pid: task.pid },
          slot, confirm_window_ms: slot !== null ? plan.confirmWindowMs : null,
        },
      });
    }
    if (slot !== null && trial) this.armConfirm(task, from, replacedKeys, plan.confirmWindowMs);
    return ok({ outcome: from ? 'updated' : 'installed', task, from, slot, confirmPending: this.pending?.pid === task.pid });
  }

  /** After a failed switch: the store goes back to the previous image, and so does the device. */
  private async restorePrevious(reason: string, reload: boolean): Promise<void> {
    const rb = await this.engine.rollback(reason);
    if (rb.ok && reload) this.engine.restore();
  }

  private persistKeysOf(pid: number): number[] {
    return this.engine.metadata.valuesOf(pid).filter((v) => v.persisted).map((v) => v.persistKey);
  }

  /** Arms the confirm window of a test-committed update; keys no running task declares any more go once it is confirmed. */
  private armConfirm(task: TaskInfo, from: RunningImage | null, replacedKeys: number[], windowMs: number): void {
    const declared = new Set(this.engine.pids().flatMap((pid) => this.persistKeysOf(pid)));
    const orphanKeys = replacedKeys.filter((k) => !declared.has(k));
    const timer = this.clock.setTimeout(() => void this.settle(this.engine.task(task.pid) !== undefined), windowMs);
    this.pending = { pid: task.pid, from, orphanKeys, timer };
  }

  /**
   * The confirm window ended (or a newer update arrived): confirm the update and forget the keys it
   * no longer declares, or, if its task is gone, roll back to the image it replaced.
   */
  private async settle(alive: boolean): Promise<void> {
    const p = this.pending;
    if (!p) return;
    this.pending = null;
    this.clock.clearTimeout(p.timer);
    if (!alive) {
      await this.rollback('not_confirmed');
      return;
    }
    const confirmed = await this.engine.confirm();
    if (!confirmed.ok) return;
    if (p.orphanKeys.length > 0) {
      const dropped = await this.engine.dropValues(p.orphanKeys);
      if (dropped.ok) for (const key of p.orphanKeys) {
        this.events.emit({ type: 'value.dropped', pid: p.pid, phase: 'persist', data: { key, reason: 'not_declared', from_app: p.from?.appName ?? null } });
      }
    }
  }

  /** Confirms a pending update now (a test, or an operator who does not want to wait). */
  async confirmNow(): Promise<void> {
    await this.settle(this.pending !== null && this.engine.task(this.pending.pid) !== undefined);
  }

  /**
   * Back to the previous image: the store switches (and restores that image's values), then the
   * device stops what the store held and runs the previous image again.
   */
  async rollback(reason: string, admit?: IntakeAnnounce['admit']): Promise<Result<{ task: TaskInfo | null; slot: 'A' | 'B' }, EngineError>> {
    const active = this.engine.storedSha256();
    if (admit) {
      // the tasks this rollback stops, asked before anything changes
      const pendingPid = this.pending?.pid;
      const refused = admit(this.engine.ps().filter((t) => t.sha256 === active || t.pid === pendingPid).map((t) => t.pid));
      if (refused) return err(refused);
    }
    const p = this.pending;
    this.pending = null;
    if (p) this.clock.clearTimeout(p.timer);
    const rb = await this.engine.rollback(reason);
    if (!rb.ok) return rb;
    for (const t of this.engine.ps()) if (t.sha256 === active || t.pid === p?.pid) this.engine.unload(t.pid);
    const restored = this.engine.restore();
    if (!restored.ok) return restored;
    return ok({ task: restored.value, slot: rb.value.slot });
  }

  /** Stops the confirm timer (shutdown): an unconfirmed update reverts at the next start, as on a real device. */
  dispose(): void {
    if (this.pending) this.clock.clearTimeout(this.pending.timer);
    this.pending = null;
    for (const id of [...this.receiving.keys()]) this.abort(id, 'intake_closed');
  }
}
