/**
 * One control connection: framing, request parsing, the version/command/role/session checks in
 * the reference's order, sequential handling (replies keep request order even when a handler
 * awaits), and bounded output. A client that stops reading first stops being read (we pause the
 * socket), and is dropped if its unread output still passes the limit. When the connection
 * becomes an event stream, the event bus's subscription decides what it gets; the socket's
 * buffer is only the last hop. Streaming loads opened here are aborted when it goes away.
 *
 * Events are written in batches: a burst of events costs one socket write per ~16 KiB instead
 * of one per event (a write per event per subscriber was most of the gateway's cost of a
 * fan-out). A batch is sent as soon as it is full, or when the synchronous job that produced it
 * ends (a microtask), so an event waits at most for the rest of its own burst, never for other
 * callbacks or a timer. (Flushing at setImmediate instead, after every timer and read due now,
 * held events for up to tens of ms on a busy host: bench/events.ts `gateway_handoff_p99_ms`.)
 * Replies first send the batch ahead of them.
 */
import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import { eventJson, type BusEvent, type CloseReason, type Subscription } from '../events/index.js';
import { roleAllows, type Identity } from './auth.js';
import { uploadKey, type CommandContext, type CommandResult, type CommandSpec, type ConnectionApi, type ServerCore } from './command-types.js';
import { LineFramer, type Frame } from './framing.js';
import { TurnShares } from './turns.js';
import { requestPid } from './pid-locks.js';
import { clip, MAX_REQUEST_DEPTH, nestsDeeperThan, requiredRole } from './roles.js';
import { RequestError } from './sessions.js';
import type { AuditLog, Verdict } from './audit.js';
import type { TokenStore } from './auth.js';
import { addressKey, limitLine, type AuthThrottle, type ControlLimits, type LimitLog } from './limits.js';

export interface ConnectionLimits {
  maxLineBytes: number;
  /** Unread reply/event bytes a client may leave in our buffer before it is dropped. */
  maxOutBytes: number;
  /** Event delivery pauses (and the bus queues) above this many unread bytes. */
  streamHighWater: number;
  /** Requests read ahead of the one being handled before we stop reading. */
  maxPipelined: number;
  /** A client whose unread output has not drained for this long is dropped. */
  stalledDropMs: number;
  /** Requests of one connection handled per turn of the event loop before the others get theirs (default 4). */
  requestsPerTurn?: number;
}

/** See pump(): few enough that a turn with every connection flooding stays short, enough that a pipelining client still gets thousands per second. */
export const DEFAULT_REQUESTS_PER_TURN = 4;

/** Connections handled per turn of the event loop after their first share (turns.ts; default 2). */
export const DEFAULT_SLICES_PER_TURN = 2;

/** How long a connection closed over a limit still has its input read (and dropped) so the client gets the error line. */
const LINGER_MS = 1000;

export interface ConnectionDeps {
  core: ServerCore;
  /** Handlers by name (the roles they need are in roles.ts). */
  commands: ReadonlyMap<string, CommandSpec>;
  tokens: TokenStore | null;
  audit: AuditLog;
  limits: ConnectionLimits;
  /** The named limits (limits.ts); the connection-count ones are the server's. */
  control: ControlLimits;
  /** Failed authentications per address: reply delays and coalesced audit lines. */
  throttle: AuthThrottle;
  /**
   * Connections closed over a limit that are still lingering (shared by the server's connections):
   * past `max` a connection is destroyed at once, so lingering cannot hold sockets without bound.
   */
  lingering?: { count: number; max: number };
  log?: (level: 'info' | 'warn' | 'debug' | 'error', obj: Record<string, unknown>, msg: string) => void;
  onAbortSession: (device: string, sessionId: number) => void;
  /** Where the lines of connections closed over a limit go, coalesced (limits.ts); else `log`, one each. */
  limitLog?: LimitLog;
  /** The peer's address and port when the caller has read them already (each read is a system call). */
  remote?: { address: string | undefined; port: number | undefined };
  /** The turns shared by the server's connections (turns.ts); a connection without one has its own. */
  turns?: TurnShares;
}

type Reply = Record<string, unknown>;

/** A batch of event lines is written once it reaches this size (or when the current job ends). */
const EVENT_BATCH_BYTES = 16 * 1024;

export class Connection implements ConnectionApi {
  readonly peer: string;
  private readonly framer: LineFramer;
  /** Requests (and framing errors, which keep their place in line) waiting to be handled. */
  private readonly pendingLines: ({ line: string } | { reply: Reply })[] = [];
  private busy = false;
  private identity: Identity | null;
  private stream: Subscription | null = null;
  private closed = false;
  /** The stream ended and the socket is half-closed: ignore whatever still arrives. */
  private ending = false;
  private readPaused = false;
  private stallTimer: NodeJS.Timeout | null = null;
  private readonly owned = new Map<string, Set<number>>();
  /** The remote address (without port), the key of the per-address limits. */
  readonly address: string;
  /** When it was accepted (ms since the epoch). */
  readonly openedAt = Date.now();
  /** Bytes received so far. */
  bytesIn = 0;
  /**
   * Authenticated: it presented a valid token (`auth`, or a request carrying one); without a
   * token store, it sent its first line. Until then the pre-auth limits apply to it and the
   * server may close it to make room (server.ts).
   */
  private isEstablished = false;
  private authFailures = 0;
  /** The role of the last valid token a request carried (for /metrics; each request is still checked on its own token). */
  private presentedRole: string | null = null;
  private lastInput = Date.now();
  private preAuthTimer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;
  /** Set by a request that is to be the last: after its reply the connection is closed over this limit. */
  private closeAfterReply: { name: keyof ControlLimits; limit: number } | null = null;
  /** Event lines not yet handed to the socket. */
  private batch = '';
  private batchScheduled = false;
  /** pump() is handling requests: replies join `batch` and go out when it yields or stops (or before a handler waits). */
  private holdReplies = false;
  private noDelay = false;
  private readonly turns: TurnShares;

  constructor(
    readonly id: number,
    private readonly socket: Socket,
    private readonly deps: ConnectionDeps,
  ) {
    this.turns = deps.turns ?? new TurnShares(DEFAULT_SLICES_PER_TURN);
    const remote = deps.remote ?? { address: socket.remoteAddress, port: socket.remotePort };
    this.peer = `${remote.address ?? '?'}:${remote.port ?? 0}`;
    this.address = addressKey(remote.address);
    // Without a token store every (necessarily local) client is trusted fully.
    this.identity = deps.tokens ? null : { name: 'local', role: 'admin' };
    // Before a token: short lines only (without a token store there is nothing to wait for).
    const firstLimit = deps.tokens ? Math.min(deps.control.pre_auth_line_bytes, deps.limits.maxLineBytes) : deps.limits.maxLineBytes;
    this.framer = new LineFramer(firstLimit, (f) => this.onFrame(f));
    this.preAuthTimer = setTimeout(() => {
      this.preAuthTimer = null;
      if (!this.isEstablished) this.closeOverLimit('pre_auth_timeout_ms', deps.control.pre_auth_timeout_ms);
    }, deps.control.pre_auth_timeout_ms);
    this.preAuthTimer.unref();
    socket.on('data', (chunk: Buffer) => {
      if (this.closed || this.ending) return; // closing: what still arrives is dropped unread
      this.bytesIn += chunk.length;
      this.lastInput = Date.now();
      try {
        this.framer.push(chunk);
      } catch (e) {
        // framing is ours, not the client's, but even so: one connection's bug is not the process's
        this.enqueueReply(this.internalError(e, 'framing', null));
      }
    });
    socket.on('drain', () => this.onDrain());
    socket.on('error', () => {
      /* reported through 'close' */
    });
    socket.on('close', () => this.onClose());
    socket.resume(); // the server accepts paused (server.ts): reading starts here
  }

  // ---- ConnectionApi -------------------------------------------------------------------------

  ownSession(device: string, sessionId: number): void {
    let set = this.owned.get(device);
    if (!set) this.owned.set(device, (set = new Set()));
    set.add(sessionId);
    this.deps.core.uploads.set(uploadKey(device, sessionId), this.id);
  }

  disownSession(device: string, sessionId: number): void {
    this.owned.get(device)?.delete(sessionId);
    const key = uploadKey(device, sessionId);
    if (this.deps.core.uploads.get(key) === this.id) this.deps.core.uploads.delete(key);
  }

  setIdentity(identity: Identity): void {
    this.identity = identity;
    this.establish();
  }

  /** The role this connection holds (`auth`), else the one its requests' tokens last showed; `none` before a token. */
  get role(): string {
    return this.identity?.role ?? this.presentedRole ?? 'none';
  }

  /** Authenticated (see isEstablished); the server's unauthenticated count is of those that are not. */
  get established(): boolean {
    return this.isEstablished;
  }

  /** Open and not closing: counts toward the connection limits. */
  get active(): boolean {
    return !this.closed && !this.ending;
  }

  /**
   * Sends the error line naming a limit, `ELIMIT:<name>` with `detail.limit`, and closes: no more
   * requests are handled, nothing more is read, and the socket is destroyed once the client
   * closes or after a short linger (so the client can read the line before a reset).
   */
  closeOverLimit(name: keyof ControlLimits, limit: number): void {
    if (this.closed || this.ending) return;
    if (this.deps.limitLog) this.deps.limitLog.note('closed', name, limit, this.peer, { established: this.isEstablished });
    else this.deps.log?.('info', { peer: this.peer, limit: name, value: limit, established: this.isEstablished }, `control: connection closed over limit ${name}`);
    this.flushBatch();
    this.ending = true;
    this.pendingLines.length = 0;
    this.framer.reset();
    this.clearTimers();
    if (this.stream) {
      const sub = this.stream;
      this.stream = null;
      this.deps.core.bus.unsubscribe(sub.token);
    }
    // Nothing more is read: what the client still sends waits in the kernel's buffer, not ours,
    // until the client closes (it got our FIN) or the linger ends and the socket is destroyed.
    this.socket.pause();
    stopReading(this.socket);
    this.readPaused = true;
    this.socket.end(limitLine(name, limit));
    const lingering = this.deps.lingering;
    if (lingering && lingering.count >= lingering.max) {
      this.socket.once('finish', () => this.socket.destroy()); // too many already: the line is written, then we close
      return;
    }
    if (lingering) {
      lingering.count++;
      this.socket.once('close', () => lingering.count--);
    }
    this.lingerTimer = setTimeout(() => this.socket.destroy(), LINGER_MS);
    this.lingerTimer.unref();
  }

  /** From now on: the full line limit, no pre-auth deadline, the idle timeout. */
  private establish(): void {
    if (this.isEstablished) return;
    this.isEstablished = true;
    if (this.preAuthTimer) clearTimeout(this.preAuthTimer);
    this.preAuthTimer = null;
    this.framer.setLimit(this.deps.limits.maxLineBytes);
    this.armIdle(this.deps.control.idle_timeout_ms);
  }

  private armIdle(ms: number): void {
    if (this.deps.control.idle_timeout_ms <= 0 || this.closed || this.ending) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.closed || this.ending) return;
      const idle = this.deps.control.idle_timeout_ms;
      // a stream is read-only by protocol (its liveness is the stalled-output rule); a request
      // being handled, or waiting, is not idleness
      if (this.stream || this.busy || this.pendingLines.length) return this.armIdle(idle);
      const quiet = Date.now() - this.lastInput;
      if (quiet >= idle) this.closeOverLimit('idle_timeout_ms', idle);
      else this.armIdle(idle - quiet);
    }, ms);
    this.idleTimer.unref();
  }

  private clearTimers(): void {
    for (const t of [this.preAuthTimer, this.idleTimer, this.stallTimer]) if (t) clearTimeout(t);
    this.preAuthTimer = this.idleTimer = this.stallTimer = null;
  }

  deliverEvent(ev: BusEvent): boolean {
    if (this.closed || this.ending) return false;
    this.batch += eventJson(ev);
    this.batch += '\n';
    // Full batches go out at once, so an event waits at most for ~16 KiB of events behind it,
    // never for the end of a long producer burst.
    if (this.batch.length >= EVENT_BATCH_BYTES) this.flushBatch();
    else if (!this.batchScheduled) {
      this.batchScheduled = true;
      queueMicrotask(() => {
        this.batchScheduled = false;
        this.flushBatch();
      });
    }
    // Past the high-water mark the bus holds (and, if need be, drops) events for this client;
    // the socket's buffer is not allowed to become a second, unbounded queue.
    return !this.closed && this.socket.writableLength + this.batch.length < this.deps.limits.streamHighWater;
  }

  streamClosed(_reason: CloseReason): void {
    // The reference ends the stream connection when its subscription ends (EOF after unsubscribe).
    this.stream = null;
    this.flushBatch(); // the last events (e.g. slow_consumer_drop) still go out
    this.ending = true; // nothing more is read or written on it
    if (this.closed) return;
    this.socket.end();
    // A client that is not reading would hold the half-closed socket open forever.
    if (this.socket.writableLength > 0) setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /** Ends the connection (server shutdown). */
  close(): void {
    if (!this.closed) this.socket.destroy();
  }

  // ---- input ----------------------------------------------------------------------------------

  private onFrame(f: Frame): void {
    if (this.closed || this.ending) return;
    if (this.stream) return; // a stream connection carries events only; its input is ignored (as the reference does)
    if (f.kind === 'too_long' && !this.isEstablished && this.deps.tokens) {
      this.closeOverLimit('pre_auth_line_bytes', f.limit);
      return;
    }
    if (f.kind === 'line' && !this.deps.tokens) this.establish(); // no token store: a first line is all it takes
    if (f.kind === 'too_long') {
      this.enqueueReply({ version: 1, status: 'error', error: `line_too_long:${f.limit}` });
      return;
    }
    if (f.kind === 'invalid_utf8') {
      this.enqueueReply({ version: 1, status: 'error', error: 'invalid_utf8' });
      return;
    }
    this.pendingLines.push({ line: f.text });
    if (this.pendingLines.length >= this.deps.limits.maxPipelined) this.pauseReading();
    void this.pump();
  }

  /** Error replies found while framing still wait their turn behind earlier requests. */
  private enqueueReply(reply: Reply): void {
    this.pendingLines.push({ reply });
    void this.pump();
  }

  /**
   * Handles the waiting requests in order, at most `requestsPerTurn` of them per turn of the event
   * loop: then the replies so far go out in one write and the rest waits for the next turn
   * (setImmediate), after the loop has polled every socket. So a client that pipelines thousands
   * of requests costs every other client at most a few requests' time per turn, and a new client's
   * request is read and answered in the turn it arrives (issue 23: a burst of 50,000
   * `session.open` from a few clients slowed everyone else's ping 200-fold when each connection
   * was served until its queue was empty). Reading stops while `maxPipelined` requests wait
   * (they wait in the kernel and in the client, not here) and resumes below half of it.
   */
  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    this.holdReplies = true;
    let served = 0;
    try {
      while (this.pendingLines.length && !this.closed && !this.stream) {
        if (served >= this.requestsPerTurn) {
          this.releaseReplies();
          this.resumeIfRoom();
          await this.turns.next();
          this.holdReplies = true;
          served = 0;
          continue;
        }
        const item = this.pendingLines.shift() as { line: string } | { reply: Reply };
        served++;
        if ('reply' in item) {
          this.writeLine(serialize(item.reply) ?? INTERNAL_ERROR_LINE);
          continue;
        }
        await this.serveLine(item.line);
        if (this.closeAfterReply) {
          const { name, limit } = this.closeAfterReply;
          this.closeAfterReply = null;
          this.closeOverLimit(name, limit);
        }
      }
    } finally {
      this.busy = false;
      this.releaseReplies();
    }
    this.resumeIfRoom();
  }

  private get requestsPerTurn(): number {
    return this.deps.limits.requestsPerTurn ?? DEFAULT_REQUESTS_PER_TURN;
  }

  /** Sends the replies held so far and keeps holding the next ones (a handler is about to wait). */
  private releaseHeldReplies(): void {
    if (this.holdReplies) this.flushBatch();
  }

  /** Replies held while a turn's requests are handled go out now (one write), and later ones at once. */
  private releaseReplies(): void {
    this.holdReplies = false;
    this.flushBatch();
  }

  private resumeIfRoom(): void {
    if (this.pendingLines.length < this.deps.limits.maxPipelined / 2) this.resumeReading();
  }

  /**
   * The error boundary: one request, from parsing to the written reply. Whatever throws in
   * between (parsing, dispatch, a handler, serialising the reply, the audit log) is answered with
   * `internal_error` and logged; it never reaches the event loop, so it can neither end the
   * process nor this connection.
   */
  private async serveLine(line: string): Promise<void> {
    let stage = 'dispatch';
    let cmd: string | null = null;
    try {
      const result = await this.handle(line, (c) => (cmd = c));
      if (this.closed) return;
      stage = 'reply';
      if (result.kind === 'stream') {
        const text = serialize({ version: 1, status: 'ok', ...result.body });
        if (text === null) {
          this.deps.core.bus.unsubscribe(result.subscription.token);
          throw new Error('stream reply is not serialisable');
        }
        this.writeLine(text);
        this.stream = result.subscription;
        this.pendingLines.length = 0;
        stage = 'stream_start';
        result.subscription.start();
        return;
      }
      const reply = result.kind === 'ok'
        ? { version: 1, status: 'ok', ...result.body }
        : result.detail === undefined
          ? { version: 1, status: 'error', error: result.error }
          : { version: 1, status: 'error', error: result.error, detail: result.detail };
      const text = serialize(reply);
      if (text === null) throw new Error(`reply to ${cmd ?? '?'} is not serialisable`);
      this.writeLine(text);
    } catch (e) {
      if (this.closed) return;
      const reply = this.internalError(e, stage, cmd); // logged in any case
      if (this.stream) {
        // the stream was answered but failed to start: end it (and with it this connection, as any
        // ended stream does) rather than leave a client waiting for events that never come
        this.deps.core.bus.unsubscribe(this.stream.token);
        return;
      }
      this.writeLine(serialize(reply) ?? INTERNAL_ERROR_LINE);
    }
  }

  /**
   * An unexpected exception as a reply: `internal_error` with an incident id that is also in the
   * error log line (with the stack), so an operator can find what happened without the client
   * seeing our internals.
   */
  private internalError(e: unknown, stage: string, cmd: string | null): Reply {
    const incident = randomUUID();
    try {
      // an Error goes to pino's err serializer (type, message, stack); anything else as text
      const err = e instanceof Error ? e : { message: safeString(e) };
      this.deps.log?.('error', { incident, peer: this.peer, cmd, stage, err }, 'control: internal error answering a request');
    } catch {
      /* the log itself failed: the reply still goes out */
    }
    return { version: 1, status: 'error', error: 'internal_error', detail: { incident } };
  }

  private async handle(line: string, named: (cmd: string) => void): Promise<CommandResult> {
    let req: unknown;
    try {
      req = JSON.parse(line);
    } catch {
      return { kind: 'error', error: 'invalid_json' };
    }
    if (req === null || typeof req !== 'object' || Array.isArray(req)) return { kind: 'error', error: 'invalid_json' };
    // Before anything walks or prints the request: a 5,000-deep value overflows the stack of
    // String()/JSON.stringify. The check itself uses no recursion.
    if (nestsDeeperThan(req, MAX_REQUEST_DEPTH)) return { kind: 'error', error: 'EINVAL:request_too_deep', detail: { limit: MAX_REQUEST_DEPTH } };
    const r = req as Record<string, unknown>;
    const version = own(r, 'version') ?? 1;
    if (version !== 1) return { kind: 'error', error: `unsupported_version:${typeof version === 'string' ? clip(version) : clip(JSON.stringify(version))}` };
    const cmdRaw = own(r, 'cmd');
    const cmd = typeof cmdRaw === 'string' ? cmdRaw.toLowerCase()
      : typeof cmdRaw === 'number' || typeof cmdRaw === 'boolean' ? String(cmdRaw)
        : cmdRaw === undefined || cmdRaw === null ? ''
          : clip(JSON.stringify(cmdRaw));
    // One table (roles.ts), two Maps: a name that is not a command is unknown, whatever it is.
    const spec = typeof cmdRaw === 'string' ? this.deps.commands.get(cmd) : undefined;
    const need = spec ? requiredRole(cmd, r) : undefined;
    if (!spec || need === undefined) return { kind: 'error', error: `unknown_cmd:${clip(cmd)}` };
    named(cmd);

    const core = this.deps.core;
    const sessionRaw = own(r, 'session');
    const sessionId = typeof sessionRaw === 'string' && sessionRaw.trim() ? sessionRaw.trim() : null;

    // Who is asking: a token on the request, else the connection's (auth command), else nobody.
    let identity = this.identity;
    const token = own(r, 'token');
    if (typeof token === 'string' && this.deps.tokens) {
      identity = this.deps.tokens.verify(token);
      if (!identity) return this.authFailed(cmd, r);
      this.presentedRole = identity.role;
      this.establish(); // it holds a token: the pre-auth limits are over
    }
    if (cmd === 'auth') return this.authenticate(r);
    if (need !== null && !roleAllows(identity?.role ?? null, need)) {
      return this.deny(cmd, r, identity, `EPERM:${need}_required`);
    }

    const ctx: CommandContext = { cmd, req: r, sessionId, identity, conn: this, core };
    let result: CommandResult;
    try {
      core.sessions.prune();
      if (sessionId !== null && !cmd.startsWith('session.')) core.sessions.touch(sessionId);
      // The pid is parsed once, whatever its JSON type ("1", "0x1", 1 are one pid), and that
      // value is both lock-checked and handed to the command. A pid locked by a session may be
      // changed only through that session (reference semantics).
      const pid = requestPid(spec, cmd, r, sessionId, core);
      if (pid !== undefined) ctx.pid = pid;
      const running = spec.run(ctx);
      if (running instanceof Promise) this.releaseHeldReplies(); // it may take a while: what is answered goes out first
      result = await running;
    } catch (e) {
      if (!(e instanceof RequestError)) {
        // answered by the boundary in serveLine (internal_error); a changing command still gets its audit line
        if (spec.mutates) {
          try {
            this.audit(cmd, r, identity, 'error', 'internal_error');
          } catch {
            /* the boundary logs the original error */
          }
        }
        throw e;
      }
      result = e.detail === undefined ? { kind: 'error', error: e.wire } : { kind: 'error', error: e.wire, detail: e.detail };
    }
    if (spec.mutates) {
      if (result.kind === 'error') this.audit(cmd, r, identity, 'error', result.error);
      else if (result.kind === 'ok' && result.refused !== undefined) this.audit(cmd, r, identity, 'error', result.refused);
      else this.audit(cmd, r, identity, 'ok');
    }
    core.recent.record(result.kind === 'error' ? 'warning' : 'debug', 'control request', {
      command: cmd, session: sessionId, peer: this.peer, who: identity?.name ?? 'anonymous',
      ...(result.kind === 'error' ? { error: result.error } : {}),
    });
    return result;
  }

  private authenticate(r: Record<string, unknown>): CommandResult | Promise<CommandResult> {
    if (!this.deps.tokens) return { kind: 'ok', body: { auth: { name: 'local', role: 'admin', tokens: false } } };
    const token = r['token'];
    const id = typeof token === 'string' ? this.deps.tokens.verify(token) : null;
    if (!id) return this.authFailed('auth', r);
    this.identity = id;
    this.establish();
    return { kind: 'ok', body: { auth: { name: id.name, role: id.role } } };
  }

  /**
   * A wrong token (`auth`, or a request carrying one): the reply waits, longer with each failure
   * of this connection and of its address (limits.ts AuthThrottle); the audit line of an address's
   * repeated failures is coalesced; after `max_auth_failures` the connection is closed.
   */
  private async authFailed(cmd: string, r: Record<string, unknown>): Promise<CommandResult> {
    this.authFailures++;
    const { delayMs, auditThis } = this.deps.throttle.fail(this.address, this.authFailures);
    const error = 'EPERM:invalid_token';
    if (auditThis) this.audit(cmd, r, null, 'denied', error);
    if (delayMs > 0) {
      this.releaseHeldReplies();
      await new Promise<void>((done) => {
        // a connection that goes away is not waited for
        const onClose = () => {
          clearTimeout(timer);
          done();
        };
        const timer = setTimeout(() => {
          this.socket.off('close', onClose);
          done();
        }, delayMs);
        this.socket.once('close', onClose);
      });
    }
    const max = this.deps.control.max_auth_failures;
    if (this.authFailures >= max) this.closeAfterReply = { name: 'max_auth_failures', limit: max };
    return { kind: 'error', error };
  }

  private deny(cmd: string, r: Record<string, unknown>, identity: Identity | null, error: string): CommandResult {
    this.audit(cmd, r, identity, 'denied', error);
    return { kind: 'error', error };
  }

  /** One audit line: who asked for what, on which target, and the verdict. */
  private audit(cmd: string, r: Record<string, unknown>, identity: Identity | null, verdict: Verdict, reason?: string): void {
    this.deps.audit.record({
      who: identity?.name ?? 'anonymous',
      role: identity?.role ?? null,
      peer: this.peer,
      cmd,
      ...(typeof r['device'] === 'string' ? { device: clip(r['device'], 200) } : {}),
      target: targetOf(r),
      verdict,
      ...(reason !== undefined ? { reason: clip(reason, 300) } : {}),
    });
  }

  // ---- output ---------------------------------------------------------------------------------

  private writeLine(text: string): void {
    if (this.holdReplies) {
      // while pump() handles a turn's requests: one write for all their replies (a write per
      // reply was a third of the server's time in a pipelined burst); events delivered in
      // between keep their place, they share the batch
      this.batch += text;
      this.batch += '\n';
      if (this.batch.length >= EVENT_BATCH_BYTES) this.flushBatch();
      return;
    }
    this.flushBatch(); // keeps what was delivered before this line ahead of it
    this.send(`${text}\n`);
  }

  private flushBatch(): void {
    if (this.batch === '') return;
    const data = this.batch;
    this.batch = '';
    this.send(data);
  }

  private send(data: string): void {
    if (this.closed || this.ending) return;
    if (!this.noDelay) {
      // at the first reply, not at accept: an idle connection never pays for the system call
      this.noDelay = true;
      this.socket.setNoDelay(true);
    }
    const flushed = this.socket.write(data);
    if (this.socket.writableLength > this.deps.limits.maxOutBytes) {
      this.deps.log?.('warn', { peer: this.peer, unread: this.socket.writableLength }, 'control client is not reading; dropping it');
      this.socket.destroy();
      return;
    }
    if (!flushed) {
      // A client that does not read its replies stops being read (requests wait in its socket)...
      if (!this.stream) this.pauseReading();
      // ...and one that stays that way is dropped, so it cannot pin a connection forever.
      this.stallTimer ??= setTimeout(() => {
        this.deps.log?.('warn', { peer: this.peer, unread: this.socket.writableLength }, 'control client stopped reading; dropping it');
        this.socket.destroy();
      }, this.deps.limits.stalledDropMs).unref();
    }
  }

  /** Bytes written to this client that it has not read yet (what we hold for it). */
  get unreadBytes(): number {
    return this.socket.writableLength;
  }

  get streaming(): boolean {
    return this.stream !== null;
  }

  private onDrain(): void {
    if (this.stallTimer) {
      clearTimeout(this.stallTimer);
      this.stallTimer = null;
    }
    if (this.stream) this.stream.resume();
    else if (this.pendingLines.length < this.deps.limits.maxPipelined) this.resumeReading();
  }

  private pauseReading(): void {
    if (!this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    }
  }

  private resumeReading(): void {
    if (this.closed || this.ending) return; // closing over a limit: nothing more is read
    if (this.readPaused && this.socket.writableLength < this.deps.limits.streamHighWater) {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.pendingLines.length = 0;
    this.batch = '';
    this.framer.reset();
    this.clearTimers();
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    if (this.stream) {
      const sub = this.stream;
      this.stream = null;
      this.deps.core.bus.unsubscribe(sub.token);
    }
    for (const [device, ids] of this.owned) {
      for (const sid of ids) {
        const key = uploadKey(device, sid);
        if (this.deps.core.uploads.get(key) === this.id) this.deps.core.uploads.delete(key);
        try {
          this.deps.onAbortSession(device, sid);
        } catch (e) {
          this.deps.log?.('error', { peer: this.peer, device, session_id: sid, err: safeString(e) }, 'control: aborting a session of a closed connection failed');
        }
      }
    }
    this.owned.clear();
  }
}

/**
 * Stops the socket's reads at once. `pause()` alone keeps reading into the stream's buffer (up to
 * its high-water mark, 64 KiB per read): a flooding client closed over a limit would still cost a
 * read buffer or two while it lingers. Uses the handle's readStop when there is one.
 */
function stopReading(socket: Socket): void {
  try {
    const handle = (socket as unknown as { _handle?: { reading?: boolean; readStop?: () => number } })._handle;
    if (handle && typeof handle.readStop === 'function') {
      handle.reading = false;
      handle.readStop();
    }
  } catch {
    /* pause() already holds further data back */
  }
}

/** A request's own field (never one inherited from Object.prototype). */
function own(r: Record<string, unknown>, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(r, key) ? r[key] : undefined;
}

/** JSON text of a reply, or null when it cannot be serialised (a BigInt, a cycle, too deep). */
function serialize(reply: Reply): string | null {
  try {
    return JSON.stringify(reply);
  } catch {
    return null;
  }
}

/** Sent when even the internal_error reply cannot be built. */
const INTERNAL_ERROR_LINE = '{"version":1,"status":"error","error":"internal_error"}';

/** A thrown value as text, without trusting it (String() of a parsed object can itself throw). */
function safeString(e: unknown): string {
  try {
    return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  } catch {
    return Object.prototype.toString.call(e);
  }
}

/** The request fields that say what a command acts on, for the audit line. */
function targetOf(r: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of ['pid', 'session_id', 'path', 'target', 'source', 'reason', 'oid', 'link', 'node']) {
    const v = own(r, k);
    if (typeof v === 'string' || typeof v === 'number') out[k] = typeof v === 'string' ? clip(v, 200) : v;
  }
  return out;
}
