import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { mapFile, pageSize, isPersistError } from '../src/persist/index.js';

/** The hsx_mmap addon: real files, real mappings. */
const dir = mkdtempSync(join(tmpdir(), 'hsx-mmap-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('create maps a new file MAP_SHARED: writes through the view reach the file without copying', (t) => {
  const p = join(dir, 'a.bin');
  const m = mapFile(p, 3 * 4096, { create: true, lock: true });
  t.is(statSync(p).size, 3 * 4096);
  t.is(m.bytes.length, 3 * 4096);
  m.bytes[5000] = 0xab;
  m.bytes.set([1, 2, 3], 10);
  m.sync(5000, 1);
  const onDisk = readFileSync(p);
  t.is(onDisk[5000], 0xab);
  t.deepEqual([...onDisk.subarray(10, 13)], [1, 2, 3]);
  // a second view of the same buffer sees the same memory
  const again = new Uint8Array(m.bytes.buffer, 4096, 16);
  again[0] = 0x77;
  t.is(m.bytes[4096], 0x77);
  m.unmap();
});

test('syncAsync resolves on the thread pool; unmap detaches every view (length 0) and is idempotent', async (t) => {
  const p = join(dir, 'b.bin');
  const m = mapFile(p, 8192, { create: true });
  const view = m.bytes.subarray(100, 200);
  m.bytes.fill(0x5a);
  await m.syncAsync(0, 8192);
  t.is(readFileSync(p)[8191], 0x5a);
  t.true(m.mapped);
  m.unmap();
  t.false(m.mapped);
  t.is(m.bytes.length, 0);
  t.is(view.length, 0);
  t.notThrows(() => m.unmap());
  const e = t.throws(() => m.sync(0, 10));
  t.true(isPersistError(e));
  await t.throwsAsync(m.syncAsync(0, 10));
});

test('errors carry errno, syscall and the path; nothing is created half-way', (t) => {
  const missingDir = join(dir, 'no-such-dir', 'x.bin');
  const e1 = t.throws(() => mapFile(missingDir, 4096, { create: true }));
  t.true(isPersistError(e1));
  if (!isPersistError(e1)) return;
  t.is(e1.code, 'ENOENT');
  t.is(e1.detail['syscall'], 'open');
  t.is(e1.detail['errno'], 2);
  t.is(e1.detail['path'], missingDir);
  t.true(e1.message.includes(missingDir));

  const p = join(dir, 'c.bin');
  writeFileSync(p, Buffer.alloc(4096, 7));
  const e2 = t.throws(() => mapFile(p, 8192, {}));
  t.true(isPersistError(e2) && e2.reason === 'size_mismatch' && e2.message.includes(p) && e2.message.includes('4096'));
  t.is(statSync(p).size, 4096, 'a size mismatch does not resize the file');

  const e3 = t.throws(() => mapFile(p, 4096, { create: true }));
  t.true(isPersistError(e3) && e3.detail['errnoName'] === 'EEXIST');
  t.true(readFileSync(p).every((b) => b === 7), 'create over an existing file leaves it untouched');

  const e4 = t.throws(() => mapFile(join(dir, 'zero.bin'), 0, { create: true }));
  t.true(isPersistError(e4) && e4.code === 'EINVAL');
  t.false(existsSync(join(dir, 'zero.bin')));
});

test('an exclusive lock keeps a second writer out until the first unmaps', (t) => {
  const p = join(dir, 'd.bin');
  const a = mapFile(p, 4096, { create: true, lock: true });
  const e = t.throws(() => mapFile(p, 4096, { lock: true }));
  t.true(isPersistError(e) && e.code === 'EBUSY' && e.detail['syscall'] === 'flock');
  const ro = mapFile(p, 4096, { readonly: true });
  a.bytes[0] = 42;
  t.is(ro.bytes[0], 42, 'a read-only mapping of the same file sees live writes');
  ro.unmap();
  a.unmap();
  const b = mapFile(p, 4096, { lock: true });
  t.is(b.bytes[0], 42);
  b.unmap();
});

test('mappings dropped without unmap are released on GC', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const p = join(dir, 'e.bin');
  mapFile(p, 65536, { create: true }).unmap();
  const count = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(p)).length;
  for (let i = 0; i < 50; i++) mapFile(p, 65536, {}).bytes[i] = i;
  t.true(count() > 0);
  for (let i = 0; i < 20 && count() > 0; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 10)); // finalizers run after the GC pass
  }
  t.is(count(), 0, 'every unreferenced mapping was unmapped by its finalizer');
  t.is(pageSize() % 4096, 0);
  t.true(readdirSync(dir).length > 0);
});
