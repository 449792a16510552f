import { u16be, putU16be } from '../bytes.js';
import { VALUE_ENTRY_SIZE } from '../constants.js';
import { f16FromRaw } from '../f16.js';
import type { Result } from '../result.js';
import type { MetadataText } from '../strings.js';
import type { HxeError, SectionInfo, ValueEntry } from '../types.js';
import { encodeEntryTable, readEntryTable, type EntryTable } from './section.js';

/**
 * `.value` entries, 20 bytes each:
 * group u8, id u8, flags u8, auth u8, init f16, name_off u16, unit_off u16, epsilon f16, min f16, max f16,
 * persist_key u16, group_name_off u16. The HSX linker interns the strings in the order name, unit, group.
 */
const VALUE_TABLE: EntryTable<ValueEntry> = {
  entrySize: VALUE_ENTRY_SIZE,
  label: '.value',
  decode: (b, at, i, strings) => ({
    group: b[at] as number,
    id: b[at + 1] as number,
    flags: b[at + 2] as number,
    auth: b[at + 3] as number,
    init: f16FromRaw(u16be(b, at + 4)),
    name: strings.read(u16be(b, at + 6), at + 6, i, 'name_off'),
    unit: strings.read(u16be(b, at + 8), at + 8, i, 'unit_off'),
    epsilon: f16FromRaw(u16be(b, at + 10)),
    min: f16FromRaw(u16be(b, at + 12)),
    max: f16FromRaw(u16be(b, at + 14)),
    persistKey: u16be(b, at + 16),
    groupName: strings.read(u16be(b, at + 18), at + 18, i, 'group_name_off'),
  }),
  encode: (out, at, v, strings) => {
    out[at] = v.group;
    out[at + 1] = v.id;
    out[at + 2] = v.flags;
    out[at + 3] = v.auth;
    putU16be(out, at + 4, v.init.raw);
    putU16be(out, at + 6, strings.intern(v.name));
    putU16be(out, at + 8, strings.intern(v.unit));
    putU16be(out, at + 10, v.epsilon.raw);
    putU16be(out, at + 12, v.min.raw);
    putU16be(out, at + 14, v.max.raw);
    putU16be(out, at + 16, v.persistKey);
    putU16be(out, at + 18, strings.intern(v.groupName));
  },
};

export function parseValueSection(text: MetadataText, s: SectionInfo): Result<ValueEntry[], HxeError> {
  return readEntryTable(text, s, VALUE_TABLE);
}

/** Encodes already validated and sorted entries the way the HSX linker does. */
export function encodeValueSection(values: readonly ValueEntry[]): Uint8Array {
  return encodeEntryTable(values, VALUE_TABLE);
}
