/**
 * The gateway process, assembled from a validated configuration: event bus, MQTT bridge (to an
 * external broker or an embedded one), simulated devices booted from their sources, a CAN listener
 * per device that sits on a bus, and the control server. `stop()` undoes it in reverse order so
 * that in-flight work is aborted cleanly, MQTT is flushed and every file is closed.
 */
import { ContentStore, stateImageDir } from '../link/delta/image-store.js';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import { systemClock, type Clock, type EngineConfigInput, type EventSink } from '../engine/index.js';
import { withAuditLog } from '../engine/policy.js';
import { CanListener } from '../link/can/listener.js';
import { openCanBus } from '../link/can/address.js';
import type { CanBus } from '../link/can/bus.js';
import { runUartDevice } from '../link/uart/device-command.js';
import { preloadDirSource, sdManifestSource, type ImageSourceTransport } from '../link/sources/source-transport.js';
import { bootDevice, type BootReport } from './boot.js';
import type { DeviceConfig, GatewayConfig } from './config.js';
import { ControlServer, controlLimitsFromConfig, TOKENS_ENV } from './control/server.js';
import { DEFAULT_MAX_IMAGE_BYTES } from './control/image-files.js';
import type { ControlEngine } from './control/engine-port.js';
import { EventBus, type BusEvent } from './events/index.js';
import type { Logger } from './logger.js';
import { startEmbeddedBroker, type EmbeddedBroker, type EmbeddedBrokerOptions } from './mqtt/embedded-broker.js';
import { parseTokenEnv } from './control/auth.js';
import { MqttBridge } from './mqtt/bridge.js';
import { allTopics } from './mqtt/topics.js';
import { engineSetup } from './profiles.js';
import { canAddress, canBusOptions, openMasterLinks, MasterLinkError } from './masters.js';
import { JobManager } from './jobs/manager.js';
import { jobEventToBus } from './jobs/bus-events.js';
import type { Flasher } from '../link/flasher.js';
import { CanFlasher } from '../link/can/flasher.js';
import { AuditLog } from './control/audit.js';
import { TokenStore, type TokenEntry } from './control/auth.js';
import { GatewayFleetPlane } from './fleet-plane.js';
import { MqttJobCommands, checkCommandsConfig, deviceNamesFromConfig, targetTopicLevel } from './mqtt/job-commands.js';
import { MqttValueCommands } from './mqtt/value-commands.js';
import { canTarget, deviceTarget } from './values.js';
import { Inventory, type LinkInventory } from './inventory.js';
import { deviceInventoryTopic, topicLevel } from './mqtt/topics.js';
import { openSimulatedDevice, type SimulatedDevice } from '../persist/simulated-device.js';
import { LinkStats } from './link-stats.js';
import { PageModel, type DeviceLocal } from './http/model.js';
import { GatewayMetrics } from './http/metrics.js';
import { PageServer } from './http/server.js';
import { watchValuePubs, type PubWatch, type ValuePub } from '../link/can/value-watch.js';
import { decodeF16 } from '../hxe/index.js';
import { linkName, mqttUrls } from './config.js';

export interface GatewayOverrides {
  controlPort?: number;
  mqttUrl?: string;
  /** Serve the live page and /metrics on this port (0: a free one), whatever `[http] port` says. */
  httpPort?: number;
}

export interface GatewayStartError {
  code: 'ESTART';
  component: string;
  message: string;
}

/** What `stop()` could not finish within its time: one line per item, for the log and `serve`'s output. */
export interface StopReport {
  /** Everything that was stopped and flushed in time. */
  clean: boolean;
  unflushed: Array<{ component: string; what: string }>;
  elapsedMs: number;
}

/** Settles with the promise's outcome, or with 'timeout' after `ms` (never rejects). */
async function within<T>(p: Promise<T>, ms: number): Promise<{ ok: true; value: T } | { ok: false; error: string }> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p.then((value) => ({ ok: true as const, value }), (e: Error) => ({ ok: false as const, error: e?.message ?? String(e) })),
      new Promise<{ ok: false; error: string }>((resolve) => {
        timer = setTimeout(() => resolve({ ok: false, error: `no answer within ${Math.max(0, Math.round(ms))} ms` }), Math.max(0, ms));
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

interface RunningDevice {
  dev: SimulatedDevice;
  listener: CanListener | null;
  bus: CanBus | null;
  report: BootReport | null;
  /** The CAN listener's verdicts, for the boot step that waits for a master. */
  verdicts: EventEmitter;
  /** Running UART listeners: abort to stop, `done` settles when the port is closed. */
  uarts: Array<{ stop: AbortController; done: Promise<number> }>;
}

export class Gateway {
  readonly devices = new Map<string, SimulatedDevice>();
  readonly bootReports = new Map<string, BootReport>();
  readonly bus: EventBus;
  control: ControlServer | null = null;
  bridge: MqttBridge | null = null;
  embeddedBroker: EmbeddedBroker | null = null;
  private readonly running = new Map<string, RunningDevice>();
  private engineConfig: EngineConfigInput = {};
  private deviceEvents: EventSink;
  private unsubscribeBridge: (() => void) | null = null;
  /** The master links (`role = "master"`), by link name: what jobs run on. */
  readonly flashers = new Map<string, Flasher>();
  /** The job service; null without `[gateway] state_dir` (jobs off). */
  jobs: JobManager | null = null;
  private mqttJobs: MqttJobCommands | null = null;
  /** `val.set` over MQTT (only with `mqtt.commands = true`). */
  private mqttValues: MqttValueCommands | null = null;
  /** Fleet rollouts' side (docs/fleet.md): with MQTT commands on an external broker. */
  private fleetPlane: GatewayFleetPlane | null = null;
  private mqttUrlInUse: string[] | null = null;
  /** What each master link's last scan found (null until the master links are open). */
  inventory: Inventory | null = null;
  private unwatchJobs: (() => void) | null = null;
  /** What each master link has sent, for /metrics (link-stats.ts). */
  readonly linkStats = new LinkStats();
  /** The live page and /metrics (src/gateway/http/); null without `[http] port` or `--http-port`. */
  page: PageServer | null = null;
  private pageModel: PageModel | null = null;
  private metrics: GatewayMetrics | null = null;
  /** PUB watchers on the CAN links (one per link), and the buses opened only for them. */
  private pubWatches: PubWatch[] = [];
  private pubBuses: CanBus[] = [];

  private constructor(
    readonly config: GatewayConfig,
    readonly log: Logger,
    private readonly clock: Clock,
  ) {
    this.bus = new EventBus({ clock, logger: log.child({ component: 'events' }) });
    this.deviceEvents = this.bus;
  }

  /** Starts everything; on a failure, whatever was started is stopped again before the error returns. */
  static async start(config: GatewayConfig, log: Logger, overrides: GatewayOverrides = {}, clock: Clock = systemClock):
    Promise<{ ok: true; value: Gateway } | { ok: false; error: GatewayStartError }> {
    const gw = new Gateway(config, log, clock);
    try {
      gw.checkMqttCommands();
      const httpPort = overrides.httpPort ?? config.http.port;
      // before the devices boot: the page lists their boot alerts
      if (httpPort !== undefined) gw.startPageModel();
      await gw.startMqtt(overrides.mqttUrl);
      await gw.startDevices();
      await gw.startJobs();
      await gw.startValueWatch();
      await gw.startControl(overrides.controlPort);
      gw.startMqttJobs();
      gw.startMqttValues();
      // The first inventory before `serving`: a job without targets goes to what this scan finds.
      await gw.inventory?.refreshAll();
      if (httpPort !== undefined) await gw.startHttp(httpPort);
      return { ok: true, value: gw };
    } catch (e) {
      await gw.stop().catch(() => undefined);
      const ge = e as Partial<GatewayStartError>;
      return { ok: false, error: { code: 'ESTART', component: ge.component ?? 'gateway', message: ge.message ?? String(e) } };
    }
  }

  private fail(component: string, message: string): never {
    throw Object.assign(new Error(message), { component });
  }

  /** The access tokens: `[[control.tokens]]` plus HSX_GATEWAY_TOKENS (the control port reads the same two). */
  private tokenEntries(component: string): TokenEntry[] {
    const tokens: TokenEntry[] = [...this.config.control.tokens];
    const env = process.env[TOKENS_ENV];
    if (env !== undefined && env.trim() !== '') {
      const parsed = parseTokenEnv(env, TOKENS_ENV);
      if (!parsed.ok) this.fail(component, parsed.error.message);
      tokens.push(...parsed.value);
    }
    return tokens;
  }

  /** `mqtt.commands = true` without a token could never be used: refused before anything starts. */
  private checkMqttCommands(): void {
    const m = this.config.mqtt;
    if (!m?.commands) return;
    const entries = this.tokenEntries('mqtt');
    const problem = checkCommandsConfig(true, entries.length ? new TokenStore(entries) : null);
    if (problem) this.fail('mqtt.commands', problem);
  }

  /**
   * The master links and, with `[gateway] state_dir`, the job service on them. Every job event goes
   * on the event bus (so `job.watch` and MQTT see the same events); a job that was running when the
   * gateway last stopped is reported here, as the journal's recovery found it.
   */
  private async startJobs(): Promise<void> {
    try {
      for (const [name, f] of await openMasterLinks(this.config)) this.flashers.set(name, this.linkStats.countTransfers(f));
    } catch (e) {
      if (e instanceof MasterLinkError) this.fail(e.component, e.message);
      throw e;
    }
    const names = deviceNamesFromConfig(this.config);
    this.inventory = new Inventory({
      flashers: this.flashers,
      now: () => this.clock.now(),
      onScan: (inv) => this.publishInventory(inv, names),
      onError: (link, message) => this.log.warn({ link, err: message }, 'scan failed'),
    });
    const dir = this.config.gateway.state_dir;
    if (!dir) {
      if (this.flashers.size > 0) this.log.info({ links: [...this.flashers.keys()] }, 'jobs are off: set [gateway] state_dir to run jobs on the master links');
      return;
    }
    const jlog = this.log.child({ component: 'jobs' });
    let manager: JobManager;
    try {
      manager = await JobManager.open({
        dir,
        flashers: this.flashers,
        clock: { now: () => this.clock.now() },
        maxFinished: this.config.jobs.max_finished,
        maxAgeS: this.config.jobs.max_age_s,
        maxImageBytes: Math.min(this.config.control.max_image_bytes, this.engineConfig.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES),
        lastScan: (link) => this.inventory?.targets(link) ?? null,
        log: (level, msg, data) => jlog[level](data ?? {}, msg),
      });
    } catch (e) {
      this.fail('jobs', `job journal in ${dir}: ${(e as Error).message}`);
    }
    this.jobs = manager;
    const r = manager.recovery;
    if (r.interrupted.length || r.requeued.length || r.journal.torn || r.journal.damaged.length || r.write_error) {
      jlog.warn({ interrupted: r.interrupted, requeued: r.requeued, torn: r.journal.torn, damaged: r.journal.damaged, write_error: r.write_error }, 'job journal recovered');
    }
    this.unwatchJobs = manager.watch((e) => {
      this.bus.publish(jobEventToBus(e));
      // What the targets run changed: rescan the link once it is free, asking only the targets known
      // on it (the last scan's and the job's), so the scan ends as soon as they answered.
      if (e.type === 'job.finished' || e.type === 'job.canceled') {
        const known = new Set([...(this.inventory?.targets(e.job.link) ?? []), ...e.job.targets.map((x) => x.target)]);
        void this.inventory?.refresh(e.job.link, { targets: [...known] });
      }
    });
  }

  /**
   * A CAN node's PUB frames (value op 2) become `value.changed` events, on every CAN link this gateway
   * is on: a master link's own bus, else (a listener hub) a bus opened on that link for this alone (a
   * device's bus closes with a power cycle). The device is `<link>-<node>` (a topic level); PUBs from
   * this gateway's own devices are skipped (their engines already report every change).
   */
  private async startValueWatch(): Promise<void> {
    const firstCan = this.config.links.can[0]?.interface;
    const watched = new Set<string>();
    // A master link first: its bus is open already.
    for (const l of [...this.config.links.can].sort((x, y) => Number(y.role === 'master') - Number(x.role === 'master'))) {
      const link = linkName(l);
      if (watched.has(l.interface)) continue;
      watched.add(l.interface);
      const own = new Set(this.config.devices.filter((d) => d.node_id !== undefined && (d.can ?? firstCan) === l.interface).map((d) => d.node_id!));
      const flasher = this.flashers.get(link);
      let bus: CanBus;
      if (flasher instanceof CanFlasher) bus = flasher.bus;
      else {
        try {
          bus = await openCanBus(canAddress(l), canBusOptions(l));
        } catch (e) {
          this.fail(`links.can.${link}`, `CAN ${canAddress(l)}: ${(e as Error).message}`);
        }
        this.pubBuses.push(bus);
      }
      this.pubWatches.push(watchValuePubs(bus, (p) => {
        if (!own.has(p.node)) this.publishPub(link, p);
      }));
    }
  }

  private publishPub(link: string, p: ValuePub): void {
    this.bus.publish({
      type: 'value.changed',
      pid: null,
      phase: null,
      data: {
        device: topicLevel(`${link}-${p.node}`), link, node: p.node,
        oid: p.oid, group: p.group, id: p.id, name: null, unit: null, raw: p.raw, value: decodeF16(p.raw), cause: 'pub',
      },
    });
  }

  /** One retained document per target at `<prefix>/<gw>/device/<device>/inventory`. */
  private publishInventory(inv: LinkInventory, deviceOf: (link: string, target: string) => string | undefined): void {
    this.bus.publish({ type: 'inventory.scanned', pid: null, phase: null, data: { link: inv.link, targets: inv.entries.map((e) => e.target), error: inv.error } });
    // A failed scan learned nothing new: the retained documents keep the last good scan (with its time).
    if (!this.bridge || inv.error !== null) return;
    const topics = { prefix: this.config.mqtt?.topic_prefix ?? 'hsx', gatewayId: this.config.gateway.id };
    for (const e of inv.entries) {
      const device = targetTopicLevel(deviceOf, inv.link, e.target);
      this.bridge.publishRetained(deviceInventoryTopic(topics, device), JSON.stringify({ link: inv.link, ...e, scanned_ts: inv.scanned_ts }));
    }
  }

  /** Retained job documents (always, with MQTT) and the command topics (with `mqtt.commands`). */
  private startMqttJobs(): void {
    const m = this.config.mqtt;
    if (!this.bridge || !this.jobs) return;
    const entries = this.tokenEntries('mqtt');
    if (m?.commands && this.mqttUrlInUse && !this.embeddedBroker) {
      this.fleetPlane = new GatewayFleetPlane({
        urls: this.mqttUrlInUse,
        ...(m.username !== undefined ? { username: m.username } : {}),
        ...(m.password !== undefined ? { password: m.password } : {}),
        prefix: m.topic_prefix ?? 'hsx',
        gatewayId: this.config.gateway.id,
        cacheDir: this.config.gateway.state_dir ? join(this.config.gateway.state_dir, 'fleet-images') : null,
        maxImageBytes: this.config.control.max_image_bytes,
        log: this.log.child({ component: 'fleet' }),
      });
    }
    this.mqttJobs = new MqttJobCommands({
      bridge: this.bridge,
      topics: { prefix: m?.topic_prefix ?? 'hsx', gatewayId: this.config.gateway.id },
      jobs: this.jobs,
      commands: m?.commands ?? false,
      tokens: entries.length ? new TokenStore(entries) : null,
      audit: new AuditLog(this.log.child({ component: 'audit' }), () => Date.now()),
      imagesDir: this.config.control.images_dir,
      maxImageBytes: this.config.control.max_image_bytes,
      deviceName: deviceNamesFromConfig(this.config),
      logger: this.log.child({ component: 'mqtt-jobs' }),
      ...(this.fleetPlane ? { fleet: this.fleetPlane } : {}),
    });
    this.mqttJobs.start();
  }

  /** `val.set` requests over MQTT, through the one value rule (values.ts) and the job plane's token rule. */
  private startMqttValues(): void {
    const m = this.config.mqtt;
    if (!this.bridge || !m?.commands) return;
    const entries = this.tokenEntries('mqtt');
    this.mqttValues = new MqttValueCommands({
      bridge: this.bridge,
      topics: { prefix: m.topic_prefix ?? 'hsx', gatewayId: this.config.gateway.id },
      tokens: entries.length ? new TokenStore(entries) : null,
      audit: new AuditLog(this.log.child({ component: 'audit' }), () => Date.now()),
      device: (name) => {
        const d = this.devices.get(name);
        return d ? deviceTarget(d) : undefined;
      },
      devices: () => [...this.devices.keys()],
      canNode: (link, node) => {
        const bus = this.canValueBuses().get(link);
        return bus ? canTarget(link, bus, node) : undefined;
      },
      canLinks: () => [...this.canValueBuses().keys()],
      pidLocked: (pid) => this.control?.pidLocked(pid) ?? false,
      logger: this.log.child({ component: 'mqtt-values' }),
    });
    this.mqttValues.start();
  }

  private async startMqtt(urlOverride?: string): Promise<void> {
    const m = this.config.mqtt;
    if (!m && !urlOverride) return;
    let urls = urlOverride ? [urlOverride] : mqttUrls(m);
    let protocolVersion: 4 | 5 = m?.protocol_version ?? 5;
    if (!urlOverride && m?.embedded) {
      // Monitors log in with the control port's tokens (config entries and HSX_GATEWAY_TOKENS).
      const tokens = this.tokenEntries('mqtt');
      try {
        const brokerOpts: EmbeddedBrokerOptions = {
          port: m.embedded_port,
          topics: { prefix: m.topic_prefix, gatewayId: this.config.gateway.id },
          tokens,
          anonymousRead: m.anonymous_read,
          maxMessageBytes: m.max_message_bytes,
          maxRetained: m.max_retained,
          maxRetainedBytes: m.max_retained_bytes,
          maxConnections: m.max_connections,
          commands: m.commands,
          logger: this.log.child({ component: 'mqtt-broker' }),
        };
        if (m.client_id) brokerOpts.clientId = m.client_id;
        this.embeddedBroker = await startEmbeddedBroker(brokerOpts);
      } catch (e) {
        this.fail('mqtt', `embedded MQTT broker cannot listen on 127.0.0.1:${m.embedded_port}: ${(e as Error).message}`);
      }
      urls = [this.embeddedBroker.url];
      protocolVersion = 4;
    }
    if (urls.length === 0) return;
    const topics = { prefix: m?.topic_prefix ?? 'hsx', gatewayId: this.config.gateway.id };
    const opts: ConstructorParameters<typeof MqttBridge>[0] = {
      urls,
      topics,
      protocolVersion,
      qosTerminal: m?.qos_terminal ?? 1,
      qosProgress: m?.qos_progress ?? 0,
      bufferLimit: m?.buffer_limit ?? 10_000,
      logger: this.log.child({ component: 'mqtt' }),
      // The bridge's own warnings get their envelope from the bus, like every other event.
      events: this.bus,
    };
    if (m?.client_id) opts.clientId = m.client_id;
    if (m?.username !== undefined) opts.username = m.username;
    if (m?.password !== undefined) opts.password = m.password;
    if (this.embeddedBroker) {
      // The internal credential: random per start, held only here and in the broker, never logged.
      opts.clientId = this.embeddedBroker.internal.clientId;
      opts.username = this.embeddedBroker.internal.username;
      opts.password = this.embeddedBroker.internal.password;
    }
    if (m?.ca_file) opts.caFile = m.ca_file;
    if (m?.cert_file) opts.certFile = m.cert_file;
    if (m?.key_file) opts.keyFile = m.key_file;
    const bridge = new MqttBridge(opts);
    this.bridge = bridge;
    this.mqttUrlInUse = urls;
    const sub = this.bus.subscribe({
      // The bridge never refuses an event (it buffers on its own), so this depth is only a safety net.
      maxEvents: 2048,
      deliver: (ev: BusEvent) => {
        bridge.publishEvent(toBridgeEvent(ev));
        return true;
      },
    });
    this.unsubscribeBridge = () => this.bus.unsubscribe(sub.token);
    this.log.info({ url: urls[0], urls, topics: allTopics(topics) }, 'mqtt bridge started');
    // The broker may be down at start: the bridge buffers and keeps retrying, so don't fail.
    await bridge.waitConnected(3_000).catch((e: Error) => this.log.warn({ err: e.message }, 'mqtt broker not reachable yet; buffering events'));
  }

  private async startDevices(): Promise<void> {
    const setup = engineSetup(this.config.policy, this.config.engine);
    if (!setup.ok) this.fail('policy', setup.error.message);
    this.engineConfig = setup.value.config;
    // Refusals by policy also become audit lines in the log (who, what, verdict).
    const audit = this.log.child({ component: 'audit' });
    this.deviceEvents = withAuditLog(this.bus, (line) => audit.warn(line));
    // Every device listens on its bus before any boots, so one broadcast during boot reaches them all.
    for (const d of this.config.devices) await this.openOne(d);
    for (const d of this.config.devices) await this.bootOne(d);
    await this.awaitCanAnnouncements(this.config.devices);
  }

  /** Opens a device's files, starts its CAN listener and boots it. */
  private async bringUp(d: DeviceConfig): Promise<void> {
    await this.openOne(d);
    await this.bootOne(d);
    await this.awaitCanAnnouncements([d]);
  }

  private async openOne(d: DeviceConfig): Promise<void> {
    const geometry: Record<string, number> = {};
    if (d.flash.size !== undefined) geometry['flashSize'] = d.flash.size;
    if (d.flash.sector_size !== undefined) geometry['sectorSize'] = d.flash.sector_size;
    if (d.flash.page_size !== undefined) geometry['pageSize'] = d.flash.page_size;
    if (d.flash.endurance !== undefined) geometry['endurance'] = d.flash.endurance;
    if (d.fram.size !== undefined) geometry['framSize'] = d.fram.size;
    let dev: SimulatedDevice;
    try {
      dev = await openSimulatedDevice({
        name: d.name, stateDir: d.state_dir, geometry, events: this.deviceEvents, engineConfig: this.engineConfig, clock: this.clock,
        update: d.update, confirmWindowMs: this.config.boot.confirm_window_ms,
      });
    } catch (e) {
      this.fail(`devices.${d.name}`, `device ${d.name}: ${(e as Error).message}`);
    }
    const running: RunningDevice = { dev, listener: null, bus: null, report: null, verdicts: new EventEmitter(), uarts: [] };
    this.running.set(d.name, running);
    this.devices.set(d.name, dev);
    await this.startCanListener(d, running);
    await this.startUartListeners(d, running);
  }

  /**
   * An image a device of this gateway received goes into the content-addressed store
   * (`<state_dir>/images-by-sha/`, docs/delta.md): the base of a later delta from this gateway.
   */
  private keepReceivedImage(intake: { engine: { taskImage(pid: number): Uint8Array | undefined } }, pid: unknown): void {
    const dir = this.config.gateway.state_dir;
    if (!dir || typeof pid !== 'number') return;
    const bytes = intake.engine.taskImage(pid);
    if (bytes) void new ContentStore(stateImageDir(dir)).put(bytes).catch((e: unknown) => this.log.warn({ err: String(e) }, 'images-by-sha: cannot store a received image'));
  }

  /** Each `[[links.uart]]` listener feeds its device's engine from a serial port (a real cable or a pty). */
  private async startUartListeners(d: DeviceConfig, running: RunningDevice): Promise<void> {
    const intake = running.dev.intake;
    for (const link of this.config.links.uart.filter((l) => l.role === 'listener' && l.device === d.name)) {
      const log = this.log.child({ device: d.name, uart: link.port });
      const stop = new AbortController();
      let lastError = '';
      let listening = (): void => {};
      const ready = new Promise<null>((resolve) => (listening = () => resolve(null)));
      const done = runUartDevice({
        port: link.port,
        baud: link.baud,
        stateDir: d.state_dir,
        json: true,
        intake,
        signal: stop.signal,
        out: (line) => {
          const m = JSON.parse(line) as { event?: string; error?: { message?: string } };
          if (m.event === 'listening') listening();
          else if (m.event === 'ready') {
            log.info(m, 'uart listener');
            this.keepReceivedImage(intake, (m as { pid?: unknown }).pid);
          } else if (m.event === 'error') {
            lastError = m.error?.message ?? line;
            log.error(m, 'uart listener');
          } else log.info(m, 'uart listener');
        },
      });
      const early = await Promise.race([ready, done]);
      if (early !== null) this.fail(`links.uart.${link.port}`, `UART listener for ${d.name} on ${link.port}: ${lastError || `stopped with exit code ${early}`}`);
      running.uarts.push({ stop, done });
    }
  }

  private async bootOne(d: DeviceConfig): Promise<void> {
    const running = this.running.get(d.name)!;
    const dev = running.dev;
    const sources: ImageSourceTransport[] = [];
    if (this.config.boot.preload_dir) sources.push(preloadDirSource(this.config.boot.preload_dir));
    if (this.config.boot.sd_manifest) sources.push(sdManifestSource(this.config.boot.sd_manifest));
    const report = await bootDevice({
      device: dev,
      stateDir: d.state_dir,
      sources,
      events: this.bus,
      clock: this.clock,
      maxFailedBoots: this.config.boot.max_failed_boots,
      confirmWindowMs: this.config.boot.confirm_window_ms,
    });
    running.report = report;
    this.bootReports.set(d.name, report);
    // Damaged state the stores found when the device was opened (the same alerts went out as `boot.alert` events).
    for (const a of dev.storage.alerts) this.log.error({ device: d.name, reason: a.reason, file: a.file, offset: a.offset, action: a.action }, `boot alert: ${a.message}`);
    this.log.info({ device: d.name, restored: report.restored?.appName ?? null, loaded: report.loaded.length, failed: report.failed, halted: report.halted }, 'device booted');
  }

  private async startCanListener(d: DeviceConfig, running: RunningDevice): Promise<void> {
    if (d.node_id === undefined) return;
    const link = this.config.links.can.find((l) => l.interface === (d.can ?? this.config.links.can[0]?.interface));
    if (!link) return;
    const address = canAddress(link);
    let bus: CanBus;
    try {
      bus = await openCanBus(address, canBusOptions(link));
    } catch (e) {
      this.fail(`links.can.${link.interface}`, `CAN ${address}: ${(e as Error).message}`);
    }
    const listener = new CanListener({
      bus,
      node: d.node_id,
      // The device's intake stages, commits (to flash) and switches; CURRENT and UPDATED are successes.
      intake: running.dev.intake,
      source: `can:${link.interface}`,
      onEvent: (e) => {
        if (e.type === 'verdict') running.verdicts.emit('verdict', e);
      },
    });
    listener.start();
    // A hub this process hosts (the first process on a virtual:HOST:PORT address) cuts off flooders.
    bus.on('hub-cutoff', (e: { peer: string; reason: string; detail: string; bytesIn: number; framesIn: number }) =>
      this.log.warn({ link: link.interface, ...e }, 'virtual CAN hub: connection cut off'));
    running.bus = bus;
    running.listener = listener;
  }

  /**
   * The last boot source: a CAN master's transfer that starts within `boot.can_wait_ms`. The
   * listener loads (and persists) by itself; boot waits for its verdict so the device's boot
   * report and events say whether the bus delivered an image.
   */
  private async awaitCanAnnouncements(devices: DeviceConfig[]): Promise<void> {
    if (this.config.boot.can_wait_ms <= 0) return;
    await Promise.all(
      devices.map((d) => {
        const running = this.running.get(d.name);
        return running?.listener ? this.awaitCanAnnouncement(d.name, running) : undefined;
      }),
    );
  }

  private async awaitCanAnnouncement(name: string, running: RunningDevice): Promise<void> {
    const waitMs = this.config.boot.can_wait_ms;
    const verdict = await new Promise<{ status: string; reason: string } | null>((resolve) => {
      const timer = setTimeout(() => {
        running.verdicts.off('verdict', onVerdict);
        resolve(null);
      }, waitMs);
      const onVerdict = (v: { status: string; reason: string }) => {
        clearTimeout(timer);
        resolve(v);
      };
      running.verdicts.once('verdict', onVerdict);
    });
    const source = `can:${running.bus?.name ?? 'bus'}`;
    // READY (installed) and UPDATED loaded an image; CURRENT is a success that loaded nothing.
    const loaded = verdict !== null && (verdict.status === 'READY' || verdict.status === 'UPDATED');
    const failed = verdict !== null && !loaded && verdict.status !== 'CURRENT';
    this.bus.emit({
      type: 'boot.source',
      pid: null,
      phase: 'boot',
      data: { device: name, source, waited_ms: waitMs, images: verdict ? 1 : 0, loaded: loaded ? 1 : 0, ...(verdict?.status === 'CURRENT' ? { current: 1 } : {}), ...(failed ? { error: verdict.reason } : {}) },
    });
    if (failed) running.report?.failed.push({ source, error: verdict.reason });
  }

  /** Stops a device's listener, aborts its transfers and closes its files (what losing power does, minus the tearing). */
  private async bringDown(name: string, unflushed: StopReport['unflushed'] = [], deadline = Date.now() + 4_000): Promise<void> {
    const r = this.running.get(name);
    if (!r) return;
    this.running.delete(name);
    const left = (): number => Math.max(0, deadline - Date.now());
    const component = `devices.${name}`;
    r.report?.cancelConfirm();
    const rx = r.listener?.current;
    if (rx && !rx.verdict) unflushed.push({ component, what: `CAN transfer (session ${rx.session}) aborted at ${rx.held}/${rx.total} chunks` });
    r.listener?.stop();
    if (r.bus) {
      const closed = await within(r.bus.close(), Math.min(left(), 1_500));
      if (!closed.ok) unflushed.push({ component, what: `CAN bus ${r.bus.name} not closed cleanly: ${closed.error}` });
    }
    for (const u of r.uarts) {
      u.stop.abort();
      const done = await within(u.done, Math.min(left(), 1_000));
      if (!done.ok) unflushed.push({ component, what: `UART listener not stopped: ${done.error}` });
    }
    for (const s of r.dev.engine.sessions()) {
      unflushed.push({ component, what: `provisioning session ${s.sessionId} (${s.source}) aborted at ${s.bytesWritten}${s.totalBytes !== null ? `/${s.totalBytes}` : ''} bytes` });
      r.dev.engine.abort(s.sessionId, 'gateway_shutdown');
    }
    // The device files are what must survive: they get the rest of the time.
    const closed = await within(r.dev.close(), Math.max(left(), 250));
    if (!closed.ok) {
      this.log.error({ device: name, err: closed.error }, 'closing device files failed');
      unflushed.push({ component, what: `device files not closed: ${closed.error}` });
    }
    this.devices.delete(name);
  }

  /** Closes a device's files and opens and boots it again, as a power cycle would. */
  async powerCycle(name: string): Promise<SimulatedDevice> {
    const d = this.config.devices.find((x) => x.name === name);
    if (!d) throw new Error(`no device named ${name}`);
    await this.bringDown(name);
    await this.bringUp(d);
    return this.devices.get(name)!;
  }

  /**
   * The control server keeps one engine per device name for its whole life; this handle always
   * forwards to the device's current engine, so a power cycle does not strand its clients.
   */
  private controlHandle(name: string): ControlEngine {
    const device = () => {
      const dev = this.devices.get(name);
      if (!dev) throw new Error(`device ${name} is powered off`);
      return dev;
    };
    const e = () => device().engine;
    const intake = () => device().intake;
    return {
      loadImage: (bytes, opts) => e().loadImage(bytes, opts),
      begin: (opts) => e().begin(opts),
      write: (sid, seq, chunk) => e().write(sid, seq, chunk),
      end: (sid) => e().end(sid),
      abort: (sid, reason) => e().abort(sid, reason),
      unload: (pid) => e().unload(pid),
      ps: () => e().ps(),
      persist: (pid, mode) => e().persist(pid, mode),
      confirm: () => e().confirm(),
      rollback: (reason) => e().rollback(reason),
      // the executive's registry and value commands (exec-commands.ts, src/gateway/values.ts)
      get metadata() {
        return e().metadata;
      },
      pids: () => e().pids(),
      taskImage: (pid) => e().taskImage(pid),
      setValue: (oid, raw) => e().setValue(oid, raw),
      flushValues: () => device().storage.valueStore.flush(),
      intake: {
        load: (bytes, opts) => intake().load(bytes, opts),
        finishSession: (sid, opts) => intake().finishSession(sid, opts),
        rollback: (reason, admit) => intake().rollback(reason, admit),
      },
    };
  }

  private async startControl(portOverride?: number): Promise<void> {
    const [host = '127.0.0.1', portText = '9998'] = this.config.control.listen.split(':');
    const port = portOverride ?? Number(portText);
    const engines = new Map([...this.devices.keys()].map((name) => [name, this.controlHandle(name)]));
    const created = ControlServer.create({
      engines,
      bus: this.bus,
      clock: this.clock,
      host,
      port,
      tokens: this.config.control.tokens,
      maxLineBytes: this.config.control.max_line_bytes,
      limits: controlLimitsFromConfig(this.config.control),
      imagesDir: this.config.control.images_dir,
      // no point reading more of a file than the engine would accept
      maxImageBytes: Math.min(this.config.control.max_image_bytes, this.engineConfig.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES),
      logger: this.log.child({ component: 'control' }),
      auditLogger: this.log.child({ component: 'audit' }),
      info: { gateway: this.config.gateway.id, devices: [...this.devices.keys()], links: [...this.flashers.keys()] },
      ...(this.jobs ? { jobs: this.jobs } : {}),
      ...(this.inventory && this.flashers.size > 0 ? { inventory: this.inventory } : {}),
      valueBuses: () => this.canValueBuses(),
    });
    if (!created.ok) this.fail('control', created.error.message);
    const listening = await created.value.listen();
    if (!listening.ok) this.fail('control', listening.error.message);
    this.control = created.value;
  }

  /** The CAN master links' buses, for `val.get`/`val.set` of a node over the control port. */
  private canValueBuses(): Map<string, CanBus> {
    const out = new Map<string, CanBus>();
    for (const [name, f] of this.flashers) if (f instanceof CanFlasher) out.set(name, f.bus);
    return out;
  }

  controlAddress(): { host: string; port: number } | null {
    return this.control?.address() ?? null;
  }

  /** Where the live page and /metrics are served, or null. */
  httpAddress(): { host: string; port: number } | null {
    return this.page?.address() ?? null;
  }

  /** What the page shows of an in-process device: its last boot and its flash wear. */
  private deviceLocal(name: string, dev: SimulatedDevice): DeviceLocal {
    const flash = dev.storage.flash;
    let total = 0;
    let max = 0;
    for (let i = 0; i < flash.sectorCount; i++) {
      const n = flash.eraseCount(i);
      total += n;
      if (n > max) max = n;
    }
    const r = this.bootReports.get(name);
    return {
      boot: r ? { ok: r.ok, halted: r.halted, attempt: r.attempt, restored: r.restored?.appName ?? null, failed: r.failed.slice(0, 8) } : null,
      wear: { total_erases: total, max_erases: max, endurance: flash.endurance, ratio: Number.isFinite(flash.endurance) && flash.endurance > 0 ? max / flash.endurance : 0 },
    };
  }

  private startPageModel(): void {
    const deviceOf = deviceNamesFromConfig(this.config);
    this.pageModel = new PageModel({
      gatewayId: this.config.gateway.id,
      bus: this.bus,
      jobs: () => this.jobs,
      links: () => [...this.flashers.keys()],
      inventory: (link) => this.inventory?.get(link),
      deviceOf,
      localDevices: () => [...this.devices].map(([name, dev]) => ({ name, local: this.deviceLocal(name, dev) })),
      imagesDir: this.config.control.images_dir,
      tokensConfigured: () => this.control?.tokensConfigured ?? false,
      now: () => this.clock.now(),
    });
  }

  /** The live page and /metrics: after the control port, whose tokens and command path it uses. */
  private async startHttp(port: number): Promise<void> {
    const control = this.control;
    const model = this.pageModel;
    if (!control || !model) this.fail('http', 'the live page needs the control server');
    this.metrics = new GatewayMetrics({
      bus: this.bus,
      jobs: this.jobs,
      links: this.linkStats,
      devices: () => [...this.devices].map(([name, dev]) => {
        const w = this.deviceLocal(name, dev).wear;
        return { name, totalErases: w.total_erases, maxErases: w.max_erases, endurance: w.endurance };
      }),
      mqtt: () => this.bridge?.bufferTotals() ?? null,
      controlConnections: () => {
        const by: Record<string, number> = {};
        for (const c of this.control?.connectionsInfo() ?? []) by[c.role] = (by[c.role] ?? 0) + 1;
        return by;
      },
      pageStreams: () => this.page?.streamCount ?? 0,
    });
    const h = this.config.http;
    const page = new PageServer({
      host: h.host,
      port,
      maxStreams: h.max_streams,
      maxBodyBytes: h.max_body_bytes,
      bus: this.bus,
      control,
      model,
      metrics: this.metrics,
      logger: this.log.child({ component: 'http' }),
    });
    const listening = await page.listen();
    if (!listening.ok) this.fail('http', listening.error.message);
    this.page = page;
  }

  /** The step `stop()` is in (for a caller whose own deadline runs out first). */
  stopping: string | null = null;

  /**
   * Stops in reverse order: no new requests, no new frames, flush MQTT, close the device files.
   * Every step is bounded so that the whole takes at most `timeoutMs` (default 4 s) whatever the
   * broker, the links or the clients do; what could not be flushed or closed in time is returned
   * (and logged), never waited for.
   */
  async stop(opts: { timeoutMs?: number } = {}): Promise<StopReport> {
    const t0 = Date.now();
    const deadline = t0 + (opts.timeoutMs ?? 4_000);
    const left = (): number => Math.max(0, deadline - Date.now());
    const unflushed: StopReport['unflushed'] = [];
    if (this.page) {
      this.stopping = 'closing the live page';
      await within(this.page.close(), Math.min(left(), 500));
      this.page = null;
    }
    this.metrics?.close();
    this.metrics = null;
    this.pageModel?.close();
    this.pageModel = null;
    if (this.control) {
      this.stopping = 'closing the control server';
      const info = this.control.connectionsInfo().filter((c) => c.unreadBytes > 0);
      if (info.length > 0) {
        const bytes = info.reduce((n, c) => n + c.unreadBytes, 0);
        unflushed.push({ component: 'control', what: `${bytes} bytes of replies/events not read by ${info.length} client(s) (${info.map((c) => c.peer).join(', ')})` });
      }
      const closed = await within(this.control.close(), Math.min(left(), 1_000));
      if (!closed.ok) unflushed.push({ component: 'control', what: `control server not closed: ${closed.error}` });
    }
    this.control = null;
    // Jobs next: a running transfer is aborted (the journal keeps it IN_PROGRESS, so the next start
    // reports it interrupted, as after a crash), then the master links are closed.
    if (this.mqttValues) {
      this.stopping = 'stopping MQTT value commands';
      await within(this.mqttValues.stop(), Math.min(left(), 500));
      this.mqttValues = null;
    }
    if (this.mqttJobs) {
      this.stopping = 'stopping MQTT job commands';
      await within(Promise.resolve(this.mqttJobs.stop()), Math.min(left(), 500));
      this.mqttJobs = null;
    }
    if (this.fleetPlane) {
      await within(this.fleetPlane.close(), Math.min(left(), 500));
      this.fleetPlane = null;
    }
    this.unwatchJobs?.();
    this.unwatchJobs = null;
    for (const w of this.pubWatches) w.stop();
    this.pubWatches = [];
    for (const b of this.pubBuses.splice(0)) {
      const closed = await within(b.close(), Math.min(left(), 500));
      if (!closed.ok) unflushed.push({ component: 'links.can', what: `CAN bus ${b.name} (value watch) not closed cleanly: ${closed.error}` });
    }
    await within(this.inventory?.close() ?? Promise.resolve(), Math.min(left(), 1_500));
    this.inventory = null;
    if (this.jobs) {
      this.stopping = 'closing the job journal';
      const closed = await within(this.jobs.close(), Math.min(left(), 1_000));
      if (!closed.ok) unflushed.push({ component: 'jobs', what: `job service not closed: ${closed.error}` });
      this.jobs = null;
    }
    for (const [name, f] of this.flashers) {
      const closed = await within(f.close(), Math.min(left(), 500));
      if (!closed.ok) unflushed.push({ component: `links.${name}`, what: `master link not closed: ${closed.error}` });
    }
    this.flashers.clear();
    // Device files get most of the budget; MQTT keeps a share for its goodbye.
    const devicesDeadline = Date.now() + Math.max(250, left() - 1_500);
    for (const name of [...this.running.keys()]) {
      this.stopping = `stopping device ${name}`;
      await this.bringDown(name, unflushed, devicesDeadline);
    }
    this.unsubscribeBridge?.();
    this.unsubscribeBridge = null;
    if (this.bridge) {
      this.stopping = 'flushing MQTT';
      const url = this.bridge.url;
      const r = await within(this.bridge.stop(Math.max(100, left() - 300)), Math.max(200, left()));
      if (!r.ok) unflushed.push({ component: 'mqtt', what: `MQTT bridge to ${url} not stopped: ${r.error}` });
      else if (r.value.unsent > 0) {
        unflushed.push({ component: 'mqtt', what: `${r.value.unsent} message(s) not delivered to ${url}${r.value.connected ? '' : ' (broker not connected)'}` });
      }
    }
    this.bridge = null;
    if (this.embeddedBroker) {
      this.stopping = 'closing the embedded MQTT broker';
      const r = await within(this.embeddedBroker.close(), Math.max(100, left()));
      if (!r.ok) unflushed.push({ component: 'mqtt', what: `embedded broker not closed: ${r.error}` });
    }
    this.embeddedBroker = null;
    this.bus.close();
    this.stopping = null;
    const report: StopReport = { clean: unflushed.length === 0, unflushed, elapsedMs: Date.now() - t0 };
    for (const u of unflushed) this.log.warn({ component: u.component, elapsed_ms: report.elapsedMs }, `shutdown: ${u.what}`);
    return report;
  }
}

/** Bus events carry the device in `data.device` (see simulated-device.ts); MQTT topics want it apart. */
export function toBridgeEvent(ev: BusEvent): Parameters<MqttBridge['publishEvent']>[0] {
  const device = typeof ev.data['device'] === 'string' ? (ev.data['device'] as string) : undefined;
  // Events of no task step (job.*, inventory.*, warning, a CAN node's value.changed) keep phase null (docs/mqtt.md).
  const out = { ...ev } as Parameters<MqttBridge['publishEvent']>[0];
  if (device !== undefined) out.device = device;
  return out;
}
