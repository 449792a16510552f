import { CRC_PREFIX_END, resolveLimits } from './constants.js';
import { crc32Combine, crcUpdate, hxeCrc32 } from './crc.js';
import { fail } from './errors.js';
import { checkHeaderPrefix, decodeHeader, headerSizeForVersion } from './header.js';
import { verifyBody } from './body.js';
import { u16be } from './bytes.js';
import type { Result } from './result.js';
import type { HxeError, HxeHeader, HxeImage, HxeLimits } from './types.js';

export interface StreamingOptions {
  /** Announced total size, when the sender gives one: impossible lengths are then rejected at the header. */
  totalBytes?: number;
}

/** Growth step cap: the buffer never exceeds the bytes pushed by more than this (lengths are untrusted). */
const MAX_SLACK = 64 * 1024;
const INITIAL_CAPACITY = 256;
/** CRC work is batched into blocks of this many bytes. */
const CRC_BLOCK = 16 * 1024;

/**
 * Verifies a stream whose bytes the caller keeps: after each chunk the caller passes its buffer
 * and how many bytes of it are the stream so far (the buffer may move when it grows, but bytes
 * already received never change). The header is checked as soon as it is complete (bad magic and version even
 * earlier), the CRC accumulates in 16 KiB blocks, and `finish()` gives the same verdict
 * `parseImage` gives on the whole stream. Nothing is copied or allocated per chunk: the engine
 * uses this on its session buffer, so a streamed image is held once.
 */
export class InPlaceVerifier {
  private readonly limits: HxeLimits;
  private readonly totalBytes: number | undefined;
  /** The caller's bytes as last passed; `len` of them are the stream so far. */
  private buf: Uint8Array = new Uint8Array(0);
  private len = 0;
  /** CRC-32 of the body, [headerSize, crcPos): one pass serves the HXE CRC and the stream CRC. */
  private bodyCrc = 0;
  /** Body bytes before this offset are in `bodyCrc`. */
  private crcPos = 0;
  private decoded: HxeHeader | null = null;
  private failure: HxeError | null = null;
  private finished: Result<HxeImage, HxeError> | null = null;

  constructor(limits?: Partial<HxeLimits>, options: StreamingOptions = {}) {
    this.limits = resolveLimits(limits);
    this.totalBytes = options.totalBytes;
  }

  /** Bytes of the stream so far. */
  get bytesReceived(): number {
    return this.len;
  }

  /** The decoded header once it is complete and valid, else null. */
  get header(): HxeHeader | null {
    return this.decoded;
  }

  /** The first error seen, if any (every later call returns it too). */
  get error(): HxeError | null {
    return this.failure;
  }

  /** Running CRC over the covered bytes received so far. */
  get runningCrc(): number {
    if (!this.decoded) return hxeCrc32(this.buf.subarray(0, this.len), Math.max(this.len, CRC_PREFIX_END));
    this.catchUpCrc();
    return this.covered(CRC_PREFIX_END);
  }

  /** CRC-32 of every byte received so far (what a sender announces for the whole transfer). */
  streamCrc(): number {
    if (!this.decoded) return crcUpdate(0, this.buf.subarray(0, this.len));
    this.catchUpCrc();
    return this.covered(this.decoded.headerSize);
  }

  /** CRC of bytes [0, prefixEnd) followed by the body, from the body's CRC (no second pass over it). */
  private covered(prefixEnd: number): number {
    const hs = this.decoded!.headerSize;
    const prefix = crcUpdate(0, this.buf.subarray(0, Math.min(prefixEnd, this.len)));
    return this.len > hs ? crc32Combine(prefix, this.bodyCrc, this.len - hs) : prefix;
  }

  /**
   * The stream has grown to the first `length` bytes of `buffer` (the caller's; every byte passed
   * before is unchanged). Returns the first error, at the earliest byte that proves it.
   */
  advance(buffer: Uint8Array, length: number): HxeError | null {
    if (length > buffer.length) throw new RangeError(`length ${length} exceeds the ${buffer.length}-byte buffer`);
    const refused = this.admitLength(length);
    if (refused || length === this.len) return refused;
    this.buf = buffer;
    this.len = length;
    if (!this.decoded) return this.checkHeader();
    // The CRC runs over the kept bytes in blocks: per-call overhead would dominate with 8-byte CAN chunks.
    if (this.len - this.crcPos >= CRC_BLOCK) this.catchUpCrc();
    return null;
  }

  /**
   * The checks that need only the stream's new length: a keeper calls this before it stores the
   * bytes, so a stream longer than announced never grows its buffer.
   */
  admitLength(n: number): HxeError | null {
    if (this.failure) return this.failure;
    if (this.finished) return this.fail(fail('truncated', 'push after finish()', this.len).error);
    if (n < this.len) throw new RangeError(`stream shrank from ${this.len} to ${n} bytes`);
    if (this.totalBytes !== undefined && n > this.totalBytes) {
      return this.fail(fail('truncated', `received ${n} bytes, more than the ${this.totalBytes} announced`, this.totalBytes).error);
    }
    return null;
  }

  /**
   * The verdict on the whole stream, `received` (the same bytes last passed, possibly moved to an
   * exactly-sized array the caller keeps: the image's code and rodata are views into it).
   */
  finish(received: Uint8Array): Result<HxeImage, HxeError> {
    if (this.finished) return this.finished;
    if (received.length !== this.len && !this.failure) {
      const e = this.advance(received, received.length);
      if (e) return this.settle({ ok: false, error: e });
    }
    this.buf = received;
    const bytes = received.subarray(0, this.len);
    if (this.failure) return this.settle({ ok: false, error: this.failure });
    if (!this.decoded) {
      // Too short for a header: decodeHeader gives the same too_small/header_truncated verdict parseImage does.
      const h = decodeHeader(bytes, this.limits);
      return this.settle(h.ok ? verifyBody(bytes, h.value, hxeCrc32(bytes, h.value.headerSize)) : h);
    }
    this.catchUpCrc();
    return this.settle(verifyBody(bytes, this.decoded, this.covered(CRC_PREFIX_END)));
  }

  private settle(result: Result<HxeImage, HxeError>): Result<HxeImage, HxeError> {
    this.finished = result;
    this.buf = new Uint8Array(0); // the caller owns the bytes; hold no reference
    return result;
  }

  private fail(e: HxeError): HxeError {
    this.failure = e;
    this.buf = new Uint8Array(0);
    return e;
  }

  /** Brings the body's CRC up to the bytes received (the body starts at the header's end). Needs the header. */
  private catchUpCrc(): void {
    if (!this.decoded) return;
    const from = Math.max(this.crcPos, this.decoded.headerSize);
    if (this.len > from) this.bodyCrc = crcUpdate(this.bodyCrc, this.buf.subarray(from, this.len));
    this.crcPos = Math.max(from, this.len);
  }

  private checkHeader(): HxeError | null {
    const prefix = checkHeaderPrefix(this.buf, this.len);
    if (prefix) return this.fail(prefix);
    if (this.len < 6) return null;
    const size = headerSizeForVersion(u16be(this.buf, 4));
    if (this.len < size) return null;
    const h = decodeHeader(this.buf.subarray(0, this.len), this.limits, this.totalBytes);
    if (!h.ok) return this.fail(h.error);
    this.decoded = h.value;
    return null;
  }
}

/**
 * Verifies an image that arrives in chunks of any size (down to 1 byte) and keeps the bytes itself
 * (the VM needs code and rodata, the registries the metadata): an InPlaceVerifier over a buffer
 * that grows with what is pushed, never by more than 64 KiB beyond it — the header's lengths are
 * never used to size an allocation.
 */
export class StreamingVerifier {
  private readonly inner: InPlaceVerifier;
  private buf = new Uint8Array(0);
  private len = 0;

  constructor(limits?: Partial<HxeLimits>, options: StreamingOptions = {}) {
    this.inner = new InPlaceVerifier(limits, options);
  }

  /** Bytes accepted so far. */
  get bytesReceived(): number {
    return this.inner.bytesReceived;
  }

  /** The decoded header once it is complete and valid, else null. */
  get header(): HxeHeader | null {
    return this.inner.header;
  }

  /** The first error seen, if any (every later push returns it too). */
  get error(): HxeError | null {
    return this.inner.error;
  }

  /** Running CRC over the covered bytes received so far. */
  get runningCrc(): number {
    return this.inner.runningCrc;
  }

  /** Bytes held by the verifier's buffer (for tests of the allocation bound). */
  get capacity(): number {
    return this.buf.length;
  }

  push(chunk: Uint8Array): HxeError | null {
    // Checked before the copy, so an oversized stream never grows the buffer.
    const refused = this.inner.admitLength(this.len + chunk.length);
    if (refused || chunk.length === 0) return this.release(refused);
    this.append(chunk);
    return this.release(this.inner.advance(this.buf, this.len));
  }

  finish(): Result<HxeImage, HxeError> {
    const result = this.inner.finish(this.buf.subarray(0, this.len));
    // The image's code/rodata are views into the old buffer, which nothing else references any more.
    this.buf = new Uint8Array(0);
    return result;
  }

  private release(e: HxeError | null): HxeError | null {
    if (e) this.buf = new Uint8Array(0);
    return e;
  }

  private append(chunk: Uint8Array): void {
    const need = this.len + chunk.length;
    if (need > this.buf.length) {
      const grown = Math.max(need, INITIAL_CAPACITY, this.buf.length + Math.min(this.buf.length, MAX_SLACK));
      const next = new Uint8Array(Math.min(grown, need + MAX_SLACK));
      next.set(this.buf.subarray(0, this.len), 0);
      this.buf = next;
    }
    if (chunk.length <= 16) {
      // a native set() costs more than a short loop
      for (let i = 0; i < chunk.length; i++) this.buf[this.len + i] = chunk[i] as number;
    } else {
      this.buf.set(chunk, this.len);
    }
    this.len = need;
  }
}
