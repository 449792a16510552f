/**
 * Patch creation on the master: the bsdiff algorithm (Colin Percival, "Naïve differences of executable
 * code", 2003) on a suffix array of the base. It finds, for each position of the target, the longest
 * exact match in the base; runs where the base "mostly" matches at the same offset become `add`
 * records (byte-wise differences, mostly zeros when code only moved), what matches nowhere becomes
 * `extra` bytes. The records are written in our format (src/engine/codec/patch-format.ts) as one record
 * stream, compressed with the device's small-window raw deflate.
 */
import { createHash } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import { PATCH_HEADER_SIZE, PATCH_VERSION, encodePatchHeader, putVarint, zigzag } from '../../engine/codec/patch-format.js';
import { MAX_WINDOW_BITS } from '../../engine/codec/inflate.js';
import { suffixArray } from './suffix-array.js';
import { nodeWindowBits } from './compress.js';

export interface PatchRecord {
  /** Bytes rebuilt as base + difference. */
  add: number;
  /** Literal target bytes after them. */
  extra: number;
  /** Base cursor move after the add run. */
  seek: number;
}

export interface MakePatchOptions {
  /** Window of the body's deflate stream: 8..12 (node writes 9 for 8). Default 11 (see docs/delta.md, RAM). */
  windowBits?: number;
  /** zlib level, default 9. */
  level?: number;
  /**
   * A mismatch run shorter than this many bytes inside an add run is kept as differences rather than
   * cut into a new record (bsdiff's fixed value is 8).
   */
  minGain?: number;
}

export interface Patch {
  bytes: Uint8Array;
  records: number;
  /** Decoded record-stream size (header.bodySize). */
  bodySize: number;
  addBytes: number;
  extraBytes: number;
  windowBits: number;
}

export const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());

/** Length of the common prefix of a[i..] and b[j..]. */
function matchLen(a: Uint8Array, i: number, b: Uint8Array, j: number): number {
  let k = 0;
  const max = Math.min(a.length - i, b.length - j);
  while (k < max && a[i + k] === b[j + k]) k++;
  return k;
}

/** Longest match of target[at..] among the base's suffixes: binary search on the suffix array. */
function longest(sa: Int32Array, base: Uint8Array, target: Uint8Array, at: number): { pos: number; len: number } {
  let lo = 0;
  let hi = sa.length - 1;
  if (hi < 0) return { pos: 0, len: 0 };
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    const p = sa[mid]!;
    const l = matchLen(base, p, target, at);
    // compare the first differing byte (a suffix that is a prefix of the other sorts first)
    const less = p + l === base.length || (at + l < target.length && base[p + l]! < target[at + l]!);
    if (less) lo = mid;
    else hi = mid;
  }
  const a = matchLen(base, sa[lo]!, target, at);
  const b = matchLen(base, sa[hi]!, target, at);
  return a >= b ? { pos: sa[lo]!, len: a } : { pos: sa[hi]!, len: b };
}

/** The bsdiff record list from base to target. */
export function diffRecords(base: Uint8Array, target: Uint8Array, minGain = 8): PatchRecord[] {
  const sa = suffixArray(base);
  const oldSize = base.length;
  const newSize = target.length;
  const out: PatchRecord[] = [];
  let scan = 0;
  let len = 0;
  let pos = 0;
  let lastScan = 0;
  let lastPos = 0;
  let lastOffset = 0;
  while (scan < newSize) {
    let oldScore = 0;
    let sc = (scan += len);
    for (; scan < newSize; scan++) {
      const m = longest(sa, base, target, scan);
      pos = m.pos;
      len = m.len;
      for (; sc < scan + len; sc++) if (sc + lastOffset < oldSize && base[sc + lastOffset] === target[sc]) oldScore++;
      if ((len === oldScore && len !== 0) || len > oldScore + minGain) break;
      if (scan + lastOffset < oldSize && base[scan + lastOffset] === target[scan]) oldScore--;
    }
    if (len === oldScore && scan !== newSize) continue;
    // extend the previous match forwards (lenF) and this one backwards (lenB) while half the bytes agree
    let s = 0;
    let best = 0;
    let lenF = 0;
    for (let i = 0; lastScan + i < scan && lastPos + i < oldSize; ) {
      if (base[lastPos + i] === target[lastScan + i]) s++;
      i++;
      if (s * 2 - i > best * 2 - lenF) {
        best = s;
        lenF = i;
      }
    }
    let lenB = 0;
    if (scan < newSize) {
      s = 0;
      best = 0;
      for (let i = 1; scan >= lastScan + i && pos >= i; i++) {
        if (base[pos - i] === target[scan - i]) s++;
        if (s * 2 - i > best * 2 - lenB) {
          best = s;
          lenB = i;
        }
      }
    }
    if (lastScan + lenF > scan - lenB) {
      // the two extensions overlap: split where the forward one stops paying
      const overlap = lastScan + lenF - (scan - lenB);
      s = 0;
      best = 0;
      let lenS = 0;
      for (let i = 0; i < overlap; i++) {
        if (target[lastScan + lenF - overlap + i] === base[lastPos + lenF - overlap + i]) s++;
        if (target[scan - lenB + i] === base[pos - lenB + i]) s--;
        if (s > best) {
          best = s;
          lenS = i + 1;
        }
      }
      lenF += lenS - overlap;
      lenB -= lenS;
    }
    out.push({ add: lenF, extra: scan - lenB - (lastScan + lenF), seek: pos - lenB - (lastPos + lenF) });
    lastScan = scan - lenB;
    lastPos = pos - lenB;
    lastOffset = pos - scan;
  }
  return out;
}

/** The decoded record stream for `records` (what the device inflates and walks). */
export function encodeRecords(base: Uint8Array, target: Uint8Array, records: PatchRecord[]): Uint8Array {
  let size = 0;
  for (const r of records) size += 15 + r.add + r.extra;
  const out = new Uint8Array(size);
  const ctl: number[] = [];
  let o = 0;
  let t = 0;
  let b = 0;
  for (const r of records) {
    ctl.length = 0;
    putVarint(ctl, r.add);
    putVarint(ctl, r.extra);
    putVarint(ctl, zigzag(r.seek));
    out.set(ctl, o);
    o += ctl.length;
    for (let i = 0; i < r.add; i++) out[o++] = (target[t + i]! - base[b + i]!) & 0xff;
    out.set(target.subarray(t + r.add, t + r.add + r.extra), o);
    o += r.extra;
    t += r.add + r.extra;
    b += r.add + r.seek;
  }
  return out.slice(0, o);
}

/** A patch from `base` to `target` in the HSX delta format. */
export function makePatch(base: Uint8Array, target: Uint8Array, options: MakePatchOptions = {}): Patch {
  const windowBits = options.windowBits ?? 11;
  if (!Number.isInteger(windowBits) || windowBits < 8 || windowBits > MAX_WINDOW_BITS) throw new RangeError(`windowBits must be 8..${MAX_WINDOW_BITS}`);
  if (base.length > 0xffffffff || target.length > 0xffffffff) throw new RangeError('images are at most 4 GiB');
  const records = diffRecords(base, target, options.minGain ?? 8);
  const body = encodeRecords(base, target, records);
  const wb = nodeWindowBits(windowBits);
  const z = deflateRawSync(body, { windowBits: wb, level: options.level ?? 9, memLevel: 9 });
  const header = encodePatchHeader({
    version: PATCH_VERSION,
    windowBits: wb,
    baseSize: base.length,
    baseSha256: sha256(base),
    targetSize: target.length,
    targetSha256: sha256(target),
    bodySize: body.length,
  });
  const bytes = new Uint8Array(PATCH_HEADER_SIZE + z.length);
  bytes.set(header);
  bytes.set(z, PATCH_HEADER_SIZE);
  let addBytes = 0;
  let extraBytes = 0;
  for (const r of records) {
    addBytes += r.add;
    extraBytes += r.extra;
  }
  return { bytes, records: records.length, bodySize: body.length, addBytes, extraBytes, windowBits: wb };
}
