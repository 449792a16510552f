/**
 * `--can` addresses: a SocketCAN interface name (`can0`, `vcan0`), an in-process virtual bus
 * (`virtual:NAME`) or a cross-process virtual bus on loopback (`virtual:HOST:PORT`), each optionally
 * followed by `?key=value&…` options: `loss`, `dup`, `reorder`, `seed` (receive-side fault
 * injection, any backend), `bitrate`, `dbitrate` (timing model, virtual buses only) and `remote=1`
 * (let a `virtual:HOST:PORT` hub listen on, or be joined at, a non-loopback HOST: the hub has no
 * authentication, so that is an explicit opt-in).
 */
import type { CanBus } from './bus.js';
import { FaultyBus, hasFaults, type FaultOptions } from './faults.js';
import { SocketCanBus } from './socketcan-bus.js';
import { namedVirtualBus, type VirtualBusOptions } from './virtual-bus.js';
import { isLoopbackHost, NetVirtualBus, type HubLimits } from './virtual-net.js';

export type CanAddress =
  | { kind: 'socketcan'; iface: string; faults: FaultOptions }
  | { kind: 'virtual'; name: string; timing: VirtualBusOptions; faults: FaultOptions }
  | { kind: 'virtual-net'; host: string; port: number; timing: VirtualBusOptions; faults: FaultOptions; remote?: boolean };

export type AddressResult = { ok: true; address: CanAddress } | { ok: false; message: string };

const IFACE = /^[A-Za-z0-9_.-]{1,15}$/;

export function parseCanAddress(spec: string): AddressResult {
  const [base = '', query = ''] = spec.split('?', 2);
  const faults: FaultOptions = {};
  const timing: VirtualBusOptions = {};
  let remote = false;
  for (const pair of query ? query.split('&') : []) {
    const [key = '', raw = ''] = pair.split('=', 2);
    const value = Number(raw);
    if (raw === '' || !Number.isFinite(value) || value < 0) return { ok: false, message: `--can ${spec}: option ${key} needs a number ≥ 0` };
    switch (key) {
      case 'loss':
      case 'dup':
      case 'reorder':
        if (value > 1) return { ok: false, message: `--can ${spec}: ${key} is a probability (0..1)` };
        faults[key] = value;
        break;
      case 'seed':
        faults.seed = value;
        break;
      case 'bitrate':
        timing.bitrate = value;
        break;
      case 'dbitrate':
        timing.dataBitrate = value;
        break;
      case 'remote':
        if (value !== 0 && value !== 1) return { ok: false, message: `--can ${spec}: remote is 0 or 1` };
        remote = value === 1;
        break;
      default:
        return { ok: false, message: `--can ${spec}: unknown option "${key}" (loss, dup, reorder, seed, bitrate, dbitrate, remote)` };
    }
  }
  if (base.startsWith('virtual:')) {
    const rest = base.slice('virtual:'.length);
    const m = /^(.+):(\d{1,5})$/.exec(rest);
    if (m) {
      const port = Number(m[2]);
      if (port < 1 || port > 65535) return { ok: false, message: `--can ${spec}: port must be 1..65535` };
      const host = m[1]!;
      if (!remote && !isLoopbackHost(host)) {
        return {
          ok: false,
          message:
            `--can ${spec}: ${host} is not a loopback address. The virtual bus is a test bus without authentication: ` +
            'whoever reaches its port can read and send every frame, and the first process on the address hosts the hub there. ' +
            'Use 127.0.0.1, or add ?remote=1 to open it to the network on purpose.',
        };
      }
      const address: CanAddress = { kind: 'virtual-net', host, port, timing, faults };
      if (remote) address.remote = true;
      return { ok: true, address };
    }
    if (remote) return { ok: false, message: `--can ${spec}: remote applies to virtual:HOST:PORT only` };
    if (!/^[\w.-]+$/.test(rest)) return { ok: false, message: `--can ${spec}: expected virtual:NAME or virtual:HOST:PORT` };
    return { ok: true, address: { kind: 'virtual', name: rest, timing, faults } };
  }
  if (remote) return { ok: false, message: `--can ${spec}: remote applies to virtual:HOST:PORT only` };
  if (!IFACE.test(base)) return { ok: false, message: `--can ${spec}: not a SocketCAN interface name (or virtual:NAME, virtual:HOST:PORT)` };
  if (timing.bitrate !== undefined || timing.dataBitrate !== undefined) {
    return { ok: false, message: `--can ${spec}: bitrate/dbitrate apply to virtual buses only (a real bus has its own)` };
  }
  return { ok: true, address: { kind: 'socketcan', iface: base, faults } };
}

export interface CanBusOptions {
  fd?: boolean;
  /**
   * For a `virtual:HOST:PORT` bus: the limits of the hub this process hosts if it is the first on
   * the address, where that hub listens (`bindHost`), and `allowRemote` (as `?remote=1`).
   */
  hub?: HubLimits & { bindHost?: string; allowRemote?: boolean };
}

/** Creates (not yet opened) the bus an address names. */
export function createCanBus(address: CanAddress, options: CanBusOptions = {}): CanBus {
  const fd = options.fd ?? true;
  let bus: CanBus;
  switch (address.kind) {
    case 'socketcan':
      bus = new SocketCanBus(address.iface, fd);
      break;
    case 'virtual':
      bus = namedVirtualBus(address.name, address.timing).attach(`virtual:${address.name}`);
      break;
    case 'virtual-net':
      bus = new NetVirtualBus(address.host, address.port, { ...address.timing, ...options.hub, allowRemote: address.remote === true || options.hub?.allowRemote === true }, fd);
      break;
  }
  return hasFaults(address.faults) ? new FaultyBus(bus, address.faults) : bus;
}

/** Parse, create and open in one step; throws with a message naming the address on failure. */
export async function openCanBus(spec: string, options: CanBusOptions = {}): Promise<CanBus> {
  const parsed = parseCanAddress(spec);
  if (!parsed.ok) throw new Error(parsed.message);
  const bus = createCanBus(parsed.address, options);
  await bus.open();
  return bus;
}
