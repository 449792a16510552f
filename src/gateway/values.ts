/**
 * The one value read/write rule of the gateway: a device's `.value` registry read and written by
 * oid, whoever asks — the control port's `val.list|get|set`, the `hsx-gateway val` CLI (through the
 * control port), and an MQTT `val.set` handler. Every check lives here, once:
 *
 * - the oid names a registered value (`ENOENT:unknown_oid`, field `oid`);
 * - the value is a finite number an f16 can hold (`EINVAL:value`, field `value`);
 * - the value is not read-only (`EPERM:read_only`);
 * - the caller's auth level reaches the value's (`EPERM:auth_level`);
 * - the value is inside its declared range (`EINVAL:out_of_range`);
 * - a PERSIST value is journalled (and, with `durable`, flushed before the answer).
 *
 * Two kinds of target: a simulated device of this gateway (its engine's registry), or a node on a
 * CAN master link reached through the CAN value binding (GET/SET, src/link/can/value-client.ts);
 * there the node's own engine applies the same rule and answers a status.
 *
 * Every refusal is a `ValueError` with the HSX value status the reference executive would answer
 * (`HSX_VAL_STATUS_*`), so the control port can keep the reference's reply shape.
 */
import { decodeF16, encodeF16 } from '../hxe/f16.js';
import { AUTH_LEVELS, VALUE_FLAGS } from '../hxe/constants.js';
import type { RegisteredValue } from '../engine/registry.js';
import type { CanBus } from '../link/can/bus.js';

/** HSX value status codes (include/hsx_value.h), what the reference's `val.*` replies carry in `status`. */
export const VAL_STATUS = { OK: 0, ENOENT: 1, EPERM: 2, ENOSPC: 3, EINVAL: 4, EEXIST: 5, EBUSY: 6 } as const;

export type AuthLevel = 0 | 1 | 2 | 3;
export type ValueRole = 'viewer' | 'operator' | 'admin';

/**
 * The HSX auth level a gateway role carries: viewer PUBLIC (0), operator USER (1), admin ADMIN (2).
 * FACTORY (3) values are not writable through the gateway.
 */
export function authLevelOf(role: ValueRole | null | undefined): AuthLevel {
  return role === 'admin' ? AUTH_LEVELS.ADMIN : role === 'operator' ? AUTH_LEVELS.USER : AUTH_LEVELS.PUBLIC;
}

export type ValueErrorCode = 'ENOENT' | 'EPERM' | 'EINVAL' | 'ENOTSUP' | 'ETIMEDOUT' | 'EIO' | 'ENODEV';

/** A refused read or write: `error` is `<code>:<reason>`, `field` the request field at fault. */
export class ValueError extends Error {
  constructor(
    readonly code: ValueErrorCode,
    readonly reason: string,
    readonly field: 'oid' | 'value' | 'device' | 'link' | 'node' | null,
    message: string,
    /** The HSX value status the reference would answer (`VAL_STATUS`), or null when it has none. */
    readonly status: number | null,
    readonly detail: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'ValueError';
  }

  get error(): string {
    return `${this.code}:${this.reason}`;
  }
}

export type ValueResult<T> = { ok: true; value: T } | { ok: false; error: ValueError };
const ok = <T>(value: T): ValueResult<T> => ({ ok: true, value });
const fail = (e: ValueError): ValueResult<never> => ({ ok: false, error: e });

/** What a local device must offer (ProvisioningEngine does). */
export interface ValueEngine {
  readonly metadata: {
    value(oid: number): RegisteredValue | undefined;
    valuesOf(pid: number): RegisteredValue[];
  };
  pids(): number[];
  setValue(oid: number, raw: number): { ok: true; value: { raw: number } } | { ok: false; error: { code: string; reason: string; message: string } };
}

export type ValueTarget =
  | {
    kind: 'local';
    /** The device name (for messages). */
    name: string;
    engine: ValueEngine;
    /** Makes journalled values durable now (the device's value journal flush). */
    flush?: () => Promise<void>;
  }
  | { kind: 'can'; link: string; node: number; bus: CanBus; timeoutMs?: number; retries?: number };

/**
 * The target for one of the gateway's simulated devices (`Gateway.devices.get(name)`): its engine's
 * registry, and its value journal's flush so a PERSIST write is durable before the answer. What an
 * MQTT `val.set` handler calls:
 *
 *     const r = await setValue(deviceTarget(gw.devices.get(name)!), oid, payload.value, { auth: authLevelOf(role) });
 *     if (!r.ok) reply({ error: r.error.error, field: r.error.field, message: r.error.message, status: r.error.status });
 */
export function deviceTarget(dev: { name: string; engine: ValueEngine; storage?: { valueStore: { flush(): Promise<void> } } }): ValueTarget {
  const store = dev.storage?.valueStore;
  return { kind: 'local', name: dev.name, engine: dev.engine, ...(store ? { flush: () => store.flush() } : {}) };
}

/** The target for node `node` on a CAN bus (a master link's), reached by the CAN value binding's GET/SET. */
export function canTarget(link: string, bus: CanBus, node: number, opts: { timeoutMs?: number; retries?: number } = {}): ValueTarget {
  return { kind: 'can', link, node, bus, ...opts };
}

/** One value read or written: the reference's `val.get`/`val.set` body is `{status, value, f16, pid}`. */
export interface ValueReading {
  oid: number;
  /** The owning task (null over CAN: the node does not say). */
  pid: number | null;
  f16: number;
  value: number;
}

export interface SetOptions {
  /** The caller's auth level (`authLevelOf(role)`). */
  auth: AuthLevel;
  /** Wait until a PERSIST value is durable (flushed) before answering. Default true. */
  durable?: boolean;
}

/**
 * An oid from a request: a number 0..0xFFFF, a decimal or `0x` string, or `GROUP:ID`.
 * Anything else is `EINVAL:oid`.
 */
export function parseOid(input: unknown): ValueResult<number> {
  const bad = (why: string) => fail(new ValueError('EINVAL', 'oid', 'oid', `oid ${why}`, null, { got: safeJson(input) }));
  if (typeof input === 'number') {
    if (!Number.isInteger(input) || input < 0 || input > 0xffff) return bad(`must be an integer 0..65535 or GROUP:ID, got ${safeJson(input)}`);
    return ok(input);
  }
  if (typeof input !== 'string') return bad(`must be an integer 0..65535 or GROUP:ID, got ${safeJson(input)}`);
  const s = input.trim();
  const pair = /^(\d+|0x[0-9a-f]+):(\d+|0x[0-9a-f]+)$/i.exec(s);
  if (pair) {
    const group = Number(pair[1]);
    const id = Number(pair[2]);
    if (group > 255 || id > 255) return bad(`GROUP and ID must be 0..255, got "${s}"`);
    return ok((group << 8) | id);
  }
  if (!/^(\d+|0x[0-9a-f]+)$/i.test(s)) return bad(`must be an integer 0..65535 or GROUP:ID, got ${safeJson(input)}`);
  return parseOid(Number(s));
}

const F16_MAX = 65504;

/**
 * A value from a request as f16 bits: a finite number (or a numeric string, as the reference's
 * `float(value)` takes; `true`/`false` for a BOOL value) that an f16 holds. NaN, ±Infinity and
 * magnitudes past 65504 are `EINVAL:value`.
 */
export function parseValue(input: unknown): ValueResult<{ raw: number; value: number }> {
  let n: number;
  if (typeof input === 'number') n = input;
  else if (typeof input === 'boolean') n = input ? 1 : 0;
  else if (typeof input === 'string' && input.trim() !== '' && /^[\s+\-0-9.eE]*$|^\s*[+-]?(nan|inf(inity)?)\s*$/i.test(input)) {
    const t = input.trim().toLowerCase().replace(/^\+/, '');
    n = t === 'nan' || t === '-nan' ? NaN : t === 'inf' || t === 'infinity' ? Infinity : t === '-inf' || t === '-infinity' ? -Infinity : Number(t);
  } else {
    return fail(new ValueError('EINVAL', 'value', 'value', `value must be a number, got ${safeJson(input)}`, null, { got: safeJson(input) }));
  }
  if (Number.isNaN(n)) return fail(new ValueError('EINVAL', 'value', 'value', `value must be a number, got ${safeJson(input)}`, null, { got: safeJson(input) }));
  if (!Number.isFinite(n)) return fail(new ValueError('EINVAL', 'value', 'value', `value ${n} cannot be held by an f16 (finite values only, |v| ≤ ${F16_MAX})`, null, { got: String(n) }));
  const raw = encodeF16(n);
  if ((raw & 0x7c00) === 0x7c00) {
    return fail(new ValueError('EINVAL', 'value', 'value', `value ${n} is too large for an f16 (|v| ≤ ${F16_MAX})`, null, { got: n, max: F16_MAX }));
  }
  return ok({ raw, value: decodeF16(raw) });
}

/** A registered value as the reference's `val.list` row. */
export function valueRow(v: RegisteredValue): Record<string, unknown> {
  const row: Record<string, unknown> = {
    oid: v.oid,
    group_id: v.group,
    value_id: v.id,
    flags: v.flags,
    auth_level: v.auth,
    owner_pid: v.pid,
    last_f16: v.raw,
    last_value: decodeF16(v.raw),
    // the reference's offset of the value's descriptor chain in its VM string table: no VM, none here
    desc_head: null,
    persist_key: v.persistKey,
    persist_debounce_ms: 0,
  };
  if (v.groupName) row['group_name'] = v.groupName;
  if (v.name) row['name'] = v.name;
  // the reference lists unit, epsilon and range only when the value declares them
  if (v.unit) {
    row['unit_code'] = unitCode(v.unit);
    row['unit'] = v.unit;
  }
  if (v.unit || v.epsilon.raw !== 0 || v.min.raw !== 0 || v.max.raw !== 0) {
    row['epsilon_f16'] = v.epsilon.raw;
    row['epsilon'] = v.epsilon.value;
    row['rate_ms'] = 0;
    row['min_f16'] = v.min.raw;
    row['max_f16'] = v.max.raw;
    row['min'] = v.min.value;
    row['max'] = v.max.value;
  }
  if (v.persisted) row['debounce_ms'] = 0;
  row['read_only'] = v.readOnly;
  row['persisted'] = v.persisted;
  return row;
}

/** The reference packs up to four unit bytes little-endian into a u32 (`degC` → 0x43676564, `rpm` → 0x006d7072). */
export function unitCode(unit: string): number {
  const b = new TextEncoder().encode(unit).subarray(0, 4);
  let n = 0;
  b.forEach((x, i) => (n += x * 2 ** (8 * i)));
  return n;
}

export interface ListFilter {
  pid?: number;
  group?: number;
  oid?: number;
  name?: string;
}

/** Every registered value of a local device (CAN nodes have no list operation: `ENOTSUP:no_value_list`). */
export function listValues(target: ValueTarget, filter: ListFilter = {}): ValueResult<RegisteredValue[]> {
  if (target.kind === 'can') {
    return fail(new ValueError('ENOTSUP', 'no_value_list', 'link', `CAN node ${target.node} on ${target.link} answers GET/SET by oid only; it has no list operation`, null));
  }
  const pids = filter.pid !== undefined ? [filter.pid] : target.engine.pids();
  const rows = pids.flatMap((pid) => target.engine.metadata.valuesOf(pid))
    .filter((v) => (filter.group === undefined || v.group === filter.group)
      && (filter.oid === undefined || v.oid === filter.oid)
      && (filter.name === undefined || v.name === filter.name))
    .sort((a, b) => a.oid - b.oid);
  return ok(rows);
}

function unknownOid(target: ValueTarget, oid: number): ValueError {
  const where = target.kind === 'local' ? `device ${target.name}` : `CAN node ${target.node} on ${target.link}`;
  return new ValueError('ENOENT', 'unknown_oid', 'oid', `${where} has no value with oid ${oid} (group ${oid >> 8}, id ${oid & 0xff})`, VAL_STATUS.ENOENT, { oid });
}

/** Reads one value. Reads need no auth level (the reference reads on the owner's behalf). */
export async function getValue(target: ValueTarget, oid: number): Promise<ValueResult<ValueReading>> {
  if (target.kind === 'can') return canRequest(target, oid, undefined);
  const v = target.engine.metadata.value(oid);
  if (!v) return fail(unknownOid(target, oid));
  return ok({ oid, pid: v.pid, f16: v.raw, value: decodeF16(v.raw) });
}

/**
 * Writes one value: `value` as the request gave it (parsed and checked here). A PERSIST value is
 * journalled by the device; with `durable` (the default) the journal is flushed before this
 * resolves, so the answer means the value survives a power cycle.
 */
export async function setValue(target: ValueTarget, oid: number, value: unknown, opts: SetOptions): Promise<ValueResult<ValueReading & { persisted: boolean }>> {
  const parsed = parseValue(value);
  if (!parsed.ok) return parsed;
  const { raw } = parsed.value;
  if (target.kind === 'can') {
    const r = await canRequest(target, oid, raw);
    return r.ok ? ok({ ...r.value, persisted: false }) : r;
  }
  const v = target.engine.metadata.value(oid);
  if (!v) return fail(unknownOid(target, oid));
  const label = `value ${v.name ? `"${v.name}" ` : ''}(${v.group},${v.id})`;
  if (v.readOnly || (v.flags & VALUE_FLAGS.RO) !== 0) {
    return fail(new ValueError('EPERM', 'read_only', 'oid', `${label} is read-only`, VAL_STATUS.EPERM, { oid }));
  }
  if (opts.auth < v.auth) {
    return fail(new ValueError('EPERM', 'auth_level', 'oid', `${label} needs auth level ${v.auth} (${authName(v.auth)}); the caller has ${opts.auth} (${authName(opts.auth)})`,
      VAL_STATUS.EPERM, { oid, required: v.auth, have: opts.auth }));
  }
  const declared = v.min.raw !== 0 || v.max.raw !== 0;
  const n = decodeF16(raw);
  if (declared && (n < v.min.value || n > v.max.value)) {
    return fail(new ValueError('EINVAL', 'out_of_range', 'value', `value ${n} is outside [${v.min.value}, ${v.max.value}] of ${label}`, VAL_STATUS.EINVAL,
      { oid, value: n, min: v.min.value, max: v.max.value }));
  }
  const r = target.engine.setValue(oid, raw);
  if (!r.ok) {
    // the engine applies the same rules; anything it still refuses is reported as it says
    const code: ValueErrorCode = r.error.code === 'EPERM' ? 'EPERM' : r.error.code === 'ESRCH' ? 'ENOENT' : 'EINVAL';
    return fail(new ValueError(code, r.error.reason, 'value', r.error.message, code === 'EPERM' ? VAL_STATUS.EPERM : code === 'ENOENT' ? VAL_STATUS.ENOENT : VAL_STATUS.EINVAL, { oid }));
  }
  if (v.persisted && opts.durable !== false && target.flush) {
    try {
      await target.flush();
    } catch (e) {
      return fail(new ValueError('EIO', 'persist_failed', null, `${label} was set but not persisted: ${(e as Error).message}`, null, { oid }));
    }
  }
  return ok({ oid, pid: v.pid, f16: r.value.raw, value: decodeF16(r.value.raw), persisted: v.persisted });
}

function authName(level: number): string {
  return (Object.entries(AUTH_LEVELS).find(([, n]) => n === level)?.[0] ?? String(level)).toLowerCase();
}

/** GET (raw undefined) or SET over the CAN value binding; the node's status becomes a ValueError. */
async function canRequest(target: Extract<ValueTarget, { kind: 'can' }>, oid: number, raw: number | undefined): Promise<ValueResult<ValueReading>> {
  const { requestValue } = await import('../link/can/value-client.js');
  const r = await requestValue({
    bus: target.bus, node: target.node, oid,
    ...(raw !== undefined ? { raw } : {}),
    ...(target.timeoutMs !== undefined ? { timeoutMs: target.timeoutMs } : {}),
    ...(target.retries !== undefined ? { retries: target.retries } : {}),
  });
  if (r.ok) return ok({ oid, pid: null, f16: r.raw, value: r.value });
  const where = `CAN node ${target.node} on ${target.link}`;
  switch (r.status) {
    case 'ESRCH': return fail(unknownOid(target, oid));
    case 'EPERM': return fail(new ValueError('EPERM', 'read_only', 'oid', `${where} refused to write oid ${oid} (read-only)`, VAL_STATUS.EPERM, { oid }));
    case 'EBADMSG': return fail(new ValueError('EINVAL', 'out_of_range', 'value', `${where} refused the value for oid ${oid} (out of range)`, VAL_STATUS.EINVAL, { oid }));
    case 'ETIMEDOUT': return fail(new ValueError('ETIMEDOUT', 'no_answer', 'node', `${where} did not answer after ${r.attempts} attempts`, null, { oid, attempts: r.attempts }));
    default: return fail(new ValueError('EIO', 'node_error', 'node', `${where} answered ${r.status} for oid ${oid}`, null, { oid, status: r.status }));
  }
}

function safeJson(v: unknown): string {
  try {
    return v === undefined ? 'nothing' : typeof v === 'number' && !Number.isFinite(v) ? String(v) : JSON.stringify(v) ?? String(v);
  } catch {
    return typeof v;
  }
}
