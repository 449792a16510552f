/**
 * Suffix array by induced sorting (SA-IS: Nong, Zhang and Chan, "Linear Suffix Array Construction by
 * Almost Pure Induced-Sorting", 2009). Linear time; the end of the text acts as a unique sentinel
 * smaller than every symbol, so the result holds the n suffixes 0..n-1 in lexicographic order.
 */

/** Suffix array of the bytes `text`. */
export function suffixArray(text: Uint8Array): Int32Array {
  return sais(Int32Array.from(text), text.length, 256);
}

/** One element type throughout (Int32Array), so the engine keeps every access monomorphic. */
function sais(t: Int32Array, n: number, k: number): Int32Array {
  const sa = new Int32Array(n);
  if (n === 0) return sa;
  if (n === 1) {
    sa[0] = 0;
    return sa;
  }
  // S-type (1) / L-type (0); the last symbol is L-type because the sentinel after it is smaller
  const isS = new Uint8Array(n);
  for (let i = n - 2; i >= 0; i--) {
    const a = t[i]!;
    const b = t[i + 1]!;
    isS[i] = a < b || (a === b && isS[i + 1] === 1) ? 1 : 0;
  }
  // LMS: an S-type position whose left neighbour is L-type
  const lms = new Uint8Array(n);
  for (let i = 1; i < n; i++) lms[i] = isS[i] === 1 && isS[i - 1] === 0 ? 1 : 0;

  const counts = new Int32Array(k);
  for (let i = 0; i < n; i++) counts[t[i]!]!++;
  const bkt = new Int32Array(k);
  const starts = (): void => {
    let sum = 0;
    for (let c = 0; c < k; c++) {
      bkt[c] = sum;
      sum += counts[c]!;
    }
  };
  const ends = (): void => {
    let sum = 0;
    for (let c = 0; c < k; c++) {
      sum += counts[c]!;
      bkt[c] = sum;
    }
  };
  const induce = (): void => {
    starts();
    // the sentinel suffix sorts first; the suffix before it (n-1) is L-type
    sa[bkt[t[n - 1]!]!++] = n - 1;
    for (let i = 0; i < n; i++) {
      const j = sa[i]! - 1;
      if (j >= 0 && isS[j] === 0) sa[bkt[t[j]!]!++] = j;
    }
    ends();
    for (let i = n - 1; i >= 0; i--) {
      const j = sa[i]! - 1;
      if (j >= 0 && isS[j] === 1) sa[--bkt[t[j]!]!] = j;
    }
  };

  // 1. LMS suffixes at their bucket ends, then induce: the LMS substrings come out sorted
  sa.fill(-1);
  ends();
  for (let i = n - 1; i >= 1; i--) if (lms[i]) sa[--bkt[t[i]!]!] = i;
  induce();

  // 2. compact the sorted LMS positions and name their substrings
  let m = 0;
  for (let i = 0; i < n; i++) {
    const p = sa[i]!;
    if (p > 0 && lms[p]) sa[m++] = p;
  }
  sa.fill(-1, m);
  let name = 0;
  let prev = -1;
  for (let i = 0; i < m; i++) {
    const p = sa[i]!;
    let diff = prev < 0;
    for (let d = 0; !diff; d++) {
      if (p + d === n || prev + d === n || t[p + d] !== t[prev + d] || isS[p + d] !== isS[prev + d]) {
        diff = true;
      } else if (d > 0 && (lms[p + d] || lms[prev + d])) {
        break; // both LMS substrings end here, equal
      }
    }
    if (diff) {
      name++;
      prev = p;
    }
    sa[m + (p >> 1)] = name - 1;
  }
  const s1 = new Int32Array(m);
  for (let i = m, j = 0; i < n; i++) if (sa[i]! >= 0) s1[j++] = sa[i]!;

  // 3. order the LMS suffixes: recursively when two LMS substrings share a name
  let sa1: Int32Array;
  if (name < m) {
    sa1 = sais(s1, m, name);
  } else {
    sa1 = new Int32Array(m);
    for (let i = 0; i < m; i++) sa1[s1[i]!] = i;
  }
  // s1 now lists the LMS positions in text order
  for (let i = 1, j = 0; i < n; i++) if (lms[i]) s1[j++] = i;
  sa.fill(-1);
  ends();
  for (let i = m - 1; i >= 0; i--) {
    const p = s1[sa1[i]!]!;
    sa[--bkt[t[p]!]!] = p;
  }
  induce();
  return sa;
}
