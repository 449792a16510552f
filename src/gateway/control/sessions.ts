/**
 * Protocol sessions of the HSX executive (`session.open/keepalive/close`): a client names itself,
 * negotiates features, its event queue depth and heartbeat, and may lock pids. Clamping and
 * warning strings follow the reference daemon (execd.py) so its shell sees what it expects.
 */
import { randomUUID } from 'node:crypto';
import type { Clock } from '../../engine/ports.js';
import { clip, MAX_PID_LOCKS } from './roles.js';

/** Most entries in `capabilities.features`. */
const MAX_FEATURES = 64;

export interface SessionRecord {
  id: string;
  client: string;
  features: string[];
  maxEvents: number;
  pidLocks: number[];
  heartbeatS: number;
  warnings: string[];
  createdAt: number;
  lastSeen: number;
  /** The connection that opened it (its `max_sessions_per_connection` count), if any. */
  owner?: number;
}

export interface SessionLimits {
  heartbeatDefault: number;
  heartbeatMin: number;
  heartbeatMax: number;
  eventsDefault: number;
  eventsMax: number;
  features: readonly string[];
  /** Sessions in all (`[control] max_sessions`): `ELIMIT:max_sessions` past it. */
  maxSessions: number;
  /** Open sessions one connection opened (`[control] max_sessions_per_connection`): `ELIMIT:max_sessions_per_connection`. */
  maxSessionsPerOwner: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  heartbeatDefault: 30,
  heartbeatMin: 5,
  heartbeatMax: 300,
  eventsDefault: 256,
  eventsMax: 2048,
  features: ['events', 'provisioning', 'values'],
  maxSessions: 256,
  maxSessionsPerOwner: 16,
};

/**
 * A request-level failure with the exact wire string (e.g. `session_required`). It is an answer,
 * not a bug: no stack trace is captured (that was most of the cost of refusing a request, and a
 * flood of refused requests is what a misbehaving client sends).
 */
export class RequestError extends Error {
  readonly wire: string;
  readonly detail?: Record<string, unknown>;

  constructor(wire: string, detail?: Record<string, unknown>) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(wire);
    Error.stackTraceLimit = limit;
    this.wire = wire;
    if (detail !== undefined) this.detail = detail;
  }
}

/**
 * The one integer parse of the control protocol (pids, sequence numbers, limits): a safe-integer
 * number, or a string of one (decimal or `0x` hex, surrounding blanks allowed); else `message`.
 * The pid-lock table and the handlers both parse pids with it, so `1`, `"1"`, `" 1"` and `"0x1"`
 * are the same pid everywhere.
 */
export function toInt(v: unknown, message: string): number {
  if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
  if (typeof v === 'string' && v.length <= 64 && /^\s*-?(0x[0-9a-f]+|\d+)\s*$/i.test(v)) {
    const t = v.trim();
    const neg = t.startsWith('-');
    const n = Number(neg ? t.slice(1) : t);
    if (Number.isSafeInteger(n)) return neg ? -n : n;
  }
  throw new RequestError(message);
}

const intOf = toInt;

export class SessionRegistry {
  private readonly sessions = new Map<string, SessionRecord>();
  private readonly pidLocks = new Map<number, string>();
  /** Owner (connection id) → its open sessions. */
  private readonly perOwner = new Map<number, number>();

  constructor(
    private readonly clock: Clock,
    private readonly limits: SessionLimits = DEFAULT_SESSION_LIMITS,
    private readonly onClosed: (id: string, reason: string) => void = () => {},
  ) {}

  get size(): number {
    return this.sessions.size;
  }

  private nowS(): number {
    return this.clock.now() / 1000;
  }

  /** Open sessions `owner` opened. */
  ownedBy(owner: number): number {
    return this.perOwner.get(owner) ?? 0;
  }

  open(req: { client?: unknown; capabilities?: unknown; pid_lock?: unknown; heartbeat_s?: unknown }, owner?: number): SessionRecord {
    // the limits first: a refused open costs nothing (lapsed sessions do not count)
    if (this.sessions.size >= this.limits.maxSessions) this.prune();
    if (this.sessions.size >= this.limits.maxSessions) throw new RequestError('ELIMIT:max_sessions', { limit: this.limits.maxSessions });
    if (owner !== undefined && this.ownedBy(owner) >= this.limits.maxSessionsPerOwner) {
      throw new RequestError('ELIMIT:max_sessions_per_connection', { limit: this.limits.maxSessionsPerOwner });
    }
    const caps = (req.capabilities ?? {}) as Record<string, unknown>;
    if (typeof caps !== 'object' || caps === null || Array.isArray(caps)) throw new RequestError('capabilities must be an object when provided');
    const requested = caps['features'] ?? [];
    if (!Array.isArray(requested)) throw new RequestError('capabilities.features must be a list when provided');
    if (requested.length > MAX_FEATURES) throw new RequestError('EINVAL:too_many_features', { limit: MAX_FEATURES });
    const features: string[] = [];
    const warnings: string[] = [];
    for (const f of requested) {
      // never String() an object: a parsed `{"toString":1}` makes that throw
      const name = typeof f === 'string' ? f : f !== null && typeof f === 'object' ? (Array.isArray(f) ? '<array>' : '<object>') : String(f);
      if (this.limits.features.includes(name)) features.push(name);
      else warnings.push(`unsupported_feature:${clip(name)}`);
    }
    let maxEvents = this.limits.eventsDefault;
    if (caps['max_events'] !== undefined && caps['max_events'] !== null) {
      maxEvents = intOf(caps['max_events'], 'capabilities.max_events must be an integer when provided');
      if (maxEvents <= 0) throw new RequestError('capabilities.max_events must be positive');
      if (maxEvents < 2) {
        warnings.push('max_events_clamped:2');
        maxEvents = 2;
      }
      if (maxEvents > this.limits.eventsMax) {
        warnings.push(`max_events_clamped:${this.limits.eventsMax}`);
        maxEvents = this.limits.eventsMax;
      }
    }
    let heartbeat = this.limits.heartbeatDefault;
    if (req.heartbeat_s !== undefined && req.heartbeat_s !== null) {
      heartbeat = intOf(req.heartbeat_s, 'heartbeat_s must be an integer when provided');
      if (heartbeat < this.limits.heartbeatMin) {
        warnings.push(`heartbeat_clamped:${this.limits.heartbeatMin}`);
        heartbeat = this.limits.heartbeatMin;
      } else if (heartbeat > this.limits.heartbeatMax) {
        warnings.push(`heartbeat_clamped:${this.limits.heartbeatMax}`);
        heartbeat = this.limits.heartbeatMax;
      }
    }
    const locks = this.normalisePids(req.pid_lock);
    for (const pid of locks) if (this.pidLocks.has(pid)) throw new RequestError(`pid_locked:${pid}`);
    const now = this.nowS();
    const rec: SessionRecord = {
      id: randomUUID(),
      client: req.client === undefined || req.client === null ? '' : typeof req.client === 'string' ? req.client : String(req.client),
      features,
      maxEvents,
      pidLocks: locks,
      heartbeatS: heartbeat,
      warnings,
      createdAt: now,
      lastSeen: now,
      ...(owner !== undefined ? { owner } : {}),
    };
    this.sessions.set(rec.id, rec);
    if (owner !== undefined) this.perOwner.set(owner, this.ownedBy(owner) + 1);
    for (const pid of locks) this.pidLocks.set(pid, rec.id);
    return rec;
  }

  /** The reference's session payload. */
  payload(rec: SessionRecord): Record<string, unknown> {
    const out: Record<string, unknown> = {
      id: rec.id,
      client: rec.client,
      heartbeat_s: rec.heartbeatS,
      features: [...rec.features],
      max_events: rec.maxEvents,
      pid_lock: rec.pidLocks.length === 0 ? null : rec.pidLocks.length === 1 ? rec.pidLocks[0] : [...rec.pidLocks],
      created_at: rec.createdAt,
      last_seen: rec.lastSeen,
    };
    if (rec.warnings.length) out['warnings'] = [...rec.warnings];
    return out;
  }

  /** Every open session, oldest first. */
  list(): SessionRecord[] {
    return [...this.sessions.values()];
  }

  get(id: string | null): SessionRecord {
    const rec = id === null ? undefined : this.sessions.get(id);
    if (!rec) throw new RequestError('session_required');
    return rec;
  }

  touch(id: string | null): SessionRecord {
    const rec = this.get(id);
    rec.lastSeen = this.nowS();
    return rec;
  }

  close(id: string | null, reason = 'client_close'): void {
    const rec = this.get(id);
    this.drop(rec, reason);
  }

  /** A pid locked by another session may not be changed by this one. */
  ensurePidAccess(pid: number, sessionId: string | null): void {
    const owner = this.pidLocks.get(pid);
    if (owner !== undefined && owner !== sessionId) throw new RequestError(`pid_locked:${pid}`);
  }

  /**
   * A task this session holds locked was replaced by a new pid (its own update or reload): the lock
   * follows the app to the new pid, so the update does not leave it unprotected.
   */
  moveLock(fromPid: number, toPid: number, sessionId: string | null): void {
    if (fromPid === toPid || sessionId === null || this.pidLocks.get(fromPid) !== sessionId || this.pidLocks.has(toPid)) return;
    const rec = this.sessions.get(sessionId);
    if (!rec) return;
    this.pidLocks.delete(fromPid);
    this.pidLocks.set(toPid, sessionId);
    rec.pidLocks = [...rec.pidLocks.filter((p) => p !== fromPid), toPid].sort((a, b) => a - b);
  }

  /** Closes sessions whose heartbeat lapsed. */
  prune(): string[] {
    const now = this.nowS();
    const expired = [...this.sessions.values()].filter((r) => now - r.lastSeen > r.heartbeatS);
    for (const r of expired) this.drop(r, 'timeout');
    return expired.map((r) => r.id);
  }

  closeAll(reason: string): void {
    for (const r of [...this.sessions.values()]) this.drop(r, reason);
  }

  private drop(rec: SessionRecord, reason: string): void {
    if (!this.sessions.delete(rec.id)) return;
    if (rec.owner !== undefined) {
      const n = this.ownedBy(rec.owner) - 1;
      if (n > 0) this.perOwner.set(rec.owner, n);
      else this.perOwner.delete(rec.owner);
    }
    for (const pid of rec.pidLocks) if (this.pidLocks.get(pid) === rec.id) this.pidLocks.delete(pid);
    this.onClosed(rec.id, reason);
  }

  private normalisePids(v: unknown): number[] {
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    if (list.length > MAX_PID_LOCKS) throw new RequestError('EINVAL:too_many_pid_locks', { limit: MAX_PID_LOCKS });
    const pids = new Set<number>();
    for (const x of list) {
      if (x === null || x === undefined) continue;
      const pid = intOf(x, 'pid_lock must be an integer or sequence of integers');
      if (pid < 0) throw new RequestError('pid_lock values must be non-negative');
      pids.add(pid);
    }
    return [...pids].sort((a, b) => a - b);
  }
}
