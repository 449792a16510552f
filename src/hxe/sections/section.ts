import { fail, hex } from '../errors.js';
import type { HxeError } from '../types.js';
import type { SectionView } from '../strings.js';

/** A metadata section as the table describes it, with the image bytes it lives in. */
export interface SectionSlice extends Omit<SectionView, 'entriesSize'> {
  entryCount: number;
}

/** The entry array must fit inside the section; returns the view strings are read through. */
export function entryArray(s: SectionSlice, entrySize: number, what: string): { ok: true; value: SectionView } | { ok: false; error: HxeError } {
  const entriesSize = s.entryCount * entrySize;
  if (entriesSize > s.size) {
    return fail('section_truncated', `${what} section at ${hex(s.offset)} declares ${s.entryCount} entries of ${entrySize} bytes but is only ${s.size} bytes`, s.offset);
  }
  return { ok: true, value: { bytes: s.bytes, offset: s.offset, size: s.size, entriesSize } };
}
