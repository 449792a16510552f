/**
 * What the control server needs from a provisioning engine, and how engine values become wire
 * JSON. The server depends on this narrow shape, not on the engine class, so a gateway can put
 * several simulated devices (each its own engine) behind one server, and a test can too.
 * `ProvisioningEngine` satisfies it structurally.
 */
import type { EngineError } from '../../engine/errors.js';
import type { Result } from '../../hxe/result.js';
import { accountingFields, type MetadataView } from './reference-shapes.js';

/** The engine's TaskInfo as far as the server reads it; other fields pass through to the wire. */
export interface TaskInfoLike {
  pid: number;
  appName?: string;
  state?: string;
  source?: string;
}

/** What an install through a device's intake answers (src/engine/intake.ts, IntakeVerdict). */
export interface InstallVerdictLike {
  outcome: 'installed' | 'updated' | 'current';
  task: TaskInfoLike;
  from: object | null;
}

/**
 * A device's intake (src/engine/intake.ts), the one place where an image becomes the running app.
 * Devices without one (a bare engine in a unit test) load through `loadImage`/`end` with the
 * reference's semantics (no updates).
 */
export interface ControlIntake {
  /** `admit` (src/engine/intake.ts): asked with the pids the install would replace, before anything switches (pid locks, pid-locks.ts). */
  load(bytes: Uint8Array, opts: { source: string; update: 'replace' | 'reject'; force: boolean; persist: boolean; admit?: PidAdmit }): Promise<Result<InstallVerdictLike, EngineError>>;
  finishSession(sessionId: number, opts: { persist: boolean; admit?: PidAdmit }): Promise<Result<InstallVerdictLike, EngineError>>;
  /** `admit`: asked with the pids the rollback would stop, before anything changes. */
  rollback(reason: string, admit?: PidAdmit): Promise<Result<{ task: TaskInfoLike | null; slot: string }, EngineError>>;
}

/** May these running tasks be replaced or stopped? An error refuses (and nothing changes). */
export type PidAdmit = (pids: readonly number[]) => EngineError | null;

export interface ControlEngine {
  loadImage(bytes: Uint8Array, opts: { source: string }): Result<TaskInfoLike, EngineError>;
  begin(opts: { source: string; totalBytes?: number; expectedCrc?: number; update?: 'replace' | 'reject' }): Result<{ sessionId: number }, EngineError>;
  write(sessionId: number, seq: number, chunk: Uint8Array): Result<{ bytesWritten: number; duplicate: boolean }, EngineError>;
  end(sessionId: number): Result<TaskInfoLike, EngineError>;
  abort(sessionId: number, reason: string): Result<void, EngineError>;
  unload(pid: number): Result<void, EngineError>;
  ps(): TaskInfoLike[];
  persist?(pid: number, mode: 'test' | 'permanent'): Promise<Result<unknown, EngineError>>;
  confirm?(): Promise<Result<unknown, EngineError>>;
  rollback?(reason: string): Promise<Result<unknown, EngineError>>;
  intake?: ControlIntake;
  /**
   * What the executive's read-only commands need (`val.*`, `cmd.list`, `mailbox_snapshot`, `list`,
   * `load`'s metadata). A device without them answers those commands `ENOTSUP:no_registry`.
   */
  metadata?: MetadataView;
  pids?(): number[];
  taskImage?(pid: number): Uint8Array | undefined;
  setValue?(oid: number, raw: number): Result<{ raw: number }, EngineError>;
  /** Makes journalled (PERSIST) values durable now. */
  flushValues?(): Promise<void>;
}

/** A failed request as the wire shows it: `error` is the exact string clients match on. */
export interface WireError {
  error: string;
  detail?: Record<string, unknown>;
}

/** Engine errors on the wire: `"<CODE>:<reason>"` plus where, the message and the numbers. */
export function engineErrorToWire(e: EngineError): WireError {
  return { error: `${e.code}:${e.reason}`, detail: { where: e.where, message: e.message, ...e.detail } };
}

function snake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** camelCase engine values to the executive's snake_case JSON; Uint8Arrays become lengths. */
export function toWire(value: unknown): unknown {
  if (value === null || value === undefined) return value ?? null;
  if (value instanceof Uint8Array) return { bytes: value.length };
  if (Array.isArray(value)) return value.map(toWire);
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (typeof v === 'function') continue;
      out[snake(k)] = toWire(v);
    }
    return out;
  }
  return value;
}

function pick(t: object, ...keys: string[]): unknown {
  for (const k of keys) {
    const v = (t as Record<string, unknown>)[k];
    if (v !== undefined) return v;
  }
  return undefined;
}

/** A task as `provision.*` replies show it: every engine field, snake_case. */
export function taskToWire(t: TaskInfoLike): Record<string, unknown> {
  return toWire(t) as Record<string, unknown>;
}

/** The reference's leading fields, then every engine field not already named. */
function after(leading: Record<string, unknown>, rest: Record<string, unknown>): Record<string, unknown> {
  const out = { ...leading };
  for (const [k, v] of Object.entries(rest)) if (!(k in out)) out[k] = v;
  return out;
}

function nested(t: object, outer: string, inner: string): unknown {
  const o = (t as Record<string, unknown>)[outer];
  return o && typeof o === 'object' ? (o as Record<string, unknown>)[inner] : undefined;
}

/**
 * A task in the reference executive's `ps` row shape (the fields the HSX shell prints), with
 * the engine's own fields after them.
 */
export function taskToPsRow(t: TaskInfoLike): Record<string, unknown> {
  const w = taskToWire(t);
  const appName = (pick(t, 'appName', 'app_name') as string | undefined) ?? null;
  return after({
    pid: t.pid,
    program: pick(t, 'source', 'program') ?? null,
    state: typeof t.state === 'string' ? t.state.toLowerCase() : null,
    app_name: appName,
    app_name_base: pick(t, 'appNameBase', 'baseName') ?? appName,
    ...accountingFields(t as Parameters<typeof accountingFields>[0]),
    metadata: {
      sections: ['values', 'commands', 'mailboxes'].filter((k) => ((nested(t, 'counts', k) as number | undefined) ?? 0) > 0).length,
      values: nested(t, 'counts', 'values') ?? 0,
      commands: nested(t, 'counts', 'commands') ?? 0,
      mailboxes: nested(t, 'counts', 'mailboxes') ?? 0,
    },
  }, w);
}

/** `load`/`exec` reply (`image`): the reference's leading fields, then the engine's. */
export function taskToImage(t: TaskInfoLike, extras: Record<string, unknown> = {}): Record<string, unknown> {
  const w = { ...extras, ...taskToWire(t) };
  const appName = (pick(t, 'appName', 'app_name') as string | undefined) ?? null;
  return after({
    pid: t.pid,
    entry: pick(t, 'entry') ?? 0,
    code_len: nested(t, 'sizes', 'code') ?? null,
    ro_len: nested(t, 'sizes', 'rodata') ?? null,
    bss: nested(t, 'sizes', 'bss') ?? null,
    version: pick(t, 'version') ?? null,
    flags: extras['flags'] ?? 0,
    req_caps: pick(t, 'reqCaps') ?? 0,
    app_name: appName,
    app_name_base: pick(t, 'appNameBase') ?? appName,
    allow_multiple_instances: pick(t, 'allowMultipleInstances') ?? null,
  }, w);
}
