import { u16be, putU16be } from '../bytes.js';
import { VALUE_ENTRY_SIZE } from '../constants.js';
import { f16FromRaw } from '../f16.js';
import { ok, type Result } from '../result.js';
import { readString, StringTableWriter } from '../strings.js';
import type { HxeError, ValueEntry } from '../types.js';
import { entryArray, type SectionSlice } from './section.js';

/**
 * `.value` entries, 20 bytes each:
 * group u8, id u8, flags u8, auth u8, init f16, name_off u16, unit_off u16, epsilon f16, min f16, max f16,
 * persist_key u16, group_name_off u16.
 */
export function parseValueSection(s: SectionSlice): Result<ValueEntry[], HxeError> {
  const view = entryArray(s, VALUE_ENTRY_SIZE, '.value');
  if (!view.ok) return view;
  const b = s.bytes;
  const out: ValueEntry[] = [];
  for (let i = 0; i < s.entryCount; i++) {
    const at = s.offset + i * VALUE_ENTRY_SIZE;
    const name = readString(view.value, u16be(b, at + 6), `.value[${i}].name_off`, at + 6);
    if (!name.ok) return name;
    const unit = readString(view.value, u16be(b, at + 8), `.value[${i}].unit_off`, at + 8);
    if (!unit.ok) return unit;
    const groupName = readString(view.value, u16be(b, at + 18), `.value[${i}].group_name_off`, at + 18);
    if (!groupName.ok) return groupName;
    out.push({
      group: b[at] ?? 0,
      id: b[at + 1] ?? 0,
      flags: b[at + 2] ?? 0,
      auth: b[at + 3] ?? 0,
      init: f16FromRaw(u16be(b, at + 4)),
      name: name.value,
      unit: unit.value,
      epsilon: f16FromRaw(u16be(b, at + 10)),
      min: f16FromRaw(u16be(b, at + 12)),
      max: f16FromRaw(u16be(b, at + 14)),
      persistKey: u16be(b, at + 16),
      groupName: groupName.value,
    });
  }
  return ok(out);
}

/** Encodes already validated and sorted entries the way the HSX linker does (strings: name, unit, group). */
export function encodeValueSection(values: readonly ValueEntry[]): Uint8Array {
  const entriesSize = values.length * VALUE_ENTRY_SIZE;
  const strings = new StringTableWriter(entriesSize);
  const entries = new Uint8Array(entriesSize);
  values.forEach((v, i) => {
    const at = i * VALUE_ENTRY_SIZE;
    entries[at] = v.group;
    entries[at + 1] = v.id;
    entries[at + 2] = v.flags;
    entries[at + 3] = v.auth;
    putU16be(entries, at + 4, v.init.raw);
    putU16be(entries, at + 6, strings.intern(v.name));
    putU16be(entries, at + 8, strings.intern(v.unit));
    putU16be(entries, at + 10, v.epsilon.raw);
    putU16be(entries, at + 12, v.min.raw);
    putU16be(entries, at + 14, v.max.raw);
    putU16be(entries, at + 16, v.persistKey);
    putU16be(entries, at + 18, strings.intern(v.groupName));
  });
  const out = new Uint8Array(entriesSize + strings.size);
  out.set(entries, 0);
  strings.writeTo(out, entriesSize);
  return out;
}
