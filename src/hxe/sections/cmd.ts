import { u16be, u32be, putU16be, putU32be } from '../bytes.js';
import { COMMAND_ENTRY_SIZE } from '../constants.js';
import type { Result } from '../result.js';
import type { MetadataText } from '../strings.js';
import type { CommandEntry, HxeError, SectionInfo } from '../types.js';
import { encodeEntryTable, readEntryTable, type EntryTable } from './section.js';

/**
 * `.cmd` entries, 16 bytes each:
 * group u8, id u8, flags u8, auth u8, handler_offset u32, name_off u16, help_off u16,
 * u32 whose high 16 bits are reserved and low 16 bits are group_name_off.
 * The HSX linker interns the strings in the order name, help, group.
 */
const COMMAND_TABLE: EntryTable<CommandEntry> = {
  entrySize: COMMAND_ENTRY_SIZE,
  label: '.cmd',
  decode: (b, at, i, strings) => ({
    group: b[at] as number,
    id: b[at + 1] as number,
    flags: b[at + 2] as number,
    auth: b[at + 3] as number,
    handlerOffset: u32be(b, at + 4),
    name: strings.read(u16be(b, at + 8), at + 8, i, 'name_off'),
    help: strings.read(u16be(b, at + 10), at + 10, i, 'help_off'),
    groupName: strings.read(u16be(b, at + 14), at + 14, i, 'group_name_off'),
    reserved: u16be(b, at + 12),
  }),
  encode: (out, at, c, strings) => {
    out[at] = c.group;
    out[at + 1] = c.id;
    out[at + 2] = c.flags;
    out[at + 3] = c.auth;
    putU32be(out, at + 4, c.handlerOffset);
    putU16be(out, at + 8, strings.intern(c.name));
    putU16be(out, at + 10, strings.intern(c.help));
    putU16be(out, at + 12, c.reserved ?? 0);
    putU16be(out, at + 14, strings.intern(c.groupName));
  },
};

export function parseCommandSection(text: MetadataText, s: SectionInfo): Result<CommandEntry[], HxeError> {
  return readEntryTable(text, s, COMMAND_TABLE);
}

/** Encodes already validated and sorted entries the way the HSX linker does. */
export function encodeCommandSection(commands: readonly CommandEntry[]): Uint8Array {
  return encodeEntryTable(commands, COMMAND_TABLE);
}
