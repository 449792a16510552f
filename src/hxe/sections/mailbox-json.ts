import type { MetadataText } from '../strings.js';

/**
 * A fast path for the `.mailbox` JSON the HSX linker writes: `{"mailboxes":[{…},…],"version":N}` with no
 * whitespace, each entry a flat object whose keys are `[a-z_]+` and whose values are non-negative integers
 * (at most 15 digits, so exact) or strings of printable ASCII without escapes. For such bytes JSON.parse
 * returns exactly this (same keys, order, values and prototypes); JSON.parse alone costs about as much as
 * the rest of the metadata together, so the common case skips it.
 *
 * Returns undefined for anything else (nested values such as `bindings`, escapes, whitespace, other numbers,
 * malformed text, a key `__proto__`): the caller then runs JSON.parse, which gives the verdict and any error.
 */
export function parseLinkerMailboxJson(text: MetadataText, start: number, end: number): { mailboxes: Array<Record<string, unknown>>; version: number } | undefined {
  const b = text.bytes.subarray(0, end); // absolute offsets; nothing past the JSON can be read
  let i = expect(b, start, end, HEAD);
  if (i < 0) return undefined;
  const mailboxes: Array<Record<string, unknown>> = [];
  if (b[i] === 0x5d) i++; // empty list
  else {
    for (;;) {
      if (b[i] !== 0x7b) return undefined; // '{'
      i++;
      const entry: Record<string, unknown> = {};
      if (b[i] === 0x7d) i++; // '{}'
      else {
        for (;;) {
          // key: "[a-z_]+"
          if (b[i] !== 0x22) return undefined;
          const keyStart = ++i;
          while (i < end && (((b[i] as number) >= 0x61 && (b[i] as number) <= 0x7a) || b[i] === 0x5f)) i++;
          if (i === keyStart || b[i] !== 0x22 || b[i + 1] !== 0x3a) return undefined;
          const key = knownKey(b, keyStart, i) ?? text.ascii(keyStart, i);
          if (key === '__proto__') return undefined;
          i += 2;
          const c = b[i];
          if (c === 0x22) {
            const valueStart = ++i;
            while (i < end && (b[i] as number) >= 0x20 && (b[i] as number) <= 0x7e && b[i] !== 0x22 && b[i] !== 0x5c) i++;
            if (b[i] !== 0x22 || i >= end) return undefined;
            entry[key] = text.ascii(valueStart, i);
            i++;
          } else {
            const value = readInt(b, i, end);
            if (value < 0) return undefined;
            entry[key] = value;
            i = intEnd;
          }
          if (b[i] === 0x2c) {
            i++;
            continue;
          }
          if (b[i] !== 0x7d) return undefined;
          i++;
          break;
        }
      }
      mailboxes.push(entry);
      if (b[i] === 0x2c) {
        i++;
        continue;
      }
      if (b[i] !== 0x5d) return undefined; // ']'
      i++;
      break;
    }
  }
  i = expect(b, i, end, VERSION);
  if (i < 0) return undefined;
  const version = readInt(b, i, end);
  if (version < 0 || intEnd !== end - 1 || b[end - 1] !== 0x7d) return undefined;
  return { mailboxes, version };
}

const ascii = (s: string): number[] => Array.from(s, (c) => c.charCodeAt(0));
const HEAD = ascii('{"mailboxes":[');
const VERSION = ascii(',"version":');

/** Index after `lit` when the bytes at `i` are exactly it, else -1. */
function expect(b: Uint8Array, i: number, end: number, lit: readonly number[]): number {
  if (i + lit.length > end) return -1;
  for (let k = 0; k < lit.length; k++) if (b[i + k] !== lit[k]) return -1;
  return i + lit.length;
}

/**
 * The keys the linker writes, as literals: a store under a key that is already an internalized string
 * skips hashing a freshly sliced one for every entry.
 */
const KNOWN_KEYS = ['capacity', 'mode_mask', 'target', 'flags', 'mode', 'name', 'owner_pid'].map((k) => ({ key: k, bytes: ascii(k) }));

function knownKey(b: Uint8Array, start: number, end: number): string | undefined {
  for (const k of KNOWN_KEYS) {
    if (k.bytes.length === end - start && expect(b, start, end, k.bytes) === end) return k.key;
  }
  return undefined;
}

/** Where the last readInt stopped (a module-level out-parameter: no result object per number). */
let intEnd = 0;

/** `0` or `[1-9][0-9]{0,14}` (exact as a double), ending at `intEnd`; -1 for anything else. */
function readInt(b: Uint8Array, i: number, end: number): number {
  const first = b[i];
  if (first === undefined || i >= end || first < 0x30 || first > 0x39) return -1;
  let k = i + 1;
  let value = first - 0x30;
  if (first !== 0x30) {
    while (k < end && (b[k] as number) >= 0x30 && (b[k] as number) <= 0x39) value = value * 10 + ((b[k++] as number) - 0x30);
    if (k - i > 15) return -1;
  }
  const after = b[k];
  // "01", "0.5", "1e3", "1E3": not this grammar
  if (after !== undefined && ((after >= 0x30 && after <= 0x39) || after === 0x2e || after === 0x65 || after === 0x45)) return -1;
  intEnd = k;
  return value;
}
