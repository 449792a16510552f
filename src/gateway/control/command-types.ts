/**
 * The shapes shared by the command handlers, the connection and the server: what a handler
 * gets (the request, who asks, the connection, the server core) and what it returns.
 */
import type { Clock } from '../../engine/ports.js';
import type { EventBus, Subscription, BusEvent, CloseReason } from '../events/index.js';
import type { CanBus } from '../../link/can/bus.js';
import type { Identity } from './auth.js';
import type { LinkInventory } from '../inventory.js';
import type { ControlEngine, WireError } from './engine-port.js';
import type { JobService } from '../jobs/types.js';
import type { JobUploads } from './job-commands.js';
import { MAX_TEXT_BYTES } from './roles.js';
import type { StreamSlots } from './limits.js';
import { RequestError, toInt, type SessionRegistry } from './sessions.js';

export { toInt };

export type CommandResult =
  /** `refused`: a reply the reference shapes as ok (a `val.set` the registry refused) that the audit log records as an error. */
  | { kind: 'ok'; body: Record<string, unknown>; refused?: string }
  | { kind: 'error'; error: string; detail?: Record<string, unknown> }
  /** The reply is sent, then the connection carries only this subscription's events. */
  | { kind: 'stream'; body: Record<string, unknown>; subscription: Subscription };

export const okBody = (body: Record<string, unknown> = {}): CommandResult => ({ kind: 'ok', body });
export const failWith = (w: WireError): CommandResult =>
  w.detail === undefined ? { kind: 'error', error: w.error } : { kind: 'error', error: w.error, detail: w.detail };

/** What a handler may do with the connection the request came on. */
export interface ConnectionApi {
  readonly id: number;
  readonly peer: string;
  /** The remote address without port (per-address limits); absent for a caller that is not a socket. */
  readonly address?: string;
  /** Streaming sessions opened on this connection are aborted when it drops. */
  ownSession(device: string, sessionId: number): void;
  disownSession(device: string, sessionId: number): void;
  /** Event delivery for a subscription that will take over this connection. */
  deliverEvent(ev: BusEvent): boolean;
  streamClosed(reason: CloseReason): void;
  setIdentity(identity: Identity): void;
}

export interface DeviceRef {
  name: string;
  engine: ControlEngine;
}

export interface ServerCore {
  readonly bus: EventBus;
  readonly sessions: SessionRegistry;
  readonly clock: Clock;
  readonly tokensConfigured: boolean;
  /** The engine a request names with `device` (default: the first). */
  device(name: unknown): DeviceRef | WireError;
  deviceNames(): string[];
  /**
   * Reads the file a request names for `load`/`exec`/`provision.load` (and `job.submit`'s `image`):
   * inside the images directory only, size-bounded (image-files.ts). `field` is the request field
   * an error names (default `path`).
   */
  readImage(path: string, field?: string): Promise<{ ok: true; bytes: Uint8Array; source: string } | { ok: false; error: WireError }>;
  /** The most bytes an image may have, whether read from the images directory or uploaded (`job.upload.begin`). */
  readonly maxImageBytes: number;
  /** The daemon's job service (`job.*` commands), or null when jobs are off (`ENOTSUP:jobs_disabled`). */
  readonly jobs: JobService | null;
  /** The master links' last scans (null: the gateway masters no link). */
  readonly inventory: InventoryPort | null;
  /** Image uploads for `job.submit` (`job.upload.begin/write`), each owned by the connection that began it. */
  readonly jobUploads: JobUploads;
  /** Session id → its event subscription token. */
  readonly streams: Map<string, string>;
  /** Every open event stream and its address (`max_streams`, `max_streams_per_address`). */
  readonly streamSlots: StreamSlots;
  /**
   * Streaming uploads (`provision.begin`) by `uploadKey(device, session_id)` → the id of the
   * connection that opened it: only that connection (or an admin) may write, end or abort it.
   */
  readonly uploads: Map<string, number>;
  requestShutdown(): void;
  info(): Record<string, unknown>;
  /** The CAN bus of a master link (`val.get`/`val.set` with `link` and `node`), or undefined. */
  valueBus(link: string): CanBus | undefined;
  /** The master links `valueBus` knows. */
  valueLinks(): string[];
  /** The gateway's recent log (`dmesg`). */
  readonly recent: RecentLog;
}

/** One `dmesg` line: the reference's `seq`, `ts` (seconds), `level`, `message`, then fields. */
export type RecentEntry = { seq: number; ts: number; level: string; message: string } & Record<string, unknown>;

/**
 * The last control requests (what the reference's `dmesg` shows: one line per shell request)
 * merged with the event bus's retained events, newest last.
 */
export class RecentLog {
  private readonly lines: RecentEntry[] = [];
  private seq = 0;

  constructor(
    private readonly clock: Clock,
    private readonly bus: EventBus,
    private readonly max = 512,
  ) {}

  record(level: string, message: string, fields: Record<string, unknown>): void {
    this.lines.push({ seq: ++this.seq, ts: this.clock.now() / 1000, level, message, clock_steps: 0, ...fields });
    // trimmed in steps (a splice of the whole array per request was a cost of every request)
    if (this.lines.length >= 2 * this.max) this.lines.splice(0, this.lines.length - this.max);
  }

  /** The last `limit` lines (default all held), oldest first; `session` keeps one session's requests. */
  list(limit?: number, session?: string): RecentEntry[] {
    const events: RecentEntry[] = session !== undefined ? [] : this.bus.historySince(0).map((e) => ({
      seq: 0, ts: e.ts, level: e.type.endsWith('.error') || e.type === 'warning' ? 'warning' : 'info', message: e.type,
      clock_steps: 0, command: null, session: null, event_seq: e.seq, pid: e.pid, phase: e.phase ?? null,
    }));
    const held = this.lines.length > this.max ? this.lines.slice(this.lines.length - this.max) : this.lines;
    const mine = session !== undefined ? held.filter((l) => l['session'] === session) : held;
    const all = [...mine.map((l) => ({ ...l })), ...events].sort((a, b) => a.ts - b.ts);
    all.forEach((l, i) => (l.seq = i + 1));
    const n = limit === undefined ? all.length : Math.min(limit, all.length);
    return all.slice(all.length - n);
  }
}

/** The key of a streaming upload in `ServerCore.uploads`. */
export const uploadKey = (device: string, sessionId: number): string => `${device}\u0000${sessionId}`;

/** What `inventory` reads and refreshes (src/gateway/inventory.ts). */
export interface InventoryPort {
  links(): string[];
  get(link: string): LinkInventory | undefined;
  refresh(link: string): Promise<LinkInventory | null>;
}

export interface CommandContext {
  cmd: string;
  req: Record<string, unknown>;
  sessionId: string | null;
  identity: Identity | null;
  conn: ConnectionApi;
  core: ServerCore;
  /**
   * The request's `pid`, parsed once by dispatch (`toInt`: a number, or a decimal/hex string) for
   * the pid-lock check and for the handler alike; undefined when the request has none. Handlers
   * read the pid from here, never from `req`, so the pid checked is the pid acted on.
   */
  pid?: number;
}

/** A command's handler. The role it needs is not here: it is in the one table, roles.ts. */
export interface CommandSpec {
  /** Changes a device or the gateway: audited even when it succeeds, and a `pid` it names is lock-checked. */
  mutates: boolean;
  /** Reads `pid` (dispatch parses it into `ctx.pid`); every mutating command does too. */
  takesPid?: boolean;
  run(ctx: CommandContext): CommandResult | Promise<CommandResult>;
}

/** The pid dispatch parsed, or the reference-style error naming the field. */
export function pidOf(ctx: CommandContext): number {
  if (ctx.pid === undefined) throw new RequestError(`${ctx.cmd} requires 'pid'`);
  return ctx.pid;
}

/** An integer field, or the reference-style error naming it. */
export function intField(req: Record<string, unknown>, field: string, cmd: string): number {
  const v = req[field];
  if (v === undefined || v === null) throw new RequestError(`${cmd} requires '${field}'`);
  return toInt(v, `${cmd} ${field} must be an integer`);
}

export function optIntField(req: Record<string, unknown>, field: string, cmd: string): number | undefined {
  const v = req[field];
  if (v === undefined || v === null) return undefined;
  return toInt(v, `${cmd} ${field} must be an integer`);
}

export function strField(req: Record<string, unknown>, field: string, cmd: string): string {
  const v = req[field];
  if (typeof v !== 'string' || v.length === 0) throw new RequestError(`${cmd} requires '${field}'`);
  return v;
}

/**
 * An optional free-text field (a client's `source`, an abort `reason`): a string of at most
 * MAX_TEXT_BYTES UTF-8 bytes, else a named error; absent, null or empty gives `fallback`.
 */
export function optText(req: Record<string, unknown>, field: string, fallback: string, cmd: string): string {
  const v = req[field];
  if (v === undefined || v === null || v === '') return fallback;
  return boundedText(v, field, cmd);
}

/** A free-text value checked for type and size: `<cmd> <field> must be a string`, `EINVAL:<field>_too_long`. */
export function boundedText(v: unknown, field: string, cmd: string, limit = MAX_TEXT_BYTES): string {
  if (typeof v !== 'string') throw new RequestError(`${cmd} ${field} must be a string`);
  // UTF-8 takes at least one byte per UTF-16 unit, so a longer string is refused without measuring it
  if (v.length > limit || Buffer.byteLength(v, 'utf8') > limit) throw new RequestError(`EINVAL:${field}_too_long`, { field, limit });
  return v;
}

/** The device a request names (`device`), or the default one; an unknown name is the request's error. */
export function deviceOf(ctx: CommandContext): DeviceRef {
  const name = ctx.req['device'];
  if (name !== undefined && name !== null) boundedText(name, 'device', ctx.cmd);
  const dev = ctx.core.device(name);
  if ('error' in dev) throw new RequestError(dev.error, dev.detail);
  return dev;
}

/**
 * A command that acts on one device: the device is resolved before `run` sees the request, the
 * same way for every such command.
 */
export function deviceCommand(
  mutates: boolean,
  run: (ctx: CommandContext, dev: DeviceRef) => CommandResult | Promise<CommandResult>,
  opts: { takesPid?: boolean } = {},
): CommandSpec {
  return { mutates, ...opts, run: (ctx) => run(ctx, deviceOf(ctx)) };
}

/** The address a stream of this request's connection counts against. */
export function streamAddress(ctx: CommandContext): string {
  return ctx.conn.address ?? ctx.conn.peer;
}

/**
 * Before a request's connection becomes an event stream: `ELIMIT:max_streams` or
 * `ELIMIT:max_streams_per_address` (detail.limit) when it would go over; the connection carries on.
 * `replacing`: the token of the session's stream the new one replaces (it does not count).
 */
export function admitStream(ctx: CommandContext, replacing?: string): void {
  const over = ctx.core.streamSlots.over(streamAddress(ctx), replacing);
  if (over) throw new RequestError(`ELIMIT:${over.name}`, { limit: over.limit });
}
