/**
 * A raw-DEFLATE encoder (RFC 1951) for small windows that spends time for bytes: it finds, at every
 * position, the nearest match of each length (hash chains over the window), then chooses the parse by
 * shortest path under a bit-cost model that it re-estimates from its own previous parse a few times
 * (optimal parsing in the manner of Zopfli, Alakuijala and Vandevenne 2013, written here from the format),
 * splits the symbols into blocks where separate Huffman codes pay, and writes each block with
 * length-limited codes (package-merge). zlib's lazy matching decides greedily with fixed costs; on patch
 * bodies (long zero runs between sparse differences) the chosen parse is several per cent smaller.
 * Master side only: the device decodes it with the ordinary decoder.
 */

const LEN_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
const CLEN_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
const MIN_MATCH = 3;
const MAX_MATCH = 258;

/** Length 3..258 → length code index 0..28. */
const LEN_CODE = new Uint8Array(MAX_MATCH + 1);
for (let c = 0; c < 29; c++) {
  const top = c === 28 ? 258 : LEN_BASE[c + 1]! - 1;
  for (let l = LEN_BASE[c]!; l <= (c === 27 ? 257 : top); l++) LEN_CODE[l] = c;
}
LEN_CODE[258] = 28;

/** The last length of each length code. */
const BUCKET_ENDS: number[] = [];
for (let l = MIN_MATCH; l <= MAX_MATCH; l++) if (l === MAX_MATCH || LEN_CODE[l + 1] !== LEN_CODE[l]) BUCKET_ENDS.push(l);

function distCode(d: number): number {
  let c = 0;
  while (c < 29 && DIST_BASE[c + 1]! <= d) c++;
  return c;
}

export interface DeflateOptions {
  /** 8..15; distances never exceed 2^windowBits. */
  windowBits: number;
  /** Parse/cost rounds (1 = one shortest path under initial costs). Default 4. */
  iterations?: number;
  /** Hash-chain candidates examined per position. Default 128. */
  maxChain?: number;
  /** A match this long ends the chain walk at its position. Default 128 (measured: +0.05 % size, a fifth less time). */
  niceLength?: number;
}

/** Per position: the nearest distance for each length, as steps (length up to which `dist` is nearest). */
interface Matches {
  start: Int32Array;
  len: Int32Array;
  dist: Int32Array;
}

function findMatches(data: Uint8Array, window: number, maxChain: number, nice: number): Matches {
  const n = data.length;
  const HB = 15;
  const head = new Int32Array(1 << HB).fill(-1);
  const prev = new Int32Array(n).fill(-1);
  const start = new Int32Array(n + 1);
  let lens = new Int32Array(Math.max(16, n));
  let dists = new Int32Array(Math.max(16, n));
  let count = 0;
  let lastDist = 0;
  let lastLen = 0;
  for (let i = 0; i < n; i++) {
    start[i] = count;
    if (i + MIN_MATCH > n) continue;
    const h = (Math.imul((data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!, 0x9e3779b1) >>> (32 - HB));
    const maxLen = Math.min(MAX_MATCH, n - i);
    let best = MIN_MATCH - 1;
    // the previous position's best match, one byte on, is a known lower bound at the same distance
    let hint = lastLen > MIN_MATCH ? lastLen - 1 : 0;
    let p = head[h]!;
    for (let chain = 0; p >= 0 && i - p <= window && chain < maxChain; chain++, p = prev[p]!) {
      if (best < maxLen && data[p + best] !== data[i + best]) continue;
      const d = i - p;
      let l = d === lastDist && hint > 0 ? hint : 0;
      while (l < maxLen && data[p + l] === data[i + l]) l++;
      if (l > best) {
        if (count >= lens.length) {
          const nl = new Int32Array(lens.length * 2);
          nl.set(lens);
          lens = nl;
          const nd = new Int32Array(dists.length * 2);
          nd.set(dists);
          dists = nd;
        }
        lens[count] = l;
        dists[count] = d;
        count++;
        best = l;
        if (l >= maxLen || l >= nice) break;
      }
    }
    if (best >= MIN_MATCH) {
      lastLen = best;
      lastDist = dists[count - 1]!;
    } else {
      lastLen = 0;
      lastDist = 0;
    }
    prev[i] = head[h]!;
    head[h] = i;
  }
  start[n] = count;
  return { start, len: lens, dist: dists };
}

/** Bit costs of literal/length symbols, length codes and distance codes (extra bits included). */
interface Costs {
  lit: Float64Array; // 0..255
  len: Float64Array; // by length 3..258
  dist: Float64Array; // by distance 1..window
}

function costsFrom(litFreq: Float64Array, distFreq: Float64Array, window: number): Costs {
  const entropy = (f: Float64Array): Float64Array => {
    let total = 0;
    for (const x of f) total += x;
    const out = new Float64Array(f.length);
    const lt = Math.log2(Math.max(total, 1));
    for (let s = 0; s < f.length; s++) out[s] = f[s]! > 0 ? lt - Math.log2(f[s]!) : lt + 1;
    return out;
  };
  const le = entropy(litFreq);
  const de = entropy(distFreq);
  const lit = le.subarray(0, 256);
  const len = new Float64Array(MAX_MATCH + 1);
  for (let l = MIN_MATCH; l <= MAX_MATCH; l++) len[l] = le[257 + LEN_CODE[l]!]! + LEN_EXTRA[LEN_CODE[l]!]!;
  const dist = new Float64Array(window + 1);
  for (let d = 1; d <= window; d++) {
    const c = distCode(d);
    dist[d] = de[c]! + DIST_EXTRA[c]!;
  }
  return { lit, len, dist };
}

/** Shortest path through the positions under `costs`: returns, per position reached, the step taken. */
function parse(data: Uint8Array, m: Matches, costs: Costs): { lens: Int32Array; dists: Int32Array; count: number } {
  const n = data.length;
  const cost = new Float64Array(n + 1).fill(Infinity);
  const stepLen = new Int32Array(n + 1);
  const stepDist = new Int32Array(n + 1);
  cost[0] = 0;
  let prevFull = -1; // distance of the previous position's 258-byte match, if it had one
  for (let i = 0; i < n; i++) {
    const c = cost[i]!;
    const e0 = m.start[i + 1]!;
    const last = e0 > m.start[i]! ? e0 - 1 : -1;
    if (last >= 0 && m.len[last] === MAX_MATCH && m.dist[last] === prevFull) {
      // inside a long repetition: only the literal and the full-length match are worth relaxing
      const lv = c + costs.lit[data[i]!]!;
      if (lv < cost[i + 1]!) {
        cost[i + 1] = lv;
        stepLen[i + 1] = 1;
        stepDist[i + 1] = 0;
      }
      const v = c + costs.dist[prevFull]! + costs.len[MAX_MATCH]!;
      if (v < cost[i + MAX_MATCH]!) {
        cost[i + MAX_MATCH] = v;
        stepLen[i + MAX_MATCH] = MAX_MATCH;
        stepDist[i + MAX_MATCH] = prevFull;
      }
      continue;
    }
    prevFull = last >= 0 && m.len[last] === MAX_MATCH ? m.dist[last]! : -1;
    const lv = c + costs.lit[data[i]!]!;
    if (lv < cost[i + 1]!) {
      cost[i + 1] = lv;
      stepLen[i + 1] = 1;
      stepDist[i + 1] = 0;
    }
    let from = MIN_MATCH;
    for (let s = m.start[i]!; s < m.start[i + 1]!; s++) {
      const L = m.len[s]!;
      const D = m.dist[s]!;
      const dc = c + costs.dist[D]!;
      // every length up to 40; above that the last length of each length code, and L itself
      const dense = Math.min(L, 40);
      for (let l = from; l <= dense; l++) {
        const v = dc + costs.len[l]!;
        if (v < cost[i + l]!) {
          cost[i + l] = v;
          stepLen[i + l] = l;
          stepDist[i + l] = D;
        }
      }
      if (L > 40) {
        for (let k = 0; k < BUCKET_ENDS.length; k++) {
          const e = BUCKET_ENDS[k]!;
          if (e < from || e <= 40) continue;
          const l = e >= L ? L : e;
          const v = dc + costs.len[l]!;
          if (v < cost[i + l]!) {
            cost[i + l] = v;
            stepLen[i + l] = l;
            stepDist[i + l] = D;
          }
          if (e >= L) break;
        }
      }
      from = L + 1;
    }
  }
  // walk back
  let count = 0;
  for (let p = n; p > 0; p -= stepLen[p]!) count++;
  const lens = new Int32Array(count);
  const dists = new Int32Array(count);
  let k = count;
  for (let p = n; p > 0; p -= stepLen[p]!) {
    k--;
    lens[k] = stepLen[p]!;
    dists[k] = stepDist[p]!;
  }
  return { lens, dists, count };
}

/** Greedy longest-match parse: the first round's statistics. */
function greedy(data: Uint8Array, m: Matches): { lens: Int32Array; dists: Int32Array; count: number } {
  const lens: number[] = [];
  const dists: number[] = [];
  for (let i = 0; i < data.length; ) {
    const e = m.start[i + 1]!;
    if (e > m.start[i]!) {
      lens.push(m.len[e - 1]!);
      dists.push(m.dist[e - 1]!);
      i += m.len[e - 1]!;
    } else {
      lens.push(1);
      dists.push(0);
      i++;
    }
  }
  return { lens: Int32Array.from(lens), dists: Int32Array.from(dists), count: lens.length };
}

function stats(data: Uint8Array, p: { lens: Int32Array; dists: Int32Array }, from: number, to: number, litFreq: Float64Array, distFreq: Float64Array): void {
  litFreq.fill(0);
  distFreq.fill(0);
  let pos = 0;
  for (let k = 0; k < from; k++) pos += p.lens[k]!;
  for (let k = from; k < to; k++) {
    const l = p.lens[k]!;
    if (l === 1) litFreq[data[pos]!]!++;
    else {
      litFreq[257 + LEN_CODE[l]!]!++;
      distFreq[distCode(p.dists[k]!)]!++;
    }
    pos += l;
  }
  litFreq[256]!++;
}

/**
 * Code lengths limited to `limit` bits for the given frequencies (package-merge). Symbols with
 * frequency 0 get 0; at least two symbols get a code, so every code is complete.
 */
export function limitedLengths(freq: ArrayLike<number>, limit: number): Uint8Array {
  const n = freq.length;
  const out = new Uint8Array(n);
  const syms: number[] = [];
  for (let s = 0; s < n; s++) if (freq[s]! > 0) syms.push(s);
  for (let s = 0; syms.length < 2 && s < n; s++) if (!syms.includes(s)) syms.push(s); // phantom symbols
  const w = (s: number): number => Math.max(freq[s]!, 0);
  syms.sort((a, b) => w(a) - w(b) || a - b);
  type Item = { w: number; sym: number; a?: Item; b?: Item };
  const leaves: Item[] = syms.map((s) => ({ w: w(s), sym: s }));
  let list: Item[] = leaves;
  for (let level = 1; level < limit; level++) {
    const packages: Item[] = [];
    for (let k = 0; k + 1 < list.length; k += 2) packages.push({ w: list[k]!.w + list[k + 1]!.w, sym: -1, a: list[k]!, b: list[k + 1]! });
    const merged: Item[] = [];
    let i = 0;
    let j = 0;
    while (i < leaves.length || j < packages.length) {
      if (j >= packages.length || (i < leaves.length && leaves[i]!.w <= packages[j]!.w)) merged.push(leaves[i++]!);
      else merged.push(packages[j++]!);
    }
    list = merged;
  }
  const stack: Item[] = list.slice(0, 2 * syms.length - 2);
  while (stack.length) {
    const it = stack.pop()!;
    if (it.sym >= 0) out[it.sym]!++;
    else {
      stack.push(it.a!, it.b!);
    }
  }
  return out;
}

class Bits {
  buf: Uint8Array = new Uint8Array(1 << 16);
  pos = 0;
  acc = 0;
  n = 0;
  put(value: number, count: number): void {
    this.acc |= value << this.n;
    this.n += count;
    while (this.n >= 8) {
      if (this.pos >= this.buf.length) {
        const b = new Uint8Array(this.buf.length * 2);
        b.set(this.buf);
        this.buf = b;
      }
      this.buf[this.pos++] = this.acc & 0xff;
      this.acc >>>= 8;
      this.n -= 8;
    }
  }
  bitLength(): number {
    return this.pos * 8 + this.n;
  }
  done(): Uint8Array {
    if (this.n > 0) this.put(0, 8 - this.n);
    return this.buf.slice(0, this.pos);
  }
}

/** Canonical codes (RFC 1951 §3.2.2), bit-reversed for LSB-first output. */
function codesFor(lengths: Uint8Array): Uint32Array {
  const count = new Uint16Array(16);
  for (const l of lengths) count[l]!++;
  count[0] = 0;
  const next = new Uint32Array(16);
  let code = 0;
  for (let b = 1; b < 16; b++) {
    code = (code + count[b - 1]!) << 1;
    next[b] = code;
  }
  const out = new Uint32Array(lengths.length);
  for (let s = 0; s < lengths.length; s++) {
    const l = lengths[s]!;
    if (!l) continue;
    let c = next[l]!++;
    let r = 0;
    for (let k = 0; k < l; k++) {
      r = (r << 1) | (c & 1);
      c >>>= 1;
    }
    out[s] = r;
  }
  return out;
}

interface BlockPlan {
  litLens: Uint8Array;
  distLens: Uint8Array;
  /** (symbol, extra-bits count, extra value) of the code-length sequence. */
  tokens: number[];
  clenLens: Uint8Array;
  hlit: number;
  hdist: number;
  hclen: number;
  bits: number;
}

function planBlock(litFreq: Float64Array, distFreq: Float64Array): BlockPlan {
  const litLens = limitedLengths(litFreq, 15);
  const distLens = limitedLengths(distFreq, 15);
  let hlit = 286;
  while (hlit > 257 && litLens[hlit - 1] === 0) hlit--;
  let hdist = 30;
  while (hdist > 1 && distLens[hdist - 1] === 0) hdist--;
  const all = [...litLens.subarray(0, hlit), ...distLens.subarray(0, hdist)];
  const tokens: number[] = [];
  for (let i = 0; i < all.length; ) {
    const v = all[i]!;
    let run = 1;
    while (i + run < all.length && all[i + run] === v) run++;
    let left = run;
    if (v === 0) {
      while (left >= 11) {
        const k = Math.min(left, 138);
        tokens.push(18, 7, k - 11);
        left -= k;
      }
      if (left >= 3) {
        tokens.push(17, 3, left - 3);
        left = 0;
      }
    } else {
      tokens.push(v, 0, 0);
      left--;
      while (left >= 3) {
        const k = Math.min(left, 6);
        tokens.push(16, 2, k - 3);
        left -= k;
      }
    }
    for (; left > 0; left--) tokens.push(v, 0, 0);
    i += run;
  }
  const clenFreq = new Float64Array(19);
  for (let k = 0; k < tokens.length; k += 3) clenFreq[tokens[k]!]!++;
  const clenLens = limitedLengths(clenFreq, 7);
  let hclen = 19;
  while (hclen > 4 && clenLens[CLEN_ORDER[hclen - 1]!] === 0) hclen--;
  let bits = 3 + 5 + 5 + 4 + 3 * hclen;
  for (let k = 0; k < tokens.length; k += 3) bits += clenLens[tokens[k]!]! + tokens[k + 1]!;
  for (let s = 0; s < 286; s++) bits += litFreq[s]! * (litLens[s]! + (s > 256 ? LEN_EXTRA[s - 257]! : 0));
  for (let s = 0; s < 30; s++) bits += distFreq[s]! * (distLens[s]! + DIST_EXTRA[s]!);
  return { litLens, distLens, tokens, clenLens, hlit, hdist, hclen, bits };
}

/** Raw DEFLATE of `data` with distances ≤ 2^windowBits. */
export function deflateRawOptimal(data: Uint8Array, options: DeflateOptions): Uint8Array {
  const window = 1 << options.windowBits;
  const rounds = Math.max(1, options.iterations ?? 4);
  const m = findMatches(data, window, options.maxChain ?? 128, options.niceLength ?? 128);
  const litFreq = new Float64Array(288);
  const distFreq = new Float64Array(30);
  let p = greedy(data, m);
  let best = p;
  let bestBits = Infinity;
  for (let r = 0; r < rounds; r++) {
    stats(data, p, 0, p.count, litFreq, distFreq);
    const bits = planBlock(litFreq, distFreq).bits;
    if (bits < bestBits) {
      bestBits = bits;
      best = p;
    }
    p = parse(data, m, costsFrom(litFreq, distFreq, window));
  }
  stats(data, p, 0, p.count, litFreq, distFreq);
  if (planBlock(litFreq, distFreq).bits < bestBits) best = p;

  // blocks: start from runs of 1024 symbols, merge neighbours while one code is cheaper than two
  const cuts: number[] = [];
  for (let k = 0; k < best.count; k += 1024) cuts.push(k);
  cuts.push(best.count);
  const bitsOf = (a: number, b: number): number => {
    stats(data, best, a, b, litFreq, distFreq);
    return planBlock(litFreq, distFreq).bits;
  };
  let blocks = cuts.slice(0, -1).map((a, i) => ({ a, b: cuts[i + 1]!, bits: 0 }));
  for (const b of blocks) b.bits = bitsOf(b.a, b.b);
  for (let changed = true; changed && blocks.length > 1; ) {
    changed = false;
    const next: typeof blocks = [];
    for (let i = 0; i < blocks.length; i++) {
      const cur = next.length ? next[next.length - 1]! : null;
      const b = blocks[i]!;
      if (cur) {
        const merged = bitsOf(cur.a, b.b);
        if (merged <= cur.bits + b.bits) {
          cur.b = b.b;
          cur.bits = merged;
          changed = true;
          continue;
        }
      }
      next.push({ ...b });
    }
    blocks = next;
  }

  const out = new Bits();
  let pos = 0;
  if (blocks.length === 0) blocks = [{ a: 0, b: 0, bits: 0 }];
  for (let bi = 0; bi < blocks.length; bi++) {
    const blk = blocks[bi]!;
    stats(data, best, blk.a, blk.b, litFreq, distFreq);
    const plan = planBlock(litFreq, distFreq);
    out.put(bi === blocks.length - 1 ? 1 : 0, 1);
    out.put(2, 2);
    out.put(plan.hlit - 257, 5);
    out.put(plan.hdist - 1, 5);
    out.put(plan.hclen - 4, 4);
    for (let k = 0; k < plan.hclen; k++) out.put(plan.clenLens[CLEN_ORDER[k]!]!, 3);
    const clenCodes = codesFor(plan.clenLens);
    for (let k = 0; k < plan.tokens.length; k += 3) {
      const s = plan.tokens[k]!;
      out.put(clenCodes[s]!, plan.clenLens[s]!);
      if (plan.tokens[k + 1]!) out.put(plan.tokens[k + 2]!, plan.tokens[k + 1]!);
    }
    const litCodes = codesFor(plan.litLens);
    const distCodes = codesFor(plan.distLens);
    for (let k = blk.a; k < blk.b; k++) {
      const l = best.lens[k]!;
      if (l === 1) {
        const s = data[pos]!;
        out.put(litCodes[s]!, plan.litLens[s]!);
      } else {
        const lc = LEN_CODE[l]!;
        out.put(litCodes[257 + lc]!, plan.litLens[257 + lc]!);
        if (LEN_EXTRA[lc]!) out.put(l - LEN_BASE[lc]!, LEN_EXTRA[lc]!);
        const d = best.dists[k]!;
        const dc = distCode(d);
        out.put(distCodes[dc]!, plan.distLens[dc]!);
        if (DIST_EXTRA[dc]!) out.put(d - DIST_BASE[dc]!, DIST_EXTRA[dc]!);
      }
      pos += l;
    }
    out.put(litCodes[256]!, plan.litLens[256]!);
  }
  return out.done();
}
