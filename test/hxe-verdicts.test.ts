import test from 'ava';
import { parseImage, StreamingVerifier } from '../src/hxe/index.js';
import type { HxeErrorReason, HxeImage, Result, HxeError } from '../src/hxe/index.js';
import { cat, cmdEntry, fixCrc, fixture, legacyMailbox, rawImage, rd32, u16, u32, valueEntry } from './hxe-craft.js';

/**
 * The verdicts of issue 2, each on a hand-built image: rejected (stricter than the reference), accepted
 * with a warning, and every error reason reached at least once (checked at the end).
 */
const reached = new Set<HxeErrorReason>();

function rejects(t: any, bytes: Uint8Array, reason: HxeErrorReason, opts: { offset?: number; code?: 'EBADMSG' | 'ENOSPC'; limits?: any } = {}): HxeError | undefined {
  const r = parseImage(bytes, opts.limits);
  if (r.ok) {
    t.fail(`expected ${reason}, image was accepted`);
    return undefined;
  }
  t.is(r.error.reason, reason, r.error.message);
  t.is(r.error.code, opts.code ?? 'EBADMSG');
  if (opts.offset !== undefined) t.is(r.error.offset, opts.offset, `offset of ${reason}`);
  t.true(r.error.message.length > 10);
  // The streaming verifier, fed byte by byte, reaches the same verdict.
  const sv = new StreamingVerifier(opts.limits);
  for (let i = 0; i < bytes.length && !sv.error; i++) sv.push(bytes.subarray(i, i + 1));
  const s = sv.finish();
  t.deepEqual(s, r as Result<HxeImage, HxeError>, `stream verdict for ${reason}`);
  reached.add(reason);
  return r.error;
}

function accepts(t: any, bytes: Uint8Array): HxeImage | undefined {
  const r = parseImage(bytes);
  if (!r.ok) {
    t.fail(`${r.error.reason}: ${r.error.message}`);
    return undefined;
  }
  return r.value;
}

const VALUE = 1;
const CMD = 2;
const MBX = 3;
const strings = (...s: string[]): Uint8Array => cat(...s.map((x) => `${x}\0`));
const mbxJson = (obj: unknown): Uint8Array => cat(JSON.stringify(obj));

// ---- header ----

test('too_small: fewer than 32 bytes', (t) => {
  rejects(t, new Uint8Array([0x48, 0x53, 0x58, 0x45, 0, 2, 0, 0]), 'too_small', { offset: 8 });
  rejects(t, new Uint8Array(0), 'too_small');
});

test('header_truncated: a v2 header cut at 50 bytes', (t) => {
  rejects(t, rawImage().subarray(0, 50), 'header_truncated', { offset: 50 });
});

test('bad_magic', (t) => {
  const b = rawImage();
  b[0] = 0x58;
  rejects(t, b, 'bad_magic', { offset: 0 });
});

test('unsupported_version: 0 and 3', (t) => {
  for (const v of [0, 3]) {
    const b = rawImage();
    u16(b, 4, v);
    rejects(t, b, 'unsupported_version', { offset: 4 });
  }
});

test('reserved_nonzero: any of the 24 reserved bytes', (t) => {
  const b = rawImage();
  b[0x5f] = 1;
  rejects(t, b, 'reserved_nonzero', { offset: 0x5f });
});

test('app_name_not_ascii: a non-printable byte, and garbage after the NUL terminator', (t) => {
  const a = rawImage({ appName: 'ok' });
  a[0x21] = 0xc3;
  rejects(t, a, 'app_name_not_ascii', { offset: 0x21 });
  const b = rawImage({ appName: 'ok' });
  b[0x30] = 0x41;
  rejects(t, b, 'app_name_not_ascii', { offset: 0x30 });
});

test('app_name of exactly 32 characters with no NUL is accepted', (t) => {
  const img = accepts(t, rawImage({ appName: 'x'.repeat(32) }));
  t.is(img?.header.appName, 'x'.repeat(32));
});

test('code_unaligned, entry_unaligned, entry_out_of_range', (t) => {
  rejects(t, rawImage({ code: new Uint8Array(6) }), 'code_unaligned', { offset: 0x0c });
  rejects(t, rawImage({ code: new Uint8Array(8), entry: 2 }), 'entry_unaligned', { offset: 0x08 });
  rejects(t, rawImage({ code: new Uint8Array(8), entry: 8 }), 'entry_out_of_range', { offset: 0x08 });
  rejects(t, rawImage({ code: new Uint8Array(0) }), 'entry_out_of_range', { offset: 0x08 });
});

test('ENOSPC: code, rodata, bss over the configured limits (defaults 0x10000)', (t) => {
  rejects(t, rawImage({ code: new Uint8Array(16) }), 'code_too_large', { code: 'ENOSPC', limits: { maxCode: 12 }, offset: 0x0c });
  rejects(t, rawImage({ rodata: new Uint8Array(5) }), 'ro_too_large', { code: 'ENOSPC', limits: { maxRodata: 4 }, offset: 0x10 });
  rejects(t, rawImage({ bss: 0x10001 }), 'bss_too_large', { code: 'ENOSPC', offset: 0x14 });
  t.true(parseImage(rawImage({ bss: 0x10000 })).ok, 'exactly the limit is fine');
});

test('v1 header: 32 bytes, CRC over all but the CRC field, always allows multiple instances', (t) => {
  const img = accepts(t, rawImage({ version: 1, code: new Uint8Array(8), entry: 4, flags: 1 }));
  t.is(img?.header.headerSize, 32);
  t.is(img?.header.appName, '');
  t.true(img?.header.allowMultipleInstances);
  t.true(img?.header.manifestPresent);
});

// ---- body ----

test('truncated: the file ends inside code or rodata', (t) => {
  const b = rawImage({ code: new Uint8Array(16), rodata: new Uint8Array(8) });
  rejects(t, b.subarray(0, b.length - 1), 'truncated', { offset: b.length - 1 });
});

test('crc_mismatch: one flipped bit in code, rodata or a section', (t) => {
  const b = fixture('t06_all_meta_rodata3.hxe').slice();
  for (const at of [0x60, 0x6c, 0xd0, b.length - 1]) {
    const m = b.slice();
    m[at] = (m[at] ?? 0) ^ 0x01;
    rejects(t, m, 'crc_mismatch', { offset: 0x1c });
  }
});

test('the CRC does not cover app_name, meta pointers or reserved bytes (documented; only a signature can)', (t) => {
  const b = fixture('t01_minimal.hxe').slice();
  b[0x21] = 0x41; // 't01_minimal' -> 'tA1_minimal'
  const img = accepts(t, b);
  t.is(img?.header.appName, 'tA1_minimal');
});

test('meta_inconsistent: meta_offset 0 with meta_count > 0 (the reference silently drops the metadata)', (t) => {
  const b = fixture('t04_value_cmd.hxe').slice();
  u32(b, 0x40, 0);
  rejects(t, b, 'meta_inconsistent', { offset: 0x44 });
  const c = fixture('t01_minimal.hxe').slice();
  u32(c, 0x40, 0x68);
  rejects(t, c, 'meta_inconsistent', { offset: 0x40 });
});

test('meta_table_overlap: the table starts inside code/rodata', (t) => {
  const b = fixture('t04_value_cmd.hxe').slice();
  u32(b, 0x40, 0x60);
  rejects(t, b, 'meta_table_overlap', { offset: 0x40 });
});

test('meta_table_out_of_bounds: the table runs past the end, and a count that cannot fit in 4 GiB', (t) => {
  const b = fixture('t04_value_cmd.hxe').slice();
  u32(b, 0x44, 100);
  rejects(t, b, 'meta_table_out_of_bounds', { offset: 0x44 });
  const c = fixture('t04_value_cmd.hxe').slice();
  u32(c, 0x44, 0xffffffff);
  rejects(t, c, 'meta_table_out_of_bounds', { offset: 0x44 });
});

const oneValue = (): Uint8Array => cat(valueEntry({ group: 1, id: 1, name: 20 }), strings('v'));

test('section_out_of_bounds: a section past the end of the file', (t) => {
  const b = rawImage({ sections: [{ type: VALUE, payload: oneValue(), count: 1 }] });
  const tableAt = rd32(b, 0x40);
  u32(b, tableAt + 8, 1000);
  rejects(t, fixCrc(b), 'section_out_of_bounds', { offset: tableAt + 4 });
});

test('section_overlap: a section inside the header, code, rodata, the table, or another section', (t) => {
  const base = rawImage({ code: new Uint8Array(8), rodata: new Uint8Array(4), sections: [{ type: VALUE, payload: oneValue(), count: 1 }, { type: 99, payload: new Uint8Array(8), count: 0 }] });
  const tableAt = rd32(base, 0x40);
  const secAt = rd32(base, tableAt + 4);
  for (const [what, off] of [['header', 0x10], ['code', 0x60], ['rodata', 0x68], ['table', tableAt + 4], ['other section', secAt + 4]] as const) {
    const b = base.slice();
    u32(b, tableAt + 16 + 4, off); // move the second section
    u32(b, tableAt + 16 + 8, 4);
    const e = rejects(t, fixCrc(b), 'section_overlap', { offset: tableAt + 16 + 4 });
    t.regex(e?.message ?? '', new RegExp(what === 'other section' ? 'overlaps section #0' : what), what);
  }
});

test('section_truncated: entry_count does not fit the section', (t) => {
  rejects(t, rawImage({ sections: [{ type: VALUE, payload: oneValue(), count: 2 }] }), 'section_truncated');
  rejects(t, rawImage({ sections: [{ type: CMD, payload: new Uint8Array(15), count: 1 }] }), 'section_truncated');
});

test('string_out_of_range: an offset into the entry array, or past the section', (t) => {
  const into = cat(valueEntry({ group: 1, id: 1, name: 4 }), strings('v'));
  const e = rejects(t, rawImage({ sections: [{ type: VALUE, payload: into, count: 1 }] }), 'string_out_of_range');
  t.regex(e?.message ?? '', /entry array/);
  const past = cat(cmdEntry({ group: 1, id: 1, help: 200 }), strings('c'));
  rejects(t, rawImage({ sections: [{ type: CMD, payload: past, count: 1 }] }), 'string_out_of_range');
});

test('string_unterminated: the last string has no NUL inside the section', (t) => {
  const p = cat(valueEntry({ group: 1, id: 1, name: 20 }), 'abc');
  rejects(t, rawImage({ sections: [{ type: VALUE, payload: p, count: 1 }] }), 'string_unterminated', { offset: rawImage({ sections: [{ type: VALUE, payload: p, count: 1 }] }).length - 3 });
});

test('string_unterminated: a NUL in the next section does not end a string (the parser reads all sections as one text)', (t) => {
  // the value section's last string runs to its end; the command section right after starts with a 0 byte
  const p = cat(valueEntry({ group: 1, id: 1, name: 20 }), 'abc');
  const b = rawImage({ sections: [{ type: VALUE, payload: p, count: 1 }, { type: CMD, payload: cat(cmdEntry({ group: 0, id: 1 })), count: 1 }] });
  const tableAt = rd32(b, 0x40);
  const valueEnd = rd32(b, tableAt + 4) + rd32(b, tableAt + 8);
  t.is(b[valueEnd], 0, 'the byte after the value section is a NUL');
  rejects(t, b, 'string_unterminated', { offset: valueEnd - 3 });
});

test('strings: UTF-8 next to binary entry bytes; each referenced string is judged on its own', (t) => {
  // entry bytes >= 0x80 (group 0xf0, f16 fields) sit between the strings; a bad byte in an unused string is no error
  const p = cat(valueEntry({ group: 0xf0, id: 0x81, init: 0xbc00, name: 20, unit: 28 }), strings('ünit°', 'rpm'), new Uint8Array([0xff, 0]));
  const img = accepts(t, rawImage({ sections: [{ type: VALUE, payload: p, count: 1 }, { type: CMD, payload: cat(cmdEntry({ group: 0xfe, id: 1, name: 16 }), strings('cmd')), count: 1 }] }));
  t.is(img?.values[0]?.name, 'ünit°');
  t.is(img?.values[0]?.unit, 'rpm');
  t.is(img?.values[0]?.init.value, -1);
  t.is(img?.commands[0]?.name, 'cmd');
});

test('string_not_utf8', (t) => {
  const p = cat(valueEntry({ group: 1, id: 1, unit: 20 }), new Uint8Array([0x61, 0xff, 0x00]));
  rejects(t, rawImage({ sections: [{ type: VALUE, payload: p, count: 1 }] }), 'string_not_utf8');
  const ok = cat(valueEntry({ group: 1, id: 1, unit: 20 }), strings('°C'));
  t.is(accepts(t, rawImage({ sections: [{ type: VALUE, payload: ok, count: 1 }] }))?.values[0]?.unit, '°C');
});

test('duplicate_value and duplicate_command; values and commands have separate ID spaces', (t) => {
  const dv = cat(valueEntry({ group: 1, id: 1 }), valueEntry({ group: 1, id: 1 }));
  rejects(t, rawImage({ sections: [{ type: VALUE, payload: dv, count: 2 }] }), 'duplicate_value');
  const dc = cat(cmdEntry({ group: 2, id: 9 }), cmdEntry({ group: 2, id: 9 }));
  rejects(t, rawImage({ sections: [{ type: CMD, payload: dc, count: 2 }] }), 'duplicate_command');
  // the same (group, id) once as a value and once as a command is fine
  const img = accepts(t, rawImage({ sections: [{ type: VALUE, payload: valueEntry({ group: 2, id: 9 }), count: 1 }, { type: CMD, payload: cmdEntry({ group: 2, id: 9 }), count: 1 }] }));
  t.is(img?.values.length, 1);
  t.is(img?.commands.length, 1);
  // duplicates split over two .value sections are caught too
  rejects(t, rawImage({ sections: [{ type: VALUE, payload: valueEntry({ group: 3, id: 3 }), count: 1 }, { type: VALUE, payload: valueEntry({ group: 3, id: 3 }), count: 1 }] }), 'duplicate_value');
});

test('duplicate_mailbox', (t) => {
  const p = mbxJson({ version: 1, mailboxes: [{ target: 'app:a' }, { target: 'app:a', capacity: 8 }] });
  rejects(t, rawImage({ sections: [{ type: MBX, payload: p, count: 2 }] }), 'duplicate_mailbox');
});

test('mailbox_json_invalid, mailbox_json_version, mailbox_entry_invalid, mailbox_mode_unknown', (t) => {
  const sec = (p: Uint8Array, count = 1) => rawImage({ sections: [{ type: MBX, payload: p, count }] });
  rejects(t, sec(cat('{"version":1,"mailboxes":[')), 'mailbox_json_invalid');
  rejects(t, sec(cat('{"version":1,"mailboxes":{}}')), 'mailbox_json_invalid');
  rejects(t, sec(cat('{"version":1,"mailboxes":[{"target":"app:', new Uint8Array([0xff]), '"}]}')), 'mailbox_json_invalid');
  rejects(t, sec(mbxJson({ version: 2, mailboxes: [{ target: 'app:x' }] })), 'mailbox_json_version');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [{ target: 'nope:x' }] })), 'mailbox_entry_invalid');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [{ target: `app:${'n'.repeat(33)}` }] })), 'mailbox_entry_invalid');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [{ target: 'app:x', capacity: -1 }] })), 'mailbox_entry_invalid');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [{ target: 'app:x', bindings: [{ flags: 1 }] }] })), 'mailbox_entry_invalid');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [42] })), 'mailbox_entry_invalid');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [{ target: 'app:x', mode: 'RDWR|SIDEWAYS' }] })), 'mailbox_mode_unknown');
  rejects(t, sec(mbxJson({ version: 1, mailboxes: [{ target: 'app:x', mode_mask: 0x40 }] })), 'mailbox_mode_unknown');
  rejects(t, sec(cat(new Uint8Array([0xc3, 0x28]))), 'section_truncated', {}); // not JSON: legacy structs, 1 entry of 16 bytes does not fit
});

test('meta_inconsistent: the JSON lists a different number of mailboxes than the table says', (t) => {
  const p = mbxJson({ version: 1, mailboxes: [{ target: 'app:x' }] });
  rejects(t, rawImage({ sections: [{ type: MBX, payload: p, count: 2 }] }), 'meta_inconsistent');
});

test('mailbox JSON: bare array form, trailing NULs, string modes, defaults', (t) => {
  const p = cat('[{"target":"shared:m","mode":"rdwr|fanout_drop","capacity":128},{"name":"svc:log"},{"target":"pid:3","mode_mask":0}]', new Uint8Array(3));
  const img = accepts(t, rawImage({ sections: [{ type: MBX, payload: p, count: 3 }] }));
  t.deepEqual(img?.mailboxes.map((m) => [m.target, m.capacity, m.mode]), [['shared:m', 128, 0x13], ['svc:log', 0, 3], ['pid:3', 0, 3]]);
  t.is(img?.mailboxFormat, 'json');
});

test('legacy 16-byte mailbox structs parse; bad reserved bytes and modes are rejected', (t) => {
  const good = cat(legacyMailbox(32, 16, 0x01), legacyMailbox(41, 0, 0), strings('app:ctrl', 'svc:x'));
  const img = accepts(t, rawImage({ sections: [{ type: MBX, payload: good, count: 2 }] }));
  t.is(img?.mailboxFormat, 'legacy');
  t.deepEqual(img?.mailboxes, [{ target: 'app:ctrl', capacity: 16, mode: 1 }, { target: 'svc:x', capacity: 0, mode: 3 }]);
  rejects(t, rawImage({ sections: [{ type: MBX, payload: cat(legacyMailbox(16, 1, 1, 7), strings('app:a')), count: 1 }] }), 'mailbox_entry_invalid');
  rejects(t, rawImage({ sections: [{ type: MBX, payload: cat(legacyMailbox(16, 1, 0x80), strings('app:a')), count: 1 }] }), 'mailbox_mode_unknown');
  rejects(t, rawImage({ sections: [{ type: MBX, payload: cat(legacyMailbox(0, 1, 1), strings('app:a')), count: 1 }] }), 'mailbox_entry_invalid');
});

test('trailer_invalid: bytes after the body that claim to be a signature trailer but are not one', (t) => {
  const b = rawImage({ trailing: cat('HSIG', new Uint8Array(20)) });
  const e = rejects(t, b, 'trailer_invalid');
  t.is(e?.offset !== undefined && e.offset >= b.length - 24, true);
});

// ---- accepted with warnings ----

test('accepted with warnings: trailing bytes, unknown section type, unknown flag bits, ro_len % 4, unreferenced bytes', (t) => {
  const trailing = accepts(t, rawImage({ trailing: cat('junk') }));
  t.deepEqual(trailing?.warnings.map((w) => [w.reason, w.offset]), [['trailing_bytes', trailing!.size - 4]]);
  t.is(trailing?.bodyEnd, trailing!.size - 4);

  const unknown = accepts(t, rawImage({ sections: [{ type: 77, payload: new Uint8Array(5), count: 1 }] }));
  t.deepEqual(unknown?.warnings.map((w) => w.reason), ['unknown_section']);
  t.is(unknown?.sections[0]?.type, 77);

  const flags = accepts(t, rawImage({ flags: 0x8002 }));
  t.deepEqual(flags?.warnings.map((w) => w.reason), ['unknown_flags']);

  const ro = accepts(t, rawImage({ rodata: new Uint8Array(5) }));
  t.deepEqual(ro?.warnings.map((w) => w.reason), ['ro_len_unaligned']);

  // move the only section 4 bytes further: 4 bytes between table and section belong to nothing
  const p = oneValue();
  const gap = rawImage({ sections: [{ type: VALUE, payload: cat(new Uint8Array(4), p), count: 1 }] });
  const tableAt = rd32(gap, 0x40);
  u32(gap, tableAt + 4, rd32(gap, tableAt + 4) + 4);
  u32(gap, tableAt + 8, p.length);
  const g = accepts(t, fixCrc(gap));
  t.deepEqual(g?.warnings.map((w) => w.reason), ['unreferenced_bytes']);
  t.is(g?.values[0]?.name, 'v');
});

test('every error reason of the contract is reached by a test above', (t) => {
  const all: HxeErrorReason[] = ['too_small', 'header_truncated', 'bad_magic', 'unsupported_version', 'reserved_nonzero', 'app_name_not_ascii', 'code_unaligned', 'entry_unaligned', 'entry_out_of_range', 'truncated', 'crc_mismatch', 'meta_table_out_of_bounds', 'meta_table_overlap', 'section_out_of_bounds', 'section_overlap', 'section_truncated', 'string_out_of_range', 'string_unterminated', 'string_not_utf8', 'duplicate_value', 'duplicate_command', 'duplicate_mailbox', 'mailbox_json_invalid', 'mailbox_json_version', 'mailbox_entry_invalid', 'mailbox_mode_unknown', 'meta_inconsistent', 'code_too_large', 'ro_too_large', 'bss_too_large', 'trailer_invalid'];
  const missing = all.filter((r) => !reached.has(r));
  t.log(`reached ${reached.size} of ${all.length} reasons`);
  t.deepEqual(missing, []);
});
