import { hxeError, hex } from './errors.js';
import type { HxeError, HxeErrorReason } from './types.js';

/**
 * A section's string table: NUL-terminated UTF-8 after the entry array. Offsets are relative to the
 * section start and 0 means "no string" (offset 0 is always inside the entry array, so it can't be a string).
 *
 * The reader keeps the first error it meets (later reads return null), so an entry decoder reads all its
 * strings straight through and the caller checks `error` once per entry. Only referenced strings are checked,
 * so a bad byte in a string no entry uses is no error.
 */
export class StringTableReader {
  /** The first failure, if any. */
  error: HxeError | undefined;

  constructor(
    private readonly text: MetadataText,
    /** Absolute file offset of the section. */
    private readonly offset: number,
    private readonly size: number,
    /** Bytes taken by the entry array; strings must start at or after it. */
    private readonly entriesSize: number,
    /** Names the section in messages: `.value` gives `.value[3].unit_off`. */
    private readonly label: string,
  ) {}

  /**
   * The string at section-relative offset `rel`, read from the offset field `field` (at file offset
   * `fieldAt`) of entry `index`. Null for offset 0, and after any error.
   */
  read(rel: number, fieldAt: number, index: number, field: string): string | null {
    if (rel === 0 || this.error) return null;
    if (rel < this.entriesSize) {
      return this.reject('string_out_of_range', `${this.fieldName(index, field)} at offset ${hex(fieldAt)} is ${rel}, which points into the entry array (strings start at ${this.entriesSize})`, fieldAt);
    }
    if (rel >= this.size) {
      return this.reject('string_out_of_range', `${this.fieldName(index, field)} at offset ${hex(fieldAt)} is ${rel}, past the ${this.size}-byte section`, fieldAt);
    }
    const start = this.offset + rel;
    const end = this.offset + this.size;
    // one pass: find the terminator and learn whether the string is plain ASCII (the common case)
    const b = this.text.bytes;
    let ascii = true;
    let nul = start;
    for (; nul < end; nul++) {
      const c = b[nul] as number;
      if (c === 0) break;
      if (c >= 0x80) ascii = false;
    }
    if (nul >= end) {
      return this.reject('string_unterminated', `${this.fieldName(index, field)} at offset ${hex(fieldAt)}: string at ${hex(start)} has no NUL before the section ends at ${hex(end)}`, start);
    }
    if (ascii) return this.text.ascii(start, nul);
    try {
      return utf8.decode(b.subarray(start, nul));
    } catch {
      return this.reject('string_not_utf8', `${this.fieldName(index, field)}: string at ${hex(start)} is not valid UTF-8`, start);
    }
  }

  /** Records an entry-level failure found by the caller (first one wins), for the same once-per-entry check. */
  reject(reason: HxeErrorReason, message: string, offset: number): null {
    this.error ??= hxeError(reason, message, offset);
    return null;
  }

  /** Built only for messages: the verify path never pays for it. */
  private fieldName(index: number, field: string): string {
    return `${this.label}[${index}].${field}`;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The bytes of an image's metadata sections, decoded at most once per image into a string with one unit per
 * byte: string tables and the mailbox JSON are then slices of it rather than a native decode call each, which
 * is what keeps a full verify close to the raw CRC rate. A slice is taken only where the bytes are ASCII (what
 * the toolchain writes, and where latin1 and UTF-8 agree); anything else goes through the strict UTF-8 decoder.
 * Only the metadata is decoded, never code or rodata.
 */
export class MetadataText {
  private decoded: string | undefined;

  constructor(
    readonly bytes: Uint8Array,
    /** File offsets the text covers: [start, end). */
    private readonly start: number,
    private readonly end: number,
  ) {}

  /** Bytes [from, to), which the caller found to be ASCII, as text. */
  ascii(from: number, to: number): string {
    return this.text().slice(from - this.start, to - this.start);
  }

  /** Bytes [from, to) as text; throws the strict decoder's TypeError when they are not valid UTF-8. */
  utf8(from: number, to: number): string {
    const b = this.bytes;
    for (let i = from; i < to; i++) if ((b[i] as number) >= 0x80) return utf8.decode(b.subarray(from, to));
    return this.ascii(from, to);
  }

  private text(): string {
    // Buffer's 'latin1' maps each byte to the code unit of the same value (so text offsets are byte offsets)
    // and copies binary bytes (the entry arrays in between) at memcpy speed; TextDecoder('latin1') is ~10x
    // slower on them. The Buffer is a view: nothing is copied but the string itself.
    this.decoded ??= Buffer.from(this.bytes.buffer, this.bytes.byteOffset + this.start, this.end - this.start).toString('latin1');
    return this.decoded;
  }
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
