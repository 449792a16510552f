/**
 * Jobs: the daemon as a master (docs/jobs.md). A job is an image, a link, targets and options; one
 * record per target with an honest state, kept in a write-ahead journal in the gateway's state dir.
 * The record below is the one shape everything shows: the journal stores it, `job.status` answers
 * it, MQTT publishes it retained at `<prefix>/<gw>/jobs/<id>`. Keys are snake_case like the rest of
 * the executive protocol; times are seconds (float) like the event envelope's `ts`.
 */
import type { TargetOutcome, TransferReport } from '../../link/flasher.js';

/**
 * A job's link options as requests carry them and records show them (snake_case, like every wire
 * key); `flashOptionsOf` (manager.ts) turns them into the Flasher's options. Checked in one place,
 * `checkOptions` (manager.ts), whichever plane the request came in on.
 */
export interface JobOptions {
  force?: boolean;
  fd?: boolean;
  chunk?: number;
  window?: number;
  timeout_ms?: number;
  retries?: number;
  session?: number;
  /** Issue 25: allow the compressed image / a delta patch (default true each; UART and CAN links). */
  compress?: boolean;
  delta?: boolean;
}

export type TargetState = 'QUEUED' | 'IN_PROGRESS' | 'SUCCEEDED' | 'SKIPPED' | 'FAILED' | 'CANCELED' | 'TIMED_OUT';
export type JobState = TargetState;

export const TERMINAL_TARGET_STATES: ReadonlySet<TargetState> = new Set(['SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELED', 'TIMED_OUT']);

export interface JobTarget {
  target: string;
  state: TargetState;
  /** For SUCCEEDED: installed | updated; SKIPPED: current. */
  outcome: TargetOutcome | null;
  /** For FAILED / TIMED_OUT / CANCELED: errno-style code, where, machine reason and a sentence. */
  error: { code: string; where: string; reason: string; message: string } | null;
  /** SHA-256 (or the prefix the link carries) the target ran before / runs now, when known. */
  from: string | null;
  to: string | null;
  acked_bytes: number;
  /** How the image went (issue 25: mode current | delta | compressed | raw, bytes_on_wire, ratio), when the link planned it. */
  transfer?: TransferReport;
  /** Seconds; when this target's state last changed. */
  updated_ts: number;
}

/** Who submitted: the token's name and role (or `local` on a tokenless loopback port), and the plane. */
export interface JobSubmitter {
  name: string;
  role: string;
  via: 'control' | 'mqtt';
}

export interface JobImage {
  /** The images-dir name it was submitted as, or `upload:<sha256 prefix>`. */
  name: string;
  sha256: string;
  size: number;
  app_name: string | null;
}

export interface JobRecord {
  /** `j-<n>`, increasing, never reused on this gateway (the journal remembers the last). */
  id: string;
  link: string;
  image: JobImage;
  options: JobOptions;
  /** The job's state, derived from its targets (see `deriveJobState`). */
  state: JobState;
  targets: JobTarget[];
  submitted_by: JobSubmitter;
  /** The request's `clientToken` (MQTT) or `client_token` (control), echoed in answers. */
  client_token: string | null;
  submitted_ts: number;
  started_ts: number | null;
  finished_ts: number | null;
  /** Why the job ended the way it did, when that is one thing (`interrupted`, `canceled`, ...). */
  reason: string | null;
  /** Bumped on every change; the retained MQTT document carries it so a reader can order updates. */
  revision: number;
}

/** What a submit asks for; the image bytes come from the images dir or an upload. */
export interface JobSubmit {
  link: string;
  /** Absent or empty: every node the link's last scan found. */
  targets?: readonly string[];
  image: { bytes: Uint8Array; name: string };
  options?: JobOptions;
  client_token?: string | null;
  by: JobSubmitter;
}

/** A refused request: nothing was journalled. `field` names the request field that was wrong. */
export interface JobError {
  code: 'EINVAL' | 'ENOENT' | 'ENOSPC' | 'EIO' | 'EROFS' | 'ESRCH' | 'EBUSY' | 'EPERM';
  reason: string;
  message: string;
  field?: string;
}

export type JobResult<T> = { ok: true; value: T } | { ok: false; error: JobError };

/** What the job service tells watchers (and the event bus / MQTT): one per change. */
export type JobEvent =
  | { type: 'job.submitted' | 'job.started' | 'job.finished' | 'job.canceled'; job: JobRecord }
  | { type: 'job.target'; job: JobRecord; target: JobTarget }
  | { type: 'job.progress'; job: JobRecord; target: string; acked_bytes: number; total_bytes: number };

export interface JobListFilter {
  state?: JobState;
  link?: string;
  /** Newest first, at most this many (default 100). */
  limit?: number;
}

/** The daemon's job service, as the control port and the MQTT command plane see it. */
export interface JobService {
  submit(s: JobSubmit): Promise<JobResult<JobRecord>>;
  get(id: string): JobRecord | undefined;
  list(filter?: JobListFilter): JobRecord[];
  cancel(id: string, by: JobSubmitter): Promise<JobResult<JobRecord>>;
  /** The master links jobs can run on. */
  links(): string[];
  /** Called for every change; returns the unsubscribe. */
  watch(fn: (e: JobEvent) => void): () => void;
}

/**
 * A job's state from its targets: QUEUED while none has started; IN_PROGRESS while any is queued
 * or running after one started; otherwise the worst terminal state (FAILED > TIMED_OUT > CANCELED >
 * SUCCEEDED > SKIPPED): a job SUCCEEDED only when every target SUCCEEDED or was SKIPPED, and a job
 * all of whose targets were SKIPPED is SKIPPED.
 */
export function deriveJobState(targets: readonly Pick<JobTarget, 'state'>[]): JobState {
  if (targets.length === 0) return 'FAILED';
  if (targets.every((t) => t.state === 'QUEUED')) return 'QUEUED';
  if (targets.some((t) => t.state === 'QUEUED' || t.state === 'IN_PROGRESS')) return 'IN_PROGRESS';
  for (const s of ['FAILED', 'TIMED_OUT', 'CANCELED', 'SUCCEEDED'] as const) if (targets.some((t) => t.state === s)) return s;
  return 'SKIPPED';
}
