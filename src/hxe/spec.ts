import { z } from 'zod';
import { err, ok, type Result } from './result.js';
import type { ImageSpec, BuildError, MailboxSpec } from './build.js';
import type { F16 } from './types.js';

/**
 * The `pack` spec: what a person writes in TOML or JSON to describe an image (snake_case keys, code and
 * rodata as hex or as a file path). This module turns the parsed document into an ImageSpec; reading the
 * files a spec names is I/O, so the caller passes `readFile` in.
 *
 * ```toml
 * app_name = "motor"
 * code = "6010000025000000"          # or code = { file = "motor.bin" }
 * [[values]]
 * group = 1
 * id = 5
 * init = 1.5
 * ```
 */
const u8 = z.number().int().min(0).max(0xff);
const u16 = z.number().int().min(0).max(0xffff);
const u32 = z.number().int().min(0).max(0xffffffff);
// z.number() refuses NaN and ±Infinity, which are legitimate f16 values (TOML writes them as nan/inf)
const anyNumber = z.custom<number>((v) => typeof v === 'number', { message: 'must be a number' });
const f16 = z.union([
  anyNumber,
  z.enum(['Infinity', '-Infinity', 'NaN', 'inf', '-inf', 'nan']),
  z.object({ raw: u16 }).strict(),
]);
const bytesField = z.union([
  z.string(),
  z.object({ file: z.string().min(1) }).strict(),
  z.object({ hex: z.string() }).strict(),
]);
const text = z.string().nullable().optional();

const valueSchema = z.object({
  group: u8, id: u8, flags: u8.optional(), auth: u8.optional(),
  init: f16.optional(), epsilon: f16.optional(), min: f16.optional(), max: f16.optional(),
  name: text, unit: text, group_name: text, persist_key: u16.optional(),
}).strict();

const commandSchema = z.object({
  group: u8, id: u8, flags: u8.optional(), auth: u8.optional(), handler_offset: u32.optional(),
  name: text, help: text, group_name: text,
}).strict();

const mailboxSchema = z.object({
  target: z.string().min(1),
  capacity: u16.optional(),
  mode: z.union([z.string(), z.number().int().min(0).max(0x3f)]).optional(),
  owner_pid: u32.optional(),
  bindings: z.array(z.object({ pid: u32, flags: u32.optional() }).strict()).optional(),
}).strict();

export const packSpecSchema = z.object({
  version: z.union([z.literal(1), z.literal(2)]).optional(),
  app_name: z.string().optional(),
  entry: u32.optional(),
  code: bytesField,
  rodata: bytesField.optional(),
  bss_size: u32.optional(),
  req_caps: u32.optional(),
  flags: u16.optional(),
  allow_multiple_instances: z.boolean().optional(),
  manifest_present: z.boolean().optional(),
  mailbox_format: z.enum(['json', 'legacy']).optional(),
  values: z.array(valueSchema).optional(),
  commands: z.array(commandSchema).optional(),
  mailboxes: z.array(mailboxSchema).optional(),
}).strict();

export type PackSpec = z.infer<typeof packSpecSchema>;

/** Reads a file a spec names (relative paths are the caller's business); returns an error message on failure. */
export type SpecFileReader = (path: string) => Result<Uint8Array, string>;

const fieldError = (field: string, message: string): { ok: false; error: BuildError } => err({ code: 'EINVAL', field, message });

/** Field path in the spec's own terms: `values[2].unit`. */
function pathText(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : `${out ? '.' : ''}${String(p)}`;
  return out || '(spec)';
}

export function specFromDocument(doc: unknown, readFile: SpecFileReader): Result<ImageSpec, BuildError> {
  const parsed = packSpecSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue ? pathText(issue.path) : '(spec)';
    let message = issue?.message ?? 'invalid spec';
    if (issue?.code === 'unrecognized_keys') message = `unknown key(s) ${issue.keys.join(', ')}`;
    return fieldError(field, message);
  }
  const s = parsed.data;
  const code = resolveBytes(s.code, 'code', readFile);
  if (!code.ok) return code;
  let rodata: Uint8Array | undefined;
  if (s.rodata !== undefined) {
    const r = resolveBytes(s.rodata, 'rodata', readFile);
    if (!r.ok) return r;
    rodata = r.value;
  }
  const spec: ImageSpec = { code: code.value };
  if (rodata) spec.rodata = rodata;
  if (s.version !== undefined) spec.version = s.version;
  if (s.app_name !== undefined) spec.appName = s.app_name;
  if (s.entry !== undefined) spec.entry = s.entry;
  if (s.bss_size !== undefined) spec.bssSize = s.bss_size;
  if (s.req_caps !== undefined) spec.reqCaps = s.req_caps;
  if (s.flags !== undefined) spec.flags = s.flags;
  if (s.allow_multiple_instances !== undefined) spec.allowMultipleInstances = s.allow_multiple_instances;
  if (s.manifest_present !== undefined) spec.manifestPresent = s.manifest_present;
  if (s.mailbox_format !== undefined) spec.mailboxFormat = s.mailbox_format;
  if (s.values) {
    spec.values = s.values.map((v) => ({
      group: v.group, id: v.id, flags: v.flags ?? 0, auth: v.auth ?? 0,
      init: toF16(v.init), epsilon: toF16(v.epsilon), min: toF16(v.min), max: toF16(v.max),
      name: v.name ?? null, unit: v.unit ?? null, groupName: v.group_name ?? null, persistKey: v.persist_key ?? 0,
    }));
  }
  if (s.commands) {
    spec.commands = s.commands.map((c) => ({
      group: c.group, id: c.id, flags: c.flags ?? 0, auth: c.auth ?? 0, handlerOffset: c.handler_offset ?? 0,
      name: c.name ?? null, help: c.help ?? null, groupName: c.group_name ?? null,
    }));
  }
  if (s.mailboxes) {
    spec.mailboxes = s.mailboxes.map((m) => {
      const out: MailboxSpec = { target: m.target };
      if (m.capacity !== undefined) out.capacity = m.capacity;
      if (m.mode !== undefined) out.mode = m.mode;
      const extra: Record<string, unknown> = {};
      if (m.owner_pid !== undefined) extra.owner_pid = m.owner_pid;
      if (m.bindings !== undefined) extra.bindings = m.bindings.map((b) => ({ ...b }));
      if (Object.keys(extra).length) out.extra = extra;
      return out;
    });
  }
  return ok(spec);
}

function toF16(v: number | string | { raw: number } | undefined): number | F16 | undefined {
  if (v === undefined || typeof v === 'number') return v;
  if (typeof v === 'string') return v.toLowerCase().startsWith('-inf') ? -Infinity : v.toLowerCase().startsWith('inf') ? Infinity : NaN;
  return { raw: v.raw, value: NaN }; // the writer keeps the raw bits and recomputes the value
}

function resolveBytes(v: string | { file: string } | { hex: string }, field: string, readFile: SpecFileReader): Result<Uint8Array, BuildError> {
  if (typeof v === 'object' && 'file' in v) {
    const r = readFile(v.file);
    return r.ok ? r : fieldError(`${field}.file`, r.error);
  }
  const hexText = typeof v === 'string' ? v : v.hex;
  const clean = hexText.replace(/^0x/i, '').replace(/[\s_:]/g, '');
  if (clean.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(clean)) {
    return fieldError(typeof v === 'string' ? field : `${field}.hex`, 'must be hex digits (an even number of them), or { file = "path" }');
  }
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return ok(out);
}
