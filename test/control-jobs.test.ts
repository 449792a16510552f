/**
 * The control port's job commands (src/gateway/control/job-commands.ts) and the `hsx-gateway job`
 * CLI (src/cli/commands/job.ts), against a real control server with a small in-test job service
 * (the end-to-end tests with the real JobManager are the gateway's). The fake publishes its events
 * on the bus through `jobEventToBus`, as the gateway does.
 */
import test from 'ava';
import { runCli, type CliRun } from './hxe-cli-run.js';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sha256Hex } from '../src/gateway/control/auth.js';
import { JOBS_DISABLED_MESSAGE, MAX_UPLOAD_CHUNK_BYTES } from '../src/gateway/control/job-commands.js';
import { COMMAND_ROLES } from '../src/gateway/control/roles.js';
import { jobEventToBus } from '../src/gateway/jobs/bus-events.js';
import {
  deriveJobState,
  TERMINAL_TARGET_STATES,
  type JobEvent,
  type JobListFilter,
  type JobRecord,
  type JobResult,
  type JobService,
  type JobSubmit,
  type JobSubmitter,
  type JobTarget,
} from '../src/gateway/jobs/types.js';
import type { EventBus } from '../src/gateway/events/index.js';
import { fixture, fixturePath, fixturesDir, startHarness, type Harness, type LineClient } from './control-harness.js';

type Json = Record<string, unknown>;

// ---- a job service for the tests ---------------------------------------------------------------

/**
 * Jobs of target `3` run at once (started, 50 %, 100 %, SUCCEEDED, finished), each step on its own
 * turn of the event loop; a target named `bad` fails; other jobs wait for the test (`step`).
 */
class FakeJobs implements JobService {
  readonly records = new Map<string, JobRecord>();
  readonly submits: JobSubmit[] = [];
  private readonly watchers = new Set<(e: JobEvent) => void>();
  private n = 0;

  constructor(readonly linkNames: string[] = ['can0'], readonly autoRun: (targets: string[]) => boolean = (t) => t.length > 0 && t.every((x) => x === '3' || x === 'bad')) {}

  links(): string[] {
    return this.linkNames;
  }

  watch(fn: (e: JobEvent) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  private emit(e: JobEvent): void {
    for (const w of this.watchers) w(e);
  }

  private now(): number {
    return Date.now() / 1000;
  }

  /** A copy for the event (the record changes on; the bus keeps what it was given). */
  private snap(id: string): JobRecord {
    return structuredClone(this.records.get(id) as JobRecord);
  }

  private touch(job: JobRecord): void {
    job.state = deriveJobState(job.targets);
    job.revision++;
  }

  async submit(s: JobSubmit): Promise<JobResult<JobRecord>> {
    if (!this.linkNames.includes(s.link)) {
      return { ok: false, error: { code: 'ENOENT', reason: 'no_such_link', field: 'link', message: `no master link "${s.link}" (links: ${this.linkNames.join(', ')})` } };
    }
    this.submits.push(s);
    const targets = s.targets && s.targets.length ? [...s.targets] : ['1', '2'];
    const id = `j-${++this.n}`;
    const now = this.now();
    const job: JobRecord = {
      id,
      link: s.link,
      image: { name: s.image.name, sha256: createHash('sha256').update(s.image.bytes).digest('hex'), size: s.image.bytes.length, app_name: null },
      options: s.options ?? {},
      state: 'QUEUED',
      targets: targets.map((target) => ({ target, state: 'QUEUED', outcome: null, error: null, from: null, to: null, acked_bytes: 0, updated_ts: now })),
      submitted_by: s.by,
      client_token: s.client_token ?? null,
      submitted_ts: now,
      started_ts: null,
      finished_ts: null,
      reason: null,
      revision: 1,
    };
    this.records.set(id, job);
    this.emit({ type: 'job.submitted', job: this.snap(id) });
    if (this.autoRun(targets)) void this.runAll(id);
    return { ok: true, value: this.snap(id) };
  }

  private async runAll(id: string): Promise<void> {
    const turn = () => new Promise((r) => setTimeout(r, 5));
    await turn();
    this.start(id);
    const job = this.records.get(id) as JobRecord;
    for (const t of job.targets) {
      await turn();
      this.progress(id, t.target, Math.floor(job.image.size / 2));
      await turn();
      this.progress(id, t.target, job.image.size);
      await turn();
      this.settle(id, t.target, t.target === 'bad' ? 'FAILED' : 'SUCCEEDED');
    }
    await turn();
    this.finish(id);
  }

  // the steps, for tests that drive a job themselves
  start(id: string): void {
    const job = this.records.get(id) as JobRecord;
    job.started_ts = this.now();
    for (const t of job.targets) t.state = 'IN_PROGRESS';
    this.touch(job);
    this.emit({ type: 'job.started', job: this.snap(id) });
  }

  progress(id: string, target: string, acked: number): void {
    const job = this.records.get(id) as JobRecord;
    const t = job.targets.find((x) => x.target === target) as JobTarget;
    t.acked_bytes = acked;
    this.emit({ type: 'job.progress', job: this.snap(id), target, acked_bytes: acked, total_bytes: job.image.size });
  }

  settle(id: string, target: string, state: 'SUCCEEDED' | 'FAILED' | 'SKIPPED'): void {
    const job = this.records.get(id) as JobRecord;
    const t = job.targets.find((x) => x.target === target) as JobTarget;
    t.state = state;
    t.outcome = state === 'SUCCEEDED' ? 'installed' : state === 'SKIPPED' ? 'current' : null;
    t.error = state === 'FAILED' ? { code: 'EIO', where: 'data', reason: 'no_answer', message: 'the target stopped answering' } : null;
    t.updated_ts = this.now();
    this.touch(job);
    this.emit({ type: 'job.target', job: this.snap(id), target: structuredClone(t) });
  }

  finish(id: string): void {
    const job = this.records.get(id) as JobRecord;
    job.finished_ts = this.now();
    this.touch(job);
    this.emit({ type: 'job.finished', job: this.snap(id) });
  }

  get(id: string): JobRecord | undefined {
    return this.records.has(id) ? this.snap(id) : undefined;
  }

  list(filter: JobListFilter = {}): JobRecord[] {
    return [...this.records.values()]
      .filter((j) => (filter.state === undefined || j.state === filter.state) && (filter.link === undefined || j.link === filter.link))
      .reverse()
      .slice(0, filter.limit ?? 100)
      .map((j) => structuredClone(j));
  }

  async cancel(id: string, _by: JobSubmitter): Promise<JobResult<JobRecord>> {
    const job = this.records.get(id);
    if (!job) return { ok: false, error: { code: 'ESRCH', reason: 'unknown_job', field: 'id', message: `no job ${id}` } };
    if (TERMINAL_TARGET_STATES.has(job.state)) return { ok: false, error: { code: 'EBUSY', reason: 'already_finished', field: 'id', message: `${id} already ended ${job.state}` } };
    for (const t of job.targets) if (!TERMINAL_TARGET_STATES.has(t.state)) t.state = 'CANCELED';
    job.reason = 'canceled';
    job.finished_ts = this.now();
    this.touch(job);
    this.emit({ type: 'job.canceled', job: this.snap(id) });
    return { ok: true, value: this.snap(id) };
  }
}

const TOKENS = { viewer: 'viewer-secret', operator: 'operator-secret', admin: 'admin-secret' } as const;
const tokenEntries = [
  { name: 'dash', role: 'viewer' as const, sha256: sha256Hex(TOKENS.viewer) },
  { name: 'ci', role: 'operator' as const, sha256: sha256Hex(TOKENS.operator) },
  { name: 'ops', role: 'admin' as const, sha256: sha256Hex(TOKENS.admin) },
];

/** A harness whose server has the fake job service, its events on the bus (as the gateway wires it). */
async function jobHarness(opts: Parameters<typeof startHarness>[0] = {}, jobs = new FakeJobs()): Promise<{ h: Harness; jobs: FakeJobs }> {
  const h = await startHarness({ ...opts, jobs });
  const off = jobs.watch((e) => (h.bus as EventBus).publish(jobEventToBus(e)));
  const close = h.close.bind(h);
  h.close = async () => {
    off();
    await close();
  };
  return { h, jobs };
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');
const errorOf = (r: Json): string | undefined => r['error'] as string | undefined;
const detailOf = (r: Json): Json => (r['detail'] ?? {}) as Json;

/** The next event line on a stream connection. */
async function nextEvent(c: LineClient): Promise<Json> {
  return c.nextJson(5000);
}

// ---- the mapping ------------------------------------------------------------------------------

test('jobEventToBus: one bus event per job event, with the job id; progress is small', (t) => {
  const jobs = new FakeJobs();
  const seen: JobEvent[] = [];
  jobs.watch((e) => seen.push(e));
  void jobs.submit({ link: 'can0', targets: ['7'], image: { bytes: new Uint8Array(10), name: 'x.hxe' }, by: { name: 'n', role: 'operator', via: 'control' } });
  jobs.start('j-1');
  jobs.progress('j-1', '7', 5);
  jobs.settle('j-1', '7', 'SUCCEEDED');
  jobs.finish('j-1');
  const bus = seen.map(jobEventToBus);
  t.deepEqual(bus.map((b) => b.type), ['job.submitted', 'job.started', 'job.progress', 'job.target', 'job.finished']);
  for (const b of bus) {
    t.is(b.pid, null);
    t.is(b.phase, null);
    t.is(b.data['job_id'], 'j-1');
  }
  t.deepEqual(bus[2]!.data, { job_id: 'j-1', target: '7', acked_bytes: 5, total_bytes: 10, percent: 50 });
  t.deepEqual(Object.keys(bus[3]!.data).sort(), ['job', 'job_id', 'state', 'target']);
  t.is((bus[3]!.data['target'] as JobTarget).state, 'SUCCEEDED');
  t.deepEqual(Object.keys(bus[4]!.data).sort(), ['job', 'job_id', 'state']);
  t.is(bus[4]!.data['state'], 'SUCCEEDED');
  t.is(jobEventToBus({ type: 'job.progress', job: seen[0]!.job, target: '7', acked_bytes: 0, total_bytes: 0 }).data['percent'], null);
});

// ---- roles ------------------------------------------------------------------------------------

test('roles: a viewer may list, status and watch; submitting, uploading and cancelling need an operator', async (t) => {
  const { h, jobs } = await jobHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  t.is(COMMAND_ROLES.get('job.submit'), 'operator');
  t.is(COMMAND_ROLES.get('job.upload.begin'), 'operator');
  t.is(COMMAND_ROLES.get('job.upload.write'), 'operator');
  t.is(COMMAND_ROLES.get('job.cancel'), 'operator');
  for (const c of ['job.status', 'job.list', 'job.watch']) t.is(COMMAND_ROLES.get(c), 'viewer');

  const c = await h.client();
  const submitted = await c.request({ cmd: 'job.submit', token: TOKENS.operator, link: 'can0', nodes: '1-2', image: 't01_minimal.hxe' });
  t.is(submitted['status'], 'ok', JSON.stringify(submitted));
  const id = (submitted['job'] as JobRecord).id;
  t.deepEqual((submitted['job'] as JobRecord).submitted_by, { name: 'ci', role: 'operator', via: 'control' });

  for (const req of [
    { cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe' },
    { cmd: 'job.upload.begin', size: 10, sha256: 'a'.repeat(64) },
    { cmd: 'job.upload.write', upload: 1, offset: 0, data: 'AAAA' },
    { cmd: 'job.cancel', id },
  ]) {
    t.is(errorOf(await c.request({ ...req, token: TOKENS.viewer })), 'EPERM:operator_required', req.cmd);
    t.is(errorOf(await c.request(req)), 'EPERM:operator_required', `${req.cmd} without a token`);
  }
  t.is(jobs.submits.length, 1, 'nothing was submitted by the refused requests');
  t.is(jobs.get(id)?.state, 'QUEUED', 'nor cancelled');

  const list = await c.request({ cmd: 'job.list', token: TOKENS.viewer });
  t.deepEqual((list['jobs'] as JobRecord[]).map((j) => j.id), [id]);
  const status = await c.request({ cmd: 'job.status', token: TOKENS.viewer, id });
  t.is((status['job'] as JobRecord).id, id);
  const w = await h.client();
  const watch = await w.request({ cmd: 'job.watch', token: TOKENS.viewer, id });
  t.is(watch['status'], 'ok');
  t.is((watch['job'] as JobRecord).id, id);
  const cancelled = await c.request({ cmd: 'job.cancel', token: TOKENS.operator, id });
  t.is((cancelled['job'] as JobRecord).state, 'CANCELED');
  const ev = await nextEvent(w);
  t.is(ev['type'], 'job.canceled');
  t.is(((ev['data'] as Json)['job'] as JobRecord).targets.every((x) => x.state === 'CANCELED'), true);
  // the audit trail has the operator's submit and cancel
  t.true(h.logs.some((l) => l['audit'] === true && l['cmd'] === 'job.submit' && l['verdict'] === 'ok' && l['who'] === 'ci'));
  t.true(h.logs.some((l) => l['audit'] === true && l['cmd'] === 'job.cancel' && l['verdict'] === 'denied' && l['who'] === 'dash'));
});

test('jobs disabled: every job command says ENOTSUP:jobs_disabled and what to set', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  for (const req of [
    { cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe' },
    { cmd: 'job.upload.begin', size: 10, sha256: 'a'.repeat(64) },
    { cmd: 'job.upload.write', upload: 1, offset: 0, data: 'AAAA' },
    { cmd: 'job.status', id: 'j-1' },
    { cmd: 'job.list' },
    { cmd: 'job.cancel', id: 'j-1' },
    { cmd: 'job.watch' },
  ]) {
    const r = await c.request(req);
    t.deepEqual(r, { version: 1, status: 'error', error: 'ENOTSUP:jobs_disabled', detail: { message: JOBS_DISABLED_MESSAGE } }, req.cmd);
  }
  t.regex(JOBS_DISABLED_MESSAGE, /\[gateway\] state_dir/);
  t.regex(JOBS_DISABLED_MESSAGE, /master link/);
  const info = await c.request({ cmd: 'info' });
  t.is((info['info'] as Json)['jobs'], 'disabled');
});

// ---- images -----------------------------------------------------------------------------------

test('submit by images-dir name: the bytes of that file; paths out of the directory are refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-jobs-images-'));
  const outside = mkdtempSync(join(tmpdir(), 'hsx-jobs-outside-'));
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(outside, { recursive: true, force: true });
  });
  writeFileSync(join(dir, 'app.hxe'), fixture('t01_minimal.hxe'));
  writeFileSync(join(outside, 'x.hxe'), fixture('t02_single_instance_reqcap.hxe'));
  symlinkSync(join(outside, 'x.hxe'), join(dir, 'escape.hxe'));
  symlinkSync('app.hxe', join(dir, 'alias.hxe'));
  const { h, jobs } = await jobHarness({ imagesDir: dir });
  t.teardown(() => h.close());
  const c = await h.client();

  const r = await c.request({ cmd: 'job.submit', link: 'can0', nodes: '1-3,5', image: 'app.hxe', options: { force: true, timeout_ms: 500, retries: 2 }, client_token: 'ci-7' });
  t.is(r['status'], 'ok', JSON.stringify(r));
  const job = r['job'] as JobRecord;
  t.deepEqual(job.targets.map((x) => x.target), ['1', '2', '3', '5']);
  t.deepEqual(job.image, { name: 'app.hxe', sha256: sha(fixture('t01_minimal.hxe')), size: 104, app_name: null });
  t.is(job.client_token, 'ci-7');
  const s = jobs.submits[0] as JobSubmit;
  t.deepEqual([...s.image.bytes], [...fixture('t01_minimal.hxe')]);
  t.deepEqual(s.options, { force: true, timeout_ms: 500, retries: 2 });
  t.deepEqual(s.targets, ['1', '2', '3', '5']);
  t.deepEqual(s.by, { name: 'local', role: 'admin', via: 'control' });

  // a symlink that stays inside is followed
  t.is((await c.request({ cmd: 'job.submit', link: 'can0', targets: ['a', 2], image: 'alias.hxe' }))['status'], 'ok');
  t.deepEqual(jobs.submits[1]?.targets, ['a', '2']);

  for (const image of ['../x.hxe', join(outside, 'x.hxe'), '/etc/passwd', 'escape.hxe', `../${outside.split('/').pop()}/x.hxe`]) {
    const refused = await c.request({ cmd: 'job.submit', link: 'can0', image });
    t.deepEqual(refused, { version: 1, status: 'error', error: 'EPERM:path_outside_images_dir', detail: { field: 'image' } }, image);
  }
  t.deepEqual(await c.request({ cmd: 'job.submit', link: 'can0', image: 'nope.hxe' }),
    { version: 1, status: 'error', error: 'ENOENT:no_such_image', detail: { field: 'image' } });
  t.is(jobs.submits.length, 2, 'no refused image reached the job service');
});

test('an image over the bound is refused, by name and by upload size (before anything is allocated)', async (t) => {
  const { h, jobs } = await jobHarness({ maxImageBytes: 100 });
  t.teardown(() => h.close());
  const c = await h.client();
  t.deepEqual(await c.request({ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe' }),
    { version: 1, status: 'error', error: 'ENOSPC:image_too_large', detail: { field: 'image', max: 100 } });
  for (const size of [101, 2 ** 40, Number.MAX_SAFE_INTEGER]) {
    const r = await c.request({ cmd: 'job.upload.begin', size, sha256: 'a'.repeat(64) });
    t.is(errorOf(r), 'ENOSPC:image_too_large', String(size));
    t.is(detailOf(r)['field'], 'size');
    t.is(detailOf(r)['max'], 100);
  }
  for (const size of [0, -1, 1.5, '12x', 2 ** 60]) {
    const r = await c.request({ cmd: 'job.upload.begin', size, sha256: 'a'.repeat(64) });
    t.is(errorOf(r), 'EINVAL:size', String(size));
  }
  const ok = await c.request({ cmd: 'job.upload.begin', size: 100, sha256: 'a'.repeat(64) });
  t.is(ok['status'], 'ok');
  t.is(jobs.submits.length, 0);
  t.false(h.logs.some((l) => l['msg'] === 'control: internal error answering a request'));
});

// ---- uploads ----------------------------------------------------------------------------------

test('upload: begin, write in chunks (re-sending one is fine), submit checks the SHA-256', async (t) => {
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const image = fixture('t04b_value_cmd_help.hxe');
  const begun = await c.request({ cmd: 'job.upload.begin', size: image.length, sha256: sha(image).toUpperCase() });
  t.deepEqual(Object.keys(begun).sort(), ['max_chunk', 'size', 'status', 'upload', 'version']);
  t.is(begun['max_chunk'], MAX_UPLOAD_CHUNK_BYTES);
  const upload = begun['upload'] as number;
  // not complete yet
  const early = await c.request({ cmd: 'job.submit', link: 'can0', upload });
  t.is(errorOf(early), 'EBADMSG:upload_incomplete');
  t.like(detailOf(early), { field: 'upload', received: 0, size: image.length });
  let offset = 0;
  for (const n of [100, 100, 129]) {
    const w = await c.request({ cmd: 'job.upload.write', upload, offset, data: b64(image.subarray(offset, offset + n)) });
    t.deepEqual(w, { version: 1, status: 'ok', upload, offset, bytes: n, received: offset + n, size: image.length });
    offset += n;
  }
  // the last chunk again: acknowledged, nothing changes
  const again = await c.request({ cmd: 'job.upload.write', upload, offset: 200, data: b64(image.subarray(200)) });
  t.is(again['received'], image.length);
  const r = await c.request({ cmd: 'job.submit', link: 'can0', nodes: '4', upload, client_token: 'x' });
  t.is(r['status'], 'ok', JSON.stringify(r));
  t.deepEqual((r['job'] as JobRecord).image, { name: `upload:${sha(image).slice(0, 12)}`, sha256: sha(image), size: image.length, app_name: null });
  t.deepEqual([...(jobs.submits[0] as JobSubmit).image.bytes], [...image]);
  // used up
  t.is(errorOf(await c.request({ cmd: 'job.submit', link: 'can0', upload })), 'ESRCH:unknown_upload');
  t.is(errorOf(await c.request({ cmd: 'job.upload.write', upload, offset: 0, data: 'AAAA' })), 'ESRCH:unknown_upload');
});

test('upload: a wrong SHA-256 is refused and the upload discarded; a refused submit keeps a good one', async (t) => {
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const image = fixture('t01_minimal.hxe');
  const wrong = sha(new Uint8Array([1, 2, 3]));
  const upload = (await c.request({ cmd: 'job.upload.begin', size: image.length, sha256: wrong }))['upload'] as number;
  t.is((await c.request({ cmd: 'job.upload.write', upload, offset: 0, data: b64(image) }))['status'], 'ok');
  const r = await c.request({ cmd: 'job.submit', link: 'can0', upload });
  t.is(errorOf(r), 'EBADMSG:sha256_mismatch');
  t.deepEqual(Object.keys(detailOf(r)).sort(), ['actual', 'expected', 'field', 'message']);
  t.like(detailOf(r), { field: 'upload', expected: wrong, actual: sha(image) });
  t.is(jobs.submits.length, 0);
  t.is(errorOf(await c.request({ cmd: 'job.submit', link: 'can0', upload })), 'ESRCH:unknown_upload', 'discarded');

  // the job service refuses (unknown link): the upload stays for a corrected submit
  const good = (await c.request({ cmd: 'job.upload.begin', size: image.length, sha256: sha(image) }))['upload'] as number;
  await c.request({ cmd: 'job.upload.write', upload: good, offset: 0, data: b64(image) });
  const refused = await c.request({ cmd: 'job.submit', link: 'can9', upload: good });
  t.deepEqual(refused, { version: 1, status: 'error', error: 'ENOENT:no_such_link', detail: { field: 'link', message: 'no master link "can9" (links: can0)' } });
  t.is((await c.request({ cmd: 'job.submit', link: 'can0', upload: good }))['status'], 'ok');
});

test('upload: owned by its connection, freed when it closes; bounded in number', async (t) => {
  const { h } = await jobHarness();
  t.teardown(() => h.close());
  const a = await h.client();
  const b = await h.client();
  const upload = (await a.request({ cmd: 'job.upload.begin', size: 8, sha256: 'a'.repeat(64) }))['upload'] as number;
  const other = await b.request({ cmd: 'job.upload.write', upload, offset: 0, data: 'SFNYRQACAAA=' });
  t.is(errorOf(other), 'EPERM:not_owner');
  t.is(detailOf(other)['field'], 'upload');
  t.is(errorOf(await b.request({ cmd: 'job.submit', link: 'can0', upload })), 'EPERM:not_owner');
  // a second upload on a, then the per-connection limit
  t.is((await a.request({ cmd: 'job.upload.begin', size: 8, sha256: 'a'.repeat(64) }))['status'], 'ok');
  const third = await a.request({ cmd: 'job.upload.begin', size: 8, sha256: 'a'.repeat(64) });
  t.is(errorOf(third), 'ELIMIT:max_uploads_per_connection');
  t.is(detailOf(third)['limit'], 2);
  // a leaves: its uploads go (the server logs it), and b sees the upload is gone
  const freed = new Promise<void>((resolve) => {
    const check = () => (h.logs.filter((l) => l['msg'] === 'control client left mid-upload; job upload discarded').length >= 2 ? resolve() : setTimeout(check, 5));
    check();
  });
  a.destroy();
  await freed;
  t.is(errorOf(await b.request({ cmd: 'job.upload.write', upload, offset: 0, data: 'SFNYRQACAAA=' })), 'ESRCH:unknown_upload');
  // and b may begin its own
  t.is((await b.request({ cmd: 'job.upload.begin', size: 8, sha256: 'a'.repeat(64) }))['status'], 'ok');
});

// ---- malformed requests -----------------------------------------------------------------------

test('malformed requests: EINVAL:<field> naming the field, nothing submitted', async (t) => {
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const upload = (await c.request({ cmd: 'job.upload.begin', size: 8, sha256: 'a'.repeat(64) }))['upload'] as number;
  const cases: [Json, string][] = [
    [{ cmd: 'job.submit', image: 't01_minimal.hxe' }, 'link'],
    [{ cmd: 'job.submit', link: 5, image: 't01_minimal.hxe' }, 'link'],
    [{ cmd: 'job.submit', link: 'x'.repeat(65), image: 't01_minimal.hxe' }, 'link'],
    [{ cmd: 'job.submit', link: 'can0' }, 'image'],
    [{ cmd: 'job.submit', link: 'can0', image: 7 }, 'image'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', upload }, 'upload'],
    [{ cmd: 'job.submit', link: 'can0', upload: 'one' }, 'upload'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', targets: '1-3' }, 'targets'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', targets: [{}] }, 'targets'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', targets: [-1] }, 'targets'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', nodes: 'all' }, 'nodes'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', nodes: '0-3' }, 'nodes'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', nodes: '1', targets: ['1'] }, 'nodes'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: [] }, 'options'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: { force: 'yes' } }, 'options.force'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: { chunk: 0 } }, 'options.chunk'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: { window: 'big' } }, 'options.window'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: { timeout_ms: -5 } }, 'options.timeout_ms'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: { retries: 1000 } }, 'options.retries'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', options: { speed: 1 } }, 'options.speed'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', client_token: 42 }, 'client_token'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', client_token: 'x'.repeat(300) }, 'client_token'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', device: 'default' }, 'device'],
    [{ cmd: 'job.submit', link: 'can0', image: 't01_minimal.hxe', path: 't01_minimal.hxe' }, 'path'],
    [{ cmd: 'job.upload.begin', sha256: 'a'.repeat(64) }, 'size'],
    [{ cmd: 'job.upload.begin', size: 8 }, 'sha256'],
    [{ cmd: 'job.upload.begin', size: 8, sha256: 'xyz' }, 'sha256'],
    [{ cmd: 'job.upload.begin', size: 8, sha256: 'g'.repeat(64) }, 'sha256'],
    [{ cmd: 'job.upload.write', offset: 0, data: 'AAAA' }, 'upload'],
    [{ cmd: 'job.upload.write', upload, data: 'AAAA' }, 'offset'],
    [{ cmd: 'job.upload.write', upload, offset: 0 }, 'data'],
    [{ cmd: 'job.upload.write', upload, offset: 4, data: 'AAAA' }, 'offset'],
    [{ cmd: 'job.upload.write', upload, offset: -1, data: 'AAAA' }, 'offset'],
    [{ cmd: 'job.upload.write', upload, offset: 0, data: 'not base64!' }, 'data'],
    [{ cmd: 'job.upload.write', upload, offset: 0, data: 12 }, 'data'],
    [{ cmd: 'job.upload.write', upload, offset: 0, data: 'AAAAAAAAAAAAAAAA' }, 'data'], // 12 bytes into 8
    [{ cmd: 'job.status' }, 'id'],
    [{ cmd: 'job.status', id: 3 }, 'id'],
    [{ cmd: 'job.cancel', id: ['j-1'] }, 'id'],
    [{ cmd: 'job.list', state: 'DONE' }, 'state'],
    [{ cmd: 'job.list', limit: 0 }, 'limit'],
    [{ cmd: 'job.list', limit: 'ten' }, 'limit'],
    [{ cmd: 'job.list', link: {} }, 'link'],
    [{ cmd: 'job.list', bogus: true }, 'bogus'],
    [{ cmd: 'job.watch', since_seq: -1 }, 'since_seq'],
    [{ cmd: 'job.watch', ack_window: 0 }, 'ack_window'],
    [{ cmd: 'job.watch', ack_window: 4 }, 'ack_window'], // ACK mode needs a session
    [{ cmd: 'job.watch', filters: {} }, 'filters'],
  ];
  for (const [req, field] of cases) {
    const r = await c.request(req);
    t.is(errorOf(r), `EINVAL:${field}`, JSON.stringify(req));
    t.is(detailOf(r)['field'], field, JSON.stringify(req));
    t.is(typeof detailOf(r)['message'], 'string', JSON.stringify(req));
  }
  t.is(jobs.submits.length, 0);
  t.false(h.logs.some((l) => l['msg'] === 'control: internal error answering a request'));
});

test('job service refusals go on the wire as <CODE>:<reason> with field and message; unknown jobs are ESRCH', async (t) => {
  const { h } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  t.deepEqual(await c.request({ cmd: 'job.submit', link: 'can1', image: 't01_minimal.hxe' }),
    { version: 1, status: 'error', error: 'ENOENT:no_such_link', detail: { field: 'link', message: 'no master link "can1" (links: can0)' } });
  const id = ((await c.request({ cmd: 'job.submit', link: 'can0', nodes: '3', image: 't01_minimal.hxe' }))['job'] as JobRecord).id;
  for (const cmd of ['job.status', 'job.cancel', 'job.watch']) {
    t.deepEqual(await c.request({ cmd, id: 'j-404' }),
      { version: 1, status: 'error', error: 'ESRCH:no_such_job', detail: { field: 'id', message: 'no job j-404 on this gateway' } }, cmd);
  }
  // wait for the job to end (it runs at once), then a cancel is refused by the service
  const w = await h.client();
  const watched = await w.request({ cmd: 'job.watch', id });
  let state = (watched['job'] as JobRecord).state;
  while (!TERMINAL_TARGET_STATES.has(state)) {
    const ev = await nextEvent(w);
    const d = ev['data'] as Json;
    if (d['state']) state = d['state'] as JobRecord['state'];
  }
  const r = await c.request({ cmd: 'job.cancel', id });
  t.is(errorOf(r), 'EBUSY:already_finished');
  t.deepEqual(detailOf(r), { field: 'id', message: `${id} already ended SUCCEEDED` });
});

// ---- job.watch --------------------------------------------------------------------------------

test('job.watch with an id streams that job\'s events only; without, every job\'s', async (t) => {
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const submit = async (nodes: string) => ((await c.request({ cmd: 'job.submit', link: 'can0', nodes, image: 't01_minimal.hxe' }))['job'] as JobRecord).id;
  const j1 = await submit('1');
  const j2 = await submit('2');
  const one = await h.client();
  const all = await h.client();
  const r1 = await one.request({ cmd: 'job.watch', id: j1 });
  t.deepEqual(Object.keys(r1).sort(), ['events', 'job', 'status', 'version']);
  t.deepEqual(Object.keys(r1['events'] as Json).sort(), ['cursor', 'drops', 'high_water', 'max', 'pending', 'retention_ms', 'token']);
  const rAll = await all.request({ cmd: 'job.watch' });
  t.deepEqual(Object.keys(rAll).sort(), ['events', 'status', 'version']);

  // other jobs' events first: the one-job stream must skip them
  jobs.start(j2);
  jobs.progress(j2, '2', 10);
  jobs.start(j1);
  jobs.progress(j1, '1', 52);
  jobs.settle(j2, '2', 'FAILED');
  jobs.settle(j1, '1', 'SUCCEEDED');
  jobs.finish(j2);
  jobs.finish(j1);
  const mine: Json[] = [];
  while (mine.length < 4) mine.push(await nextEvent(one));
  t.deepEqual(mine.map((e) => [e['type'], (e['data'] as Json)['job_id']]), [
    ['job.started', j1], ['job.progress', j1], ['job.target', j1], ['job.finished', j1],
  ]);
  t.deepEqual(Object.keys(mine[0]!).sort(), ['data', 'phase', 'pid', 'seq', 'ts', 'type']);
  t.deepEqual(mine[1]!['data'], { job_id: j1, target: '1', acked_bytes: 52, total_bytes: 104, percent: 50 });
  const seqs = mine.map((e) => e['seq'] as number);
  t.deepEqual([...seqs].sort((a, b) => a - b), seqs, 'in seq order');
  const every: Json[] = [];
  while (every.length < 8) every.push(await nextEvent(all));
  t.deepEqual(every.map((e) => (e['data'] as Json)['job_id']), [j2, j2, j1, j1, j2, j1, j2, j1]);
  // other events of the bus (provisioning) are not job events: not on a job stream
  t.is((await c.request({ cmd: 'provision.load', path: 't01_minimal.hxe' }))['status'], 'ok');
  jobs.progress(j1, '1', 104);
  t.is((await nextEvent(all))['type'], 'job.progress');
});

test('job.watch since_seq replays what happened since; a job submitted before the watch is not missed', async (t) => {
  const { h } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const cursor = ((await c.request({ cmd: 'info' }))['info'] as Json)['event_seq'] as number;
  // node 3 runs at once: by the time we watch, some or all of it has happened
  const id = ((await c.request({ cmd: 'job.submit', link: 'can0', nodes: '3', image: 't01_minimal.hxe' }))['job'] as JobRecord).id;
  const w = await h.client();
  const r = await w.request({ cmd: 'job.watch', id, since_seq: cursor });
  t.is((r['events'] as Json)['since_seq'], cursor);
  const types: string[] = [];
  while (types.at(-1) !== 'job.finished') types.push((await nextEvent(w))['type'] as string);
  t.deepEqual(types, ['job.submitted', 'job.started', 'job.progress', 'job.progress', 'job.target', 'job.finished']);
});

test('job.watch ACK mode: paced like events.subscribe; other jobs\' events never hold the window; events.unsubscribe ends it', async (t) => {
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const submit = async (nodes: string) => ((await c.request({ cmd: 'job.submit', link: 'can0', nodes, image: 't01_minimal.hxe' }))['job'] as JobRecord).id;
  const j1 = await submit('1');
  const j2 = await submit('2');
  const session = ((await c.request({ cmd: 'session.open', client: 'acks' }))['session'] as Json)['id'] as string;

  // the same pacing on a plain events.subscribe, for comparison
  const plain = await h.client();
  const ps = ((await c.request({ cmd: 'session.open', client: 'plain' }))['session'] as Json)['id'] as string;
  const sub = await plain.request({ cmd: 'events.subscribe', session: ps, filters: { categories: ['job'] }, ack_window: 2 });
  const w = await h.client();
  const watch = await w.request({ cmd: 'job.watch', session, id: j1, ack_window: 2 });
  t.deepEqual(Object.keys(watch['events'] as Json).sort(), [...Object.keys(sub['events'] as Json)].sort(), 'the same stream reply as events.subscribe');
  t.is((watch['events'] as Json)['ack_window'], 2);

  // j1 a, j2 x, j1 b, j2 y, j1 c, j2 z, j1 d
  jobs.start(j1);
  jobs.start(j2);
  jobs.progress(j1, '1', 10);
  jobs.progress(j2, '2', 10);
  jobs.progress(j1, '1', 20);
  jobs.progress(j2, '2', 20);
  jobs.progress(j1, '1', 30);
  const got: Json[] = [];
  const metrics = () => h.bus.subscriptionMetrics().find((m) => m.token === (watch['events'] as Json)['token']);
  const plainMetrics = () => h.bus.subscriptionMetrics().find((m) => m.token === (sub['events'] as Json)['token']);
  // the plain subscriber got 2 and holds the rest until it ACKs
  const p1 = await nextEvent(plain);
  const p2 = await nextEvent(plain);
  t.is(plainMetrics()?.unacked, 2);
  t.is(plainMetrics()?.queued, 5);
  // the watcher: its first event; the next j1 event waits behind the window
  got.push(await nextEvent(w));
  t.is((got[0]!['data'] as Json)['job_id'], j1);
  t.true((metrics()?.queued ?? 0) > 0, 'events wait for an ACK');
  const ackedReply = await c.request({ cmd: 'events.ack', session, seq: got.at(-1)!['seq'] });
  t.deepEqual(Object.keys(ackedReply['events'] as Json).sort(), ['drops', 'high_water', 'last_ack', 'pending']);
  // each ACK of the last event seen brings the next one of this job, whatever came between
  while (got.length < 4) {
    got.push(await nextEvent(w));
    await c.request({ cmd: 'events.ack', session, seq: got.at(-1)!['seq'] });
  }
  t.deepEqual(got.map((e) => [e['type'], (e['data'] as Json)['job_id']]), [['job.started', j1], ['job.progress', j1], ['job.progress', j1], ['job.progress', j1]]);
  t.deepEqual(got.map((e) => (e['data'] as Json)['acked_bytes'] ?? null), [null, 10, 20, 30]);
  t.is(metrics()?.unacked, 0, 'nothing of the other job is left unacknowledged');
  t.is(metrics()?.queued, 0);
  // the plain subscriber resumes the same way
  await c.request({ cmd: 'events.ack', session: ps, seq: p2['seq'] });
  t.is((await nextEvent(plain))['seq'], (p1['seq'] as number) + 2);

  const un = await c.request({ cmd: 'events.unsubscribe', session });
  t.deepEqual(un, { version: 1, status: 'ok', unsubscribed: true });
  t.true(await w.waitEnd());
});

test('job.watch replaces the session\'s subscription, and is ended by the session\'s end', async (t) => {
  const { h } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const session = ((await c.request({ cmd: 'session.open' }))['session'] as Json)['id'] as string;
  const s1 = await h.client();
  t.is((await s1.request({ cmd: 'events.subscribe', session }))['status'], 'ok');
  const s2 = await h.client();
  t.is((await s2.request({ cmd: 'job.watch', session }))['status'], 'ok');
  t.true(await s1.waitEnd(), 'the old subscription ended');
  t.deepEqual(await c.request({ cmd: 'session.close', session }), { version: 1, status: 'ok' });
  t.true(await s2.waitEnd(), 'the watch ended with the session');
});

// ---- the documented exchanges -----------------------------------------------------------------

const doc = readFileSync(new URL('../docs/executive_protocol.md', import.meta.url), 'utf8');

function jobBlocks(): string[][] {
  const out: string[][] = [];
  const re = /```jsonl jobs\n([\s\S]*?)```/g;
  for (let m = re.exec(doc); m; m = re.exec(doc)) out.push((m[1] as string).split('\n').filter((l) => l.trim()));
  return out;
}

type Vars = Map<string, unknown>;

function substitute(v: unknown, vars: Vars): unknown {
  if (typeof v === 'string' && v.startsWith('$')) {
    if (!vars.has(v)) throw new Error(`variable ${v} used before it was captured`);
    return vars.get(v);
  }
  if (typeof v === 'string' && v.startsWith('@')) return b64(fixture(v.slice(1)));
  if (Array.isArray(v)) return v.map((x) => substitute(x, vars));
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x, vars)]));
  return v;
}

/** The notation of docs/executive_protocol.md: "…" any value, a key "…" more keys, "$x" captures. */
function mismatch(expected: unknown, actual: unknown, vars: Vars, path = '$'): string | null {
  if (expected === '…') return null;
  if (typeof expected === 'string' && expected.startsWith('$')) {
    if (vars.has(expected)) return vars.get(expected) === actual ? null : `${path}: ${expected}=${JSON.stringify(vars.get(expected))}, got ${JSON.stringify(actual)}`;
    vars.set(expected, actual);
    return null;
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) return `${path}: expected ${expected.length} items, got ${JSON.stringify(actual)}`;
    for (let i = 0; i < expected.length; i++) {
      const m = mismatch(expected[i], actual[i], vars, `${path}[${i}]`);
      if (m) return m;
    }
    return null;
  }
  if (expected && typeof expected === 'object') {
    if (!actual || typeof actual !== 'object' || Array.isArray(actual)) return `${path}: expected an object, got ${JSON.stringify(actual)}`;
    const e = expected as Json;
    const a = actual as Json;
    for (const k of Object.keys(e)) {
      if (k === '…') continue;
      if (!(k in a)) return `${path}.${k}: missing`;
      const m = mismatch(e[k], a[k], vars, `${path}.${k}`);
      if (m) return m;
    }
    if (!('…' in e)) {
      const extra = Object.keys(a).filter((k) => !(k in e));
      if (extra.length) return `${path}: undocumented keys ${extra.join(', ')}`;
    }
    return null;
  }
  return Object.is(expected, actual) ? null : `${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`;
}

test('docs: every documented job exchange happens exactly so', async (t) => {
  t.timeout(30_000);
  const blocks = jobBlocks();
  t.true(blocks.length >= 2, 'the Jobs section has its examples');
  t.regex(doc, /^## Jobs$/m);
  const { h } = await jobHarness({ imagesDir: fixturesDir });
  t.teardown(() => h.close());
  const conns = new Map<string, LineClient>();
  const vars: Vars = new Map();
  let checked = 0;
  for (const lines of blocks) {
    for (const line of lines) {
      const m = /^([A-Z])([<>]) (.*)$/.exec(line);
      if (!m) throw new Error(`doc line not in the A>/A< form: ${line}`);
      const [, name, dir, body] = m as unknown as [string, string, string, string];
      let c = conns.get(name);
      if (!c) conns.set(name, (c = await h.client()));
      if (dir === '>') {
        c.sendRaw(`${JSON.stringify(substitute(JSON.parse(body), vars))}\n`);
        continue;
      }
      const got = await c.next();
      if (body === '<EOF>') t.is(got, null, `${line}: expected EOF`);
      else {
        t.true(got !== null, `${line}: no reply`);
        t.is(mismatch(JSON.parse(body), JSON.parse(got ?? 'null'), vars), null, `documented: ${body}\nactual:     ${got}`);
      }
      checked++;
    }
  }
  t.log(`${checked} documented job replies checked`);
  const documented = new Set([...doc.slice(doc.indexOf('## Jobs')).matchAll(/"cmd":"(job\.[a-z.]+)"/g)].map((x) => x[1]));
  for (const cmd of [...COMMAND_ROLES.keys()].filter((k) => k.startsWith('job.'))) {
    t.true(documented.has(cmd), `${cmd} has an example`);
    t.true(new RegExp(`\\| \`${cmd.replace(/\./g, '\\.')}\` \\| ${COMMAND_ROLES.get(cmd)} \\|`).test(doc), `${cmd}'s row names its role`);
  }
});

test('docs: each answer, built by hand from the documented fields, has the keys of a real one', async (t) => {
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const keys = (o: unknown): string[] => Object.keys(o as Json).sort();
  // the record, as the Jobs section lists it
  const target: JobTarget = { target: '3', state: 'QUEUED', outcome: null, error: null, from: null, to: null, acked_bytes: 0, updated_ts: 0 };
  const record: JobRecord = {
    id: 'j-1', link: 'can0', image: { name: 't01_minimal.hxe', sha256: '', size: 0, app_name: null }, options: {}, state: 'QUEUED', targets: [target],
    submitted_by: { name: 'local', role: 'admin', via: 'control' }, client_token: null, submitted_ts: 0, started_ts: null, finished_ts: null, reason: null, revision: 1,
  };
  const handBuilt: [Json, Json][] = [
    [{ cmd: 'job.submit', link: 'can0', nodes: '4', image: 't01_minimal.hxe' }, { version: 1, status: 'ok', job: record }],
    [{ cmd: 'job.status', id: 'j-1' }, { version: 1, status: 'ok', job: record }],
    [{ cmd: 'job.list' }, { version: 1, status: 'ok', jobs: [record] }],
    [{ cmd: 'job.upload.begin', size: 8, sha256: 'a'.repeat(64) }, { version: 1, status: 'ok', upload: 1, size: 8, max_chunk: 0 }],
    [{ cmd: 'job.upload.write', upload: 1, offset: 0, data: 'SFNYRQACAAA=' }, { version: 1, status: 'ok', upload: 1, offset: 0, bytes: 8, received: 8, size: 8 }],
    [{ cmd: 'job.cancel', id: 'j-1' }, { version: 1, status: 'ok', job: record }],
    [{ cmd: 'job.status', id: 'j-9' }, { version: 1, status: 'error', error: 'ESRCH:no_such_job', detail: { field: 'id', message: '' } }],
    [{ cmd: 'job.upload.begin', size: 1 << 30, sha256: 'a'.repeat(64) }, { version: 1, status: 'error', error: 'ENOSPC:image_too_large', detail: { field: 'size', message: '', max: 0 } }],
    [{ cmd: 'job.list', limit: 0 }, { version: 1, status: 'error', error: 'EINVAL:limit', detail: { field: 'limit', message: '' } }],
  ];
  for (const [req, expected] of handBuilt) {
    const real = await c.request(req);
    t.deepEqual(keys(real), keys(expected), req['cmd'] as string);
    if (expected['detail']) t.deepEqual(keys(real['detail']), keys(expected['detail']), `${String(req['cmd'])} detail`);
    const job = (real['job'] ?? (real['jobs'] as unknown[] | undefined)?.[0]) as Json | undefined;
    if (job) {
      t.deepEqual(keys(job), keys(record), `${String(req['cmd'])} job`);
      t.deepEqual(keys(job['image']), keys(record.image));
      t.deepEqual(keys(job['submitted_by']), keys(record.submitted_by));
      t.deepEqual(keys((job['targets'] as unknown[])[0]), keys(target));
    }
  }
  // the events of the table
  const w = await h.client();
  const watchReply = await w.request({ cmd: 'job.watch', id: 'j-1' });
  t.deepEqual(keys(watchReply), ['events', 'job', 'status', 'version']);
  const j2 = ((await c.request({ cmd: 'job.submit', link: 'can0', nodes: '5', image: 't01_minimal.hxe' }))['job'] as JobRecord).id;
  const w2 = await h.client();
  await w2.request({ cmd: 'job.watch', id: j2 });
  jobs.start(j2);
  jobs.progress(j2, '5', 1);
  jobs.settle(j2, '5', 'SKIPPED');
  jobs.finish(j2);
  const envelope = ['data', 'phase', 'pid', 'seq', 'ts', 'type'];
  const documentedData: Record<string, string[]> = {
    'job.started': ['job', 'job_id', 'state'],
    'job.progress': ['acked_bytes', 'job_id', 'percent', 'target', 'total_bytes'],
    'job.target': ['job', 'job_id', 'state', 'target'],
    'job.finished': ['job', 'job_id', 'state'],
  };
  for (const type of Object.keys(documentedData)) {
    const ev = await nextEvent(w2);
    t.is(ev['type'], type);
    t.deepEqual(keys(ev), envelope);
    t.deepEqual(keys(ev['data']), documentedData[type]);
  }
});

// ---- the CLI ----------------------------------------------------------------------------------

/** `hsx-gateway job …`, the real CLI, without a token from this process's environment. */
const cli = (args: string[], env: Record<string, string> = {}): Promise<CliRun> => runCli(['job', ...args], { HSX_GATEWAY_TOKEN: '', ...env });

const lines = (s: string): Json[] => s.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Json);

/** A port nothing listens on. */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

test('cli: job submit uploads a local image, follows it to the end (JSON lines), exits 0 only if every target succeeded', async (t) => {
  t.timeout(90_000);
  const { h, jobs } = await jobHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  const at = `127.0.0.1:${h.port}`;
  const image = fixturePath('t04b_value_cmd_help.hxe');
  const [good, bad, detached, byName, viewer, usage, nobody] = await Promise.all([
    cli(['submit', '--connect', at, '--link', 'can0', '--nodes', '3', '--json', image], { HSX_GATEWAY_TOKEN: TOKENS.operator }),
    cli(['submit', '--connect', at, '--token', TOKENS.operator, '--link', 'can0', '--targets', '3,bad', '--json', image]),
    cli(['submit', '--connect', at, '--token', TOKENS.operator, '--link', 'can0', '--nodes', '7-8', '--detach', image]),
    cli(['submit', '--connect', at, '--token', TOKENS.operator, '--link', 'can0', '--nodes', '3', '--image-name', 't01_minimal.hxe']),
    cli(['submit', '--connect', at, '--token', TOKENS.viewer, '--link', 'can0', '--nodes', '3', '--json', image]),
    cli(['submit', '--connect', at, '--nodes', '3', '--json', image]),
    cli(['submit', '--connect', `127.0.0.1:${await deadPort()}`, '--link', 'can0', '--json', image]),
  ]);

  t.is(good.code, 0, good.stderr + good.stdout);
  const out = lines(good.stdout);
  t.is(out[0]!['type'], 'submitted');
  const result = out.at(-1)!;
  t.is(result['type'], 'result');
  t.is(result['ok'], true);
  t.is(result['state'], 'SUCCEEDED');
  t.deepEqual((result['targets'] as JobTarget[]).map((x) => [x.target, x.state]), [['3', 'SUCCEEDED']]);
  const events = out.filter((l) => l['type'] === 'event').map((l) => l['event']);
  t.deepEqual(events, ['job.submitted', 'job.started', 'job.progress', 'job.progress', 'job.target', 'job.finished'], 'every event, none missed');
  const uploaded = jobs.submits.find((s) => s.image.name.startsWith('upload:') && s.targets?.join() === '3');
  t.deepEqual([...(uploaded?.image.bytes ?? [])], [...fixture('t04b_value_cmd_help.hxe')]);
  t.is(uploaded?.by.name, 'ci');

  t.is(bad.code, 1, bad.stderr);
  const badResult = lines(bad.stdout).at(-1)!;
  t.is(badResult['ok'], false);
  t.is(badResult['state'], 'FAILED');

  t.is(detached.code, 0, detached.stderr);
  t.regex(detached.stdout, /^j-\d+\n$/);
  const detachedId = detached.stdout.trim();
  t.is(jobs.get(detachedId)?.state, 'QUEUED', 'detached: the CLI did not wait');

  t.is(byName.code, 0, byName.stderr);
  t.regex(byName.stdout, /job j-\d+ SUCCEEDED on can0: t01_minimal\.hxe/);
  t.regex(byName.stdout, /1 target\(s\): 1 SUCCEEDED/);

  t.is(viewer.code, 1);
  t.like(lines(viewer.stdout).at(-1), { ok: false, error: { kind: 'remote', code: 'EPERM', reason: 'operator_required' } });

  t.is(usage.code, 2);
  t.like(lines(usage.stdout)[0], { ok: false, error: { kind: 'usage', code: 'EUSAGE' } });
  t.regex(String((lines(usage.stdout)[0]!['error'] as Record<string, unknown>)['message']), /--link/);

  t.is(nobody.code, 3, nobody.stderr + nobody.stdout);
  t.like(lines(nobody.stdout)[0], { ok: false, error: { kind: 'connect' } });

  // list, status, cancel, watch
  const [list, status, missing, cancel, badId] = await Promise.all([
    cli(['list', '--connect', at, '--token', TOKENS.viewer, '--json', '--state', 'succeeded']),
    cli(['status', detachedId, '--connect', at, '--token', TOKENS.viewer]),
    cli(['status', 'j-999', '--connect', at, '--token', TOKENS.viewer, '--json']),
    cli(['cancel', detachedId, '--connect', at, '--token', TOKENS.operator, '--json']),
    cli(['status', 'seven', '--connect', at]),
  ]);
  t.is(list.code, 0, list.stderr);
  const listed = lines(list.stdout)[0]!;
  t.is(listed['ok'], true);
  t.true((listed['jobs'] as JobRecord[]).length >= 2);
  t.true((listed['jobs'] as JobRecord[]).every((j) => j.state === 'SUCCEEDED'));
  t.is(status.code, 0, status.stderr);
  t.regex(status.stdout, new RegExp(`^job ${detachedId} (QUEUED|CANCELED) on can0`));
  t.is(missing.code, 1);
  t.like(lines(missing.stdout)[0], { ok: false, error: { code: 'ESRCH', reason: 'no_such_job', remote: true } });
  t.is(cancel.code, 0, cancel.stderr);
  t.is(((lines(cancel.stdout)[0]!['job']) as JobRecord).state, 'CANCELED');
  t.is(badId.code, 2);

  const watched = await cli(['watch', detachedId, '--connect', at, '--token', TOKENS.viewer, '--json']);
  t.is(watched.code, 1, 'a cancelled job is not a success');
  t.like(lines(watched.stdout).at(-1), { type: 'result', ok: false, state: 'CANCELED' });
});

test('cli: job watch follows a job someone else submitted; a bad --connect is a usage error', async (t) => {
  t.timeout(60_000);
  const { h, jobs } = await jobHarness();
  t.teardown(() => h.close());
  const at = `127.0.0.1:${h.port}`;
  const c = await h.client();
  const id = ((await c.request({ cmd: 'job.submit', link: 'can0', nodes: '1-2', image: 't01_minimal.hxe' }))['job'] as JobRecord).id;
  const watching = cli(['watch', id, '--connect', at]);
  // drive it once the CLI's watch is there
  while (!h.bus.subscriptionMetrics().some((m) => m.active)) await new Promise((r) => setTimeout(r, 10));
  jobs.start(id);
  jobs.settle(id, '1', 'SUCCEEDED');
  jobs.settle(id, '2', 'SKIPPED');
  jobs.finish(id);
  const w = await watching;
  t.is(w.code, 0, w.stderr);
  t.regex(w.stdout, new RegExp(`${id} 1: SUCCEEDED installed`));
  t.regex(w.stdout, /2 target\(s\): 1 SUCCEEDED · 1 SKIPPED/);
  const badConnect = await cli(['list', '--connect', 'nowhere', '--json']);
  t.is(badConnect.code, 2);
  t.like(lines(badConnect.stdout)[0], { ok: false, error: { kind: 'usage' } });
});

test('job.watch counts toward the control port\'s stream limits (max_streams): over it, ELIMIT naming the limit, the connection carries on', async (t) => {
  const { h } = await jobHarness({ limits: { max_streams: 1 } });
  t.teardown(() => h.close());
  const w1 = await h.client();
  const w2 = await h.client();
  t.is((await w1.request({ cmd: 'job.watch' }))['status'], 'ok');
  t.deepEqual(await w2.request({ cmd: 'job.watch' }), { version: 1, status: 'error', error: 'ELIMIT:max_streams', detail: { limit: 1 } });
  t.deepEqual(await w2.request({ cmd: 'ping' }), { version: 1, status: 'ok', reply: 'pong' });
  w1.destroy();
  // the watch ended with its connection: its place is free (waited for by retrying on the close, bounded)
  let r: Record<string, unknown> = {};
  for (let i = 0; i < 50 && r['status'] !== 'ok'; i++) r = await w2.request({ cmd: 'job.watch' });
  t.is(r['status'], 'ok', JSON.stringify(r));
});
