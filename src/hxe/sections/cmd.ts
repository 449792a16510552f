import { u16be, u32be, putU16be, putU32be } from '../bytes.js';
import { COMMAND_ENTRY_SIZE } from '../constants.js';
import { ok, type Result } from '../result.js';
import { readString, StringTableWriter } from '../strings.js';
import type { CommandEntry, HxeError } from '../types.js';
import { entryArray, type SectionSlice } from './section.js';

/**
 * `.cmd` entries, 16 bytes each:
 * group u8, id u8, flags u8, auth u8, handler_offset u32, name_off u16, help_off u16,
 * u32 whose high 16 bits are reserved and low 16 bits are group_name_off.
 */
export function parseCommandSection(s: SectionSlice): Result<CommandEntry[], HxeError> {
  const view = entryArray(s, COMMAND_ENTRY_SIZE, '.cmd');
  if (!view.ok) return view;
  const b = s.bytes;
  const out: CommandEntry[] = [];
  for (let i = 0; i < s.entryCount; i++) {
    const at = s.offset + i * COMMAND_ENTRY_SIZE;
    const name = readString(view.value, u16be(b, at + 8), `.cmd[${i}].name_off`, at + 8);
    if (!name.ok) return name;
    const help = readString(view.value, u16be(b, at + 10), `.cmd[${i}].help_off`, at + 10);
    if (!help.ok) return help;
    const groupName = readString(view.value, u16be(b, at + 14), `.cmd[${i}].group_name_off`, at + 14);
    if (!groupName.ok) return groupName;
    out.push({
      group: b[at] ?? 0,
      id: b[at + 1] ?? 0,
      flags: b[at + 2] ?? 0,
      auth: b[at + 3] ?? 0,
      handlerOffset: u32be(b, at + 4),
      name: name.value,
      help: help.value,
      groupName: groupName.value,
      reserved: u16be(b, at + 12),
    });
  }
  return ok(out);
}

/** Encodes already validated and sorted entries the way the HSX linker does (strings: name, help, group). */
export function encodeCommandSection(commands: readonly CommandEntry[]): Uint8Array {
  const entriesSize = commands.length * COMMAND_ENTRY_SIZE;
  const strings = new StringTableWriter(entriesSize);
  const entries = new Uint8Array(entriesSize);
  commands.forEach((c, i) => {
    const at = i * COMMAND_ENTRY_SIZE;
    entries[at] = c.group;
    entries[at + 1] = c.id;
    entries[at + 2] = c.flags;
    entries[at + 3] = c.auth;
    putU32be(entries, at + 4, c.handlerOffset);
    putU16be(entries, at + 8, strings.intern(c.name));
    putU16be(entries, at + 10, strings.intern(c.help));
    putU16be(entries, at + 12, c.reserved ?? 0);
    putU16be(entries, at + 14, strings.intern(c.groupName));
  });
  const out = new Uint8Array(entriesSize + strings.size);
  out.set(entries, 0);
  strings.writeTo(out, entriesSize);
  return out;
}
