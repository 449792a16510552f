/**
 * Jobs bench (issue 17). One JSON object per line; every figure has a same-process baseline.
 *
 *   npx tsx bench/jobs-journal.ts
 *
 * The journal is made for real: 1,000 jobs (4 targets each) submitted to a JobManager and run by an
 * instant in-process flasher, so it holds what a busy gateway's does just before a compaction
 * (the submit, start, verdict and end snapshots of recent jobs next to the compacted ones).
 *
 * - list: `job.list` of all 1,000 retained jobs, newest first. Goal: <= 20 ms.
 *   Baseline: copying and reversing an array of the same 1,000 records (the least any list costs).
 * - recovery: JobManager.open() on a fresh copy of that state dir each run (read, CRC-check and
 *   parse every line, rebuild the indexes and queues, retention, image refcounts and sweep, a
 *   compaction when due). Goal: <= 200 ms. Then the same on the compacted journal (one line per
 *   job). Baseline: readFileSync of the journal + JSON.parse of every line (no checks, no indexes).
 * - submit: one durable submit (image write + journal append + fdatasync) vs one 1 KiB
 *   write + fdatasync to a plain file: what the acknowledgement costs over the disk's own fsync.
 */
import { closeSync, cpSync, fdatasyncSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage } from '../src/hxe/index.js';
import { JOURNAL_FILE, JobManager, type JobEvent } from '../src/gateway/jobs/index.js';
import type { FlashRequest, FlashResult, Flasher } from '../src/link/flasher.js';

const work = mkdtempSync(join(tmpdir(), 'hsx-bench-jobs-'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

class InstantFlasher implements Flasher {
  readonly kind = 'can' as const;
  constructor(readonly link: string) {}
  checkTarget(): string | null {
    return null;
  }
  async flash(req: FlashRequest): Promise<FlashResult> {
    const verdicts = req.targets.map((target) => ({ target, ok: true as const, outcome: 'installed' as const, from: 'a'.repeat(64), to: 'b'.repeat(64), confirmPending: false }));
    const total = req.image.length;
    req.onProgress?.({ phase: 'done', sentBytes: total, totalBytes: total, targets: req.targets.map((target) => ({ target, phase: 'done', ackedBytes: total, totalBytes: total })), verdicts });
    return { verdicts, stats: {}, elapsedMs: 0 };
  }
  async close(): Promise<void> {}
}

function image(seed: number): Uint8Array {
  const code = new Uint8Array(256).map((_, i) => (seed * 17 + i) & 0xff);
  const r = buildImage({ code, appName: 'bench_app', allowMultipleInstances: true });
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}

const flashers = () => new Map<string, Flasher>([['can0', new InstantFlasher('can0')], ['ttyUSB0', new InstantFlasher('ttyUSB0')]]);
const by = { name: 'bench', role: 'admin', via: 'control' as const };

/** A link that is busy until aborted: every submit after the first only queues. */
class BusyFlasher extends InstantFlasher {
  override async flash(req: FlashRequest): Promise<FlashResult> {
    await new Promise<void>((res) => req.signal?.addEventListener('abort', () => res(), { once: true }));
    return { verdicts: req.targets.map((target) => ({ target, ok: false, code: 'ECANCELED', where: 'data', reason: 'canceled', message: 'aborted' })), stats: {}, elapsedMs: 0 };
  }
}

/** Submit latency alone (checks + image + journal append + fdatasync), the link busy so nothing starts. */
async function benchSubmit(reps: number): Promise<void> {
  const dir = join(work, 'submit');
  const m = await JobManager.open({ dir, flashers: new Map([['can0', new BusyFlasher('can0')]]) });
  await new Promise((res) => setImmediate(res));
  const images = Array.from({ length: 10 }, (_, i) => image(100 + i));
  const first = await m.submit({ link: 'can0', targets: ['1'], image: { bytes: images[0]!, name: 'busy.hxe' }, by });
  if (!first.ok) throw new Error(JSON.stringify(first.error));
  const newImage: number[] = [];
  const sameImage: number[] = [];
  for (let i = 0; i < reps; i++) {
    const fresh = i < images.length - 1;
    const bytes = fresh ? images[i + 1]! : images[0]!;
    const t0 = performance.now();
    const r = await m.submit({ link: 'can0', targets: ['1', '2', '3', '4'], image: { bytes, name: 'x.hxe' }, by });
    (fresh ? newImage : sameImage).push(performance.now() - t0);
    if (!r.ok) throw new Error(JSON.stringify(r.error));
  }
  await m.close();
  const rawMs: number[] = [];
  const raw = join(work, 'raw.bin');
  const kib = Buffer.alloc(1024, 0x61);
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const fd = openSync(raw, 'a');
    writeSync(fd, kib);
    fdatasyncSync(fd);
    closeSync(fd);
    rawMs.push(performance.now() - t0);
  }
  const s = median(sameImage);
  const n = median(newImage);
  const r = median(rawMs);
  out({ bench: 'jobs', measure: 'submit_durable', reps, submit_ms: round(s), submit_new_image_ms: round(n), raw_write_fdatasync_ms: round(r), ratio: round(s / r, 2), ratio_new_image: round(n / r, 2) });
}

async function makeJournal(dir: string, jobs: number): Promise<void> {
  const m = await JobManager.open({ dir, flashers: flashers(), maxFinished: jobs });
  let finished = 0;
  let all: () => void = () => {};
  const done = new Promise<void>((res) => (all = res));
  m.watch((e: JobEvent) => {
    if (e.type === 'job.finished' && ++finished === jobs) all();
  });
  for (let i = 0; i < jobs; i++) {
    const r = await m.submit({ link: i % 2 ? 'can0' : 'ttyUSB0', targets: ['1', '2', '3', '4'], image: { bytes: image(i % 10), name: `app-${i % 10}.hxe` }, by, client_token: `tok-${i}` });
    if (!r.ok) throw new Error(JSON.stringify(r.error));
    if (i % 50 === 49) await new Promise((res) => setImmediate(res)); // let the links drain
  }
  await done;
  await m.close();
}

async function main(): Promise<void> {
  const N = 1000;
  const pristine = join(work, 'pristine');
  await benchSubmit(50);
  await makeJournal(pristine, N);
  const journalPath = join(pristine, JOURNAL_FILE);
  const bytes = statSync(journalPath).size;
  const lines = readFileSync(journalPath, 'utf8').split('\n').length - 1;

  // recovery: open a fresh copy each time (the first open of this journal compacts it)
  const reps = 9;
  const openMs: number[] = [];
  const baseMs: number[] = [];
  let compacted = false;
  let retained = 0;
  for (let i = 0; i < reps; i++) {
    const dir = join(work, `copy-${i}`);
    cpSync(pristine, dir, { recursive: true });
    const t0 = performance.now();
    const m = await JobManager.open({ dir, flashers: flashers(), maxFinished: N });
    openMs.push(performance.now() - t0);
    compacted ||= m.recovery.compacted;
    retained = m.list({ limit: Infinity }).length;
    await m.close();
    const t1 = performance.now();
    const text = readFileSync(journalPath, 'utf8');
    let parsed = 0;
    for (const line of text.split('\n')) if (line) parsed += JSON.parse(line) ? 1 : 0;
    baseMs.push(performance.now() - t1);
    if (parsed !== lines) throw new Error('baseline parsed the wrong number of lines');
    rmSync(dir, { recursive: true, force: true });
  }
  if (retained !== N) throw new Error(`recovery kept ${retained} jobs, not ${N}`);
  const o = median(openMs);
  const b = median(baseMs);
  out({ bench: 'jobs', measure: 'recovery', jobs: N, journal_lines: lines, journal_bytes: bytes, reps, open_ms: round(o), compacted, read_parse_ms: round(b), ratio: round(o / b, 2), goal_ms: 200, pass: o <= 200 });

  // recovery of the compacted journal (the steady state after the first open)
  const compactDir = join(work, 'compacted');
  cpSync(pristine, compactDir, { recursive: true });
  const first = await JobManager.open({ dir: compactDir, flashers: flashers(), maxFinished: N });
  if (!first.compact()) throw new Error('compaction failed');
  await first.close();
  const cOpen: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const m = await JobManager.open({ dir: compactDir, flashers: flashers(), maxFinished: N });
    cOpen.push(performance.now() - t0);
    await m.close();
  }
  const cPath = join(compactDir, JOURNAL_FILE);
  const cBase: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t1 = performance.now();
    for (const line of readFileSync(cPath, 'utf8').split('\n')) if (line) JSON.parse(line);
    cBase.push(performance.now() - t1);
  }
  const co = median(cOpen);
  const cb = median(cBase);
  out({ bench: 'jobs', measure: 'recovery_compacted', jobs: N, journal_lines: readFileSync(cPath, 'utf8').split('\n').length - 1, journal_bytes: statSync(cPath).size, reps, open_ms: round(co), read_parse_ms: round(cb), ratio: round(co / cb, 2), goal_ms: 200, pass: co <= 200 });

  // list all 1,000
  const m = await JobManager.open({ dir: compactDir, flashers: flashers(), maxFinished: N });
  const baseline = m.list({ limit: Infinity });
  const listMs: number[] = [];
  const copyMs: number[] = [];
  let sink = 0;
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    sink += m.list({ limit: Infinity }).length;
    listMs.push(performance.now() - t0);
    const t1 = performance.now();
    sink += baseline.slice().reverse().length;
    copyMs.push(performance.now() - t1);
  }
  const filtered: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    sink += m.list({ link: 'can0', state: 'SUCCEEDED', limit: Infinity }).length;
    filtered.push(performance.now() - t0);
  }
  await m.close();
  if (sink === 0) throw new Error('unreachable');
  const l = median(listMs);
  const c = median(copyMs);
  out({ bench: 'jobs', measure: 'list', jobs: N, reps: 200, list_ms: round(l, 4), list_filtered_ms: round(median(filtered), 4), array_copy_ms: round(c, 4), ratio: round(l / c, 2), goal_ms: 20, pass: l <= 20 });
}

try {
  await main();
} finally {
  rmSync(work, { recursive: true, force: true });
}
