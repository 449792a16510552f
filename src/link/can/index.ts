/**
 * The CAN link (docs/can_protocol.md): buses (SocketCAN, in-process and loopback virtual buses, with
 * receive-side fault injection), the broadcast provisioning protocol in two roles — master
 * (master.ts) and listener (listener.ts) — and value GET/SET. Importing this module registers the
 * bus as transport kind `can` (options: `address`, the `--can` syntax; `fd`).
 */
import { registerTransport } from '../transport.js';
import { createCanBus, parseCanAddress } from './address.js';

export type { CanFrame } from './frame.js';
export { frameBits, frameMicros, fdPaddedLength, CLASSIC_MAX, FD_MAX } from './frame.js';
export { CanBusBase, type CanBus, type CanFilter, type CanErrorEvent } from './bus.js';
export { VirtualBus, VirtualEndpoint, namedVirtualBus, type VirtualBusOptions, type VirtualBusStats } from './virtual-bus.js';
export { startVirtualHub, NetVirtualBus, type VirtualHub } from './virtual-net.js';
export { SocketCanBus } from './socketcan-bus.js';
export { FaultyBus, seededRandom, type FaultOptions } from './faults.js';
export { parseCanAddress, createCanBus, openCanBus, type CanAddress } from './address.js';
export { DEFAULT_ID_PLAN, idPlanProblem, classifyId, ProvOp, ValueOp, MAX_NODE, type CanIdPlan } from './ids.js';
export { CanMaster, parseNodeList, OK_STATUSES, type MasterOptions, type MasterResult, type MasterProgress, type MasterStats, type NodeVerdict } from './master.js';
export { CanListener, type ListenerOptions, type ListenerEvent, type ListenerIntake, type LocalVerdict } from './listener.js';
export { requestValue, parseOid, type ValueRequest, type ValueReply } from './value-client.js';
export { watchValuePubs, type ValuePub, type PubWatch } from './value-watch.js';
export { runCanFlash, runCanDevice, runCanValue } from './cli.js';

registerTransport('can', (options) => {
  const address = options['address'];
  if (typeof address !== 'string' || address === '') throw new TypeError('can transport: options.address (e.g. vcan0, virtual:NAME) is required');
  const parsed = parseCanAddress(address);
  if (!parsed.ok) throw new TypeError(`can transport: ${parsed.message}`);
  return createCanBus(parsed.address, { fd: options['fd'] !== false }) as never;
});
