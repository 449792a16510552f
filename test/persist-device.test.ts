import test from 'ava';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EventRecorder, isPersistError, openDevice, patternImage, testMeta } from '../src/persist/index.js';

/** openDevice over real mapped files in a state directory, and the flash-info command. */
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const base = mkdtempSync(join(tmpdir(), 'hsx-device-'));
test.after.always(() => rmSync(base, { recursive: true, force: true }));
let n = 0;
const newDir = () => {
  const d = join(base, `d${n++}`);
  mkdirSync(d);
  return d;
};

test('first open creates formatted files with the default geometry; reopen recovers committed state', async (t) => {
  const dir = newDir();
  const d = await openDevice(dir);
  t.is(d.flash.size, 1 << 20);
  t.is(d.flash.eraseSize, 4096);
  t.is(d.flash.programSize, 256);
  t.is(d.fram.size, 64 << 10);
  t.deepEqual(readdirSync(dir).sort(), ['flash.bin', 'fram.bin'], 'no temporary files left behind');
  await d.imageStore.commit(patternImage(7, 70_000), testMeta('7', 1), 'permanent');
  d.valueStore.write(0x10, 0x4000, { valueType: 'f16' }, 50);
  await d.close();
  const again = await openDevice(dir);
  t.is(again.imageStore.active()?.meta.version, '7');
  t.deepEqual(again.imageStore.active()?.image, patternImage(7, 70_000));
  t.deepEqual(again.valueStore.read(0x10, { valueType: 'f16' }), { ok: true, raw: 0x4000 }, 'close flushed the debounced value');
  await again.close();
});

test('a second writer is refused while the device is open; after close it opens', async (t) => {
  const dir = newDir();
  const d = await openDevice(dir);
  const e = await t.throwsAsync(openDevice(dir));
  t.true(isPersistError(e) && e.code === 'EBUSY' && e.message.includes(join(dir, 'flash.bin')));
  await d.close();
  const d2 = await openDevice(dir);
  await d2.close();
  t.pass();
});

test('clear errors naming the path: missing directory, size mismatch, foreign file, geometry mismatch', async (t) => {
  const missing = join(base, 'nope', 'dev');
  const e1 = await t.throwsAsync(openDevice(missing));
  t.true(isPersistError(e1) && e1.code === 'ENOENT' && e1.message.includes(missing));
  t.false(existsSync(missing));

  const dir = newDir();
  await (await openDevice(dir, { flashSize: 128 * 1024 })).close();
  const e2 = await t.throwsAsync(openDevice(dir, { flashSize: 256 * 1024 }));
  t.true(isPersistError(e2) && e2.reason === 'geometry_mismatch' && e2.message.includes('flashSize'));
  truncateSync(join(dir, 'flash.bin'), 100_000);
  const e3 = await t.throwsAsync(openDevice(dir));
  t.true(isPersistError(e3) && e3.reason === 'size_mismatch' && e3.message.includes(join(dir, 'flash.bin')));

  const dir2 = newDir();
  writeFileSync(join(dir2, 'flash.bin'), Buffer.alloc(8192, 0x41));
  const e4 = await t.throwsAsync(openDevice(dir2));
  t.true(isPersistError(e4) && e4.reason === 'bad_magic' && e4.message.includes(join(dir2, 'flash.bin')));

  if (process.getuid?.() === 0) {
    t.log('running as root: file permissions do not apply, so EACCES (no permission) is not exercised here');
  } else {
    const dir3 = newDir();
    chmodSync(dir3, 0o500);
    const e5 = await t.throwsAsync(openDevice(dir3));
    chmodSync(dir3, 0o700);
    t.true(isPersistError(e5) && e5.code === 'EACCES' && e5.message.includes(dir3));
  }
});

test('wear warnings reach the event sink as provisioning.wear_warning', async (t) => {
  const dir = newDir();
  const events = new EventRecorder();
  const d = await openDevice(dir, { flashSize: 64 * 1024, endurance: 5, statusSectors: 2 }, events);
  for (let i = 1; i <= 8; i++) await d.imageStore.commit(patternImage(i, 3000), testMeta(String(i), 1), 'permanent');
  await d.close();
  const w = events.ofType('provisioning.wear_warning');
  t.true(w.length >= 2);
  t.like(w[0]!, { phase: 'persist', data: { erase_count: 4, endurance: 5, percent: 80, path: join(dir, 'flash.bin') } });
});

function cli(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args], { encoding: 'utf8', cwd: ROOT }, (err, stdout, stderr) => {
      resolve({ status: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

test('flash-info prints layout, slots, manifest and wear (text and --json) while the device is open', async (t) => {
  t.timeout(60_000);
  const dir = newDir();
  const d = await openDevice(dir);
  await d.imageStore.commit(patternImage(1, 5000), testMeta('1.2.3', 4, { appName: 'blinky', reqCaps: 0x11, bootPriority: 2 }), 'permanent');
  await d.imageStore.commit(patternImage(2, 6000), testMeta('1.2.4', 4, { appName: 'blinky' }), 'test');
  d.valueStore.write(0x11, 0x4f80, { valueType: 'f16' });
  await d.valueStore.flush();
  const j = await cli('flash-info', dir, '--json');
  t.is(j.status, 0, j.stderr);
  const r = JSON.parse(j.stdout) as {
    partitions: { name: string }[]; status: { active: string; rollbackTarget: string; securityCounter: number };
    slots: { slot: string; state: string; verified: boolean; meta: { appName: string; version: string; reqCaps: number } }[];
    wear: { perPartition: Record<string, { total: number }> }; values: { entries: { key: number; raw: number }[] };
  };
  t.deepEqual(r.partitions.map((p) => p.name), ['HDR', 'STAT', 'SLTA', 'SLTB']);
  t.like(r.status, { active: 'B', rollbackTarget: 'A', securityCounter: 4 });
  t.like(r.slots[0]!, { slot: 'A', state: 'good', verified: true, meta: { appName: 'blinky', version: '1.2.3', reqCaps: 0x11 } });
  t.like(r.slots[1]!, { slot: 'B', state: 'test', verified: true });
  t.is(r.wear.perPartition['SLTA']!.total, 2);
  t.deepEqual(r.values.entries, [{ key: 0x11, raw: 0x4f80 }]);
  const text = await cli('flash-info', join(dir, 'flash.bin'));
  t.is(text.status, 0);
  t.regex(text.stdout, /SLTA sectors\s+5\.\.129/);
  t.regex(text.stdout, /\*slot B: test, verified, 6000 bytes/);
  t.regex(text.stdout, /app blinky version 1\.2\.3 security 4 caps 0x11 boot priority 2/);
  t.regex(text.stdout, /wear: max 1 erases/);
  await d.close();
  const bad = await cli('flash-info', join(base, 'missing'), '--json');
  t.is(bad.status, 1);
  t.is((JSON.parse(bad.stdout) as { error: { code: string } }).error.code, 'ENOENT');
  t.is((await cli('flash-info')).status, 2, 'missing argument is a usage error');
});
