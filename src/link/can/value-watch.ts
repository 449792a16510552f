/**
 * PUB frames (value op 2, docs/can_protocol.md "Value binding"): a node announces a value that
 * changed, `[oid u16, f16 u16]` on `valueBase | node<<3 | 2` (node = the sender). Any process on the
 * bus sees them; the gateway watches its CAN links with this and republishes each one (MQTT's
 * retained `values/<group>:<id>`). A malformed PUB (shorter than 4 bytes) or one from node 0 (the
 * master's id, never a sender of values) is counted and ignored.
 */
import type { CanBus } from './bus.js';
import type { CanFrame } from './frame.js';
import { classifyId, DEFAULT_ID_PLAN, ValueOp, valueId, type CanIdPlan } from './ids.js';
import { decodeValue, encodePub } from './messages.js';

export interface ValuePub {
  /** The sender's node id (1..63). */
  node: number;
  oid: number;
  group: number;
  id: number;
  /** f16 bits. */
  raw: number;
}

export interface PubWatch {
  /** Stops watching (the bus stays open). */
  stop(): void;
  readonly counters: { pubs: number; malformed: number };
}

/** The PUB frame node `node` sends when its value `oid` now holds `raw` (f16 bits). */
export const pubFrame = (node: number, oid: number, raw: number, plan: CanIdPlan = DEFAULT_ID_PLAN): CanFrame =>
  ({ id: valueId(plan, node, ValueOp.PUB), data: encodePub(oid, raw) });

export function watchValuePubs(bus: CanBus, onPub: (p: ValuePub) => void, plan: CanIdPlan = DEFAULT_ID_PLAN): PubWatch {
  const counters = { pubs: 0, malformed: 0 };
  const stop = bus.receive((f) => {
    const c = classifyId(plan, f.id);
    if (c.kind !== 'value' || c.op !== ValueOp.PUB) return;
    const v = decodeValue(f.data, 'pub');
    if (!v || c.node === 0) return void counters.malformed++;
    counters.pubs++;
    onPub({ node: c.node, oid: v.oid, group: v.oid >> 8, id: v.oid & 0xff, raw: v.raw });
  });
  return { stop, counters };
}
