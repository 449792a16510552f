/**
 * `hsx-gateway job submit|list|status|cancel|watch`: jobs on a running gateway, through its control
 * server (docs/executive_protocol.md, "Jobs"). `submit` sends a local image by upload (or names one
 * in the gateway's images directory), then follows the job to its end: a progress bar per target on
 * a terminal, JSON lines with --json.
 *
 * Exit codes: 0 every target SUCCEEDED or was SKIPPED (for submit and watch; for list, status and
 * cancel: the gateway answered), 1 otherwise (a target failed, the gateway refused), 2 usage,
 * 3 no gateway answered.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { err, ok, type Result } from '../../hxe/result.js';
import { CLIENT_TOKEN_ENV, ControlClient, clientErrorJson, clientExitCode, DEFAULT_CONNECT, parseHostPort, type ClientError, type Reply } from '../../gateway/control/client.js';
import { LineReader } from '../../gateway/control/line-reader.js';
import type { JobRecord, JobTarget } from '../../gateway/jobs/types.js';
import { parseNodeList } from '../../link/can/master.js';

/** Bytes per `job.upload.write` (base64 makes it 64 KiB on the wire). */
const UPLOAD_CHUNK = 48 * 1024;
/** With no event for this long, the job's status is asked directly (a dropped event must not hang us). */
const QUIET_POLL_MS = 15_000;
/** Times a watch that ended early is reopened before giving up. */
const MAX_REWATCH = 5;

const TERMINAL = new Set(['SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELED', 'TIMED_OUT']);
const GOOD = new Set(['SUCCEEDED', 'SKIPPED']);

type Io = { out: (s: string) => void; err: (s: string) => void };
const processIo: Io = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

interface CommonOpts {
  connect: string;
  token?: string;
  json?: boolean;
}

class Exit {
  constructor(readonly code: number) {}
}

// ---- output helpers ---------------------------------------------------------------------------

function jsonLine(io: Io, obj: Record<string, unknown>): void {
  io.out(`${JSON.stringify(obj)}\n`);
}

function usage(io: Io, opts: { json?: boolean }, name: string, message: string): Exit {
  if (opts.json) jsonLine(io, clientErrorJson({ kind: 'usage', message }));
  else io.err(`job ${name}: ${message}\n`);
  return new Exit(2);
}

/** Exit code of a client error: 3 when no gateway answered, 2 usage, else 1. */
function codeOf(e: ClientError): number {
  return clientExitCode(e);
}

function failure(io: Io, opts: { json?: boolean }, name: string, e: ClientError): Exit {
  if (opts.json) jsonLine(io, clientErrorJson(e));
  else {
    const why = e.detail?.['message'] ? ` (${String(e.detail['message'])})` : '';
    const hint = e.error?.startsWith('EPERM:') && e.error.endsWith('_required') ? `; give a token with that role: --token TOKEN or $${CLIENT_TOKEN_ENV}` : '';
    io.err(`job ${name}: ${e.message}${why}${hint}\n`);
  }
  return new Exit(codeOf(e));
}

const tokenOf = (opts: { token?: string }): string | undefined => opts.token ?? process.env[CLIENT_TOKEN_ENV];

async function connectClient(opts: CommonOpts): Promise<Result<ControlClient, ClientError>> {
  const token = tokenOf(opts);
  return ControlClient.connect(opts.connect, token === undefined ? {} : { token });
}

/** Runs `body`; an `Exit` thrown anywhere becomes the exit code. */
async function run(body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof Exit) return e.code;
    throw e;
  }
}

/** 0 when every target SUCCEEDED or was SKIPPED (and there is at least one), else 1. */
export function jobExitCode(job: Pick<JobRecord, 'targets'>): number {
  return job.targets.length > 0 && job.targets.every((t) => GOOD.has(t.state)) ? 0 : 1;
}

export const isTerminalJob = (job: Pick<JobRecord, 'state'>): boolean => TERMINAL.has(job.state);

function targetLine(t: JobTarget): string {
  const outcome = t.outcome ? ` ${t.outcome}` : '';
  const change = t.from || t.to ? ` ${(t.from ?? '?').slice(0, 12)} → ${(t.to ?? '?').slice(0, 12)}` : '';
  const error = t.error ? ` ${t.error.code}:${t.error.reason} at ${t.error.where}: ${t.error.message}` : '';
  return `${t.state}${outcome}${change}${error}`;
}

export function renderJob(job: JobRecord): string {
  const head = `job ${job.id} ${job.state} on ${job.link}: ${job.image.name} (${job.image.size} bytes, sha256 ${job.image.sha256.slice(0, 16)}…)`;
  const rows = job.targets.map((t) => `  ${t.target.padStart(4)}  ${targetLine(t)}`);
  const counts = new Map<string, number>();
  for (const t of job.targets) counts.set(t.state, (counts.get(t.state) ?? 0) + 1);
  const summary = `${job.targets.length} target(s): ${[...counts].map(([s, n]) => `${n} ${s}`).join(' · ') || 'none'}${job.reason ? ` (${job.reason})` : ''}`;
  return [head, ...rows, summary].join('\n') + '\n';
}

export function renderJobList(jobs: JobRecord[]): string {
  if (jobs.length === 0) return 'no jobs\n';
  const rows = jobs.map((j) => [j.id, j.state, j.link, String(j.targets.length), j.image.name, j.submitted_by.name]);
  const head = ['ID', 'STATE', 'LINK', 'TARGETS', 'IMAGE', 'BY'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd();
  return [fmt(head), ...rows.map(fmt)].join('\n') + '\n';
}

// ---- following a job --------------------------------------------------------------------------

interface Display {
  /** The job's latest record. */
  job(job: JobRecord): void;
  progress(target: string, acked: number, total: number): void;
  /** Every event as it came (JSON lines print it). */
  event(ev: Reply): void;
  stop(): void;
}

function jsonDisplay(io: Io): Display {
  return {
    job: () => {},
    progress: () => {},
    event: (ev) => jsonLine(io, { type: 'event', event: ev['type'], seq: ev['seq'], ts: ev['ts'], data: ev['data'] }),
    stop: () => {},
  };
}

/** A person at a terminal: one bar per target. */
function barDisplay(): Display {
  const multi = new cliProgress.MultiBar(
    { format: ' {target} [{bar}] {percentage}% {status}', hideCursor: true, clearOnComplete: false, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  let size = 1;
  const bar = (target: string): cliProgress.SingleBar => {
    let b = bars.get(target);
    if (!b) bars.set(target, (b = multi.create(size, 0, { target: target.padStart(4), status: 'QUEUED' })));
    return b;
  };
  return {
    job: (job) => {
      size = Math.max(1, job.image.size);
      for (const t of job.targets) {
        const b = bar(t.target);
        b.setTotal(size);
        if (TERMINAL.has(t.state)) b.update(GOOD.has(t.state) ? size : Math.min(t.acked_bytes, size), { status: targetLine(t) });
        else b.update(Math.min(t.acked_bytes, size), { status: t.state });
      }
    },
    progress: (target, acked, total) => {
      const b = bar(target);
      b.setTotal(Math.max(1, total));
      b.update(acked);
    },
    event: () => {},
    stop: () => multi.stop(),
  };
}

/** A person reading a log: a line per target state change. */
function lineDisplay(io: Io): Display {
  const seen = new Map<string, string>();
  return {
    job: (job) => {
      for (const t of job.targets) {
        if (seen.get(t.target) === t.state) continue;
        seen.set(t.target, t.state);
        io.out(`${job.id} ${t.target}: ${targetLine(t)}\n`);
      }
    },
    progress: () => {},
    event: () => {},
    stop: () => {},
  };
}

/** An event stream: `job.watch` on its own connection (the reply, then only events). */
class WatchStream {
  private constructor(private readonly socket: ReturnType<typeof connect>, readonly reader: LineReader) {}

  static open(target: string, token: string | undefined, fields: Record<string, unknown>): Promise<Result<{ stream: WatchStream; reply: Reply }, ClientError>> {
    const hp = parseHostPort(target);
    if (!hp.ok) return Promise.resolve(hp);
    return new Promise((done) => {
      const socket = connect(hp.value.port, hp.value.host);
      socket.once('error', (e) => done(err({ kind: 'connect', message: `cannot connect to ${target}: ${e.message}` })));
      socket.once('connect', () => {
        const stream = new WatchStream(socket, new LineReader(socket));
        const req: Record<string, unknown> = { version: 1, cmd: 'job.watch', ...fields };
        if (token !== undefined) req['token'] = token;
        socket.write(`${JSON.stringify(req)}\n`);
        void stream.reader.next(10_000).then((n) => {
          if (!('line' in n)) {
            stream.close();
            return done(err({ kind: 'timeout' in n ? 'timeout' : 'closed', message: 'timeout' in n ? 'no reply to job.watch' : n.closed }));
          }
          let reply: Reply;
          try {
            reply = JSON.parse(n.line) as Reply;
          } catch {
            stream.close();
            return done(err({ kind: 'protocol', message: `reply is not JSON: ${n.line.slice(0, 200)}` }));
          }
          if (reply['status'] !== 'ok') {
            stream.close();
            const error = String(reply['error'] ?? 'unknown_error');
            const e: ClientError = { kind: 'remote', message: `server: ${error}`, error };
            if (reply['detail'] && typeof reply['detail'] === 'object') e.detail = reply['detail'] as Record<string, unknown>;
            return done(err(e));
          }
          done(ok({ stream, reply }));
        });
      });
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * Follows job `id` until it ends: a `job.watch` stream (replaying from `sinceSeq`, so nothing
 * since the submit is missed), with `job.status` asked whenever the stream goes quiet, drops an
 * event or ends early. Returns the final record.
 */
async function follow(opts: CommonOpts, io: Io, name: string, id: string, sinceSeq: number | null, display: Display, first: JobRecord | null): Promise<JobRecord> {
  let latest = first;
  const status = async (): Promise<JobRecord | null> => {
    const c = await connectClient(opts);
    if (!c.ok) return null;
    try {
      const r = await c.value.request('job.status', { id });
      return r.ok ? (r.value['job'] as JobRecord) : null;
    } finally {
      c.value.close();
    }
  };
  const seeJob = (job: JobRecord): boolean => {
    if (latest && job.revision < latest.revision) return isTerminalJob(latest);
    latest = job;
    display.job(job);
    return isTerminalJob(job);
  };
  if (latest && seeJob(latest)) return latest;
  let since = sinceSeq;
  let onSignal = (): void => {};
  const interrupted = new Promise<'interrupt'>((resolve) => {
    onSignal = (): void => resolve('interrupt');
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  try {
    return await watchUntilEnd();
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  async function watchUntilEnd(): Promise<JobRecord> {
    for (let attempt = 0; attempt <= MAX_REWATCH; attempt++) {
      const w = await WatchStream.open(opts.connect, tokenOf(opts), { id, ...(since !== null ? { since_seq: since } : {}) });
      if (!w.ok) throw failure(io, opts, name, w.error);
      const { stream, reply } = w.value;
      try {
        if (reply['job'] && seeJob(reply['job'] as JobRecord)) return latest as JobRecord;
        for (;;) {
          const next = await Promise.race([stream.reader.next(QUIET_POLL_MS), interrupted]);
          if (next === 'interrupt') {
            io.err(`job ${name}: stopped following ${id}; it goes on on the gateway (hsx-gateway job cancel ${id} to cancel it)\n`);
            throw new Exit(1);
          }
          if ('timeout' in next) {
            const s = await status();
            if (s && seeJob(s)) return latest as JobRecord;
            continue;
          }
          if ('closed' in next) break;
          let ev: Reply;
          try {
            ev = JSON.parse(next.line) as Reply;
          } catch {
            continue;
          }
          if (typeof ev['seq'] === 'number') since = Math.max(since ?? 0, ev['seq']);
          display.event(ev);
          const data = (ev['data'] ?? {}) as Reply;
          if (ev['type'] === 'job.progress') {
            display.progress(String(data['target']), Number(data['acked_bytes'] ?? 0), Number(data['total_bytes'] ?? 0));
          } else if (typeof ev['type'] === 'string' && ev['type'].startsWith('job.') && data['job']) {
            // the job's state may be final with its last target's event; its end is job.finished (or job.canceled)
            const done = seeJob(data['job'] as JobRecord);
            if (done && (ev['type'] === 'job.finished' || ev['type'] === 'job.canceled')) return latest as JobRecord;
          } else if (ev['type'] === 'warning') {
            // an event of ours may have been dropped (it may have been the last): ask
            const s = await status();
            if (s && seeJob(s)) return latest as JobRecord;
          }
        }
      } finally {
        stream.close();
      }
      // the stream ended before the job did (the gateway cut a slow reader, or restarted): ask, then watch again
      const s = await status();
      if (s && seeJob(s)) return latest as JobRecord;
    }
    throw failure(io, opts, name, { kind: 'closed', message: `the gateway kept ending the watch of ${id} before it finished` });
  }
}

/** The display for following a job, and how the end is printed. */
function displayFor(opts: { json?: boolean }, io: Io): Display {
  if (opts.json) return jsonDisplay(io);
  return process.stderr.isTTY === true ? barDisplay() : lineDisplay(io);
}

function printResult(opts: { json?: boolean }, io: Io, job: JobRecord): number {
  const code = jobExitCode(job);
  if (opts.json) jsonLine(io, { type: 'result', ok: code === 0, ...job });
  else io.out(renderJob(job));
  return code;
}

// ---- submit -----------------------------------------------------------------------------------

interface SubmitOpts extends CommonOpts {
  link?: string;
  nodes?: string;
  targets?: string;
  imageName?: string;
  force?: boolean;
  fd?: boolean;
  chunk?: string;
  window?: string;
  timeoutMs?: string;
  retries?: string;
  clientToken?: string;
  detach?: boolean;
}

function intOpt(io: Io, opts: SubmitOpts, flag: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw usage(io, opts, 'submit', `${flag} must be an integer ${min}..${max}, got "${v}"`);
  return n;
}

export async function runJobSubmit(imagePath: string | undefined, opts: SubmitOpts, io: Io = processIo): Promise<number> {
  return run(async () => {
    const name = 'submit';
    const hp = parseHostPort(opts.connect);
    if (!hp.ok) throw usage(io, opts, name, hp.error.message);
    if (!opts.link) throw usage(io, opts, name, '--link NAME is required (a master link of the gateway)');
    if (imagePath !== undefined && opts.imageName !== undefined) throw usage(io, opts, name, 'give a local IMAGE or --image-name NAME, not both');
    if (imagePath === undefined && opts.imageName === undefined) throw usage(io, opts, name, 'give a local IMAGE file, or --image-name NAME of one in the gateway\'s images directory');
    if (opts.nodes !== undefined && opts.targets !== undefined) throw usage(io, opts, name, 'give --nodes or --targets, not both');
    const fields: Record<string, unknown> = { link: opts.link };
    if (opts.nodes !== undefined) {
      const nodes = parseNodeList(opts.nodes);
      if (typeof nodes === 'string') throw usage(io, opts, name, `--nodes: ${nodes}`);
      fields['nodes'] = opts.nodes;
    }
    if (opts.targets !== undefined) fields['targets'] = opts.targets.split(',').map((s) => s.trim()).filter(Boolean);
    const options: Record<string, unknown> = {};
    if (opts.force) options['force'] = true;
    if (opts.fd) options['fd'] = true;
    const chunk = intOpt(io, opts, '--chunk', opts.chunk, 1, 65_536);
    const window = intOpt(io, opts, '--window', opts.window, 1, 4096);
    const timeoutMs = intOpt(io, opts, '--timeout-ms', opts.timeoutMs, 1, 3_600_000);
    const retries = intOpt(io, opts, '--retries', opts.retries, 0, 100);
    if (chunk !== undefined) options['chunk'] = chunk;
    if (window !== undefined) options['window'] = window;
    if (timeoutMs !== undefined) options['timeout_ms'] = timeoutMs;
    if (retries !== undefined) options['retries'] = retries;
    if (Object.keys(options).length) fields['options'] = options;
    if (opts.clientToken !== undefined) fields['client_token'] = opts.clientToken;

    let bytes: Uint8Array | null = null;
    if (imagePath !== undefined) {
      try {
        bytes = new Uint8Array(await readFile(imagePath));
      } catch (e) {
        throw failure(io, opts, name, { kind: 'usage', message: `cannot read ${imagePath}: ${(e as Error).message}` });
      }
      if (bytes.length === 0) throw failure(io, opts, name, { kind: 'usage', message: `${imagePath} is empty` });
    }

    const c = await connectClient(opts);
    if (!c.ok) throw failure(io, opts, name, c.error);
    const client = c.value;
    let job: JobRecord;
    let cursor: number | null = null;
    try {
      const must = async (cmd: string, f: Record<string, unknown>): Promise<Reply> => {
        const r = await client.request(cmd, f);
        if (!r.ok) throw failure(io, opts, name, r.error);
        return r.value;
      };
      if (!opts.detach) {
        // where the event stream stands before the submit: the watch replays from here, so no event is missed
        const info = (await must('info', {}))['info'] as Reply | undefined;
        const seq = info?.['event_seq'];
        cursor = typeof seq === 'number' ? seq : null;
      }
      if (bytes) {
        const sha256 = createHash('sha256').update(bytes).digest('hex');
        const begun = await must('job.upload.begin', { size: bytes.length, sha256 });
        const upload = begun['upload'];
        for (let offset = 0; offset < bytes.length; offset += UPLOAD_CHUNK) {
          const part = bytes.subarray(offset, Math.min(bytes.length, offset + UPLOAD_CHUNK));
          await must('job.upload.write', { upload, offset, data: Buffer.from(part.buffer, part.byteOffset, part.length).toString('base64') });
        }
        fields['upload'] = upload;
      } else {
        fields['image'] = opts.imageName;
      }
      job = (await must('job.submit', fields))['job'] as JobRecord;
    } finally {
      client.close();
    }
    if (opts.json) jsonLine(io, { type: 'submitted', ...job });
    else io.err(`submitted ${job.id}: ${job.image.name} to ${job.targets.length} target(s) on ${job.link}\n`);
    if (opts.detach) {
      if (!opts.json) io.out(`${job.id}\n`);
      return 0;
    }
    const display = displayFor(opts, io);
    let final: JobRecord;
    try {
      final = await follow(opts, io, name, job.id, cursor, display, job);
    } finally {
      display.stop();
    }
    return printResult(opts, io, final);
  });
}

// ---- list, status, cancel, watch --------------------------------------------------------------

async function oneRequest(opts: CommonOpts, io: Io, name: string, cmd: string, fields: Record<string, unknown>, human: (r: Reply) => string): Promise<number> {
  return run(async () => {
    const hp = parseHostPort(opts.connect);
    if (!hp.ok) throw usage(io, opts, name, hp.error.message);
    const c = await connectClient(opts);
    if (!c.ok) throw failure(io, opts, name, c.error);
    try {
      const r = await c.value.request(cmd, fields);
      if (!r.ok) throw failure(io, opts, name, r.error);
      const { version: _v, status: _s, ...body } = r.value;
      if (opts.json) jsonLine(io, { ok: true, ...body });
      else io.out(human(r.value));
      return 0;
    } finally {
      c.value.close();
    }
  });
}

const JOB_ID = /^j-\d+$/;

export async function runJobWatch(id: string | undefined, opts: CommonOpts, io: Io = processIo): Promise<number> {
  return run(async () => {
    const name = 'watch';
    const hp = parseHostPort(opts.connect);
    if (!hp.ok) throw usage(io, opts, name, hp.error.message);
    if (id !== undefined) {
      if (!JOB_ID.test(id)) throw usage(io, opts, name, `a job id looks like j-12, got "${id}"`);
      const display = displayFor(opts, io);
      let final: JobRecord;
      try {
        final = await follow(opts, io, name, id, null, display, null);
      } finally {
        display.stop();
      }
      return printResult(opts, io, final);
    }
    // every job's events, until the gateway ends the stream or we are stopped
    const w = await WatchStream.open(opts.connect, tokenOf(opts), {});
    if (!w.ok) throw failure(io, opts, name, w.error);
    const stop = (): void => w.value.stream.close();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      for (;;) {
        const next = await w.value.stream.reader.next(3_600_000);
        if ('closed' in next) return 0;
        if ('timeout' in next) continue;
        let ev: Reply;
        try {
          ev = JSON.parse(next.line) as Reply;
        } catch {
          continue;
        }
        const data = (ev['data'] ?? {}) as Reply;
        if (opts.json) jsonLine(io, { type: 'event', event: ev['type'], seq: ev['seq'], ts: ev['ts'], data });
        else if (ev['type'] === 'job.progress') io.out(`${String(data['job_id'])} ${String(data['target'])}: ${String(data['acked_bytes'])}/${String(data['total_bytes'])} bytes\n`);
        else if (ev['type'] === 'job.target') io.out(`${String(data['job_id'])} ${String((data['target'] as Reply)?.['target'])}: ${targetLine(data['target'] as JobTarget)}\n`);
        else io.out(`${String(data['job_id'] ?? '')} ${String(ev['type'])}${data['state'] ? ` ${String(data['state'])}` : ''}\n`);
      }
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      stop();
    }
  });
}

// ---- commander --------------------------------------------------------------------------------

function common(cmd: Command): Command {
  return cmd
    .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
    .option('--token <token>', `access token (default: $${CLIENT_TOKEN_ENV})`)
    .option('--json', 'JSON output');
}

export function registerJob(program: Command): void {
  const job = program.command('job').description('jobs on a gateway\'s master links: submit, list, status, cancel, watch (asks the control server)');

  common(job.command('submit'))
    .description('flash an image to targets of a gateway\'s master link, and follow the job to its end (operator role)')
    .argument('[image]', 'a local .hxe file, uploaded to the gateway')
    .option('--link <name>', 'the gateway\'s master link (as its config names it)')
    .option('--nodes <list>', 'CAN node ids, e.g. 1-16 or 3,5,7 (default: every node the link knows)')
    .option('--targets <list>', 'target names, comma-separated (instead of --nodes)')
    .option('--image-name <name>', 'an image in the gateway\'s images directory (instead of a local file)')
    .option('--force', 'send even to targets that already run the image')
    .option('--fd', 'CAN FD data frames')
    .option('--chunk <bytes>', 'UART frame payload')
    .option('--window <frames>', 'frames in flight')
    .option('--timeout-ms <ms>', 'base timeout of the link')
    .option('--retries <n>', 'retries before a silent target is given up')
    .option('--client-token <text>', 'echoed in the job record (to find it again)')
    .option('--detach', 'print the job id and return at once (exit 0 when the gateway took the job)')
    .addHelpText('after', '\nExit: 0 every target SUCCEEDED or was SKIPPED, 1 otherwise or refused, 2 usage, 3 no gateway answered.\n' +
      'With --json: one line per event ({"type":"event",…}), the submitted job first ({"type":"submitted",…}) and the final one last ({"type":"result","ok":…,…job}).')
    .action(async (image: string | undefined, opts: SubmitOpts) => {
      process.exitCode = await runJobSubmit(image, opts);
    });

  common(job.command('list'))
    .description('the gateway\'s jobs, newest first (viewer role)')
    .option('--state <state>', 'only jobs in this state (QUEUED, IN_PROGRESS, SUCCEEDED, SKIPPED, FAILED, CANCELED, TIMED_OUT)')
    .option('--link <name>', 'only jobs on this link')
    .option('--limit <n>', 'at most this many (default 100)')
    .action(async (opts: CommonOpts & { state?: string; link?: string; limit?: string }) => {
      const fields: Record<string, unknown> = {};
      if (opts.state !== undefined) fields['state'] = opts.state.toUpperCase();
      if (opts.link !== undefined) fields['link'] = opts.link;
      if (opts.limit !== undefined) {
        const n = Number(opts.limit);
        if (!/^\d+$/.test(opts.limit) || n < 1 || n > 1000) {
          process.exitCode = await run(async () => { throw usage(processIo, opts, 'list', `--limit must be an integer 1..1000, got "${opts.limit}"`); });
          return;
        }
        fields['limit'] = n;
      }
      process.exitCode = await oneRequest(opts, processIo, 'list', 'job.list', fields, (r) => renderJobList((r['jobs'] ?? []) as JobRecord[]));
    });

  for (const [sub, cmd, role, what] of [
    ['status', 'job.status', 'viewer', 'one job and its targets'],
    ['cancel', 'job.cancel', 'operator', 'cancel a job: queued targets are not started, running ones are stopped'],
  ] as const) {
    common(job.command(sub))
      .description(`${what} (${role} role)`)
      .argument('<id>', 'the job id (j-12)')
      .action(async (id: string, opts: CommonOpts) => {
        if (!JOB_ID.test(id)) {
          process.exitCode = await run(async () => { throw usage(processIo, opts, sub, `a job id looks like j-12, got "${id}"`); });
          return;
        }
        process.exitCode = await oneRequest(opts, processIo, sub, cmd, { id }, (r) => renderJob(r['job'] as JobRecord));
      });
  }

  common(job.command('watch'))
    .description('follow a job to its end (exit as submit does), or every job\'s events without an id (viewer role)')
    .argument('[id]', 'the job id (j-12)')
    .action(async (id: string | undefined, opts: CommonOpts) => {
      process.exitCode = await runJobWatch(id, opts);
    });
}
