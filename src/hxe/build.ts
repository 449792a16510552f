import { putU32be } from './bytes.js';
import {
  FLAG_ALLOW_MULTIPLE, FLAG_MANIFEST_PRESENT, HEADER_V1_SIZE, HEADER_V2_SIZE, META_ENTRY_SIZE, OFF_CRC,
  SECTION_COMMAND, SECTION_MAILBOX, SECTION_VALUE, resolveLimits,
} from './constants.js';
import { hxeCrc32 } from './crc.js';
import { f16FromRaw, f16Raw } from './f16.js';
import { encodeHeader } from './header.js';
import { parseModeText } from './mailbox-mode.js';
import { compareCodePoints } from './pyjson.js';
import { err, ok, type Result } from './result.js';
import { encodeCommandSection } from './sections/cmd.js';
import { encodeMailboxJson, encodeMailboxLegacy, mailboxFromJson } from './sections/mailbox.js';
import { encodeValueSection } from './sections/value.js';
import type { CommandEntry, F16, HxeImage, HxeLimits, MailboxEntry, ValueEntry } from './types.js';

/** A `.value` entry as a spec gives it: f16 fields as numbers (encoded) or F16 (raw bits kept). */
export interface ValueSpec {
  group: number;
  id: number;
  flags?: number;
  auth?: number;
  init?: number | F16;
  name?: string | null;
  unit?: string | null;
  epsilon?: number | F16;
  min?: number | F16;
  max?: number | F16;
  persistKey?: number;
  groupName?: string | null;
}

export interface CommandSpec {
  group: number;
  id: number;
  flags?: number;
  auth?: number;
  handlerOffset?: number;
  name?: string | null;
  help?: string | null;
  groupName?: string | null;
  reserved?: number;
}

export interface MailboxSpec {
  target: string;
  /** 0 or absent: the executive's default capacity. */
  capacity?: number;
  /** A mask or names such as `"RDWR|FANOUT_DROP"`; absent means RDWR. */
  mode?: number | string;
  extra?: Record<string, unknown>;
  source?: Record<string, unknown>;
}

export interface ImageSpec {
  version?: 1 | 2;
  /** Raw header flags; `allowMultipleInstances` / `manifestPresent`, when given, set or clear their bit. */
  flags?: number;
  allowMultipleInstances?: boolean;
  manifestPresent?: boolean;
  entry?: number;
  code: Uint8Array;
  rodata?: Uint8Array;
  bssSize?: number;
  reqCaps?: number;
  appName?: string;
  values?: ValueSpec[];
  commands?: CommandSpec[];
  mailboxes?: MailboxSpec[];
  /** `.mailbox` encoding; the HSX linker writes JSON. */
  mailboxFormat?: 'json' | 'legacy';
  limits?: Partial<HxeLimits>;
}

/** A spec the writer refuses, naming the field (`values[2].unit`, `code`, …). */
export interface BuildError {
  code: 'EINVAL';
  field: string;
  message: string;
}

const bad = (field: string, message: string): { ok: false; error: BuildError } => err({ code: 'EINVAL', field, message });

const isUint = (v: unknown, max: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;

/**
 * Writes an image the way the HSX linker does: header, code, rodata, then (when there is metadata) the table
 * and the `.value`, `.cmd`, `.mailbox` sections in that order; values and commands sorted by (group, id),
 * mailboxes by target, strings interned per section; CRC last.
 */
export function buildImage(spec: ImageSpec): Result<Uint8Array, BuildError> {
  const version = spec.version ?? 2;
  if (version !== 1 && version !== 2) return bad('version', `version must be 1 or 2, got ${String(version)}`);
  const limits = resolveLimits(spec.limits);
  const code = spec.code;
  if (!(code instanceof Uint8Array)) return bad('code', 'code must be bytes');
  if (code.length % 4 !== 0) return bad('code', `code is ${code.length} bytes, not a multiple of 4`);
  if (code.length > limits.maxCode) return bad('code', `code is ${code.length} bytes, over the ${limits.maxCode}-byte limit`);
  const rodata = spec.rodata ?? new Uint8Array(0);
  if (!(rodata instanceof Uint8Array)) return bad('rodata', 'rodata must be bytes');
  if (rodata.length > limits.maxRodata) return bad('rodata', `rodata is ${rodata.length} bytes, over the ${limits.maxRodata}-byte limit`);
  const bssSize = spec.bssSize ?? 0;
  if (!isUint(bssSize, limits.maxBss)) return bad('bssSize', `bssSize must be an integer 0..${limits.maxBss}`);
  const entry = spec.entry ?? 0;
  if (!isUint(entry, 0xffffffff) || entry % 4 !== 0) return bad('entry', 'entry must be a multiple of 4');
  if (entry >= code.length) return bad('entry', `entry 0x${entry.toString(16)} is outside the ${code.length}-byte code`);
  const reqCaps = spec.reqCaps ?? 0;
  if (!isUint(reqCaps, 0xffffffff)) return bad('reqCaps', 'reqCaps must be an integer 0..0xffffffff');

  let flags = spec.flags ?? (version === 2 ? FLAG_ALLOW_MULTIPLE : 0);
  if (!isUint(flags, 0xffff)) return bad('flags', 'flags must be an integer 0..0xffff');
  if (spec.allowMultipleInstances !== undefined) flags = spec.allowMultipleInstances ? flags | FLAG_ALLOW_MULTIPLE : flags & ~FLAG_ALLOW_MULTIPLE;
  if (spec.manifestPresent !== undefined) flags = spec.manifestPresent ? flags | FLAG_MANIFEST_PRESENT : flags & ~FLAG_MANIFEST_PRESENT;

  const appName = spec.appName ?? '';
  if (!/^[\x20-\x7e]{0,31}$/.test(appName)) return bad('appName', 'appName must be at most 31 printable ASCII characters');

  const values = normaliseIdEntries(spec.values ?? [], 'values', normaliseValue);
  if (!values.ok) return values;
  const commands = normaliseIdEntries(spec.commands ?? [], 'commands', normaliseCommand);
  if (!commands.ok) return commands;
  const mailboxes = normaliseMailboxes(spec.mailboxes ?? []);
  if (!mailboxes.ok) return mailboxes;

  const sections: Array<{ type: number; payload: Uint8Array; count: number }> = [];
  if (values.value.length) sections.push({ type: SECTION_VALUE, payload: encodeValueSection(values.value), count: values.value.length });
  if (commands.value.length) sections.push({ type: SECTION_COMMAND, payload: encodeCommandSection(commands.value), count: commands.value.length });
  if (mailboxes.value.length) {
    let payload: Uint8Array;
    try {
      payload = spec.mailboxFormat === 'legacy' ? encodeMailboxLegacy(mailboxes.value) : encodeMailboxJson(mailboxes.value);
    } catch (e) {
      // only reachable with pathological `extra` values (e.g. nested beyond the stack); refuse, don't throw
      return bad('mailboxes', `cannot be encoded: ${(e as Error).message}`);
    }
    sections.push({ type: SECTION_MAILBOX, payload, count: mailboxes.value.length });
  }
  for (const s of sections) {
    // string offsets are u16 (legacy mailbox names u32, but keep one rule)
    if (s.payload.length > 0xffff) return bad(s.type === SECTION_VALUE ? 'values' : s.type === SECTION_COMMAND ? 'commands' : 'mailboxes', `section is ${s.payload.length} bytes; string offsets are 16-bit, so at most 65535`);
  }
  if (version === 1 && (sections.length > 0 || appName !== '')) {
    return bad('version', 'a v1 image has no app name and no metadata sections; use version 2');
  }

  const headerSize = version === 1 ? HEADER_V1_SIZE : HEADER_V2_SIZE;
  const roEnd = headerSize + code.length + rodata.length;
  const tableOffset = sections.length ? roEnd : 0;
  let cursor = roEnd + sections.length * META_ENTRY_SIZE;
  const total = cursor + sections.reduce((n, s) => n + s.payload.length, 0);
  const out = new Uint8Array(total);
  encodeHeader(out, { version, flags, entry, codeLen: code.length, roLen: rodata.length, bssSize, reqCaps, appName, metaOffset: tableOffset, metaCount: sections.length });
  out.set(code, headerSize);
  out.set(rodata, headerSize + code.length);
  sections.forEach((s, i) => {
    const at = roEnd + i * META_ENTRY_SIZE;
    putU32be(out, at, s.type);
    putU32be(out, at + 4, cursor);
    putU32be(out, at + 8, s.payload.length);
    putU32be(out, at + 12, s.count);
    out.set(s.payload, cursor);
    cursor += s.payload.length;
  });
  putU32be(out, OFF_CRC, hxeCrc32(out, headerSize));
  return ok(out);
}

/** The spec that rebuilds a parsed image (byte-identical for images the HSX toolchain wrote). */
export function specFromImage(image: HxeImage): ImageSpec {
  const h = image.header;
  const spec: ImageSpec = {
    version: h.version, flags: h.flags, entry: h.entry, code: image.code, rodata: image.rodata,
    bssSize: h.bssSize, reqCaps: h.reqCaps, appName: h.appName,
    values: image.values, commands: image.commands, mailboxes: image.mailboxes,
  };
  if (image.mailboxFormat) spec.mailboxFormat = image.mailboxFormat;
  return spec;
}

function checkString(v: unknown, field: string): { ok: true; value: string | null } | { ok: false; error: BuildError } {
  if (v === undefined || v === null) return ok(null);
  if (typeof v !== 'string') return bad(field, 'must be a string or null');
  if (v.includes('\0')) return bad(field, 'must not contain NUL');
  return ok(v);
}

function checkF16(v: unknown, field: string): { ok: true; value: F16 } | { ok: false; error: BuildError } {
  if (v === undefined) return ok(f16FromRaw(0));
  if (typeof v === 'number') return ok(f16FromRaw(f16Raw(v)));
  if (typeof v === 'object' && v !== null && isUint((v as F16).raw, 0xffff)) return ok(f16FromRaw((v as F16).raw));
  return bad(field, 'must be a number or { raw: 0..65535 }');
}

function checkIds(list: Array<{ group: unknown; id: unknown; flags?: unknown; auth?: unknown }>, what: string): { ok: false; error: BuildError } | null {
  const seen = new Set<number>();
  for (let i = 0; i < list.length; i++) {
    const e = list[i];
    if (!e || typeof e !== 'object') return bad(`${what}[${i}]`, 'must be an object');
    for (const k of ['group', 'id', 'flags', 'auth'] as const) {
      const v = e[k];
      if (!(k === 'flags' || k === 'auth') || v !== undefined) {
        if (!isUint(v, 0xff)) return bad(`${what}[${i}].${k}`, 'must be an integer 0..255');
      }
    }
    const key = ((e.group as number) << 8) | (e.id as number);
    if (seen.has(key)) return bad(`${what}[${i}]`, `duplicate (group ${String(e.group)}, id ${String(e.id)})`);
    seen.add(key);
  }
  return null;
}

const byGroupId = (a: { group: number; id: number }, b: { group: number; id: number }): number => a.group - b.group || a.id - b.id;

/**
 * Values and commands alike: a list, ids checked across it first, then each entry on its own (`one` names
 * its fields under `values[2]`, …), sorted by (group, id) as the linker writes them.
 */
function normaliseIdEntries<S extends { group: number; id: number }, T extends { group: number; id: number }>(
  list: S[], what: 'values' | 'commands', one: (spec: S, field: string) => Result<T, BuildError>,
): Result<T[], BuildError> {
  if (!Array.isArray(list)) return bad(what, 'must be a list');
  const idErr = checkIds(list, what);
  if (idErr) return idErr;
  const out: T[] = [];
  for (let i = 0; i < list.length; i++) {
    const entry = one(list[i] as S, `${what}[${i}]`);
    if (!entry.ok) return entry;
    out.push(entry.value);
  }
  return ok(out.sort(byGroupId));
}

function normaliseValue(v: ValueSpec, f: string): Result<ValueEntry, BuildError> {
  const name = checkString(v.name, `${f}.name`); if (!name.ok) return name;
  const unit = checkString(v.unit, `${f}.unit`); if (!unit.ok) return unit;
  const groupName = checkString(v.groupName, `${f}.groupName`); if (!groupName.ok) return groupName;
  const init = checkF16(v.init, `${f}.init`); if (!init.ok) return init;
  const epsilon = checkF16(v.epsilon, `${f}.epsilon`); if (!epsilon.ok) return epsilon;
  const min = checkF16(v.min, `${f}.min`); if (!min.ok) return min;
  const max = checkF16(v.max, `${f}.max`); if (!max.ok) return max;
  const persistKey = v.persistKey ?? 0;
  if (!isUint(persistKey, 0xffff)) return bad(`${f}.persistKey`, 'must be an integer 0..65535');
  return ok({
    group: v.group, id: v.id, flags: v.flags ?? 0, auth: v.auth ?? 0, init: init.value, name: name.value, unit: unit.value,
    epsilon: epsilon.value, min: min.value, max: max.value, persistKey, groupName: groupName.value,
  });
}

function normaliseCommand(c: CommandSpec, f: string): Result<CommandEntry, BuildError> {
  const name = checkString(c.name, `${f}.name`); if (!name.ok) return name;
  const help = checkString(c.help, `${f}.help`); if (!help.ok) return help;
  const groupName = checkString(c.groupName, `${f}.groupName`); if (!groupName.ok) return groupName;
  const handlerOffset = c.handlerOffset ?? 0;
  if (!isUint(handlerOffset, 0xffffffff)) return bad(`${f}.handlerOffset`, 'must be an integer 0..0xffffffff');
  const reserved = c.reserved ?? 0;
  if (!isUint(reserved, 0xffff)) return bad(`${f}.reserved`, 'must be an integer 0..65535');
  return ok({ group: c.group, id: c.id, flags: c.flags ?? 0, auth: c.auth ?? 0, handlerOffset, name: name.value, help: help.value, groupName: groupName.value, reserved });
}

function normaliseMailboxes(list: MailboxSpec[]): Result<MailboxEntry[], BuildError> {
  if (!Array.isArray(list)) return bad('mailboxes', 'must be a list');
  const out: MailboxEntry[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < list.length; i++) {
    const m = list[i];
    const f = `mailboxes[${i}]`;
    if (!m || typeof m !== 'object') return bad(f, 'must be an object');
    let mode = m.mode ?? 0;
    if (typeof mode === 'string') {
      const parsed = parseModeText(mode);
      if (!parsed.ok) return bad(`${f}.mode`, `unknown mode "${parsed.unknown}"`);
      mode = parsed.mask;
    }
    // Run the entry through the parser's own rules so the writer can never emit what the reader rejects.
    const probe: Record<string, unknown> = { target: m.target, capacity: m.capacity ?? 0, mode_mask: mode };
    const checked = mailboxFromJson(probe, f);
    if (!checked.ok) return bad(f, checked.error.message);
    const entry: MailboxEntry = { target: checked.value.target, capacity: checked.value.capacity, mode: checked.value.mode };
    if (m.extra && Object.keys(m.extra).length) entry.extra = m.extra;
    if (m.source) entry.source = m.source;
    if (seen.has(entry.target)) return bad(f, `duplicate mailbox target "${entry.target}"`);
    seen.add(entry.target);
    out.push(entry);
  }
  return ok(out.sort((a, b) => compareCodePoints(a.target, b.target)));
}
