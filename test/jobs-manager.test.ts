/**
 * The job manager (src/gateway/jobs/manager.ts, docs/jobs.md) against a small in-test Flasher that
 * honours its AbortSignal and reports progress. Nothing here waits on time: every ordering claim is
 * made from the events the manager emits and the calls the fake sees.
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { buildImage } from '../src/hxe/index.js';
import { JOURNAL_FILE, type JobsFs } from '../src/gateway/jobs/journal.js';
import { JobManager, type JobManagerOptions } from '../src/gateway/jobs/manager.js';
import { deriveJobState, type JobEvent, type JobRecord, type JobSubmit, type TargetState } from '../src/gateway/jobs/types.js';
import type { FlashRequest, FlashResult, Flasher, TargetVerdict } from '../src/link/flasher.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = fs.mkdtempSync(join(tmpdir(), 'hsx-jobs-'));
  dirs.push(d);
  return d;
};
test.after.always(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function image(seed: number, codeBytes = 64): Uint8Array {
  const code = new Uint8Array(codeBytes);
  for (let i = 0; i < code.length; i++) code[i] = (seed * 31 + i * 7) & 0xff;
  const r = buildImage({ code, appName: 'job_app', allowMultipleInstances: true });
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}

type VerdictFor = (target: string) => Omit<TargetVerdict, 'target'> & { ok: boolean };
const installed: VerdictFor = () => ({ ok: true, outcome: 'installed', from: null, to: 'cafe', confirmPending: false });
const current: VerdictFor = () => ({ ok: true, outcome: 'current', from: 'cafe', to: 'cafe', confirmPending: false });
const failing = (code: string, reason = 'no_answer'): VerdictFor => () => ({ ok: false, code, where: 'data', reason, message: `${code} ${reason}` });

interface Hold {
  release: () => void;
}

/** A fake master: records every flash() call, reports progress, can hold until released or aborted. */
class FakeFlasher implements Flasher {
  readonly kind = 'can' as const;
  calls: Array<{ targets: string[]; size: number; options: unknown }> = [];
  hold = false;
  /** Targets whose verdict arrives (in a progress callback) before the hold. */
  early = new Set<string>();
  private holds: Hold[] = [];
  private holdWaiters: Array<() => void> = [];
  constructor(
    readonly link: string,
    public verdict: VerdictFor = installed,
    public throwWith: Error | null = null,
  ) {}

  checkTarget(t: string): string | null {
    return /^\d+$/.test(t) && Number(t) >= 1 && Number(t) <= 127 ? null : 'a CAN node id is 1..127';
  }

  /** Resolves when a call is being held (now or later). */
  held(): Promise<void> {
    if (this.holds.length > 0) return Promise.resolve();
    return new Promise((res) => this.holdWaiters.push(res));
  }

  release(): void {
    this.holds.shift()?.release();
  }

  async flash(req: FlashRequest): Promise<FlashResult> {
    this.calls.push({ targets: [...req.targets], size: req.image.length, options: req.options });
    if (this.throwWith) throw this.throwWith;
    const total = req.image.length;
    const verdicts: TargetVerdict[] = [];
    const vOf = (t: string): TargetVerdict => ({ target: t, ...this.verdict(t) }) as TargetVerdict;
    const progress = (acked: number): void =>
      req.onProgress?.({
        phase: 'data',
        sentBytes: acked,
        totalBytes: total,
        targets: req.targets.map((t) => ({ target: t, phase: 'data', ackedBytes: acked, totalBytes: total })),
        verdicts: [...verdicts],
      });
    progress(total >> 1);
    for (const t of req.targets) if (this.early.has(t)) verdicts.push(vOf(t));
    if (verdicts.length > 0) progress(total >> 1);
    if (this.hold) {
      await new Promise<void>((res) => {
        const h = { release: res };
        this.holds.push(h);
        req.signal?.addEventListener('abort', () => res(), { once: true });
        for (const w of this.holdWaiters.splice(0)) w();
      });
    }
    for (const t of req.targets) {
      if (verdicts.some((v) => v.target === t)) continue;
      verdicts.push(req.signal?.aborted ? { target: t, ok: false, code: 'ECANCELED', where: 'data', reason: 'canceled', message: 'aborted' } : vOf(t));
    }
    progress(total);
    return { verdicts: req.targets.map((t) => verdicts.find((v) => v.target === t)!), stats: {}, elapsedMs: 1 };
  }

  async close(): Promise<void> {}
}

/** Records every event; `until` resolves with the first (past or future) event matching. */
function recorder(m: JobManager) {
  const events: JobEvent[] = [];
  const waiters: Array<{ pred: (e: JobEvent) => boolean; res: (e: JobEvent) => void }> = [];
  m.watch((e) => {
    events.push(e);
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i]!.pred(e)) {
        waiters[i]!.res(e);
        waiters.splice(i, 1);
      }
    }
  });
  return {
    events,
    until(pred: (e: JobEvent) => boolean): Promise<JobEvent> {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((res) => waiters.push({ pred, res }));
    },
    types(id: string): string[] {
      return events.filter((e) => e.job.id === id).map((e) => e.type);
    },
  };
}

const by = { name: 'tester', role: 'admin', via: 'control' as const };
const ended = (id: string) => (e: JobEvent) => e.job.id === id && (e.type === 'job.finished' || e.type === 'job.canceled');
const started = (id: string) => (e: JobEvent) => e.job.id === id && e.type === 'job.started';

function sub(link: string, targets: string[] | undefined, seed = 1, extra: Partial<JobSubmit> = {}): JobSubmit {
  return { link, ...(targets ? { targets } : {}), image: { bytes: image(seed), name: `app-${seed}.hxe` }, by, ...extra };
}

async function submitOk(m: JobManager, s: JobSubmit): Promise<JobRecord> {
  const r = await m.submit(s);
  if (!r.ok) throw new Error(`submit refused: ${JSON.stringify(r.error)}`);
  return r.value;
}

async function open(dir: string, flashers: FakeFlasher[], extra: Partial<JobManagerOptions> = {}): Promise<JobManager> {
  return JobManager.open({ dir, flashers: new Map(flashers.map((f) => [f.link, f])), ...extra });
}

const imageFiles = (dir: string): string[] => fs.readdirSync(join(dir, 'images')).sort();

// ---- states -------------------------------------------------------------------------------------

test('deriveJobState: QUEUED, IN_PROGRESS, the worst terminal state, SKIPPED only when all skipped', (t) => {
  const d = (...s: TargetState[]) => deriveJobState(s.map((state) => ({ state })));
  t.is(d('QUEUED', 'QUEUED'), 'QUEUED');
  t.is(d('IN_PROGRESS', 'QUEUED'), 'IN_PROGRESS');
  t.is(d('SUCCEEDED', 'IN_PROGRESS'), 'IN_PROGRESS');
  t.is(d('SUCCEEDED', 'QUEUED'), 'IN_PROGRESS');
  t.is(d('SUCCEEDED', 'SKIPPED'), 'SUCCEEDED');
  t.is(d('SKIPPED', 'SKIPPED'), 'SKIPPED');
  t.is(d('SUCCEEDED', 'CANCELED'), 'CANCELED');
  t.is(d('CANCELED', 'TIMED_OUT'), 'TIMED_OUT');
  t.is(d('TIMED_OUT', 'FAILED', 'SUCCEEDED'), 'FAILED');
  t.is(d(), 'FAILED');
});

test('submit → run → SUCCEEDED: events in order, one flash() with every target, the record journalled', async (t) => {
  const dir = tmp();
  const can = new FakeFlasher('can0');
  const m = await open(dir, [can]);
  const rec = recorder(m);
  const job = await submitOk(m, sub('can0', ['7', '8', '9'], 1, { client_token: 'tok-1', options: { window: 8, force: true } }));
  t.is(job.id, 'j-1');
  t.is(job.state, 'QUEUED');
  t.is(job.client_token, 'tok-1');
  t.is(job.image.app_name, 'job_app');
  t.is(job.image.name, 'app-1.hxe');
  t.true(Object.isFrozen(job) && Object.isFrozen(job.targets[0]));
  const end = await rec.until(ended('j-1'));
  t.is(end.type, 'job.finished');
  const done = m.get('j-1')!;
  t.is(done.state, 'SUCCEEDED');
  t.deepEqual(done.targets.map((x) => [x.target, x.state, x.outcome, x.acked_bytes]), [
    ['7', 'SUCCEEDED', 'installed', job.image.size],
    ['8', 'SUCCEEDED', 'installed', job.image.size],
    ['9', 'SUCCEEDED', 'installed', job.image.size],
  ]);
  t.is(done.targets[0]!.to, 'cafe');
  t.not(done.started_ts, null);
  t.not(done.finished_ts, null);
  t.is(done.reason, null);
  t.true(done.revision > job.revision);
  t.is(can.calls.length, 1, 'one broadcast, not a loop');
  t.deepEqual(can.calls[0]!.targets, ['7', '8', '9']);
  t.deepEqual(can.calls[0]!.options, { window: 8, force: true });
  const types = rec.types('j-1');
  t.is(types[0], 'job.submitted');
  t.is(types[1], 'job.started');
  t.true(types.includes('job.progress'));
  t.is(types.filter((x) => x === 'job.target').length, 3);
  t.is(types[types.length - 1], 'job.finished');
  const p = rec.events.find((e) => e.type === 'job.progress');
  t.like(p, { target: '7', total_bytes: job.image.size });
  await m.close();
  const again = await open(dir, [new FakeFlasher('can0')]);
  t.deepEqual(again.get('j-1'), done);
  t.deepEqual(again.recovery.interrupted, []);
  t.deepEqual(again.recovery.requeued, []);
  await again.close();
});

test('a target that already runs the image is SKIPPED (outcome current); all skipped → the job is SKIPPED', async (t) => {
  const can = new FakeFlasher('can0', current);
  const m = await open(tmp(), [can]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7', '8']));
  await rec.until(ended('j-1'));
  const j = m.get('j-1')!;
  t.is(j.state, 'SKIPPED');
  t.deepEqual(j.targets.map((x) => [x.state, x.outcome]), [['SKIPPED', 'current'], ['SKIPPED', 'current']]);
  can.verdict = (target) => (target === '7' ? current(target) : installed(target));
  await submitOk(m, sub('can0', ['7', '8']));
  await rec.until(ended('j-2'));
  t.is(m.get('j-2')!.state, 'SUCCEEDED', 'SKIPPED + SUCCEEDED is SUCCEEDED');
  await m.close();
});

test('verdict mapping: ETIMEDOUT → TIMED_OUT, other codes → FAILED with the error; the job takes the worst', async (t) => {
  const can = new FakeFlasher('can0', (target) =>
    target === '7' ? failing('ETIMEDOUT')(target) : target === '8' ? failing('EBADMSG', 'crc_mismatch')(target) : installed(target));
  const m = await open(tmp(), [can]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7', '8', '9']));
  await rec.until(ended('j-1'));
  const j = m.get('j-1')!;
  t.is(j.state, 'FAILED');
  t.deepEqual(j.targets.map((x) => x.state), ['TIMED_OUT', 'FAILED', 'SUCCEEDED']);
  t.deepEqual(j.targets[1]!.error, { code: 'EBADMSG', where: 'data', reason: 'crc_mismatch', message: 'EBADMSG crc_mismatch' });
  t.is(j.targets[0]!.error!.code, 'ETIMEDOUT');
  t.is(j.reason, null, 'two different reasons: none is the job’s');
  can.verdict = failing('ETIMEDOUT');
  await submitOk(m, sub('can0', ['7', '8']));
  await rec.until(ended('j-2'));
  t.is(m.get('j-2')!.state, 'TIMED_OUT');
  t.is(m.get('j-2')!.reason, 'no_answer');
  await m.close();
});

test('a flasher that rejects fails every target with flasher_error (EINVAL for a RangeError)', async (t) => {
  const can = new FakeFlasher('can0', installed, new RangeError('targets: node 7 is not addressable'));
  const m = await open(tmp(), [can]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7']));
  await rec.until(ended('j-1'));
  const j = m.get('j-1')!;
  t.is(j.state, 'FAILED');
  t.is(j.reason, 'flasher_error');
  t.like(j.targets[0]!.error, { code: 'EINVAL', where: 'gateway', reason: 'flasher_error' });
  await m.close();
});

// ---- scheduling ---------------------------------------------------------------------------------

test('jobs on two links run in parallel: both start before either is released', async (t) => {
  const a = new FakeFlasher('can0');
  const b = new FakeFlasher('ttyUSB0');
  a.hold = b.hold = true;
  const m = await open(tmp(), [a, b]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7']));
  await submitOk(m, sub('ttyUSB0', ['1']));
  await rec.until(started('j-1'));
  await rec.until(started('j-2'));
  await Promise.all([a.held(), b.held()]);
  t.is(rec.events.filter((e) => e.type === 'job.finished').length, 0, 'neither finished while both were running');
  t.is(m.get('j-1')!.state, 'IN_PROGRESS');
  t.is(m.get('j-2')!.state, 'IN_PROGRESS');
  a.release();
  b.release();
  await rec.until(ended('j-1'));
  await rec.until(ended('j-2'));
  t.is(m.get('j-1')!.state, 'SUCCEEDED');
  t.is(m.get('j-2')!.state, 'SUCCEEDED');
  await m.close();
});

test('one link runs one transfer at a time: the second job starts only after the first finished', async (t) => {
  const a = new FakeFlasher('can0');
  a.hold = true;
  const m = await open(tmp(), [a]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7'], 1));
  await submitOk(m, sub('can0', ['8'], 2));
  await rec.until(started('j-1'));
  await a.held();
  t.is(a.calls.length, 1);
  t.is(m.get('j-2')!.state, 'QUEUED');
  a.release();
  await rec.until(started('j-2'));
  await a.held();
  const order = rec.events.filter((e) => e.type === 'job.started' || e.type === 'job.finished').map((e) => `${e.type}:${e.job.id}`);
  t.deepEqual(order, ['job.started:j-1', 'job.finished:j-1', 'job.started:j-2']);
  a.release();
  await rec.until(ended('j-2'));
  t.is(a.calls.length, 2);
  await m.close();
});

test('200 jobs queued on one link run in submit order, each exactly once, none lost', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a]);
  const rec = recorder(m);
  const ids: string[] = [];
  for (let i = 0; i < 200; i++) ids.push((await submitOk(m, sub('can0', [String((i % 100) + 1)], i % 5))).id);
  t.deepEqual(ids, Array.from({ length: 200 }, (_, i) => `j-${i + 1}`));
  await rec.until(ended('j-200'));
  t.is(a.calls.length, 200);
  t.deepEqual(a.calls.map((c) => c.targets[0]), Array.from({ length: 200 }, (_, i) => String((i % 100) + 1)));
  const startOrder = rec.events.filter((e) => e.type === 'job.started').map((e) => e.job.id);
  t.deepEqual(startOrder, ids);
  t.is(rec.events.filter((e) => e.type === 'job.finished').length, 200);
  t.is(m.list({ limit: 1000 }).length, 200);
  t.is(m.list({ state: 'SUCCEEDED', limit: 1000 }).length, 200);
  t.deepEqual(m.list({ limit: 3 }).map((j) => j.id), ['j-200', 'j-199', 'j-198'], 'newest first');
  t.is(imageFiles(dir).length, 5, 'five distinct images stored once each');
  await m.close();
});

// ---- cancel -------------------------------------------------------------------------------------

test('cancel a queued job: every target CANCELED at once (journalled) and it never runs', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  a.hold = true;
  const m = await open(dir, [a]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7']));
  await submitOk(m, sub('can0', ['8', '9'], 2));
  await rec.until(started('j-1'));
  const c = await m.cancel('j-2', by);
  t.true(c.ok);
  const j2 = m.get('j-2')!;
  t.is(j2.state, 'CANCELED');
  t.is(j2.reason, 'canceled');
  t.deepEqual(j2.targets.map((x) => [x.state, x.error?.code]), [['CANCELED', 'ECANCELED'], ['CANCELED', 'ECANCELED']]);
  t.is(rec.types('j-2').at(-1), 'job.canceled');
  const again = await m.cancel('j-2', by);
  t.false(again.ok);
  if (!again.ok) t.like(again.error, { code: 'EBUSY', reason: 'already_finished' });
  const none = await m.cancel('j-99', by);
  t.false(none.ok);
  if (!none.ok) t.like(none.error, { code: 'ESRCH', reason: 'no_such_job', field: 'id' });
  a.release();
  await rec.until(ended('j-1'));
  t.is(a.calls.length, 1, 'the canceled job never reached the link');
  // journalled: a copy of the state dir opened now shows it canceled
  const copy = tmp();
  fs.cpSync(dir, copy, { recursive: true });
  const m2 = await open(copy, [new FakeFlasher('can0')]);
  t.is(m2.get('j-2')!.state, 'CANCELED');
  await m2.close();
  await m.close();
});

test('cancel a running job: its transfer is aborted, targets with verdicts keep them, the rest CANCELED', async (t) => {
  const a = new FakeFlasher('can0');
  a.hold = true;
  a.early.add('7');
  const m = await open(tmp(), [a]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7', '8', '9']));
  await rec.until((e) => e.type === 'job.target' && e.target.target === '7');
  await a.held();
  t.is(m.get('j-1')!.state, 'IN_PROGRESS', 'one verdict in, two targets still running');
  const c = await m.cancel('j-1', { name: 'ops', role: 'admin', via: 'mqtt' });
  t.true(c.ok);
  const end = await rec.until(ended('j-1'));
  t.is(end.type, 'job.canceled');
  const j = m.get('j-1')!;
  t.deepEqual(j.targets.map((x) => x.state), ['SUCCEEDED', 'CANCELED', 'CANCELED']);
  t.is(j.state, 'CANCELED');
  t.is(j.reason, 'canceled');
  await m.close();
});

// ---- restart ------------------------------------------------------------------------------------

test('close mid-job, reopen: the running job is FAILED interrupted, the queued one runs once, ids continue', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  a.hold = true;
  const m = await open(dir, [a]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7', '8']));
  await submitOk(m, sub('can0', ['9'], 2));
  await rec.until(started('j-1'));
  await a.held();
  await m.close();
  const closed = await m.submit(sub('can0', ['7']));
  t.false(closed.ok);
  if (!closed.ok) t.is(closed.error.reason, 'closed');

  const b = new FakeFlasher('can0');
  const m2 = await open(dir, [b]);
  const rec2 = recorder(m2);
  t.deepEqual(m2.recovery.interrupted, ['j-1']);
  t.deepEqual(m2.recovery.requeued, ['j-2']);
  const j1 = m2.get('j-1')!;
  t.is(j1.state, 'FAILED');
  t.is(j1.reason, 'interrupted');
  t.deepEqual(j1.targets.map((x) => [x.state, x.error]), [
    ['FAILED', { code: 'EINTR', where: 'gateway', reason: 'interrupted', message: 'the gateway stopped while this target was being flashed' }],
    ['FAILED', { code: 'EINTR', where: 'gateway', reason: 'interrupted', message: 'the gateway stopped while this target was being flashed' }],
  ]);
  await rec2.until(ended('j-2'));
  t.is(m2.get('j-2')!.state, 'SUCCEEDED');
  t.deepEqual(b.calls.map((c) => c.targets), [['9']], 'the queued job ran once; the interrupted one not again');
  t.is((await submitOk(m2, sub('can0', ['7']))).id, 'j-3');
  await rec2.until(ended('j-3'));
  await m2.close();

  const c = new FakeFlasher('can0');
  const m3 = await open(dir, [c]);
  t.deepEqual(m3.recovery.interrupted, []);
  t.deepEqual(m3.recovery.requeued, []);
  t.deepEqual(m3.list().map((j) => [j.id, j.state]), [['j-3', 'SUCCEEDED'], ['j-2', 'SUCCEEDED'], ['j-1', 'FAILED']]);
  await new Promise((res) => setImmediate(res));
  t.is(c.calls.length, 0, 'nothing runs twice');
  await m3.close();
});

test('a crash mid-job (a second manager opens a copy of the state dir taken while the first runs)', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  a.hold = true;
  a.early.add('7');
  const m = await open(dir, [a]);
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7', '8']));
  await submitOk(m, sub('can0', ['9'], 2));
  await rec.until((e) => e.type === 'job.target' && e.target.target === '7');
  const copy = tmp();
  fs.cpSync(dir, copy, { recursive: true });
  const b = new FakeFlasher('can0');
  const m2 = await open(copy, [b]);
  const rec2 = recorder(m2);
  const j1 = m2.get('j-1')!;
  t.deepEqual(j1.targets.map((x) => [x.target, x.state, x.error?.reason ?? null]), [['7', 'SUCCEEDED', null], ['8', 'FAILED', 'interrupted']]);
  t.is(j1.state, 'FAILED');
  t.is(j1.reason, 'interrupted');
  await rec2.until(ended('j-2'));
  t.deepEqual(b.calls.map((c) => c.targets), [['9']]);
  t.is(m2.list().length, 2, 'no job lost');
  await m2.close();
  a.hold = false;
  a.release();
  await rec.until(ended('j-2'));
  t.deepEqual(a.calls.map((c) => c.targets), [['7', '8'], ['9']]);
  await m.close();
});

test('SIGKILL mid-job (a real child process): on reopen the job is FAILED interrupted and nothing is lost', async (t) => {
  const dir = tmp();
  const repo = resolve(import.meta.dirname, '..');
  const child = join(tmp(), 'child.mjs');
  const url = (p: string) => pathToFileURL(join(repo, p)).href;
  fs.writeFileSync(
    child,
    `import { JobManager } from ${JSON.stringify(url('src/gateway/jobs/manager.ts'))};
import { buildImage } from ${JSON.stringify(url('src/hxe/index.ts'))};
const dir = process.argv[2];
class Slow {
  link = 'can0'; kind = 'can';
  checkTarget() { return null; }
  async flash(req) {
    let acked = 0;
    const total = req.image.length;
    setInterval(() => {
      acked = Math.min(total, acked + 1);
      req.onProgress?.({ phase: 'data', sentBytes: acked, totalBytes: total, verdicts: [],
        targets: req.targets.map((t) => ({ target: t, phase: 'data', ackedBytes: acked, totalBytes: total })) });
    }, 5);
    await new Promise(() => {});
  }
  async close() {}
}
const img = (seed) => buildImage({ code: new Uint8Array(64).fill(seed), appName: 'job_app', allowMultipleInstances: true }).value;
const m = await JobManager.open({ dir, flashers: new Map([['can0', new Slow()]]) });
m.watch((e) => { if (e.type === 'job.started') process.stdout.write('STARTED ' + e.job.id + '\\n'); });
const by = { name: 'child', role: 'admin', via: 'control' };
const a = await m.submit({ link: 'can0', targets: ['7', '8'], image: { bytes: img(1), name: 'a.hxe' }, by });
const b = await m.submit({ link: 'can0', targets: ['9'], image: { bytes: img(2), name: 'b.hxe' }, by });
process.stdout.write('SUBMITTED ' + a.value.id + ' ' + b.value.id + '\\n');
setInterval(() => {}, 1000);
`,
  );
  const p = spawn(process.execPath, ['--import=tsx', child, dir], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stderr.on('data', (d) => (err += d));
  const exited = new Promise<NodeJS.Signals | null>((res) => p.on('exit', (_code, sig) => res(sig)));
  await new Promise<void>((res, rej) => {
    p.stdout.on('data', (d) => {
      out += d;
      if (out.includes('SUBMITTED') && out.includes('STARTED j-1')) res();
    });
    p.on('exit', () => rej(new Error(`child exited early: ${out}\n${err}`)));
  });
  p.kill('SIGKILL');
  t.is(await exited, 'SIGKILL');
  t.true(out.includes('SUBMITTED j-1 j-2'));

  const b = new FakeFlasher('can0');
  const m = await open(dir, [b]);
  const rec = recorder(m);
  t.deepEqual(m.recovery.interrupted, ['j-1']);
  t.deepEqual(m.recovery.requeued, ['j-2']);
  const j1 = m.get('j-1')!;
  t.is(j1.state, 'FAILED');
  t.is(j1.reason, 'interrupted');
  t.true(j1.targets.every((x) => x.state === 'FAILED' && x.error?.reason === 'interrupted'));
  await rec.until(ended('j-2'));
  t.is(m.get('j-2')!.state, 'SUCCEEDED');
  t.deepEqual(b.calls.map((c) => c.targets), [['9']]);
  t.is((await submitOk(m, sub('can0', ['7']))).id, 'j-3');
  await m.close();
});

// ---- retention ----------------------------------------------------------------------------------

test('retention by count: only the newest max_finished finished jobs stay (and their images), across a reopen', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a], { maxFinished: 3 });
  const rec = recorder(m);
  for (let i = 1; i <= 5; i++) {
    await submitOk(m, sub('can0', ['7'], i));
    await rec.until(ended(`j-${i}`));
  }
  t.deepEqual(m.list().map((j) => j.id), ['j-5', 'j-4', 'j-3']);
  t.is(m.get('j-1'), undefined);
  t.is(imageFiles(dir).length, 3, 'the dropped jobs’ images are deleted');
  await m.close();
  const m2 = await open(dir, [new FakeFlasher('can0')], { maxFinished: 3 });
  t.deepEqual(m2.list().map((j) => j.id), ['j-5', 'j-4', 'j-3']);
  t.is((await submitOk(m2, sub('can0', ['7'], 9))).id, 'j-6', 'ids of dropped jobs are not reused');
  await m2.close();
});

test('retention by age (injected clock): finished jobs older than max_age_s go; queued and running ones stay', async (t) => {
  const dir = tmp();
  let now = 1_700_000_000_000;
  const clock = { now: () => now };
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a], { clock, maxAgeS: 60 });
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7'], 1));
  await rec.until(ended('j-1'));
  await submitOk(m, sub('can0', ['7'], 2));
  await rec.until(ended('j-2'));
  t.is(m.get('j-1')!.finished_ts, now / 1000);
  now += 30_000;
  t.is(m.prune(), 0);
  a.hold = true;
  await submitOk(m, sub('can0', ['7'], 3));
  await rec.until(started('j-3'));
  now += 31_000;
  t.is(m.prune(), 2);
  t.deepEqual(m.list().map((j) => j.id), ['j-3']);
  t.deepEqual(imageFiles(dir).length, 1);
  a.release();
  await rec.until(ended('j-3'));
  await m.close();
  now += 61_000;
  const m2 = await open(dir, [new FakeFlasher('can0')], { clock, maxAgeS: 60 });
  t.true(m2.recovery.pruned >= 1);
  t.deepEqual(m2.list(), []);
  t.deepEqual(imageFiles(dir), []);
  t.is((await submitOk(m2, sub('can0', ['7']))).id, 'j-4');
  await m2.close();
});

test('the journal is compacted as it grows: stale snapshots and dropped jobs are rewritten away', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a], { maxFinished: 5 });
  const rec = recorder(m);
  for (let i = 1; i <= 60; i++) {
    await submitOk(m, sub('can0', ['7', '8'], i));
    await rec.until(ended(`j-${i}`));
  }
  const lines = fs.readFileSync(join(dir, JOURNAL_FILE), 'utf8').split('\n').length - 1;
  t.true(lines <= 2 * 5 + 64 + 4, `journal has ${lines} lines`);
  await m.close();
  const m2 = await open(dir, [new FakeFlasher('can0')], { maxFinished: 5 });
  t.deepEqual(m2.list().map((j) => j.id), ['j-60', 'j-59', 'j-58', 'j-57', 'j-56']);
  t.deepEqual(m2.recovery.journal.damaged, []);
  await m2.close();
});

// ---- damage -------------------------------------------------------------------------------------

test('a torn last line and a bit-flipped middle line are reported at open; the rest is replayed', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a]);
  const rec = recorder(m);
  for (let i = 1; i <= 3; i++) {
    await submitOk(m, sub('can0', ['7'], i));
    await rec.until(ended(`j-${i}`));
  }
  await m.close();
  const path = join(dir, JOURNAL_FILE);
  const buf = fs.readFileSync(path);
  const lines = buf.toString('latin1').split('\n');
  t.true(lines.length > 6);
  // flip a bit inside line 2 (j-1's start snapshot; later snapshots of j-1 follow)
  const at = lines[0]!.length + 1 + 50;
  buf[at] = buf[at]! ^ 0x10;
  fs.writeFileSync(path, Buffer.concat([buf, Buffer.from('{"c":"0000')]));
  const m2 = await open(dir, [new FakeFlasher('can0')]);
  const r = m2.recovery.journal;
  t.is(r.torn, 1);
  t.is(r.damaged.length, 1);
  t.is(r.damaged[0]!.line, 2);
  t.true(m2.recovery.compacted, 'the damaged journal is rewritten clean');
  t.deepEqual(m2.list().map((j) => [j.id, j.state]), [['j-3', 'SUCCEEDED'], ['j-2', 'SUCCEEDED'], ['j-1', 'SUCCEEDED']]);
  await m2.close();
  const m3 = await open(dir, [new FakeFlasher('can0')]);
  t.deepEqual(m3.recovery.journal.damaged, []);
  t.is(m3.recovery.journal.torn, 0);
  t.is(m3.list().length, 3);
  await m3.close();
});

// ---- refusals -----------------------------------------------------------------------------------

test('bad submits are refused with the code and the field, and nothing is stored', async (t) => {
  const dir = tmp();
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a], { maxImageBytes: 4096, lastScan: (link) => (link === 'can0' ? null : []) });
  const refusal = async (s: JobSubmit) => {
    const r = await m.submit(s);
    if (r.ok) throw new Error('accepted');
    return r.error;
  };
  t.like(await refusal(sub('can9', ['7'])), { code: 'ENOENT', reason: 'no_such_link', field: 'link' });
  t.like(await refusal(sub('can0', ['7', '300'])), { code: 'EINVAL', reason: 'bad_target', field: 'targets' });
  t.like(await refusal(sub('can0', ['7', '7'])), { code: 'EINVAL', reason: 'duplicate_target', field: 'targets' });
  t.like(await refusal(sub('can0', [])), { code: 'EINVAL', reason: 'no_scan', field: 'targets' });
  t.like(await refusal(sub('can0', undefined)), { code: 'EINVAL', reason: 'no_scan', field: 'targets' });
  t.like(await refusal(sub('can0', ['7'], 1, { options: { windw: 4 } as never })), { code: 'EINVAL', reason: 'unknown_option', field: 'options.windw' });
  t.like(await refusal(sub('can0', ['7'], 1, { options: { window: 'four' } as never })), { code: 'EINVAL', reason: 'bad_option', field: 'options.window' });
  t.like(await refusal(sub('can0', ['7'], 1, { options: { session: 256 } })), { code: 'EINVAL', reason: 'bad_option', field: 'options.session' });
  t.like(await refusal(sub('can0', ['7'], 1, { options: [] as never })), { code: 'EINVAL', reason: 'bad_options', field: 'options' });
  t.like(await refusal({ ...sub('can0', ['7']), image: { bytes: new Uint8Array(0), name: 'e.hxe' } }), { code: 'EINVAL', reason: 'empty_image', field: 'image' });
  t.like(await refusal({ ...sub('can0', ['7']), image: { bytes: image(1, 8192), name: 'big.hxe' } }), { code: 'ENOSPC', reason: 'image_too_large', field: 'image' });
  t.like(await refusal({ ...sub('can0', ['7']), image: { bytes: new Uint8Array(200).fill(7), name: 'junk.hxe' } }), { code: 'EINVAL', field: 'image' });
  t.like(m.checkImageSize(1 << 30), { code: 'ENOSPC', reason: 'image_too_large' }, 'the size check callers make before allocating');
  t.is(m.checkImageSize(100), null);
  t.deepEqual(m.list(), []);
  t.deepEqual(imageFiles(dir), []);
  t.is(a.calls.length, 0);
  await m.close();
});

test('no targets given: the link’s last scan is used; an empty scan is refused', async (t) => {
  const a = new FakeFlasher('can0');
  const b = new FakeFlasher('can1');
  const m = await open(tmp(), [a, b], { lastScan: (link) => (link === 'can0' ? ['3', '5'] : []) });
  const rec = recorder(m);
  const j = await submitOk(m, sub('can0', undefined));
  t.deepEqual(j.targets.map((x) => x.target), ['3', '5']);
  await rec.until(ended(j.id));
  t.deepEqual(a.calls[0]!.targets, ['3', '5']);
  const r = await m.submit(sub('can1', []));
  t.false(r.ok);
  if (!r.ok) t.like(r.error, { code: 'EINVAL', reason: 'no_targets', field: 'targets' });
  t.deepEqual(m.links(), ['can0', 'can1']);
  await m.close();
});

// ---- an unwritable state dir --------------------------------------------------------------------

/** Asserts a refused submit left nothing: no record, no image, the journal unchanged. */
async function assertNothingStored(t: import('ava').ExecutionContext, m: JobManager, dir: string, before: { jobs: number; journal: Buffer; images: string[] }) {
  t.is(m.list({ limit: 1000 }).length, before.jobs);
  t.deepEqual(fs.readFileSync(join(dir, JOURNAL_FILE)), before.journal);
  t.deepEqual(imageFiles(dir), before.images);
}
const snapshot = (m: JobManager, dir: string) => ({ jobs: m.list({ limit: 1000 }).length, journal: fs.readFileSync(join(dir, JOURNAL_FILE)), images: imageFiles(dir) });

test('journal fdatasync fails (injected EIO): the submit is refused journal_unwritable and nothing stays', async (t) => {
  const dir = tmp();
  let fail = false;
  const faulty: JobsFs = {
    ...fs,
    fdatasyncSync: ((fd: number) => {
      if (fail) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      fs.fdatasyncSync(fd);
    }) as typeof fs.fdatasyncSync,
  };
  const a = new FakeFlasher('can0');
  const m = await open(dir, [a], { fs: faulty });
  const rec = recorder(m);
  await submitOk(m, sub('can0', ['7'], 1));
  await rec.until(ended('j-1'));
  const before = snapshot(m, dir);
  fail = true;
  const r = await m.submit(sub('can0', ['7'], 2));
  t.false(r.ok);
  if (!r.ok) t.like(r.error, { code: 'EIO', reason: 'journal_unwritable' });
  await assertNothingStored(t, m, dir, before);
  t.is(rec.events.filter((e) => e.type === 'job.submitted').length, 1, 'no one was told of it');
  fail = false;
  t.is((await submitOk(m, sub('can0', ['7'], 2))).id, 'j-3');
  await m.close();
});

test('the images dir replaced by a file (a real failure even as root): refused EIO, nothing stored', async (t) => {
  const dir = tmp();
  const m = await open(dir, [new FakeFlasher('can0')]);
  const journalBefore = fs.readFileSync(join(dir, JOURNAL_FILE));
  fs.rmSync(join(dir, 'images'), { recursive: true });
  fs.writeFileSync(join(dir, 'images'), 'not a directory');
  const r = await m.submit(sub('can0', ['7']));
  t.false(r.ok);
  if (!r.ok) {
    t.like(r.error, { code: 'EIO', reason: 'journal_unwritable' });
    t.regex(r.error.message, /ENOTDIR/);
  }
  t.deepEqual(m.list(), []);
  t.deepEqual(fs.readFileSync(join(dir, JOURNAL_FILE)), journalBefore);
  await m.close();
});

function tryMount(dir: string, args: string[]): boolean {
  try {
    execFileSync('mount', [...args, dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test.serial('a real full disk, then a real read-only file system (tmpfs): ENOSPC, EROFS, never accepted-then-forgotten', async (t) => {
  const mnt = tmp();
  if (!tryMount(mnt, ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs'])) {
    t.log('cannot mount tmpfs here; the injected-fs and file-for-dir tests cover the refusal');
    t.pass();
    return;
  }
  const dir = join(mnt, 'state');
  const managers: JobManager[] = [];
  try {
    const a = new FakeFlasher('can0');
    const m = await open(dir, [a]);
    managers.push(m);
    const rec = recorder(m);
    await submitOk(m, sub('can0', ['7'], 1));
    await rec.until(ended('j-1'));
    const filler = fs.openSync(join(mnt, 'filler'), 'w');
    try {
      for (;;) fs.writeSync(filler, Buffer.alloc(4096, 1));
    } catch (e) {
      t.is((e as { code?: string }).code, 'ENOSPC');
    }
    fs.closeSync(filler);
    const before = snapshot(m, dir);
    const full = await m.submit(sub('can0', ['7'], 2));
    t.false(full.ok);
    if (!full.ok) t.like(full.error, { code: 'ENOSPC', reason: 'journal_unwritable' });
    await assertNothingStored(t, m, dir, before);
    await m.close();

    // Read-only (remounting needs no file open for writing, so between two managers).
    fs.rmSync(join(mnt, 'filler'));
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    const ro = await open(dir, [new FakeFlasher('can0')]);
    managers.push(ro);
    t.regex(ro.recovery.write_error ?? '', /EROFS/);
    t.deepEqual(ro.list().map((j) => j.id), ['j-1'], 'a read-only journal still lists every job');
    const refused = await ro.submit(sub('can0', ['7'], 3));
    t.false(refused.ok);
    if (!refused.ok) t.like(refused.error, { code: 'EROFS', reason: 'journal_unwritable' });
    await assertNothingStored(t, ro, dir, before);

    // Writable again: the same manager takes the next submit without a restart.
    execFileSync('mount', ['-o', 'remount,rw', mnt]);
    const rec2 = recorder(ro);
    const j = await submitOk(ro, sub('can0', ['7'], 3));
    await rec2.until(ended(j.id));
    await ro.close();
    const m3 = await open(dir, [new FakeFlasher('can0')]);
    managers.push(m3);
    t.deepEqual(m3.list().map((x) => [x.id, x.state]), [[j.id, 'SUCCEEDED'], ['j-1', 'SUCCEEDED']]);
    t.deepEqual(m3.recovery.journal.damaged, []);
  } finally {
    for (const m of managers) await m.close();
    execFileSync('umount', [mnt]);
  }
});
