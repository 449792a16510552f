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
import { FLAG_CARRY, PATCH_HEADER_SIZE, PATCH_VERSION, encodePatchHeader, putVarint, zigzag } from '../../engine/codec/patch-format.js';
import { deflateRawOptimal } from './deflate.js';
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
  /**
   * Window of the body's deflate stream: 8..12 (node writes 9 for 8). Default 12; the applier then needs
   * 5,653 bytes of RAM, 3,605 with 11 (docs/delta.md). planTransfer picks it from the device's RAM.
   */
  windowBits?: number;
  /** zlib level, default 9. */
  level?: number;
  /**
   * A new exact match must beat the bytes still matching at the old offset by more than this many to cut
   * the add run (bsdiff's fixed value is 8). Default: try 6 and 8, keep the smaller patch.
   */
  minGain?: number;
  /** Extension weight (DiffOptions.extend), default 3. */
  extend?: number;
  /** Carry differences (FLAG_CARRY): true, false, or 'auto' (default: try both, keep the smaller). */
  carry?: boolean | 'auto';
  /** Body compressor: 'optimal' (default, deflate.ts, falls back to zlib's when that is smaller) or 'zlib'. */
  encoder?: 'optimal' | 'zlib';
}

export interface Patch {
  bytes: Uint8Array;
  records: number;
  /** Decoded record-stream size (header.bodySize). */
  bodySize: number;
  addBytes: number;
  extraBytes: number;
  windowBits: number;
  /** The body uses carry differences (FLAG_CARRY). */
  carry: boolean;
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

export interface DiffOptions {
  /** See MakePatchOptions.minGain; default 8 (bsdiff's). */
  minGain?: number;
  /**
   * A match is extended while matches × extend − length grows: 2 (bsdiff's) keeps bytes where at
   * least half agree, 3 where a third agree. Default 3: measured smaller on every firmware pair, since a
   * difference byte costs less after deflate than a literal one.
   */
  extend?: number;
  /** The base's suffix array, when the caller already has it. */
  sa?: Int32Array;
}

/** The bsdiff record list from base to target. */
export function diffRecords(base: Uint8Array, target: Uint8Array, options: DiffOptions = {}): PatchRecord[] {
  const minGain = options.minGain ?? 8;
  const extend = options.extend ?? 3;
  const sa = options.sa ?? suffixArray(base);
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
      if (s * extend - i > best * extend - lenF) {
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
        if (s * extend - i > best * extend - lenB) {
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

/**
 * The decoded record stream for `records` (what the device inflates and walks). With `carry`, the
 * differences are those of FLAG_CARRY: subtraction with borrow inside 32-bit words aligned to the target.
 */
export function encodeRecords(base: Uint8Array, target: Uint8Array, records: PatchRecord[], carry = false): Uint8Array {
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
    if (carry) {
      let c = 0;
      for (let i = 0; i < r.add; i++) {
        const old = base[b + i]!;
        const d = (target[t + i]! - old - c) & 0xff;
        out[o++] = d;
        c = (t + i + 1) & 3 ? (old + d + c) >> 8 : 0;
      }
    } else {
      for (let i = 0; i < r.add; i++) out[o++] = (target[t + i]! - base[b + i]!) & 0xff;
    }
    out.set(target.subarray(t + r.add, t + r.add + r.extra), o);
    o += r.extra;
    t += r.add + r.extra;
    b += r.add + r.seek;
  }
  return out.slice(0, o);
}

/**
 * A patch from `base` to `target` in the HSX delta format. Several encodings of the same diff are
 * tried (bsdiff's cut threshold `minGain`, plain or carry differences) and ranked by their zlib -6
 * size, which is quick; the winner's body is then compressed with the optimal-parsing encoder (deflate.ts),
 * or zlib's output is kept when that is smaller.
 */
export function makePatch(base: Uint8Array, target: Uint8Array, options: MakePatchOptions = {}): Patch {
  const windowBits = nodeWindowBits(options.windowBits ?? 12);
  if (base.length > 0xffffffff || target.length > 0xffffffff) throw new RangeError('images are at most 4 GiB');
  const level = options.level ?? 9;
  const gains = options.minGain === undefined ? [6, 8] : [options.minGain];
  const carries = options.carry === undefined || options.carry === 'auto' ? [false, true] : [options.carry];
  const encoder = options.encoder ?? 'optimal';
  const sa = suffixArray(base);
  let best: { records: PatchRecord[]; body: Uint8Array; carry: boolean; z: Uint8Array } | null = null;
  for (const g of gains) {
    const records = diffRecords(base, target, { minGain: g, sa, extend: options.extend ?? 3 });
    for (const carry of carries) {
      const body = encodeRecords(base, target, records, carry);
      // ranked by zlib -6 (a few ms; it ranks the variants as the final encoder does on the firmware pairs)
      const z = deflateRawSync(body, { windowBits, level: encoder === 'zlib' ? level : 6, memLevel: 9 });
      if (!best || z.length < best.z.length) best = { records, body, carry, z: new Uint8Array(z.buffer, z.byteOffset, z.byteLength) };
    }
  }
  const { records, body, carry } = best!;
  let z = best!.z;
  if (encoder === 'optimal') {
    const zl = deflateRawSync(body, { windowBits, level, memLevel: 9 });
    z = new Uint8Array(zl.buffer, zl.byteOffset, zl.byteLength);
    const opt = deflateRawOptimal(body, { windowBits });
    if (opt.length < z.length) z = opt;
  }
  const header = encodePatchHeader({
    version: PATCH_VERSION,
    windowBits,
    baseSize: base.length,
    baseSha256: sha256(base),
    targetSize: target.length,
    targetSha256: sha256(target),
    bodySize: body.length,
    flags: carry ? FLAG_CARRY : 0,
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
  return { bytes, records: records.length, bodySize: body.length, addBytes, extraBytes, windowBits, carry };
}
