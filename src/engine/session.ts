/**
 * One streaming load: the growing image buffer, sequence-number bookkeeping and the timestamps
 * the engine's timeouts read. The hot path (`append` of a small chunk) copies only the chunk into
 * a buffer that grows geometrically (or is sized once from `totalBytes`), so a 64 KiB image in
 * 8-byte chunks costs 8 bytes of copying per chunk, not the whole buffer.
 */
import type { InPlaceVerifier } from '../hxe/index.js';
import type { EngineError } from './errors.js';
import { engineError } from './errors.js';
import type { TimerHandle } from './ports.js';
import type { LoadStateMachine } from './state.js';

/** First buffer size when the total is not announced: enough for any header and a small image. */
export const INITIAL_BUFFER_BYTES = 256;
const EMPTY = new Uint8Array(0);

export type SeqVerdict = 'next' | 'duplicate' | EngineError;

export class StreamSession {
  buffer: Uint8Array;
  length = 0;
  nextSeq = 0;
  private lastStart = 0;
  private lastLength = 0;
  lastActivityAt: number;
  timer: TimerHandle | null = null;
  /** Checks the stream as it arrives, reading `buffer` in place (the image is held once). */
  verifier: InPlaceVerifier | null = null;
  /** Byte count at which the next progress event is due. */
  nextProgressAt = 0;
  lastPercent = -1;
  /** Set once the header is complete and its budgets checked. */
  headerChecked = false;
  /** What this load does when its app is already running (see LoadOptions.update). */
  update: 'replace' | 'reject' = 'reject';
  /** Recorded version when the image has no trailer (LoadOptions.appVersion). */
  appVersion: string | undefined;
  private exact: Uint8Array | null = null;

  constructor(
    readonly id: number,
    readonly source: string,
    readonly totalBytes: number | undefined,
    readonly expectedCrc: number | undefined,
    readonly stackBytes: number | undefined,
    readonly startedAt: number,
    readonly sm: LoadStateMachine,
    initialCapacity: number,
  ) {
    this.buffer = new Uint8Array(initialCapacity);
    this.lastActivityAt = startedAt;
  }

  /** Sequence check: the next chunk, an exact repeat of the last one, or an error naming the expected seq. */
  classify(seq: number, chunk: Uint8Array): SeqVerdict {
    if (seq === this.nextSeq) return 'next';
    if (!Number.isSafeInteger(seq) || seq < 0) {
      return engineError('EBADMSG', 'write', 'seq_invalid', `seq ${String(seq)} is not a non-negative integer`, { expectedSeq: this.nextSeq, seq });
    }
    if (seq > this.nextSeq) {
      return engineError('EBADMSG', 'write', 'seq_gap', `seq ${seq} skips ahead: expected seq ${this.nextSeq}`, { expectedSeq: this.nextSeq, seq });
    }
    if (seq === this.nextSeq - 1) {
      if (this.sameAsLast(chunk)) return 'duplicate';
      return engineError('EBADMSG', 'write', 'duplicate_mismatch',
        `seq ${seq} repeats the last chunk with different bytes: expected seq ${this.nextSeq}`, { expectedSeq: this.nextSeq, seq });
    }
    return engineError('EBADMSG', 'write', 'seq_stale', `seq ${seq} is older than the last chunk: expected seq ${this.nextSeq}`,
      { expectedSeq: this.nextSeq, seq });
  }

  private sameAsLast(chunk: Uint8Array): boolean {
    if (chunk.length !== this.lastLength) return false;
    const b = this.buffer;
    const base = this.lastStart;
    for (let i = 0; i < chunk.length; i++) if (b[base + i] !== chunk[i]) return false;
    return true;
  }

  /** Capacity the buffer must grow to for `extra` more bytes, or 0 when it already fits. */
  growthNeeded(extra: number, limit: number): number {
    const need = this.length + extra;
    if (need <= this.buffer.length) return 0;
    return Math.min(Math.max(need, this.buffer.length * 2), limit);
  }

  grow(capacity: number): void {
    const next = new Uint8Array(capacity);
    next.set(this.buffer.subarray(0, this.length));
    this.buffer = next;
  }

  /** Appends an accepted chunk (the caller has made room). */
  append(chunk: Uint8Array, now: number): void {
    this.buffer.set(chunk, this.length);
    this.lastStart = this.length;
    this.lastLength = chunk.length;
    this.length += chunk.length;
    this.nextSeq++;
    this.lastActivityAt = now;
  }

  /**
   * The received bytes as an exactly-sized array: the buffer itself when the announced total filled
   * it, else one copy, made once (the verifier's verdict and the task then share it).
   */
  exactImage(): Uint8Array {
    this.exact ??= this.length === this.buffer.length ? this.buffer : this.buffer.slice(0, this.length);
    return this.exact;
  }

  /** Hands the exactly-sized image over and drops the buffer. */
  takeImage(): Uint8Array {
    const image = this.exactImage();
    this.buffer = EMPTY;
    this.exact = null;
    return image;
  }

  /** Drops the buffer; returns how many bytes of capacity it held. */
  releaseBuffer(): number {
    const held = this.buffer.length;
    this.buffer = EMPTY;
    this.exact = null;
    return held;
  }
}
