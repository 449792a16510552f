import { u32be } from './bytes.js';
import { META_ENTRY_SIZE } from './constants.js';
import { fail, hex } from './errors.js';
import { ok, type Result } from './result.js';
import type { HxeError, HxeHeader, HxeWarning, SectionInfo } from './types.js';

/**
 * Where everything sits in the file, checked: the metadata table inside the file and after rodata, every
 * section inside the file and clear of the header, code, rodata, the table and every other section.
 */
export interface Layout {
  roEnd: number;
  tableEnd: number;
  sections: SectionInfo[];
  /** Furthest end of code, rodata, table and sections. */
  bodyEnd: number;
}

export function checkLayout(bytes: Uint8Array, h: HxeHeader, warnings: HxeWarning[]): Result<Layout, HxeError> {
  const size = bytes.length;
  const roEnd = h.headerSize + h.codeLen + h.roLen;
  if (h.metaCount === 0) return ok({ roEnd, tableEnd: roEnd, sections: [], bodyEnd: roEnd });

  // The count is untrusted: check the table fits before reading (or allocating for) any entry.
  const tableEnd = h.metaOffset + h.metaCount * META_ENTRY_SIZE;
  if (tableEnd > size) {
    return fail('meta_table_out_of_bounds', `metadata table at ${hex(h.metaOffset)} with ${h.metaCount} entries ends at ${hex(tableEnd)}, past the end of the ${size}-byte image`, 0x44);
  }
  // header, code, rodata and the table; a section may lie inside none of them (names only for messages)
  const fixedStart = [0, h.headerSize, h.headerSize + h.codeLen, h.metaOffset];
  const fixedEnd = [h.headerSize, h.headerSize + h.codeLen, roEnd, tableEnd];
  const sections: SectionInfo[] = [];
  let bodyEnd = Math.max(roEnd, tableEnd);
  let inOrder = true;
  for (let i = 0; i < h.metaCount; i++) {
    const at = h.metaOffset + i * META_ENTRY_SIZE;
    const s: SectionInfo = { type: u32be(bytes, at), offset: u32be(bytes, at + 4), size: u32be(bytes, at + 8), entryCount: u32be(bytes, at + 12) };
    const end = s.offset + s.size;
    if (end > size) {
      return fail('section_out_of_bounds', `section #${i} (type ${s.type}, table entry at ${hex(at)}) spans ${hex(s.offset)}..${hex(end)}, past the end of the ${size}-byte image`, at + 4);
    }
    for (let r = 0; r < FIXED_NAMES.length; r++) {
      const rs = fixedStart[r] as number;
      const re = fixedEnd[r] as number;
      if (intersects(s.offset, end, rs, re)) {
        return fail('section_overlap', `section #${i} (type ${s.type}, table entry at ${hex(at)}) at ${hex(s.offset)}..${hex(end)} lies inside the ${FIXED_NAMES[r]} (${hex(rs)}..${hex(re)})`, at + 4);
      }
    }
    const prev = sections[i - 1];
    if (prev && byStartThenEnd(prev, s) > 0) inOrder = false;
    sections.push(s);
    bodyEnd = Math.max(bodyEnd, end);
  }
  // The linker writes sections in file order; only other images need sorting (stable: ties keep table order).
  const order: number[] = [];
  for (let i = 0; i < sections.length; i++) order.push(i);
  if (!inOrder) order.sort((a, b) => byStartThenEnd(sections[a] as SectionInfo, sections[b] as SectionInfo));
  for (let k = 1; k < order.length; k++) {
    const p = order[k - 1] as number;
    const c = order[k] as number;
    const prev = sections[p] as SectionInfo;
    const cur = sections[c] as SectionInfo;
    const prevEnd = prev.offset + prev.size;
    const curEnd = cur.offset + cur.size;
    if (cur.offset < prevEnd || (cur.offset === prev.offset && curEnd === prevEnd)) {
      return fail('section_overlap', `section #${c} (table entry at ${hex(entryAt(h, c))}) at ${hex(cur.offset)}..${hex(curEnd)} overlaps section #${p} at ${hex(prev.offset)}..${hex(prevEnd)}`, entryAt(h, c) + 4);
    }
  }
  reportGaps(sections, order, h.metaOffset, tableEnd, roEnd, warnings);
  return ok({ roEnd, tableEnd, sections, bodyEnd });
}

const FIXED_NAMES = ['header', 'code', 'rodata', 'metadata table'] as const;

const entryAt = (h: HxeHeader, i: number): number => h.metaOffset + i * META_ENTRY_SIZE;

// Module-level comparator: no closure is created per image on the verify path.
function byStartThenEnd(a: SectionInfo, b: SectionInfo): number {
  return a.offset - b.offset || a.size - b.size;
}

/** An empty section "lies inside" a region when its offset does; a non-empty one when the ranges meet. */
function intersects(start: number, end: number, rStart: number, rEnd: number): boolean {
  if (rEnd === rStart) return false;
  if (start === end) return start >= rStart && start < rEnd;
  return start < rEnd && end > rStart;
}

/**
 * Bytes inside the body that nothing describes are legal (the CRC covers them) but worth a warning. Walks
 * the table and the sections in file order from the end of rodata (the table first among equals).
 */
function reportGaps(sections: SectionInfo[], order: number[], tableStart: number, tableEnd: number, from: number, warnings: HxeWarning[]): void {
  let cursor = from;
  let tableDone = false;
  for (const i of order) {
    const s = sections[i] as SectionInfo;
    const end = s.offset + s.size;
    if (!tableDone && (s.offset > tableStart || (s.offset === tableStart && end >= tableEnd))) {
      cursor = visitRegion(tableStart, tableEnd, cursor, warnings);
      tableDone = true;
    }
    cursor = visitRegion(s.offset, end, cursor, warnings);
  }
  if (!tableDone) visitRegion(tableStart, tableEnd, cursor, warnings);
}

/** One step of reportGaps: warns about a gap before the region; returns the new cursor. */
function visitRegion(start: number, end: number, cursor: number, warnings: HxeWarning[]): number {
  if (start > cursor) {
    warnings.push({ reason: 'unreferenced_bytes', message: `${start - cursor} bytes at ${hex(cursor)}..${hex(start)} belong to no section`, offset: cursor });
  }
  return Math.max(cursor, end);
}
