/**
 * The CAN link's `Flasher`: one `CanMaster` broadcast per `flash()`, to every requested node at once.
 *
 * Targets are node ids in decimal ("1".."63"). The bus is the caller's: `new CanFlasher({ name, bus })`
 * uses a bus that is already open and `close()` leaves it open (whoever opened it closes it);
 * `CanFlasher.open(name, address)` opens the bus an address names (`can0`, `virtual:NAME`,
 * `virtual:HOST:PORT`, see address.ts) and closes it again in `close()`.
 *
 * Verdicts: READY → installed, UPDATED → updated, CURRENT → current (from/to are the 6-hex-digit
 * SHA-256 prefixes the CAN protocol carries; CAN carries no confirm window: confirmPending false);
 * every other status is a failure with code = the status (ETIMEDOUT, EBADMSG, ECANCELED, ...).
 * Cancelling (the request's AbortSignal) aborts the broadcast: the nodes are told ABORT and keep the
 * image they ran, and every node that had no verdict yet gets ECANCELED (a node that had already
 * failed keeps its own failure).
 */
import { LinkLock, type TransferReport, type Flasher, type FlashProgress, type FlashRequest, type FlashResult, type InventoryEntry, type ScanOptions, type TargetProgress, type TargetVerdict } from '../flasher.js';
import { scanCan } from './scan.js';
import { openCanBus, type CanBusOptions } from './address.js';
import type { CanBus } from './bus.js';
import { nodeProblem } from './ids.js';
import { randomInt } from 'node:crypto';
import type { ImageSource } from '../delta/index.js';
import { CanMaster, OK_STATUSES, type MasterOptions, type MasterProgress, type MasterResult, type MasterStats, type NodeVerdict } from './master.js';
import { planCanTransfer, type Broadcast, type CanPlan } from './transfer-plan.js';

/** What a failure status means, for the reason column and the verdict's message. */
export const STATUS_MEANING: Readonly<Record<string, string>> = {
  EBADMSG: 'image rejected', ENOSPC: 'image does not fit', ESRCH: 'unknown session', EBUSY: 'device busy',
  EEXIST: 'conflicts with a running app', EPERM: 'refused by policy', ETIMEDOUT: 'no answer', ECANCELED: 'cancelled',
  EINVAL: 'not supported by the node',
};

/** What to check when a node never joins (printed by the CLI and carried in a job's error message). */
export const NO_JOIN_HINT = 'check that the interface is up, that its bit rate matches the nodes\', and the node id';

/** The reason column: the master's own reason, else what the node's status and stage mean. */
export function verdictReason(v: NodeVerdict): string {
  if (OK_STATUSES.has(v.status)) return v.reason ?? '';
  if (v.reason) return v.reason;
  const meaning = STATUS_MEANING[v.status] ?? 'failed';
  return v.where && v.where !== 'none' ? `${meaning} (at ${v.where})` : meaning;
}

const OUTCOME = { READY: 'installed', UPDATED: 'updated', CURRENT: 'current' } as const;

/** A node's verdict as the link-independent TargetVerdict. */
export function targetVerdict(v: NodeVerdict): TargetVerdict {
  const target = String(v.node);
  if (v.status === 'READY' || v.status === 'UPDATED' || v.status === 'CURRENT') {
    return { target, ok: true, outcome: OUTCOME[v.status], from: v.from ?? null, to: v.to ?? null, confirmPending: false };
  }
  const meaning = STATUS_MEANING[v.status] ?? 'failed';
  const at = v.where && v.where !== 'none' ? ` at ${v.where}` : '';
  return {
    target, ok: false, code: v.status, where: v.where, reason: verdictReason(v),
    message: v.reason === 'no_join'
      ? `node ${v.node} never answered the announce (ETIMEDOUT, no_join): ${NO_JOIN_HINT}`
      : v.reason === 'node_id_collision'
        ? `node ${v.node}: two devices answered as this node id (node_id_collision): give each device on the bus its own node id`
        : `node ${v.node}: ${meaning}${at} (${v.status}${v.reason ? `, ${v.reason}` : ''})`,
  };
}

/** A target name as a node id, or why it is not one. */
function parseTarget(target: string): number | string {
  if (typeof target !== 'string' || !/^(0|[1-9]\d{0,2})$/.test(target)) return `target must be a CAN node id 1..63 in decimal, got ${JSON.stringify(target)}`;
  const node = Number(target);
  const bad = nodeProblem(node);
  return bad === null ? node : `target ${bad}`;
}

export interface CanFlasherOptions {
  /** The link's name (config `name`, else the interface). */
  name: string;
  /** An open bus; `close()` does not close it. */
  bus: CanBus;
  /**
   * The content-addressed image store (src/link/delta/image-store.ts), as on UART: every image flashed
   * goes in, and the base a node runs is looked up there for a delta. Without one: compressed or raw.
   */
  images?: ImageSource;
}

/** What the CAN flasher takes beyond `FlashRequest` (the CLI's display uses the master's own view). */
export interface CanFlashRequest extends FlashRequest {
  /** Called once the master is made, before anything goes on the bus, with its session id. */
  onStart?: (info: { session: number; nodes: number[] }) => void;
  /** The broadcast master's own progress (chunk counts, report round, node verdicts). */
  onMasterProgress?: (p: MasterProgress) => void;
  /** The schedule, once the probe answered and before any data moves (again for a base-mismatch fallback). */
  onPlan?: (plan: CanPlan) => void;
}

export interface CanFlashResult extends FlashResult {
  /** Every target has an ok verdict. */
  ok: boolean;
  /** The node verdicts as the CAN link reports them (status, where, CRC-32, short SHA-256s), in node order. */
  nodeVerdicts: NodeVerdict[];
  /** How the image went to each node that succeeded (mode, bytes on the wire, ratio), by node id. */
  transfers: Record<string, TransferReport>;
  /** The schedule (null when compression and delta were both turned off). */
  plan: CanPlan | null;
  /** Counters summed over the broadcasts (probe included); `sessions` has each one's. */
  stats: MasterStats & { sessions: MasterStats[] } & Record<string, unknown>;
}

export class CanFlasher implements Flasher {
  readonly kind = 'can' as const;
  readonly link: string;
  readonly bus: CanBus;
  private readonly ownsBus: boolean;
  private closed = false;
  private readonly lock = new LinkLock();
  private readonly images: ImageSource | null;

  constructor(options: CanFlasherOptions, internal: { ownsBus?: boolean } = {}) {
    this.link = options.name;
    this.bus = options.bus;
    this.ownsBus = internal.ownsBus === true;
    this.images = options.images ?? null;
  }

  /** Opens the bus `address` names (see address.ts) and owns it: `close()` closes it. */
  static async open(name: string, address: string, options: CanBusOptions = {}, extra: Pick<CanFlasherOptions, 'images'> = {}): Promise<CanFlasher> {
    const bus = await openCanBus(address, options);
    return new CanFlasher({ name, bus, ...extra }, { ownsBus: true });
  }

  checkTarget(target: string): string | null {
    const r = parseTarget(target);
    return typeof r === 'string' ? r : null;
  }

  flash(req: CanFlashRequest): Promise<CanFlashResult> {
    return this.lock.run(() => this.transfer(req));
  }

  /** Which nodes answer and what each runs (src/link/can/scan.ts), between transfers. */
  scan(options: ScanOptions = {}): Promise<InventoryEntry[]> {
    if (this.closed) return Promise.reject(new Error(`${this.link}: the flasher is closed`));
    const { targets, ...rest } = options;
    const nodes: number[] = [];
    for (const t of targets ?? []) {
      const n = parseTarget(t);
      if (typeof n === 'string') return Promise.reject(new RangeError(`targets: ${n}`));
      nodes.push(n);
    }
    return this.lock.run(() => scanCan(this.bus, nodes.length ? { ...rest, nodes } : rest));
  }

  private async transfer(req: CanFlashRequest): Promise<CanFlashResult> {
    if (this.closed) throw new Error(`${this.link}: the flasher is closed`);
    if (!Array.isArray(req.targets) || req.targets.length === 0) throw new RangeError('targets: at least one CAN node id is required');
    const nodes: number[] = [];
    for (const t of req.targets) {
      const r = parseTarget(t);
      if (typeof r === 'string') throw new RangeError(`targets: ${r}`);
      if (!nodes.includes(r)) nodes.push(r);
    }
    const o = req.options ?? {};
    const image = req.image;
    if (image.length === 0) throw new RangeError('image: empty');
    const started = performance.now();
    // Every image flashed goes into the store: the next update of these nodes can be a delta from it.
    if (this.images) await this.images.put(image).catch(() => undefined);
    /** Verdicts published so far (each with its transfer report, so after its broadcast ended). */
    const arrived: TargetVerdict[] = [];
    let lastProgress: { p: MasterProgress; targets: number[]; streamBytes: number; chunkSize: number } | null = null;
    const base: MasterOptions = { bus: this.bus, image, nodes, fd: o.fd === true, force: o.force === true };
    if (o.window !== undefined) base.window = o.window;
    if (o.timeoutMs !== undefined) base.timeoutMs = o.timeoutMs;
    if (o.retries !== undefined) base.retries = o.retries;
    if (o.session !== undefined && (!Number.isInteger(o.session) || o.session < 1 || o.session > 255)) throw new RangeError('session must be 1..255');
    // One session id per broadcast, in turn from the first (a listener remembers its last session's verdict).
    let nextSession = o.session ?? randomInt(1, 256);
    const takeSession = (): number => {
      const id = nextSession;
      nextSession = (nextSession % 255) + 1;
      return id;
    };
    const signal = req.signal;
    const sessions: MasterStats[] = [];
    let startedOnce = false;
    /** One broadcast: a CanMaster to `targets` (progress and verdicts forwarded; cancellation honoured). */
    const run = async (targets: number[], extra: Partial<MasterOptions>, streamBytes: number): Promise<MasterResult> => {
      let chunkSize = o.fd ? 64 : 8;
      const onProgress = (p: MasterProgress): void => {
        req.onMasterProgress?.(p);
        lastProgress = { p, targets, streamBytes, chunkSize };
        req.onProgress?.(flashProgress(p, targets, image.length, streamBytes, chunkSize, arrived));
      };
      let master: CanMaster;
      try {
        master = new CanMaster({ ...base, ...extra, nodes: targets, session: takeSession(), onProgress });
      } catch (e) {
        throw e instanceof RangeError ? e : new RangeError((e as Error).message);
      }
      chunkSize = master.stats.chunkSize;
      if (!startedOnce) {
        startedOnce = true;
        req.onStart?.({ session: master.session, nodes });
      }
      const onAbort = (): void => master.abort(typeof signal?.reason === 'string' && signal.reason !== '' ? signal.reason : 'canceled');
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const r = await master.run();
        sessions.push(r.stats);
        return r;
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    };

    const final = new Map<number, NodeVerdict>();
    const reports = new Map<number, TransferReport>();
    const wire = new Map<number, number>();
    const report = (n: number, mode: TransferReport['mode'], baseSha: string | null, streamBytes: number, fallback?: string): void => {
      const onWire = mode === 'current' ? 0 : wire.get(n) ?? 0;
      const t: TransferReport = {
        mode, base: baseSha, image_bytes: image.length, stream_bytes: mode === 'current' ? 0 : streamBytes, bytes_on_wire: onWire,
        ratio: image.length > 0 ? Math.round((onWire / image.length) * 10000) / 10000 : 0,
      };
      if (fallback) t.fallback = fallback;
      reports.set(n, t);
    };
    const take = (r: MasterResult, b: Broadcast | null, fallback?: string): number[] => {
      const refused: number[] = [];
      for (const v of r.verdicts) {
        if (v.status === 'PROBED') continue;
        if (b) wire.set(v.node, (wire.get(v.node) ?? 0) + (v.status === 'CURRENT' ? 0 : r.stats.payloadBytes));
        // At the announce (the active slot hashes to another base) or at the patch header (the store's
        // base bytes were not what the node runs): never a patch for another base; the full image follows.
        if (b?.mode === 'delta' && (v.reason === 'base_mismatch' || v.reason === 'base_size_mismatch')) {
          refused.push(v.node);
          continue;
        }
        final.set(v.node, v);
        if (v.status === 'CURRENT') report(v.node, 'current', null, 0);
        else if (b) report(v.node, b.mode, b.base, b.streamBytes, fallback);
        arrived.push({ ...verdictOf(v.node), target: String(v.node) });
      }
      // The broadcast's verdicts, with what each cost (known once it ended), go out as progress now.
      if (req.onProgress && lastProgress) {
        const l = lastProgress as { p: MasterProgress; targets: number[]; streamBytes: number; chunkSize: number };
        req.onProgress(flashProgress(l.p, l.targets, image.length, l.streamBytes, l.chunkSize, arrived));
      }
      return refused;
    };
    const verdictOf = (n: number): TargetVerdict => {
      const v = targetVerdict(final.get(n)!);
      const t = reports.get(n);
      return v.ok && t ? { ...v, transfer: t } : v;
    };

    let plan: CanPlan | null = null;
    let probeResult: MasterResult | null = null;
    if (o.compress === false && o.delta === false) {
      // Both turned off: one raw broadcast, as before there were plans.
      const raw: Broadcast = { mode: 'raw', nodes, base: null, streamBytes: image.length };
      take(await run(nodes, {}, image.length), raw);
    } else {
      // Ask first: who runs the image already, and what the others run and decode.
      probeResult = await run(nodes, { probe: true }, image.length);
      take(probeResult, null);
    }
    if (probeResult && !signal?.aborted) {
      const probe = probeResult;
      const current = probe.verdicts.filter((v) => v.status === 'CURRENT').map((v) => v.node);
      plan = await planCanTransfer(image, probe.probes, this.images, { compress: o.compress !== false, delta: o.delta !== false, force: o.force === true }, current);
      req.onPlan?.(plan);
      const refused: Array<{ node: number; base: string }> = [];
      for (const b of plan.broadcasts) {
        if (signal?.aborted) break;
        const r = await run(b.nodes, b.stream ? { stream: b.stream } : {}, b.streamBytes);
        for (const n of take(r, b)) refused.push({ node: n, base: b.base! });
      }
      // Nodes whose active slot does not hash to the base they reported: never a patch for another
      // base; they get the full image (compressed where they decode it).
      const byBase = new Map<string, number[]>();
      for (const x of refused) byBase.set(x.base, [...(byBase.get(x.base) ?? []), x.node]);
      for (const [badBase, group] of byBase) {
        const answers = new Map([...probe.probes].filter(([n]) => group.includes(n)));
        const again = await planCanTransfer(image, answers, this.images, { compress: o.compress !== false, delta: false, force: true, excludeBase: badBase });
        req.onPlan?.(again);
        for (const b of again.broadcasts) {
          if (signal?.aborted) break;
          take(await run(b.nodes, b.stream ? { stream: b.stream } : {}, b.streamBytes), b, 'base_mismatch');
        }
      }
    }
    const canceled = typeof signal?.reason === 'string' && signal.reason !== '' ? signal.reason : 'canceled';
    for (const n of nodes) if (!final.has(n)) final.set(n, { node: n, status: 'ECANCELED', where: 'transfer', reason: canceled });
    const nodeVerdicts = [...nodes].sort((a, b) => a - b).map((n) => final.get(n)!);
    return {
      ok: nodeVerdicts.every((v) => OK_STATUSES.has(v.status)),
      // One per requested target, in the order requested.
      verdicts: req.targets.map((t) => ({ ...verdictOf(parseTarget(t) as number), target: t })),
      nodeVerdicts,
      transfers: Object.fromEntries([...reports].map(([n, t]) => [String(n), t])),
      plan,
      stats: { ...sumStats(sessions), sessions },
      elapsedMs: performance.now() - started,
    };
  }

  /** Closes the bus only when `CanFlasher.open` opened it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsBus) await this.bus.close();
  }
}

/**
 * The Flasher's progress counts image bytes, as every link's does: the share of the broadcast's stream
 * sent so far (`streamBytes`: the patch, compressed or raw image), scaled to the image.
 */
function flashProgress(p: MasterProgress, nodes: number[], totalBytes: number, streamBytes: number, chunkSize: number, verdicts: TargetVerdict[]): FlashProgress {
  const sentStream = Math.min(streamBytes, p.sent * chunkSize);
  const sentBytes = streamBytes > 0 ? Math.min(totalBytes, Math.floor((sentStream * totalBytes) / streamBytes)) : 0;
  const joined = new Set(p.joined);
  const done = new Set(p.verdicts.map((v) => v.node));
  const targets: TargetProgress[] = nodes.map((n) => {
    const target = String(n);
    if (done.has(n)) return { target, phase: 'done', ackedBytes: totalBytes, totalBytes };
    if (joined.has(n)) return { target, phase: p.phase, ackedBytes: sentBytes, totalBytes };
    return { target, phase: 'announce', ackedBytes: 0, totalBytes };
  });
  return { phase: p.phase, sentBytes, totalBytes, targets, verdicts: [...verdicts] };
}

/** The broadcasts' counters added up (session: the first one's; ms: the whole). */
function sumStats(all: MasterStats[]): MasterStats {
  const z: MasterStats = {
    session: all[0]?.session ?? 0, chunks: 0, chunkSize: all[0]?.chunkSize ?? 8,
    sent: { announce: 0, sync: 0, data: 0, repair: 0, ctrl: 0 }, heard: { join: 0, ack: 0, missing: 0, verdict: 0 },
    payloadBytes: 0, frameBytes: 0, rounds: 0, polls: 0, repairedChunks: 0, foreignFrames: 0, joinWaitMs: 0, ms: 0,
  };
  for (const s of all) {
    z.chunks += s.chunks;
    for (const k of Object.keys(z.sent) as Array<keyof MasterStats['sent']>) z.sent[k] += s.sent[k];
    for (const k of Object.keys(z.heard) as Array<keyof MasterStats['heard']>) z.heard[k] += s.heard[k];
    z.payloadBytes += s.payloadBytes;
    z.frameBytes += s.frameBytes;
    z.rounds += s.rounds;
    z.polls += s.polls;
    z.repairedChunks += s.repairedChunks;
    z.foreignFrames += s.foreignFrames;
    z.joinWaitMs += s.joinWaitMs;
    z.ms += s.ms;
  }
  return z;
}
