/**
 * The daemon's inventory: what each master link's last scan found (which targets answer, what each
 * runs, its slots). Scanned at start and again after every job that ends on the link; a job
 * submitted without targets goes to every target of the link's last scan. Each refresh is handed
 * to `onScan` (the gateway publishes it retained on MQTT, one document per target).
 */
import type { Flasher, InventoryEntry } from '../link/flasher.js';

export interface LinkInventory {
  link: string;
  /** Seconds (float), when the scan ended. */
  scanned_ts: number;
  entries: InventoryEntry[];
  /** Why the scan failed, when it did (the previous entries are kept). */
  error: string | null;
}

export interface InventoryOptions {
  flashers: ReadonlyMap<string, Flasher>;
  /** Milliseconds. */
  now: () => number;
  timeoutMs?: number;
  onScan?: (inv: LinkInventory) => void;
  onError?: (link: string, message: string) => void;
}

export class Inventory {
  private readonly byLink = new Map<string, LinkInventory>();
  /** The refresh running per link, so overlapping requests share one scan. */
  private readonly running = new Map<string, Promise<LinkInventory | null>>();
  private closed = false;

  constructor(private readonly opts: InventoryOptions) {}

  /** The link's last scan, or undefined when it was never scanned. */
  get(link: string): LinkInventory | undefined {
    return this.byLink.get(link);
  }

  /** Every master link, scanned or not. */
  links(): string[] {
    return [...this.opts.flashers.keys()];
  }

  all(): LinkInventory[] {
    return [...this.byLink.values()];
  }

  /** The targets the link's last scan found (null: never scanned, so a target-less job is refused). */
  targets(link: string): string[] | null {
    const inv = this.byLink.get(link);
    return inv ? inv.entries.map((e) => e.target) : null;
  }

  /**
   * Scans the link (between its transfers: the flasher's lock orders them); null when it cannot
   * scan. With `targets`, only those (a CAN scan then ends once each answered: the rescan after a
   * job holds the link for milliseconds, not the whole scan timeout); without, every target.
   */
  refresh(link: string, options: { targets?: readonly string[] } = {}): Promise<LinkInventory | null> {
    const f = this.opts.flashers.get(link);
    if (!f?.scan || this.closed) return Promise.resolve(null);
    const pending = this.running.get(link);
    if (pending) return pending;
    const run = (async (): Promise<LinkInventory | null> => {
      let inv: LinkInventory;
      try {
        const entries = await f.scan!({
          ...(this.opts.timeoutMs !== undefined ? { timeoutMs: this.opts.timeoutMs } : {}),
          ...(options.targets?.length ? { targets: options.targets } : {}),
        });
        inv = { link, scanned_ts: this.opts.now() / 1000, entries, error: null };
      } catch (e) {
        const message = (e as Error).message ?? String(e);
        this.opts.onError?.(link, message);
        const prev = this.byLink.get(link);
        inv = { link, scanned_ts: this.opts.now() / 1000, entries: prev?.entries ?? [], error: message };
      }
      if (this.closed) return null;
      this.byLink.set(link, inv);
      this.opts.onScan?.(inv);
      return inv;
    })().finally(() => this.running.delete(link));
    this.running.set(link, run);
    return run;
  }

  /** Every link that can scan, in parallel. */
  async refreshAll(): Promise<void> {
    await Promise.all([...this.opts.flashers.keys()].map((l) => this.refresh(l)));
  }

  /** Scans still running are left to end; their results are dropped. */
  close(): Promise<unknown> {
    this.closed = true;
    return Promise.all([...this.running.values()]);
  }
}
