/**
 * The control server's named limits (docs/security.md, "Connection limits"): how many connections
 * it holds (in all, per remote address, before they authenticate), how long and how large a
 * client may be before it authenticates, how long an authenticated client may sit idle, how many
 * protocol sessions exist, and how failed `auth` attempts are slowed and logged. Every limit has
 * a name; going over one is answered with an error line naming it,
 * `{"version":1,"status":"error","error":"ELIMIT:<name>","detail":{"limit":<value>}}`, and, for
 * the connection limits, the connection is then closed. The names are the `[control]` keys of the
 * gateway config (src/gateway/config.ts).
 */
import type { Logger } from 'pino';

export interface ControlLimits {
  /** Connections held at once. */
  max_connections: number;
  /** Connections held at once from one remote address. */
  max_connections_per_address: number;
  /** Connections held at once that have not authenticated yet (see Connection.established). */
  max_unauthenticated: number;
  /** Longest line (bytes, before its newline) before a connection has authenticated. */
  pre_auth_line_bytes: number;
  /** A connection that has not authenticated this long after it opened is closed. */
  pre_auth_timeout_ms: number;
  /** An authenticated connection that sends nothing for this long (and waits for nothing) is closed; 0 = never. */
  idle_timeout_ms: number;
  /** Protocol sessions (`session.open`) in all. */
  max_sessions: number;
  /** Protocol sessions opened by one connection that are still open. */
  max_sessions_per_connection: number;
  /** Event streams (`events.subscribe`, `job.watch`) open at once on the control port. */
  max_streams: number;
  /** Event streams open at once from one remote address (a stream takes over its connection, so one per connection). */
  max_streams_per_address: number;
  /** A connection is closed after this many failed authentications. */
  max_auth_failures: number;
  /** The reply to the first failed authentication is delayed this long; each further one doubles it. */
  auth_failure_delay_ms: number;
  /** ... up to this. */
  auth_failure_delay_max_ms: number;
  /** Failures from one address are counted (and their audit lines coalesced) per window of this length. */
  auth_failure_window_ms: number;
}

export const DEFAULT_CONTROL_LIMITS: Readonly<ControlLimits> = Object.freeze({
  max_connections: 64,
  max_connections_per_address: 16,
  max_unauthenticated: 8,
  pre_auth_line_bytes: 4096,
  pre_auth_timeout_ms: 10_000,
  idle_timeout_ms: 600_000,
  max_sessions: 256,
  max_sessions_per_connection: 16,
  max_streams: 32,
  max_streams_per_address: 8,
  max_auth_failures: 5,
  auth_failure_delay_ms: 100,
  auth_failure_delay_max_ms: 5_000,
  auth_failure_window_ms: 60_000,
});

/** The error line for a limit: `ELIMIT:<name>` with the limit's value. */
export function limitError(name: keyof ControlLimits, limit: number): { version: 1; status: 'error'; error: string; detail: { limit: number } } {
  return { version: 1, status: 'error', error: `ELIMIT:${name}`, detail: { limit } };
}

export function limitLine(name: keyof ControlLimits, limit: number): string {
  return `${JSON.stringify(limitError(name, limit))}\n`;
}

/** A remote address as one key (`::ffff:127.0.0.1` and `127.0.0.1` are one address). */
export function addressKey(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined) return '?';
  return remoteAddress.toLowerCase().startsWith('::ffff:') && remoteAddress.includes('.') ? remoteAddress.slice(7) : remoteAddress;
}

interface AddressFailures {
  /** Failures in the current window. */
  count: number;
  windowStart: number;
  /** Failures in this window whose audit line was folded into the summary. */
  folded: number;
  timer: NodeJS.Timeout | null;
}

/** Most addresses whose failures are remembered; the oldest window is forgotten first. */
const MAX_TRACKED_ADDRESSES = 4096;

/**
 * Failed authentications per remote address: how long to delay the reply (growing with the
 * failures of the connection and of its address), and the audit trail, coalesced — the first
 * failure of an address in a window gets its own audit line, the rest of that window one summary
 * line with their count when the window ends.
 */
export class AuthThrottle {
  private readonly byAddress = new Map<string, AddressFailures>();

  constructor(
    private readonly limits: Pick<ControlLimits, 'auth_failure_delay_ms' | 'auth_failure_delay_max_ms' | 'auth_failure_window_ms'>,
    private readonly logger: Logger | undefined,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Records one failure from `address` (the connection's `connFailures`-th) and returns how long
   * its reply is to be delayed, and whether the caller should write its own audit line for it.
   */
  fail(address: string, connFailures: number): { delayMs: number; auditThis: boolean } {
    const now = this.now();
    let a = this.byAddress.get(address);
    if (a && now - a.windowStart >= this.limits.auth_failure_window_ms) {
      this.flush(address, a);
      a = undefined;
    }
    if (!a) {
      if (this.byAddress.size >= MAX_TRACKED_ADDRESSES) {
        const [oldest] = this.byAddress;
        if (oldest) this.flush(oldest[0], oldest[1]);
      }
      a = { count: 0, windowStart: now, folded: 0, timer: null };
      this.byAddress.set(address, a);
    }
    a.count++;
    const auditThis = a.count === 1;
    if (!auditThis) {
      a.folded++;
      if (a.timer === null) {
        const entry = a;
        entry.timer = setTimeout(() => this.flush(address, entry), Math.max(0, entry.windowStart + this.limits.auth_failure_window_ms - now));
        entry.timer.unref();
      }
    }
    const n = Math.max(connFailures, a.count);
    const delayMs = Math.min(this.limits.auth_failure_delay_max_ms, this.limits.auth_failure_delay_ms * 2 ** Math.min(30, n - 1));
    return { delayMs, auditThis };
  }

  /** Failures from `address` in its current window (0 when none). */
  failures(address: string): number {
    const a = this.byAddress.get(address);
    return a && this.now() - a.windowStart < this.limits.auth_failure_window_ms ? a.count : 0;
  }

  /** Writes every pending summary (server shutdown). */
  close(): void {
    for (const [address, a] of [...this.byAddress]) this.flush(address, a);
  }

  private flush(address: string, a: AddressFailures): void {
    if (a.timer !== null) clearTimeout(a.timer);
    a.timer = null;
    if (this.byAddress.get(address) === a) this.byAddress.delete(address);
    if (a.folded === 0 || !this.logger) return;
    const folded = a.folded;
    a.folded = 0;
    this.logger.warn({
      audit: true,
      when: new Date(this.now()).toISOString(),
      who: 'anonymous',
      role: null,
      peer: address,
      cmd: 'auth',
      verdict: 'denied',
      reason: 'EPERM:invalid_token',
      count: folded,
      failures_in_window: a.count,
      window_ms: this.limits.auth_failure_window_ms,
    }, `audit: ${folded} more failed authentication(s) from ${address} in ${this.limits.auth_failure_window_ms} ms`);
  }
}

/**
 * The event streams open on the control port, by subscription token, with the address of the
 * connection each took over: `max_streams` in all, `max_streams_per_address` per remote address.
 * A stream that replaces one of the same session does not count the one it replaces.
 */
export class StreamSlots {
  private readonly byToken = new Map<string, string>();

  constructor(private readonly limits: () => Pick<ControlLimits, 'max_streams' | 'max_streams_per_address'>) {}

  get size(): number {
    return this.byToken.size;
  }

  /** The limit a new stream from `address` would go over (replacing `replacing`), or null. */
  over(address: string, replacing?: string): { name: 'max_streams' | 'max_streams_per_address'; limit: number } | null {
    const L = this.limits();
    let total = 0;
    let mine = 0;
    for (const [token, a] of this.byToken) {
      if (token === replacing) continue;
      total++;
      if (a === address) mine++;
    }
    if (total >= L.max_streams) return { name: 'max_streams', limit: L.max_streams };
    if (mine >= L.max_streams_per_address) return { name: 'max_streams_per_address', limit: L.max_streams_per_address };
    return null;
  }

  add(token: string, address: string): void {
    this.byToken.set(token, address);
  }

  remove(token: string): void {
    this.byToken.delete(token);
  }
}

/**
 * The log lines of connections refused or closed over a limit, coalesced: the first of each kind
 * (limit and what happened) in a window is logged as it happens, the rest of that window as one
 * summary line with their count when the window ends. A flood of connections is what makes these
 * lines, and a synchronous log write per connection was a fifth of the cost of accepting one
 * (1,024 idle connections opened at once: the loop did little else).
 */
export class LimitLog {
  private readonly windows = new Map<string, { folded: number; peers: Set<string>; timer: NodeJS.Timeout }>();

  constructor(
    private readonly log: (obj: Record<string, unknown>, msg: string) => void,
    private readonly windowMs = 10_000,
  ) {}

  note(what: 'refused' | 'closed', name: string, value: number, peer: string, extra: Record<string, unknown> = {}): void {
    const key = `${what} ${name}`;
    const w = this.windows.get(key);
    if (w) {
      w.folded++;
      if (w.peers.size < 16) w.peers.add(peer);
      return;
    }
    const timer = setTimeout(() => this.flush(key, what, name, value), this.windowMs);
    timer.unref();
    this.windows.set(key, { folded: 0, peers: new Set(), timer });
    this.log({ peer, limit: name, value, ...extra }, `control: connection ${what} over limit ${name}`);
  }

  /** Writes every pending summary (server shutdown). */
  close(): void {
    for (const key of [...this.windows.keys()]) {
      const [what, name] = key.split(' ') as ['refused' | 'closed', string];
      this.flush(key, what, name, undefined);
    }
  }

  private flush(key: string, what: 'refused' | 'closed', name: string, value: number | undefined): void {
    const w = this.windows.get(key);
    if (!w) return;
    clearTimeout(w.timer);
    this.windows.delete(key);
    if (w.folded === 0) return;
    this.log({ limit: name, ...(value !== undefined ? { value } : {}), count: w.folded, window_ms: this.windowMs, peers: [...w.peers] },
      `control: ${w.folded} more connection(s) ${what} over limit ${name} in ${this.windowMs} ms`);
  }
}
