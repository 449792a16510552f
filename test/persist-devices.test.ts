import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Fram, NorFlash, framFileSize, isPersistError, mapFile, mappedBacking, memoryBacking, norFileSize,
  type BlockDevice, type NorGeometry, type WearWarning,
} from '../src/persist/index.js';

/** NOR flash and FRAM models, each over a real mapped file and over memory, through one interface. */
const dir = mkdtempSync(join(tmpdir(), 'hsx-dev-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
const G: NorGeometry = { sectorSize: 4096, pageSize: 256, sectorCount: 8, endurance: 10 };
let n = 0;

function flashOnFile(g = G): { dev: NorFlash; path: string } {
  const path = join(dir, `f${n++}.bin`);
  return { dev: NorFlash.format(mappedBacking(mapFile(path, norFileSize(g), { create: true })), g), path };
}
const flashInMemory = (g = G) => NorFlash.format(memoryBacking(new Uint8Array(norFileSize(g))), g);

const flashes: [string, () => BlockDevice][] = [['mapped file', () => flashOnFile().dev], ['memory', () => flashInMemory()]];

for (const [where, make] of flashes) {
  test(`flash (${where}): fresh device is erased; program clears bits; programming a non-erased byte is refused`, (t) => {
    const f = make();
    t.is(f.kind, 'nor');
    t.true(f.needsErase);
    t.is(f.size, 8 * 4096);
    t.true(f.view(0, f.size).every((b) => b === 0xff));
    const page = new Uint8Array(256).fill(0xf0);
    f.program(256, page);
    t.is(f.read(256, 1)[0], 0xf0);
    // 0xff bytes in a program are "not programmed": allowed over anything
    t.notThrows(() => f.program(256, new Uint8Array(256).fill(0xff)));
    const e = t.throws(() => f.program(256, new Uint8Array(256).fill(0x0f)));
    t.true(isPersistError(e) && e.code === 'EIO' && e.reason === 'program_not_erased' && e.detail['offset'] === 256);
    t.is(f.read(256, 1)[0], 0xf0, 'a refused program changes nothing');
    f.erase(0, 4096);
    t.is(f.read(256, 1)[0], 0xff);
    t.is(f.eraseCount(0), 1);
  });

  test(`flash (${where}): alignment enforced for program (page) and erase (sector)`, (t) => {
    const f = make();
    for (const [op, fn] of [
      ['program offset', () => f.program(10, new Uint8Array(256))],
      ['program length', () => f.program(0, new Uint8Array(100))],
      ['erase offset', () => f.erase(256, 4096)],
      ['erase length', () => f.erase(0, 100)],
    ] as const) {
      const e = t.throws(fn, undefined, op);
      t.true(isPersistError(e) && e.code === 'EINVAL' && e.reason === 'unaligned', op);
    }
    const e = t.throws(() => f.program(f.size, new Uint8Array(256)));
    t.true(isPersistError(e) && e.reason === 'out_of_range');
  });
}

test('flash: erase counters live in the file metadata and survive reopening', (t) => {
  const { dev, path } = flashOnFile();
  dev.erase(4096, 2 * 4096);
  dev.erase(4096, 4096);
  dev.program(4096, new Uint8Array(256).fill(1));
  dev.close();
  const again = NorFlash.attach(mappedBacking(mapFile(path, norFileSize(G))));
  t.deepEqual([0, 1, 2, 3].map((s) => again.eraseCount(s)), [0, 2, 1, 0]);
  t.is(again.read(4096, 1)[0], 1);
  again.close();
});

test('flash wear: warning at 80% of endurance, refusal past 100% with a clear error, nothing erased', (t) => {
  const f = flashInMemory();
  const warnings: WearWarning[] = [];
  f.onWearWarning = (w) => warnings.push(w);
  for (let i = 0; i < 10; i++) f.erase(0, 4096);
  t.deepEqual(warnings, [{ sector: 0, eraseCount: 8, endurance: 10, percent: 80 }]);
  f.program(0, new Uint8Array(256).fill(0));
  const e = t.throws(() => f.erase(0, 2 * 4096));
  t.true(isPersistError(e) && e.code === 'ENOSPC' && e.reason === 'sector_worn_out');
  t.regex((e as Error).message, /sector 0 has been erased 10 times, its endurance is 10/);
  t.is(f.eraseCount(0), 10);
  t.is(f.eraseCount(1), 0, 'a refused multi-sector erase touches no sector');
  t.is(f.read(0, 1)[0], 0);
});

test('flash: reattaching checks the header; a wrong size or a corrupt header is refused naming the file', (t) => {
  const bytes = new Uint8Array(norFileSize(G));
  NorFlash.format(memoryBacking(bytes), G);
  const e1 = t.throws(() => NorFlash.attach(memoryBacking(bytes.subarray(0, bytes.length - 4096))));
  t.true(isPersistError(e1) && e1.reason === 'size_mismatch');
  bytes[12] = bytes[12]! ^ 1;
  const e2 = t.throws(() => NorFlash.attach(memoryBacking(bytes)));
  t.true(isPersistError(e2) && e2.reason === 'header_crc' && e2.detail['offset'] === 60);
  const bad = { ...G, pageSize: 300 };
  t.throws(() => NorFlash.format(memoryBacking(new Uint8Array(norFileSize(bad))), bad), { message: /pageSize/ });
});

test('FRAM (mapped file and memory): byte-addressable, no erase, write anywhere', (t) => {
  const path = join(dir, 'fram.bin');
  const onFile = Fram.format(mappedBacking(mapFile(path, framFileSize(8192), { create: true })), 8192);
  const inMem = Fram.format(memoryBacking(new Uint8Array(framFileSize(8192))), 8192);
  for (const f of [onFile, inMem] as BlockDevice[]) {
    t.false(f.needsErase);
    t.is(f.programSize, 1);
    f.program(3, Uint8Array.of(1, 2, 3));
    f.program(4, Uint8Array.of(9)); // overwrite in place, no erase needed
    t.deepEqual([...f.read(3, 3)], [1, 9, 3]);
    const e = t.throws(() => f.erase(0, 1));
    t.true(isPersistError(e) && e.reason === 'no_erase');
  }
  onFile.close();
  const again = Fram.attach(mappedBacking(mapFile(path, framFileSize(8192))));
  t.deepEqual([...again.read(3, 3)], [1, 9, 3]);
  again.close();
  t.throws(() => again.read(0, 1), { message: /closed/ });
});

test('a read-only mapping refuses writes instead of faulting', (t) => {
  const { dev, path } = flashOnFile();
  dev.close();
  const ro = NorFlash.attach(mappedBacking(mapFile(path, norFileSize(G), { readonly: true }), true));
  const e = t.throws(() => ro.program(0, new Uint8Array(256)));
  t.true(isPersistError(e) && e.code === 'EACCES');
  t.throws(() => ro.erase(0, 4096), { message: /read-only/ });
  ro.close();
});
