/**
 * The 11-bit identifier plan. Three ranges share one bus:
 *
 *   valueBase | node<<3 | op   HSX value/command binding (GET 0, SET 1, PUB 2, CALL 3, RET 4),
 *                              and a node's INFO answer to a scan (5)
 *   provBase  | node<<3 | op   provisioning control (master ops 0..3 — INFO_REQ is 3 —, listener ops 4..7)
 *   dataBase  | seq & 0x3FF    image data: the chunk sequence rides in the identifier, so every
 *                              data byte is payload (8 of 8 classic, 64 of 64 FD)
 *
 * Lower identifiers win arbitration, so value traffic and control frames always overtake a running
 * transfer. Node 0 is the master / "all nodes"; devices are 1..63. See docs/can_protocol.md.
 */

export interface CanIdPlan {
  valueBase: number;
  provBase: number;
  dataBase: number;
}

export const DEFAULT_ID_PLAN: Readonly<CanIdPlan> = { valueBase: 0x000, provBase: 0x200, dataBase: 0x400 };

export const MAX_NODE = 63;
export const BROADCAST = 0;
export const SEQ_BITS = 10;
export const SEQ_MASK = (1 << SEQ_BITS) - 1;

/** INFO (5): a node's segmented answer to INFO_REQ (node = the sender), docs/can_protocol.md "Scan". */
export const ValueOp = { GET: 0, SET: 1, PUB: 2, CALL: 3, RET: 4, INFO: 5 } as const;
/** INFO_REQ (3): the master asks every node (node 0) or one node what it runs (answered by value op INFO). */
export const ProvOp = { ANNOUNCE: 0, SYNC: 1, CTRL: 2, INFO_REQ: 3, JOIN: 4, ACK: 5, MISSING: 6, VERDICT: 7 } as const;
export type ProvOpCode = (typeof ProvOp)[keyof typeof ProvOp];

/** Returns the problem with a plan, or null: the three ranges must be aligned and disjoint. */
export function idPlanProblem(plan: CanIdPlan): string | null {
  for (const key of ['valueBase', 'provBase'] as const) {
    const v = plan[key];
    if (!Number.isInteger(v) || v < 0 || v > 0x600 || (v & 0x1ff) !== 0) return `${key} must be a multiple of 0x200 below 0x800`;
  }
  if (plan.dataBase !== 0x400) return 'dataBase must be 0x400 (10 sequence bits in an 11-bit identifier)';
  if (plan.valueBase === plan.provBase) return 'valueBase and provBase must differ';
  if (plan.valueBase >= 0x400 || plan.provBase >= 0x400) return 'valueBase and provBase must lie below the data range 0x400..0x7FF';
  return null;
}

export function nodeProblem(node: number): string | null {
  return Number.isInteger(node) && node >= 1 && node <= MAX_NODE ? null : `node id must be 1..${MAX_NODE}, got ${node}`;
}

export const valueId = (plan: CanIdPlan, node: number, op: number): number => plan.valueBase | (node << 3) | op;
export const provId = (plan: CanIdPlan, node: number, op: number): number => plan.provBase | (node << 3) | op;
export const dataId = (plan: CanIdPlan, seq: number): number => plan.dataBase | (seq & SEQ_MASK);

export type IdClass =
  | { kind: 'value'; node: number; op: number }
  | { kind: 'prov'; node: number; op: number }
  | { kind: 'data'; low: number }
  | { kind: 'other' };

export function classifyId(plan: CanIdPlan, id: number): IdClass {
  if (id > 0x7ff) return { kind: 'other' };
  if ((id & 0x400) === plan.dataBase) return { kind: 'data', low: id & SEQ_MASK };
  const base = id & 0x600;
  if (base === plan.provBase) return { kind: 'prov', node: (id >> 3) & 0x3f, op: id & 7 };
  if (base === plan.valueBase) return { kind: 'value', node: (id >> 3) & 0x3f, op: id & 7 };
  return { kind: 'other' };
}

/**
 * Rebuilds a full chunk sequence from its low 10 bits: the candidate nearest to `ref` (the
 * receiver's idea of where the master is). Unambiguous while the master stays within ±512 chunks
 * of `ref`, which SYNC frames (one per 256-chunk block) and the window keep true.
 */
export function expandSeq(low: number, ref: number): number {
  const base = ref - (ref & SEQ_MASK);
  let seq = base + low;
  if (seq - ref > 512) seq -= 1 << SEQ_BITS;
  else if (ref - seq > 512) seq += 1 << SEQ_BITS;
  return seq;
}
