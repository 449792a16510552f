import { KNOWN_FLAGS, OFF_CRC, SECTION_COMMAND, SECTION_MAILBOX, SECTION_VALUE } from './constants.js';
import { fail, hex } from './errors.js';
import { checkLayout } from './layout.js';
import { ok, type Result } from './result.js';
import { parseCommandSection } from './sections/cmd.js';
import { parseMailboxSection } from './sections/mailbox.js';
import { parseValueSection } from './sections/value.js';
import { parseTrailer } from './trailer.js';
import type { CommandEntry, HxeError, HxeHeader, HxeImage, HxeWarning, MailboxEntry, ValueEntry } from './types.js';

/**
 * Everything after the header: length, CRC, layout, sections, cross-entry rules, trailing bytes. Shared by
 * the one-shot parser and the streaming verifier so both give the same verdict on the same bytes.
 * `computedCrc` is the CRC the caller accumulated over the covered bytes.
 */
export function verifyBody(bytes: Uint8Array, h: HxeHeader, computedCrc: number): Result<HxeImage, HxeError> {
  const size = bytes.length;
  const codeStart = h.headerSize;
  const roStart = codeStart + h.codeLen;
  const roEnd = roStart + h.roLen;
  if (size < roEnd) {
    return fail('truncated', `image is ${size} bytes but the header announces ${h.headerSize} + ${h.codeLen} code + ${h.roLen} rodata = ${roEnd}`, size);
  }
  if (computedCrc !== h.crc32) {
    return fail('crc_mismatch', `crc32 at offset 0x1c is ${hex(h.crc32)}, computed ${hex(computedCrc)}`, OFF_CRC);
  }

  const warnings: HxeWarning[] = [];
  if (h.flags & ~KNOWN_FLAGS) {
    warnings.push({ reason: 'unknown_flags', message: `flags ${hex(h.flags)} at offset 0x6 has unknown bits ${hex(h.flags & ~KNOWN_FLAGS)}`, offset: 0x6 });
  }
  if (h.roLen % 4 !== 0) {
    warnings.push({ reason: 'ro_len_unaligned', message: `ro_len ${h.roLen} at offset 0x10 is not a multiple of 4 (the toolchain does this; accepted)`, offset: 0x10 });
  }

  const layout = checkLayout(bytes, h, warnings);
  if (!layout.ok) return layout;

  const values: ValueEntry[] = [];
  const commands: CommandEntry[] = [];
  const mailboxes: MailboxEntry[] = [];
  let mailboxFormat: 'json' | 'legacy' | undefined;
  for (const s of layout.value.sections) {
    const slice = { bytes, offset: s.offset, size: s.size, entryCount: s.entryCount };
    if (s.type === SECTION_VALUE) {
      const r = parseValueSection(slice);
      if (!r.ok) return r;
      for (const e of r.value) values.push(e);
    } else if (s.type === SECTION_COMMAND) {
      const r = parseCommandSection(slice);
      if (!r.ok) return r;
      for (const e of r.value) commands.push(e);
    } else if (s.type === SECTION_MAILBOX) {
      const r = parseMailboxSection(slice);
      if (!r.ok) return r;
      for (const m of r.value.mailboxes) mailboxes.push(m);
      mailboxFormat = r.value.format;
    } else {
      warnings.push({ reason: 'unknown_section', message: `section type ${s.type} at ${hex(s.offset)} (${s.size} bytes) is not understood; ignored`, offset: s.offset });
    }
  }
  const dup = findDuplicates(values, commands, mailboxes, layout.value.sections);
  if (dup) return { ok: false, error: dup };

  const bodyEnd = layout.value.bodyEnd;
  const image: HxeImage = {
    header: h,
    // Views, not copies: verification runs at CRC speed. strip() copies what the VM keeps.
    code: bytes.subarray(codeStart, roStart),
    rodata: bytes.subarray(roStart, roEnd),
    sections: layout.value.sections,
    values, commands, mailboxes, warnings,
    size,
    bodyEnd,
  };
  if (mailboxFormat) image.mailboxFormat = mailboxFormat;
  if (bodyEnd < size) {
    // A signature trailer claims the bytes after the body; anything else there is only a warning.
    const trailer = parseTrailer(bytes, bodyEnd);
    if (!trailer.ok) return trailer;
    if (trailer.value) image.trailer = trailer.value;
    else warnings.push({ reason: 'trailing_bytes', message: `${size - bodyEnd} bytes after the end of the body at ${hex(bodyEnd)} (covered by the CRC; accepted)`, offset: bodyEnd });
  }
  return ok(image);
}

/** Values and commands have separate ID spaces; mailbox targets are unique. */
function findDuplicates(values: ValueEntry[], commands: CommandEntry[], mailboxes: MailboxEntry[], sections: { type: number; offset: number }[]): HxeError | null {
  const seenValues = new Set<number>();
  for (const v of values) {
    const key = (v.group << 8) | v.id;
    if (seenValues.has(key)) return fail('duplicate_value', `.value has two entries for (group ${v.group}, id ${v.id})`, sectionOffset(sections, SECTION_VALUE)).error;
    seenValues.add(key);
  }
  const seenCommands = new Set<number>();
  for (const c of commands) {
    const key = (c.group << 8) | c.id;
    if (seenCommands.has(key)) return fail('duplicate_command', `.cmd has two entries for (group ${c.group}, id ${c.id})`, sectionOffset(sections, SECTION_COMMAND)).error;
    seenCommands.add(key);
  }
  const seenTargets = new Set<string>();
  for (const m of mailboxes) {
    if (seenTargets.has(m.target)) return fail('duplicate_mailbox', `.mailbox declares target "${m.target}" twice`, sectionOffset(sections, SECTION_MAILBOX)).error;
    seenTargets.add(m.target);
  }
  return null;
}

function sectionOffset(sections: { type: number; offset: number }[], type: number): number | undefined {
  for (const s of sections) if (s.type === type) return s.offset;
  return undefined;
}
