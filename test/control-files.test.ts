/**
 * Files a control request names (`load`, `exec`, `provision.load`), issue 23: confined to the
 * images directory, read with a size bound that holds for special files, and refused without
 * leaking anything about the refused file — over real sockets, against a real ControlServer and
 * against `hsx-gateway serve` in its own process (whose RSS is measured before and after).
 */
import test from 'ava';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync, truncateSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { readAtMost } from '../src/gateway/control/image-files.js';
import { controlOptionsFromConfig } from '../src/gateway/control/server.js';
import { validateConfig } from '../src/gateway/config.js';
import { fixturePath, LineClient, startHarness } from './control-harness.js';

type Json = Record<string, unknown>;

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const GOOD = 't02_single_instance_reqcap.hxe';
const GOOD_APP = 'a_very_long_application_name_ex';
const PASSWD = readFileSync('/etc/passwd');
/** What must never appear in a reply or a log line: /etc/passwd's first bytes (text and hex) and its size. */
const SECRETS = [PASSWD.subarray(0, 4).toString('latin1') + ':', PASSWD.subarray(0, 4).toString('hex'), `0x${PASSWD.subarray(0, 4).toString('hex')}`];
const PASSWD_SIZE = String(statSync('/etc/passwd').size);

const OUTSIDE = { error: 'EPERM:path_outside_images_dir', detail: { field: 'path' } };
const NOT_REGULAR = { error: 'EINVAL:not_a_regular_file', detail: { field: 'path' } };

/**
 * A working directory with `images/` (the images directory) and `outside/` next to it:
 * good images, in-dir symlinks, symlinks out, a FIFO, a directory, a sparse 1 GiB file.
 */
function layout(): { root: string; images: string; outside: string } {
  const root = mkdtempSync(join(tmpdir(), 'hsx-files-'));
  const images = join(root, 'images');
  const outside = join(root, 'outside');
  mkdirSync(join(images, 'sub'), { recursive: true });
  mkdirSync(outside);
  copyFileSync(fixturePath(GOOD), join(images, GOOD));
  copyFileSync(fixturePath('t05_mailbox_json.hxe'), join(images, 'sub', 'inner.hxe'));
  symlinkSync(GOOD, join(images, 'inlink.hxe'));
  symlinkSync('sub/../sub/inner.hxe', join(images, 'inlink2.hxe'));
  // outside: a valid image (must not load through any path) and a file starting "root"
  copyFileSync(fixturePath('t01_minimal.hxe'), join(outside, 'valid.hxe'));
  writeFileSync(join(outside, 'secret'), PASSWD);
  symlinkSync('/etc/passwd', join(images, 'passwd-link'));
  symlinkSync('/dev/zero', join(images, 'zero-link'));
  symlinkSync('/proc/self/pagemap', join(images, 'pagemap-link'));
  symlinkSync('../outside/valid.hxe', join(images, 'escape.hxe'));
  symlinkSync(join(outside, 'secret'), join(images, 'escape-abs'));
  symlinkSync('/etc', join(images, 'etc'));
  symlinkSync('sub/../../outside', join(images, 'updir'));
  symlinkSync('../outside/missing', join(images, 'dangling-out'));
  execFileSync('mkfifo', [join(images, 'fifo')]);
  writeFileSync(join(images, 'huge.hxe'), '');
  truncateSync(join(images, 'huge.hxe'), 1 << 30); // sparse: 1 GiB that costs nothing on disk
  return { root, images, outside };
}

/** Every probe from the issue (and then some) with what it must say. */
function probes(images: string): Array<{ path: string; want: Json }> {
  return [
    { path: '/proc/self/pagemap', want: OUTSIDE },
    { path: '/dev/zero', want: OUTSIDE },
    { path: '/etc/passwd', want: OUTSIDE },
    { path: '../../etc/passwd', want: OUTSIDE },
    { path: '../outside/valid.hxe', want: OUTSIDE },
    { path: join(images, GOOD), want: OUTSIDE }, // absolute, even though it is inside
    { path: 'sub/../' + GOOD, want: OUTSIDE }, // `..` is refused as written
    { path: 'passwd-link', want: OUTSIDE },
    { path: 'zero-link', want: OUTSIDE },
    { path: 'pagemap-link', want: OUTSIDE },
    { path: 'escape.hxe', want: OUTSIDE },
    { path: 'escape-abs', want: OUTSIDE },
    { path: 'etc/passwd', want: OUTSIDE },
    { path: 'etc/no-such-file', want: OUTSIDE }, // no existence fact about /etc
    { path: 'updir/valid.hxe', want: OUTSIDE },
    { path: 'dangling-out', want: OUTSIDE }, // no existence fact about outside/missing
    { path: 'fifo', want: NOT_REGULAR },
    { path: 'sub', want: NOT_REGULAR },
    { path: 'no-such.hxe', want: { error: 'ENOENT:no_such_image', detail: { field: 'path' } } },
    { path: 'huge.hxe', want: { error: 'ENOSPC:image_too_large', detail: { field: 'path', max: 1 << 20 } } },
  ];
}

function assertNoLeak(t: { false(v: boolean, m?: string): void }, text: string, what: string): void {
  for (const s of SECRETS) t.false(text.includes(s), `${what} contains ${JSON.stringify(s)}`);
}

test('the size bound holds for special files: /dev/zero and /proc/self/pagemap give limit + 1 bytes, then stop', async (t) => {
  for (const f of ['/dev/zero', '/proc/self/pagemap']) {
    const fh = await open(f, 'r');
    try {
      const before = process.memoryUsage().rss;
      t.is(await readAtMost(fh, 4095), null, `${f}: more than the limit`);
      const after = process.memoryUsage().rss;
      t.log(`${f}: refused after 4096 bytes (limit 4095); RSS ${(before / 2 ** 20).toFixed(1)} → ${(after / 2 ** 20).toFixed(1)} MiB`);
    } finally {
      await fh.close();
    }
  }
  const fh = await open(fixturePath(GOOD), 'r');
  t.is((await readAtMost(fh, 1 << 20))?.length, statSync(fixturePath(GOOD)).size);
  await fh.close();
});

test('every probe of the issue is refused with the named error, by load, exec and provision.load, and nothing of the file leaks', async (t) => {
  t.timeout(60_000);
  const { root, images } = layout();
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const h = await startHarness({ imagesDir: images });
  t.teardown(() => h.close());
  const c = await h.client();
  for (const cmd of ['load', 'exec', 'provision.load']) {
    for (const p of probes(images)) {
      const r = await c.request({ cmd, path: p.path });
      t.deepEqual(r, { version: 1, status: 'error', ...p.want }, `${cmd} ${p.path}`);
      const text = JSON.stringify(r);
      assertNoLeak(t, text, `${cmd} ${p.path} reply`);
      t.false(text.includes(PASSWD_SIZE), `${cmd} ${p.path}: reply names /etc/passwd's size`);
    }
  }
  t.is(h.engine.ps().length, 0, 'nothing loaded');
  // refusals are audited (the client's own path string only), and the log holds nothing of the files
  const audits = h.logs.filter((l) => l['audit'] === true && l['verdict'] === 'error');
  t.true(audits.some((l) => l['cmd'] === 'load' && l['reason'] === 'EPERM:path_outside_images_dir'), 'refusals leave audit lines');
  assertNoLeak(t, JSON.stringify(h.logs), 'the log');
});

test('a good image in the images directory still loads: by name, through a subdirectory, through in-dir symlinks', async (t) => {
  const { root, images } = layout();
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const h = await startHarness({ imagesDir: images });
  t.teardown(() => h.close());
  const c = await h.client();
  const a = await c.request({ cmd: 'load', path: GOOD });
  t.is(a['status'], 'ok', JSON.stringify(a));
  t.is((a['image'] as Json)['app_name'], GOOD_APP);
  t.is((a['image'] as Json)['source'], GOOD);
  t.is((await c.request({ cmd: 'exec', path: './inlink.hxe' }))['error'], `app_exists:${GOOD_APP}`, 'an in-dir symlink reaches the same image');
  const b = await c.request({ cmd: 'provision.load', path: 'sub/inner.hxe' });
  t.is(b['status'], 'ok', JSON.stringify(b));
  const d = await c.request({ cmd: 'provision.load', path: 'inlink2.hxe' });
  t.is(d['status'], 'ok', JSON.stringify(d));
  t.is(h.engine.ps().length, 3);
  // a server without an images directory names no files at all
  const bare = await startHarness({ imagesDir: undefined });
  t.teardown(() => bare.close());
  const bc = await bare.client();
  t.deepEqual(await bc.request({ cmd: 'load', path: GOOD }), { version: 1, status: 'error', error: 'ENOTSUP:no_images_dir', detail: { field: 'path' } });
});

test('[control] images_dir and max_image_bytes: defaults, resolved next to the config file, mapped onto the server', (t) => {
  const base = mkdtempSync(join(tmpdir(), 'hsx-cfg-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  const d = validateConfig({ gateway: { id: 'g' } }, 'x.toml', base);
  if (!d.ok) return t.fail(d.error.message);
  t.is(d.value.control.images_dir, resolve(base, 'images'));
  t.is(d.value.control.max_image_bytes, 1 << 20);
  const e = validateConfig({ gateway: { id: 'g' }, control: { images_dir: 'apps', max_image_bytes: 4096 } }, 'x.toml', base);
  if (!e.ok) return t.fail(e.error.message);
  const opts = controlOptionsFromConfig(e.value.control);
  t.is(opts.imagesDir, resolve(base, 'apps'));
  t.is(opts.maxImageBytes, 4096);
  const bad = validateConfig({ gateway: { id: 'g' }, control: { max_image_bytes: 0 } });
  t.false(bad.ok);
  if (!bad.ok) t.true(bad.error.problems.some((p) => p.startsWith('control.max_image_bytes')));
});

/** A process that swaps `images/<name>` between two states in a tight loop until `stop` exists. */
function startSwapper(script: string, args: string[]): { child: ChildProcess; done: Promise<number> } {
  const child = spawn(process.execPath, ['-e', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<number>((res) => child.once('exit', () => res(Number(out.trim()) || 0)));
  return { child, done };
}

/** Atomic: a symlink renamed over the name, pointing alternately at the good image and /etc/passwd. */
const SWAP_LINK = `
const fs = require('fs'); const [dir, name, stop] = process.argv.slice(1); let i = 0;
for (;;) {
  const tmp = dir + '/.swap-tmp';
  try { fs.unlinkSync(tmp); } catch {}
  fs.symlinkSync(i % 2 ? '/etc/passwd' : '${GOOD}', tmp);
  fs.renameSync(tmp, dir + '/' + name);
  if (++i % 256 === 0 && fs.existsSync(stop)) break;
}
process.stdout.write(String(i));`;

/** Not atomic: a real directory holding the good image as "passwd", and a symlink to /etc, trading places. */
const SWAP_DIR = `
const fs = require('fs'); const [dir, name, stop] = process.argv.slice(1); let i = 0;
const p = dir + '/' + name, real = dir + '/.real', link = dir + '/.link';
for (;;) {
  fs.renameSync(p, real); fs.renameSync(link, p);   // now a symlink to /etc
  fs.renameSync(p, link); fs.renameSync(real, p);   // the real directory again
  if (++i % 128 === 0 && fs.existsSync(stop)) break;
}
process.stdout.write(String(i));`;

async function raceLoads(c: LineClient, path: string, n: number, batch: number): Promise<{ counts: Record<string, number>; others: string[] }> {
  const counts: Record<string, number> = { good: 0, refused: 0, missing: 0, other: 0 };
  const others: string[] = [];
  for (let sent = 0; sent < n; sent += batch) {
    const k = Math.min(batch, n - sent);
    c.sendRaw(Array.from({ length: k }, () => `${JSON.stringify({ version: 1, cmd: 'load', path })}\n`).join(''));
    for (let i = 0; i < k; i++) {
      const line = await c.next(10_000);
      if (line === null) throw new Error('no reply');
      const r = JSON.parse(line) as Json;
      if ((r['status'] === 'ok' && (r['image'] as Json)['app_name'] === GOOD_APP) || r['error'] === `app_exists:${GOOD_APP}`) counts['good']!++;
      else if (r['error'] === OUTSIDE.error && JSON.stringify(r['detail']) === JSON.stringify(OUTSIDE.detail)) counts['refused']!++;
      else if (r['error'] === 'ENOENT:no_such_image' && JSON.stringify(r['detail']) === '{"field":"path"}') counts['missing']!++;
      else {
        counts['other']!++;
        others.push(line);
      }
      if (SECRETS.some((s) => line.includes(s))) others.push(`LEAK: ${line}`);
    }
  }
  return { counts, others };
}

test('a symlink swapped between a good image and /etc/passwd in a tight loop: 1,000 loads, each the good image or the refusal', async (t) => {
  t.timeout(120_000);
  const { root, images } = layout();
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  symlinkSync(GOOD, join(images, 'swap.hxe'));
  const h = await startHarness({ imagesDir: images });
  t.teardown(() => h.close());
  const c = await h.client();
  const stop = join(root, 'stop');
  const sw = startSwapper(SWAP_LINK, [images, 'swap.hxe', stop]);
  t.teardown(() => void sw.child.kill('SIGKILL'));
  const { counts, others } = await raceLoads(c, 'swap.hxe', 1000, 16);
  writeFileSync(stop, '');
  const swaps = await sw.done;
  t.log(`1000 loads during ${swaps} swaps: ${counts['good']} good image, ${counts['refused']} refused, ${counts['missing']} missing, ${counts['other']} other`);
  t.deepEqual(others, [], 'every reply is the good image or the refusal');
  t.is(counts['missing'], 0, 'the name always exists (atomic swap)');
  t.is(counts['good']! + counts['refused']!, 1000);
  assertNoLeak(t, JSON.stringify(h.logs), 'the log');
});

test('a directory swapped with a symlink to /etc while loads walk through it: 1,000 loads, never /etc/passwd', async (t) => {
  t.timeout(120_000);
  const { root, images } = layout();
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(images, 'd'));
  copyFileSync(fixturePath(GOOD), join(images, 'd', 'passwd'));
  symlinkSync('/etc', join(images, '.link'));
  const h = await startHarness({ imagesDir: images });
  t.teardown(() => h.close());
  const c = await h.client();
  const stop = join(root, 'stop');
  const sw = startSwapper(SWAP_DIR, [images, 'd', stop]);
  t.teardown(() => void sw.child.kill('SIGKILL'));
  const { counts, others } = await raceLoads(c, 'd/passwd', 1000, 16);
  writeFileSync(stop, '');
  const swaps = await sw.done;
  t.log(`1000 loads during ${swaps} swaps: ${counts['good']} good image, ${counts['refused']} refused, ${counts['missing']} missing (name mid-swap), ${counts['other']} other`);
  t.deepEqual(others, [], 'every reply is the good image, the refusal, or "missing" while the name is absent');
  assertNoLeak(t, JSON.stringify(h.logs), 'the log');
});

/** `serve` in its own process; its stderr (the log) is kept. */
function startServe(config: string): Promise<{ child: ChildProcess; port: number; log: () => string }> {
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'serve', '--config', config, '--control-port', '0', '--json'], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((res, rej) => {
    child.once('exit', (code) => rej(new Error(`serve exited with ${code}:\n${stderr}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as Json;
      if (m['type'] === 'serving') res({ child, port: (m['control'] as { port: number }).port, log: () => stderr });
    });
  });
}

const vmRssKiB = (pid: number): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

test('serve: the probes of the issue, 10 times each, are refused and the server\'s RSS stays put', async (t) => {
  t.timeout(180_000);
  const { root, images } = layout();
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const config = join(root, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "files"', 'log_level = "info"',
    '[control]', 'listen = "127.0.0.1:0"', // images_dir: the default, "images" next to this file
    '[[devices]]', 'name = "dut"', 'state_dir = "state/dut"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
    '[boot]', 'confirm_window_ms = 0',
  ].join('\n'));
  const gw = await startServe(config);
  t.teardown(() => void gw.child.kill('SIGKILL'));
  const pid = gw.child.pid!;
  const c = await LineClient.connect(gw.port);
  t.teardown(() => c.destroy());
  const list = probes(images);
  // one round first, so that code paths are compiled and buffers exist before measuring
  for (const p of list) await c.request({ cmd: 'load', path: p.path }, 30_000);
  const before = vmRssKiB(pid);
  for (let round = 0; round < 10; round++) {
    for (const p of list) {
      const r = await c.request({ cmd: 'load', path: p.path }, 30_000);
      t.deepEqual(r, { version: 1, status: 'error', ...p.want }, `load ${p.path}`);
      const text = JSON.stringify(r);
      assertNoLeak(t, text, `load ${p.path}`);
      t.false(text.includes(PASSWD_SIZE));
    }
  }
  const after = vmRssKiB(pid);
  t.log(`serve VmRSS before ${(before / 1024).toFixed(1)} MiB, after ${list.length * 10} refused loads ${(after / 1024).toFixed(1)} MiB (+${((after - before) / 1024).toFixed(1)} MiB)`);
  t.true(after - before < 8 * 1024, `RSS grew by ${after - before} KiB`);
  // a good image in the default images directory loads
  const ok = await c.request({ cmd: 'load', path: GOOD });
  t.is(ok['status'], 'ok', JSON.stringify(ok));
  t.is((ok['image'] as Json)['app_name'], GOOD_APP);
  const log = gw.log();
  assertNoLeak(t, log, 'the serve log');
  t.true(log.includes('path_outside_images_dir'), 'the refusals are in the log (audit)');
});
