/**
 * Fuzz cases for the HXE parser and streaming verifier, shared by the bounded run in the test suite
 * (hxe-fuzz.test.ts) and the open-ended `npm run fuzz` (bench/fuzz.ts).
 *
 * Inputs: random bytes, and fixtures mutated by bit flips, truncation, splices and length fields set to
 * extremes (half of them with the CRC fixed afterwards, so the mutation reaches the layers behind the CRC).
 * The only allowed outcome is an image or a typed HxeError; the streaming verifier, fed the same bytes in
 * random chunks, must give the same verdict and never hold more than the bytes pushed + 64 KiB.
 */
import fc from 'fast-check';
import { parseImage, StreamingVerifier, buildImage, specFromImage } from '../src/hxe/index.js';
import type { HxeErrorReason, HxeImage, ImageSpec } from '../src/hxe/index.js';
import { fixCrc, fixture, fixtureNames, rd32, u32 } from './hxe-craft.js';

const REASONS = new Set<HxeErrorReason>(['too_small', 'header_truncated', 'bad_magic', 'unsupported_version', 'reserved_nonzero', 'app_name_not_ascii', 'code_unaligned', 'entry_unaligned', 'entry_out_of_range', 'truncated', 'crc_mismatch', 'meta_table_out_of_bounds', 'meta_table_overlap', 'section_out_of_bounds', 'section_overlap', 'section_truncated', 'string_out_of_range', 'string_unterminated', 'string_not_utf8', 'duplicate_value', 'duplicate_command', 'duplicate_mailbox', 'mailbox_json_invalid', 'mailbox_json_version', 'mailbox_entry_invalid', 'mailbox_mode_unknown', 'meta_inconsistent', 'code_too_large', 'ro_too_large', 'bss_too_large', 'trailer_invalid']);
const ENOSPC = new Set(['code_too_large', 'ro_too_large', 'bss_too_large']);
const SLACK = 64 * 1024;

const FIXTURE_BYTES: Uint8Array[] = fixtureNames().map(fixture);

type Op =
  | { kind: 'flip'; pos: number; bit: number }
  | { kind: 'truncate'; len: number }
  | { kind: 'splice'; pos: number; del: number; insert: Uint8Array }
  | { kind: 'field'; which: number; value: number; rel: number };

const EXTREMES = [0, 1, 3, 4, 0x10, 0x60, 0x7fffffff, 0x80000000, 0xfffffff0, 0xffffffff, 0x10000, 0x10001];

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), pos: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), len: fc.nat() }),
  fc.record({ kind: fc.constant('splice' as const), pos: fc.nat(), del: fc.integer({ min: 0, max: 16 }), insert: fc.uint8Array({ maxLength: 16 }) }),
  fc.record({ kind: fc.constant('field' as const), which: fc.nat(), value: fc.oneof(fc.constantFrom(...EXTREMES), fc.nat()), rel: fc.integer({ min: -2, max: 2 }) }),
);

/** u32 fields worth pushing to extremes: header lengths and pointers, and every metadata table field. */
function lengthFields(b: Uint8Array): number[] {
  const out = [0x08, 0x0c, 0x10, 0x14, 0x18];
  if (b.length >= 96 && b[5] === 2) {
    out.push(0x40, 0x44);
    const metaOffset = rd32(b, 0x40);
    const count = rd32(b, 0x44);
    for (let i = 0; i < Math.min(count, 8); i++) {
      for (const f of [0, 4, 8, 12]) if (metaOffset + i * 16 + f + 4 <= b.length) out.push(metaOffset + i * 16 + f);
    }
  }
  return out.filter((o) => o + 4 <= b.length);
}

export function applyOps(base: Uint8Array, ops: Op[], fix: boolean): Uint8Array {
  let b = base.slice();
  for (const op of ops) {
    if (op.kind === 'flip') {
      if (b.length) b[op.pos % b.length] = (b[op.pos % b.length] ?? 0) ^ (1 << op.bit);
    } else if (op.kind === 'truncate') {
      // half the cuts land in the last 32 bytes, where the interesting (metadata) damage is
      b = b.slice(0, op.len % 2 ? Math.max(0, b.length - ((op.len >> 1) % 32)) : op.len % (b.length + 1));
    } else if (op.kind === 'splice') {
      const pos = op.pos % (b.length + 1);
      const out = new Uint8Array(b.length - Math.min(op.del, b.length - pos) + op.insert.length);
      out.set(b.subarray(0, pos), 0);
      out.set(op.insert, pos);
      out.set(b.subarray(pos + op.del), pos + op.insert.length);
      b = out;
    } else {
      const fields = lengthFields(b);
      if (fields.length) {
        const at = fields[op.which % fields.length]!;
        // extremes, or "size-relative" values that sit right at a boundary
        const value = op.value === 4 ? b.length + op.rel : op.value;
        u32(b, at, value >>> 0);
      }
    }
  }
  if (fix && b.length >= 32) fixCrc(b);
  return b;
}

export const mutatedArb = fc.record({
  base: fc.integer({ min: 0, max: FIXTURE_BYTES.length - 1 }),
  ops: fc.array(opArb, { minLength: 1, maxLength: 4 }),
  fix: fc.boolean(),
  chunks: fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 6 }),
}).map(({ base, ops, fix, chunks }) => ({ bytes: applyOps(FIXTURE_BYTES[base]!, ops, fix), chunks }));

/** Random bytes, half of them behind a valid magic + version so they get past the first check. */
export const randomArb = fc.record({
  body: fc.uint8Array({ maxLength: 600 }),
  prefix: fc.constantFrom(new Uint8Array(0), new Uint8Array([0x48, 0x53, 0x58, 0x45, 0, 2]), new Uint8Array([0x48, 0x53, 0x58, 0x45, 0, 1])),
  fix: fc.boolean(),
  chunks: fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 6 }),
}).map(({ body, prefix, fix, chunks }) => {
  const bytes = new Uint8Array(prefix.length + body.length);
  bytes.set(prefix, 0);
  bytes.set(body, prefix.length);
  if (fix && bytes.length >= 32) fixCrc(bytes);
  return { bytes, chunks };
});

export const inputArb = fc.oneof({ weight: 3, arbitrary: mutatedArb }, { weight: 1, arbitrary: randomArb });

function describeImage(img: HxeImage): string {
  return JSON.stringify({ h: img.header, c: Buffer.from(img.code).toString('hex'), r: Buffer.from(img.rodata).toString('hex'), v: img.values, m: img.commands, x: img.mailboxes, w: img.warnings.map((w) => w.reason), s: img.sections, e: img.bodyEnd });
}

/** Returns null when the property holds, else what went wrong. Any exception escapes to the runner. */
export function checkInput(bytes: Uint8Array, chunks: number[]): string | null {
  const r = parseImage(bytes);
  if (r.ok) {
    const img = r.value;
    if (img.code.length !== img.header.codeLen || img.rodata.length !== img.header.roLen) return 'code/rodata length differs from the header';
    if (img.sections.length * 16 > bytes.length || img.values.length * 20 > bytes.length || img.commands.length * 16 > bytes.length) return 'more entries than the input can hold';
    if (img.bodyEnd > img.size) return 'bodyEnd past the end';
  } else {
    const e = r.error;
    if (!REASONS.has(e.reason)) return `unknown reason ${String(e.reason)}`;
    if (e.code !== (ENOSPC.has(e.reason) ? 'ENOSPC' : 'EBADMSG')) return `code ${e.code} for ${e.reason}`;
    if (typeof e.message !== 'string' || e.message.length === 0) return 'empty message';
    if (e.offset !== undefined && !(Number.isInteger(e.offset) && e.offset >= 0 && e.offset <= 0xffffffff)) return `bad offset ${e.offset}`;
  }
  const sv = new StreamingVerifier();
  let pos = 0;
  let k = 0;
  while (pos < bytes.length) {
    const n = chunks[k++ % chunks.length] ?? 1;
    sv.push(bytes.subarray(pos, pos + n));
    pos += n;
    if (sv.capacity > sv.bytesReceived + SLACK) return `stream buffer ${sv.capacity} for ${sv.bytesReceived} bytes`;
    if (sv.error) break;
  }
  const s = sv.finish();
  if (s.ok !== r.ok) return `stream says ${s.ok ? 'ok' : s.error.reason}, parseImage says ${r.ok ? 'ok' : r.error.reason}`;
  if (!s.ok && !r.ok && (s.error.reason !== r.error.reason || s.error.offset !== r.error.offset)) return `stream ${s.error.reason}@${s.error.offset} vs parse ${r.error.reason}@${r.error.offset}`;
  if (s.ok && r.ok && describeImage(s.value) !== describeImage(r.value)) return 'stream and parse images differ';
  return null;
}

/** Random specs: whatever buildImage accepts, parseImage accepts, and rebuilding gives the same bytes. */
const text = fc.option(fc.string({ maxLength: 12 }).filter((s) => !s.includes('\0')), { nil: null });
const f16 = fc.oneof(fc.double(), fc.integer({ min: 0, max: 0xffff }).map((raw) => ({ raw, value: 0 })));
export const specArb: fc.Arbitrary<ImageSpec> = fc.record({
  code: fc.integer({ min: 1, max: 16 }).chain((w) => fc.uint8Array({ minLength: w * 4, maxLength: w * 4 })),
  rodata: fc.uint8Array({ maxLength: 13 }),
  bssSize: fc.integer({ min: 0, max: 0x10000 }),
  reqCaps: fc.nat(),
  flags: fc.integer({ min: 0, max: 0xffff }),
  appName: fc.stringMatching(/^[ -~]{0,31}$/),
  values: fc.uniqueArray(fc.record({ group: fc.integer({ min: 0, max: 255 }), id: fc.integer({ min: 0, max: 255 }), flags: fc.integer({ min: 0, max: 255 }), auth: fc.integer({ min: 0, max: 3 }), init: f16, min: f16, max: f16, epsilon: f16, name: text, unit: text, groupName: text, persistKey: fc.integer({ min: 0, max: 0xffff }) }), { maxLength: 6, selector: (v) => v.group * 256 + v.id }),
  commands: fc.uniqueArray(fc.record({ group: fc.integer({ min: 0, max: 255 }), id: fc.integer({ min: 0, max: 255 }), handlerOffset: fc.nat(), name: text, help: text, groupName: text }), { maxLength: 6, selector: (c) => c.group * 256 + c.id }),
  mailboxes: fc.uniqueArray(fc.record({ target: fc.tuple(fc.constantFrom('pid:', 'svc:', 'app:', 'shared:'), fc.string({ minLength: 1, maxLength: 8 }).filter((s) => s.trim() === s && s.length > 0)).map(([a, b]) => a + b), capacity: fc.integer({ min: 0, max: 0xffff }), mode: fc.integer({ min: 0, max: 0x3f }) }), { maxLength: 4, selector: (m) => m.target }),
  mailboxFormat: fc.constantFrom('json' as const, 'legacy' as const),
}, { requiredKeys: ['code'] }).map((s) => ({ ...s, entry: 0 }));

export function checkSpec(spec: ImageSpec): string | null {
  const built = buildImage(spec);
  if (!built.ok) return null; // refusing a spec is allowed; it has to be a typed refusal (it is, by type)
  const parsed = parseImage(built.value);
  if (!parsed.ok) return `builder wrote an image the parser rejects: ${parsed.error.reason} ${parsed.error.message}`;
  const again = buildImage(specFromImage(parsed.value));
  if (!again.ok) return `rebuild refused: ${again.error.field} ${again.error.message}`;
  if (Buffer.compare(Buffer.from(again.value), Buffer.from(built.value)) !== 0) return 'rebuild differs';
  if (parsed.value.values.length !== (spec.values ?? []).length) return 'value count differs';
  return null;
}
