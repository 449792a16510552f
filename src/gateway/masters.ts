/**
 * The gateway's master links: every `[[links.can]]` and `[[links.uart]]` with `role = "master"`,
 * opened as a `Flasher` under its link name (config.ts `linkName`). Jobs run on these; the `flash`
 * CLI opens the same flashers for one transfer, so the daemon and the CLI flash the same way.
 */
import { ContentStore, stateImageDir } from '../link/delta/image-store.js';
import type { Flasher } from '../link/flasher.js';
import { CanFlasher } from '../link/can/flasher.js';
import { UartFlasher } from '../link/uart/flasher.js';
import { linkName, type GatewayConfig } from './config.js';
import type { CanBusOptions } from '../link/can/address.js';

/** `virtual` CAN links are in-process buses by name, or cross-process ones when written HOST:PORT. */
export function canAddress(link: GatewayConfig['links']['can'][number]): string {
  if (link.backend === 'socketcan') return link.interface;
  const timing = link.timing ? `bitrate=${link.bitrate}` : '';
  // The interface may carry options of its own (`127.0.0.1:47000?loss=0.01`, `10.0.0.5:47000?remote=1`).
  const sep = link.interface.includes('?') ? '&' : '?';
  return `virtual:${link.interface}${timing ? sep + timing : ''}`;
}

/** How a CAN link's bus is opened: FD, and for a virtual HOST:PORT link the limits and bind address of the hub it may host (`[links.can.hub]`). */
export function canBusOptions(link: GatewayConfig['links']['can'][number]): CanBusOptions {
  const h = link.hub;
  if (!h) return { fd: link.fd };
  return {
    fd: link.fd,
    hub: {
      maxQueuedFrames: h.max_queued_frames,
      maxBytesPerSecond: h.max_bytes_per_second,
      burstBytes: h.burst_bytes,
      maxOutputBytes: h.max_output_bytes,
      allowRemote: h.allow_remote,
      ...(h.bind !== undefined ? { bindHost: h.bind.replace(/^\[|\]$/g, '') } : {}),
    },
  };
}

export class MasterLinkError extends Error {
  constructor(readonly component: string, message: string) {
    super(message);
  }
}

/**
 * Opens every master link; on a failure the ones already open are closed again and the error
 * names the link (`links.can.<name>` / `links.uart.<name>`) and why.
 */
export async function openMasterLinks(config: GatewayConfig): Promise<Map<string, Flasher>> {
  const out = new Map<string, Flasher>();
  try {
    for (const l of config.links.can.filter((x) => x.role === 'master')) {
      const name = linkName(l);
      const address = canAddress(l);
      try {
        // with a state dir, the same image store as UART: every image flashed is the base of the next delta
        const stateDir = config.gateway.state_dir;
        out.set(name, await CanFlasher.open(name, address, canBusOptions(l), stateDir ? { images: new ContentStore(stateImageDir(stateDir)) } : {}));
      } catch (e) {
        throw new MasterLinkError(`links.can.${name}`, `CAN master link "${name}" (${address}): ${(e as Error).message}`);
      }
    }
    for (const l of config.links.uart.filter((x) => x.role === 'master')) {
      const name = linkName(l);
      try {
        // with a state dir, every image a job flashes is kept by SHA-256: the base of the next delta
        const stateDir = config.gateway.state_dir;
        out.set(name, await UartFlasher.open(name, { path: l.port, baudRate: l.baud }, stateDir ? { images: new ContentStore(stateImageDir(stateDir)) } : {}));
      } catch (e) {
        throw new MasterLinkError(`links.uart.${name}`, `UART master link "${name}" (${l.port}): ${(e as Error).message}`);
      }
    }
  } catch (e) {
    for (const f of out.values()) await f.close().catch(() => undefined);
    throw e;
  }
  return out;
}
