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
import { LinkLock, type Flasher, type FlashProgress, type FlashRequest, type FlashResult, type InventoryEntry, type ScanOptions, type TargetProgress, type TargetVerdict } from '../flasher.js';
import { scanCan } from './scan.js';
import { openCanBus, type CanBusOptions } from './address.js';
import type { CanBus } from './bus.js';
import { nodeProblem } from './ids.js';
import { CanMaster, OK_STATUSES, type MasterOptions, type MasterProgress, type MasterResult, type MasterStats, type NodeVerdict } from './master.js';

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
}

/** What the CAN flasher takes beyond `FlashRequest` (the CLI's display uses the master's own view). */
export interface CanFlashRequest extends FlashRequest {
  /** Called once the master is made, before anything goes on the bus, with its session id. */
  onStart?: (info: { session: number; nodes: number[] }) => void;
  /** The broadcast master's own progress (chunk counts, report round, node verdicts). */
  onMasterProgress?: (p: MasterProgress) => void;
}

export interface CanFlashResult extends FlashResult {
  /** Every target has an ok verdict. */
  ok: boolean;
  /** The node verdicts as the CAN link reports them (status, where, CRC-32, short SHA-256s), in node order. */
  nodeVerdicts: NodeVerdict[];
  stats: MasterStats & Record<string, unknown>;
}

export class CanFlasher implements Flasher {
  readonly kind = 'can' as const;
  readonly link: string;
  readonly bus: CanBus;
  private readonly ownsBus: boolean;
  private closed = false;
  private readonly lock = new LinkLock();

  constructor(options: CanFlasherOptions, internal: { ownsBus?: boolean } = {}) {
    this.link = options.name;
    this.bus = options.bus;
    this.ownsBus = internal.ownsBus === true;
  }

  /** Opens the bus `address` names (see address.ts) and owns it: `close()` closes it. */
  static async open(name: string, address: string, options: CanBusOptions = {}): Promise<CanFlasher> {
    const bus = await openCanBus(address, options);
    return new CanFlasher({ name, bus }, { ownsBus: true });
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
    const started = performance.now();
    const arrived: TargetVerdict[] = [];
    const seen = new Set<number>();
    let chunkSize = o.fd ? 64 : 8;
    const onProgress = (p: MasterProgress): void => {
      req.onMasterProgress?.(p);
      if (!req.onProgress) return;
      for (const v of p.verdicts) {
        if (seen.has(v.node)) continue;
        seen.add(v.node);
        arrived.push(targetVerdict(v));
      }
      req.onProgress(flashProgress(p, nodes, image.length, chunkSize, arrived));
    };
    const options: MasterOptions = { bus: this.bus, image, nodes, fd: o.fd === true, force: o.force === true, onProgress };
    if (o.window !== undefined) options.window = o.window;
    if (o.timeoutMs !== undefined) options.timeoutMs = o.timeoutMs;
    if (o.retries !== undefined) options.retries = o.retries;
    if (o.session !== undefined) options.session = o.session;
    let master: CanMaster;
    try {
      master = new CanMaster(options);
    } catch (e) {
      throw e instanceof RangeError ? e : new RangeError((e as Error).message);
    }
    chunkSize = master.stats.chunkSize;
    req.onStart?.({ session: master.session, nodes });
    const signal = req.signal;
    const onAbort = (): void => master.abort(typeof signal?.reason === 'string' && signal.reason !== '' ? signal.reason : 'canceled');
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    let result: MasterResult;
    try {
      result = await master.run();
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    const byNode = new Map(result.verdicts.map((v) => [v.node, v]));
    return {
      ok: result.ok,
      // One per requested target, in the order requested.
      verdicts: req.targets.map((t) => ({ ...targetVerdict(byNode.get(parseTarget(t) as number)!), target: t })),
      nodeVerdicts: result.verdicts,
      stats: { ...result.stats },
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

function flashProgress(p: MasterProgress, nodes: number[], totalBytes: number, chunkSize: number, verdicts: TargetVerdict[]): FlashProgress {
  const sentBytes = Math.min(totalBytes, p.sent * chunkSize);
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
