/**
 * Value access from the bus side (`can get|set`): a GET or SET to one node's value binding,
 * answered by its RET frame, retried with back-off while no answer comes.
 */
import { decodeF16 } from '../../hxe/f16.js';
import type { CanBus } from './bus.js';
import { classifyId, DEFAULT_ID_PLAN, ValueOp, valueId, type CanIdPlan } from './ids.js';
import { decodeValue, encodeGet, encodeSet, statusName } from './messages.js';

export interface ValueRequest {
  bus: CanBus;
  node: number;
  oid: number;
  /** f16 raw bits for a SET; absent for a GET. */
  raw?: number;
  plan?: CanIdPlan;
  timeoutMs?: number;
  retries?: number;
}

export type ValueReply =
  | { ok: true; oid: number; raw: number; value: number; attempts: number }
  | { ok: false; oid: number; status: string; attempts: number };

export function requestValue(req: ValueRequest): Promise<ValueReply> {
  const plan = req.plan ?? DEFAULT_ID_PLAN;
  const timeoutMs = req.timeoutMs ?? 200;
  const retries = req.retries ?? 3;
  const isSet = req.raw !== undefined;
  const frame = {
    id: valueId(plan, req.node, isSet ? ValueOp.SET : ValueOp.GET),
    data: isSet ? encodeSet(req.oid, req.raw!) : encodeGet(req.oid),
  };
  return new Promise((resolve) => {
    let attempts = 0;
    let timer: NodeJS.Timeout | null = null;
    const finish = (r: ValueReply): void => {
      if (timer) clearTimeout(timer);
      unsubscribe();
      resolve(r);
    };
    const unsubscribe = req.bus.receive((f) => {
      const c = classifyId(plan, f.id);
      if (c.kind !== 'value' || c.node !== req.node || c.op !== ValueOp.RET) return;
      const ret = decodeValue(f.data, 'ret');
      if (!ret || ret.oid !== req.oid) return;
      if (ret.status !== 0) return finish({ ok: false, oid: req.oid, status: statusName(ret.status), attempts });
      finish({ ok: true, oid: req.oid, raw: ret.raw, value: decodeF16(ret.raw), attempts });
    });
    const attempt = (): void => {
      if (attempts > retries) return finish({ ok: false, oid: req.oid, status: 'ETIMEDOUT', attempts });
      req.bus.post(frame);
      timer = setTimeout(attempt, timeoutMs * 2 ** attempts++);
    };
    attempt();
  });
}

/** `GROUP:ID` → oid (group<<8 | id), or a message naming what is wrong. */
export function parseOid(spec: string): number | string {
  const m = /^(\d+|0x[0-9a-f]+):(\d+|0x[0-9a-f]+)$/i.exec(spec.trim());
  if (!m) return `expected GROUP:ID (e.g. 1:2), got "${spec}"`;
  const group = Number(m[1]);
  const id = Number(m[2]);
  if (group > 255 || id > 255) return `GROUP and ID must be 0..255, got ${spec}`;
  return (group << 8) | id;
}
