import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadManifestImages, readManifest } from '../src/link/sources/sd-manifest.js';
import { loadPreloadDir } from '../src/link/sources/preload-dir.js';
import { readImageFile } from '../src/link/sources/image-file.js';
import { ImageSourceTransport, sdManifestSource, type SourceDelivery } from '../src/link/sources/source-transport.js';

const fixture = readFileSync('test/fixtures/t01_minimal.hxe');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function card(): string {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-sd-'));
  mkdirSync(join(dir, 'apps'));
  writeFileSync(join(dir, 'apps', 'a.hxe'), fixture);
  return dir;
}

test('the example manifests in configs/sd load, sorted by boot priority, hashes checked', (t) => {
  for (const f of ['configs/sd/manifest.toml', 'configs/sd/manifest.json']) {
    const r = loadManifestImages(f);
    if (!r.ok) return t.fail(r.error.message);
    t.deepEqual(r.value.problems, [], f);
    t.true(r.value.images.length > 0);
    const prios = r.value.images.map((i) => i.bootPriority);
    t.deepEqual(prios, [...prios].sort((a, b) => a - b));
    for (const img of r.value.images) t.is(sha(img.bytes), img.expected?.sha256 ?? '(no sha256 in the manifest)');
  }
  const toml = loadManifestImages('configs/sd/manifest.toml');
  t.true(toml.ok && toml.value.images[0]!.persist === true && toml.value.images[0]!.framKeys![0] === 17);
});

test('every manifest field is validated with its name', (t) => {
  const dir = card();
  const f = join(dir, 'm.toml');
  writeFileSync(f, 'version = 1\n[[images]]\npath = "apps/a.hxe"\nsha256 = "XYZ"\nfram_keys = [0]\nboot_priority = -1\ncolour = "red"\n');
  const r = readManifest(f);
  t.false(r.ok);
  if (r.ok) return;
  const text = r.error.problems.join('\n');
  t.regex(text, /images\[0\]\.sha256: expected 64 lowercase hex/);
  t.regex(text, /images\[0\]\.fram_keys\[0\]/);
  t.regex(text, /images\[0\]\.boot_priority/);
  t.regex(text, /unknown key\(s\) colour/);
  writeFileSync(f, 'version = 2\nimages = []\n');
  const v = readManifest(f);
  t.false(v.ok);
  if (!v.ok) t.regex(v.error.message, /version: expected manifest version 1/);
});

test('paths that escape the card are refused, symlinks included; other entries still load', (t) => {
  const dir = card();
  const outside = mkdtempSync(join(tmpdir(), 'hsx-outside-'));
  writeFileSync(join(outside, 'evil.hxe'), fixture);
  symlinkSync(join(outside, 'evil.hxe'), join(dir, 'apps', 'link.hxe'));
  const f = join(dir, 'm.toml');
  writeFileSync(
    f,
    [
      'version = 1',
      '[[images]]', 'path = "../' + outside.split('/').pop() + '/evil.hxe"',
      '[[images]]', `path = "${join(outside, 'evil.hxe')}"`,
      '[[images]]', 'path = "apps/link.hxe"',
      '[[images]]', 'path = "apps/missing.hxe"',
      '[[images]]', 'path = "apps/a.hxe"', `sha256 = "${'0'.repeat(64)}"`,
      '[[images]]', 'path = "apps/a.hxe"', `sha256 = "${sha(fixture)}"`,
    ].join('\n'),
  );
  const r = loadManifestImages(f);
  if (!r.ok) return t.fail(r.error.message);
  t.is(r.value.images.length, 1);
  t.is(r.value.images[0]!.source, `sd:${f}#5`);
  const msgs = r.value.problems.map((p) => `${p.field}: ${p.message}`);
  t.is(msgs.length, 5);
  t.regex(msgs[0]!, /images\[0\]\.path: .*escapes the manifest's directory/);
  t.regex(msgs[1]!, /images\[1\]\.path: absolute path/);
  t.regex(msgs[2]!, /images\[2\]\.path: .*escapes/);
  t.regex(msgs[3]!, /images\[3\]\.path: .*does not exist/);
  t.regex(msgs[4]!, /images\[4\]\.sha256: image apps\/a\.hxe has SHA-256/);
});

test('image files are size-checked before reading', (t) => {
  const dir = card();
  const big = join(dir, 'big.hxe');
  writeFileSync(big, Buffer.alloc(2048));
  const r = readImageFile(big, 1024);
  t.false(r.ok);
  if (!r.ok) {
    t.is(r.error.code, 'EFBIG');
    t.regex(r.error.message, /2048 bytes is larger than the 1024-byte image limit/);
  }
  const d = readImageFile(dir);
  t.false(d.ok);
  t.true(!d.ok && d.error.code === 'EISDIR');
});

test('preload directory delivers *.hxe in name order; sources speak the Transport interface', async (t) => {
  const dir = card();
  writeFileSync(join(dir, 'apps', 'b.hxe'), fixture);
  writeFileSync(join(dir, 'apps', 'notes.txt'), 'x');
  const r = loadPreloadDir(join(dir, 'apps'));
  t.deepEqual(r.images.map((i) => i.source.split('/').pop()), ['a.hxe', 'b.hxe']);
  t.deepEqual(loadPreloadDir(join(dir, 'nope')).images, []);
  t.is(loadPreloadDir(join(dir, 'nope')).problems.length, 1);

  const src = sdManifestSource('configs/sd/manifest.toml');
  const got: SourceDelivery[] = [];
  const statuses: string[] = [];
  src.on('status', (s) => statuses.push(s.state));
  src.receive((m) => got.push(m));
  await src.open();
  t.deepEqual(statuses, ['opening', 'open']);
  t.is(got.filter((g) => g.kind === 'image').length, 2);
  await t.throwsAsync(() => src.send());
  const broken = new ImageSourceTransport('sd:x', () => ({ fatal: 'x: cannot read' }));
  await t.throwsAsync(() => broken.open(), { message: /cannot read/ });
  t.is(broken.status().state, 'error');
});
