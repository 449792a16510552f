/**
 * Persistence bench. One JSON object per line; every figure has a same-process baseline.
 *
 * - commit: a 64 KiB image into a mapped flash file (erase + program + msync + verify + switch
 *   record + msync) vs writing the same bytes with fs.writeFileSync + fsync. Goal: ratio <= 2.
 * - recovery: openDevice on an 8 MiB flash (map, header checks, status scan, hash the active
 *   image, load the value journal). Goal: < 10 ms. Baseline: reading the flash file with readFileSync.
 * - journal: value writes/s, durable per write (flush = append + msync) and debounced (coalesced),
 *   vs a 16-byte write + fdatasync per value to a plain file.
 */
import { closeSync, fdatasyncSync, fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevice, patternImage, testMeta } from '../src/persist/index.js';

const work = mkdtempSync(join(tmpdir(), 'hsx-bench-persist-'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

async function benchCommit(reps: number): Promise<void> {
  const dir = join(work, 'commit');
  rmSync(dir, { recursive: true, force: true });
  (await import('node:fs')).mkdirSync(dir);
  const d = await openDevice(dir);
  const img = patternImage(1, 64 * 1024);
  const rawPath = join(work, 'raw.bin');
  const commitMs: number[] = [];
  const rawMs: number[] = [];
  await d.imageStore.commit(img, testMeta('warm', 0), 'permanent'); // warm-up
  for (let i = 0; i < reps; i++) {
    // interleave so both see the same disk conditions
    const t0 = performance.now();
    await d.imageStore.commit(img, testMeta(String(i), 0), 'permanent');
    commitMs.push(performance.now() - t0);
    const t1 = performance.now();
    const fd = openSync(rawPath, 'w');
    writeFileSync(fd, img);
    fsyncSync(fd);
    closeSync(fd);
    rawMs.push(performance.now() - t1);
  }
  await d.close();
  const c = median(commitMs);
  const r = median(rawMs);
  out({ bench: 'persist.commit_64k', reps, commit_ms: round(c), raw_write_fsync_ms: round(r), ratio: round(c / r, 2), goal_ratio: 2, pass: c / r <= 2 });
}

async function benchRecovery(reps: number): Promise<void> {
  const dir = join(work, 'recovery');
  (await import('node:fs')).mkdirSync(dir);
  const geometry = { flashSize: 8 << 20 };
  const d = await openDevice(dir, geometry);
  for (let i = 0; i < 20; i++) await d.imageStore.commit(patternImage(i, 64 * 1024), testMeta(String(i), i), 'permanent');
  for (let k = 1; k <= 50; k++) d.valueStore.write(k, k, { valueType: 'f16' });
  await d.close();
  const openMs: number[] = [];
  const readMs: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const dev = await openDevice(dir);
    openMs.push(performance.now() - t0);
    if (dev.imageStore.active()?.meta.version !== '19') throw new Error('recovery found the wrong image');
    await dev.close();
    const t1 = performance.now();
    readFileSync(join(dir, 'flash.bin'));
    readMs.push(performance.now() - t1);
  }
  const o = median(openMs);
  const r = median(readMs);
  out({ bench: 'persist.recovery_8MiB', reps, open_recover_ms: round(o), read_file_ms: round(r), ratio: round(o / r, 2), goal_ms: 10, pass: o < 10 });
}

async function benchJournal(): Promise<void> {
  const dir = join(work, 'journal');
  (await import('node:fs')).mkdirSync(dir);
  const d = await openDevice(dir);
  const schema = { valueType: 'f16' };
  const n = 500;
  let t0 = performance.now();
  for (let i = 0; i < n; i++) {
    d.valueStore.write(1 + (i % 32), i & 0xffff, schema);
    await d.valueStore.flush();
  }
  const durablePerS = n / ((performance.now() - t0) / 1000);
  const m = 20_000;
  t0 = performance.now();
  for (let i = 0; i < m; i++) {
    d.valueStore.write(1 + (i % 32), i & 0xffff, schema, 50);
    if (i % 100 === 99) await d.valueStore.flush();
  }
  await d.valueStore.flush();
  const debouncedPerS = m / ((performance.now() - t0) / 1000);
  await d.close();
  const fd = openSync(join(work, 'raw-journal.bin'), 'w');
  const rec = new Uint8Array(16);
  t0 = performance.now();
  for (let i = 0; i < n; i++) {
    writeSync(fd, rec, 0, 16, i * 16);
    fdatasyncSync(fd);
  }
  const rawPerS = n / ((performance.now() - t0) / 1000);
  closeSync(fd);
  out({ bench: 'persist.journal_durable', writes: n, writes_per_s: Math.round(durablePerS), raw_write_fdatasync_per_s: Math.round(rawPerS), ratio: round(durablePerS / rawPerS, 2) });
  out({ bench: 'persist.journal_debounced', writes: m, flush_every: 100, writes_per_s: Math.round(debouncedPerS), raw_write_fdatasync_per_s: Math.round(rawPerS), ratio: round(debouncedPerS / rawPerS, 2) });
}

try {
  await benchCommit(Number(process.env['BENCH_REPS'] ?? 30));
  await benchRecovery(Number(process.env['BENCH_REPS'] ?? 30));
  await benchJournal();
} finally {
  rmSync(work, { recursive: true, force: true });
}
