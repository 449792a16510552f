/**
 * Discovery and inventory on a CAN bus (docs/can_protocol.md, "Scan"): the master sends one
 * INFO_REQ (to every node, or addressed when it asks one node), each node answers after its turn
 * ((node − 1) × spacing ms) with a segmented INFO answer — what it runs (app, version, SHA-256),
 * what its flash slots hold and how large a slot is — closed by a CRC-32. A node whose answer is
 * garbage (bad CRC, impossible fields, a conflicting or missing part) is reported as a problem
 * naming the node and the body offset; it never ends the scan, and the others are still listed.
 */
import { nodeProblem, BROADCAST, classifyId, DEFAULT_ID_PLAN, MAX_NODE, ProvOp, provId, ValueOp, type CanIdPlan } from './ids.js';
import type { CanBus } from './bus.js';
import { encodeInfoRequest, InfoAssembler, INFO_DEFAULT_SPACING_MS, type InfoBody } from './messages.js';
import type { InventoryEntry } from '../flasher.js';

export interface CanScanOptions {
  /** How long to wait for answers after the request (default 1000 ms; with `nodes`, the scan ends as soon as every one of them answered). */
  timeoutMs?: number;
  /** Only these node ids (1..63); default every node. One node is asked by an addressed request. */
  nodes?: number[];
  signal?: AbortSignal;
  plan?: CanIdPlan;
  /** Node N answers (N − 1) × spacing ms after the request (default 2; 0..255). */
  spacingMs?: number;
  /** Request id 1..255 (random when absent). */
  req?: number;
}

/** A node that answered, but not with a valid INFO: a value, never thrown. */
export interface CanScanProblem {
  /** The node id in decimal, as in `InventoryEntry.target`. */
  target: string;
  node: number;
  /** EBADMSG: a malformed answer; ETIMEDOUT: the answer stopped before its last part. */
  code: 'EBADMSG' | 'ETIMEDOUT';
  /** `crc_mismatch`, `bad_version`, `bad_length`, `bad_flags`, `bad_slot_state`, `bad_field`, `field_overrun`, `trailing_bytes`, `short_frame`, `part_out_of_range`, `part_conflict`, `incomplete`. */
  reason: string;
  /** Byte offset in the node's INFO body where the problem was found. */
  offset: number;
  message: string;
}

export interface CanScanReport {
  /** One per node that answered with a valid INFO, sorted by node id. */
  entries: InventoryEntry[];
  /** One per node whose answer was refused, sorted by node id. */
  problems: CanScanProblem[];
  /** The scan was cut short by its signal (what had answered is still listed). */
  cancelled: boolean;
  req: number;
  /** INFO frames heard (of this request), frames of other requests or from node 0 ignored. */
  frames: number;
  ignored: number;
  elapsedMs: number;
}

export const DEFAULT_SCAN_TIMEOUT_MS = 1000;

/** The entry a node's INFO body makes. */
export function inventoryEntry(target: string, info: InfoBody): InventoryEntry {
  return {
    target, app_name: info.app_name, version: info.version, sha256: info.sha256,
    slots: info.slots.map((s) => ({ ...s })), slot_bytes: info.slot_bytes,
  };
}

/** Which nodes answer on the bus and what each runs, sorted by node id. Problems: `scanCanReport`. */
export async function scanCan(bus: CanBus, opts: CanScanOptions = {}): Promise<InventoryEntry[]> {
  return (await scanCanReport(bus, opts)).entries;
}

/**
 * `scanCan` with the nodes whose answers were refused and the counters. Rejects only for bad options
 * (a RangeError naming the field) or a bus that refuses to send the request.
 */
export function scanCanReport(bus: CanBus, opts: CanScanOptions = {}): Promise<CanScanReport> {
  const plan = opts.plan ?? DEFAULT_ID_PLAN;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_SCAN_TIMEOUT_MS;
  const spacingMs = opts.spacingMs ?? INFO_DEFAULT_SPACING_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) return Promise.reject(new RangeError(`timeoutMs must be a number ≥ 0, got ${timeoutMs}`));
  if (!Number.isInteger(spacingMs) || spacingMs < 0 || spacingMs > 255) return Promise.reject(new RangeError(`spacingMs must be an integer 0..255, got ${spacingMs}`));
  const req = opts.req ?? 1 + Math.floor(Math.random() * 255);
  if (!Number.isInteger(req) || req < 1 || req > 255) return Promise.reject(new RangeError(`req must be an integer 1..255, got ${req}`));
  const wanted = opts.nodes ? [...new Set(opts.nodes)].sort((a, b) => a - b) : null;
  for (const n of wanted ?? []) {
    const bad = nodeProblem(n);
    if (bad) return Promise.reject(new RangeError(`nodes: ${bad}`));
  }
  if (wanted && wanted.length === 0) return Promise.reject(new RangeError('nodes: empty list'));

  const started = Date.now();
  const assemblers = new Map<number, InfoAssembler>();
  const entries = new Map<number, InventoryEntry>();
  const problems = new Map<number, CanScanProblem>();
  let frames = 0;
  let ignored = 0;

  return new Promise<CanScanReport>((resolve, reject) => {
    let timer: NodeJS.Timeout | null = null;
    let done = false;
    const finish = (cancelled: boolean): void => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      unsubscribe();
      opts.signal?.removeEventListener('abort', onAbort);
      // An answer that stopped before its last part (lost frames, a node reset mid-answer).
      for (const [node, a] of assemblers) {
        if (entries.has(node) || problems.has(node) || !a.incomplete) continue;
        const offset = a.firstMissing();
        problems.set(node, {
          target: String(node), node, code: 'ETIMEDOUT', reason: 'incomplete', offset,
          message: `node ${node}: INFO answer incomplete, body offset ${offset} onward missing${a.partsNeeded !== null ? ` (of ${a.partsNeeded * 6} bytes)` : ''}`,
        });
      }
      const byNode = <T>(m: Map<number, T>): T[] => [...m.entries()].sort((a, b) => a[0] - b[0]).map(([, v]) => v);
      resolve({ entries: byNode(entries), problems: byNode(problems), cancelled, req, frames, ignored, elapsedMs: Date.now() - started });
    };
    const settledAll = (): boolean => wanted !== null && wanted.every((n) => entries.has(n) || problems.has(n));
    const unsubscribe = bus.receive((f) => {
      if (f.ext) return;
      const c = classifyId(plan, f.id);
      if (c.kind !== 'value' || c.op !== ValueOp.INFO) return;
      if (c.node < 1 || c.node > MAX_NODE || f.data[0] !== req || (wanted && !wanted.includes(c.node))) {
        ignored++;
        return;
      }
      frames++;
      if (entries.has(c.node) || problems.has(c.node)) return;
      let a = assemblers.get(c.node);
      if (!a) assemblers.set(c.node, (a = new InfoAssembler()));
      const r = a.push(f.data);
      if (r.kind === 'done') entries.set(c.node, inventoryEntry(String(c.node), r.info));
      else if (r.kind === 'problem') {
        problems.set(c.node, {
          target: String(c.node), node: c.node, code: 'EBADMSG', reason: r.problem.reason, offset: r.problem.offset,
          message: `node ${c.node}: ${r.problem.message} (body offset ${r.problem.offset})`,
        });
      }
      if (r.kind !== 'pending' && settledAll()) finish(false);
    });
    const onAbort = (): void => finish(true);
    if (opts.signal?.aborted) return finish(true);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const target = wanted?.length === 1 ? wanted[0]! : BROADCAST;
    if (!bus.post({ id: provId(plan, target, ProvOp.INFO_REQ), data: encodeInfoRequest({ req, spacingMs }) })) {
      done = true;
      unsubscribe();
      opts.signal?.removeEventListener('abort', onAbort);
      return reject(new Error(`scan: the bus refused the INFO request (${bus.status().state})`));
    }
    timer = setTimeout(() => finish(false), timeoutMs);
  });
}
