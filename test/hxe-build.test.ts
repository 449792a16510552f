import test from 'ava';
import { buildImage, parseImage, specFromImage, strip } from '../src/hxe/index.js';
import type { ImageSpec } from '../src/hxe/index.js';
import { fixture, fixtureNames, refCrc, rd32 } from './hxe-craft.js';

/** The writer: byte-identical toolchain rebuilds, the linker's sorting and string interning, field-named errors. */

for (const name of fixtureNames()) {
  test(`${name}: rebuilding from its own parsed contents gives the same bytes`, (t) => {
    const original = fixture(name);
    const parsed = parseImage(original);
    if (!parsed.ok) return t.fail(parsed.error.message);
    const rebuilt = buildImage(specFromImage(parsed.value));
    if (!rebuilt.ok) return t.fail(`${rebuilt.error.field}: ${rebuilt.error.message}`);
    t.is(Buffer.from(rebuilt.value).toString('hex'), Buffer.from(original).toString('hex'));
  });
}

function build(spec: ImageSpec): Uint8Array {
  const r = buildImage(spec);
  if (!r.ok) throw new Error(`${r.error.field}: ${r.error.message}`);
  return r.value;
}

test('values and commands are sorted by (group, id), mailboxes by target, whatever the input order', (t) => {
  const bytes = build({
    code: new Uint8Array(4),
    values: [{ group: 9, id: 2 }, { group: 3, id: 200 }, { group: 9, id: 1 }],
    commands: [{ group: 5, id: 1 }, { group: 1, id: 7 }],
    mailboxes: [{ target: 'svc:z' }, { target: 'app:b' }, { target: 'app:a' }],
  });
  const r = parseImage(bytes);
  if (!r.ok) return t.fail(r.error.message);
  t.deepEqual(r.value.values.map((v) => [v.group, v.id]), [[3, 200], [9, 1], [9, 2]]);
  t.deepEqual(r.value.commands.map((c) => [c.group, c.id]), [[1, 7], [5, 1]]);
  t.deepEqual(r.value.mailboxes.map((m) => m.target), ['app:a', 'app:b', 'svc:z']);
  t.deepEqual(r.value.sections.map((s) => s.type), [1, 2, 3], 'sections in value, cmd, mailbox order');
  t.is(rd32(bytes, 0x1c), refCrc(bytes), 'CRC by the reference recipe');
});

test('strings are interned per section in first-use order (name, unit, group); "" is stored, null is offset 0', (t) => {
  const bytes = build({
    code: new Uint8Array(4),
    values: [
      { group: 1, id: 1, name: 'a', unit: 'u', groupName: 'g' },
      { group: 1, id: 2, name: 'b', unit: 'u', groupName: 'g' },
      { group: 1, id: 3, name: 'a', unit: '', groupName: null },
    ],
    commands: [{ group: 1, id: 1, name: 'u', help: null }],
  });
  const tableAt = rd32(bytes, 0x40);
  const valueAt = rd32(bytes, tableAt + 4);
  const valueSize = rd32(bytes, tableAt + 8);
  const strings = Buffer.from(bytes.subarray(valueAt + 60, valueAt + valueSize)).toString('latin1');
  t.is(strings, 'a\0u\0g\0b\0\0', 'each distinct string once, empty string gets its own NUL');
  const dv = new DataView(bytes.buffer);
  t.deepEqual([6, 8, 18].map((o) => dv.getUint16(valueAt + 40 + o)), [60, 68, 0], 'third entry: name "a" reused, unit "" at 68, group null = 0');
  const cmdAt = rd32(bytes, tableAt + 16 + 4);
  t.is(dv.getUint16(cmdAt + 8), 16, 'string tables are per section: "u" is not shared with .value');
});

test('f16 fields: numbers are encoded, {raw} is kept exactly (NaN payloads included)', (t) => {
  const bytes = build({ code: new Uint8Array(4), values: [{ group: 1, id: 1, init: 1.5, min: -Infinity, max: { raw: 0x7e01, value: NaN }, epsilon: 6e-8 }] });
  const r = parseImage(bytes);
  if (!r.ok) return t.fail(r.error.message);
  const v = r.value.values[0]!;
  t.deepEqual([v.init.raw, v.min.raw, v.max.raw, v.epsilon.raw], [0x3e00, 0xfc00, 0x7e01, 0x0001]);
  t.true(Number.isNaN(v.max.value));
});

test('mailboxes: canonical JSON form as Python json.dumps(sort_keys, compact) writes it', (t) => {
  const bytes = build({ code: new Uint8Array(4), mailboxes: [{ target: 'shared:tël', capacity: 96, mode: 'RDWR|FANOUT_DROP', extra: { owner_pid: 2, bindings: [{ pid: 0, flags: 1 }] } }] });
  const tableAt = rd32(bytes, 0x40);
  const at = rd32(bytes, tableAt + 4);
  const text = Buffer.from(bytes.subarray(at, at + rd32(bytes, tableAt + 8))).toString('latin1');
  t.is(text, '{"mailboxes":[{"bindings":[{"flags":1,"pid":0}],"capacity":96,"mode_mask":19,"owner_pid":2,"target":"shared:t\\u00ebl"}],"version":1}');
  const r = parseImage(bytes);
  t.true(r.ok && r.value.mailboxes[0]?.target === 'shared:tël');
});

test('mailboxes: an edited entry drops its stale source and is written canonically', (t) => {
  const parsed = parseImage(fixture('t05_mailbox_json.hxe'));
  if (!parsed.ok) return t.fail(parsed.error.message);
  const spec = specFromImage(parsed.value);
  spec.mailboxes = parsed.value.mailboxes.map((m) => (m.target === 'svc:log' ? { ...m, capacity: 32 } : m));
  const again = parseImage(build(spec));
  if (!again.ok) return t.fail(again.error.message);
  const log = again.value.mailboxes.find((m) => m.target === 'svc:log');
  t.deepEqual([log?.capacity, log?.mode], [32, 7]);
  t.deepEqual(log?.source, { capacity: 32, mode_mask: 7, target: 'svc:log' });
  t.deepEqual(again.value.mailboxes.find((m) => m.target === 'app:telemetry')?.source, parsed.value.mailboxes[0]?.source, 'unchanged entries keep their form');
});

test('legacy mailbox format round-trips', (t) => {
  const bytes = build({ code: new Uint8Array(4), mailboxFormat: 'legacy', mailboxes: [{ target: 'app:x', capacity: 8, mode: 1 }, { target: 'pid:1' }] });
  const r = parseImage(bytes);
  if (!r.ok) return t.fail(r.error.message);
  t.is(r.value.mailboxFormat, 'legacy');
  t.deepEqual(r.value.mailboxes, [{ target: 'app:x', capacity: 8, mode: 1 }, { target: 'pid:1', capacity: 0, mode: 3 }]);
  t.deepEqual(build(specFromImage(r.value)), bytes);
});

test('v1 images: 32-byte header, no app name or metadata allowed', (t) => {
  const bytes = build({ version: 1, code: new Uint8Array(8), entry: 4, rodata: new Uint8Array([1, 2]), bssSize: 64, reqCaps: 19, flags: 1 });
  t.is(bytes.length, 32 + 8 + 2);
  const r = parseImage(bytes);
  t.true(r.ok && r.value.header.version === 1 && r.value.header.bssSize === 64);
  const e = buildImage({ version: 1, code: new Uint8Array(4), values: [{ group: 1, id: 1 }] });
  t.true(!e.ok && e.error.field === 'version');
});

test('flags: allowMultipleInstances / manifestPresent set or clear their bits; default for v2 is allow-multiple', (t) => {
  const flagsOf = (spec: Partial<ImageSpec>): number => new DataView(build({ code: new Uint8Array(4), ...spec }).buffer).getUint16(6);
  t.is(flagsOf({}), 2);
  t.is(flagsOf({ allowMultipleInstances: false }), 0);
  t.is(flagsOf({ flags: 0, manifestPresent: true }), 1);
  t.is(flagsOf({ flags: 0x8000 }), 0x8000);
});

test('bad specs are refused with the field named', (t) => {
  const cases: Array<[Partial<ImageSpec>, string]> = [
    [{ code: new Uint8Array(6) }, 'code'],
    [{ entry: 8 }, 'entry'],
    [{ entry: 2, code: new Uint8Array(8) }, 'entry'],
    [{ appName: 'x'.repeat(32) }, 'appName'],
    [{ appName: 'tab\there' }, 'appName'],
    [{ bssSize: 0x10001 }, 'bssSize'],
    [{ reqCaps: -1 }, 'reqCaps'],
    [{ flags: 0x10000 }, 'flags'],
    [{ values: [{ group: 256, id: 1 }] }, 'values[0].group'],
    [{ values: [{ group: 1, id: 1 }, { group: 1, id: 1 }] }, 'values[1]'],
    [{ values: [{ group: 1, id: 1, unit: 'a\0b' }] }, 'values[0].unit'],
    [{ values: [{ group: 1, id: 1, persistKey: 70000 }] }, 'values[0].persistKey'],
    [{ values: [{ group: 1, id: 1, init: { raw: 70000 } as never }] }, 'values[0].init'],
    [{ commands: [{ group: 1, id: 1, handlerOffset: -4 }] }, 'commands[0].handlerOffset'],
    [{ commands: [{ group: 1, id: 2, flags: 300 }] }, 'commands[0].flags'],
    [{ mailboxes: [{ target: 'nope' }] }, 'mailboxes[0]'],
    [{ mailboxes: [{ target: 'app:x', mode: 'wat' }] }, 'mailboxes[0].mode'],
    [{ mailboxes: [{ target: 'app:x' }, { target: 'app:x' }] }, 'mailboxes[1]'],
    [{ values: Array.from({ length: 3300 }, (_, i) => ({ group: i >> 8, id: i & 0xff })) }, 'values'],
  ];
  for (const [spec, field] of cases) {
    const r = buildImage({ code: new Uint8Array(4), ...spec });
    t.false(r.ok, field);
    if (!r.ok) {
      t.is(r.error.field, field, r.error.message);
      t.is(r.error.code, 'EINVAL');
    }
  }
});

test('strip() keeps only what the VM needs', (t) => {
  const r = parseImage(fixture('t09_stdlib_plus_pragmas.hxe'));
  if (!r.ok) return t.fail(r.error.message);
  const s = strip(r.value);
  t.deepEqual(Object.keys(s).sort(), ['bssSize', 'code', 'entry', 'rodata']);
  t.is(s.code.length, 40);
});

test('a pathological mailbox extra (nested past the stack) is refused, not thrown', (t) => {
  let deep: Record<string, unknown> = {};
  for (let i = 0; i < 200_000; i++) deep = { d: deep };
  const r = buildImage({ code: new Uint8Array(4), mailboxes: [{ target: 'app:x', extra: { deep } }] });
  t.false(r.ok);
  if (!r.ok) t.is(r.error.field, 'mailboxes');
});
