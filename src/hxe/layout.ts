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

interface Region {
  start: number;
  end: number;
  what: string;
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
  const fixed: Region[] = [
    { start: 0, end: h.headerSize, what: 'header' },
    { start: h.headerSize, end: h.headerSize + h.codeLen, what: 'code' },
    { start: h.headerSize + h.codeLen, end: roEnd, what: 'rodata' },
    { start: h.metaOffset, end: tableEnd, what: 'metadata table' },
  ];
  const sections: SectionInfo[] = [];
  const placed: Array<Region & { at: number }> = [];
  let bodyEnd = Math.max(roEnd, tableEnd);
  for (let i = 0; i < h.metaCount; i++) {
    const at = h.metaOffset + i * META_ENTRY_SIZE;
    const s: SectionInfo = { type: u32be(bytes, at), offset: u32be(bytes, at + 4), size: u32be(bytes, at + 8), entryCount: u32be(bytes, at + 12) };
    const end = s.offset + s.size;
    if (end > size) {
      return fail('section_out_of_bounds', `section #${i} (type ${s.type}, table entry at ${hex(at)}) spans ${hex(s.offset)}..${hex(end)}, past the end of the ${size}-byte image`, at + 4);
    }
    for (const r of fixed) {
      if (intersects(s.offset, end, r)) {
        return fail('section_overlap', `section #${i} (type ${s.type}, table entry at ${hex(at)}) at ${hex(s.offset)}..${hex(end)} lies inside the ${r.what} (${hex(r.start)}..${hex(r.end)})`, at + 4);
      }
    }
    placed.push({ start: s.offset, end, what: `section #${i}`, at });
    sections.push(s);
    bodyEnd = Math.max(bodyEnd, end);
  }
  const sorted = placed.length > 1 ? [...placed].sort(byStartThenEnd) : placed;
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (prev && cur && (cur.start < prev.end || (cur.start === prev.start && cur.end === prev.end))) {
      return fail('section_overlap', `${cur.what} (table entry at ${hex(cur.at)}) at ${hex(cur.start)}..${hex(cur.end)} overlaps ${prev.what} at ${hex(prev.start)}..${hex(prev.end)}`, cur.at + 4);
    }
  }
  reportGaps([...fixed.slice(3), ...sorted], roEnd, warnings);
  return ok({ roEnd, tableEnd, sections, bodyEnd });
}

// Module-level comparators: no closure is created per image on the verify path.
function byStartThenEnd(a: Region, b: Region): number {
  return a.start - b.start || a.end - b.end;
}

/** An empty section "lies inside" a region when its offset does; a non-empty one when the ranges meet. */
function intersects(start: number, end: number, r: Region): boolean {
  if (r.end === r.start) return false;
  if (start === end) return start >= r.start && start < r.end;
  return start < r.end && end > r.start;
}

/** Bytes inside the body that nothing describes are legal (the CRC covers them) but worth a warning. */
function reportGaps(regions: Region[], from: number, warnings: HxeWarning[]): void {
  let cursor = from;
  for (const r of regions.length > 1 ? [...regions].sort(byStartThenEnd) : regions) {
    if (r.start > cursor) {
      warnings.push({ reason: 'unreferenced_bytes', message: `${r.start - cursor} bytes at ${hex(cursor)}..${hex(r.start)} belong to no section`, offset: cursor });
    }
    cursor = Math.max(cursor, r.end);
  }
}
