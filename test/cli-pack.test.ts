import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseImage } from '../src/hxe/index.js';
import { fixture } from './hxe-craft.js';
import { ROOT, runCli } from './hxe-cli-run.js';

/** `hsx-gateway pack`, run as a real process on the shipped sample specs and on broken ones. */
const dir = mkdtempSync(join(tmpdir(), 'hxe-pack-'));
const samples = join(ROOT, 'configs', 'images');

async function pack(spec: string, json = false): Promise<{ code: number; out: string; err: string; image?: Uint8Array; file: string }> {
  const file = join(dir, `${spec.replace(/[^\w.-]/g, '_')}.hxe`);
  const r = await runCli(['pack', spec, '-o', file, ...(json ? ['--json'] : [])]);
  let image: Uint8Array | undefined;
  try {
    image = new Uint8Array(readFileSync(file));
  } catch {
    image = undefined;
  }
  return { code: r.code, out: r.stdout, err: r.stderr, file, ...(image ? { image } : {}) };
}

test('configs/images/hello.toml (code from a file) rebuilds the toolchain image t11_c_hello_v2 byte for byte', async (t) => {
  t.timeout(60_000);
  const r = await pack(join(samples, 'hello.toml'));
  t.is(r.code, 0, r.err);
  t.regex(r.out, /wrote .*: 116 bytes, crc32 0x[0-9a-f]{8}/);
  t.deepEqual(r.image, fixture('t11_c_hello_v2.hxe'));
});

test('configs/images/legacy-v1.toml rebuilds the v1 writer image byte for byte', async (t) => {
  t.timeout(60_000);
  const r = await pack(join(samples, 'legacy-v1.toml'));
  t.is(r.code, 0, r.err);
  t.deepEqual(r.image, fixture('v1_asm_write_hxe_rodata_bss.hxe'));
});

test('configs/images/motor.toml: values, commands and a mailbox, verified by the parser', async (t) => {
  t.timeout(60_000);
  const r = await pack(join(samples, 'motor.toml'), true);
  t.is(r.code, 0, r.err);
  const out = JSON.parse(r.out);
  t.true(out.ok);
  t.is(out.output, r.file);
  const img = parseImage(r.image!);
  if (!img.ok) return t.fail(img.error.message);
  t.is(img.value.header.appName, 'motor');
  t.like(img.value.values[0], { group: 1, id: 5, name: 'motor_speed', unit: 'rpm', flags: 2, persistKey: 0x1234 });
  t.is(img.value.values[0]?.max.value, 6000);
  t.like(img.value.commands[0], { group: 1, id: 10, name: 'reset_controller', help: 'Reset motor controller' });
  t.deepEqual(img.value.mailboxes, [{ target: 'app:motor', capacity: 64, mode: 0x0b, source: { capacity: 64, mode_mask: 11, target: 'app:motor' } }]);
  t.is(out.header.crc32, img.value.header.crc32);
});

test('configs/images/sensor.json: JSON spec with rodata, raw f16 bits, ±inf and mailbox bindings', async (t) => {
  t.timeout(60_000);
  const r = await pack(join(samples, 'sensor.json'));
  t.is(r.code, 0, r.err);
  const img = parseImage(r.image!);
  if (!img.ok) return t.fail(img.error.message);
  t.false(img.value.header.allowMultipleInstances);
  t.is(img.value.header.reqCaps, 5);
  t.deepEqual(Array.from(img.value.rodata), [1, 2, 3]);
  t.deepEqual(img.value.values.map((v) => [v.group, v.id]), [[1, 2], [1, 3], [2, 1]]);
  t.is(img.value.values[2]?.max.raw, 0x7c00);
  t.is(img.value.values[2]?.min.raw, 0xfbff);
  t.is(img.value.commands[1]?.help, null);
  t.deepEqual(img.value.mailboxes[0]?.extra, { bindings: [{ flags: 1, pid: 0 }], owner_pid: 2 });
});

test('bad specs: exit 1 and a message naming the field', async (t) => {
  t.timeout(90_000);
  // one spawn per kind of failure; the full list of spec errors is tested in-process (hxe-spec.test.ts)
  const cases: Array<[string, string, RegExp]> = [
    ['group.toml', 'code = "25000000"\n[[values]]\ngroup = 300\nid = 1\n', /values\[0\]\.group/],
    ['file.toml', 'code = { file = "does-not-exist.bin" }\n', /code\.file: cannot read does-not-exist\.bin/],
    ['dup.toml', 'code = "25000000"\n[[commands]]\ngroup = 1\nid = 1\n[[commands]]\ngroup = 1\nid = 1\n', /commands\[1\]: duplicate/],
  ];
  for (const [name, text, pattern] of cases) {
    const spec = join(dir, name);
    writeFileSync(spec, text);
    const r = await pack(spec);
    t.is(r.code, 1, name);
    t.regex(r.err, pattern, name);
    t.is(r.image, undefined, `${name}: nothing written`);
  }
  const spec = join(dir, 'json-err.toml');
  writeFileSync(spec, 'code = "250000"\n');
  const j = await pack(spec, true);
  t.is(j.code, 1);
  t.like(JSON.parse(j.out), { ok: false, error: { code: 'EINVAL', field: 'code' } });
});

test('usage: pack without -o exits 2', async (t) => {
  t.timeout(60_000);
  const r = await runCli(['pack', join(samples, 'motor.toml')]);
  t.is(r.code, 2);
  t.regex(r.stderr, /output/);
});
