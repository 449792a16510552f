/**
 * Jobs over the control connection (docs/executive_protocol.md, "Jobs"): submit an image to a
 * master link's targets, follow, list and cancel jobs. The job service itself (JobService,
 * src/gateway/jobs/types.ts) is the gateway's; these handlers only check requests, find the image
 * bytes and hand over.
 *
 * The image comes from the images directory (`image`, read through `core.readImage`: confined to
 * the directory, symlinks out of it refused, size-bounded) or from an upload made on the same
 * connection (`job.upload.begin` with the size and SHA-256, `job.upload.write` chunks by offset).
 * Uploads are our own small store rather than the engine's `provision.begin` sessions: those
 * verify and install the image on one of *this* gateway's devices as the bytes arrive, whereas a
 * job's image is only carried to other devices over a link; an upload needs nothing but a bounded
 * buffer, its owner and a checksum. Like a provisioning upload it belongs to the connection that
 * began it (another connection gets `EPERM:not_owner`) and is freed when that connection closes.
 *
 * `job.watch` is an event subscription (the gateway publishes every job event on the bus,
 * src/gateway/jobs/bus-events.ts) filtered to `job.*` and, when `id` is given, to that job; it has
 * `events.subscribe`'s queue, back-pressure, replay and ACK rules.
 *
 * A malformed request field is `EINVAL:<field>` with `detail: {field, message}`; a refusal of the
 * job service is `<CODE>:<reason>` with the same detail.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { BusEvent, Subscription } from '../events/index.js';
import { JOB_EVENT_CATEGORY, jobIdOf } from '../jobs/bus-events.js';
import type { JobError, JobListFilter, JobOptions, JobRecord, JobService, JobState, JobSubmitter } from '../jobs/types.js';
import { checkOptions } from '../jobs/manager.js';
import { parseNodeList } from '../../link/can/master.js';
import { admitStream, failWith, okBody, streamAddress, type CommandContext, type CommandResult, type CommandSpec } from './command-types.js';
import type { WireError } from './engine-port.js';
import { clip, MAX_TEXT_BYTES } from './roles.js';
import { RequestError, toInt } from './sessions.js';
import { streamReplyEvents } from './protocol-commands.js';

// ---- limits -----------------------------------------------------------------------------------

/** Uploads open at once on the whole server, and per connection. */
export const MAX_JOB_UPLOADS = 8;
export const MAX_JOB_UPLOADS_PER_CONNECTION = 2;
/** Most bytes one `job.upload.write` may carry (decoded). The line limit (1 MiB) bounds it too. */
export const MAX_UPLOAD_CHUNK_BYTES = 512 * 1024;
/** Most targets one job may name. */
export const MAX_JOB_TARGETS = 1024;
/** Longest target name and job id (UTF-8 bytes). */
const MAX_NAME_BYTES = 64;
/** `job.list` answers at most this many jobs. */
export const MAX_LIST_LIMIT = 1000;

const JOB_STATES: readonly JobState[] = ['QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELED', 'TIMED_OUT'];

/** The request keys every command takes (dispatch reads them); anything else must be the command's own. */
const COMMON_KEYS = ['version', 'cmd', 'token', 'session'];

/** What `jobs_disabled` tells a person. */
export const JOBS_DISABLED_MESSAGE =
  'jobs are off on this gateway: set [gateway] state_dir in its config (the job journal lives there) and configure a master link ' +
  '([[links.can]] or [[links.uart]] with role = "master")';

// ---- uploads ----------------------------------------------------------------------------------

/**
 * The pseudo-device under which a connection owns its job uploads (ConnectionApi.ownSession): when
 * the connection drops, the server is asked to "abort" them and frees them instead. No configured
 * device can have this name (device names are `[A-Za-z0-9_.-]`).
 */
export const JOB_UPLOAD_OWNER = '\u0000job-upload';

export interface JobUpload {
  readonly id: number;
  /** The connection that began it. */
  readonly owner: number;
  readonly size: number;
  /** Lower-case hex, as announced. */
  readonly sha256: string;
  readonly bytes: Uint8Array;
  /** Bytes [0, received) have been written. */
  received: number;
}

/** The server's open job uploads: bounded in number, each buffer allocated once its size passed the check. */
export class JobUploads {
  private nextId = 1;
  private readonly byId = new Map<number, JobUpload>();

  get size(): number {
    return this.byId.size;
  }

  ownedBy(owner: number): number {
    let n = 0;
    for (const u of this.byId.values()) if (u.owner === owner) n++;
    return n;
  }

  /** Allocates `size` bytes: the caller has checked the size against the image bound. */
  begin(owner: number, size: number, sha256: string): JobUpload {
    const u: JobUpload = { id: this.nextId++, owner, size, sha256, bytes: new Uint8Array(size), received: 0 };
    this.byId.set(u.id, u);
    return u;
  }

  get(id: number): JobUpload | undefined {
    return this.byId.get(id);
  }

  free(id: number): boolean {
    return this.byId.delete(id);
  }

  clear(): void {
    this.byId.clear();
  }
}

// ---- request fields ---------------------------------------------------------------------------

/** A malformed field: `EINVAL:<field>` with the field and a sentence. */
function bad(field: string, message: string, extra: Record<string, unknown> = {}): never {
  throw new RequestError(`EINVAL:${field}`, { field, message, ...extra });
}

function has(req: Record<string, unknown>, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(req, key) && req[key] !== undefined && req[key] !== null;
}

/** Every key of the request is one this command takes. */
function onlyKeys(ctx: CommandContext, keys: readonly string[]): void {
  for (const k of Object.keys(ctx.req)) {
    if (!COMMON_KEYS.includes(k) && !keys.includes(k)) {
      const name = clip(k);
      bad(name, `${ctx.cmd} does not take '${name}' (it takes ${keys.length ? keys.map((x) => `'${x}'`).join(', ') : 'no fields'})`);
    }
  }
}

function textOf(v: unknown, field: string, what: string, limit = MAX_TEXT_BYTES): string {
  if (typeof v !== 'string' || v.length === 0) bad(field, `${field} must be ${what}`);
  if (v.length > limit || Buffer.byteLength(v, 'utf8') > limit) bad(field, `${field} must be at most ${limit} bytes`, { limit });
  return v;
}

function intOf(v: unknown, field: string, min: number, max: number): number {
  let n: number;
  try {
    n = toInt(v, field);
  } catch {
    bad(field, `${field} must be an integer ${min}..${max}`);
  }
  if (n < min || n > max) bad(field, `${field} must be an integer ${min}..${max}, got ${n}`);
  return n;
}

function boolOf(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') bad(field, `${field} must be true or false`);
  return v;
}

function objectOf(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(field, `${field} must be an object`);
  return v as Record<string, unknown>;
}

function jobIdField(req: Record<string, unknown>, required: boolean): string | undefined {
  if (!has(req, 'id')) {
    if (required) bad('id', "requires 'id', a job id (j-<n>)");
    return undefined;
  }
  return textOf(req['id'], 'id', 'a job id (j-<n>)', MAX_NAME_BYTES);
}

/** `targets` (a list of names or node numbers) or `nodes` (a node list "1-16,20"), or neither: every node the link knows. */
function targetsOf(req: Record<string, unknown>): string[] | undefined {
  if (has(req, 'targets') && has(req, 'nodes')) bad('nodes', "give 'targets' or 'nodes', not both");
  if (has(req, 'nodes')) {
    const spec = textOf(req['nodes'], 'nodes', 'a node list such as "1-16" or "3,5,7-9"');
    const nodes = parseNodeList(spec);
    if (typeof nodes === 'string') bad('nodes', nodes);
    return nodes.map(String);
  }
  if (!has(req, 'targets')) return undefined;
  const list = req['targets'];
  if (!Array.isArray(list)) bad('targets', 'targets must be a list of target names or node numbers');
  if (list.length > MAX_JOB_TARGETS) bad('targets', `at most ${MAX_JOB_TARGETS} targets`, { limit: MAX_JOB_TARGETS });
  const out: string[] = [];
  for (const t of list) {
    let name: string;
    if (typeof t === 'number' && Number.isSafeInteger(t) && t >= 0) name = String(t);
    else if (typeof t === 'string' && t.length > 0 && Buffer.byteLength(t, 'utf8') <= MAX_NAME_BYTES && !/[\u0000-\u001f]/.test(t)) name = t;
    else bad('targets', `each target must be a name of 1..${MAX_NAME_BYTES} bytes or a node number`);
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

/** The link options, checked by the job service's one validator (the MQTT plane uses it too). */
function optionsOf(req: Record<string, unknown>): JobOptions | undefined {
  if (!has(req, 'options')) return undefined;
  const r = checkOptions(req['options']);
  if (!r.ok) bad(clip(r.error.field ?? 'options'), r.error.message);
  return r.value;
}

const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

// ---- helpers ----------------------------------------------------------------------------------

/** A job service refusal on the wire: `<CODE>:<reason>` with `detail: {field?, message}`. */
export function jobErrorToWire(e: JobError): WireError {
  return { error: `${e.code}:${e.reason}`, detail: { ...(e.field !== undefined ? { field: e.field } : {}), message: e.message } };
}

function jobsOf(ctx: CommandContext): JobService {
  const jobs = ctx.core.jobs;
  if (!jobs) throw new RequestError('ENOTSUP:jobs_disabled', { message: JOBS_DISABLED_MESSAGE });
  return jobs;
}

/** A job command: ENOTSUP when the gateway runs no job service, then the field checks, then `run`. */
function jobCommand(mutates: boolean, keys: readonly string[], run: (ctx: CommandContext, jobs: JobService) => CommandResult | Promise<CommandResult>): CommandSpec {
  return {
    mutates,
    run(ctx) {
      const jobs = jobsOf(ctx);
      onlyKeys(ctx, keys);
      return run(ctx, jobs);
    },
  };
}

function submitterOf(ctx: CommandContext): JobSubmitter {
  return { name: ctx.identity?.name ?? 'anonymous', role: ctx.identity?.role ?? 'none', via: 'control' };
}

const unknownJob = (id: string): CommandResult =>
  failWith({ error: 'ESRCH:no_such_job', detail: { field: 'id', message: `no job ${id} on this gateway` } });

function uploadOf(ctx: CommandContext, field = 'upload'): JobUpload {
  const id = intOf(ctx.req[field], field, 1, Number.MAX_SAFE_INTEGER);
  const u = ctx.core.jobUploads.get(id);
  if (!u) throw new RequestError('ESRCH:unknown_upload', { field, message: `no upload ${id} (it was used by a submit, or its connection closed)` });
  if (u.owner !== ctx.conn.id) throw new RequestError('EPERM:not_owner', { field, message: `upload ${id} was begun by another connection` });
  return u;
}

function freeUpload(ctx: CommandContext, u: JobUpload): void {
  ctx.core.jobUploads.free(u.id);
  ctx.conn.disownSession(JOB_UPLOAD_OWNER, u.id);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function chunkOf(v: unknown): Uint8Array {
  if (typeof v !== 'string' || v.length === 0) bad('data', 'data must be a non-empty base64 string');
  if (v.length > Math.ceil(MAX_UPLOAD_CHUNK_BYTES / 3) * 4) bad('data', `a chunk carries at most ${MAX_UPLOAD_CHUNK_BYTES} bytes`, { limit: MAX_UPLOAD_CHUNK_BYTES });
  if (v.length % 4 !== 0 || !BASE64.test(v)) bad('data', 'data must be base64 (no whitespace, padded)');
  const buf = Buffer.from(v, 'base64');
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}

// ---- job.watch --------------------------------------------------------------------------------

/**
 * A subscription to job events, of one job when `id` is given. The bus filters by category; the
 * job is filtered here, on delivery. In ACK mode the events of other jobs are acknowledged on the
 * client's behalf as soon as everything delivered before them is (the client never sees them, so
 * could never ACK them, and they must not hold the window shut): the subscription's `ack` is
 * wrapped so an `events.ack` up to the last event the client saw also releases the hidden ones
 * after it.
 */
function watch(ctx: CommandContext, jobs: JobService): CommandResult {
  const { core, req } = ctx;
  const id = jobIdField(req, false);
  let snapshot: JobRecord | undefined;
  if (id !== undefined) {
    snapshot = jobs.get(id);
    if (!snapshot) return unknownJob(id);
  }
  const sinceSeq = has(req, 'since_seq') ? intOf(req['since_seq'], 'since_seq', 0, Number.MAX_SAFE_INTEGER) : null;
  const ackWindow = has(req, 'ack_window') ? intOf(req['ack_window'], 'ack_window', 1, 1_000_000) : null;
  const session = ctx.sessionId !== null ? core.sessions.get(ctx.sessionId) : null;
  if (ackWindow !== null && !session) bad('ack_window', "ACK mode needs a 'session' (events.ack names it)");

  const mine = (ev: BusEvent): boolean => id === undefined || ev.type === 'warning' || jobIdOf(ev.data) === id;
  /** Only a one-job watch in ACK mode hides events the window counts. */
  const tracking = ackWindow !== null && id !== undefined;
  /** ACK mode: what was delivered and not yet acknowledged, in order, and whether the client was shown it. */
  const outstanding: { seq: number; hidden: boolean }[] = [];
  let rawAck: ((seq: number) => void) | null = null;
  const inWindow = (ev: BusEvent): boolean =>
    ev.type !== 'warning' || (ev.data['reason'] !== 'slow_consumer' && ev.data['reason'] !== 'slow_consumer_drop'); // those two skip the window
  const releaseHidden = (): void => {
    for (;;) {
      let upTo = -1;
      while (outstanding.length && (outstanding[0] as { hidden: boolean }).hidden) upTo = (outstanding.shift() as { seq: number }).seq;
      if (upTo < 0 || !rawAck) return;
      rawAck(upTo);
    }
  };
  const deliver = (ev: BusEvent): boolean => {
    if (mine(ev)) {
      if (tracking && inWindow(ev)) outstanding.push({ seq: ev.seq, hidden: false });
      return ctx.conn.deliverEvent(ev);
    }
    if (tracking) {
      if (outstanding.length === 0 && rawAck) rawAck(ev.seq);
      else outstanding.push({ seq: ev.seq, hidden: true });
    }
    return true;
  };

  admitStream(ctx, session ? core.streams.get(session.id) : undefined); // max_streams, max_streams_per_address
  if (session) {
    // one subscription per session, as events.subscribe: a new one replaces (and ends) the old
    const old = core.streams.get(session.id);
    if (old !== undefined) core.bus.unsubscribe(old);
  }
  const token = session ? `${session.id}:${randomUUID()}` : randomUUID();
  const sub: Subscription = core.bus.subscribe({
    token,
    ...(session ? { maxEvents: session.maxEvents } : {}),
    categories: [JOB_EVENT_CATEGORY],
    sinceSeq,
    ackWindow,
    deferStart: true,
    deliver,
    onClose: (reason) => {
      core.streamSlots.remove(sub.token);
      if (session && core.streams.get(session.id) === sub.token) core.streams.delete(session.id);
      ctx.conn.streamClosed(reason);
    },
  });
  core.streamSlots.add(sub.token, streamAddress(ctx));
  if (tracking) {
    const original = sub.ack.bind(sub);
    rawAck = original;
    sub.ack = (seq: number): void => {
      while (outstanding.length && (outstanding[0] as { seq: number }).seq <= seq) outstanding.shift();
      original(seq);
      releaseHidden();
    };
  }
  if (session) core.streams.set(session.id, sub.token);
  const events = streamReplyEvents(core, sub, sinceSeq, ackWindow);
  return { kind: 'stream', body: snapshot ? { events, job: snapshot } : { events }, subscription: sub };
}

// ---- the commands -----------------------------------------------------------------------------

export const jobCommands: Record<string, CommandSpec> = {
  'job.submit': jobCommand(true, ['link', 'targets', 'nodes', 'image', 'upload', 'options', 'client_token'], async (ctx, jobs) => {
    const { req } = ctx;
    if (!has(req, 'link')) bad('link', "job.submit requires 'link', the name of a master link");
    const link = textOf(req['link'], 'link', 'the name of a master link', MAX_NAME_BYTES);
    const targets = targetsOf(req);
    const hasImage = has(req, 'image');
    const hasUpload = has(req, 'upload');
    if (hasImage && hasUpload) bad('upload', "give 'image' or 'upload', not both");
    if (!hasImage && !hasUpload) bad('image', "job.submit requires 'image' (a file name in the images directory) or 'upload' (an upload id)");
    const options = optionsOf(req);
    const clientToken = has(req, 'client_token') ? textOf(req['client_token'], 'client_token', 'a string') : null;

    let image: { bytes: Uint8Array; name: string };
    let upload: JobUpload | null = null;
    if (hasImage) {
      const name = textOf(req['image'], 'image', 'a file name in the images directory', 1024);
      const r = await ctx.core.readImage(name, 'image');
      if (!r.ok) return failWith(r.error);
      image = { bytes: r.bytes, name };
    } else {
      upload = uploadOf(ctx);
      if (upload.received !== upload.size) {
        return failWith({
          error: 'EBADMSG:upload_incomplete',
          detail: { field: 'upload', message: `upload ${upload.id} has ${upload.received} of its ${upload.size} bytes`, received: upload.received, size: upload.size },
        });
      }
      const actual = createHash('sha256').update(upload.bytes).digest('hex');
      if (actual !== upload.sha256) {
        freeUpload(ctx, upload); // the bytes are not the ones announced: start over
        return failWith({
          error: 'EBADMSG:sha256_mismatch',
          detail: { field: 'upload', message: `the uploaded bytes hash to ${actual}, not the announced ${upload.sha256}; the upload is discarded`, expected: upload.sha256, actual },
        });
      }
      image = { bytes: upload.bytes, name: `upload:${upload.sha256.slice(0, 12)}` };
    }
    const r = await jobs.submit({
      link,
      ...(targets !== undefined ? { targets } : {}),
      image,
      ...(options !== undefined ? { options } : {}),
      client_token: clientToken,
      by: submitterOf(ctx),
    });
    if (!r.ok) return failWith(jobErrorToWire(r.error)); // an upload stays, for a corrected submit
    if (upload) freeUpload(ctx, upload); // the job holds the bytes now
    return okBody({ job: r.value });
  }),

  'job.upload.begin': jobCommand(true, ['size', 'sha256'], (ctx) => {
    const { req, core } = ctx;
    if (!has(req, 'size')) bad('size', "job.upload.begin requires 'size', the image's length in bytes");
    // the size is checked before anything is allocated
    const size = intOf(req['size'], 'size', 1, Number.MAX_SAFE_INTEGER);
    if (size > core.maxImageBytes) {
      return failWith({ error: 'ENOSPC:image_too_large', detail: { field: 'size', message: `an image may have at most ${core.maxImageBytes} bytes`, max: core.maxImageBytes } });
    }
    if (!has(req, 'sha256')) bad('sha256', "job.upload.begin requires 'sha256', the image's SHA-256 in hex");
    const sha = req['sha256'];
    if (typeof sha !== 'string' || !SHA256_HEX.test(sha)) bad('sha256', 'sha256 must be 64 hex digits');
    const uploads = core.jobUploads;
    if (uploads.ownedBy(ctx.conn.id) >= MAX_JOB_UPLOADS_PER_CONNECTION) {
      return failWith({ error: 'ELIMIT:max_uploads_per_connection', detail: { limit: MAX_JOB_UPLOADS_PER_CONNECTION, message: 'submit or close the uploads this connection began' } });
    }
    if (uploads.size >= MAX_JOB_UPLOADS) {
      return failWith({ error: 'ELIMIT:max_uploads', detail: { limit: MAX_JOB_UPLOADS, message: 'too many uploads in progress on this gateway; try again later' } });
    }
    const u = uploads.begin(ctx.conn.id, size, sha.toLowerCase());
    ctx.conn.ownSession(JOB_UPLOAD_OWNER, u.id); // freed when this connection closes
    return okBody({ upload: u.id, size: u.size, max_chunk: MAX_UPLOAD_CHUNK_BYTES });
  }),

  'job.upload.write': jobCommand(true, ['upload', 'offset', 'data'], (ctx) => {
    const { req } = ctx;
    if (!has(req, 'upload')) bad('upload', "job.upload.write requires 'upload'");
    if (!has(req, 'offset')) bad('offset', "job.upload.write requires 'offset'");
    if (!has(req, 'data')) bad('data', "job.upload.write requires 'data' (base64)");
    const u = uploadOf(ctx);
    const offset = intOf(req['offset'], 'offset', 0, Number.MAX_SAFE_INTEGER);
    if (offset > u.received) bad('offset', `upload ${u.id} has ${u.received} bytes: write at an offset up to ${u.received}`, { received: u.received });
    const chunk = chunkOf(req['data']);
    if (offset + chunk.length > u.size) bad('data', `the chunk ends at ${offset + chunk.length}, past the announced size ${u.size}`, { size: u.size });
    u.bytes.set(chunk, offset);
    u.received = Math.max(u.received, offset + chunk.length);
    return okBody({ upload: u.id, offset, bytes: chunk.length, received: u.received, size: u.size });
  }),

  'job.status': jobCommand(false, ['id'], (ctx, jobs) => {
    const id = jobIdField(ctx.req, true) as string;
    const job = jobs.get(id);
    return job ? okBody({ job }) : unknownJob(id);
  }),

  /**
   * What the master links' last scans found (viewer); `refresh: true` (operator, roles.ts) scans
   * `link` (or every link) again first, between transfers.
   */
  inventory: {
    mutates: false,
    async run(ctx) {
      const inv = ctx.core.inventory;
      if (!inv) throw new RequestError('ENOTSUP:no_master_links', { message: 'this gateway masters no link: add [[links.can]] or [[links.uart]] with role = "master"' });
      onlyKeys(ctx, ['link', 'refresh']);
      const { req } = ctx;
      let links = inv.links();
      if (has(req, 'link')) {
        const link = textOf(req['link'], 'link', 'the name of a master link', MAX_NAME_BYTES);
        if (!links.includes(link)) throw new RequestError('ENOENT:no_such_link', { field: 'link', message: `no master link "${link}" (links: ${links.join(', ') || 'none'})` });
        links = [link];
      }
      if (has(req, 'refresh') && boolOf(req['refresh'], 'refresh')) await Promise.all(links.map((l) => inv.refresh(l)));
      return okBody({ links: links.map((l) => inv.get(l) ?? { link: l, scanned_ts: null, entries: [], error: null }) });
    },
  },

  'job.list': jobCommand(false, ['state', 'link', 'limit'], (ctx, jobs) => {
    const { req } = ctx;
    const filter: JobListFilter = {};
    if (has(req, 'state')) {
      const s = req['state'];
      if (typeof s !== 'string' || !(JOB_STATES as readonly string[]).includes(s)) bad('state', `state must be one of ${JOB_STATES.join(', ')}`);
      filter.state = s as JobState;
    }
    if (has(req, 'link')) filter.link = textOf(req['link'], 'link', 'the name of a master link', MAX_NAME_BYTES);
    if (has(req, 'limit')) filter.limit = intOf(req['limit'], 'limit', 1, MAX_LIST_LIMIT);
    return okBody({ jobs: jobs.list(filter) });
  }),

  'job.cancel': jobCommand(true, ['id'], async (ctx, jobs) => {
    const id = jobIdField(ctx.req, true) as string;
    if (!jobs.get(id)) return unknownJob(id);
    const r = await jobs.cancel(id, submitterOf(ctx));
    if (!r.ok) return failWith(jobErrorToWire(r.error));
    return okBody({ job: r.value });
  }),

  'job.watch': jobCommand(false, ['id', 'since_seq', 'ack_window'], watch),
};
