import { u16be, u32be, putU16be, putU32be } from '../bytes.js';
import {
  LEGACY_MAILBOX_ENTRY_SIZE, MAILBOX_MODES, MAILBOX_NAME_MAX_BYTES, MAILBOX_NAMESPACES,
} from '../constants.js';
import { fail, hex } from '../errors.js';
import { formatMode, isKnownModeMask, parseModeText } from '../mailbox-mode.js';
import { pyJsonDumps } from '../pyjson.js';
import { ok, type Result } from '../result.js';
import { utf8Length, type MetadataText } from '../strings.js';
import type { HxeError, MailboxEntry, SectionInfo } from '../types.js';
import { parseLinkerMailboxJson } from './mailbox-json.js';
import { encodeEntryTable, readEntryTable, type EntryTable } from './section.js';

/**
 * `.mailbox`: a UTF-8 JSON payload (`{"version":1,"mailboxes":[…]}` or a bare array, trailing NULs allowed),
 * or — when the payload does not start with `{` or `[` — the legacy table of 16-byte structs
 * (name_off u32, queue_depth u16, flags u16, 8 reserved bytes) followed by a string table.
 */
export interface ParsedMailboxes {
  mailboxes: MailboxEntry[];
  format: 'json' | 'legacy';
}

/** Keys the engine interprets; every other key of a JSON entry is kept in `extra`. */
const INTERPRETED_KEYS = new Set(['target', 'name', 'capacity', 'mode', 'mode_mask', 'flags']);

export function parseMailboxSection(text: MetadataText, s: SectionInfo): Result<ParsedMailboxes, HxeError> {
  const first = s.size > 0 ? text.bytes[s.offset] : undefined;
  if (first === 0x7b || first === 0x5b) return parseJsonMailboxes(text, s);
  return parseLegacyMailboxes(text, s);
}

function parseJsonMailboxes(text: MetadataText, s: SectionInfo): Result<ParsedMailboxes, HxeError> {
  let end = s.offset + s.size;
  const bytes = text.bytes;
  // The toolchain writes ASCII-only JSON (non-ASCII is \u-escaped); trailing NULs pad the section.
  while (end > s.offset && bytes[end - 1] === 0) end--;
  let doc: unknown;
  try {
    doc = parseLinkerMailboxJson(text, s.offset, end) ?? JSON.parse(text.utf8(s.offset, end));
  } catch (e) {
    const why = e instanceof Error ? e.message : 'not UTF-8 JSON';
    return fail('mailbox_json_invalid', `.mailbox section at ${hex(s.offset)} is not valid UTF-8 JSON: ${why}`, s.offset);
  }
  let list: unknown;
  if (Array.isArray(doc)) {
    list = doc;
  } else if (isPlainObject(doc)) {
    if (doc.version !== undefined && doc.version !== 1) {
      return fail('mailbox_json_version', `.mailbox section at ${hex(s.offset)} has version ${JSON.stringify(doc.version)}, only 1 is understood`, s.offset);
    }
    list = doc.mailboxes;
    if (!Array.isArray(list)) {
      return fail('mailbox_json_invalid', `.mailbox section at ${hex(s.offset)}: "mailboxes" must be an array`, s.offset);
    }
  } else {
    return fail('mailbox_json_invalid', `.mailbox section at ${hex(s.offset)} must hold a JSON object or array`, s.offset);
  }
  const entries = list as unknown[];
  if (entries.length !== s.entryCount) {
    return fail('meta_inconsistent', `.mailbox section at ${hex(s.offset)} declares ${s.entryCount} entries in the table but its JSON lists ${entries.length}`, s.offset);
  }
  const out: MailboxEntry[] = [];
  for (let i = 0; i < entries.length; i++) {
    const entry = mailboxFromJson(entries[i], i, s.offset);
    if (!entry.ok) return entry;
    out.push(entry.value);
  }
  return ok({ mailboxes: out, format: 'json' });
}

/**
 * Where an entry is, for messages: a field path such as `mailboxes[2]`, or the index of a `.mailbox` entry
 * in an image (turned into `.mailbox[2]` only when a message needs it, so verifying builds no strings).
 */
type Where = string | number;
const whereText = (w: Where): string => (typeof w === 'number' ? `.mailbox[${w}]` : w);

/** Normalises one JSON mailbox object (also used by the builder to check a kept `source`). */
export function mailboxFromJson(raw: unknown, w: Where, at?: number): Result<MailboxEntry, HxeError> {
  if (!isPlainObject(raw)) return fail('mailbox_entry_invalid', `${whereText(w)} must be a JSON object`, at);
  const rawTarget = raw.target ?? raw.name;
  if (typeof rawTarget !== 'string') return fail('mailbox_entry_invalid', `${whereText(w)}.target must be a string`, at);
  const target = checkTarget(rawTarget.trim(), w, at);
  if (!target.ok) return target;

  let capacity = 0;
  if (raw.capacity !== undefined && raw.capacity !== null) {
    if (!isU16(raw.capacity)) return fail('mailbox_entry_invalid', `${whereText(w)}.capacity must be an integer 0..65535, got ${JSON.stringify(raw.capacity)}`, at);
    capacity = raw.capacity;
  }

  let mode = 0;
  if (raw.mode_mask !== undefined && raw.mode_mask !== null) {
    if (typeof raw.mode_mask !== 'number' || !Number.isInteger(raw.mode_mask)) {
      return fail('mailbox_entry_invalid', `${whereText(w)}.mode_mask must be an integer, got ${JSON.stringify(raw.mode_mask)}`, at);
    }
    if (!isKnownModeMask(raw.mode_mask)) return fail('mailbox_mode_unknown', `${whereText(w)}.mode_mask ${hex(raw.mode_mask)} has unknown mode bits`, at);
    mode = raw.mode_mask;
  }
  if (mode === 0 && raw.mode !== undefined && raw.mode !== null) {
    if (typeof raw.mode === 'number') {
      if (!isKnownModeMask(raw.mode)) return fail('mailbox_mode_unknown', `${whereText(w)}.mode ${JSON.stringify(raw.mode)} has unknown mode bits`, at);
      mode = raw.mode;
    } else if (typeof raw.mode === 'string') {
      const parsed = parseModeText(raw.mode);
      if (!parsed.ok) return fail('mailbox_mode_unknown', `${whereText(w)}.mode "${raw.mode}": unknown mode "${parsed.unknown}"`, at);
      mode = parsed.mask;
    } else {
      return fail('mailbox_entry_invalid', `${whereText(w)}.mode must be a string or an integer`, at);
    }
  }
  if (mode === 0) mode = MAILBOX_MODES.RDWR; // absent or zero means the executive's default

  if (raw.owner_pid !== undefined && raw.owner_pid !== null && !isU32(raw.owner_pid)) {
    return fail('mailbox_entry_invalid', `${whereText(w)}.owner_pid must be a non-negative integer`, at);
  }
  if (raw.bindings !== undefined && raw.bindings !== null) {
    if (!Array.isArray(raw.bindings)) return fail('mailbox_entry_invalid', `${whereText(w)}.bindings must be an array`, at);
    for (let j = 0; j < raw.bindings.length; j++) {
      const b: unknown = raw.bindings[j];
      if (!isPlainObject(b) || !isU32(b.pid)) return fail('mailbox_entry_invalid', `${whereText(w)}.bindings[${j}] must be an object with an integer pid`, at);
      if (b.flags !== undefined && !isU32(b.flags)) return fail('mailbox_entry_invalid', `${whereText(w)}.bindings[${j}].flags must be an integer`, at);
    }
  }

  const entry: MailboxEntry = { target: target.value, capacity, mode, source: raw };
  let extra: Record<string, unknown> | undefined; // made only when there is something to keep
  // for-in walks a JSON object's keys without the array Object.keys makes; hasOwn gives exactly Object.keys' set
  for (const key in raw) {
    if (!INTERPRETED_KEYS.has(key) && Object.hasOwn(raw, key)) setOwn((extra ??= {}), key, raw[key]);
  }
  if (extra) entry.extra = extra;
  return ok(entry);
}

function checkTarget(target: string, w: Where, at?: number): Result<string, HxeError> {
  // the namespaces are ASCII and none is a prefix of another, so the name's length follows without a copy
  let ns: string | undefined;
  for (const p of MAILBOX_NAMESPACES) {
    if (target.startsWith(p)) {
      ns = p;
      break;
    }
  }
  if (!ns) return fail('mailbox_entry_invalid', `${whereText(w)}.target "${target}" must start with one of ${MAILBOX_NAMESPACES.join(' ')}`, at);
  if (target.length === ns.length) return fail('mailbox_entry_invalid', `${whereText(w)}.target "${target}" has an empty name`, at);
  if (utf8Length(target) - ns.length > MAILBOX_NAME_MAX_BYTES) {
    return fail('mailbox_entry_invalid', `${whereText(w)}.target "${target}": name longer than ${MAILBOX_NAME_MAX_BYTES} bytes`, at);
  }
  return ok(target);
}

/** Legacy 16-byte structs: name_off u32, queue_depth u16, mode flags u16, 8 reserved bytes (must be 0). */
const LEGACY_TABLE: EntryTable<MailboxEntry> = {
  entrySize: LEGACY_MAILBOX_ENTRY_SIZE,
  label: '.mailbox',
  sectionName: '.mailbox (legacy)',
  decode: (b, at, i, strings) => {
    const name = strings.read(u32be(b, at), at, i, 'name_off');
    if (strings.error) return null;
    if (name === null) return strings.reject('mailbox_entry_invalid', `.mailbox[${i}].name_off at ${hex(at)} is 0: a mailbox needs a target`, at);
    const target = checkTarget(name, i, at);
    if (!target.ok) return strings.reject(target.error.reason, target.error.message, at);
    for (let r = 8; r < LEGACY_MAILBOX_ENTRY_SIZE; r++) {
      if (b[at + r] !== 0) return strings.reject('mailbox_entry_invalid', `.mailbox[${i}] reserved byte at ${hex(at + r)} is not 0`, at + r);
    }
    const flags = u16be(b, at + 6);
    if (!isKnownModeMask(flags)) return strings.reject('mailbox_mode_unknown', `.mailbox[${i}].flags ${hex(flags)} at ${hex(at + 6)} has unknown mode bits`, at + 6);
    return { target: target.value, capacity: u16be(b, at + 4), mode: flags === 0 ? MAILBOX_MODES.RDWR : flags };
  },
  encode: (out, at, m, strings) => {
    putU32be(out, at, strings.intern(m.target));
    putU16be(out, at + 4, m.capacity);
    putU16be(out, at + 6, m.mode);
  },
};

function parseLegacyMailboxes(text: MetadataText, s: SectionInfo): Result<ParsedMailboxes, HxeError> {
  const entries = readEntryTable(text, s, LEGACY_TABLE);
  return entries.ok ? ok({ mailboxes: entries.value, format: 'legacy' }) : entries;
}

/**
 * JSON form as the HSX linker writes it. An entry that still carries the object it was parsed from, and
 * still means the same, is written back verbatim (so `"mode":"rw|tap"` stays); others are written canonically.
 */
export function encodeMailboxJson(mailboxes: readonly MailboxEntry[]): Uint8Array {
  const objects = mailboxes.map((m) => (m.source && sourceStillMatches(m) ? m.source : canonicalMailbox(m)));
  return new TextEncoder().encode(pyJsonDumps({ version: 1, mailboxes: objects }));
}

export function canonicalMailbox(m: MailboxEntry): Record<string, unknown> {
  const obj: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m.extra ?? {})) if (!INTERPRETED_KEYS.has(k)) setOwn(obj, k, v);
  obj.target = m.target;
  obj.capacity = m.capacity;
  obj.mode_mask = m.mode;
  return obj;
}

function sourceStillMatches(m: MailboxEntry): boolean {
  const again = mailboxFromJson(m.source, 'source');
  if (!again.ok) return false;
  const a = again.value;
  return a.target === m.target && a.capacity === m.capacity && a.mode === m.mode
    && pyJsonDumps(a.extra ?? {}) === pyJsonDumps(m.extra ?? {});
}

/** Legacy 16-byte structs plus the interned names. */
export function encodeMailboxLegacy(mailboxes: readonly MailboxEntry[]): Uint8Array {
  return encodeEntryTable(mailboxes, LEGACY_TABLE);
}

export { formatMode };

/** Plain assignment of a JSON key such as "__proto__" would change the prototype instead of adding a key. */
function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function isU16(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;
}
function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}
