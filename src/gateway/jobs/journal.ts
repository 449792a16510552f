/**
 * The job journal (docs/jobs.md#the-journal): one append-only file `<dir>/jobs.journal`, one line per
 * record, each line carrying the CRC-32 of its record bytes:
 *
 *   {"c":"<8 hex digits>","r":<record JSON>}\n
 *
 * The line is itself JSON (so `jq` reads the file), but the layout is fixed: bytes 0..5 are
 * `{"c":"`, 6..13 the CRC-32 (node:zlib crc32, lower-case hex) of the record bytes, 14..19 `","r":`,
 * then the record's UTF-8 JSON, then `}` and a newline. The CRC covers exactly the record bytes.
 *
 * Records are whole snapshots: `job` carries a full JobRecord (every change appends a new one; on
 * replay the last snapshot per id wins) and the `next_id` after it, so ids are never reused; `hdr`
 * opens a compacted file and carries `next_id` when no job is left to.
 *
 * Writes are synchronous (writeSync + fdatasyncSync) on purpose: an append is the commit point of a
 * change, and the manager changes its in-memory record, appends, and only then tells anyone. Doing
 * that in one turn of the event loop means no other submit, verdict or cancel can interleave with
 * it, so the journal's order is the order of the changes and no write queue (with its own failure
 * and reordering cases) is needed. The cost is one fdatasync of one short line per state change
 * (never per progress tick) and a rare compaction (a few hundred KiB at 1,000 retained jobs).
 *
 * A failed append is rolled back (ftruncate to the last good length) so a later append never
 * follows a half-written line; if even that fails the journal refuses appends until the rollback
 * succeeds. Replay reads every intact line in order; bytes after the last intact line (a torn
 * write) are dropped and counted; a damaged line followed by intact ones is reported and skipped.
 */
import * as nodeFs from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { JobRecord } from './types.js';

/** The fs calls the journal and the image cache make; tests pass a failing one. */
export type JobsFs = Pick<
  typeof nodeFs,
  | 'openSync' | 'closeSync' | 'writeSync' | 'fdatasyncSync' | 'fsyncSync' | 'ftruncateSync' | 'readFileSync'
  | 'renameSync' | 'unlinkSync' | 'mkdirSync' | 'readdirSync' | 'existsSync' | 'fstatSync'
>;

export const JOURNAL_FILE = 'jobs.journal';
export const JOURNAL_VERSION = 1;

export type JournalRecord =
  | { k: 'hdr'; v: number; next_id: number }
  | { k: 'job'; next_id: number; job: JobRecord };

export type DamageReason = 'bad_frame' | 'crc_mismatch' | 'bad_json' | 'bad_record';

export interface DamagedLine {
  /** 1-based line number in the file as read. */
  line: number;
  /** Byte offset of the line's first byte. */
  offset: number;
  length: number;
  reason: DamageReason;
}

/** What replay found; the caller logs it (a damaged line is never skipped silently). */
export interface JournalReport {
  path: string;
  bytes: number;
  /** Lines read (intact + damaged + torn). */
  lines: number;
  intact: number;
  /** Lines after the last intact line that were incomplete or failed their check: a torn write, dropped. */
  torn: number;
  torn_bytes: number;
  /** Damaged lines with intact lines after them: skipped, reported. */
  damaged: DamagedLine[];
}

export interface Replay {
  /** Last snapshot per id, in the order each id was first seen (= submit order). */
  jobs: Map<string, JobRecord>;
  /** The next job number to hand out (>= 1). */
  nextId: number;
  report: JournalReport;
}

/** A write that did not reach the disk; `errno` is the system's code (ENOSPC, EROFS, EIO, ...). */
export class JournalWriteError extends Error {
  constructor(
    readonly errno: string,
    readonly op: string,
    readonly path: string,
    message: string,
  ) {
    super(message);
    this.name = 'JournalWriteError';
  }
}

export function writeErrorOf(e: unknown, op: string, path: string): JournalWriteError {
  if (e instanceof JournalWriteError) return e;
  const errno = typeof (e as { code?: unknown })?.code === 'string' ? (e as { code: string }).code : 'EIO';
  const msg = e instanceof Error ? e.message : String(e);
  return new JournalWriteError(errno, op, path, `${op} ${path}: ${msg}`);
}

const PREFIX = Buffer.from('{"c":"', 'latin1'); // 6 bytes
const MIDDLE = Buffer.from('","r":', 'latin1'); // 6 bytes
const REC_AT = 20;
const HEX = /^[0-9a-f]{8}$/;

/** One line (with its newline) for a record. */
export function encodeLine(rec: JournalRecord): Buffer {
  const body = Buffer.from(JSON.stringify(rec), 'utf8');
  const crc = (crc32(body) >>> 0).toString(16).padStart(8, '0');
  return Buffer.concat([PREFIX, Buffer.from(crc, 'latin1'), MIDDLE, body, Buffer.from('}\n', 'latin1')]);
}

/** Checks one line (without its newline); the record or why not. */
export function decodeLine(line: Buffer): { ok: true; rec: JournalRecord } | { ok: false; reason: DamageReason } {
  if (line.length < REC_AT + 2 || !line.subarray(0, 6).equals(PREFIX) || !line.subarray(14, 20).equals(MIDDLE) || line[line.length - 1] !== 0x7d) {
    return { ok: false, reason: 'bad_frame' };
  }
  const hex = line.toString('latin1', 6, 14);
  if (!HEX.test(hex)) return { ok: false, reason: 'bad_frame' };
  const body = line.subarray(REC_AT, line.length - 1);
  if ((crc32(body) >>> 0) !== parseInt(hex, 16)) return { ok: false, reason: 'crc_mismatch' };
  let rec: unknown;
  try {
    rec = JSON.parse(body.toString('utf8'));
  } catch {
    return { ok: false, reason: 'bad_json' };
  }
  return isRecord(rec) ? { ok: true, rec } : { ok: false, reason: 'bad_record' };
}

function isRecord(r: unknown): r is JournalRecord {
  if (typeof r !== 'object' || r === null) return false;
  const o = r as Record<string, unknown>;
  if (!Number.isSafeInteger(o['next_id']) || (o['next_id'] as number) < 1) return false;
  if (o['k'] === 'hdr') return typeof o['v'] === 'number';
  if (o['k'] !== 'job') return false;
  const j = o['job'] as Record<string, unknown> | null;
  return typeof j === 'object' && j !== null && typeof j['id'] === 'string' && /^j-\d+$/.test(j['id']) &&
    typeof j['link'] === 'string' && Array.isArray(j['targets']) && typeof j['state'] === 'string' &&
    typeof j['image'] === 'object' && j['image'] !== null;
}

/** Parses a whole journal's bytes. Pure; exported for tests and the bench. */
export function replayBytes(buf: Buffer, path = JOURNAL_FILE): Replay {
  const jobs = new Map<string, JobRecord>();
  let nextId = 1;
  let lines = 0;
  let intact = 0;
  let goodEnd = 0; // byte after the last intact line's newline
  const failed: DamagedLine[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const nl = buf.indexOf(0x0a, pos);
    const end = nl < 0 ? buf.length : nl;
    lines++;
    const d = nl < 0 ? ({ ok: false, reason: 'bad_frame' } as const) : decodeLine(buf.subarray(pos, end));
    if (d.ok) {
      intact++;
      const rec = d.rec;
      if (rec.next_id > nextId) nextId = rec.next_id;
      if (rec.k === 'job') {
        const n = Number(rec.job.id.slice(2));
        if (n + 1 > nextId) nextId = n + 1;
        jobs.set(rec.job.id, rec.job);
      }
      goodEnd = nl + 1;
    } else {
      failed.push({ line: lines, offset: pos, length: end - pos, reason: d.reason });
    }
    pos = nl < 0 ? buf.length : nl + 1;
  }
  const damaged = failed.filter((f) => f.offset < goodEnd);
  const torn = failed.length - damaged.length;
  return {
    jobs,
    nextId,
    report: { path, bytes: buf.length, lines, intact, torn, torn_bytes: buf.length - goodEnd, damaged },
  };
}

export interface JournalOptions {
  fs?: JobsFs;
  file?: string;
}

/** The append-only job journal in `dir`. Open with `JobJournal.open`, which also replays it. */
export class JobJournal {
  readonly path: string;
  private fd: number | null = null;
  /** Bytes of intact lines; appends go after it. */
  private size = 0;
  private lineCount = 0;
  /** A failed append whose rollback also failed: refuse until a rollback works. */
  private poisoned: JournalWriteError | null = null;
  private closed = false;
  /** Why the file could not be opened for appending at open() (null: it could). */
  openError: JournalWriteError | null = null;

  private constructor(
    readonly dir: string,
    private readonly fs: JobsFs,
    file: string,
  ) {
    this.path = join(dir, file);
  }

  /**
   * Creates `dir` if needed, replays the file, cuts a torn tail off (so the next append starts on a
   * line of its own) and opens it for appending. When it cannot be opened for appending (a
   * read-only file system, ...) it still replays: `openError` says why, and every append tries the
   * open again and throws until it works. Throws a JournalWriteError only when the file exists but
   * cannot be read.
   */
  static open(dir: string, opts: JournalOptions = {}): { journal: JobJournal; replay: Replay } {
    const fs = opts.fs ?? nodeFs;
    const j = new JobJournal(dir, fs, opts.file ?? JOURNAL_FILE);
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw writeErrorOf(e, 'mkdir', dir);
    }
    let buf: Buffer;
    let existed = true;
    try {
      buf = fs.readFileSync(j.path);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ENOENT') throw writeErrorOf(e, 'read', j.path);
      buf = Buffer.alloc(0);
      existed = false;
    }
    const replay = replayBytes(buf, j.path);
    j.size = buf.length - replay.report.torn_bytes;
    j.lineCount = replay.report.intact + replay.report.damaged.length;
    try {
      j.ensureFd();
      if (!existed) j.syncDir();
    } catch (e) {
      // Read-only, or otherwise unwritable: the journal still replays; every append retries the
      // open and throws the reason until it works (a disk remounted read-write, space freed).
      j.closeFd();
      j.openError = writeErrorOf(e, 'open', j.path);
    }
    return { journal: j, replay };
  }

  /** Lines in the file (stale snapshots included): the manager compacts when it is much more than it keeps. */
  get lines(): number {
    return this.lineCount;
  }

  get bytes(): number {
    return this.size;
  }

  /** Appends records (one write) and fdatasyncs before returning. Throws JournalWriteError; on a throw nothing of it stays. */
  append(...recs: JournalRecord[]): void {
    if (this.closed) throw new JournalWriteError('EBADF', 'append', this.path, `${this.path} is closed`);
    let fd: number;
    try {
      fd = this.ensureFd();
    } catch (e) {
      throw writeErrorOf(e, 'open', this.path);
    }
    if (this.poisoned) {
      try {
        this.fs.ftruncateSync(fd, this.size);
        this.poisoned = null;
      } catch {
        throw this.poisoned;
      }
    }
    const buf = recs.length === 1 ? encodeLine(recs[0]!) : Buffer.concat(recs.map(encodeLine));
    try {
      let off = 0;
      while (off < buf.length) off += this.fs.writeSync(fd, buf, off, buf.length - off);
      this.fs.fdatasyncSync(fd);
    } catch (e) {
      const err = writeErrorOf(e, 'append', this.path);
      try {
        this.fs.ftruncateSync(fd, this.size);
      } catch {
        this.poisoned = err;
      }
      throw err;
    }
    this.size += buf.length;
    this.lineCount += recs.length;
  }

  appendJob(job: JobRecord, nextId: number): void {
    this.append({ k: 'job', next_id: nextId, job });
  }

  /**
   * Compaction: writes `hdr` and one snapshot per job to `<file>.tmp`, fdatasyncs it, renames it
   * over the journal and fsyncs the directory, then appends to the new file. On a failure the old
   * journal stays as it was (and stays open) and the error is thrown.
   */
  rewrite(jobs: Iterable<JobRecord>, nextId: number): void {
    const tmp = `${this.path}.tmp`;
    const parts: Buffer[] = [encodeLine({ k: 'hdr', v: JOURNAL_VERSION, next_id: nextId })];
    for (const job of jobs) parts.push(encodeLine({ k: 'job', next_id: nextId, job }));
    const buf = Buffer.concat(parts);
    let tfd: number | null = null;
    try {
      tfd = this.fs.openSync(tmp, 'w');
      let off = 0;
      while (off < buf.length) off += this.fs.writeSync(tfd, buf, off, buf.length - off);
      this.fs.fdatasyncSync(tfd);
      this.fs.closeSync(tfd);
      tfd = null;
      this.fs.renameSync(tmp, this.path);
    } catch (e) {
      if (tfd !== null) try { this.fs.closeSync(tfd); } catch { /* already failing */ }
      try { this.fs.unlinkSync(tmp); } catch { /* may not exist */ }
      throw writeErrorOf(e, 'compact', this.path);
    }
    // The rename is done: the new file is the journal whatever happens next.
    this.closeFd();
    this.poisoned = null;
    this.size = buf.length;
    this.lineCount = parts.length;
    try {
      this.syncDir();
      this.ensureFd();
    } catch (e) {
      throw writeErrorOf(e, 'compact', this.path);
    }
  }

  close(): void {
    this.closed = true;
    this.closeFd();
  }

  /** The append fd, opened when needed; a file longer than the intact lines is cut back first. */
  private ensureFd(): number {
    if (this.fd !== null) return this.fd;
    const fd = this.fs.openSync(this.path, 'a');
    try {
      if (this.fs.fstatSync(fd).size !== this.size) {
        this.fs.ftruncateSync(fd, this.size);
        this.fs.fdatasyncSync(fd);
      }
    } catch (e) {
      this.fs.closeSync(fd);
      throw e;
    }
    this.fd = fd;
    this.openError = null;
    return fd;
  }

  private closeFd(): void {
    if (this.fd !== null) {
      try { this.fs.closeSync(this.fd); } catch { /* nothing to do */ }
      this.fd = null;
    }
  }

  private syncDir(): void {
    syncDir(this.fs, this.dir);
  }
}

/** fsync a directory so a create, rename or unlink in it survives a power loss. */
export function syncDir(fs: JobsFs, dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
