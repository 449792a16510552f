import test from 'ava';
import { spawnSync } from 'node:child_process';
import { Command } from 'commander';
import { registerAll } from '../src/cli/commands/index.js';
import { chmodSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { generateKeyFiles, loadPrivateKey, loadTrustedKeys, parseRevocationList } from '../src/gateway/keys.js';

const root = new URL('..', import.meta.url).pathname;
const fixture = join(root, 'test/fixtures/t04_value_cmd.hxe');

/** The real CLI binary in a child process (slow: used where main.ts itself matters). */
function spawnCli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'src/cli/main.ts'), ...args], { cwd: root, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The same commands in-process (the program main.ts builds, with its exit-code mapping), output
 * captured. Callers are serial tests, so swapping process.stdout.write is safe.
 */
async function cli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const program = new Command('hsx-gateway').exitOverride().configureOutput({ writeErr: (s) => process.stderr.write(s) });
  registerAll(program);
  let stdout = '';
  let stderr = '';
  const out = process.stdout.write.bind(process.stdout);
  const errw = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => { stdout += String(c); return true; }) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => { stderr += String(c); return true; }) as typeof process.stderr.write;
  process.exitCode = undefined;
  let code: number | null = null;
  try {
    await program.parseAsync(['node', 'hsx-gateway', ...args]);
  } catch (e) {
    const ce = e as { code?: string };
    code = typeof ce.code === 'string' && ce.code.startsWith('commander.') ? 2 : 1;
  } finally {
    process.stdout.write = out;
    process.stderr.write = errw;
  }
  code ??= typeof process.exitCode === 'number' ? process.exitCode : 0;
  process.exitCode = undefined;
  return { code, stdout, stderr };
}
const json = (s: string): Record<string, unknown> => JSON.parse(s.trim().split('\n').at(-1)!) as Record<string, unknown>;
const tmp = (): string => mkdtempSync(join(tmpdir(), 'hsx-sign-'));

test('keygen writes NAME.key mode 0600 and NAME.pub, never overwrites', (t) => {
  const dir = join(tmp(), 'keys');
  const r = generateKeyFiles(dir, 'bench');
  if (!r.ok) return t.fail(r.error.message);
  t.is(statSync(r.value.privateKeyFile).mode & 0o777, 0o600);
  t.is(statSync(r.value.publicKeyFile).mode & 0o777, 0o644);
  t.is(statSync(dir).mode & 0o777, 0o700);
  t.regex(r.value.keyId, /^[0-9a-f]{16}$/);
  const again = generateKeyFiles(dir, 'bench');
  t.false(again.ok);
  if (!again.ok) t.regex(again.error.message, /already exists/);
  t.false(generateKeyFiles(dir, '../evil').ok, 'a key name cannot leave the directory');
});

test('a private key readable by others is refused; a non-Ed25519 or garbage key is refused', (t) => {
  const dir = tmp();
  const r = generateKeyFiles(dir, 'k');
  if (!r.ok) return t.fail();
  t.true(loadPrivateKey(r.value.privateKeyFile).ok);
  chmodSync(r.value.privateKeyFile, 0o644);
  const loose = loadPrivateKey(r.value.privateKeyFile);
  t.false(loose.ok);
  if (!loose.ok) t.regex(loose.error.message, /mode 644.*chmod 600/);
  const junk = join(dir, 'junk.key');
  writeFileSync(junk, 'not a key', { mode: 0o600 });
  t.false(loadPrivateKey(junk).ok);
});

test('trusted keys directory: .pub files by name, revoked.txt by key id, errors name file and line', (t) => {
  const dir = tmp();
  const a = generateKeyFiles(dir, 'alpha');
  const b = generateKeyFiles(dir, 'beta');
  if (!a.ok || !b.ok) return t.fail();
  writeFileSync(join(dir, 'revoked.txt'), `# withdrawn 2026-11\n${b.value.keyId.toUpperCase()}  # beta leaked\n\n`);
  const loaded = loadTrustedKeys(dir);
  if (!loaded.ok) return t.fail(loaded.error.message);
  t.deepEqual([...loaded.value.keys.keys()].sort(), [a.value.keyId, b.value.keyId].sort());
  t.is(loaded.value.keys.get(a.value.keyId)?.name, 'alpha');
  t.deepEqual([...loaded.value.revoked], [b.value.keyId]);

  const bad = parseRevocationList('0123456789abcdef\nnot-a-key-id\n', 'revoked.txt');
  t.false(bad.ok);
  if (!bad.ok) t.is(bad.error.file, 'revoked.txt:2');
  writeFileSync(join(dir, 'broken.pub'), '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n');
  const broken = loadTrustedKeys(dir);
  t.false(broken.ok);
  if (!broken.ok) t.true(broken.error.file.endsWith('broken.pub'));
  t.false(loadTrustedKeys(join(dir, 'missing')).ok);
});

test.serial('CLI: keygen, sign, verify with exit codes and --json; revocation and wrong keys fail verify', async (t) => {
  t.timeout(60_000);
  const dir = tmp();
  const keys = join(dir, 'keys');
  const other = join(dir, 'other');
  const kg = await cli('keygen', '--out', keys, '--name', 'release', '--json');
  t.is(kg.code, 0, kg.stderr);
  const kgj = json(kg.stdout);
  t.is(statSync(join(keys, 'release.key')).mode & 0o777, 0o600);
  t.true(generateKeyFiles(other, 'rogue').ok);

  const out = join(dir, 'signed.hxe');
  const s = await cli('sign', fixture, '--key', join(keys, 'release.key'), '--version', '1.2.0+4', '--counter', '7', '-o', out, '--json');
  t.is(s.code, 0, s.stderr);
  t.like(json(s.stdout), { ok: true, keyId: kgj['keyId'], version: '1.2.0+4', securityCounter: 7 });
  const signed = new Uint8Array(readFileSync(out));
  // the reference rule: CRC-32 of 0x00..0x1B then of every byte after the 96-byte header, stored at 0x1C
  t.is(new DataView(signed.buffer).getUint32(0x1c), crc32(signed.subarray(96), crc32(signed.subarray(0, 0x1c))) >>> 0);

  const v = await cli('verify', out, '--keys', keys, '--json');
  t.is(v.code, 0, v.stderr);
  t.like(json(v.stdout), { ok: true, verdict: { status: 'verified', keyName: 'release', securityCounter: 7 }, version: '1.2.0+4' });
  const human = await cli('verify', out, '--keys', keys);
  t.is(human.code, 0);
  t.regex(human.stdout, /verified \(key [0-9a-f]{16} "release", version 1\.2\.0\+4, security counter 7\)/);

  // inspect shows the trailer and whether it verifies against --keys
  const ins = await cli('inspect', out, '--keys', keys);
  t.is(ins.code, 0, ins.stderr);
  t.regex(ins.stdout, /signature trailer\n[^]*security_counter\s+7\n[^]*signature\s+verified/);
  const insj = await cli('inspect', out, '--json');
  t.is(insj.code, 0);
  t.like(json(insj.stdout), { ok: true, trailer: { version: '1.2.0+4', securityCounter: 7, keyId: kgj['keyId'], length: 148 }, signature: { status: 'unknown_key', keysChecked: false } });

  const wrong = await cli('verify', out, '--keys', other, '--json');
  t.is(wrong.code, 1);
  t.like(json(wrong.stdout), { ok: false, verdict: { status: 'unknown_key' } });
  const unsigned = await cli('verify', fixture, '--keys', keys, '--json');
  t.is(unsigned.code, 1);
  t.like(json(unsigned.stdout), { verdict: { status: 'unsigned' } });

  writeFileSync(join(keys, 'revoked.txt'), `${String(kgj['keyId'])}\n`);
  const revoked = await cli('verify', out, '--keys', keys);
  t.is(revoked.code, 1);
  t.regex(revoked.stderr, /REVOKED/);

  const tampered = signed.slice();
  tampered[0x21] = tampered[0x21]! ^ 0x02; // app name, outside the CRC
  writeFileSync(join(dir, 'tampered.hxe'), tampered);
  const tv = await cli('verify', join(dir, 'tampered.hxe'), '--keys', other, '--json');
  t.is(tv.code, 1);
  t.like(json(tv.stdout), { verdict: { status: 'digest_mismatch' } });
  const ti = await cli('inspect', join(dir, 'tampered.hxe'));
  t.is(ti.code, 1, 'inspect fails an image altered after signing, even without --keys');
  t.regex(ti.stdout, /SHA-256 mismatch/);

  t.is((await cli('sign', fixture, '--key', join(keys, 'release.key'), '--version', 'one', '-o', out)).code, 2, 'bad version is a usage error');
  t.is((await cli('sign', fixture, '-o', out)).code, 2, 'missing --key is a usage error');
  chmodSync(join(keys, 'release.key'), 0o640);
  const loose = await cli('sign', fixture, '--key', join(keys, 'release.key'), '-o', out);
  t.is(loose.code, 1);
  t.regex(loose.stderr, /chmod 600/);
});

test('the real binary: `sign --version` reaches the sign command (not the program version); usage errors exit 2', (t) => {
  t.timeout(60_000);
  const dir = tmp();
  const k = generateKeyFiles(dir, 'release');
  if (!k.ok) return t.fail();
  const out = join(dir, 'signed.hxe');
  const r = spawnCli('sign', fixture, '--key', k.value.privateKeyFile, '--version', '2.0.1+5', '--counter', '3', '-o', out, '--json');
  t.is(r.code, 0, r.stderr);
  t.like(json(r.stdout), { ok: true, version: '2.0.1+5', securityCounter: 3, keyId: k.value.keyId });
  const v = spawnCli('verify', out, '--keys', dir);
  t.is(v.code, 0, v.stderr);
  t.is(spawnCli('sign', fixture, '-o', out).code, 2, 'missing --key');
});
