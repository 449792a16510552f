/**
 * The shapes shared by the command handlers, the connection and the server: what a handler
 * gets (the request, who asks, the connection, the server core) and what it returns.
 */
import type { Clock } from '../../engine/ports.js';
import type { EventBus, Subscription, BusEvent, CloseReason } from '../events/index.js';
import type { Identity, Role } from './auth.js';
import type { ControlEngine, WireError } from './engine-port.js';
import { RequestError, type SessionRegistry } from './sessions.js';

export type CommandResult =
  | { kind: 'ok'; body: Record<string, unknown> }
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
  /** Reads an image file for `load`/`provision.load` (size-checked before reading). */
  readImage(path: string): Promise<{ ok: true; bytes: Uint8Array; source: string } | { ok: false; error: WireError }>;
  /** Session id → its event subscription token. */
  readonly streams: Map<string, string>;
  requestShutdown(): void;
  info(): Record<string, unknown>;
}

export interface CommandContext {
  cmd: string;
  req: Record<string, unknown>;
  sessionId: string | null;
  identity: Identity | null;
  conn: ConnectionApi;
  core: ServerCore;
}

export interface CommandSpec {
  /** Role needed; null = anyone (only `auth`). */
  role: Role | null;
  /** Changes a device or the gateway: audited even when it succeeds. */
  mutates: boolean;
  run(ctx: CommandContext): CommandResult | Promise<CommandResult>;
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

export function toInt(v: unknown, message: string): number {
  if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
  if (typeof v === 'string' && /^\s*-?(0x[0-9a-f]+|\d+)\s*$/i.test(v)) {
    const n = Number(v.trim());
    if (Number.isSafeInteger(n)) return n;
  }
  throw new RequestError(message);
}

export function strField(req: Record<string, unknown>, field: string, cmd: string): string {
  const v = req[field];
  if (typeof v !== 'string' || v.length === 0) throw new RequestError(`${cmd} requires '${field}'`);
  return v;
}

/** An optional non-empty string field, else `fallback` (a client's `source`, an abort `reason`). */
export function optText(req: Record<string, unknown>, field: string, fallback: string): string {
  const v = req[field];
  return typeof v === 'string' && v.length > 0 ? v : fallback;
}

/** The device a request names (`device`), or the default one; an unknown name is the request's error. */
export function deviceOf(ctx: CommandContext): DeviceRef {
  const dev = ctx.core.device(ctx.req['device']);
  if ('error' in dev) throw new RequestError(dev.error, dev.detail);
  return dev;
}

/**
 * A command that acts on one device: the device is resolved before `run` sees the request, the
 * same way for every such command.
 */
export function deviceCommand(
  role: Role,
  mutates: boolean,
  run: (ctx: CommandContext, dev: DeviceRef) => CommandResult | Promise<CommandResult>,
): CommandSpec {
  return { role, mutates, run: (ctx) => run(ctx, deviceOf(ctx)) };
}
