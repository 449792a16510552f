/**
 * `/metrics`: the gateway in Prometheus' text format, through prom-client, on a registry of its own
 * (not prom-client's global one, so two gateways in one process never share counters). Names and
 * meanings: docs/metrics.md, one table; `test/http-page.test.ts` checks the table against this file.
 *
 * Counters that another part already keeps (the event bus, the MQTT outage buffer, the link
 * counters) are read when Prometheus scrapes, not mirrored on every change; job results are
 * counted from the job service's events as jobs end.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { EventBus } from '../events/index.js';
import type { JobService, JobRecord } from '../jobs/types.js';
import type { LinkStats } from '../link-stats.js';

/** What the metrics read from the running gateway; each part may be absent (jobs off, no MQTT...). */
export interface MetricsSources {
  bus: EventBus;
  jobs: JobService | null;
  links: LinkStats;
  /** Per in-process device: its flash erase counters. */
  devices(): Array<{ name: string; totalErases: number; maxErases: number; endurance: number }>;
  /** The MQTT bridge's outage buffer, when there is a bridge. */
  mqtt(): { buffered: number; droppedProgress: number; droppedTerminal: number } | null;
  /** Control-port connections by role (`none` before a token). */
  controlConnections(): Record<string, number>;
  /** Live-page event streams open. */
  pageStreams(): number;
}

const PREFIX = 'hsx_';

/** Every metric name this module registers besides prom-client's default process/Node.js ones (docs/metrics.md). */
export const METRIC_NAMES = [
  'hsx_jobs_total',
  'hsx_job_targets_total',
  'hsx_link_transfers_total',
  'hsx_link_bytes_sent_total',
  'hsx_link_frames_sent_total',
  'hsx_link_repairs_total',
  'hsx_link_retransmits_total',
  'hsx_link_timeouts_total',
  'hsx_device_flash_erases',
  'hsx_device_flash_max_sector_erases',
  'hsx_device_flash_wear_ratio',
  'hsx_event_bus_published_total',
  'hsx_event_bus_dropped_total',
  'hsx_event_bus_slow_consumer_warnings_total',
  'hsx_event_bus_slow_consumers_dropped_total',
  'hsx_event_bus_subscribers',
  'hsx_mqtt_outage_buffer_messages',
  'hsx_mqtt_outage_dropped_total',
  'hsx_control_connections',
  'hsx_http_streams',
] as const;

/** Sets a counter to a total kept elsewhere (prom-client counters only go up by `inc`). */
function setCounter(c: Counter<string>, value: number, labels?: Record<string, string>): void {
  if (labels) c.labels(labels).inc(Math.max(0, value));
  else c.inc(Math.max(0, value));
}

export class GatewayMetrics {
  readonly registry = new Registry();
  private unwatch: (() => void) | null = null;

  constructor(private readonly src: MetricsSources) {
    const r = this.registry;
    // the event-loop lag histogram samples every 100 ms, not prom-client's 10 ms: 10 wake-ups a second
    // of an otherwise idle gateway are enough for a lag a person would notice
    collectDefaultMetrics({ register: r, eventLoopMonitoringPrecision: 100 });
    const jobs = new Counter({ name: `${PREFIX}jobs_total`, help: 'Jobs that ended, by their final state (SUCCEEDED, SKIPPED, FAILED, TIMED_OUT, CANCELED).', labelNames: ['state'], registers: [r] });
    const targets = new Counter({ name: `${PREFIX}job_targets_total`, help: 'Targets of ended jobs, by link and final target state.', labelNames: ['link', 'state'], registers: [r] });
    const countJob = (job: JobRecord): void => {
      jobs.labels({ state: job.state }).inc();
      for (const t of job.targets) targets.labels({ link: job.link, state: t.state }).inc();
    };
    if (src.jobs) {
      this.unwatch = src.jobs.watch((e) => {
        if (e.type === 'job.finished' || e.type === 'job.canceled') countJob(e.job);
      });
    }
    const link = (name: string, help: string, key: 'transfers' | 'bytesSent' | 'framesSent' | 'repairs' | 'retransmits' | 'timeouts'): void => {
      new Counter({
        name: `${PREFIX}link_${name}`, help, labelNames: ['link'], registers: [r],
        collect() {
          this.reset();
          for (const [l, t] of src.links.totals()) setCounter(this, t[key], { link: l });
        },
      });
    };
    link('transfers_total', 'Transfers (flasher.flash calls) that ended on each master link.', 'transfers');
    link('bytes_sent_total', 'Image bytes sent on each master link (CAN: data and repair payload; UART: DATA bytes, resends included).', 'bytesSent');
    link('frames_sent_total', 'Frames sent by the master on each link (CAN: every kind; UART: DATA frames).', 'framesSent');
    link('repairs_total', 'CAN: chunks repaired after a missing report; UART: transfer restarts.', 'repairs');
    link('retransmits_total', 'CAN: repair frames; UART: DATA frames sent again.', 'retransmits');
    link('timeouts_total', 'Targets that went silent (ETIMEDOUT) plus UART retransmission timeouts.', 'timeouts');
    const device = (name: string, help: string, value: (d: ReturnType<MetricsSources['devices']>[number]) => number): void => {
      new Gauge({
        name: `${PREFIX}device_${name}`, help, labelNames: ['device'], registers: [r],
        collect() {
          this.reset();
          for (const d of src.devices()) this.labels({ device: d.name }).set(value(d));
        },
      });
    };
    device('flash_erases', 'Sector erases of the device flash, all sectors summed (as the flash file counts them).', (d) => d.totalErases);
    device('flash_max_sector_erases', 'Erases of the most-erased flash sector.', (d) => d.maxErases);
    device('flash_wear_ratio', 'Most-erased sector over the rated endurance (1 = worn out; warnings from 0.8).', (d) => (d.endurance > 0 ? d.maxErases / d.endurance : 0));
    const busCounter = (name: string, help: string, value: () => number): void => {
      new Counter({ name: `${PREFIX}event_bus_${name}`, help, registers: [r], collect() { this.reset(); setCounter(this, value()); } });
    };
    busCounter('published_total', 'Events the bus published (after progress coalescing).', () => src.bus.stats().published);
    busCounter('dropped_total', 'Events dropped for subscribers that were behind (once per subscriber and event).', () => src.bus.stats().dropped);
    busCounter('slow_consumer_warnings_total', 'slow_consumer warnings given to subscribers that fell behind.', () => src.bus.stats().slowWarnings);
    busCounter('slow_consumers_dropped_total', 'Subscribers cut off for being too far behind (slow_consumer_drop), live-page streams included.', () => src.bus.stats().slowDrops);
    new Gauge({ name: `${PREFIX}event_bus_subscribers`, help: 'Live bus subscriptions (control streams, MQTT bridge, live pages).', registers: [r], collect() { this.set(src.bus.stats().subscribers); } });
    new Gauge({ name: `${PREFIX}mqtt_outage_buffer_messages`, help: 'MQTT messages held while the broker is unreachable (0 with no MQTT).', registers: [r], collect() { this.set(src.mqtt()?.buffered ?? 0); } });
    new Counter({
      name: `${PREFIX}mqtt_outage_dropped_total`, help: 'MQTT messages the outage buffer dropped when full, by kind (progress, terminal).', labelNames: ['kind'], registers: [r],
      collect() {
        this.reset();
        const m = src.mqtt();
        setCounter(this, m?.droppedProgress ?? 0, { kind: 'progress' });
        setCounter(this, m?.droppedTerminal ?? 0, { kind: 'terminal' });
      },
    });
    new Gauge({
      name: `${PREFIX}control_connections`, help: 'Open control-port connections by role (none: no token presented yet).', labelNames: ['role'], registers: [r],
      collect() {
        this.reset();
        const by = { none: 0, viewer: 0, operator: 0, admin: 0, ...src.controlConnections() };
        for (const [role, n] of Object.entries(by)) this.labels({ role }).set(n);
      },
    });
    new Gauge({ name: `${PREFIX}http_streams`, help: 'Live-page event streams open.', registers: [r], collect() { this.set(src.pageStreams()); } });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  close(): void {
    this.unwatch?.();
    this.unwatch = null;
  }
}
