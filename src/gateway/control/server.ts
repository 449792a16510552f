/**
 * The control server: JSON lines over TCP, compatible with the HSX executive protocol
 * (docs/executive_protocol.md), in front of one engine or several (one per simulated device).
 * It owns the listening socket, the connections, the protocol sessions and the access policy;
 * the engines and the event bus come from its caller. Reading image files for `load` happens
 * here, in the gateway layer, because the engine does no I/O.
 */
import { createServer, Socket, type Server } from 'node:net';
import { resolve } from 'node:path';
import pino, { type Logger } from 'pino';
import { systemClock } from '../../engine/clock.js';
import type { Clock, TimerHandle } from '../../engine/ports.js';
import { err, ok, type Result } from '../../hxe/result.js';
import type { EventBus } from '../events/index.js';
import { AuditLog } from './audit.js';
import { isLoopbackHost, parseTokenEnv, TokenStore, type TokenEntry } from './auth.js';
import { RecentLog, type CommandSpec, type DeviceRef, type ServerCore, type InventoryPort } from './command-types.js';
import { execCommands } from './exec-commands.js';
import type { CanBus } from '../../link/can/bus.js';
import { Connection, DEFAULT_SLICES_PER_TURN, type ConnectionLimits } from './connection.js';
import { TurnShares } from './turns.js';
import type { ControlEngine, WireError } from './engine-port.js';
import { DEFAULT_MAX_IMAGE_BYTES, readImageInside } from './image-files.js';
import { addressKey, AuthThrottle, DEFAULT_CONTROL_LIMITS, LimitLog, limitLine, StreamSlots, type ControlLimits } from './limits.js';
import { JOB_UPLOAD_OWNER, jobCommands, JobUploads } from './job-commands.js';
import type { JobService } from '../jobs/types.js';
import { protocolCommands } from './protocol-commands.js';
import { provisionCommands } from './provision-commands.js';
import { COMMAND_ROLES } from './roles.js';
import { runCommandAs, type RunAsCaller } from './run-as.js';
import type { CommandResult } from './command-types.js';
import type { Identity } from './auth.js';
import { DEFAULT_SESSION_LIMITS, RequestError, SessionRegistry, type SessionLimits } from './sessions.js';

export const TOKENS_ENV = 'HSX_GATEWAY_TOKENS';
export const DEFAULT_CONTROL_PORT = 9998;

export interface ControlServerOptions {
  /** One engine (device "default"), or a map of device name → engine; a request may name `device`. */
  engine?: ControlEngine;
  engines?: ReadonlyMap<string, ControlEngine> | Readonly<Record<string, ControlEngine>>;
  bus: EventBus;
  clock?: Clock;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Token hashes from the gateway config (`[[control.tokens]]`). */
  tokens?: readonly TokenEntry[];
  /** Where HSX_GATEWAY_TOKENS is read from (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  maxLineBytes?: number;
  maxOutBytes?: number;
  streamHighWater?: number;
  maxPipelined?: number;
  stalledDropMs?: number;
  /** Requests of one connection handled per turn of the event loop (connection.ts pump; default 4). */
  requestsPerTurn?: number;
  /** Connections with requests still waiting that get their share in one turn (turns.ts; default 2). */
  slicesPerTurn?: number;
  /** Same as `limits.max_connections`. */
  maxConnections?: number;
  /** The named limits (limits.ts; `[control]` keys of the gateway config); unset ones take their defaults. */
  limits?: Partial<ControlLimits>;
  logger?: Logger;
  /** Where audit lines go (the gateway gives a root-logger child with component "audit"); default `logger`. */
  auditLogger?: Logger;
  /**
   * The only directory a request's `path` (`load`, `exec`, `provision.load`) may name a file in;
   * paths are relative to it (`[control] images_dir`). Without it, no request may name a file.
   */
  imagesDir?: string;
  /** At most this many bytes are read from a file a request names (default 1 MiB; docs/security.md). */
  maxImageBytes?: number;
  sessionLimits?: Partial<SessionLimits>;
  /** Called after an admin's `shutdown` was answered (default: close this server). */
  onShutdown?: () => void;
  /** Extra fields for `info`. */
  info?: Record<string, unknown>;
  /**
   * The daemon's job service: the `job.*` commands drive it (docs/executive_protocol.md, "Jobs").
   * Without it they answer `ENOTSUP:jobs_disabled`. The gateway also publishes every job event on
   * `bus` (`jobEventToBus`, src/gateway/jobs/bus-events.ts), which is what `job.watch` streams.
   */
  jobs?: JobService;
  /** The master links' inventory (`inventory` command); absent when the gateway masters no link. */
  inventory?: InventoryPort;
  /** CAN master links by name, for `val.get`/`val.set` of a node (`link`, `node`). */
  valueBuses?: ReadonlyMap<string, CanBus> | (() => ReadonlyMap<string, CanBus>);
}

export interface ControlServerError {
  code: 'EINSECURE' | 'ETOKENS' | 'ENODEV' | 'ELISTEN';
  message: string;
}

/** Command name → handler, a `Map` (never a plain object: `__proto__` is not a command). Roles: roles.ts. */
const COMMANDS: ReadonlyMap<string, CommandSpec> = new Map([
  ...Object.entries(protocolCommands),
  ...Object.entries(provisionCommands),
  ...Object.entries(jobCommands),
  ...Object.entries(execCommands),
]);
// The role table and the handlers must name the same commands: one without the other is a bug.
for (const name of new Set([...COMMANDS.keys(), ...COMMAND_ROLES.keys()])) {
  if (!COMMANDS.has(name) || !COMMAND_ROLES.has(name)) throw new Error(`control: command ${name} needs both a handler and a role (roles.ts)`);
}

/** The `[control]` table of the gateway config (src/gateway/config.ts) as server options. */
export function controlOptionsFromConfig(control: {
  listen: string;
  tokens: readonly TokenEntry[];
  max_line_bytes: number;
  images_dir?: string;
  max_image_bytes?: number;
} & Partial<ControlLimits>): Pick<ControlServerOptions, 'host' | 'port' | 'tokens' | 'maxLineBytes' | 'imagesDir' | 'maxImageBytes' | 'limits'> {
  const at = control.listen.lastIndexOf(':');
  return {
    host: control.listen.slice(0, at).replace(/^\[|\]$/g, ''),
    port: Number(control.listen.slice(at + 1)),
    tokens: control.tokens,
    maxLineBytes: control.max_line_bytes,
    limits: controlLimitsFromConfig(control),
    ...(control.images_dir !== undefined ? { imagesDir: control.images_dir } : {}),
    ...(control.max_image_bytes !== undefined ? { maxImageBytes: control.max_image_bytes } : {}),
  };
}

/** The named limits found in a `[control]` table (the others keep their defaults). */
export function controlLimitsFromConfig(control: Partial<ControlLimits>): Partial<ControlLimits> {
  const out: Partial<ControlLimits> = {};
  for (const k of Object.keys(DEFAULT_CONTROL_LIMITS) as (keyof ControlLimits)[]) {
    const v = control[k];
    if (typeof v === 'number') out[k] = v;
  }
  return out;
}

/** The commands that change a device or the gateway (audited; a pid they name is lock-checked, pid-locks.ts). */
export function changingCommands(): string[] {
  return [...COMMANDS].filter(([, spec]) => spec.mutates).map(([name]) => name);
}

/** Every command and the role it needs (for docs, tests and `info`); null = anyone. A copy of roles.ts's table. */
export function commandRoles(): Record<string, string | null> {
  return Object.fromEntries(COMMAND_ROLES);
}

export class ControlServer {
  readonly notes: string[] = [];
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  private readonly devices: Map<string, ControlEngine>;
  private readonly tokens: TokenStore | null;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly core: ServerCore;
  private readonly limits: ConnectionLimits;
  /** The named limits in force (defaults + options). */
  readonly controlLimits: Readonly<ControlLimits>;
  private readonly throttle: AuthThrottle;
  /** Connections closed over a limit that still linger so their client can read the error line. */
  private readonly lingering = { count: 0, max: 32 };
  private readonly host: string;
  private readonly port: number;
  private nextConnId = 1;
  private pruneTimer: TimerHandle | null = null;
  private listening = false;
  private readonly audit: AuditLog;
  /** Connections refused or closed over a limit, logged coalesced (limits.ts). */
  private readonly limitLog: LimitLog;
  /** The event loop's turns, shared among connections with a backlog of requests (turns.ts). */
  private readonly turns: TurnShares;

  private constructor(private readonly opts: ControlServerOptions, devices: Map<string, ControlEngine>, tokens: TokenStore | null) {
    this.devices = devices;
    this.tokens = tokens;
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger ?? pino({ name: 'control' }, pino.destination(2));
    this.host = opts.host ?? '127.0.0.1';
    this.port = opts.port ?? DEFAULT_CONTROL_PORT;
    this.limits = {
      maxLineBytes: opts.maxLineBytes ?? 1024 * 1024,
      maxOutBytes: opts.maxOutBytes ?? 8 * 1024 * 1024,
      streamHighWater: opts.streamHighWater ?? 256 * 1024,
      maxPipelined: opts.maxPipelined ?? 64,
      stalledDropMs: opts.stalledDropMs ?? 30_000,
      ...(opts.requestsPerTurn !== undefined ? { requestsPerTurn: opts.requestsPerTurn } : {}),
    };
    this.limitLog = new LimitLog((obj, msg) => this.logger.info(obj, msg));
    this.turns = new TurnShares(opts.slicesPerTurn ?? DEFAULT_SLICES_PER_TURN);
    this.controlLimits = Object.freeze({
      ...DEFAULT_CONTROL_LIMITS,
      ...opts.limits,
      ...(opts.maxConnections !== undefined ? { max_connections: opts.maxConnections } : {}),
    });
    const sessionLimits: SessionLimits = {
      ...DEFAULT_SESSION_LIMITS,
      maxSessions: this.controlLimits.max_sessions,
      maxSessionsPerOwner: this.controlLimits.max_sessions_per_connection,
      ...opts.sessionLimits,
    };
    const sessions = new SessionRegistry(this.clock, sessionLimits, (id) => {
      const token = this.core.streams.get(id);
      if (token !== undefined) opts.bus.unsubscribe(token);
    });
    // Its own logger (component "audit", a child of the root logger: a child of the control
    // logger with another `component` would write that key twice in one line).
    const auditLogger = opts.auditLogger ?? this.logger;
    const audit = new AuditLog(auditLogger, () => Date.now());
    this.audit = audit;
    this.throttle = new AuthThrottle(this.controlLimits, auditLogger);
    const names = [...devices.keys()];
    const jobUploads = new JobUploads();
    this.core = {
      bus: opts.bus,
      sessions,
      clock: this.clock,
      tokensConfigured: tokens !== null,
      streams: new Map(),
      streamSlots: new StreamSlots(() => this.controlLimits),
      uploads: new Map(),
      device: (name) => this.deviceRef(name),
      deviceNames: () => names,
      readImage: (path, field) => this.readImage(path, field),
      maxImageBytes: opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES,
      jobs: opts.jobs ?? null,
      inventory: opts.inventory ?? null,
      jobUploads,
      valueBus: (link) => this.valueBuses().get(link),
      valueLinks: () => [...this.valueBuses().keys()],
      recent: new RecentLog(this.clock, opts.bus),
      requestShutdown: () => {
        setImmediate(() => (opts.onShutdown ? opts.onShutdown() : void this.close()));
      },
      info: () => ({
        name: 'hsx-gateway',
        protocol: 1,
        devices: names,
        default_device: names[0] ?? null,
        event_seq: opts.bus.lastSeq,
        sessions: sessions.size,
        connections: this.connections.size,
        auth: tokens ? 'tokens' : 'loopback',
        jobs: opts.jobs ? 'enabled' : 'disabled',
        ...opts.info,
      }),
    };
    // the connection limits are ours (accept below): Node's maxConnections would drop the excess
    // without a word, and could not make room by closing an unauthenticated connection
    // (paused: a refused connection is never read; an admitted one is resumed by its Connection)
    this.server = createServer({ pauseOnConnect: true }, (socket) => this.accept(socket, audit));
  }

  /** Validates the options (devices, tokens) without touching the network. */
  static create(opts: ControlServerOptions): Result<ControlServer, ControlServerError> {
    const devices = new Map<string, ControlEngine>();
    if (opts.engines) {
      const entries = opts.engines instanceof Map ? [...opts.engines] : Object.entries(opts.engines);
      for (const [name, engine] of entries) devices.set(name, engine as ControlEngine);
    } else if (opts.engine) {
      devices.set('default', opts.engine);
    }
    // A gateway that only masters links (jobs, no simulated device) still serves jobs, ps and info.
    if (devices.size === 0 && !opts.jobs && !opts.inventory) return err({ code: 'ENODEV', message: 'control server: give an engine or a map of devices' });
    const entries: TokenEntry[] = [...(opts.tokens ?? [])];
    const envValue = (opts.env ?? process.env)[TOKENS_ENV];
    if (envValue !== undefined && envValue.trim() !== '') {
      const parsed = parseTokenEnv(envValue, TOKENS_ENV);
      if (!parsed.ok) return err({ code: 'ETOKENS', message: parsed.error.message });
      entries.push(...parsed.value);
    }
    return ok(new ControlServer(opts, devices, entries.length ? new TokenStore(entries) : null));
  }

  /** Binds; refuses a non-loopback address when no token is configured. */
  listen(): Promise<Result<{ host: string; port: number }, ControlServerError>> {
    if (!this.tokens && !isLoopbackHost(this.host)) {
      const message = `control server: refusing to listen on ${this.host}: no access tokens configured ` +
        `(set [[control.tokens]] in the config or ${TOKENS_ENV}), and without them only loopback is allowed`;
      this.logger.error({ host: this.host }, message);
      return Promise.resolve(err({ code: 'EINSECURE', message }));
    }
    return new Promise((done) => {
      const onError = (e: Error) => done(err({ code: 'ELISTEN', message: `control server: cannot listen on ${this.host}:${this.port}: ${e.message}` }));
      this.server.once('error', onError);
      // A long accept queue (Node's default is 511): a flood of connections that outruns our
      // accepts would otherwise overflow it, and the kernel then drops the handshake's last ACK of
      // whoever comes next — a client that waits 1 s for the SYN-ACK to be sent again. Accepting
      // costs little (acceptInBatches), so a long queue drains quickly.
      this.server.listen({ port: this.port, host: this.host, backlog: LISTEN_BACKLOG }, () => {
        this.server.off('error', onError);
        this.listening = true;
        acceptInBatches(this.server, (address) => this.unauthenticatedRoom(address), (peer, name, limit) =>
          this.limitLog.note('closed', name, limit, peer, { established: false }));
        const addr = this.address();
        if (!this.tokens) {
          this.note(`control: no access tokens configured; listening on loopback only (${addr.host}:${addr.port}), every local client has the admin role`);
        } else {
          this.note(`control: listening on ${addr.host}:${addr.port} with ${this.tokens.size} access token(s)`);
        }
        this.schedulePrune();
        done(ok(addr));
      });
    });
  }

  address(): { host: string; port: number } {
    const a = this.server.address();
    if (a && typeof a === 'object') return { host: a.address, port: a.port };
    return { host: this.host, port: this.port };
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Per connection: peer, unread output bytes, whether it carries an event stream, its role (`none` before a token). */
  connectionsInfo(): { id: number; peer: string; unreadBytes: number; streaming: boolean; role: string }[] {
    return [...this.connections].map((c) => ({ id: c.id, peer: c.peer, unreadBytes: c.unreadBytes, streaming: c.streaming, role: c.role }));
  }

  /** Who a token is (the control port's token store), or null; `local` admin when no token is configured. */
  /** Whether a session holds `pid` locked: a writer without a session (MQTT) may not change it (pid-locks.ts). */
  pidLocked(pid: number): boolean {
    try {
      this.core.sessions.ensurePidAccess(pid, null);
      return false;
    } catch (e) {
      if (e instanceof RequestError) return true;
      throw e;
    }
  }

  verifyToken(token: string | null): Identity | null {
    if (!this.tokens) return { name: 'local', role: 'admin' };
    return token ? this.tokens.verify(token) : null;
  }

  /** Failed authentications by address: the HTTP page's wrong tokens are slowed down by the same count. */
  get authFailures(): Pick<AuthThrottle, 'fail'> {
    return this.throttle;
  }

  /** Whether access tokens are configured (config entries or HSX_GATEWAY_TOKENS). */
  get tokensConfigured(): boolean {
    return this.tokens !== null;
  }

  /**
   * A command for a caller that is not a control connection (the HTTP page): the same role table,
   * handler and audit line as on the control port (run-as.ts).
   */
  runAs(cmd: string, fields: Record<string, unknown>, caller: Omit<RunAsCaller, 'connId'>): Promise<CommandResult> {
    return runCommandAs({ commands: COMMANDS, core: this.core, audit: this.audit }, cmd, fields, { ...caller, connId: this.nextConnId++ });
  }

  /** Stops accepting, ends every connection (aborting their streaming loads) and every session. */
  close(): Promise<void> {
    if (this.pruneTimer !== null) this.clock.clearTimeout(this.pruneTimer);
    this.pruneTimer = null;
    for (const c of this.connections) c.close();
    this.throttle.close();
    this.limitLog.close();
    this.core.sessions.closeAll('server_shutdown');
    this.core.jobUploads.clear();
    if (!this.listening) return Promise.resolve();
    this.listening = false;
    return new Promise((done) => this.server.close(() => done()));
  }

  private note(message: string): void {
    this.notes.push(message);
    this.logger.warn(message);
  }

  private schedulePrune(): void {
    this.pruneTimer = this.clock.setTimeout(() => {
      this.core.sessions.prune();
      if (this.listening) this.schedulePrune();
    }, 5000);
  }

  /**
   * The connection limits, before a byte is read: over `max_connections` or
   * `max_connections_per_address`, room is made by closing an unauthenticated connection (the
   * oldest of the address that holds the most of them; for the per-address limit, the oldest of
   * this address); when there is none, the new connection gets the error line and is closed. Over
   * `max_unauthenticated` (the new one counts as unauthenticated), the oldest unauthenticated
   * connection is closed. So idle connections that never authenticate can neither hold more than
   * `max_unauthenticated` places nor keep an authenticated client (or a fresh one) out.
   */
  private admit(socket: Socket, remote: { address: string | undefined; port: number | undefined }): boolean {
    const L = this.controlLimits;
    const address = addressKey(remote.address);
    const refuse = (name: keyof ControlLimits, limit: number): false => {
      this.limitLog.note('refused', name, limit, `${remote.address ?? '?'}:${remote.port ?? 0}`);
      socket.on('error', () => {});
      socket.pause();
      socket.end(limitLine(name, limit));
      socket.once('finish', () => socket.destroy());
      setTimeout(() => socket.destroy(), 1000).unref();
      return false;
    };
    let total = 0;
    let fromAddress = 0;
    const unauth: Connection[] = [];
    for (const c of this.connections) {
      if (!c.active) continue;
      total++;
      if (c.address === address) fromAddress++;
      if (!c.established) unauth.push(c); // oldest first: the set keeps insertion order
    }
    const evict = (victim: Connection | undefined, name: keyof ControlLimits, limit: number): boolean => {
      if (!victim) return false;
      victim.closeOverLimit(name, limit);
      unauth.splice(unauth.indexOf(victim), 1);
      total--;
      if (victim.address === address) fromAddress--;
      return true;
    };
    if (total >= L.max_connections && !evict(mostCrowded(unauth), 'max_connections', L.max_connections)) {
      return refuse('max_connections', L.max_connections);
    }
    if (fromAddress >= L.max_connections_per_address &&
      !evict(unauth.find((c) => c.address === address), 'max_connections_per_address', L.max_connections_per_address)) {
      return refuse('max_connections_per_address', L.max_connections_per_address);
    }
    while (unauth.length >= L.max_unauthenticated && evict(mostCrowded(unauth), 'max_unauthenticated', L.max_unauthenticated));
    return true;
  }

  /**
   * How many unauthenticated connections from `address` can be held once those now held by
   * authenticated connections are counted, and the limit that sets it (the one admit() would name
   * when it pushes one out): acceptInBatches refuses at once a new connection that at least this
   * many later ones of its batch would push out.
   */
  private unauthenticatedRoom(address: string): { room: number; name: keyof ControlLimits; limit: number } {
    const L = this.controlLimits;
    let total = 0;
    let fromAddress = 0;
    for (const c of this.connections) {
      if (!c.active || !c.established) continue;
      total++;
      if (c.address === address) fromAddress++;
    }
    let best: { room: number; name: keyof ControlLimits; limit: number } = { room: L.max_unauthenticated, name: 'max_unauthenticated', limit: L.max_unauthenticated };
    const perAddress = L.max_connections_per_address - fromAddress;
    if (perAddress < best.room) best = { room: perAddress, name: 'max_connections_per_address', limit: L.max_connections_per_address };
    const all = L.max_connections - total;
    if (all < best.room) best = { room: all, name: 'max_connections', limit: L.max_connections };
    return best;
  }

  private accept(accepted: Socket, audit: AuditLog): void {
    // read once: each read of the peer's address is a system call
    const remote = ACCEPTED_REMOTE.get(accepted) ?? { address: accepted.remoteAddress, port: accepted.remotePort };
    if (!this.admit(accepted, remote)) return;
    const socket = SHARED_READ.has(accepted) ? accepted : readIntoSharedBuffer(accepted, this.server);
    const conn = new Connection(this.nextConnId++, socket, {
      remote,
      limitLog: this.limitLog,
      core: this.core,
      commands: COMMANDS,
      tokens: this.tokens,
      audit,
      limits: this.limits,
      control: this.controlLimits,
      throttle: this.throttle,
      lingering: this.lingering,
      turns: this.turns,
      log: (level, obj, msg) => this.logger[level](obj, msg),
      onAbortSession: (device, sid) => {
        if (device === JOB_UPLOAD_OWNER) {
          // a job upload (job.upload.begin) of a connection that closed: its buffer goes
          const freed = this.core.jobUploads.free(sid);
          this.logger.info({ upload: sid, freed }, 'control client left mid-upload; job upload discarded');
          return;
        }
        const engine = this.devices.get(device);
        const r = engine?.abort(sid, 'client_disconnected');
        this.logger.info({ device, session_id: sid, aborted: r?.ok ?? false }, 'control client left mid-stream; session aborted');
      },
    });
    this.connections.add(conn);
    socket.on('close', () => this.connections.delete(conn));
  }

  private valueBuses(): ReadonlyMap<string, CanBus> {
    const v = this.opts.valueBuses;
    return typeof v === 'function' ? v() : v ?? new Map();
  }

  private deviceRef(name: unknown): DeviceRef | WireError {
    if (name === undefined || name === null) {
      const [first] = this.devices;
      if (!first) return { error: 'ENODEV:no_device' };
      return { name: first[0], engine: first[1] };
    }
    const engine = typeof name === 'string' ? this.devices.get(name) : undefined;
    if (!engine) return { error: `ENODEV:unknown_device`, detail: { device: String(name), devices: [...this.devices.keys()] } };
    return { name: name as string, engine };
  }

  /** A file a request names: inside the images directory only, at most maxImageBytes read (image-files.ts). */
  private readImage(path: string, field = 'path'): Promise<{ ok: true; bytes: Uint8Array; source: string } | { ok: false; error: WireError }> {
    const imagesDir = this.opts.imagesDir === undefined ? undefined : resolve(this.opts.imagesDir);
    return readImageInside(path, { imagesDir, maxBytes: this.opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES, field });
  }
}

/** The oldest unauthenticated connection of the address that holds the most of them. */
function mostCrowded(unauth: readonly Connection[]): Connection | undefined {
  if (unauth.length === 0) return undefined;
  const count = new Map<string, number>();
  let top: string | undefined;
  for (const c of unauth) {
    const n = (count.get(c.address) ?? 0) + 1;
    count.set(c.address, n);
    if (top === undefined || n > (count.get(top) ?? 0)) top = c.address;
  }
  return unauth.find((c) => c.address === top);
}

/**
 * One read buffer for every control connection. By default each read of a socket allocates a
 * fresh 64 KiB buffer that lives until the next garbage collection; a flood of connections that
 * each send a megabyte without a newline left tens of MiB of such garbage (and the allocator's
 * high-water mark) behind, however quickly the connections were closed. Every byte read is handed
 * to the line framer synchronously, which decodes a whole line at once or copies an unfinished one
 * into its own bounded buffer, so one buffer can serve every socket in turn.
 */
const SHARED_READ_BUFFER = Buffer.allocUnsafeSlow(64 * 1024);

/**
 * The accepted socket, re-wrapped so its reads go into SHARED_READ_BUFFER (Node's `onread` option,
 * which `net.Server` does not offer for the sockets it accepts) and are emitted as `'data'` views
 * of it, valid only during the event. The server's connection count moves to the new socket. If the
 * runtime's sockets do not have the shape this needs, the accepted socket is returned as it is.
 */
/** Sockets that read into SHARED_READ_BUFFER. */
const SHARED_READ = new WeakSet<Socket>();

/** The `onread` option of a socket that reads into SHARED_READ_BUFFER. */
function sharedOnread(self: () => Socket | null): { buffer: Buffer; callback: (n: number, buf: Uint8Array) => boolean } {
  return {
    buffer: SHARED_READ_BUFFER,
    callback: (n: number, buf: Uint8Array) => {
      const socket = self();
      socket?.emit('data', Buffer.from(buf.buffer, buf.byteOffset, n));
      return !(socket?.isPaused() ?? false);
    },
  };
}

/** The listening socket's accept queue (the kernel caps it at net.core.somaxconn, 4096 on current Linux). */
const LISTEN_BACKLOG = 4096;

/** Connections refused on their raw handle per turn of the event loop (acceptInBatches). */
const REFUSALS_PER_TURN = 64;

/** The peer of a socket accepted through acceptInBatches (read once, from its handle). */
const ACCEPTED_REMOTE = new WeakMap<Socket, { address: string | undefined; port: number | undefined }>();

type ClientHandle = {
  useUserBuffer?: unknown;
  getpeername?: (out: { address?: string; port?: number }) => number;
  writeUtf8String?: (req: unknown, text: string) => number;
  close?: (cb?: () => void) => void;
};

/** Node's WriteWrap (the request object of a raw handle write), if this runtime lets us have it. */
const WriteWrap: (new () => Record<string, unknown>) | null = (() => {
  try {
    const binding = (process as unknown as { binding: (name: string) => { WriteWrap?: new () => Record<string, unknown> } }).binding('stream_wrap');
    return typeof binding.WriteWrap === 'function' ? binding.WriteWrap : null;
  } catch {
    return null;
  }
})();

/**
 * Writes `line` on a raw accepted handle and closes it, without a socket object ever being made
 * for it; false when the handle cannot do that (the caller then takes the ordinary path).
 */
function refuseRaw(client: ClientHandle, line: string): boolean {
  if (!WriteWrap || typeof client.writeUtf8String !== 'function' || typeof client.close !== 'function') return false;
  try {
    const req = new WriteWrap();
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      client.close!();
    };
    req['handle'] = client;
    req['oncomplete'] = close;
    req['async'] = false;
    const err = client.writeUtf8String(req, line);
    if (err !== 0 || !req['async']) close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Takes over the listening socket's accepts (Node's `onconnection`, which the server replaces for
 * one of its own): every connection accepted in one poll of the listening socket is taken as a
 * raw handle, and the batch is handled once the poll is over (setImmediate), in order:
 *   - a connection that the ones after it in the same batch would push out anyway — at least
 *     `max_unauthenticated` later ones from its address (the oldest unauthenticated connection of
 *     an address goes first, server.ts admit) — gets the `ELIMIT:max_unauthenticated` line written
 *     on its handle and is closed, without a socket object ever made for it;
 *   - the others become sockets that read into SHARED_READ_BUFFER (made once, with `onread`,
 *     instead of once by Node and again by readIntoSharedBuffer) and go to `connection` as usual.
 * So a flood of idle connections costs an accept and a write for most of them instead of the whole
 * set-up of a connection that is closed a moment later: opening 1,024 idle connections 256 at a
 * time left a new client's request queued behind up to 511 full set-ups (the listen backlog).
 * Without the internals this needs, nothing changes (Node's onconnection, then accept() re-wraps).
 */
function acceptInBatches(
  server: Server,
  roomFor: (address: string) => { room: number; name: keyof ControlLimits; limit: number },
  onRefused: (peer: string, name: keyof ControlLimits, limit: number) => void,
): void {
  type ListenHandle = { onconnection?: (this: unknown, err: number, client: ClientHandle | undefined) => void };
  type ServerInternals = { _handle?: ListenHandle | null; _connections?: number; maxConnections?: number; allowHalfOpen?: boolean };
  const srv = server as unknown as ServerInternals;
  const handle = srv._handle;
  const original = handle?.onconnection;
  if (!handle || typeof original !== 'function' || typeof srv._connections !== 'number') return;
  let batch: ClientHandle[] = [];
  const take = (client: ClientHandle, remote: { address?: string; port?: number }): void => {
    const socket = sharedReadSocket(client);
    SHARED_READ.add(socket);
    ACCEPTED_REMOTE.set(socket, { address: remote.address, port: remote.port });
    srv._connections = (srv._connections ?? 0) + 1;
    (socket as unknown as { server: Server }).server = server;
    (socket as unknown as { _server: Server })._server = server;
    server.emit('connection', socket);
  };
  const run = (): void => {
    const clients = batch;
    batch = [];
    if (srv._handle !== handle) {
      for (const c of clients) c.close?.(); // the server closed meanwhile
      return;
    }
    const peers = clients.map((c) => {
      const out: { address?: string; port?: number } = {};
      try {
        c.getpeername?.(out);
      } catch {
        /* unknown peer */
      }
      return out;
    });
    const later = new Map<string, number>();
    const rooms = new Map<string, { room: number; name: keyof ControlLimits; limit: number; line: string }>();
    const doomed = new Array<{ line: string; name: keyof ControlLimits; limit: number } | null>(clients.length).fill(null);
    for (let i = clients.length - 1; i >= 0; i--) {
      const key = addressKey(peers[i]!.address);
      let room = rooms.get(key);
      if (!room) {
        const r = roomFor(key);
        room = { ...r, line: limitLine(r.name, r.limit) };
        rooms.set(key, room);
      }
      const n = later.get(key) ?? 0;
      // no room at all: admit() refuses it at arrival, with its own reasons; leave it to admit()
      if (room.room >= 1 && n >= room.room) doomed[i] = room;
      later.set(key, n + 1);
    }
    clients.forEach((client, i) => {
      const d = doomed[i];
      if (d && WriteWrap) {
        refusing.push({ client, line: d.line, peer: `${peers[i]!.address ?? '?'}:${peers[i]!.port ?? 0}`, name: d.name, limit: d.limit });
        return;
      }
      try {
        take(client, peers[i]!);
      } catch {
        original.call(handle, 0, client);
      }
    });
    // the refusals wait for the turns after this one, a bounded number each: the connections
    // taken above (a new client among them) have their requests read first
    if (refusing.length && !refusalsScheduled) {
      refusalsScheduled = true;
      setImmediate(refuseSome);
    }
  };
  const refusing: { client: ClientHandle; line: string; peer: string; name: keyof ControlLimits; limit: number }[] = [];
  let refusalsScheduled = false;
  const refuseSome = (): void => {
    refusalsScheduled = false;
    for (const r of refusing.splice(0, REFUSALS_PER_TURN)) {
      if (refuseRaw(r.client, r.line)) onRefused(r.peer, r.name, r.limit);
      else r.client.close?.();
    }
    if (refusing.length) {
      refusalsScheduled = true;
      setImmediate(refuseSome);
    }
  };
  handle.onconnection = function onconnection(this: unknown, err: number, client: ClientHandle | undefined): void {
    if (err || !client || typeof client.useUserBuffer !== 'function' || srv.maxConnections || srv.allowHalfOpen) {
      original.call(this, err, client);
      return;
    }
    if (batch.length === 0) setImmediate(run);
    batch.push(client);
  };
}

/** A paused socket over an accepted handle that reads into SHARED_READ_BUFFER (Node's `onread` option). */
function sharedReadSocket(handle: unknown): Socket {
  let socket: Socket | null = null;
  socket = new Socket({
    handle: handle as never,
    readable: true,
    writable: true,
    allowHalfOpen: false,
    pauseOnCreate: true,
    onread: sharedOnread(() => socket),
  } as ConstructorParameters<typeof Socket>[0]);
  return socket;
}

function readIntoSharedBuffer(accepted: Socket, server: Server): Socket {
  type Internals = { _handle?: { useUserBuffer?: unknown; reading?: boolean } | null; _server?: unknown };
  type ServerInternals = { _connections?: number };
  const a = accepted as unknown as Internals;
  const srv = server as unknown as ServerInternals;
  const handle = a._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || a._server !== server || typeof srv._connections !== 'number') return accepted;
  try {
    const wrapped = sharedReadSocket(handle);
    // the old object lets go of the handle (destroying it now closes nothing but itself, and gives
    // back its place in the server's count), the new one takes its place
    a._handle = null;
    accepted.destroy();
    (wrapped as unknown as Internals)._server = server;
    srv._connections = (srv._connections ?? 0) + 1;
    return wrapped;
  } catch {
    return accepted;
  }
}
