/**
 * What each master link has put on the wire, summed over its transfers since the gateway started:
 * the `/metrics` counters per link (docs/metrics.md). Each flasher's `flash()` already returns its
 * link's counters (`FlashResult.stats`, whose keys differ between CAN and UART); `countTransfers`
 * wraps a flasher's `flash` so every transfer, whoever starts it (a job, the CLI in-process), adds
 * its result here. The counters move when a transfer ends, not during it.
 */
import type { FlashResult, Flasher } from '../link/flasher.js';

export interface LinkTotals {
  transfers: number;
  /** Image bytes carried (CAN: data and repair payload; UART: DATA bytes, retransmissions included). */
  bytesSent: number;
  /** Frames this master sent (CAN: every kind; UART: DATA frames). */
  framesSent: number;
  /** CAN: chunks sent again because a node reported them missing. UART: transfer restarts. */
  repairs: number;
  /** CAN: repair frames. UART: DATA frames sent again. */
  retransmits: number;
  /** Targets that went silent (ETIMEDOUT verdicts), plus UART retransmission timeouts. */
  timeouts: number;
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

export class LinkStats {
  private readonly byLink = new Map<string, LinkTotals>();

  totals(): ReadonlyMap<string, Readonly<LinkTotals>> {
    return this.byLink;
  }

  /** Starts every link at zero, so /metrics lists a link before its first transfer. */
  declare(link: string): LinkTotals {
    let t = this.byLink.get(link);
    if (!t) this.byLink.set(link, (t = { transfers: 0, bytesSent: 0, framesSent: 0, repairs: 0, retransmits: 0, timeouts: 0 }));
    return t;
  }

  add(link: string, kind: 'can' | 'uart', r: FlashResult): void {
    const t = this.declare(link);
    const s = r.stats;
    t.transfers++;
    t.timeouts += r.verdicts.filter((v) => !v.ok && v.code === 'ETIMEDOUT').length;
    if (kind === 'can') {
      const sent = (s['sent'] ?? {}) as Record<string, unknown>;
      t.bytesSent += num(s['payloadBytes']);
      t.framesSent += num(sent['announce']) + num(sent['sync']) + num(sent['data']) + num(sent['repair']) + num(sent['ctrl']);
      t.repairs += num(s['repairedChunks']);
      t.retransmits += num(sent['repair']);
    } else {
      t.bytesSent += num(s['dataBytesSent']);
      t.framesSent += num(s['dataFramesSent']);
      t.repairs += num(s['restarts']);
      t.retransmits += num(s['retransmits']);
      t.timeouts += num(s['timeouts']);
    }
  }

  /** Wraps `f.flash` in place (the flasher keeps its identity and every other member). */
  countTransfers(f: Flasher): Flasher {
    this.declare(f.link);
    const flash = f.flash.bind(f);
    f.flash = async (req) => {
      const r = await flash(req);
      try {
        this.add(f.link, f.kind, r);
      } catch {
        /* counting never fails a transfer */
      }
      return r;
    };
    return f;
  }
}
