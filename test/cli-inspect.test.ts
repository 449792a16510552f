import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseImage } from '../src/hxe/index.js';
import { fixture, FIXTURES } from './hxe-craft.js';
import { runCli } from './hxe-cli-run.js';

/** `hsx-gateway inspect`, run as a real process: JSON contract, human tables, exit codes 0/1/2. */
const dir = mkdtempSync(join(tmpdir(), 'hxe-inspect-'));

test('--json on a valid image: the documented shape, camelCase header, exit 0', async (t) => {
  t.timeout(60_000);
  const r = await runCli(['inspect', `${FIXTURES}t09_stdlib_plus_pragmas.hxe`, '--json']);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.deepEqual(Object.keys(out), ['ok', 'header', 'values', 'commands', 'mailboxes', 'warnings']);
  t.true(out.ok);
  t.deepEqual(Object.keys(out.header).sort(), ['allowMultipleInstances', 'appName', 'bssSize', 'codeLen', 'crc32', 'entry', 'flags', 'metaCount', 'metaOffset', 'reqCaps', 'roLen', 'version'].sort());
  const img = parseImage(fixture('t09_stdlib_plus_pragmas.hxe'));
  if (!img.ok) return t.fail();
  t.is(out.header.crc32, img.value.header.crc32);
  t.is(out.header.appName, 'stdlib_app');
  t.is(out.values.length, 5);
  t.deepEqual(out.values[0], { group: 1, id: 5, flags: 2, auth: 0, init: { raw: 0, value: 0 }, name: 'motor_speed', unit: 'rpm', epsilon: { raw: img.value.values[0]!.epsilon.raw, value: img.value.values[0]!.epsilon.value }, min: { raw: img.value.values[0]!.min.raw, value: img.value.values[0]!.min.value }, max: { raw: img.value.values[0]!.max.raw, value: img.value.values[0]!.max.value }, persistKey: 4660, groupName: null });
  t.deepEqual(out.commands[1], { group: 240, id: 16, flags: 0, auth: 0, handlerOffset: 24, name: 'sys.reset', help: 'Graceful task exit', groupName: null });
  t.deepEqual(out.mailboxes.map((m: { target: string }) => m.target), ['app:motor', 'app:telemetry', 'svc:log']);
  t.deepEqual(out.warnings, []);
});

test('--json writes ±Infinity as strings (JSON has no infinities)', async (t) => {
  t.timeout(60_000);
  const r = await runCli(['inspect', `${FIXTURES}t06_all_meta_rodata3.hxe`, '--json']);
  t.is(r.code, 0);
  const out = JSON.parse(r.stdout);
  t.deepEqual(out.values[0].max, { raw: 0x7c00, value: 'Infinity' });
  t.deepEqual(out.values[0].min, { raw: 0xfbff, value: -65504 });
  t.is(out.warnings[0].reason, 'ro_len_unaligned');
});

test('human output: a header table and one table per section, exit 0', async (t) => {
  t.timeout(60_000);
  const r = await runCli(['inspect', `${FIXTURES}t07_two_modules.hxe`]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /OK, HXE v2, 401 bytes/);
  t.regex(r.stdout, /^app_name\s+twomod$/m);
  t.regex(r.stdout, /^\.value$/m);
  t.regex(r.stdout, /^\.cmd$/m);
  t.regex(r.stdout, /^\.mailbox \(json\)$/m);
  t.regex(r.stdout, /^3\s+200\s+c_from_B\s+V\b/m);
  t.regex(r.stdout, /^app:alpha\s+16\s+RDONLY/m);
});

test('an invalid image: exit 1, typed error in JSON, field and offset in the human message', async (t) => {
  t.timeout(60_000);
  const bad = fixture('t04_value_cmd.hxe').slice();
  bad[0x70] = (bad[0x70] ?? 0) ^ 0xff;
  const file = join(dir, 'bad.hxe');
  writeFileSync(file, bad);
  const j = await runCli(['inspect', file, '--json']);
  t.is(j.code, 1);
  const out = JSON.parse(j.stdout);
  t.deepEqual(Object.keys(out), ['ok', 'error']);
  t.false(out.ok);
  t.deepEqual(Object.keys(out.error), ['code', 'reason', 'message', 'offset']);
  t.like(out.error, { code: 'EBADMSG', reason: 'crc_mismatch', offset: 0x1c });
  const h = await runCli(['inspect', file]);
  t.is(h.code, 1);
  t.regex(h.stderr, /INVALID EBADMSG crc_mismatch at offset 0x1c: crc32 at offset 0x1c/);
  t.is(h.stdout, '');
});

test('a missing file is a failure (1); a missing argument or unknown option is usage (2)', async (t) => {
  t.timeout(60_000);
  const missing = await runCli(['inspect', join(dir, 'nope.hxe'), '--json']);
  t.is(missing.code, 1);
  t.like(JSON.parse(missing.stdout), { ok: false, error: { reason: 'unreadable' } });
  t.is((await runCli(['inspect'])).code, 2);
  t.is((await runCli(['inspect', `${FIXTURES}t01_minimal.hxe`, '--bogus'])).code, 2);
});
