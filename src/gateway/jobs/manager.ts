/**
 * The daemon's job service (docs/jobs.md): validates and journals submits, keeps one FIFO queue per
 * link and runs one transfer at a time on each (links in parallel), maps the flasher's verdicts to
 * target states, and recovers after a crash.
 *
 * Durability rules, in the order things happen:
 *   - submit: image to the cache (durable) → record appended to the journal (fdatasync) → answer.
 *     Any write failure refuses the submit with `journal_unwritable`; nothing of it stays.
 *   - start: the IN_PROGRESS snapshot is journalled BEFORE flasher.flash() is called, so a job the
 *     journal still calls QUEUED never touched a wire (it is run after a restart, once); if that
 *     append fails the job stays QUEUED and the start is retried later.
 *   - verdicts and the end: journalled as they happen (one append per flasher callback that
 *     brings verdicts, never per progress tick); watchers hear of a change after it is journalled.
 *     If such an append fails the change stays in memory, is logged, and is written with the next
 *     append that succeeds (a crash before that shows the job as interrupted).
 *   - open: jobs the journal has IN_PROGRESS were cut off: their unfinished targets become FAILED
 *     (EINTR, `interrupted`); QUEUED jobs are queued again in submit order. No link resumes a
 *     transfer today, so nothing is resumed.
 *   - close: running transfers are aborted (so the links are free) but nothing more is journalled:
 *     those jobs stay IN_PROGRESS on disk and are `interrupted` at the next open, exactly as after a
 *     crash; queued jobs stay queued and run after the next open.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { mapFile, type MappedFile } from '../../persist/native.js';
import type { PersistError } from '../../persist/errors.js';
import { checkImageToSend } from '../../link/image-check.js';
import type { FlashOptions, FlashProgress, FlashResult, Flasher, TargetVerdict } from '../../link/flasher.js';
import { DEFAULT_MAX_IMAGE_BYTES, ImageCache, sha256Hex } from './image-cache.js';
import { JobJournal, JournalWriteError, writeErrorOf, type JobsFs, type JournalReport } from './journal.js';
import {
  TERMINAL_TARGET_STATES,
  deriveJobState,
  type JobError,
  type JobOptions,
  type JobEvent,
  type JobListFilter,
  type JobRecord,
  type JobResult,
  type JobService,
  type JobSubmit,
  type JobSubmitter,
  type JobTarget,
  type TargetState,
} from './types.js';

export const DEFAULT_MAX_FINISHED = 1000;
export const DEFAULT_MAX_AGE_S = 7 * 24 * 3600;
export const DEFAULT_PROGRESS_HZ = 10;
/** Compaction when the journal holds more than 2 lines per retained job plus this. */
const COMPACT_SLACK = 64;
const START_RETRY_MS = [1000, 2000, 5000, 10_000, 30_000] as const;
const CLOSE_WAIT_MS = 5000;

export type JobLogLevel = 'info' | 'warn' | 'error';

export interface JobManagerOptions {
  /** The state dir: `jobs.journal` and `images/` live in it. */
  dir: string;
  flashers: ReadonlyMap<string, Flasher>;
  /** Milliseconds; record times are this / 1000. */
  clock?: { now(): number };
  /** Finished jobs kept (newest by finish time); default 1000. */
  maxFinished?: number;
  /** Finished jobs older than this (seconds since they finished) are dropped; default 7 days. */
  maxAgeS?: number;
  /** Largest image a submit may carry; default 1 MiB. */
  maxImageBytes?: number;
  /** The targets the link's last scan found, or null when it was never scanned. */
  lastScan?: (link: string) => string[] | null;
  /** job.progress events per job per second at most (default 10). */
  progressHz?: number;
  /** Problems that are nobody's answer (a verdict that could not be journalled, a compaction that failed). */
  log?: (level: JobLogLevel, msg: string, data?: Record<string, unknown>) => void;
  /** Test hook: the fs the journal and the image cache use. */
  fs?: JobsFs;
}

/** What open() found and did; the caller logs it. */
export interface RecoveryReport {
  journal: JournalReport;
  /** Jobs retained after recovery. */
  jobs: number;
  /** Jobs that were running when the gateway stopped: now FAILED `interrupted`. */
  interrupted: string[];
  /** Jobs that had not started: queued again, in submit order. */
  requeued: string[];
  /** Queued jobs whose link is no longer configured: FAILED `no_such_link`. */
  orphaned: string[];
  /** Finished jobs dropped by retention. */
  pruned: number;
  /** Image files no retained job needs (and temp files), deleted. */
  images_swept: string[];
  compacted: boolean;
  /** The journal cannot be written (opened read-only, or the recovery records failed); kept in memory and retried. */
  write_error: string | null;
  elapsed_ms: number;
}

interface Running {
  id: string;
  link: string;
  ac: AbortController;
  cancelBy: JobSubmitter | null;
  done: Promise<void>;
  size: number;
  acked: Map<string, number>;
  total: number;
  withVerdict: Set<string>;
  pendingProgress: Set<string>;
  lastProgressAt: number;
  progressTimer: NodeJS.Timeout | null;
  ended: boolean;
}

interface Lane {
  link: string;
  queue: string[];
  running: Running | null;
  retry: NodeJS.Timeout | null;
  retryIndex: number;
}

const idNum = (id: string): number => Number(id.slice(2));

function freezeJob(j: JobRecord): JobRecord {
  for (const t of j.targets) {
    if (t.error) Object.freeze(t.error);
    Object.freeze(t);
  }
  Object.freeze(j.targets);
  Object.freeze(j.image);
  Object.freeze(j.options);
  Object.freeze(j.submitted_by);
  return Object.freeze(j);
}

function refused(code: JobError['code'], reason: string, message: string, field?: string): { ok: false; error: JobError } {
  return { ok: false, error: field === undefined ? { code, reason, message } : { code, reason, message, field } };
}

/** The JobError for a write that failed: ENOSPC, EROFS or EIO, reason `journal_unwritable`. */
export function unwritable(e: JournalWriteError, what = 'the job was not accepted'): JobError {
  const code: JobError['code'] = e.errno === 'ENOSPC' || e.errno === 'EDQUOT' ? 'ENOSPC' : e.errno === 'EROFS' ? 'EROFS' : 'EIO';
  return { code, reason: 'journal_unwritable', message: `${what}: ${e.message}` };
}

type OptionCheck = (v: unknown) => string | null;
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const OPTION_CHECKS: Record<keyof JobOptions, OptionCheck> = {
  force: (v) => (typeof v === 'boolean' ? null : 'must be true or false'),
  fd: (v) => (typeof v === 'boolean' ? null : 'must be true or false'),
  chunk: (v) => (isInt(v) && v >= 1 && v <= 65536 ? null : 'must be an integer 1..65536'),
  window: (v) => (isInt(v) && v >= 1 && v <= 65536 ? null : 'must be an integer 1..65536'),
  timeout_ms: (v) => (isInt(v) && v >= 1 && v <= 3_600_000 ? null : 'must be an integer 1..3600000 (ms)'),
  retries: (v) => (isInt(v) && v >= 0 && v <= 100 ? null : 'must be an integer 0..100'),
  session: (v) => (isInt(v) && v >= 1 && v <= 255 ? null : 'must be an integer 1..255'),
  compress: (v) => (typeof v === 'boolean' ? null : 'must be true or false'),
  delta: (v) => (typeof v === 'boolean' ? null : 'must be true or false'),
};

/** Validates a submit's options: a copy with the known keys, or the error naming `options.<key>`. */
export function checkOptions(o: unknown): JobResult<JobOptions> {
  if (o === undefined || o === null) return { ok: true, value: {} };
  if (typeof o !== 'object' || Array.isArray(o)) return refused('EINVAL', 'bad_options', 'options must be an object', 'options');
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined) continue;
    const check = Object.hasOwn(OPTION_CHECKS, k) ? OPTION_CHECKS[k as keyof JobOptions] : undefined;
    if (!check) return refused('EINVAL', 'unknown_option', `unknown option ${JSON.stringify(k)}; known: ${Object.keys(OPTION_CHECKS).join(', ')}`, `options.${k}`);
    const why = check(v);
    if (why) return refused('EINVAL', 'bad_option', `options.${k} ${why}, got ${JSON.stringify(v)}`, `options.${k}`);
    out[k] = v;
  }
  return { ok: true, value: out as JobOptions };
}

/** A job's options as the Flasher takes them. */
export function flashOptionsOf(o: JobOptions): FlashOptions {
  const out: FlashOptions = {};
  if (o.force !== undefined) out.force = o.force;
  if (o.fd !== undefined) out.fd = o.fd;
  if (o.chunk !== undefined) out.chunk = o.chunk;
  if (o.window !== undefined) out.window = o.window;
  if (o.timeout_ms !== undefined) out.timeoutMs = o.timeout_ms;
  if (o.retries !== undefined) out.retries = o.retries;
  if (o.session !== undefined) out.session = o.session;
  if (o.compress !== undefined) out.compress = o.compress;
  if (o.delta !== undefined) out.delta = o.delta;
  return out;
}

/** The target state a verdict means. */
export function stateOfVerdict(v: TargetVerdict): TargetState {
  if (v.ok) return v.outcome === 'current' ? 'SKIPPED' : 'SUCCEEDED';
  if (v.code === 'ETIMEDOUT') return 'TIMED_OUT';
  if (v.code === 'ECANCELED') return 'CANCELED';
  return 'FAILED';
}

/** The lock file that keeps a second gateway process off a state dir whose journal this one writes. */
export const LOCK_FILE = 'jobs.lock';

/**
 * An exclusive flock on `<dir>/jobs.lock`, held while the manager is open: two processes appending
 * to one journal would interleave their lines and each would replay the other's jobs as its own.
 */
function lockStateDir(dir: string): MappedFile | null {
  try {
    mkdirSync(dir, { recursive: true });
    const path = join(dir, LOCK_FILE);
    // `create` makes a new file only (O_EXCL): a lock file left by an earlier run is opened as it is.
    return mapFile(path, 4096, { create: !existsSync(path), lock: true });
  } catch (e) {
    const pe = e as PersistError;
    if (pe.reason === 'ewouldblock') {
      throw new Error(`${dir} is in use: another gateway process holds ${LOCK_FILE} (one state dir per gateway)`);
    }
    // A read-only state dir: nothing can be written, so nothing can be interleaved; the manager
    // opens read-only (submits are refused with the reason, see recovery.write_error).
    if (pe.reason === 'erofs' || pe.code === 'EACCES' || pe.code === 'EPERM') return null;
    throw e;
  }
}

export class JobManager implements JobService {
  private lock: MappedFile | null = null;
  /** What open() found and did. */
  readonly recovery: RecoveryReport;
  readonly maxImageBytes: number;

  private readonly byId = new Map<string, JobRecord>();
  /** Retained ids in submit order (ascending number). */
  private order: string[] = [];
  /** Finished ids, oldest finish first. */
  private finished: string[] = [];
  private readonly lanes = new Map<string, Lane>();
  private readonly watchers = new Set<(e: JobEvent) => void>();
  /** Ids whose in-memory record is newer than the journal (an append failed). */
  private readonly dirty = new Set<string>();
  private nextId = 1;
  private closed = false;
  private readonly clock: { now(): number };
  private readonly maxFinished: number;
  private readonly maxAgeS: number;
  private readonly progressMs: number;
  private readonly log: NonNullable<JobManagerOptions['log']>;
  private pruneTimer: NodeJS.Timeout | null = null;
  private startTimer: NodeJS.Immediate | null = null;

  private constructor(
    private readonly journal: JobJournal,
    private readonly cache: ImageCache,
    private readonly flashers: ReadonlyMap<string, Flasher>,
    private readonly opts: JobManagerOptions,
  ) {
    this.clock = opts.clock ?? { now: () => Date.now() };
    this.maxFinished = opts.maxFinished ?? DEFAULT_MAX_FINISHED;
    this.maxAgeS = opts.maxAgeS ?? DEFAULT_MAX_AGE_S;
    this.maxImageBytes = cache.maxImageBytes;
    this.progressMs = 1000 / (opts.progressHz ?? DEFAULT_PROGRESS_HZ);
    this.log = opts.log ?? (() => {});
    for (const link of flashers.keys()) this.lanes.set(link, { link, queue: [], running: null, retry: null, retryIndex: 0 });
    this.recovery = undefined as unknown as RecoveryReport;
  }

  /**
   * Opens (creating when needed) the journal and image cache in `opts.dir`, replays the journal and
   * recovers (see the file comment). Queued jobs start on the next turn of the event loop, so a
   * caller can `watch` right after `await open()`. A journal that cannot be written (a read-only
   * file system) is still replayed and listed: `recovery.write_error` says why, and submits are
   * refused with that reason until a write works again. Rejects (JournalWriteError) only when the
   * state dir cannot be created or the journal cannot be read.
   */
  static async open(opts: JobManagerOptions): Promise<JobManager> {
    const t0 = performance.now();
    const fsOpt = opts.fs ? { fs: opts.fs } : {};
    const lock = lockStateDir(opts.dir);
    let journal: JobJournal;
    let replay: ReturnType<typeof JobJournal.open>['replay'];
    let cache: ImageCache;
    try {
      ({ journal, replay } = JobJournal.open(opts.dir, fsOpt));
      try {
        cache = ImageCache.open(opts.dir, { maxImageBytes: opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES, ...fsOpt });
      } catch (e) {
        journal.close();
        throw e;
      }
    } catch (e) {
      lock?.unmap();
      throw e;
    }
    const m = new JobManager(journal, cache, opts.flashers, opts);
    m.lock = lock;
    (m as { recovery: RecoveryReport }).recovery = m.recover(replay, t0);
    m.startTimer = setImmediate(() => {
      m.startTimer = null;
      for (const link of m.lanes.keys()) m.pump(link);
    });
    m.pruneTimer = setInterval(() => m.prune(), 60_000);
    m.pruneTimer.unref();
    return m;
  }

  // ---- JobService ----------------------------------------------------------------------------

  async submit(s: JobSubmit): Promise<JobResult<JobRecord>> {
    return this.submitNow(s);
  }

  get(id: string): JobRecord | undefined {
    return this.byId.get(id);
  }

  list(filter: JobListFilter = {}): JobRecord[] {
    const limit = filter.limit ?? 100;
    const out: JobRecord[] = [];
    if (!(limit > 0)) return out;
    for (let i = this.order.length - 1; i >= 0; i--) {
      const j = this.byId.get(this.order[i]!)!;
      if (filter.state !== undefined && j.state !== filter.state) continue;
      if (filter.link !== undefined && j.link !== filter.link) continue;
      out.push(j);
      if (out.length >= limit) break;
    }
    return out;
  }

  async cancel(id: string, by: JobSubmitter): Promise<JobResult<JobRecord>> {
    const job = this.byId.get(id);
    if (!job) return refused('ESRCH', 'no_such_job', `no job ${JSON.stringify(id)} on this gateway`, 'id');
    if (this.closed) return refused('EBUSY', 'closed', 'the job service is shutting down');
    if (job.state === 'QUEUED') {
      const ts = this.nowS();
      const targets = job.targets.map((t): JobTarget => ({
        ...t,
        state: 'CANCELED',
        error: { code: 'ECANCELED', where: 'queue', reason: 'canceled', message: `canceled by ${by.name} before it started` },
        updated_ts: ts,
      }));
      const next = this.next(job, { targets, finished_ts: ts, reason: 'canceled' });
      try {
        this.append(next);
      } catch (e) {
        return { ok: false, error: unwritable(writeErrorOf(e, 'append', this.journal.path), 'the job was not canceled') };
      }
      const lane = this.lanes.get(job.link);
      if (lane) lane.queue = lane.queue.filter((q) => q !== id);
      this.store(next);
      this.finished.push(id);
      this.emit({ type: 'job.canceled', job: next });
      this.prune();
      return { ok: true, value: next };
    }
    const lane = this.lanes.get(job.link);
    const r = lane?.running;
    if (job.state === 'IN_PROGRESS' && r && r.id === id) {
      if (!r.cancelBy) {
        r.cancelBy = by;
        r.ac.abort(new Error(`canceled by ${by.name}`));
      }
      return { ok: true, value: job };
    }
    return refused('EBUSY', 'already_finished', `job ${id} has finished (${job.state}); there is nothing to cancel`, 'id');
  }

  links(): string[] {
    return [...this.flashers.keys()];
  }

  watch(fn: (e: JobEvent) => void): () => void {
    this.watchers.add(fn);
    return () => {
      this.watchers.delete(fn);
    };
  }

  // ---- beyond the interface ------------------------------------------------------------------

  /** The size check for an upload's declared length, to make before allocating its buffer. */
  checkImageSize(size: number): JobError | null {
    return this.cache.checkSize(size);
  }

  /** Applies retention now (it also runs after every finish, at open and once a minute). */
  prune(): number {
    if (this.closed) return 0;
    const cutoff = this.nowS() - this.maxAgeS;
    let n = 0;
    while (this.finished.length > 0) {
      const id = this.finished[0]!;
      const j = this.byId.get(id);
      if (j && this.finished.length <= this.maxFinished && (j.finished_ts ?? 0) >= cutoff) break;
      this.finished.shift();
      if (j) this.evict(j);
      n++;
    }
    if (n > 0) this.order = this.order.filter((id) => this.byId.has(id));
    this.maybeCompact();
    return n;
  }

  /**
   * Stops: no more submits; running transfers are aborted and NOT journalled further (they are
   * `interrupted` at the next open, like after a crash); queued jobs stay queued for the next open.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.startTimer) clearImmediate(this.startTimer);
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    const running: Promise<void>[] = [];
    for (const lane of this.lanes.values()) {
      if (lane.retry) clearTimeout(lane.retry);
      const r = lane.running;
      if (r) {
        if (r.progressTimer) clearTimeout(r.progressTimer);
        r.ac.abort(new Error('shutdown'));
        running.push(r.done);
      }
    }
    if (running.length > 0) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([Promise.allSettled(running), new Promise((res) => (t = setTimeout(res, CLOSE_WAIT_MS)))]);
      clearTimeout(t);
    }
    this.watchers.clear();
    this.journal.close();
    this.lock?.unmap();
    this.lock = null;
  }

  // ---- submit --------------------------------------------------------------------------------

  private submitNow(s: JobSubmit): JobResult<JobRecord> {
    if (this.closed) return refused('EBUSY', 'closed', 'the job service is shutting down');
    if (typeof s !== 'object' || s === null) return refused('EINVAL', 'bad_request', 'a submit must be an object');
    const flasher = typeof s.link === 'string' ? this.flashers.get(s.link) : undefined;
    if (!flasher) {
      return refused('ENOENT', 'no_such_link', `no master link ${JSON.stringify(s.link)}; links: ${this.links().join(', ') || '(none)'}`, 'link');
    }
    // targets
    let targets: readonly string[];
    if (s.targets === undefined || s.targets === null || (Array.isArray(s.targets) && s.targets.length === 0)) {
      const scanned = this.opts.lastScan?.(s.link) ?? null;
      if (scanned === null) return refused('EINVAL', 'no_scan', `no targets given and link ${s.link} has no scan yet`, 'targets');
      if (scanned.length === 0) return refused('EINVAL', 'no_targets', `no targets given and the last scan of ${s.link} found none`, 'targets');
      targets = scanned;
    } else if (!Array.isArray(s.targets)) {
      return refused('EINVAL', 'bad_targets', 'targets must be a list of target names', 'targets');
    } else {
      targets = s.targets;
    }
    const seen = new Set<string>();
    for (const t of targets) {
      if (typeof t !== 'string') return refused('EINVAL', 'bad_target', `a target must be a string, got ${JSON.stringify(t)}`, 'targets');
      const why = flasher.checkTarget(t);
      if (why !== null) return refused('EINVAL', 'bad_target', `target ${JSON.stringify(t)} on ${s.link}: ${why}`, 'targets');
      if (seen.has(t)) return refused('EINVAL', 'duplicate_target', `target ${JSON.stringify(t)} is listed twice`, 'targets');
      seen.add(t);
    }
    // options
    const opt = checkOptions(s.options);
    if (!opt.ok) return opt;
    // image
    const img = s.image as { bytes?: unknown; name?: unknown } | undefined;
    if (!img || !(img.bytes instanceof Uint8Array)) return refused('EINVAL', 'bad_image', 'image.bytes must be the image bytes', 'image');
    const bytes = img.bytes;
    const sizeErr = this.cache.checkSize(bytes.length);
    if (sizeErr) return { ok: false, error: sizeErr };
    const name = typeof img.name === 'string' ? img.name : '';
    const checked = checkImageToSend(bytes, name || 'the upload');
    if (!checked.ok) return refused('EINVAL', checked.error.reason, checked.error.message, 'image');
    if (s.client_token !== undefined && s.client_token !== null && typeof s.client_token !== 'string') {
      return refused('EINVAL', 'bad_client_token', 'client_token must be a string', 'client_token');
    }
    const by = s.by as JobSubmitter | undefined;
    if (!by || typeof by.name !== 'string' || typeof by.role !== 'string' || (by.via !== 'control' && by.via !== 'mqtt')) {
      return refused('EINVAL', 'bad_submitter', 'by must name the submitter (name, role, via)', 'by');
    }

    const sha = sha256Hex(bytes);
    const ts = this.nowS();
    const n = this.nextId++;
    const job = freezeJob({
      id: `j-${n}`,
      link: s.link,
      image: { name: name || `upload:${sha.slice(0, 12)}`, sha256: sha, size: bytes.length, app_name: checked.appName || null },
      options: opt.value,
      state: 'QUEUED',
      targets: targets.map((t) => ({ target: t, state: 'QUEUED', outcome: null, error: null, from: null, to: null, acked_bytes: 0, updated_ts: ts })),
      submitted_by: { name: by.name, role: by.role, via: by.via },
      client_token: s.client_token ?? null,
      submitted_ts: ts,
      started_ts: null,
      finished_ts: null,
      reason: null,
      revision: 1,
    });
    try {
      this.cache.put(bytes, sha);
    } catch (e) {
      return { ok: false, error: unwritable(writeErrorOf(e, 'write image', this.cache.dir)) };
    }
    try {
      this.append(job);
    } catch (e) {
      this.cache.discard(sha);
      return { ok: false, error: unwritable(writeErrorOf(e, 'append', this.journal.path)) };
    }
    this.cache.ref(sha);
    this.store(job);
    this.order.push(job.id);
    this.lanes.get(job.link)!.queue.push(job.id);
    this.emit({ type: 'job.submitted', job });
    this.pump(job.link);
    return { ok: true, value: job };
  }

  // ---- running -------------------------------------------------------------------------------

  private pump(link: string): void {
    const lane = this.lanes.get(link);
    if (!lane || this.closed || lane.running || lane.retry || this.startTimer) return;
    while (lane.queue.length > 0) {
      const id = lane.queue[0]!;
      const job = this.byId.get(id);
      if (!job || job.state !== 'QUEUED') {
        lane.queue.shift();
        continue;
      }
      const image = this.cache.read(job.image.sha256);
      if (!image) {
        lane.queue.shift();
        const ts = this.nowS();
        const err = { code: 'EIO', where: 'gateway', reason: 'image_missing', message: `the job's image ${job.image.sha256} is missing or damaged in ${this.cache.dir}` };
        const failed = this.next(job, {
          targets: job.targets.map((t) => ({ ...t, state: 'FAILED' as const, error: err, updated_ts: ts })),
          finished_ts: ts,
          reason: 'image_missing',
        });
        this.persist(failed);
        this.store(failed);
        this.finished.push(id);
        this.emit({ type: 'job.finished', job: failed });
        this.prune();
        continue;
      }
      const ts = this.nowS();
      const started = this.next(job, {
        targets: job.targets.map((t) => ({ ...t, state: 'IN_PROGRESS' as const, updated_ts: ts })),
        started_ts: ts,
      });
      try {
        this.append(started);
      } catch (e) {
        // Not journalled, so not started: it stays QUEUED and the start is tried again later.
        const delay = START_RETRY_MS[Math.min(lane.retryIndex++, START_RETRY_MS.length - 1)]!;
        this.log('error', `job ${id} cannot start: its start cannot be journalled; retrying in ${delay} ms`, { job: id, error: String(e) });
        lane.retry = setTimeout(() => {
          lane.retry = null;
          this.pump(link);
        }, delay);
        lane.retry.unref();
        return;
      }
      lane.retryIndex = 0;
      lane.queue.shift();
      this.store(started);
      this.emit({ type: 'job.started', job: started });
      this.run(lane, started, image);
      return;
    }
  }

  private run(lane: Lane, job: JobRecord, image: Uint8Array): void {
    const flasher = this.flashers.get(job.link)!;
    const r: Running = {
      id: job.id,
      link: job.link,
      ac: new AbortController(),
      cancelBy: null,
      done: Promise.resolve(),
      size: image.length,
      acked: new Map(),
      total: image.length,
      withVerdict: new Set(),
      pendingProgress: new Set(),
      lastProgressAt: -Infinity,
      progressTimer: null,
      ended: false,
    };
    lane.running = r;
    r.done = (async () => {
      let result: FlashResult | null = null;
      let thrown: unknown = null;
      try {
        result = await flasher.flash({
          image,
          ...(job.image.app_name ? { appName: job.image.app_name } : {}),
          targets: job.targets.map((t) => t.target),
          options: flashOptionsOf(job.options),
          signal: r.ac.signal,
          onProgress: (p) => this.onProgress(r, p),
        });
      } catch (e) {
        thrown = e;
      }
      try {
        this.finish(r, result, thrown);
      } catch (e) {
        this.log('error', `job ${r.id}: finishing failed`, { job: r.id, error: String(e) });
      }
    })().finally(() => {
      lane.running = null;
      this.pump(lane.link);
    });
  }

  private onProgress(r: Running, p: FlashProgress): void {
    if (this.closed || r.ended) return;
    try {
      r.total = p.totalBytes;
      for (const t of p.targets) {
        if (r.acked.get(t.target) !== t.ackedBytes) {
          r.acked.set(t.target, t.ackedBytes);
          if (!r.withVerdict.has(t.target)) r.pendingProgress.add(t.target);
        }
      }
      const fresh = p.verdicts.filter((v) => !r.withVerdict.has(v.target));
      if (fresh.length > 0) this.applyVerdicts(r, fresh);
      if (r.pendingProgress.size > 0 && !r.progressTimer) {
        const wait = r.lastProgressAt + this.progressMs - performance.now();
        if (wait <= 0) this.flushProgress(r);
        else {
          r.progressTimer = setTimeout(() => {
            r.progressTimer = null;
            this.flushProgress(r);
          }, wait);
          r.progressTimer.unref();
        }
      }
    } catch (e) {
      this.log('error', `job ${r.id}: progress handling failed`, { job: r.id, error: String(e) });
    }
  }

  /** Progress goes to watchers only (rate-limited); the record's acked_bytes move within a revision. */
  private flushProgress(r: Running): void {
    if (this.closed || r.ended || r.pendingProgress.size === 0) return;
    r.lastProgressAt = performance.now();
    const job = this.byId.get(r.id);
    if (!job) return;
    const pending = r.pendingProgress;
    r.pendingProgress = new Set();
    const targets = job.targets.map((t) => (pending.has(t.target) && t.state === 'IN_PROGRESS' ? { ...t, acked_bytes: r.acked.get(t.target) ?? t.acked_bytes } : t));
    const now = freezeJob({ ...job, targets });
    this.store(now);
    for (const t of pending) {
      if (r.withVerdict.has(t)) continue;
      this.emit({ type: 'job.progress', job: now, target: t, acked_bytes: r.acked.get(t) ?? 0, total_bytes: r.total });
    }
  }

  private targetOf(old: JobTarget, v: TargetVerdict, ts: number, r: Running): JobTarget {
    const state = stateOfVerdict(v);
    // SKIPPED: the target already ran the image, nothing was sent to it.
    const acked = state === 'SUCCEEDED' ? r.size : state === 'SKIPPED' ? 0 : r.acked.get(old.target) ?? old.acked_bytes;
    if (v.ok) return { ...old, state, outcome: v.outcome, error: null, from: v.from, to: v.to, acked_bytes: acked, updated_ts: ts, ...(v.transfer ? { transfer: v.transfer } : {}) };
    return { ...old, state, outcome: null, error: { code: v.code, where: v.where, reason: v.reason, message: v.message }, acked_bytes: acked, updated_ts: ts };
  }

  private applyVerdicts(r: Running, verdicts: TargetVerdict[]): void {
    const job = this.byId.get(r.id);
    if (!job) return;
    const ts = this.nowS();
    const byTarget = new Map(verdicts.map((v) => [v.target, v]));
    const changed: string[] = [];
    const targets = job.targets.map((t) => {
      const v = byTarget.get(t.target);
      if (!v || r.withVerdict.has(t.target) || TERMINAL_TARGET_STATES.has(t.state)) return t;
      r.withVerdict.add(t.target);
      r.pendingProgress.delete(t.target);
      changed.push(t.target);
      return this.targetOf(t, v, ts, r);
    });
    if (changed.length === 0) return;
    const next = this.next(job, { targets });
    this.persist(next);
    this.store(next);
    for (const t of next.targets) if (changed.includes(t.target)) this.emit({ type: 'job.target', job: next, target: t });
  }

  private finish(r: Running, result: FlashResult | null, thrown: unknown): void {
    r.ended = true;
    if (r.progressTimer) clearTimeout(r.progressTimer);
    if (this.closed) return; // like a crash: the journal keeps it IN_PROGRESS (docs/jobs.md)
    const job = this.byId.get(r.id);
    if (!job) return;
    const ts = this.nowS();
    const verdicts = new Map((result?.verdicts ?? []).map((v) => [v.target, v]));
    const aborted = r.ac.signal.aborted;
    const thrownMsg = thrown instanceof Error ? thrown.message : String(thrown);
    const changed: string[] = [];
    const targets = job.targets.map((t): JobTarget => {
      if (TERMINAL_TARGET_STATES.has(t.state)) return t;
      changed.push(t.target);
      const v = verdicts.get(t.target);
      if (v) return this.targetOf(t, v, ts, r);
      const acked = r.acked.get(t.target) ?? t.acked_bytes;
      let error: NonNullable<JobTarget['error']>;
      let state: TargetState = 'FAILED';
      if (aborted && r.cancelBy) {
        state = 'CANCELED';
        error = { code: 'ECANCELED', where: 'gateway', reason: 'canceled', message: `canceled by ${r.cancelBy.name}` };
      } else if (thrown !== null) {
        error = { code: thrown instanceof RangeError ? 'EINVAL' : 'EIO', where: 'gateway', reason: 'flasher_error', message: `the ${job.link} flasher failed: ${thrownMsg}` };
      } else {
        error = { code: 'EIO', where: 'gateway', reason: 'no_verdict', message: `the ${job.link} flasher gave no verdict for target ${t.target}` };
      }
      return { ...t, state, outcome: null, error, acked_bytes: acked, updated_ts: ts };
    });
    let reason: string | null = null;
    if (r.cancelBy) reason = 'canceled';
    else if (thrown !== null) reason = 'flasher_error';
    else {
      const reasons = new Set(targets.filter((t) => t.error).map((t) => t.error!.reason));
      if (reasons.size === 1) reason = [...reasons][0]!;
    }
    const next = this.next(job, { targets, finished_ts: ts, reason });
    this.persist(next);
    this.store(next);
    for (const t of next.targets) if (changed.includes(t.target)) this.emit({ type: 'job.target', job: next, target: t });
    this.finished.push(next.id);
    this.emit({ type: r.cancelBy ? 'job.canceled' : 'job.finished', job: next });
    this.prune();
  }

  // ---- records, journal, retention -----------------------------------------------------------

  private nowS(): number {
    return this.clock.now() / 1000;
  }

  /** The next revision of `job` with `patch` applied; the state is derived from the targets. */
  private next(job: JobRecord, patch: Partial<JobRecord>): JobRecord {
    const targets = patch.targets ?? job.targets;
    return freezeJob({ ...job, ...patch, targets, state: deriveJobState(targets), revision: job.revision + 1 });
  }

  private store(job: JobRecord): void {
    this.byId.set(job.id, job);
  }

  /** Appends `job` (and any record an earlier failed append left in memory only). Throws on failure. */
  private append(job: JobRecord): void {
    const recs = [];
    for (const id of this.dirty) {
      const d = this.byId.get(id);
      if (d && id !== job.id) recs.push({ k: 'job' as const, next_id: this.nextId, job: d });
    }
    recs.push({ k: 'job' as const, next_id: this.nextId, job });
    this.journal.append(...recs);
    this.dirty.clear();
  }

  /** Like append, but a failure keeps the change in memory (logged, retried with the next append). */
  private persist(job: JobRecord): void {
    try {
      this.append(job);
    } catch (e) {
      this.dirty.add(job.id);
      this.log('error', `job ${job.id}: a change could not be journalled; kept in memory and retried`, { job: job.id, error: String(e) });
    }
  }

  private evict(job: JobRecord): void {
    this.byId.delete(job.id);
    this.dirty.delete(job.id);
    this.cache.unref(job.image.sha256);
  }

  private maybeCompact(): boolean {
    if (this.closed || this.journal.lines <= 2 * this.byId.size + COMPACT_SLACK) return false;
    return this.rewriteJournal();
  }

  /** Rewrites the journal now: one snapshot per retained job (it also happens by itself as the journal grows). */
  compact(): boolean {
    if (this.closed) return false;
    return this.rewriteJournal();
  }

  private rewriteJournal(): boolean {
    try {
      this.journal.rewrite(this.order.map((id) => this.byId.get(id)!), this.nextId);
      this.dirty.clear();
      return true;
    } catch (e) {
      this.log('warn', 'journal compaction failed; the journal is unchanged', { error: String(e) });
      return false;
    }
  }

  private emit(e: JobEvent): void {
    for (const fn of this.watchers) {
      try {
        fn(e);
      } catch (err) {
        this.log('warn', 'a job watcher threw', { error: String(err) });
      }
    }
  }

  private recover(replay: ReturnType<typeof JobJournal.open>['replay'], t0: number): RecoveryReport {
    this.nextId = replay.nextId;
    const ts = this.nowS();
    const interrupted: string[] = [];
    const requeued: string[] = [];
    const orphaned: string[] = [];
    const changed: JobRecord[] = [];
    const jobs = [...replay.jobs.values()].sort((a, b) => idNum(a.id) - idNum(b.id));
    for (const raw of jobs) {
      let job = freezeJob(raw);
      const done = job.targets.length > 0 && job.targets.every((t) => TERMINAL_TARGET_STATES.has(t.state));
      if (!done && job.targets.length > 0 && job.targets.every((t) => t.state === 'QUEUED') && job.started_ts === null) {
        const lane = this.lanes.get(job.link);
        if (lane) {
          lane.queue.push(job.id);
          requeued.push(job.id);
        } else {
          const err = { code: 'ENOENT', where: 'gateway', reason: 'no_such_link', message: `link ${job.link} is no longer configured` };
          job = this.next(job, { targets: job.targets.map((t) => ({ ...t, state: 'FAILED' as const, error: err, updated_ts: ts })), finished_ts: ts, reason: 'no_such_link' });
          changed.push(job);
          orphaned.push(job.id);
        }
      } else if (!done) {
        const err = { code: 'EINTR', where: 'gateway', reason: 'interrupted', message: 'the gateway stopped while this target was being flashed' };
        job = this.next(job, {
          targets: job.targets.map((t) => (TERMINAL_TARGET_STATES.has(t.state) ? t : { ...t, state: 'FAILED' as const, error: err, updated_ts: ts })),
          finished_ts: ts,
          reason: 'interrupted',
        });
        changed.push(job);
        interrupted.push(job.id);
      }
      this.byId.set(job.id, job);
      this.order.push(job.id);
      if (TERMINAL_TARGET_STATES.has(job.state)) this.finished.push(job.id);
    }
    this.finished.sort((a, b) => (this.byId.get(a)!.finished_ts ?? 0) - (this.byId.get(b)!.finished_ts ?? 0) || idNum(a) - idNum(b));
    // Retention (no images are referenced yet, so eviction deletes nothing here; the sweep does).
    const cutoff = ts - this.maxAgeS;
    let pruned = 0;
    while (this.finished.length > 0) {
      const j = this.byId.get(this.finished[0]!)!;
      if (this.finished.length <= this.maxFinished && (j.finished_ts ?? 0) >= cutoff) break;
      this.finished.shift();
      this.byId.delete(j.id);
      pruned++;
    }
    if (pruned > 0) this.order = this.order.filter((id) => this.byId.has(id));
    for (const id of this.order) this.cache.ref(this.byId.get(id)!.image.sha256);
    const swept = this.cache.sweep();
    let compacted = false;
    let writeError: string | null = this.journal.openError?.message ?? null;
    if (writeError) this.log('error', 'the job journal cannot be written; submits are refused until it can', { error: writeError });
    const needCompact = replay.report.damaged.length > 0 || pruned > 0 || this.journal.lines > 2 * this.byId.size + COMPACT_SLACK;
    if (needCompact) compacted = this.rewriteJournal();
    if (!compacted && changed.length > 0) {
      try {
        this.journal.append(...changed.map((job) => ({ k: 'job' as const, next_id: this.nextId, job })));
      } catch (e) {
        writeError = String(e instanceof Error ? e.message : e);
        for (const j of changed) this.dirty.add(j.id);
        this.log('error', 'the recovery records could not be journalled; kept in memory and retried', { error: writeError });
      }
    }
    return {
      journal: replay.report,
      jobs: this.byId.size,
      interrupted,
      requeued,
      orphaned,
      pruned,
      images_swept: swept,
      compacted,
      write_error: writeError,
      elapsed_ms: performance.now() - t0,
    };
  }
}
