import { fail, hex } from '../errors.js';
import { ok, type Result } from '../result.js';
import { StringTableReader, StringTableWriter, type MetadataText } from '../strings.js';
import type { HxeError, SectionInfo } from '../types.js';

/**
 * One kind of fixed-size entry followed by a string table (`.value`, `.cmd`, the legacy `.mailbox`): its size,
 * its names in messages and how one entry is decoded and encoded. The loops around them are shared.
 */
export interface EntryTable<T> {
  entrySize: number;
  /** Names entries in messages: `.value` gives `.value[3].unit_off`. */
  label: string;
  /** Names the section in the truncation message, when that differs from `label`. */
  sectionName?: string;
  /**
   * Decodes the entry at file offset `at`. Strings come from `strings`, which also takes any other
   * failure (`strings.reject`); after a failure the return value is ignored.
   */
  decode(b: Uint8Array, at: number, index: number, strings: StringTableReader): T | null;
  /** Writes one entry at `at` of the entry array, interning its strings (in the linker's order). */
  encode(entries: Uint8Array, at: number, entry: T, strings: StringTableWriter): void;
}

/** The entry array must fit inside the section (the count is untrusted); then every entry, in order. */
export function readEntryTable<T>(text: MetadataText, s: SectionInfo, table: EntryTable<T>): Result<T[], HxeError> {
  const entriesSize = s.entryCount * table.entrySize;
  if (entriesSize > s.size) {
    return fail('section_truncated', `${table.sectionName ?? table.label} section at ${hex(s.offset)} declares ${s.entryCount} entries of ${table.entrySize} bytes but is only ${s.size} bytes`, s.offset);
  }
  const strings = new StringTableReader(text, s.offset, s.size, entriesSize, table.label);
  const bytes = text.bytes;
  const out: T[] = [];
  for (let i = 0; i < s.entryCount; i++) {
    const entry = table.decode(bytes, s.offset + i * table.entrySize, i, strings);
    if (strings.error) return { ok: false, error: strings.error };
    out.push(entry as T);
  }
  return ok(out);
}

/** The entry array followed by the strings the entries intern (HSX linker layout). */
export function encodeEntryTable<T>(entries: readonly T[], table: EntryTable<T>): Uint8Array {
  const entriesSize = entries.length * table.entrySize;
  const strings = new StringTableWriter(entriesSize);
  const array = new Uint8Array(entriesSize);
  entries.forEach((e, i) => table.encode(array, i * table.entrySize, e, strings));
  const out = new Uint8Array(entriesSize + strings.size);
  out.set(array, 0);
  strings.writeTo(out, entriesSize);
  return out;
}
