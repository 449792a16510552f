import test from 'ava';
import { parse as parseToml } from 'smol-toml';
import { buildImage, parseImage } from '../src/hxe/index.js';
import { specFromDocument } from '../src/hxe/spec.js';
import { err, ok } from '../src/hxe/result.js';

/** The pack spec format (src/hxe/spec.ts), in-process: every kind of bad spec names its field. */
const files: Record<string, Uint8Array> = { 'code.bin': new Uint8Array([0x25, 0, 0, 0]) };
const reader = (p: string) => (files[p] ? ok(files[p]!) : err(`cannot read ${p}: no such file`));

function fieldOf(doc: unknown): string | undefined {
  const r = specFromDocument(doc, reader);
  if (!r.ok) return `${r.error.field}: ${r.error.message}`;
  const b = buildImage(r.value);
  return b.ok ? undefined : `${b.error.field}: ${b.error.message}`;
}

test('bad specs name the field', (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{}, /^code: /],
    [{ code: '25000000', app_nam: 'x' }, /^\(spec\): unknown key\(s\) app_nam/],
    [{ code: '2500zz00' }, /^code: must be hex digits/],
    [{ code: { hex: '123' } }, /^code\.hex: must be hex digits/],
    [{ code: { file: 'missing.bin' } }, /^code\.file: cannot read missing\.bin/],
    [{ code: '250000' }, /^code: code is 3 bytes, not a multiple of 4/],
    [{ code: '25000000', version: 3 }, /^version: /],
    [{ code: '25000000', entry: 4 }, /^entry: /],
    [{ code: '25000000', app_name: 'é' }, /^appName: /],
    [{ code: '25000000', req_caps: -1 }, /^req_caps: /],
    [{ code: '25000000', values: [{ group: 1 }] }, /^values\[0\]\.id: /],
    [{ code: '25000000', values: [{ group: 1, id: 1, init: 'warm' }] }, /^values\[0\]\.init: /],
    [{ code: '25000000', values: [{ group: 1, id: 1, min: { raw: 0x10000 } }] }, /^values\[0\]\.min\.raw: /],
    [{ code: '25000000', commands: [{ group: 1, id: 1, handler_offset: 1.5 }] }, /^commands\[0\]\.handler_offset: /],
    [{ code: '25000000', mailboxes: [{ target: 'app:x', mode: 'SIDEWAYS' }] }, /^mailboxes\[0\]\.mode: unknown mode "SIDEWAYS"/],
    [{ code: '25000000', mailboxes: [{ target: 'x' }] }, /^mailboxes\[0\]: .*must start with one of/],
    [{ code: '25000000', mailboxes: [{ target: 'app:x', bindings: [{ flags: 1 }] }] }, /^mailboxes\[0\]\.bindings\[0\]\.pid: /],
    [{ code: '25000000', mailbox_format: 'xml' }, /^mailbox_format: /],
  ];
  for (const [doc, pattern] of cases) t.regex(fieldOf(doc) ?? 'accepted', pattern, JSON.stringify(doc));
});

test('TOML spec: inf/nan floats, hex integers, code from a file, mailbox extras', (t) => {
  const doc = parseToml(`
app_name = "tomlapp"
code = { file = "code.bin" }
rodata = "0x01_02"
[[values]]
group = 0x10
id = 1
max = inf
min = -inf
init = nan
[[mailboxes]]
target = "pid:4"
owner_pid = 4
bindings = [{ pid = 4, flags = 1 }]
`);
  const spec = specFromDocument(doc, reader);
  if (!spec.ok) return t.fail(`${spec.error.field}: ${spec.error.message}`);
  const built = buildImage(spec.value);
  if (!built.ok) return t.fail(built.error.message);
  const img = parseImage(built.value);
  if (!img.ok) return t.fail(img.error.message);
  t.deepEqual(Array.from(img.value.rodata), [1, 2]);
  t.deepEqual([img.value.values[0]?.group, img.value.values[0]?.max.raw, img.value.values[0]?.min.raw, img.value.values[0]?.init.raw], [16, 0x7c00, 0xfc00, 0x7e00]);
  t.deepEqual(img.value.mailboxes[0]?.extra, { owner_pid: 4, bindings: [{ pid: 4, flags: 1 }] });
});
