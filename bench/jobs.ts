/**
 * Jobs bench (issue 17): the daemon as a master, against the flash CLI and the bare flasher, and the
 * job journal. One JSON object per line ({"bench":"jobs","measure":...}), every figure next to a
 * baseline measured in the same run, then a `summary` line with each goal and whether it passed.
 * A missed goal is reported, never an exit code (the process fails only when something breaks).
 *
 *   npx tsx bench/jobs.ts
 *
 * The rig (parts 1 and 2): a cross-process virtual CAN hub hosted here with the 1 Mbit/s timing model
 * (frames take the time a real bus gives them), 16 simulated devices in this process (flash and FRAM
 * files, each behind its device intake and a CanListener on the hub's bus, as `device` and the gateway
 * wire them), and a real `serve` process (the built CLI when it is fresh, else tsx: test/support/
 * cli-argv.ts) with a state dir and the hub as its master link `bus`. Between two transfers the bench
 * waits until the devices confirmed their update and, after a job, until the daemon's inventory scan
 * of the link ended (`inventory.scanned` on an event subscription): the daemon scans after every job
 * (1 s, it holds the link), so nothing of one run overlaps the next.
 *
 * 1. job_vs_flash_cli — goal: a job through the daemon to 16 nodes ≤ 1.05 × the wall time of the flash
 *    CLI on the same bus. Like with like, both as the processes a user runs, spawn → exit:
 *      (a) `hsx-gateway flash --can virtual:127.0.0.1:PORT --nodes 1-16 IMAGE --json`
 *      (b) `hsx-gateway job submit --connect … --link bus --nodes 1-16 IMAGE --json` (the daemon runs;
 *          the CLI uploads the local file, as flash reads it).
 *    IMAGE alternates between two 64 KiB builds of one app, so every run is a real update of all 16
 *    (each run checks 16 × UPDATED); a and b are interleaved, the order flipped every pair; a warm-up
 *    pair first. Medians, their ratio, and the median of the paired ratios; where the time goes: the
 *    transfer as each CLI reports it (flash's summary `ms`, the job's started_ts → finished_ts), the rest
 *    (process start, connect, upload, exit), and `hsx-gateway --version` spawn → exit (bare start-up).
 *    `cli` says whether the CLI ran built (dist) or through tsx: the start-up, and so the ratio, differ.
 *    job_vs_flasher_inprocess — the same comparison without process start-up, in this process: (c)
 *    CanFlasher.flash() on a bus client of the hub vs (d) JobManager.submit() → job.finished on that
 *    same flasher (own state dir: image store, journal appends and fdatasyncs). The gap between 1 and
 *    this says what the CLI / control-port / daemon path adds beyond the job service itself.
 * 2. submit_to_first_data — goal: submit → first data frame ≤ 50 ms p99 when idle. `job.submit` over a
 *    ControlClient (an image in the daemon's images dir, one target, node 1, a 2 KiB build alternating
 *    so data moves each time); an endpoint of this process on the hub's bus timestamps the first data
 *    frame after the job's ANNOUNCE. Baseline, interleaved: CanFlasher.flash() in this process → its
 *    first data frame, same image sizes, same node, same observer. p50/p99 (nearest rank)/max.
 * 3. From the former bench/jobs-journal.ts (same measure names): submit_durable, recovery,
 *    recovery_compacted (goal ≤ 200 ms), list of 1,000 finished jobs (goal ≤ 20 ms). The journal is made
 *    for real: 1,000 jobs (4 targets each) submitted to a JobManager and run by an instant in-process
 *    flasher, so it holds what a busy gateway's does just before a compaction.
 *    - list: `job.list` of all 1,000 retained jobs, newest first. Baseline: copying and reversing an
 *      array of the same 1,000 records (the least any list costs).
 *    - recovery: JobManager.open() on a fresh copy of that state dir each run (read, CRC-check and
 *      parse every line, rebuild the indexes and queues, retention, image refcounts and sweep, a
 *      compaction when due); then the same on the compacted journal. Baseline: readFileSync of the
 *      journal + JSON.parse of every line (no checks, no indexes).
 *    - submit_durable: one durable submit (image write + journal append + fdatasync) vs one 1 KiB
 *      write + fdatasync to a plain file: what the acknowledgement costs over the disk's own fsync.
 *
 * The summary carries `loadAverage1m` and `stealPercent` (CPU time the hypervisor gave to other
 * guests during the run): on a shared 2-core box the process-start and wall-time figures follow them.
 * Every child process, the hub, the devices and the temp dir are removed at the end, also on error
 * or SIGINT/SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, cpSync, existsSync, fdatasyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildImage } from '../src/hxe/index.js';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { ControlClient } from '../src/gateway/control/client.js';
import { JOURNAL_FILE, JobManager, type JobEvent } from '../src/gateway/jobs/index.js';
import type { JobRecord } from '../src/gateway/jobs/types.js';
import type { FlashRequest, FlashResult, Flasher, TargetVerdict } from '../src/link/flasher.js';
import { CanFlasher } from '../src/link/can/flasher.js';
import { classifyId, DEFAULT_ID_PLAN, ProvOp } from '../src/link/can/ids.js';
import { startVirtualHub, type VirtualHub } from '../src/link/can/virtual-net.js';
import type { CanBus } from '../src/link/can/bus.js';
import { openBenchDevices, settled, type BenchDevice } from './support/can-devices.js';
import { cliArgv, ROOT } from '../test/support/cli-argv.js';
import { startServe, type ServeChild } from '../test/support/serve-child.js';
import { sensorOfSize } from '../test/update-images.js';

const started = performance.now();
const work = mkdtempSync(join(tmpdir(), 'hsx-bench-jobs-'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** Nearest rank: the smallest value with at least p of the samples at or below it. */
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(p * xs.length) - 1)]!;
const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const say = (s: string) => process.stderr.write(`${s}\n`);
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));
/** `p`, or a rejection naming `what` after `ms`; the timer is cleared either way (no timer outlives the bench). */
async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** The machine's CPU time so far, and how much of it the hypervisor gave to other guests (steal), from /proc/stat. */
function machineTicks(): { total: number; steal: number } {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return { total: f.reduce((a, b) => a + b, 0), steal: f[7] ?? 0 };
  } catch {
    return { total: 0, steal: 0 };
  }
}

/** Everything started here, stopped in reverse order at the end (also on error or a signal). */
const cleanups: Array<{ what: string; run: () => Promise<unknown> | unknown }> = [];
const children = new Set<ChildProcess>();
async function cleanup(): Promise<void> {
  for (const c of [...children]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const c of cleanups.splice(0).reverse()) {
    try {
      await withTimeout(Promise.resolve(c.run()), 10_000, c.what);
    } catch (e) {
      say(`cleanup of ${c.what}: ${(e as Error).message}`);
    }
  }
  rmSync(work, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    say(`bench/jobs: ${sig}, cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

const goals: Array<{ goal: string; measured: number; limit: number; unit: string; pass: boolean }> = [];
function goal(name: string, measured: number, limit: number, unit: string): boolean {
  const pass = measured <= limit;
  goals.push({ goal: name, measured: round(measured, 3), limit, unit, pass });
  say(`goal ${pass ? 'PASSED' : 'MISSED'}: ${name}: ${round(measured, 3)} ${unit} (limit ${limit})`);
  return pass;
}

// ================================================================================================
// 3. The journal (formerly bench/jobs-journal.ts)
// ================================================================================================

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

async function journalBench(): Promise<void> {
  const N = 1000;
  const pristine = join(work, 'pristine');
  await benchSubmit(50);
  await makeJournal(pristine, N);
  const journalPath = join(pristine, JOURNAL_FILE);
  const bytes = statSync(journalPath).size;
  const lines = readFileSync(journalPath, 'utf8').split('\n').length - 1;

  // recovery: open a fresh copy each time (the first open of this journal compacts it when due)
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

  // recovery of the compacted journal (the steady state after a compaction)
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
  // The goal is the restart a gateway makes: the journal as it was written (the worse of the two).
  goal('restart recovery of 1,000 finished jobs (JobManager.open)', Math.max(o, co), 200, 'ms');

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
  goal('list of 1,000 finished jobs', l, 20, 'ms');
  rmSync(pristine, { recursive: true, force: true });
  rmSync(compactDir, { recursive: true, force: true });
}

// ================================================================================================
// The rig: hub, 16 devices, serve, an event subscription, a bus observer
// ================================================================================================

const NODES = 16;
const LINK = 'bus';
const TOKEN = 'bench-jobs-operator-secret';
const CONFIRM_MS = 50;

interface Child {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  stderr(): string;
  /** Exit code, and when the process was gone (performance.now()). */
  exited: Promise<{ code: number; at: number }>;
}

/**
 * How the CLI is started, fixed once for the whole run: cliArgv() picks the built CLI when it is as new as
 * src/, else tsx, and src/ may change while the bench runs; a and b must start the same way.
 */
const CLI = cliArgv();

/** The real CLI in a child process (tracked: killed at cleanup if still running). */
function spawnCli(args: string[]): Child {
  const child = spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const lines: Array<Record<string, unknown>> = [];
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (text) => {
    try {
      lines.push(JSON.parse(text) as Record<string, unknown>);
    } catch {
      lines.push({ text });
    }
  });
  const exited = new Promise<{ code: number; at: number }>((resolve) =>
    child.once('exit', (code) => {
      const at = performance.now();
      children.delete(child);
      // stdout may still hold the last lines: wait for the streams to close before the caller reads them.
      child.once('close', () => resolve({ code: code ?? -1, at }));
    }));
  return { child, lines, stderr: () => err, exited };
}


/**
 * An `events.subscribe` stream on the daemon (its own connection and session): `inventory.scanned`
 * (the link's scan after a job ended: the link is free again) and `job.finished`.
 */
class EventStream {
  readonly events: Array<{ type: string; data: Record<string, unknown> }> = [];
  private waiters = new Set<() => void>();
  private keepalive: NodeJS.Timeout | null = null;

  private constructor(private readonly socket: Socket, private readonly client: ControlClient, private readonly session: string) {}

  static async open(control: string, token: string): Promise<EventStream> {
    const c = await ControlClient.connect(control, { token, timeoutMs: 30_000 });
    if (!c.ok) throw new Error(c.error.message);
    const s = await c.value.request('session.open', { client: 'bench-jobs', heartbeat_s: 300 });
    if (!s.ok) throw new Error(`session.open: ${s.error.message}`);
    const session = String((s.value['session'] as Record<string, unknown>)['id']);
    const [host, port] = control.split(':') as [string, string];
    const socket = connect(Number(port), host);
    await new Promise<void>((res, rej) => {
      socket.once('connect', res);
      socket.once('error', rej);
    });
    const stream = new EventStream(socket, c.value, session);
    let replied: (line: Record<string, unknown>) => void = () => {};
    const reply = new Promise<Record<string, unknown>>((res) => (replied = res));
    let gotReply = false;
    createInterface({ input: socket }).on('line', (line) => {
      const m = JSON.parse(line) as Record<string, unknown>;
      if (!gotReply) {
        gotReply = true;
        replied(m);
        return;
      }
      stream.events.push({ type: String(m['type']), data: (m['data'] ?? {}) as Record<string, unknown> });
      for (const w of [...stream.waiters]) w();
    });
    socket.write(JSON.stringify({ version: 1, cmd: 'events.subscribe', token, session, filters: { categories: ['inventory', 'job.finished'] } }) + '\n');
    const r = await withTimeout(reply, 10_000, 'the reply to events.subscribe');
    if (r['status'] !== 'ok') throw new Error(`events.subscribe: ${JSON.stringify(r)}`);
    stream.keepalive = setInterval(() => void c.value.request('session.keepalive', { session }), 20_000);
    stream.keepalive.unref();
    return stream;
  }

  count(type: string): number {
    return this.events.filter((e) => e.type === type).length;
  }

  /** The `n`-th (1-based) event of `type`, now or when it comes. */
  nth(type: string, n: number, what: string, ms = 60_000): Promise<{ type: string; data: Record<string, unknown> }> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = this.events.filter((e) => e.type === type)[n - 1];
        if (hit) {
          this.waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${type} event (${what}) within ${ms} ms`));
      }, ms);
      this.waiters.add(check);
      check();
    });
  }

  close(): void {
    if (this.keepalive) clearInterval(this.keepalive);
    this.socket.destroy();
    this.client.close();
  }
}

/** An endpoint on the hub's bus that timestamps, after a mark, the first data frame following an ANNOUNCE. */
class Observer {
  private armed: { resolve: (r: { ms: number; session: number }) => void; t0: number; session: number | null } | null = null;
  frames = 0;

  constructor(readonly ep: CanBus) {
    ep.receive((f) => {
      this.frames++;
      const a = this.armed;
      if (!a || f.ext) return;
      const c = classifyId(DEFAULT_ID_PLAN, f.id);
      if (a.session === null) {
        if (c.kind === 'prov' && c.node === 0 && c.op === ProvOp.ANNOUNCE) a.session = f.data[0] ?? null;
        return;
      }
      if (c.kind === 'data') {
        this.armed = null;
        a.resolve({ ms: performance.now() - a.t0, session: a.session });
      }
    });
  }

  /** Arms at t0 = now; resolves with the ms from t0 to the first data frame of the next session announced. */
  arm(): { t0: number; first: Promise<{ ms: number; session: number }> } {
    if (this.armed) throw new Error('observer already armed');
    const t0 = performance.now();
    let resolve: (r: { ms: number; session: number }) => void = () => {};
    const first = new Promise<{ ms: number; session: number }>((res) => (resolve = res));
    this.armed = { resolve, t0, session: null };
    return { t0, first };
  }

  disarm(): void {
    this.armed = null;
  }
}

function serveConfig(dir: string, hubPort: number): string {
  const images = join(dir, 'images');
  mkdirSync(images, { recursive: true });
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    `[gateway]\nid = "bench-jobs"\nlog_level = "warn"\nstate_dir = "${join(dir, 'gateway')}"\n`,
    `[control]\nimages_dir = "${images}"\n`,
    `[[control.tokens]]\nname = "bench"\nrole = "operator"\nsha256 = "${tokenHash(TOKEN)}"\n`,
    // The hub models the bus timing; the daemon is a plain client of it (as test/gateway-jobs.test.ts writes it).
    `[[links.can]]\nname = "${LINK}"\ninterface = "127.0.0.1:${hubPort}"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
  ].join('\n'));
  return config;
}

const allUpdated = (verdicts: ReadonlyArray<Pick<TargetVerdict, 'ok'> & { outcome?: string }>, n: number): boolean =>
  verdicts.length === n && verdicts.every((v) => v.ok && v.outcome === 'updated');

// ================================================================================================
// 1. A job to 16 nodes vs the flash CLI (and vs the bare flasher, in process)
// ================================================================================================

interface Rig {
  hub: VirtualHub;
  devs: BenchDevice[];
  serve: ServeChild;
  stream: EventStream;
  images: string;
  flasher: CanFlasher;
  observer: Observer;
}

/** Waits until the daemon's scan after job number `jobsSoFar` ended (the link is free again). */
async function daemonIdle(r: Rig, scansBefore: number): Promise<void> {
  await r.stream.nth('inventory.scanned', scansBefore + 1, 'the scan after a job');
}

interface CliRun {
  /** spawn → exit. */
  ms: number;
  /** The transfer itself as the CLI reports it: the flash summary's `ms`, the job's started_ts → finished_ts. */
  transferMs: number;
}

async function cliComparison(r: Rig, bigs: Array<{ path: string; bytes: Uint8Array }>, pairs: number): Promise<void> {
  const address = `virtual:127.0.0.1:${r.hub.port}`;
  let next = 0; // which build goes next: every run is an update of the other build
  const flashCli = async (): Promise<CliRun> => {
    const img = bigs[next++ % 2]!;
    await settled(r.devs);
    const t0 = performance.now();
    const p = spawnCli(['flash', '--can', address, '--nodes', `1-${NODES}`, img.path, '--json']);
    const { code, at } = await p.exited;
    const summary = p.lines.find((l) => l['type'] === 'summary');
    if (code !== 0 || !summary || summary['updated'] !== NODES) throw new Error(`flash CLI: exit ${code}, ${JSON.stringify(summary ?? p.lines.slice(-3))} ${p.stderr().slice(-2000)}`);
    return { ms: at - t0, transferMs: Number(summary['ms']) };
  };
  const jobCli = async (): Promise<CliRun> => {
    const img = bigs[next++ % 2]!;
    await settled(r.devs);
    const scans = r.stream.count('inventory.scanned');
    const t0 = performance.now();
    const p = spawnCli(['job', 'submit', '--connect', r.serve.control, '--token', TOKEN, '--link', LINK, '--nodes', `1-${NODES}`, img.path, '--json']);
    const { code, at } = await p.exited;
    const result = p.lines.find((l) => l['type'] === 'result') as (JobRecord & { ok: boolean }) | undefined;
    if (code !== 0 || !result || !allUpdated(result.targets.map((t) => ({ ok: t.state === 'SUCCEEDED', outcome: t.outcome ?? '' })), NODES)) {
      throw new Error(`job submit CLI: exit ${code}, ${JSON.stringify(result ?? p.lines.slice(-3))} ${p.stderr().slice(-2000)}`);
    }
    // Not timed: the daemon scans the link after the job; the next run starts once it is free.
    await daemonIdle(r, scans);
    return { ms: at - t0, transferMs: ((result.finished_ts ?? 0) - (result.started_ts ?? 0)) * 1000 };
  };
  /** What starting the CLI costs by itself: `hsx-gateway --version`, spawn → exit. */
  const bareCli = async (): Promise<number> => {
    const t0 = performance.now();
    const p = spawnCli(['--version']);
    const { code, at } = await p.exited;
    if (code !== 0) throw new Error(`--version: exit ${code} ${p.stderr()}`);
    return at - t0;
  };

  // warm-up pair (page cache, the daemon's paths; the devices' first install is done already)
  await flashCli();
  await jobCli();
  const a: CliRun[] = [];
  const b: CliRun[] = [];
  const bare: number[] = [];
  for (let i = 0; i < pairs; i++) {
    if (i % 2 === 0) {
      a.push(await flashCli());
      b.push(await jobCli());
    } else {
      b.push(await jobCli());
      a.push(await flashCli());
    }
    if (i % 2 === 1) bare.push(await bareCli());
  }
  const ma = median(a.map((x) => x.ms));
  const mb = median(b.map((x) => x.ms));
  const paired = median(b.map((x, i) => x.ms / a[i]!.ms));
  out({
    bench: 'jobs', measure: 'job_vs_flash_cli', nodes: NODES, bytes: bigs[0]!.bytes.length, bitrate: 1_000_000, runs: pairs,
    cli: CLI[0]!.endsWith('.js') ? 'dist' : 'tsx', serve: r.serve.child.spawnargs.includes('tsx') ? 'tsx' : 'dist',
    flash_cli_ms: Math.round(ma), job_cli_ms: Math.round(mb), ratio: round(mb / ma), paired_ratio: round(paired),
    // where the time goes: the transfer as each CLI reports it, and the rest (process start, connect, upload, exit)
    flash_cli_transfer_ms: Math.round(median(a.map((x) => x.transferMs))), job_transfer_ms: Math.round(median(b.map((x) => x.transferMs))),
    flash_cli_outside_transfer_ms: Math.round(median(a.map((x) => x.ms - x.transferMs))), job_cli_outside_transfer_ms: Math.round(median(b.map((x) => x.ms - x.transferMs))),
    bare_cli_start_ms: Math.round(median(bare)),
    flash_cli_runs_ms: a.map((x) => Math.round(x.ms)), job_cli_runs_ms: b.map((x) => Math.round(x.ms)), goal: 1.05, pass: mb / ma <= 1.05,
  });
  goal('job through the daemon to 16 nodes vs the flash CLI, wall time (median ratio)', mb / ma, 1.05, '×');
}

async function inProcessComparison(r: Rig, bigs: Array<{ path: string; bytes: Uint8Array }>, pairs: number): Promise<void> {
  const dir = join(work, 'inproc-state');
  const jm = await JobManager.open({ dir, flashers: new Map<string, Flasher>([[LINK, r.flasher]]) });
  cleanups.push({ what: 'in-process JobManager', run: () => jm.close() });
  const finished = new Map<string, (j: JobRecord) => void>();
  jm.watch((e) => {
    if (e.type === 'job.finished') finished.get(e.job.id)?.(e.job);
  });
  const targets = Array.from({ length: NODES }, (_, i) => String(i + 1));
  let next = 0;
  const flasher = async (): Promise<number> => {
    const img = bigs[next++ % 2]!;
    await settled(r.devs);
    const t0 = performance.now();
    const res = await r.flasher.flash({ image: img.bytes, targets });
    const ms = performance.now() - t0;
    if (!allUpdated(res.verdicts, NODES)) throw new Error(`flasher: ${JSON.stringify(res.verdicts)}`);
    return ms;
  };
  const job = async (): Promise<number> => {
    const img = bigs[next++ % 2]!;
    await settled(r.devs);
    const t0 = performance.now();
    const sub = await jm.submit({ link: LINK, targets, image: { bytes: img.bytes, name: 'big.hxe' }, by });
    if (!sub.ok) throw new Error(`submit: ${JSON.stringify(sub.error)}`);
    const end = await new Promise<JobRecord>((res) => finished.set(sub.value.id, res));
    const ms = performance.now() - t0;
    finished.delete(sub.value.id);
    if (!allUpdated(end.targets.map((t) => ({ ok: t.state === 'SUCCEEDED', outcome: t.outcome ?? '' })), NODES)) throw new Error(`job: ${JSON.stringify(end.targets)}`);
    return ms;
  };
  await flasher();
  await job();
  const c: number[] = [];
  const d: number[] = [];
  for (let i = 0; i < pairs; i++) {
    if (i % 2 === 0) {
      c.push(await flasher());
      d.push(await job());
    } else {
      d.push(await job());
      c.push(await flasher());
    }
  }
  const mc = median(c);
  const md = median(d);
  out({
    bench: 'jobs', measure: 'job_vs_flasher_inprocess', nodes: NODES, bytes: bigs[0]!.bytes.length, bitrate: 1_000_000, runs: pairs,
    flasher_ms: Math.round(mc), job_ms: Math.round(md), ratio: round(md / mc), paired_ratio: round(median(d.map((x, i) => x / c[i]!))),
    job_overhead_ms: round(md - mc, 1),
  });
}

// ================================================================================================
// 2. Submit → first data frame, idle
// ================================================================================================

async function firstDataFrame(r: Rig, smalls: Array<{ name: string; bytes: Uint8Array }>, samples: number): Promise<void> {
  const c = await ControlClient.connect(r.serve.control, { token: TOKEN, timeoutMs: 30_000 });
  if (!c.ok) throw new Error(c.error.message);
  const client = c.value;
  cleanups.push({ what: 'control client', run: () => client.close() });
  let next = 0; // node 1 gets the other small build each time, from either master: data always moves
  const daemon = async (): Promise<{ first: number; reply: number }> => {
    const img = smalls[next++ % 2]!;
    await settled(r.devs);
    await sleep(5);
    const scans = r.stream.count('inventory.scanned');
    const finishedBefore = r.stream.count('job.finished');
    const armed = r.observer.arm();
    const rep = await client.request('job.submit', { link: LINK, targets: ['1'], image: img.name });
    const reply = performance.now() - armed.t0;
    if (!rep.ok) {
      r.observer.disarm();
      throw new Error(`job.submit: ${JSON.stringify(rep.error)}`);
    }
    const id = (rep.value['job'] as JobRecord).id;
    const first = await withTimeout(armed.first, 30_000, `a data frame after the submit of ${id}`);
    const fin = await r.stream.nth('job.finished', finishedBefore + 1, id);
    const job = fin.data['job'] as JobRecord;
    if (job.id !== id || job.state !== 'SUCCEEDED') throw new Error(`job ${id}: ${JSON.stringify(job)}`);
    await daemonIdle(r, scans);
    return { first: first.ms, reply };
  };
  const inProcess = async (): Promise<number> => {
    const img = smalls[next++ % 2]!;
    await settled(r.devs);
    await sleep(5);
    const armed = r.observer.arm();
    const done = r.flasher.flash({ image: img.bytes, targets: ['1'] });
    const first = await withTimeout(armed.first, 30_000, 'a data frame after flash()');
    const res = await done;
    if (!res.verdicts[0]?.ok) throw new Error(`flash: ${JSON.stringify(res.verdicts)}`);
    return first.ms;
  };
  await daemon(); // warm-up
  await inProcess();
  const firsts: number[] = [];
  const replies: number[] = [];
  const base: number[] = [];
  for (let i = 0; i < samples; i++) {
    const s = await daemon();
    firsts.push(s.first);
    replies.push(s.reply);
    base.push(await inProcess());
  }
  const p99 = percentile(firsts, 0.99);
  out({
    bench: 'jobs', measure: 'submit_to_first_data', samples, bytes: smalls[0]!.bytes.length, targets: 1, bitrate: 1_000_000,
    p50_ms: round(percentile(firsts, 0.5), 2), p99_ms: round(p99, 2), max_ms: round(Math.max(...firsts), 2),
    submit_reply_p50_ms: round(percentile(replies, 0.5), 2), submit_reply_p99_ms: round(percentile(replies, 0.99), 2),
    baseline_flash_p50_ms: round(percentile(base, 0.5), 2), baseline_flash_p99_ms: round(percentile(base, 0.99), 2), baseline_flash_max_ms: round(Math.max(...base), 2),
    ratio_p50: round(percentile(firsts, 0.5) / percentile(base, 0.5), 2),
    slowest_ms: [...firsts].sort((x, y) => y - x).slice(0, 3).map((x) => round(x, 1)), baseline_slowest_ms: [...base].sort((x, y) => y - x).slice(0, 3).map((x) => round(x, 1)),
    goal_ms: 50, pass: p99 <= 50,
  });
  goal('submit to first data frame, idle (p99)', p99, 50, 'ms');
}

// ================================================================================================

async function rigBench(): Promise<void> {
  const root = join(work, 'rig');
  mkdirSync(root, { recursive: true });
  const hub = await startVirtualHub('127.0.0.1', 0, { bitrate: 1_000_000 });
  cleanups.push({ what: 'virtual hub', run: () => hub.close() });
  const devs = await openBenchDevices(hub, join(root, 'devices'), NODES, CONFIRM_MS);
  cleanups.push({
    what: 'devices',
    run: async () => {
      for (const d of devs) {
        d.listener.stop();
        await d.dev.close();
        await d.ep.close();
      }
    },
  });
  const obsEp = hub.bus.attach('bench-observer');
  await obsEp.open();
  cleanups.push({ what: 'observer', run: () => obsEp.close() });
  const observer = new Observer(obsEp);

  // Images: two 64 KiB builds (part 1) as local files, two 2 KiB builds (part 2) in the daemon's images dir.
  const config = serveConfig(root, hub.port);
  const images = join(root, 'images');
  const local = join(root, 'local');
  mkdirSync(local);
  const bigs = [1, 2].map((seed) => {
    const bytes = sensorOfSize(300 + seed, 64 * 1024);
    const path = join(local, `sensor-${seed}.hxe`);
    writeFileSync(path, bytes);
    return { path, bytes };
  });
  const smalls = [1, 2].map((seed) => {
    const bytes = sensorOfSize(400 + seed, 2 * 1024);
    const name = `small-${seed}.hxe`;
    writeFileSync(join(images, name), bytes);
    return { name, bytes };
  });

  const serve = await startServe(config);
  children.add(serve.child);
  cleanups.push({
    what: 'serve',
    run: async () => {
      if (serve.child.exitCode === null && serve.child.signalCode === null) {
        serve.child.kill('SIGTERM');
        const gone = await withTimeout(serve.exited, 5_000, 'serve to stop').then(() => true, () => false);
        if (!gone) serve.child.kill('SIGKILL');
      }
      await serve.exited;
      children.delete(serve.child);
    },
  });
  const serving = serve.lines.find((l) => l['type'] === 'serving')!;
  const inv = (serving['inventory'] as Record<string, string[]> | undefined)?.[LINK] ?? [];
  if (inv.length !== NODES) throw new Error(`the daemon's start-up scan found ${inv.length} nodes, not ${NODES}: ${JSON.stringify(serving)}`);
  const stream = await EventStream.open(serve.control, TOKEN);
  cleanups.push({ what: 'event stream', run: () => stream.close() });
  const flasher = await CanFlasher.open('bench', `virtual:127.0.0.1:${hub.port}`);
  cleanups.push({ what: 'in-process flasher', run: () => flasher.close() });
  const r: Rig = { hub, devs, serve, stream, images, flasher, observer };

  // First install of both builds' app on every node (not measured): from here on every run is an update.
  const first = await flasher.flash({ image: sensorOfSize(300, 64 * 1024), targets: Array.from({ length: NODES }, (_, i) => String(i + 1)) });
  if (!first.verdicts.every((v) => v.ok && v.outcome === 'installed')) throw new Error(`first install: ${JSON.stringify(first.verdicts)}`);

  await cliComparison(r, bigs, 6);
  await inProcessComparison(r, bigs, 6);
  await firstDataFrame(r, smalls, 50);
  if (hub.stats.cutOff > 0) throw new Error(`the hub cut off ${hub.stats.cutOff} connection(s): ${JSON.stringify(hub.stats.cutOffBy)}`);
}

const ticks0 = machineTicks();
const load0 = loadavg()[0]!;
let failed = false;
try {
  await journalBench();
  await rigBench();
} catch (e) {
  failed = true;
  say(`bench/jobs failed: ${(e as Error).stack ?? String(e)}`);
} finally {
  await cleanup();
}
const ticks1 = machineTicks();
out({
  bench: 'jobs', measure: 'summary', ok: !failed, goals,
  passed: goals.filter((g) => g.pass).length, missed: goals.filter((g) => !g.pass).length,
  seconds: round((performance.now() - started) / 1000, 1),
  loadAverage1mStart: +load0.toFixed(2), loadAverage1m: +loadavg()[0]!.toFixed(2),
  stealPercent: +((100 * (ticks1.steal - ticks0.steal)) / Math.max(1, ticks1.total - ticks0.total)).toFixed(1),
  leftover: existsSync(work) ? work : null,
});
if (failed) process.exitCode = 1;
