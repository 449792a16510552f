/**
 * What `flash --can`, `device --can` and `can get|set` do; the command files only parse options and
 * call these. Each returns the process exit code (0 ok, 1 failed, 2 usage) instead of exiting, so
 * the shells stay in charge of the process.
 */
import { readFile } from 'node:fs/promises';
import cliProgress from 'cli-progress';
import { encodeF16 } from '../../hxe/f16.js';
import { DeviceIntake, ProvisioningEngine, systemClock, type EngineEvent, type EventSink } from '../../engine/index.js';
import { openSimulatedDevice, type SimulatedDevice } from '../../persist/simulated-device.js';
import { checkImageToSend } from '../image-check.js';
import { createCanBus, parseCanAddress } from './address.js';
import type { CanBus } from './bus.js';
import { nodeProblem } from './ids.js';
import { CanListener, type ListenerEvent, type ListenerOptions } from './listener.js';
import { CanFlasher, NO_JOIN_HINT, verdictReason, type CanFlashResult } from './flasher.js';
import { OK_STATUSES, parseNodeList, type MasterProgress, type NodeVerdict } from './master.js';
import { parseOid, requestValue } from './value-client.js';
import { restoreAtBoot } from '../device-boot.js';
import { pubFrame } from './value-watch.js';
import { ContentStore, defaultCacheDir } from '../delta/image-store.js';
import type { TransferReport } from '../flasher.js';
import { describePlan } from './transfer-plan.js';

type Out = (line: string) => void;
const stdout: Out = (l) => process.stdout.write(l + '\n');
const stderr: Out = (l) => process.stderr.write(l + '\n');

function intOption(value: unknown, name: string, min: number, max: number): number | string | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) return `${name} must be an integer ${min}..${max}, got ${String(value)}`;
  return n;
}

/** A malformed address is a usage error (2); an interface that cannot be opened is a failure (1). */
async function openBus(spec: string, fd: boolean, json: boolean): Promise<CanBus | 2 | 1> {
  const parsed = parseCanAddress(spec);
  if (!parsed.ok) {
    if (json) stdout(JSON.stringify({ ok: false, error: { code: 'EUSAGE', reason: 'bad_address', message: parsed.message } }));
    else stderr(`error: ${parsed.message}`);
    return 2;
  }
  try {
    const bus = createCanBus(parsed.address, { fd });
    await bus.open();
    return bus;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (json) stdout(JSON.stringify({ ok: false, type: 'error', error: { code: 'ENODEV', reason: 'bus_unavailable', message } }));
    else stderr(`error: ${message}`);
    return 1;
  }
}

// ---------------------------------------------------------------------------------------------

export interface CanFlashOptions {
  can: string;
  nodes?: string;
  fd?: boolean;
  json?: boolean;
  session?: string;
  timeout?: string;
  retries?: string;
  /** Send even to nodes that already run the image. */
  force?: boolean;
  /** Allow the compressed image / a delta patch (default true each; docs/delta.md). */
  compress?: boolean;
  delta?: boolean;
  /** The content-addressed image store (default defaultCacheDir()). */
  cache?: string;
  /** Images to add to the store by hand (bases nodes may run). */
  bases?: string[];
}

/** What the verdict column says: READY, CURRENT, UPDATED (from → to), or the error code. */
export function verdictText(v: NodeVerdict): string {
  if (v.status === 'UPDATED') return `UPDATED (${v.from ?? '??????'} → ${v.to ?? '??????'})`;
  return v.status;
}

/** The reason column: the master's own reason, else what the node's status and stage mean (flasher.ts). */
export { verdictReason };

export function verdictCounts(verdicts: NodeVerdict[]): { ready: number; updated: number; current: number; failed: number } {
  const n = (st: string): number => verdicts.filter((v) => v.status === st).length;
  const ready = n('READY');
  const updated = n('UPDATED');
  const current = n('CURRENT');
  return { ready, updated, current, failed: verdicts.length - ready - updated - current };
}

export async function runCanFlash(imagePath: string, o: CanFlashOptions): Promise<number> {
  const json = !!o.json;
  const usage = (m: string): number => {
    if (json) stdout(JSON.stringify({ ok: false, error: { code: 'EUSAGE', reason: 'bad_usage', message: `flash: ${m}` } }));
    else stderr(`flash: ${m}`);
    return 2;
  };
  const nodes = parseNodeList(o.nodes ?? '1');
  if (typeof nodes === 'string') return usage(nodes);
  const session = intOption(o.session, '--can-session', 1, 255);
  const timeoutMs = intOption(o.timeout, '--can-timeout', 1, 600_000);
  const retries = intOption(o.retries, '--can-retries', 0, 100);
  for (const v of [session, timeoutMs, retries]) if (typeof v === 'string') return usage(v);
  let image: Uint8Array;
  try {
    image = new Uint8Array(await readFile(imagePath));
  } catch (e) {
    stderr(`flash: cannot read ${imagePath}: ${(e as Error).message}`);
    return 1;
  }
  if (image.length === 0) {
    stderr(`flash: ${imagePath} is empty`);
    return 1;
  }
  // Nothing goes on the bus for an image no device could accept.
  const checked = checkImageToSend(image, imagePath);
  if (!checked.ok) {
    const e = checked.error;
    if (json) stdout(JSON.stringify({ ok: false, type: 'error', error: e }));
    else stderr(`flash: ${e.message}${e.detail.offset !== null ? ` (byte offset ${e.detail.offset})` : ''} [${e.code} ${e.reason}]`);
    return 1;
  }
  // The content-addressed store: the image flashed goes in (the flasher puts it), and so does every --base.
  const images = new ContentStore(o.cache ?? defaultCacheDir());
  for (const file of o.bases ?? []) {
    try {
      await images.put(new Uint8Array(await readFile(file)));
    } catch (e) {
      const message = `cannot read --base ${file} or store it in ${images.dir}: ${(e as Error).message}`;
      if (json) stdout(JSON.stringify({ ok: false, type: 'error', error: { code: 'ENOENT', where: 'image', reason: 'base_unreadable', message } }));
      else stderr(`flash: ${message}`);
      return 1;
    }
  }
  const bus = await openBus(o.can, !!o.fd, json);
  if (typeof bus === 'number') return bus;

  const display = json ? jsonProgress(nodes) : barProgress(nodes, process.stderr.isTTY === true);
  // The bus is ours (opened above, closed below): the flasher only uses it.
  const flasher = new CanFlasher({ name: o.can, bus, images });
  // Ctrl-C: tell the nodes to abort, then report what was reached (exit 1).
  const cancel = new AbortController();
  const interrupt = (): void => cancel.abort('interrupted');
  let result: CanFlashResult;
  try {
    process.once('SIGINT', interrupt);
    process.once('SIGTERM', interrupt);
    try {
      result = await flasher.flash({
        image, targets: nodes.map(String), signal: cancel.signal,
        options: {
          fd: !!o.fd, force: !!o.force, compress: o.compress !== false, delta: o.delta !== false,
          ...(session !== undefined ? { session: session as number } : {}),
          ...(timeoutMs !== undefined ? { timeoutMs: timeoutMs as number } : {}),
          ...(retries !== undefined ? { retries: retries as number } : {}),
        },
        onMasterProgress: display.update,
        // The schedule, before any data moves.
        onPlan: (plan) => {
          if (json) stdout(JSON.stringify({ type: 'plan', image_bytes: plan.imageBytes, current: plan.current, total_bytes: plan.totalBytes,
            ...(plan.compressedToAll ? { compressed_to_all: plan.compressedToAll } : {}),
            broadcasts: plan.broadcasts.map((b) => ({ mode: b.mode.toUpperCase(), nodes: b.nodes, base: b.base, stream_bytes: b.streamBytes })) }));
          else for (const line of describePlan(plan)) stderr(line);
        },
        onStart: (started) => {
          if (json) stdout(JSON.stringify({ type: 'start', session: started.session, nodes, bytes: image.length, fd: !!o.fd, force: !!o.force, bus: o.can }));
        },
      });
    } finally {
      process.off('SIGINT', interrupt);
      process.off('SIGTERM', interrupt);
    }
  } catch (e) {
    display.stop();
    await flasher.close();
    await bus.close();
    return usage((e as Error).message);
  }
  display.stop();
  await flasher.close();
  await bus.close();
  const s = result.stats;
  const frames = s.frameBytes / s.chunkSize;
  const efficiency = s.frameBytes > 0 ? s.payloadBytes / s.frameBytes : 0;
  const verdicts = result.nodeVerdicts;
  const counts = verdictCounts(verdicts);
  // Nodes that never joined: a wrong id, a dead bus or a bit-rate mismatch, never "the image".
  const silent = verdicts.filter((v) => v.reason === 'no_join').map((v) => v.node);
  const silentHint = silent.length ? `node${silent.length > 1 ? 's' : ''} ${silent.join(', ')} never answered on ${o.can}: ${NO_JOIN_HINT}` : null;
  // Two devices on one node id: what to change, not only what happened.
  const shared = verdicts.filter((v) => v.reason === 'node_id_collision').map((v) => v.node);
  const sharedHint = shared.length ? `node${shared.length > 1 ? 's' : ''} ${shared.join(', ')}: two devices answered as one node id; give each device on the bus its own node id` : null;
  if (json) {
    for (const v of verdicts) {
      const reason = verdictReason(v);
      const t = result.transfers[String(v.node)];
      stdout(JSON.stringify({ type: 'verdict', ...v, ...(reason ? { reason } : {}),
        ...(t ? { mode: t.mode.toUpperCase(), bytes_on_wire: t.bytes_on_wire, ratio: t.ratio, stream_bytes: t.stream_bytes, image_bytes: t.image_bytes, base: t.base, ...(t.fallback ? { fallback: t.fallback } : {}) } : {}) }));
    }
    stdout(JSON.stringify({ type: 'summary', ok: result.ok, nodes: verdicts.length, ...counts, ...s, frames, efficiency, ...(silentHint ? { never_joined: silent } : {}), ...(shared.length ? { node_id_collisions: shared } : {}),
      ...(silentHint || sharedHint ? { hint: [silentHint, sharedHint].filter(Boolean).join('; ') } : {}) }));
  } else {
    stdout(`\n node  verdict                     where      transfer                               reason`);
    for (const v of verdicts) {
      const t = result.transfers[String(v.node)];
      stdout(` ${String(v.node).padStart(4)}  ${verdictText(v).padEnd(26)}  ${v.where.padEnd(9)}  ${(t ? transferText(t) : '').padEnd(37)}  ${verdictReason(v)}`);
    }
    stdout(
      `\n${verdicts.length} nodes: ${counts.ready} READY · ${counts.updated} UPDATED · ${counts.current} CURRENT · ${counts.failed} failed · ` +
        `session ${s.session} · ${image.length} bytes in ${(s.ms / 1000).toFixed(2)} s · ` +
        `${frames} frames (${s.sent.data} data, ${s.rounds} report rounds, ${s.repairedChunks} chunks repaired) · payload efficiency ${(efficiency * 100).toFixed(1)}%`,
    );
    if (silentHint) stdout(silentHint);
    if (sharedHint) stdout(sharedHint);
  }
  // 3: no device answered (every target stayed silent)
  return result.ok ? 0 : verdicts.length > 0 && silent.length === verdicts.length ? 3 : 1;
}

/** `DELTA from 1a2b3c4d5e6f 1234 B (0.060)`, `COMPRESSED 13000 B (0.650)`, `CURRENT 0 B`. */
export function transferText(t: TransferReport): string {
  if (t.mode === 'current') return 'CURRENT 0 B';
  const how = t.mode === 'delta' ? `DELTA from ${t.base!.slice(0, 12)}` : t.mode.toUpperCase();
  return `${how} ${t.bytes_on_wire} B (${t.ratio.toFixed(3)})${t.fallback ? ' after base mismatch' : ''}`;
}

interface ProgressDisplay {
  update: (p: MasterProgress) => void;
  stop: () => void;
}

function jsonProgress(nodes: number[]): ProgressDisplay {
  let lastPhase = '';
  let lastSent = -1;
  const reported = new Set<number>();
  return {
    update: (p) => {
      // One line per phase change, per 10% of the data pass and per new verdict: enough to follow.
      const step = Math.floor((p.sent * 10) / Math.max(1, p.total));
      if (p.phase !== lastPhase || step !== lastSent) {
        lastPhase = p.phase;
        lastSent = step;
        stdout(JSON.stringify({ type: 'progress', phase: p.phase, sent: p.sent, total: p.total, joined: p.joined.length, of: nodes.length, round: p.round }));
      }
      for (const v of p.verdicts) if (!reported.has(v.node)) {
        reported.add(v.node);
        stdout(JSON.stringify({ type: 'node', ...v }));
      }
    },
    stop: () => {},
  };
}

function barProgress(nodes: number[], tty: boolean): ProgressDisplay {
  if (!tty) return { update: () => {}, stop: () => {} };
  const multi = new cliProgress.MultiBar(
    { format: ' node {node} [{bar}] {percentage}% {status}', hideCursor: true, clearOnComplete: false, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map(nodes.map((n) => [n, multi.create(1, 0, { node: String(n).padStart(2), status: 'announcing' })]));
  return {
    update: (p) => {
      const joined = new Set(p.joined);
      const verdicts = new Map(p.verdicts.map((v) => [v.node, v]));
      for (const [n, bar] of bars) {
        const v = verdicts.get(n);
        bar.setTotal(p.total);
        if (v) bar.update(p.total, { status: OK_STATUSES.has(v.status) ? verdictText(v) : `${v.status} (${v.where}${v.reason ? ', ' + v.reason : ''})` });
        else bar.update(p.sent, { status: !joined.has(n) ? 'waiting to join' : p.phase === 'repair' ? `repair round ${p.round}` : p.phase });
      }
    },
    stop: () => multi.stop(),
  };
}

// ---------------------------------------------------------------------------------------------

export interface CanDeviceOptions {
  can: string;
  node?: string;
  state?: string;
  json?: boolean;
  /** How long an update must stay up before it is confirmed (default 10 000 ms). */
  confirmWindowMs?: string;
}

/** Runs until SIGINT/SIGTERM; the returned promise resolves with the exit code. */
export async function runCanDevice(o: CanDeviceOptions, signal?: AbortSignal): Promise<number> {
  const json = !!o.json;
  const node = Number(o.node);
  const bad = o.node === undefined ? '--node is required with --can' : nodeProblem(node);
  if (bad) {
    stderr(`device: ${bad}`);
    return 2;
  }
  const confirmWindowMs = intOption(o.confirmWindowMs, '--confirm-window-ms', 0, 86_400_000);
  if (typeof confirmWindowMs === 'string') {
    stderr(`device: ${confirmWindowMs}`);
    return 2;
  }
  const print = (obj: Record<string, unknown>, human: string): void => (json ? stdout(JSON.stringify(obj)) : stdout(human));
  // The node says on the bus when a SET changes one of its values (a PUB frame), as an HSX node does. Not the values
  // a load registers: every node of a broadcast would PUB all of them at once, in the middle of the transfer's end.
  // (A master that wants them asks with GET.)
  let pubBus: CanBus | null = null;
  const events: EventSink = {
    emit: (e: EngineEvent) => {
      if (json && e.type !== 'provisioning.progress') stdout(JSON.stringify({ type: 'event', event: e.type, pid: e.pid, phase: e.phase, data: e.data }));
      if (e.type === 'value.changed' && e.data['cause'] === 'set' && pubBus) pubBus.post(pubFrame(node, e.data['oid'] as number, e.data['raw'] as number));
    },
  };
  // With a state directory the device keeps its image and values in flash and FRAM files.
  let device: SimulatedDevice | null = null;
  if (o.state) {
    try {
      device = await openSimulatedDevice({ name: `node${node}`, stateDir: o.state, events, confirmWindowMs: confirmWindowMs ?? 10_000 });
    } catch (e) {
      const message = `cannot open the state directory ${o.state}: ${(e as Error).message}`;
      print({ ok: false, type: 'error', error: { code: (e as { code?: string }).code ?? 'EIO', reason: (e as { reason?: string }).reason ?? 'open_failed', message } }, `device: ${message}`);
      return 1;
    }
  }
  const bus = await openBus(o.can, true, json);
  if (typeof bus === 'number') {
    await device?.close();
    return bus;
  }
  pubBus = bus;
  const engine = device?.engine ?? new ProvisioningEngine({ clock: systemClock, events });
  // Every image goes through the device's intake (CURRENT, staging, commit, switch, confirm window).
  const intake = device?.intake ?? new DeviceIntake({ engine, clock: systemClock, events, confirmWindowMs: confirmWindowMs ?? 10_000 });
  if (device) {
    // Boot: the image the device holds runs again (every check repeated), with its persisted values.
    for (const l of restoreAtBoot(engine, device.storage.alerts)) {
      if (l.kind === 'alert') print({ type: 'boot_alert', ...l.alert }, l.text);
      else if (l.kind === 'restored') print({ type: 'restore', ok: true, pid: l.pid, appName: l.appName, version: l.version, sha256: l.sha256 }, l.text);
      else print({ type: 'restore', ok: false, error: l.error }, l.text);
    }
  }
  const options: ListenerOptions = {
    bus, node, intake, source: `can:${o.can.split('?')[0]}`,
    onEvent: (e) => {
      switch (e.type) {
        case 'joined':
          return print({ ...e }, `session ${e.session}: receiving ${e.totalBytes} bytes (${e.fd ? 'CAN FD' : 'classic'}, ${e.chunkSize}-byte chunks)`);
        case 'verdict':
          return print({ ...e }, `session ${e.session}: ${deviceVerdictText(e)}`);
        case 'conflict':
          return print({ ...e }, `session ${e.session}: ignored ${e.what}`);
        case 'value':
          return print({ ...e }, `value ${e.op} ${e.oid >> 8}:${e.oid & 0xff} raw 0x${e.raw.toString(16)} ${e.status}`);
        case 'progress':
          return;
      }
    },
  };
  const listener = new CanListener(options);
  listener.start();
  print({ type: 'ready', node, bus: bus.name, fd: bus.fd, pid: process.pid, instance: listener.instance }, `device node ${node} listening on ${bus.name} (instance tag ${listener.instance})`);
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    signal?.addEventListener('abort', stop, { once: true });
    bus.on('status', (s: { state: string; detail?: string }) => {
      if (s.state === 'error') print({ type: 'bus', ...s }, `bus: ${s.detail ?? s.state}`);
    });
  });
  listener.stop();
  await bus.close();
  if (device) await device.close();
  else intake.dispose();
  print({ type: 'stopped', node, counters: listener.counters }, `device node ${node} stopped`);
  return 0;
}

function deviceVerdictText(e: Extract<ListenerEvent, { type: 'verdict' }>): string {
  switch (e.status) {
    case 'READY':
      return `READY pid ${e.pid} ${e.appName}`;
    case 'UPDATED':
      return `UPDATED (${e.from ?? '??????'} → ${e.to ?? '??????'}) pid ${e.pid} ${e.appName}`;
    case 'CURRENT':
      return `CURRENT (${e.to ?? '??????'}) pid ${e.pid} ${e.appName}`;
    default:
      return `${e.status} at ${e.where}: ${e.reason}`;
  }
}

// ---------------------------------------------------------------------------------------------

export interface CanValueOptions {
  can: string;
  node?: string;
  json?: boolean;
  timeout?: string;
}

export async function runCanValue(op: 'get' | 'set', target: string, valueText: string | undefined, o: CanValueOptions): Promise<number> {
  const json = !!o.json;
  const node = Number(o.node);
  const usage = (m: string): number => {
    if (json) stdout(JSON.stringify({ ok: false, error: { code: 'EUSAGE', reason: 'bad_usage', message: `can ${op}: ${m}` } }));
    else stderr(`can ${op}: ${m}`);
    return 2;
  };
  const bad = o.node === undefined ? '--node is required' : nodeProblem(node);
  if (bad) return usage(bad);
  const oid = parseOid(target);
  if (typeof oid === 'string') return usage(oid);
  let raw: number | undefined;
  if (op === 'set') {
    if (valueText === undefined) return usage('a VALUE is required');
    const m = /^raw:(0x[0-9a-f]{1,4}|\d+)$/i.exec(valueText);
    const n = Number(m ? m[1] : valueText);
    if (!Number.isFinite(n) || (m && (n < 0 || n > 0xffff))) return usage(`VALUE must be a number (or raw:0xBITS), got "${valueText}"`);
    raw = m ? n : encodeF16(n);
  }
  const timeoutMs = intOption(o.timeout, '--can-timeout', 1, 60_000);
  if (typeof timeoutMs === 'string') return usage(timeoutMs);
  const bus = await openBus(o.can, false, json);
  if (typeof bus === 'number') return bus;
  const reply = await requestValue({ bus, node, oid, ...(raw !== undefined ? { raw } : {}), ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
  await bus.close();
  const where = { node, group: oid >> 8, id: oid & 0xff, oid };
  if (reply.ok) {
    if (json) stdout(JSON.stringify({ type: 'value', op, ok: true, ...where, raw: reply.raw, value: reply.value }));
    else stdout(`${oid >> 8}:${oid & 0xff} = ${reply.value} (raw 0x${reply.raw.toString(16).padStart(4, '0')}) on node ${node}`);
    return 0;
  }
  if (json) stdout(JSON.stringify({ type: 'value', op, ok: false, ...where, status: reply.status, error: { code: reply.status, reason: `${op}_refused`, message: `can ${op} ${target} on node ${node}: ${reply.status}` } }));
  else stderr(`can ${op} ${target} on node ${node}: ${reply.status}`);
  return reply.status === 'ETIMEDOUT' ? 3 : 1; // 3: no device answered
}
