import { KNOWN_FLAGS, OFF_CRC, SECTION_COMMAND, SECTION_MAILBOX, SECTION_VALUE } from './constants.js';
import { fail, hex } from './errors.js';
import { checkLayout } from './layout.js';
import { ok, type Result } from './result.js';
import { parseCommandSection } from './sections/cmd.js';
import { parseMailboxSection } from './sections/mailbox.js';
import { parseValueSection } from './sections/value.js';
import { MetadataText } from './strings.js';
import { parseTrailer } from './trailer.js';
import type { CommandEntry, HxeError, HxeHeader, HxeImage, HxeWarning, MailboxEntry, SectionInfo, ValueEntry } from './types.js';

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

  // One section of each kind is the rule: its parsed array is used as is; a second one appends to it.
  let values: ValueEntry[] = NONE;
  let commands: CommandEntry[] = NONE;
  let mailboxes: MailboxEntry[] = NONE;
  let mailboxFormat: 'json' | 'legacy' | undefined;
  const text = metadataText(bytes, layout.value.sections);
  for (const s of layout.value.sections) {
    if (s.type === SECTION_VALUE) {
      const r = parseValueSection(text, s);
      if (!r.ok) return r;
      values = joined(values, r.value);
    } else if (s.type === SECTION_COMMAND) {
      const r = parseCommandSection(text, s);
      if (!r.ok) return r;
      commands = joined(commands, r.value);
    } else if (s.type === SECTION_MAILBOX) {
      const r = parseMailboxSection(text, s);
      if (!r.ok) return r;
      mailboxes = joined(mailboxes, r.value.mailboxes);
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
    // fresh arrays where no section gave one, so callers never share the placeholder
    values: values === NONE ? [] : values,
    commands: commands === NONE ? [] : commands,
    mailboxes: mailboxes === NONE ? [] : mailboxes,
    warnings,
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

/** From the first parsed section's start to the last one's end: the bytes whose text the section parsers share. */
function metadataText(bytes: Uint8Array, sections: SectionInfo[]): MetadataText {
  let start = bytes.length;
  let end = 0;
  for (const s of sections) {
    if (s.type !== SECTION_VALUE && s.type !== SECTION_COMMAND && s.type !== SECTION_MAILBOX) continue;
    start = Math.min(start, s.offset);
    end = Math.max(end, s.offset + s.size);
  }
  return new MetadataText(bytes, Math.min(start, end), end);
}

/** Placeholder for "no section of this kind yet"; never handed out (see the image literal above). */
const NONE: never[] = [];

function joined<T>(sofar: T[], more: T[]): T[] {
  if (sofar === NONE) return more;
  for (const e of more) sofar.push(e);
  return sofar;
}

/** Values and commands have separate ID spaces; mailbox targets are unique. */
function findDuplicates(values: ValueEntry[], commands: CommandEntry[], mailboxes: MailboxEntry[], sections: SectionInfo[]): HxeError | null {
  const v = firstRepeat(values, groupIdKey);
  if (v) return fail('duplicate_value', `.value has two entries for (group ${v.group}, id ${v.id})`, sectionOffset(sections, SECTION_VALUE)).error;
  const c = firstRepeat(commands, groupIdKey);
  if (c) return fail('duplicate_command', `.cmd has two entries for (group ${c.group}, id ${c.id})`, sectionOffset(sections, SECTION_COMMAND)).error;
  const m = firstRepeat(mailboxes, targetKey);
  if (m) return fail('duplicate_mailbox', `.mailbox declares target "${m.target}" twice`, sectionOffset(sections, SECTION_MAILBOX)).error;
  return null;
}

const groupIdKey = (e: { group: number; id: number }): number => (e.group << 8) | e.id;
const targetKey = (m: MailboxEntry): string => m.target;

/**
 * The first entry whose key an earlier entry already has. Images carry a handful of entries, where comparing
 * pairs beats building a Set; long lists (crafted or fuzzed) use one so the check stays linear.
 */
function firstRepeat<T, K>(list: readonly T[], key: (e: T) => K): T | undefined {
  if (list.length <= 16) {
    for (let i = 1; i < list.length; i++) {
      const k = key(list[i] as T);
      for (let j = 0; j < i; j++) if (key(list[j] as T) === k) return list[i];
    }
    return undefined;
  }
  const seen = new Set<K>();
  for (const e of list) {
    const k = key(e);
    if (seen.has(k)) return e;
    seen.add(k);
  }
  return undefined;
}

function sectionOffset(sections: SectionInfo[], type: number): number | undefined {
  for (const s of sections) if (s.type === type) return s.offset;
  return undefined;
}
