/**
 * Which chunks of an image a listener holds, and the compact missing-chunk report built from it:
 * runs of missing chunks become RANGE frames, scattered holes become bitmaps (32 chunks per classic
 * frame, 480 per FD frame). A report is capped at a few frames; the next round reports the rest.
 */
import { encodeMissingBitmap, encodeMissingRange, MAX_START } from './messages.js';

export class ChunkSet {
  private readonly bits: Uint8Array;
  private count = 0;

  constructor(readonly size: number) {
    this.bits = new Uint8Array(Math.ceil(size / 8));
  }

  get held(): number {
    return this.count;
  }

  get complete(): boolean {
    return this.count === this.size;
  }

  has(seq: number): boolean {
    return (this.bits[seq >> 3]! & (0x80 >> (seq & 7))) !== 0;
  }

  /** Returns false when the chunk was already held. */
  add(seq: number): boolean {
    const i = seq >> 3;
    const m = 0x80 >> (seq & 7);
    if (this.bits[i]! & m) return false;
    this.bits[i]! |= m;
    this.count++;
    return true;
  }

  remove(seq: number): void {
    const i = seq >> 3;
    const m = 0x80 >> (seq & 7);
    if (this.bits[i]! & m) {
      this.bits[i]! &= ~m;
      this.count--;
    }
  }

  /** First chunk ≥ from that is missing, or -1. */
  nextMissing(from: number): number {
    for (let s = from; s < this.size; s++) {
      if ((s & 7) === 0 && this.bits[s >> 3] === 0xff) {
        s += 7;
        continue;
      }
      if (!this.has(s)) return s;
    }
    return -1;
  }

  /** Missing chunks below `end`. */
  missingBelow(end: number): number {
    let held = 0;
    for (let s = 0; s < Math.min(end, this.size); s++) if (this.has(s)) held++;
    return Math.min(end, this.size) - held;
  }

  /** MISSING frame payloads naming the missing chunks, at most `maxFrames`; the last carries LAST. */
  report(session: number, bitmapBytes: number, maxFrames: number): Uint8Array[] {
    const bitmapBits = bitmapBytes * 8;
    const pieces: Array<{ start: number; count: number; bitmap: Uint8Array | null }> = [];
    let s = this.nextMissing(0);
    while (s !== -1 && s <= MAX_START && pieces.length < maxFrames) {
      let run = 1;
      while (s + run < this.size && !this.has(s + run)) run++;
      if (run >= bitmapBits) {
        pieces.push({ start: s, count: run, bitmap: null });
        s = this.nextMissing(s + run);
      } else {
        const bitmap = new Uint8Array(bitmapBytes);
        for (let i = 0; i < bitmapBits && s + i < this.size; i++) if (!this.has(s + i)) bitmap[i >> 3]! |= 0x80 >> (i & 7);
        pieces.push({ start: s, count: bitmapBits, bitmap });
        s = this.nextMissing(s + bitmapBits);
      }
    }
    return pieces.map((p, i) => {
      const last = i === pieces.length - 1;
      return p.bitmap ? encodeMissingBitmap(session, p.start, p.bitmap, last) : encodeMissingRange(session, p.start, p.count, last);
    });
  }
}
