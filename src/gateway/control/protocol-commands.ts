/**
 * The HSX executive's own commands: ping, info, ps, sessions and the event stream. Reply shapes
 * and error strings follow the reference daemon's recorded transcript
 * (test/fixtures/reference/protocol_transcript.json).
 */
import { randomUUID } from 'node:crypto';
import type { Subscription } from '../events/index.js';
import { RequestError } from './sessions.js';
import {
  admitStream,
  boundedText,
  deviceCommand,
  deviceOf,
  failWith,
  okBody,
  streamAddress,
  toInt,
  type CommandContext,
  type CommandResult,
  type CommandSpec,
} from './command-types.js';
import { taskToPsRow, taskToWire } from './engine-port.js';
import { referenceInfo } from './exec-commands.js';

function parseFilters(raw: unknown): { pids: number[] | null; categories: string[] | null; sinceSeq: number | null } {
  if (raw === undefined || raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    return { pids: null, categories: null, sinceSeq: null };
  }
  const f = raw as Record<string, unknown>;
  let pids: number[] | null = null;
  if (f['pid'] !== undefined && f['pid'] !== null) {
    const list = Array.isArray(f['pid']) ? f['pid'] : [f['pid']];
    pids = list.map((v) => toInt(v, 'filters.pid must contain integer PIDs'));
  }
  let categories: string[] | null = null;
  if (f['categories'] !== undefined && f['categories'] !== null) {
    const list = Array.isArray(f['categories']) ? f['categories'] : [f['categories']];
    categories = list.map((c) => {
      if (typeof c !== 'string') throw new RequestError('filters.categories must contain strings');
      return c;
    });
  }
  let sinceSeq: number | null = null;
  if (f['since_seq'] !== undefined && f['since_seq'] !== null) {
    sinceSeq = toInt(f['since_seq'], 'filters.since_seq must be an integer when provided');
    if (sinceSeq < 0) throw new RequestError('filters.since_seq must be non-negative');
  }
  return { pids, categories, sinceSeq };
}

function subscriptionOf(ctx: CommandContext) {
  ctx.core.sessions.get(ctx.sessionId);
  const token = ctx.core.streams.get(ctx.sessionId as string);
  const sub = token === undefined ? undefined : ctx.core.bus.get(token);
  if (!sub) throw new RequestError('session_required');
  return sub;
}

function subscribe(ctx: CommandContext): CommandResult {
  const { core, req } = ctx;
  const session = core.sessions.get(ctx.sessionId);
  const { pids, categories, sinceSeq } = parseFilters(req['filters']);
  let ackWindow: number | null = null;
  if (req['ack_window'] !== undefined && req['ack_window'] !== null) {
    ackWindow = toInt(req['ack_window'], 'events.subscribe ack_window must be an integer');
    if (ackWindow < 1) throw new RequestError('events.subscribe ack_window must be positive');
  }
  // One subscription per session, as in the reference: a new one replaces (and ends) the old.
  const old = core.streams.get(session.id);
  admitStream(ctx, old); // max_streams, max_streams_per_address (the one replaced does not count)
  if (old !== undefined) core.bus.unsubscribe(old);
  const sub = core.bus.subscribe({
    token: `${session.id}:${randomUUID()}`,
    maxEvents: session.maxEvents,
    pids,
    categories,
    sinceSeq,
    ackWindow,
    deferStart: true,
    deliver: (ev) => ctx.conn.deliverEvent(ev),
    onClose: (reason) => {
      core.streamSlots.remove(sub.token);
      if (core.streams.get(session.id) === sub.token) core.streams.delete(session.id);
      ctx.conn.streamClosed(reason);
    },
  });
  core.streamSlots.add(sub.token, streamAddress(ctx));
  core.streams.set(session.id, sub.token);
  return { kind: 'stream', body: { events: streamReplyEvents(core, sub, sinceSeq, ackWindow) }, subscription: sub };
}

/** The `events` object of a stream reply (`events.subscribe`, `job.watch`): the subscription as it starts. */
export function streamReplyEvents(core: CommandContext['core'], sub: Subscription, sinceSeq: number | null, ackWindow: number | null): Record<string, unknown> {
  const m = sub.metrics();
  const events: Record<string, unknown> = {
    token: sub.token,
    max: sub.maxEvents,
    cursor: core.bus.lastSeq,
    retention_ms: core.bus.config.retentionMs,
    pending: m.pending,
    high_water: m.high_water,
    drops: m.drop_count,
  };
  if (sinceSeq !== null) events['since_seq'] = sinceSeq;
  if (ackWindow !== null) events['ack_window'] = ackWindow;
  return events;
}

export const protocolCommands: Record<string, CommandSpec> = {
  ping: { mutates: false, run: () => okBody({ reply: 'pong' }) },

  auth: {
    mutates: false,
    // Handled by the connection (it needs the token store); listed so it is a known command.
    run: () => okBody(),
  },

  info: {
    mutates: false,
    takesPid: true,
    run(ctx) {
      const pid = ctx.pid;
      if (pid === undefined) {
        // the reference's info document (about the default or named device), then the gateway's own fields
        const named = ctx.req['device'];
        const dev = named === undefined || named === null ? ctx.core.device(undefined) : deviceOf(ctx);
        return okBody({ info: { ...referenceInfo('error' in dev ? null : dev, null), ...ctx.core.info() } });
      }
      const dev = deviceOf(ctx);
      const task = dev.engine.ps().find((t) => t.pid === pid);
      if (!task) return failWith({ error: `ESRCH:unknown_pid`, detail: { pid } });
      return okBody({ info: { ...referenceInfo(dev, pid), device: dev.name, ...taskToWire(task) } });
    },
  },

  ps: deviceCommand(false, (_ctx, dev) =>
    okBody({ tasks: { tasks: dev.engine.ps().map(taskToPsRow), current_pid: null }, device: dev.name })),

  'session.open': {
    mutates: false,
    run(ctx) {
      const client = ctx.req['client'];
      const rec = ctx.core.sessions.open({
        // the reference takes any scalar (str()); objects are refused, strings bounded
        client: typeof client === 'number' || typeof client === 'boolean' || client === undefined || client === null ? client : boundedText(client, 'client', ctx.cmd),
        capabilities: ctx.req['capabilities'],
        pid_lock: ctx.req['pid_lock'],
        heartbeat_s: ctx.req['heartbeat_s'],
      }, ctx.conn.id);
      return okBody({ session: ctx.core.sessions.payload(rec) });
    },
  },

  'session.keepalive': {
    mutates: false,
    run(ctx) {
      ctx.core.sessions.touch(ctx.sessionId);
      return okBody();
    },
  },

  'session.close': {
    mutates: false,
    run(ctx) {
      ctx.core.sessions.close(ctx.sessionId);
      return okBody();
    },
  },

  'events.subscribe': { mutates: false, run: subscribe },

  'events.ack': {
    mutates: false,
    run(ctx) {
      const sub = subscriptionOf(ctx);
      const raw = ctx.req['seq'];
      if (raw === undefined || raw === null) throw new RequestError("events.ack requires 'seq'");
      const seq = toInt(raw, 'events.ack seq must be an integer');
      if (seq < 0) throw new RequestError('ack seq must be non-negative');
      sub.ack(seq);
      const m = sub.metrics();
      return okBody({ events: { pending: m.pending, high_water: m.high_water, drops: m.drop_count, last_ack: m.last_ack } });
    },
  },

  'events.unsubscribe': {
    mutates: false,
    run(ctx) {
      ctx.core.sessions.get(ctx.sessionId);
      const token = ctx.core.streams.get(ctx.sessionId as string);
      const removed = token !== undefined && ctx.core.bus.unsubscribe(token);
      return okBody({ unsubscribed: removed });
    },
  },

  shutdown: {
    mutates: true,
    run(ctx) {
      ctx.core.requestShutdown();
      return okBody();
    },
  },
};
