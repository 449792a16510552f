/**
 * What the live page shows, as one JSON document (`GET /api/state`): the gateway, its master links,
 * one row per device (what it runs, its slots, its last boot and its flash wear), the recent jobs
 * with their per-target results, and recent errors and boot alerts. The page fetches it once, then
 * follows the event stream (sse.ts) and fetches it again only when something a row shows changed
 * (a scan, a boot): progress and job changes it applies itself.
 *
 * Recent errors and alerts are collected from the event bus from the gateway's start (boot alerts
 * happen before anyone can open the page), in a bounded ring.
 */
import { readdirSync } from 'node:fs';
import type { BusEvent, EventBus, Subscription } from '../events/index.js';
import type { JobRecord, JobService } from '../jobs/types.js';
import type { LinkInventory } from '../inventory.js';
import type { InventoryEntry } from '../../link/flasher.js';

/** Events the page lists as recent errors and alerts. */
export const ALERT_TYPES: ReadonlySet<string> = new Set([
  'boot.failed',
  'boot.alert',
  'provisioning.error',
  'provisioning.rollback',
  'provisioning.wear_warning',
]);

export interface RecentAlert {
  seq: number;
  ts: number;
  type: string;
  /** error (red) or warning (amber). */
  level: 'error' | 'warning';
  device: string | null;
  message: string;
}

export interface DeviceLocal {
  boot: { ok: boolean; halted: boolean; attempt: number; restored: string | null; failed: Array<{ source: string; error: string }> } | null;
  wear: { total_erases: number; max_erases: number; endurance: number; ratio: number };
}

export interface DeviceRow extends Partial<Omit<InventoryEntry, 'target'>> {
  /** `<link>/<target>`, or `local/<device>` for a device on no master link. */
  key: string;
  link: string | null;
  target: string | null;
  /** The configured device this target is, if any. */
  device: string | null;
  scanned_ts: number | null;
  /** Only for devices this process simulates. */
  local: DeviceLocal | null;
}

export interface PageState {
  gateway: { id: string; auth: 'tokens' | 'loopback'; jobs: 'enabled' | 'disabled'; started_ts: number };
  you: { name: string; role: string };
  /** The bus seq this state reflects: the event stream continues after it. */
  seq: number;
  links: Array<{ name: string; scanned_ts: number | null; targets: number; error: string | null }>;
  devices: DeviceRow[];
  jobs: JobRecord[];
  images: string[];
  recent: RecentAlert[];
}

/** The part of the state a scan, a boot or a device error changes (`/api/state?part=rows`). */
export type PageRows = Pick<PageState, 'seq' | 'links' | 'devices' | 'recent'>;

export interface PageModelSources {
  gatewayId: string;
  bus: EventBus;
  jobs(): JobService | null;
  links(): string[];
  inventory(link: string): LinkInventory | undefined;
  /** The configured device a link's target is. */
  deviceOf(link: string, target: string): string | undefined;
  /** In-process simulated devices and what the page shows of each. */
  localDevices(): Array<{ name: string; local: DeviceLocal }>;
  imagesDir: string | undefined;
  tokensConfigured(): boolean;
  now(): number;
}

const MAX_RECENT = 50;
const MAX_JOBS = 20;
const MAX_IMAGES = 200;

function alertOf(ev: BusEvent): RecentAlert {
  const d = ev.data;
  const device = typeof d['device'] === 'string' ? d['device'] : null;
  const text = (v: unknown): string => (typeof v === 'string' ? v : v === undefined ? '' : JSON.stringify(v));
  let message: string;
  switch (ev.type) {
    case 'boot.alert':
      // Damaged state found by the stores carries its own message (file, offset, what was done).
      message = typeof d['message'] === 'string'
        ? `boot alert ${text(d['reason'])}: ${d['message']}`
        : `boot halted: ${text(d['reason'])} (${text(d['consecutive_failures'])} consecutive failures, limit ${text(d['limit'])})`;
      break;
    case 'boot.failed':
      message = `boot attempt ${text(d['attempt'])} failed: ${Array.isArray(d['failed']) ? (d['failed'] as Array<{ source?: string; error?: string }>).map((f) => `${f.source ?? '?'}: ${f.error ?? '?'}`).join('; ') : ''}`;
      break;
    case 'provisioning.wear_warning':
      message = `flash wear warning: sector ${text(d['sector'])} erased ${text(d['erase_count'])} of ${text(d['endurance'])} times`;
      break;
    case 'provisioning.rollback':
      message = `rolled back: ${text(d['reason'])}`;
      break;
    default:
      message = `${text(d['code'] ?? d['error'])}${d['reason'] !== undefined ? `: ${text(d['reason'])}` : ''}${d['message'] !== undefined ? ` — ${text(d['message'])}` : ''}`;
  }
  return { seq: ev.seq, ts: ev.ts, type: ev.type, level: ev.type === 'provisioning.wear_warning' || ev.type === 'provisioning.rollback' ? 'warning' : 'error', device, message: message.slice(0, 500) };
}

export class PageModel {
  private readonly recent: RecentAlert[] = [];
  private readonly sub: Subscription;
  private readonly startedTs: number;

  constructor(private readonly src: PageModelSources) {
    this.startedTs = src.now() / 1000;
    this.sub = src.bus.subscribe({
      categories: [...ALERT_TYPES],
      maxEvents: 64,
      deliver: (ev) => {
        this.note(ev);
        return true;
      },
    });
  }

  /** Recent errors and alerts, newest last. */
  alerts(): RecentAlert[] {
    return [...this.recent];
  }

  private note(ev: BusEvent): void {
    if (!ALERT_TYPES.has(ev.type)) return;
    this.recent.push(alertOf(ev));
    if (this.recent.length > MAX_RECENT) this.recent.splice(0, this.recent.length - MAX_RECENT);
  }

  /** The rows a scan, a boot or a device error changes: what the page fetches again after one. */
  rows(): PageRows {
    const { seq, links, devices, recent } = this.snapshotRows();
    return { seq, links, devices, recent };
  }

  snapshot(you: { name: string; role: string }): PageState {
    const s = this.src;
    const { seq, links, devices, recent } = this.snapshotRows();
    const jobs = s.jobs();
    return {
      gateway: { id: s.gatewayId, auth: s.tokensConfigured() ? 'tokens' : 'loopback', jobs: jobs ? 'enabled' : 'disabled', started_ts: this.startedTs },
      you,
      seq,
      links,
      devices,
      jobs: jobs ? jobs.list({ limit: MAX_JOBS }) : [],
      images: this.images(),
      recent,
    };
  }

  private snapshotRows(): PageRows {
    const s = this.src;
    const seq = s.bus.lastSeq;
    const locals = new Map(s.localDevices().map((d) => [d.name, d.local]));
    const seen = new Set<string>();
    const devices: DeviceRow[] = [];
    const links: PageState['links'] = [];
    for (const link of s.links()) {
      const inv = s.inventory(link);
      links.push({ name: link, scanned_ts: inv?.scanned_ts ?? null, targets: inv?.entries.length ?? 0, error: inv?.error ?? null });
      for (const e of inv?.entries ?? []) {
        const device = s.deviceOf(link, e.target) ?? null;
        if (device) seen.add(device);
        devices.push({ ...e, key: `${link}/${e.target}`, link, target: e.target, device, scanned_ts: inv?.scanned_ts ?? null, local: device ? locals.get(device) ?? null : null });
      }
    }
    for (const [name, local] of locals) {
      if (!seen.has(name)) devices.push({ key: `local/${name}`, link: null, target: null, device: name, scanned_ts: null, local });
    }
    return { seq, links, devices, recent: this.alerts() };
  }

  /** `.hxe` files in the images directory, the names a submit may give. */
  private images(): string[] {
    if (!this.src.imagesDir) return [];
    try {
      return readdirSync(this.src.imagesDir, { withFileTypes: true })
        .filter((e) => e.isFile() && e.name.endsWith('.hxe'))
        .map((e) => e.name)
        .sort()
        .slice(0, MAX_IMAGES);
    } catch {
      return [];
    }
  }

  close(): void {
    this.sub.close('unsubscribed');
  }
}
