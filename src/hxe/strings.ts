import { fail, hex } from './errors.js';
import { ok, type Result } from './result.js';
import type { HxeError } from './types.js';

/**
 * A section's string table: NUL-terminated UTF-8 after the entry array. Offsets are relative to the
 * section start and 0 means "no string" (offset 0 is always inside the entry array, so it can't be a string).
 */
export interface SectionView {
  bytes: Uint8Array;
  /** Absolute file offset of the section. */
  offset: number;
  size: number;
  /** Bytes taken by the entry array; strings must start at or after it. */
  entriesSize: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function readString(s: SectionView, rel: number, field: string, fieldAt: number): Result<string | null, HxeError> {
  if (rel === 0) return ok(null);
  if (rel < s.entriesSize) {
    return fail('string_out_of_range', `${field} at offset ${hex(fieldAt)} is ${rel}, which points into the entry array (strings start at ${s.entriesSize})`, fieldAt);
  }
  if (rel >= s.size) {
    return fail('string_out_of_range', `${field} at offset ${hex(fieldAt)} is ${rel}, past the ${s.size}-byte section`, fieldAt);
  }
  const b = s.bytes;
  const start = s.offset + rel;
  const end = s.offset + s.size;
  // one pass: find the terminator and learn whether the string is plain ASCII (the common case)
  let ascii = true;
  let nul = start;
  for (; nul < end; nul++) {
    const c = b[nul] as number;
    if (c === 0) break;
    if (c >= 0x80) ascii = false;
  }
  if (nul >= end) {
    return fail('string_unterminated', `${field} at offset ${hex(fieldAt)}: string at ${hex(start)} has no NUL before the section ends at ${hex(end)}`, start);
  }
  if (ascii) return ok(asciiString(b, start, nul));
  try {
    return ok(utf8.decode(b.subarray(start, nul)));
  } catch {
    return fail('string_not_utf8', `${field}: string at ${hex(start)} is not valid UTF-8`, start);
  }
}

function asciiString(b: Uint8Array, start: number, end: number): string {
  let out = '';
  if (end - start <= 64) {
    // short names and units: a plain loop beats creating a subarray for fromCharCode.apply
    for (let i = start; i < end; i++) out += String.fromCharCode(b[i] as number);
    return out;
  }
  // fromCharCode.apply takes array-likes; chunked so a long string never exceeds the argument limit
  for (let i = start; i < end; i += 4096) out += String.fromCharCode.apply(null, b.subarray(i, Math.min(end, i + 4096)) as unknown as number[]);
  return out;
}

/** UTF-8 length without allocating an encoder per call. */
export function utf8Length(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/**
 * The HSX linker's string interning: strings are appended in first-use order, identical strings share one
 * copy, the empty string gets its own NUL, and null is offset 0.
 */
export class StringTableWriter {
  private readonly offsets = new Map<string, number>();
  private readonly parts: Uint8Array[] = [];
  private length = 0;
  private static readonly enc = new TextEncoder();

  constructor(private readonly base: number) {}

  intern(text: string | null | undefined): number {
    if (text === null || text === undefined) return 0;
    const cached = this.offsets.get(text);
    if (cached !== undefined) return cached;
    const offset = this.base + this.length;
    const encoded = StringTableWriter.enc.encode(text);
    this.parts.push(encoded, new Uint8Array(1));
    this.length += encoded.length + 1;
    this.offsets.set(text, offset);
    return offset;
  }

  get size(): number {
    return this.length;
  }

  writeTo(target: Uint8Array, at: number): void {
    let p = at;
    for (const part of this.parts) {
      target.set(part, p);
      p += part.length;
    }
  }
}
