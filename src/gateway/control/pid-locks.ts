/**
 * Pid locks, decided in one place (docs/security.md, "Pid locks"). A session may lock pids
 * (`session.open` with `pid_lock`); from then on, every request that changes, replaces or removes
 * such a task must come through that session, whatever command it is and however it names the
 * task:
 *
 * - by its `pid` field (`provision.persist`, `provision.unload`, `provision.activate`, `kill`,
 *   `reload`, …): parsed once by `toInt` (`1`, `"1"`, `" 1"`, `"0x1"` are one pid) and checked
 *   before the handler runs (`requestPid`, for control connections and for the page alike);
 * - by what it does: a load that replaces a running app (`load`/`exec`/`provision.load` with
 *   `replace`, `provision.end` of a stream begun with `replace`) is checked against the pid it
 *   would replace after the image is verified and before anything switches (`replaceGuard`); a
 *   rollback against the tasks it would stop; a value write against the task that owns the value
 *   (`guardPids`).
 *
 * Every one of these ends in `SessionRegistry.ensurePidAccess`: `pid_locked:<pid>`, and nothing
 * changes.
 */
import { engineError, type EngineError } from '../../engine/errors.js';
import { optIntField, type CommandContext, type CommandSpec, type ServerCore } from './command-types.js';
import { RequestError } from './sessions.js';

/**
 * The request's `pid`, parsed, and lock-checked when the command changes something. Dispatch calls
 * this for every command that takes a pid; the handler then acts on exactly the pid checked.
 */
export function requestPid(spec: CommandSpec, cmd: string, req: Record<string, unknown>, sessionId: string | null, core: ServerCore): number | undefined {
  if (!spec.mutates && !spec.takesPid) return undefined;
  const pid = optIntField(req, 'pid', cmd);
  if (pid !== undefined && spec.mutates) core.sessions.ensurePidAccess(pid, sessionId);
  return pid;
}

/** Pids a request would change besides its own `pid` field: each must be free or this session's. Throws `pid_locked:<pid>`. */
export function guardPids(ctx: Pick<CommandContext, 'core' | 'sessionId'>, pids: Iterable<number>): void {
  for (const pid of pids) ctx.core.sessions.ensurePidAccess(pid, ctx.sessionId);
}

/** The engine error an intake hands back when the guard refused (the caller turns it into the lock's own reply). */
const GUARD_REFUSAL = (pid: number): EngineError =>
  engineError('EPERM', 'register', 'pid_locked', `PID ${pid} is locked by another session`, { pid });

/**
 * For an install that may replace a running task (the intake's `admit` hook): the hook refuses when
 * the task it would replace (or the tasks it would stop) are locked by another session; `refusal()`
 * then gives the request's reply, `pid_locked:<pid>`.
 */
export function replaceGuard(ctx: Pick<CommandContext, 'core' | 'sessionId'>): {
  admit: (pids: readonly number[]) => EngineError | null;
  refusal: () => RequestError | null;
} {
  let refused: RequestError | null = null;
  return {
    admit(pids) {
      for (const pid of pids) {
        try {
          ctx.core.sessions.ensurePidAccess(pid, ctx.sessionId);
        } catch (e) {
          if (!(e instanceof RequestError)) throw e;
          refused = e;
          return GUARD_REFUSAL(pid);
        }
      }
      return null;
    },
    refusal: () => refused,
  };
}

/** After this session replaced a task it holds locked (an update, a reload): the lock moves to the new pid. */
export function followReplacement(ctx: Pick<CommandContext, 'core' | 'sessionId'>, fromPid: number | undefined, toPid: number): void {
  if (fromPid !== undefined) ctx.core.sessions.moveLock(fromPid, toPid, ctx.sessionId);
}

/** The pid an install verdict says it replaced (`from.pid`), if any. */
export function replacedPid(verdict: { from: object | null }): number | undefined {
  const pid = (verdict.from as { pid?: unknown } | null)?.pid;
  return typeof pid === 'number' ? pid : undefined;
}
