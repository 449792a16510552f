/**
 * The receive side of the framing: splits the byte stream at 0x00 and undoes COBS in one pass,
 * writing each decoded byte exactly once, straight into the memory the frame is delivered in.
 *
 * Why not @serialport/parser-delimiter + cobsDecode: that parser concatenates every read with the
 * partial frame it holds (a fresh buffer per read) and hands each block through a Transform
 * stream before it is decoded — two copies, one allocation per read and stream bookkeeping per
 * frame. A pty hands over at most ~4 KiB per read, so most 4 KiB frames span two reads, and those
 * per-read costs were most of the listener's CPU on a fast line.
 *
 * Decoded frames are cut from a slab that is only ever appended to: a delivered frame's bytes are
 * never reused, so the receiver may keep a payload (the partial store holds them by reference).
 * A frame that is dropped (bad COBS, too long, bad length or CRC) leaves its space for the next.
 * Drop reasons are exactly decodeFrame's for the same block (the tests compare the two).
 */
import { cobsMaxEncodedLength } from './cobs.js';
import { FRAME_OVERHEAD_BYTES, parseFrameBytes, type Frame, type FrameDropReason } from './frame.js';

/** Enough for many default-size frames; a fresh slab is taken when the rest cannot hold a largest frame. */
const MIN_SLAB_BYTES = 256 * 1024;
/** Below this much free slab the port reads into its own buffer (a pty gives ~4 KiB per read). */
const MIN_DIRECT_READ_BYTES = 4096;

export interface FrameReaderSink {
  frame(frame: Frame): void;
  drop(reason: FrameDropReason): void;
}

export class CobsFrameReader {
  /** Longest block (between delimiters) a frame within the limit can take on the wire. */
  private readonly maxBlockBytes: number;
  private readonly slabBytes: number;
  private slab: Buffer;
  /** Where the frame being decoded starts in `slab`, and how many bytes it has so far. */
  private start = 0;
  private length = 0;
  /** Wire bytes of the current block so far (checked against maxBlockBytes, like decodeFrame). */
  private blockBytes = 0;
  /** Data bytes left in the current COBS block (0: the next byte is a code byte). */
  private remaining = 0;
  /** The block just finished stands for "its bytes, then 0x00" — unless the frame ends here. */
  private zeroPending = false;
  private fullBlock = false;
  /** Bytes seen since the last delimiter (back-to-back delimiters are idle syncs, not frames). */
  private started = false;
  /** Set once the frame is known bad: the rest of it up to the delimiter is skipped. */
  private dropping: FrameDropReason | null = null;

  constructor(private readonly maxPayload: number, private readonly sink: FrameReaderSink) {
    this.maxBlockBytes = cobsMaxEncodedLength(FRAME_OVERHEAD_BYTES + maxPayload);
    this.slabBytes = Math.max(MIN_SLAB_BYTES, 4 * this.maxBlockBytes);
    this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
  }

  /**
   * Free memory in the slab, right after the frame being decoded, for the port to read into (null
   * when little is left: then the port reads into its own buffer and push() copies). Bytes read here
   * are un-stuffed where they lie: decoding only ever moves bytes towards the frame's start, so it
   * never overwrites a byte it has not read yet.
   */
  readTarget(): Buffer | null {
    const free = this.start + this.length;
    return this.slab.length - free >= MIN_DIRECT_READ_BYTES ? this.slab.subarray(free) : null;
  }

  /** Takes the next bytes read from the port (any split: a frame may span many reads). */
  push(chunk: Buffer): void {
    const n = chunk.length;
    let at = 0;
    while (at < n) {
      const zero = chunk.indexOf(0, at);
      const end = zero === -1 ? n : zero;
      if (end > at) {
        this.started = true;
        this.blockBytes += end - at;
        // Too long for any frame within the limit: skip to the next delimiter. Decoding never
        // yields more bytes than it reads, so a block within the limit fits the slab's reserve.
        if (this.dropping === null && this.blockBytes > this.maxBlockBytes) this.dropping = 'too_long';
        if (this.dropping === null) this.decode(chunk, at, end);
      }
      if (zero === -1) return;
      this.endFrame();
      at = zero + 1;
    }
  }

  /** Un-stuffs chunk[at, end) (no 0x00 inside) onto the current frame. */
  private decode(chunk: Buffer, at: number, end: number): void {
    while (at < end) {
      if (this.remaining === 0) {
        // A code byte: 1 + the length of the run that follows (0xff: 254 bytes and no implied zero).
        const code = chunk[at++]!;
        if (this.zeroPending) this.slab[this.start + this.length++] = 0;
        this.fullBlock = code === 0xff;
        this.remaining = code - 1;
        this.zeroPending = this.remaining === 0 && !this.fullBlock;
        continue;
      }
      const take = Math.min(this.remaining, end - at);
      const to = this.start + this.length;
      // Read into the slab (readTarget): a move inside one buffer, far cheaper per call than a copy.
      if (chunk.buffer === this.slab.buffer) {
        const from = chunk.byteOffset - this.slab.byteOffset + at;
        this.slab.copyWithin(to, from, from + take);
      } else {
        chunk.copy(this.slab, to, at, at + take);
      }
      this.length += take;
      at += take;
      this.remaining -= take;
      if (this.remaining === 0) this.zeroPending = !this.fullBlock;
    }
  }

  /** A delimiter: deliver the frame if it is whole and checks out, then start the next one. */
  private endFrame(): void {
    if (this.started) {
      if (this.dropping !== null) this.sink.drop(this.dropping);
      // A code that promised more bytes than arrived before the delimiter: not valid COBS.
      else if (this.remaining !== 0) this.sink.drop('cobs_invalid');
      else this.deliver();
    }
    this.length = 0;
    this.blockBytes = 0;
    this.remaining = 0;
    this.zeroPending = false;
    this.started = false;
    this.dropping = null;
  }

  private deliver(): void {
    const bytes = this.slab.subarray(this.start, this.start + this.length);
    const parsed = parseFrameBytes(bytes, this.maxPayload);
    if (!parsed.ok) {
      this.sink.drop(parsed.error.reason);
      return;
    }
    // Keep the delivered bytes: move on, to a new slab when this one cannot hold a largest frame.
    this.start += this.length;
    if (this.slab.length - this.start < this.maxBlockBytes) {
      this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
      this.start = 0;
    }
    this.sink.frame(parsed.value);
  }
}
