/**
 * Provisioning over the control connection: the executive's `load`/`exec` (a path), and the
 * gateway's `provision.*` commands — a whole image (path or base64), a streaming load in base64
 * chunks, status, persist/activate/rollback and unload. Engine errors go on the wire as
 * `"<CODE>:<reason>"` with a `detail` object.
 */
import { RequestError } from './sessions.js';
import {
  deviceCommand,
  failWith,
  intField,
  okBody,
  optIntField,
  optText,
  pidOf,
  uploadKey,
  type CommandContext,
  type CommandResult,
  type CommandSpec,
  type DeviceRef,
} from './command-types.js';
import { engineErrorToWire, taskToImage, taskToWire, toWire, type TaskInfoLike } from './engine-port.js';
import type { EngineError } from '../../engine/errors.js';
import { imageExtras } from './reference-shapes.js';
import { followReplacement, guardPids, replacedPid, replaceGuard } from './pid-locks.js';
import type { Result } from '../../hxe/result.js';

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict base64 (no whitespace, correct padding): a chunk that is not exactly decodable is refused. */
export function decodeBase64(text: unknown, what: string): Uint8Array {
  if (typeof text !== 'string') throw new RequestError(`${what} must be a base64 string`);
  if (text.length % 4 !== 0 || !BASE64.test(text)) throw new RequestError(`${what} must be base64`);
  const buf = Buffer.from(text, 'base64');
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}

function engineFail(e: EngineError, dev: DeviceRef): CommandResult {
  const w = engineErrorToWire(e);
  return failWith({ error: w.error, detail: { device: dev.name, ...w.detail } });
}

/**
 * A streaming upload belongs to the connection that began it: another connection may not write,
 * end or abort it (an admin may, to clear a stuck upload). Null when the caller may go on.
 */
function notOwner(ctx: CommandContext, dev: DeviceRef, sid: number): CommandResult | null {
  const owner = ctx.core.uploads.get(uploadKey(dev.name, sid));
  if (owner === undefined || owner === ctx.conn.id || ctx.identity?.role === 'admin') return null;
  return failWith({ error: 'EPERM:not_owner', detail: { device: dev.name, session_id: sid, message: `session ${sid} was begun by another connection` } });
}

function unknownPid(dev: DeviceRef, pid: number): CommandResult {
  return failWith({ error: 'ESRCH:unknown_pid', detail: { device: dev.name, pid } });
}

/** Where an image sent over this connection came from, unless the client names it. */
const sourceOf = (ctx: CommandContext, fallback = `control:${ctx.conn.peer}`) => optText(ctx.req, 'source', fallback, ctx.cmd);

/** The reference's `exec` of a single-instance app that is already loaded says `app_exists:<name>`. */
function compatLoadError(e: EngineError, dev: DeviceRef): CommandResult {
  if (e.code === 'EEXIST' && e.reason === 'app_exists') {
    const name = e.detail?.['appName'] ?? e.detail?.['app_name'] ?? e.detail?.['name'];
    if (typeof name === 'string') return failWith({ error: `app_exists:${name}`, detail: { device: dev.name, ...engineErrorToWire(e).detail } });
  }
  return engineFail(e, dev);
}

async function bytesOf(ctx: CommandContext, allowData: boolean): Promise<{ bytes: Uint8Array; source: string } | CommandResult> {
  const { req, cmd } = ctx;
  const path = req['path'];
  if (typeof path === 'string' && path.length > 0) {
    const r = await ctx.core.readImage(path);
    if (!r.ok) return failWith(r.error);
    return { bytes: r.bytes, source: sourceOf(ctx, r.source) };
  }
  if (allowData && req['data'] !== undefined) {
    return { bytes: decodeBase64(req['data'], `${cmd} data`), source: sourceOf(ctx) };
  }
  throw new RequestError(allowData ? `${cmd} requires 'path' or 'data'` : `${cmd} requires 'path'`);
}

/** `"replace": true` makes a load of a running app an update (docs/provisioning.md, "Updates"); the default is the reference's `app_exists`. */
function replaceOf(ctx: CommandContext): boolean {
  const v = ctx.req['replace'];
  if (v !== undefined && typeof v !== 'boolean') throw new RequestError(`${ctx.cmd} replace must be true or false`);
  return v === true;
}

/** What an install adds to a reply: the outcome, and what an update replaced. */
function outcomeFields(v: { outcome: string; from: object | null }): Record<string, unknown> {
  return { outcome: v.outcome, ...(v.from ? { replaced: toWire(v.from) } : {}) };
}

function loadCommand(compat: boolean): CommandSpec {
  return deviceCommand(true, async (ctx, dev) => {
    const replace = replaceOf(ctx);
    const input = await bytesOf(ctx, !compat);
    if ('kind' in input) return input;
    const intake = dev.engine.intake;
    if (intake) {
      // RAM only, as the executive's `load`; `force` unless replacing, so a second load of the same
      // single-instance image still answers `app_exists` as the reference does. An update of a
      // running app is refused when that app's pid is locked by another session.
      const guard = replaceGuard(ctx);
      const r = await intake.load(input.bytes, { source: input.source, update: replace ? 'replace' : 'reject', force: !replace, persist: false, admit: guard.admit });
      const locked = guard.refusal();
      if (locked) throw locked;
      if (!r.ok) return compat ? compatLoadError(r.error, dev) : engineFail(r.error, dev);
      followReplacement(ctx, replacedPid(r.value), r.value.task.pid);
      const extra = replace ? outcomeFields(r.value) : {};
      return compat ? okBody({ image: imageOf(dev, r.value.task), ...extra }) : okBody({ device: dev.name, task: taskToWire(r.value.task), ...extra });
    }
    const r = dev.engine.loadImage(input.bytes, { source: input.source });
    if (!r.ok) return compat ? compatLoadError(r.error, dev) : engineFail(r.error, dev);
    return compat ? okBody({ image: imageOf(dev, r.value) }) : okBody({ device: dev.name, task: taskToWire(r.value) });
  });
}

/** The `load`/`exec` reply's `image`: the task, with the metadata, flags and mailbox creation the reference reports. */
function imageOf(dev: DeviceRef, task: TaskInfoLike): Record<string, unknown> {
  return taskToImage(task, imageExtras(dev.engine.taskImage?.(task.pid), task.pid, dev.engine.metadata));
}

/** Runs an async engine operation (persist/confirm/rollback) that a device may not offer. */
async function settle(
  dev: DeviceRef,
  call: (() => Promise<Result<unknown, EngineError>>) | null,
  key: string,
): Promise<CommandResult> {
  if (!call) return failWith({ error: 'ENOTSUP:no_image_store', detail: { device: dev.name } });
  const r = await call();
  if (!r.ok) return engineFail(r.error, dev);
  return okBody({ device: dev.name, [key]: taskToWire((r.value ?? {}) as TaskInfoLike) });
}

export const provisionCommands: Record<string, CommandSpec> = {
  load: loadCommand(true),
  exec: loadCommand(true),
  'provision.load': loadCommand(false),

  'provision.begin': deviceCommand(true, (ctx, dev) => {
    const { req, cmd } = ctx;
    const totalBytes = optIntField(req, 'total_bytes', cmd);
    const expectedCrc = optIntField(req, 'crc32', cmd);
    const opts: { source: string; totalBytes?: number; expectedCrc?: number; update?: 'replace' } = { source: sourceOf(ctx) };
    if (replaceOf(ctx)) opts.update = 'replace';
    if (totalBytes !== undefined) opts.totalBytes = totalBytes;
    if (expectedCrc !== undefined) opts.expectedCrc = expectedCrc >>> 0;
    const r = dev.engine.begin(opts);
    if (!r.ok) return engineFail(r.error, dev);
    ctx.conn.ownSession(dev.name, r.value.sessionId);
    return okBody({ device: dev.name, session_id: r.value.sessionId });
  }),

  'provision.write': deviceCommand(true, (ctx, dev) => {
    const { req, cmd } = ctx;
    const sid = intField(req, 'session_id', cmd);
    const refused = notOwner(ctx, dev, sid);
    if (refused) return refused;
    const seq = intField(req, 'seq', cmd);
    if (req['data'] === undefined) throw new RequestError(`${cmd} requires 'data'`);
    const chunk = decodeBase64(req['data'], `${cmd} data`);
    const r = dev.engine.write(sid, seq, chunk);
    if (!r.ok) return engineFail(r.error, dev);
    // bytes_written (this chunk), duplicate, and total_bytes_written when the engine reports it
    return okBody({ session_id: sid, seq, ...(toWire(r.value) as Record<string, unknown>) });
  }),

  'provision.end': deviceCommand(true, async (ctx, dev) => {
    const sid = intField(ctx.req, 'session_id', ctx.cmd);
    const refused = notOwner(ctx, dev, sid);
    if (refused) return refused;
    const intake = dev.engine.intake;
    if (intake) {
      const guard = replaceGuard(ctx);
      const r = await intake.finishSession(sid, { persist: false, admit: guard.admit });
      ctx.conn.disownSession(dev.name, sid); // ended either way: READY, or FAILED and freed
      const locked = guard.refusal();
      if (locked) throw locked;
      if (!r.ok) return engineFail(r.error, dev);
      followReplacement(ctx, replacedPid(r.value), r.value.task.pid);
      return okBody({ device: dev.name, session_id: sid, task: taskToWire(r.value.task), ...outcomeFields(r.value) });
    }
    const r = dev.engine.end(sid);
    ctx.conn.disownSession(dev.name, sid); // ended either way: READY, or FAILED and freed
    if (!r.ok) return engineFail(r.error, dev);
    return okBody({ device: dev.name, session_id: sid, task: taskToWire(r.value) });
  }),

  'provision.abort': deviceCommand(true, (ctx, dev) => {
    const sid = intField(ctx.req, 'session_id', ctx.cmd);
    const refused = notOwner(ctx, dev, sid);
    if (refused) return refused;
    const r = dev.engine.abort(sid, optText(ctx.req, 'reason', 'client_abort', ctx.cmd));
    if (!r.ok) return engineFail(r.error, dev);
    ctx.conn.disownSession(dev.name, sid);
    return okBody({ device: dev.name, session_id: sid, aborted: true });
  }),

  'provision.status': deviceCommand(false, (ctx, dev) => {
    const pid = ctx.pid;
    const tasks = dev.engine.ps();
    if (pid === undefined) return okBody({ device: dev.name, tasks: tasks.map(taskToWire) });
    const task = tasks.find((t) => t.pid === pid);
    if (!task) return unknownPid(dev, pid);
    return okBody({ device: dev.name, task: taskToWire(task) });
  }, { takesPid: true }),

  'provision.persist': deviceCommand(true, (ctx, dev) => {
    const pid = pidOf(ctx);
    const target = ctx.req['target'] ?? 'test';
    if (target !== 'test' && target !== 'permanent') throw new RequestError(`${ctx.cmd} target must be 'test' or 'permanent'`);
    const e = dev.engine;
    return settle(dev, e.persist ? () => e.persist!(pid, target) : null, 'persisted');
  }),

  'provision.activate': deviceCommand(true, (ctx, dev) => {
    const pid = ctx.pid;
    const e = dev.engine;
    if (pid !== undefined && !e.ps().some((t) => t.pid === pid)) return unknownPid(dev, pid);
    // without a pid it confirms whatever the device runs on trial: none of its tasks may be another session's
    if (pid === undefined) guardPids(ctx, e.ps().map((t) => t.pid));
    return settle(dev, e.confirm ? () => e.confirm!() : null, 'activated');
  }),

  'provision.rollback': deviceCommand(true, async (ctx, dev) => {
    const reason = optText(ctx.req, 'reason', 'operator_rollback', ctx.cmd);
    const e = dev.engine;
    const intake = e.intake;
    if (intake) {
      // the store switches back and the device runs the previous image again, with its values;
      // the tasks it stops must not be locked by another session
      const guard = replaceGuard(ctx);
      const r = await intake.rollback(reason, guard.admit);
      const locked = guard.refusal();
      if (locked) throw locked;
      if (!r.ok) return engineFail(r.error, dev);
      return okBody({ device: dev.name, rollback: { slot: r.value.slot, task: r.value.task ? taskToWire(r.value.task) : null } });
    }
    // a device without an intake: which task the store's image is, it cannot say, so every task counts
    guardPids(ctx, e.ps().map((t) => t.pid));
    return settle(dev, e.rollback ? () => e.rollback!(reason) : null, 'rollback');
  }),

  'provision.unload': deviceCommand(true, (ctx, dev) => {
    const pid = pidOf(ctx);
    const r = dev.engine.unload(pid);
    if (!r.ok) return engineFail(r.error, dev);
    return okBody({ device: dev.name, pid, unloaded: true });
  }),
};
