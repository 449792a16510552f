/**
 * The rest of the HSX executive's command set, as far as a provisioning gateway can answer it
 * without running code (docs/executive_protocol.md, "The reference's other commands"):
 *
 * - values (`val.list`, `val.get`, `val.set`) through src/gateway/values.ts, the one value rule;
 * - the command and mailbox registries (`cmd.list`, `mailbox_snapshot`, `list`);
 * - sessions (`session.list`, `session.current`), tasks (`kill`, `reload`), the recent log (`dmesg`);
 * - `cmd.call` and every VM-execution command answer `ENOTSUP:no_vm`, naming the command.
 */
import { RequestError } from './sessions.js';
import { followReplacement, guardPids } from './pid-locks.js';
import {
  deviceOf,
  failWith,
  okBody,
  optIntField,
  type CommandContext,
  type CommandResult,
  type CommandSpec,
  type DeviceRef,
} from './command-types.js';
import { engineErrorToWire, taskToImage, taskToPsRow } from './engine-port.js';
import { channelRow, commandRow, descriptorRow, imageExtras, ownerOf, stoppedClock, type MetadataView } from './reference-shapes.js';
import {
  authLevelOf,
  getValue,
  listValues,
  parseOid,
  setValue,
  valueRow,
  type ValueError,
  type ValueTarget,
} from '../values.js';

/** A device without registries (a bare test engine) cannot answer registry commands. */
function metadataOf(ctx: CommandContext, dev: DeviceRef): MetadataView {
  const m = dev.engine.metadata;
  if (!m) throw new RequestError('ENOTSUP:no_registry', { device: dev.name, message: `${ctx.cmd}: device ${dev.name} exposes no metadata registry` });
  return m;
}

function pidsOf(dev: DeviceRef): number[] {
  return dev.engine.pids ? dev.engine.pids() : dev.engine.ps().map((t) => t.pid);
}

/**
 * Where a value request goes: a CAN node (`link` and `node`: a master link of this gateway and a
 * node id on it), or a device of this gateway (`device`, default the first).
 */
function valueTargetOf(ctx: CommandContext): { target: ValueTarget; where: Record<string, unknown> } {
  const { req, cmd } = ctx;
  if (req['link'] !== undefined && req['link'] !== null) {
    const link = req['link'];
    if (typeof link !== 'string' || link === '') throw new RequestError('EINVAL:link', { field: 'link', message: `${cmd} link must be a link name` });
    const node = optIntField(req, 'node', cmd);
    if (node === undefined || node < 1 || node > 63) throw new RequestError('EINVAL:node', { field: 'node', message: `${cmd} node must be a CAN node id 1..63` });
    const bus = ctx.core.valueBus(link);
    if (!bus) throw new RequestError('ENOENT:no_such_link', { field: 'link', message: `${cmd}: ${link} is not a CAN master link of this gateway`, links: ctx.core.valueLinks() });
    return { target: { kind: 'can', link, node, bus }, where: { link, node } };
  }
  const dev = deviceOf(ctx);
  const e = dev.engine;
  const meta = metadataOf(ctx, dev);
  if (!e.setValue) throw new RequestError('ENOTSUP:no_registry', { device: dev.name, message: `${cmd}: device ${dev.name} cannot set values` });
  const setRaw = e.setValue.bind(e);
  const target: ValueTarget = {
    kind: 'local',
    name: dev.name,
    engine: {
      metadata: { value: (oid) => meta.value(oid), valuesOf: (pid) => meta.valuesOf(pid) },
      pids: () => pidsOf(dev),
      setValue: (oid, raw) => {
        const r = setRaw(oid, raw);
        return r.ok ? r : { ok: false, error: { code: r.error.code, reason: r.error.reason, message: r.error.message } };
      },
    },
    ...(e.flushValues ? { flush: () => e.flushValues!() } : {}),
  };
  return { target, where: { device: dev.name } };
}

/**
 * A refused value request. Registry refusals (no such oid, read-only, auth level, range) keep the
 * reference's shape: `status: ok` and the HSX value status in `value.status`, with the gateway's
 * typed `error`, `field` and `message` beside it. Malformed input and transport failures are
 * errors (`EINVAL:<field>`, `ETIMEDOUT:no_answer`, …) with `detail.field`.
 */
function valueRefusal(e: ValueError, where: Record<string, unknown>): CommandResult {
  if (e.status !== null) {
    return { kind: 'ok', body: { value: { status: e.status, error: e.error, field: e.field, message: e.message, ...e.detail }, ...where }, refused: e.error };
  }
  return failWith({ error: e.error, detail: { ...where, field: e.field, message: e.message, ...e.detail } });
}

function oidField(ctx: CommandContext, required: boolean): number | undefined {
  const raw = ctx.req['oid'];
  if (raw === undefined || raw === null) {
    if (required) throw new RequestError(`${ctx.cmd} requires 'oid'`);
    return undefined;
  }
  const r = parseOid(raw);
  if (!r.ok) throw new RequestError(r.error.error, { field: 'oid', message: `${ctx.cmd} ${r.error.message}` });
  return r.value;
}

function listFilter(ctx: CommandContext): { pid?: number; group?: number; oid?: number; name?: string } {
  const f: { pid?: number; group?: number; oid?: number; name?: string } = {};
  if (ctx.pid !== undefined) f.pid = ctx.pid;
  const group = optIntField(ctx.req, 'group', ctx.cmd);
  if (group !== undefined) f.group = group;
  const oid = oidField(ctx, false);
  if (oid !== undefined) f.oid = oid;
  const name = ctx.req['name'];
  if (name !== undefined && name !== null) f.name = String(name);
  return f;
}

/** The reference's `unknown pid N` (kill, reload, list), with the device and pid in `detail`. */
function unknownPid(dev: DeviceRef, pid: number): CommandResult {
  return failWith({ error: `unknown pid ${pid}`, detail: { device: dev.name, pid, code: 'ESRCH' } });
}

function requirePid(ctx: CommandContext): number {
  if (ctx.pid === undefined) throw new RequestError(`${ctx.cmd} requires 'pid'`);
  return ctx.pid;
}

/** Session ids are what `events.ack`/`unsubscribe` act on: others' are shown only to an admin or their own connection. */
function sessionRows(ctx: CommandContext): Record<string, unknown>[] {
  const now = ctx.core.clock.now() / 1000;
  return ctx.core.sessions.list().map((rec) => {
    const mine = rec.owner === ctx.conn.id || ctx.identity?.role === 'admin' || rec.id === ctx.sessionId;
    const p = ctx.core.sessions.payload(rec);
    return { ...p, id: mine ? rec.id : `${rec.id.slice(0, 8)}…`, pid_locks: [...rec.pidLocks], warnings: [...rec.warnings], age_s: Math.max(0, now - rec.createdAt) };
  });
}

/** What the VM commands would do, for the message that says why the gateway cannot. */
const VM_COMMANDS: Record<string, string> = {
  step: 'execute instructions',
  pause: 'pause a running task',
  resume: 'resume a paused task',
  regs: 'read registers',
  dumpregs: 'read registers',
  bp: 'set or list breakpoints',
  watch: 'set or list watchpoints',
  disasm: 'disassemble loaded code',
  stack: 'walk a task\'s stack',
  memory: 'map a task\'s memory',
  peek: 'read VM memory',
  poke: 'write VM memory',
  symbols: 'read a symbol table',
  sym: 'read a symbol table',
  trace: 'trace execution',
  attach: 'attach a debugger',
  detach: 'detach a debugger',
  sched: 'schedule tasks',
  clock: 'run the VM clock',
  stdio: 'route task stdio',
  stdio_fanout: 'route task stdio',
  send: 'deliver mailbox messages to a running task',
  listen: 'receive mailbox messages from a running task',
};

function noVm(cmd: string, what: string): CommandResult {
  return failWith({
    error: 'ENOTSUP:no_vm',
    detail: { command: cmd, message: `${cmd}: this gateway provisions images and keeps their metadata but runs no code (no VM), so it cannot ${what}` },
  });
}

const vmCommands: Record<string, CommandSpec> = Object.fromEntries(
  Object.entries(VM_COMMANDS).map(([cmd, what]) => [cmd, { mutates: false, run: () => noVm(cmd, what) } satisfies CommandSpec]),
);

async function reloadTask(ctx: CommandContext, dev: DeviceRef): Promise<CommandResult> {
  const pid = requirePid(ctx);
  const task = dev.engine.ps().find((t) => t.pid === pid);
  if (!task) return unknownPid(dev, pid);
  const program = task.source ?? null;
  // the file again when the task came from the images directory (a rebuilt image), else its own bytes
  let bytes: Uint8Array | undefined;
  let from = 'memory';
  if (typeof program === 'string' && program !== '') {
    const r = await ctx.core.readImage(program);
    if (r.ok) {
      bytes = r.bytes;
      from = 'file';
    }
  }
  bytes ??= dev.engine.taskImage?.(pid);
  if (!bytes) return failWith({ error: `task ${pid} does not have an associated program path`, detail: { device: dev.name, pid } });
  const old = dev.engine.taskImage?.(pid);
  const gone = dev.engine.unload(pid);
  if (!gone.ok) return failWith({ error: engineErrorToWire(gone.error).error, detail: { device: dev.name, ...engineErrorToWire(gone.error).detail } });
  const source = program ?? `reload:${pid}`;
  const loaded = dev.engine.intake
    ? await dev.engine.intake.load(bytes, { source, update: 'reject', force: true, persist: false }).then((r) => (r.ok ? { ok: true as const, value: r.value.task } : r))
    : dev.engine.loadImage(bytes, { source });
  if (!loaded.ok) {
    // put the old image back, so a failed reload loses nothing (the reference leaves the task killed)
    let restored = false;
    if (old) {
      const back = dev.engine.intake
        ? await dev.engine.intake.load(old, { source, update: 'reject', force: true, persist: false })
        : dev.engine.loadImage(old, { source });
      restored = back.ok;
    }
    const w = engineErrorToWire(loaded.error);
    return failWith({ error: w.error, detail: { device: dev.name, ...w.detail, old_pid: pid, restored } });
  }
  const t = loaded.value;
  followReplacement(ctx, pid, t.pid); // the lock, if this session holds one, follows the app
  const image = taskToImage(t, imageExtras(dev.engine.taskImage?.(t.pid), t.pid, dev.engine.metadata));
  return okBody({ reload: { old_pid: pid, new_pid: t.pid, program, from, image, task: taskToPsRow(t) }, device: dev.name });
}

export const execCommands: Record<string, CommandSpec> = {
  'val.list': {
    mutates: false,
    takesPid: true,
    run(ctx) {
      const { target, where } = valueTargetOf(ctx);
      const r = listValues(target, listFilter(ctx));
      if (!r.ok) return valueRefusal(r.error, where);
      return okBody({ values: r.value.map(valueRow), ...where });
    },
  },

  'val.get': {
    mutates: false,
    takesPid: true,
    async run(ctx) {
      const oid = oidField(ctx, true) as number;
      const { target, where } = valueTargetOf(ctx);
      const r = await getValue(target, oid);
      if (!r.ok) return valueRefusal(r.error, where);
      return okBody({ value: { status: 0, value: r.value.value, f16: r.value.f16, pid: r.value.pid }, ...where });
    },
  },

  'val.set': {
    mutates: true,
    async run(ctx) {
      const oid = oidField(ctx, true) as number;
      if (!Object.prototype.hasOwnProperty.call(ctx.req, 'value')) throw new RequestError("val.set requires 'value'");
      const { target, where } = valueTargetOf(ctx);
      // a value belongs to its task: a task locked by another session is not written behind its back
      if (target.kind === 'local') {
        const owner = target.engine.metadata.value(oid)?.pid;
        if (owner !== undefined) guardPids(ctx, [owner]);
      }
      const r = await setValue(target, oid, ctx.req['value'], { auth: authLevelOf(ctx.identity?.role) });
      if (!r.ok) return valueRefusal(r.error, where);
      return okBody({ value: { status: 0, value: r.value.value, f16: r.value.f16, pid: r.value.pid, persisted: r.value.persisted }, ...where });
    },
  },

  'cmd.list': {
    mutates: false,
    takesPid: true,
    run(ctx) {
      const dev = deviceOf(ctx);
      const meta = metadataOf(ctx, dev);
      const f = listFilter(ctx);
      const pids = f.pid !== undefined ? [f.pid] : pidsOf(dev);
      const rows = pids.flatMap((pid) => meta.commandsOf(pid))
        .filter((c) => (f.group === undefined || c.group === f.group) && (f.oid === undefined || c.oid === f.oid) && (f.name === undefined || c.name === f.name))
        .sort((a, b) => a.oid - b.oid);
      return okBody({ commands: rows.map(commandRow), device: dev.name });
    },
  },

  'cmd.call': {
    mutates: true,
    run(ctx) {
      return failWith({
        error: 'ENOTSUP:no_vm',
        detail: { command: 'cmd.call', message: 'cmd.call: a command\'s handler is code in the image and this gateway runs no code (no VM); list commands with cmd.list' },
      });
    },
  },

  mailbox_snapshot: {
    mutates: false,
    run(ctx) {
      const dev = deviceOf(ctx);
      const meta = metadataOf(ctx, dev);
      const rows = pidsOf(dev).flatMap((pid) => meta.mailboxesOf(pid)).sort((a, b) => a.descriptor - b.descriptor);
      return okBody({ descriptors: rows.map(descriptorRow), stats: {}, device: dev.name });
    },
  },

  list: {
    mutates: false,
    takesPid: true,
    run(ctx) {
      const pid = requirePid(ctx);
      const dev = deviceOf(ctx);
      const meta = metadataOf(ctx, dev);
      if (!pidsOf(dev).includes(pid)) return unknownPid(dev, pid);
      const owned = pidsOf(dev).flatMap((p) => meta.mailboxesOf(p)).filter((m) => ownerOf(m) === pid).sort((x, y) => x.descriptor - y.descriptor);
      return okBody({ channels: { pid, channels: owned.map(channelRow) }, device: dev.name });
    },
  },

  'session.list': {
    mutates: false,
    run: (ctx) => okBody({ sessions: sessionRows(ctx) }),
  },

  'session.current': {
    mutates: false,
    run(ctx) {
      const rec = ctx.core.sessions.touch(ctx.sessionId);
      return okBody({ session: { ...ctx.core.sessions.payload(rec), pid_locks: [...rec.pidLocks], warnings: [...rec.warnings] } });
    },
  },

  kill: {
    mutates: true,
    run(ctx) {
      const pid = requirePid(ctx);
      const dev = deviceOf(ctx);
      if (!dev.engine.ps().some((t) => t.pid === pid)) return unknownPid(dev, pid);
      const r = dev.engine.unload(pid);
      if (!r.ok) {
        const w = engineErrorToWire(r.error);
        return failWith({ error: w.error, detail: { device: dev.name, ...w.detail } });
      }
      return okBody({ task: { pid, state: 'terminated' }, device: dev.name });
    },
  },

  reload: { mutates: true, run: (ctx) => reloadTask(ctx, deviceOf(ctx)) },

  dmesg: {
    mutates: false,
    run(ctx) {
      const limit = optIntField(ctx.req, 'limit', ctx.cmd);
      if (limit !== undefined && limit < 0) throw new RequestError('dmesg limit must be non-negative');
      const fs = ctx.req['filter_session'];
      return okBody({ logs: ctx.core.recent.list(limit, typeof fs === 'string' && fs !== '' ? fs : undefined) });
    },
  },

  ...vmCommands,
};

/** The reference's `info` document for a gateway (no VM: nothing runs, the clock is stopped), with one device's tasks. */
export function referenceInfo(dev: DeviceRef | null, selectedPid: number | null): Record<string, unknown> {
  const tasks = dev ? dev.engine.ps().map(taskToPsRow) : [];
  const first = tasks[0];
  return {
    loaded: tasks.length > 0,
    program: (first?.['program'] as string | undefined) ?? null,
    running: false,
    pc: null,
    attached: false,
    paused: false,
    sleep_pending: false,
    current_pid: null,
    active_context: null,
    tasks,
    ...(selectedPid !== null ? { selected_pid: selectedPid, selected_registers: null } : {}),
    scheduler: {
      trace: [],
      counters: {},
      // nothing ever waits on a mailbox here: every task's counters are zero
      mailbox_counters: Object.fromEntries(tasks.map((r) => [String(r['pid']), { MAILBOX_STEP: 0, MAILBOX_WAKE: 0, MAILBOX_TIMEOUT: 0 }])),
    },
    mailbox_profile: { name: 'gateway', config: { max_descriptors: null, handle_limit_per_pid: null, default_capacity: 64, tap_rate_limit: 0 } },
    auto: false,
    clock: stoppedClock(),
  };
}
