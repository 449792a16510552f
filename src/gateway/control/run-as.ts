/**
 * A control command run for a caller that is not a control connection: the gateway's HTTP page
 * (src/gateway/http/). It goes through the same table and handlers as a request on the control
 * port: the role table (roles.ts `requiredRole`, `roleAllows`), the command's handler (so a page's
 * job submit is `job.submit`'s code, down to the same `JobService.submit` call), and the audit
 * line. What a socket gives a connection (its own uploads, an event stream) a caller here has not:
 * a stream command is refused, and an upload id is never its own (`EPERM:not_owner`).
 */
import type { AuditLog } from './audit.js';
import { roleAllows, type Identity } from './auth.js';
import { RequestError } from './sessions.js';
import type { CommandContext, CommandResult, CommandSpec, ConnectionApi, ServerCore } from './command-types.js';
import { requestPid } from './pid-locks.js';
import { clip, MAX_REQUEST_DEPTH, nestsDeeperThan, requiredRole } from './roles.js';

export interface RunAsCaller {
  /** Who asks: the identity its token grants (or the tokenless loopback `local` admin); null = nobody. */
  identity: Identity | null;
  /** Where the request came from, for the audit line (e.g. `http:127.0.0.1:53122`). */
  peer: string;
  /** A connection id no control connection has. */
  connId: number;
}

export interface RunAsDeps {
  commands: ReadonlyMap<string, CommandSpec>;
  core: ServerCore;
  audit: AuditLog;
}

/** One request, checked and run as the control port would; never a stream. */
export async function runCommandAs(deps: RunAsDeps, cmd: string, fields: Record<string, unknown>, caller: RunAsCaller): Promise<CommandResult> {
  const req: Record<string, unknown> = { ...fields, version: 1, cmd };
  // the control port's rule, before anything walks the request
  if (nestsDeeperThan(req, MAX_REQUEST_DEPTH)) return { kind: 'error', error: 'EINVAL:request_too_deep', detail: { limit: MAX_REQUEST_DEPTH } };
  const spec = deps.commands.get(cmd);
  const need = spec ? requiredRole(cmd, req) : undefined;
  if (!spec || need === undefined || cmd === 'auth') return { kind: 'error', error: `unknown_cmd:${clip(cmd)}` };
  const audit = (verdict: 'denied' | 'ok' | 'error', reason?: string): void =>
    deps.audit.record({
      who: caller.identity?.name ?? 'anonymous',
      role: caller.identity?.role ?? null,
      peer: caller.peer,
      cmd,
      ...(typeof req['id'] === 'string' ? { target: { id: clip(req['id'], 64) } } : typeof req['link'] === 'string' ? { target: { link: clip(req['link'], 64) } } : {}),
      verdict,
      ...(reason !== undefined ? { reason: clip(reason, 300) } : {}),
    });
  if (need !== null && !roleAllows(caller.identity?.role ?? null, need)) {
    const error = `EPERM:${need}_required`;
    audit('denied', error);
    return { kind: 'error', error };
  }
  const conn: ConnectionApi = {
    id: caller.connId,
    peer: caller.peer,
    ownSession() {},
    disownSession() {},
    deliverEvent: () => false,
    streamClosed() {},
    setIdentity() {},
  };
  let result: CommandResult;
  try {
    // the same pid parse and lock check as a control connection's request (pid-locks.ts); no session here
    const ctx: CommandContext = { cmd, req, sessionId: null, identity: caller.identity, conn, core: deps.core };
    const pid = requestPid(spec, cmd, req, null, deps.core);
    if (pid !== undefined) ctx.pid = pid;
    result = await spec.run(ctx);
  } catch (e) {
    if (!(e instanceof RequestError)) {
      if (spec.mutates) audit('error', 'internal_error');
      throw e;
    }
    result = e.detail === undefined ? { kind: 'error', error: e.wire } : { kind: 'error', error: e.wire, detail: e.detail };
  }
  if (result.kind === 'stream') {
    deps.core.bus.unsubscribe(result.subscription.token);
    return { kind: 'error', error: `ENOTSUP:stream_command`, detail: { message: `${cmd} streams events: use the page's event stream instead` } };
  }
  if (spec.mutates) {
    if (result.kind === 'error') audit('error', result.error);
    else audit('ok');
  }
  return result;
}
