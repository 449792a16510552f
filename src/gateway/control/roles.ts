/**
 * The control server's access table and request-shape limits, in one place (docs/security.md,
 * "Control server"): which role each command needs, which request fields raise that, how deep a
 * request may nest and how long its free-text fields may be. Dispatch looks a command up here and
 * nowhere else, in a `Map`, so a name that is not a command (`__proto__`, `constructor`,
 * `toString`) is unknown like any other.
 */
import type { Role } from './auth.js';

/** `null` = anyone, even without a token (only `auth`, which is how a connection gets a role). */
export type RequiredRole = Role | null;

/** Command → the role it needs. The one source of truth: the handlers carry no role. */
export const COMMAND_ROLES: ReadonlyMap<string, RequiredRole> = new Map<string, RequiredRole>([
  ['auth', null],
  ['ping', 'viewer'],
  ['info', 'viewer'],
  ['ps', 'viewer'],
  ['provision.status', 'viewer'],
  ['session.open', 'viewer'], // with `pid_lock`: operator (FIELD_ROLES)
  ['session.keepalive', 'viewer'],
  ['session.close', 'viewer'],
  ['events.subscribe', 'viewer'],
  ['events.ack', 'viewer'],
  ['events.unsubscribe', 'viewer'],
  ['job.status', 'viewer'],
  ['job.list', 'viewer'],
  ['job.watch', 'viewer'],
  ['load', 'operator'],
  ['exec', 'operator'],
  ['provision.load', 'operator'],
  ['provision.begin', 'operator'],
  ['provision.write', 'operator'],
  ['provision.end', 'operator'],
  ['provision.abort', 'operator'],
  ['provision.persist', 'operator'],
  ['provision.activate', 'operator'],
  ['job.submit', 'operator'],
  ['job.upload.begin', 'operator'],
  ['job.upload.write', 'operator'],
  ['job.cancel', 'operator'],
  ['provision.rollback', 'admin'],
  ['provision.unload', 'admin'],
  ['inventory', 'viewer'], // with `refresh`: operator (FIELD_ROLES)
  ['shutdown', 'admin'],
  // the rest of the executive's commands (exec-commands.ts): reads for a viewer, changes for an operator
  ['val.list', 'viewer'],
  ['val.get', 'viewer'],
  ['val.set', 'operator'], // and the value's own auth level: operator = USER, admin = ADMIN (src/gateway/values.ts)
  ['cmd.list', 'viewer'],
  ['cmd.call', 'operator'],
  ['mailbox_snapshot', 'viewer'],
  ['list', 'viewer'],
  ['session.list', 'viewer'],
  ['session.current', 'viewer'],
  ['dmesg', 'viewer'],
  ['kill', 'operator'],
  ['reload', 'operator'],
  // VM-execution commands: all answer ENOTSUP:no_vm; the role is what they would need on an executive
  ['regs', 'viewer'],
  ['dumpregs', 'viewer'],
  ['disasm', 'viewer'],
  ['stack', 'viewer'],
  ['memory', 'viewer'],
  ['peek', 'viewer'],
  ['symbols', 'viewer'],
  ['sym', 'viewer'],
  ['step', 'operator'],
  ['pause', 'operator'],
  ['resume', 'operator'],
  ['bp', 'operator'],
  ['watch', 'operator'],
  ['poke', 'operator'],
  ['trace', 'operator'],
  ['attach', 'operator'],
  ['detach', 'operator'],
  ['sched', 'operator'],
  ['clock', 'operator'],
  ['stdio', 'operator'],
  ['stdio_fanout', 'operator'],
  ['send', 'operator'],
  ['listen', 'operator'], // receiving takes messages off the queue
]);

/**
 * Fields that need more than the command's own role when present (not undefined/null): a pid lock
 * keeps everyone else (operators and admins included) off those pids, so a viewer may not take one.
 */
export const FIELD_ROLES: ReadonlyMap<string, readonly { field: string; role: Role }[]> = new Map([
  ['session.open', [{ field: 'pid_lock', role: 'operator' as Role }]],
  ['inventory', [{ field: 'refresh', role: 'operator' as Role }]],
]);

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

/**
 * The role a request needs: its command's, raised by the fields it carries. `undefined` when
 * `cmd` is not a command.
 */
export function requiredRole(cmd: string, req: Record<string, unknown>): RequiredRole | undefined {
  if (!COMMAND_ROLES.has(cmd)) return undefined;
  let need = COMMAND_ROLES.get(cmd) as RequiredRole;
  for (const { field, role } of FIELD_ROLES.get(cmd) ?? []) {
    const v = Object.prototype.hasOwnProperty.call(req, field) ? req[field] : undefined;
    if (v !== undefined && v !== null && (need === null || RANK[role] > RANK[need])) need = role;
  }
  return need;
}

/** How deeply a request may nest; the request object itself is level 1. */
export const MAX_REQUEST_DEPTH = 32;

/** Longest `client`, `source` and `reason` (UTF-8 bytes). */
export const MAX_TEXT_BYTES = 256;

/** Most pids one session may lock. */
export const MAX_PID_LOCKS = 256;

/**
 * True when `value` nests deeper than `limit` (containers counted, the outermost is 1). Walks with
 * an explicit stack, not recursion: the value itself may be thousands of levels deep.
 */
export function nestsDeeperThan(value: unknown, limit: number): boolean {
  if (value === null || typeof value !== 'object') return false;
  const stack: { v: object; depth: number }[] = [{ v: value, depth: 1 }];
  while (stack.length) {
    const { v, depth } = stack.pop() as { v: object; depth: number };
    if (depth > limit) return true;
    const children: unknown[] = Array.isArray(v) ? v : Object.values(v);
    for (const c of children) if (c !== null && typeof c === 'object') stack.push({ v: c, depth: depth + 1 });
  }
  return false;
}

/** A client-chosen string echoed in an error (`unknown_cmd:<cmd>`), cut to a sane length. */
export function clip(s: string, max = 64): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
