/**
 * Republishes the gateway's events on MQTT (layout in docs/mqtt.md). The bridge never blocks
 * the event producer: while the broker is away messages wait in a bounded OutageBuffer and are
 * flushed in order on reconnect. Availability is a retained `online` status with a Last Will
 * `offline`, so a subscriber sees a gateway that died without saying goodbye.
 *
 * Re-assert: the bridge subscribes to its own retained topics (`status`, `device/+/state`). A message
 * there that it did not publish (another client overwrote it; an external broker has no ACL of
 * ours) gets a warning naming the topic and the bridge's own last payload published again, at most
 * once per `reassertIntervalMs` per topic (later ones wait for the interval; the last word is ours).
 * On every (re)connect the bridge publishes all its retained topics again. With several broker URLs
 * (`urls`) a reconnect goes to the next broker when the one in use is gone (failover.ts); the same
 * re-subscribe and re-publish then fill the new broker in.
 *
 * For the job command plane (job-commands.ts) it also subscribes to command topics (`onCommands`,
 * again on every connect; retained snapshots are never taken for a request), publishes answers
 * (`publishAnswer`, MQTT 5 correlation data kept) and retained documents it may later clear
 * (`publishRetained`, `clearRetained`), all through the same outage buffer.
 */
import { readFileSync } from 'node:fs';
import type { IClientOptions, IClientPublishOptions, MqttClient } from 'mqtt';
import { FailoverClient, bounded, endClient } from './failover.js';
import type { EventEnvelope, EventPhase } from '../../engine/ports.js';
import { OutageBuffer, type BufferedMessage, type OutageCounters } from './outage-buffer.js';
import { deviceStateTopic, deviceValueTopic, eventTopic, statusTopic, type TopicRoot } from './topics.js';

/** Echoes of our own publishes still expected, per topic; older ones are forgotten beyond this. */
const MAX_PENDING_ECHOES = 16;

export interface BridgeLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface BridgeOptions {
  /** One broker (the same as `urls: [url]`). */
  url?: string;
  /** Brokers in order: the next one when the broker in use goes away (failover.ts). */
  urls?: string[];
  topics: TopicRoot;
  clientId?: string;
  username?: string;
  password?: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** 4 = MQTT 3.1.1 (needed for the embedded aedes broker), 5 = MQTT 5 (default). */
  protocolVersion?: 4 | 5;
  qosTerminal?: 0 | 1 | 2;
  qosProgress?: 0 | 1 | 2;
  bufferLimit?: number;
  reconnectPeriodMs?: number;
  /** Watch the retained topics and publish ours again when someone else overwrites them (default true). */
  reassert?: boolean;
  /** At most one re-assert per topic per this many ms (default 1000). */
  reassertIntervalMs?: number;
  logger?: BridgeLogger;
  /**
   * Where the bridge's own events (the `warning` after an outage that cost messages) go, so they
   * get the envelope (`seq`, `ts`) like every other event and come back through `publishEvent`:
   * the gateway passes its event bus. Without one they are published directly, with `seq` null.
   */
  events?: { publish(e: { type: string; pid: null; phase: null; data: Record<string, unknown> }): void };
}

/** Seconds (float), the unit of every `ts` the gateway publishes. */
const nowSeconds = (): number => Date.now() / 1000;

/**
 * The availability document: the same keys online, at a clean shutdown and in the Last Will
 * (`reason` null while online; `ts` null in the will: the broker sends it when it notices, a time
 * the gateway cannot know when it writes the will).
 */
export function statusPayload(state: 'online' | 'offline', reason: string | null, ts: number | null): string {
  return JSON.stringify({ state, reason, ts, pid: process.pid });
}

/**
 * An event as the bridge sees it: the engine envelope plus the device it happened on. Gateway-made
 * events (`job.*`, `warning`) have a type of their own and may have no phase.
 */
export type BridgeEvent = Omit<EventEnvelope, 'type' | 'phase'> & { type: string; phase: EventPhase | null; device?: string };

const DROPPABLE = new Set(['provisioning.progress', 'job.progress']);

/** A request on a command topic (`onCommands`), with the MQTT 5 request/response properties when present. */
export interface CommandMessage {
  topic: string;
  payload: Buffer;
  /** MQTT 5: where the requester wants the answer too. */
  responseTopic?: string;
  /** MQTT 5: opaque bytes to copy into the answer. */
  correlationData?: Buffer;
}

/** A buffered message that may carry MQTT 5 properties (kept on the same object through the outage buffer). */
interface OutMessage extends BufferedMessage {
  properties?: IClientPublishOptions['properties'];
}

/** MQTT topic filter match (`+` one level, `#` the rest). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export interface BridgeStats extends OutageCounters {
  published: number;
  refused: number;
  connected: boolean;
  reconnects: number;
  /** Reconnects that went to another broker of the list. */
  failovers: number;
  /** Retained messages of ours that someone else overwrote and that were published again. */
  reasserted: number;
}

const silentLogger: BridgeLogger = { info() {}, warn() {}, error() {} };

export class MqttBridge {
  private readonly client: MqttClient;
  private readonly conn: FailoverClient;
  private readonly buffer: OutageBuffer;
  private readonly log: BridgeLogger;
  private published = 0;
  private refused = 0;
  private reconnects = 0;
  private connectedOnce = false;
  private stopping = false;
  /** QoS 1/2 messages handed to the client and not acknowledged yet. */
  private inflight = 0;
  private inflightDrained: Array<() => void> = [];
  /** Our retained topics → the last payload we published there (what we re-assert). */
  private readonly owned = new Map<string, { payload: string; qos: 0 | 1 | 2 }>();
  /** Per retained topic, payloads we published whose echo has not come back yet. */
  private readonly pendingEchoes = new Map<string, string[]>();
  private readonly lastReassert = new Map<string, number>();
  private readonly reassertTimers = new Map<string, NodeJS.Timeout>();
  private reasserted = 0;
  /** Command topic filters → handlers (`onCommands`); subscribed on every connect. */
  private readonly commandHandlers = new Map<string, (m: CommandMessage) => void>();
  /** Per device, its retained value topics and the task (PID, null: a CAN node's PUB) that owns each. */
  private readonly deviceValues = new Map<string, Map<string, number | null>>();
  /** Finds the device of an event that names none (job progress names a job and a target). */
  private deviceResolver: ((e: BridgeEvent) => string | undefined) | null = null;

  constructor(private readonly opts: BridgeOptions) {
    this.log = opts.logger ?? silentLogger;
    this.buffer = new OutageBuffer(opts.bufferLimit ?? 10_000);
    const status = statusTopic(opts.topics);
    const clientOpts: IClientOptions = {
      protocolVersion: opts.protocolVersion ?? 5,
      clientId: opts.clientId ?? `hsx-gateway-${opts.topics.gatewayId}-${process.pid}`,
      reconnectPeriod: opts.reconnectPeriodMs ?? 500,
      connectTimeout: 5_000,
      queueQoSZero: false,
      will: { topic: status, payload: Buffer.from(statusPayload('offline', 'connection_lost', null)), qos: 1, retain: true },
    };
    if (opts.username !== undefined) clientOpts.username = opts.username;
    if (opts.password !== undefined) clientOpts.password = opts.password;
    if (opts.caFile) clientOpts.ca = readFileSync(opts.caFile);
    if (opts.certFile) clientOpts.cert = readFileSync(opts.certFile);
    if (opts.keyFile) clientOpts.key = readFileSync(opts.keyFile);
    const urls = opts.urls?.length ? opts.urls : opts.url ? [opts.url] : [];
    this.conn = new FailoverClient(urls, clientOpts);
    this.client = this.conn.client;
    this.conn.onConnect(({ url, failedOver }) => {
      if (failedOver) this.log.warn({ url, failovers: this.conn.failovers }, `mqtt: failed over to ${url}; subscribing and publishing our retained documents again`);
      this.onConnect();
    });
    this.client.on('message', (topic, payload, packet) => {
      if (this.onCommand(topic, payload, packet)) return;
      this.onMessage(topic, payload, packet.retain);
    });
    this.client.on('close', () => {
      this.online = false;
      if (!this.stopping && this.connectedOnce) this.log.warn({ url: this.conn.url, buffered: this.buffer.size }, 'mqtt broker connection lost; buffering events');
    });
    this.client.on('error', (e) => this.log.error({ url: this.conn.url, err: e.message }, 'mqtt error'));
  }

  /** Resolves once connected (or rejects after `timeoutMs`); the bridge keeps retrying either way. */
  waitConnected(timeoutMs = 5_000): Promise<void> {
    if (this.client.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('connect', onConnect);
        reject(new Error(`mqtt: no connection to ${this.conn.urls.join(' or ')} within ${timeoutMs} ms`));
      }, timeoutMs);
      const onConnect = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('connect', onConnect);
    });
  }

  /**
   * Connected and the outage backlog flushed. mqtt.js sets `client.connected` at CONNACK, before it
   * replays its own store and emits 'connect' (where the backlog goes out): a message sent directly
   * in that gap would overtake the backlog, so until then new messages join the buffer's tail.
   */
  private online = false;

  private onConnect(): void {
    if (this.connectedOnce) this.reconnects++;
    this.connectedOnce = true;
    const status = statusTopic(this.opts.topics);
    if (this.opts.reassert ?? true) {
      // Our own retained topics, to notice when someone else overwrites them. (The retained
      // snapshot the broker sends with the SUBACK predates what we publish below: ignored.)
      this.client.subscribe([status, deviceStateTopic(this.opts.topics, '+')], { qos: 0 }, (err, granted) => {
        const denied = (granted ?? []).filter((g) => g.qos >= 0x80).map((g) => g.topic);
        if (err || denied.length) this.log.warn({ err: err?.message, denied }, 'mqtt: cannot watch our retained topics; overwrites by other clients will not be re-asserted');
      });
    }
    this.subscribeCommands([...this.commandHandlers.keys()]);
    this.send({ topic: status, payload: statusPayload('online', null, nowSeconds()), qos: 1, retain: true, terminal: true });
    // Our retained device states again: the broker may have lost them, or someone replaced them while we were away.
    for (const [topic, m] of this.owned) {
      if (topic !== status && !this.buffer.hasRetained(topic)) this.send({ topic, payload: m.payload, qos: m.qos, retain: true, terminal: true });
    }
    const backlog = this.buffer.drain();
    const lost = this.buffer.takeCounters();
    for (const m of backlog) this.send(m);
    // From here on messages go straight out: the backlog is ahead of them.
    this.online = true;
    if (backlog.length || lost.droppedProgress || lost.droppedTerminal) {
      this.log.info({ flushed: backlog.length, droppedProgress: lost.droppedProgress, droppedTerminal: lost.droppedTerminal }, 'mqtt reconnected; flushed buffered events');
    }
    if (lost.droppedProgress || lost.droppedTerminal) {
      const warning = { type: 'warning', pid: null, phase: null, data: { reason: 'mqtt_buffer_overflow', dropped_progress: lost.droppedProgress, dropped_terminal: lost.droppedTerminal } };
      if (this.opts.events) this.opts.events.publish(warning);
      else this.publishEvent({ seq: null as unknown as number, ts: nowSeconds(), ...warning });
    }
  }

  /** Publishes one event (and the retained device state when an image reached READY). */
  publishEvent(e: BridgeEvent): void {
    if (e.device === undefined && this.deviceResolver) {
      const device = this.deviceResolver(e);
      if (device !== undefined) e = { ...e, device };
    }
    const droppable = DROPPABLE.has(e.type);
    const qos = droppable ? (this.opts.qosProgress ?? 0) : (this.opts.qosTerminal ?? 1);
    this.enqueue({ topic: eventTopic(this.opts.topics, e.type, e.device), payload: JSON.stringify(e), qos, retain: false, terminal: !droppable });
    if (e.device === undefined) return;
    if (e.type === 'provisioning.complete') {
      const d = e.data;
      const state = {
        pid: e.pid,
        app_name: d['app_name'] ?? null,
        version: d['version'] ?? null,
        crc32: d['crc32'] ?? null,
        sha256: d['sha256'] ?? null,
        source: d['source'] ?? null,
        ts: e.ts,
        seq: e.seq,
      };
      this.enqueue({ topic: deviceStateTopic(this.opts.topics, e.device), payload: JSON.stringify(state), qos: this.opts.qosTerminal ?? 1, retain: true, terminal: true });
    } else if (e.type === 'value.changed') {
      this.publishValue(e.device, e);
    } else if (e.type === 'provisioning.unloaded' && e.pid !== null) {
      // The task's values went with it: their retained topics are cleared (unless a newer task has them).
      const values = this.deviceValues.get(e.device);
      for (const [topic, pid] of values ?? []) {
        if (pid !== e.pid) continue;
        values!.delete(topic);
        this.clearRetained(topic);
      }
    }
  }

  /** Retained `device/<d>/values/<group>:<id>`: `{value, f16, unit, name, ts}` (docs/mqtt.md). */
  private publishValue(device: string, e: BridgeEvent): void {
    const d = e.data;
    const group = d['group'];
    const id = d['id'];
    const raw = d['raw'];
    if (typeof group !== 'number' || typeof id !== 'number' || typeof raw !== 'number') return;
    const topic = deviceValueTopic(this.opts.topics, device, group, id);
    const payload = { value: d['value'] ?? null, f16: raw, unit: d['unit'] ?? null, name: d['name'] ?? null, ts: e.ts };
    let values = this.deviceValues.get(device);
    if (!values) this.deviceValues.set(device, (values = new Map()));
    values.set(topic, e.pid);
    this.enqueue({ topic, payload: JSON.stringify(payload), qos: this.opts.qosTerminal ?? 1, retain: true, terminal: true });
  }

  /**
   * Events that name no device get one from `fn` when it returns one (the job command plane maps a
   * job's progress to the target's device); one resolver, the last set wins; null removes it.
   */
  setDeviceResolver(fn: ((e: BridgeEvent) => string | undefined) | null): void {
    this.deviceResolver = fn;
  }

  /**
   * Subscribes (QoS 1) to command topic filters, now if connected and again on every connect, and
   * hands each live message to `handler`. A retained message (the broker's stored copy, sent on
   * subscribing) is never a request and is ignored. Returns the unsubscribe.
   */
  onCommands(filters: readonly string[], handler: (m: CommandMessage) => void): () => void {
    for (const f of filters) this.commandHandlers.set(f, handler);
    if (this.client.connected) this.subscribeCommands(filters);
    return () => {
      const mine = filters.filter((f) => this.commandHandlers.get(f) === handler);
      for (const f of mine) this.commandHandlers.delete(f);
      if (mine.length && this.client.connected && !this.stopping) this.client.unsubscribe(mine);
    };
  }

  /** The command topic filters subscribed (or to subscribe on connect). */
  commandFilters(): string[] {
    return [...this.commandHandlers.keys()];
  }

  /**
   * A refused filter is asked again while connected (1 s, 2 s, 4 s, then every 8 s): a NATS node refuses QoS 1
   * subscriptions while its JetStream is busy, e.g. for a while after another node of the cluster was lost. After
   * 30 s of refusals the connection is dropped, so the next connect goes to the next broker of the list.
   */
  private subscribeCommands(filters: readonly string[], attempt = 0, since = Date.now()): void {
    if (filters.length === 0) return;
    this.client.subscribe([...filters], { qos: 1 }, (err, granted) => {
      const denied = (granted ?? []).filter((g) => g.qos >= 0x80).map((g) => g.topic);
      const again = (denied.length ? denied : err ? [...filters] : []).filter((f) => this.commandHandlers.has(f));
      if (again.length === 0 || this.stopping) return;
      if (Date.now() - since > 30_000 && this.conn.servers.length > 1) {
        this.log.error({ err: err?.message, denied: again, url: this.conn.url }, 'mqtt: the broker keeps refusing the command topics; trying the next broker');
        this.client.stream?.destroy();
        return;
      }
      const log = attempt === 3 ? 'error' : 'warn';
      this.log[log]({ err: err?.message, denied: again, attempt: attempt + 1 }, 'mqtt: the broker refused the command topics; asking again (MQTT commands are not received meanwhile)');
      const timer = setTimeout(() => {
        if (this.client.connected && !this.stopping) this.subscribeCommands(again, attempt + 1, since);
      }, 1_000 * 2 ** Math.min(attempt, 3));
      timer.unref();
    });
  }

  /**
   * An answer to a request: not retained, QoS `qosTerminal`, kept through an outage like a terminal
   * event. `correlationData` (MQTT 5) is copied into the message's properties.
   */
  publishAnswer(topic: string, payload: string, opts: { correlationData?: Buffer } = {}): void {
    const m: OutMessage = { topic, payload, qos: this.opts.qosTerminal ?? 1, retain: false, terminal: true };
    if (opts.correlationData !== undefined && (this.opts.protocolVersion ?? 5) === 5) m.properties = { correlationData: opts.correlationData };
    this.enqueue(m);
  }

  /**
   * A retained document of ours (QoS `qos`, default `qosTerminal`): the newest per topic wins through
   * an outage, and it is published again on every reconnect until `clearRetained`.
   */
  publishRetained(topic: string, payload: string, qos: 0 | 1 | 2 = this.opts.qosTerminal ?? 1): void {
    this.enqueue({ topic, payload, qos, retain: true, terminal: true });
  }

  /** Clears a retained topic (an empty retained message) and stops re-publishing it. */
  clearRetained(topic: string, qos: 0 | 1 | 2 = this.opts.qosTerminal ?? 1): void {
    this.enqueue({ topic, payload: '', qos, retain: true, terminal: true });
  }

  private enqueue(m: BufferedMessage): void {
    if (this.online) this.send(m);
    else {
      // Known at once as our newest retained word for the topic (sent when the buffer flushes).
      if (m.retain) this.remember(m.topic, m.payload, m.qos, false);
      this.buffer.push(m);
    }
  }

  private send(m: OutMessage): void {
    if (m.retain) this.remember(m.topic, m.payload, m.qos);
    const publishOpts: IClientPublishOptions = { qos: m.qos, retain: m.retain };
    if (m.properties) publishOpts.properties = m.properties;
    if (m.qos === 0) {
      // QoS 0 has no acknowledgement to wait for; a callback would only cost time per message.
      this.client.publish(m.topic, m.payload, publishOpts);
      this.published++;
      return;
    }
    this.inflight++;
    this.client.publish(m.topic, m.payload, publishOpts, (err) => {
      this.inflight--;
      if (this.inflight === 0) for (const f of this.inflightDrained.splice(0)) f();
      if (!err) {
        this.published++;
        return;
      }
      const code = (err as Error & { code?: number }).code;
      if (typeof code === 'number' && code >= 0x80) {
        // The broker answered and said no (MQTT 5 reason code, e.g. 135 not authorized): retrying won't help.
        this.refused++;
        this.log.error({ topic: m.topic, reasonCode: code, err: err.message }, `mqtt publish to ${m.topic} refused by the broker`);
        return;
      }
      // Lost with the connection: keep it for the next connect, unless a newer retained payload for
      // its topic has been published or buffered since (the last retained word must win).
      if (m.retain && (this.owned.get(m.topic)?.payload ?? '') !== m.payload) return;
      this.buffer.push(m);
    });
  }

  /** Retained topics we watch for overwrites (and so expect echoes on). */
  private watched(topic: string): boolean {
    return topic === statusTopic(this.opts.topics) || topicMatches(deviceStateTopic(this.opts.topics, '+'), topic);
  }

  /**
   * A retained message of ours on its way: what we re-publish on reconnect (and re-assert, on the
   * watched topics), and an echo to expect. An empty payload clears the topic: nothing to re-publish.
   */
  private remember(topic: string, payload: string, qos: 0 | 1 | 2, expectEcho = true): void {
    if (payload === '') {
      this.owned.delete(topic);
      this.pendingEchoes.delete(topic);
      this.lastReassert.delete(topic);
      return;
    }
    this.owned.set(topic, { payload, qos });
    if (!expectEcho || !this.watched(topic)) return;
    const pending = this.pendingEchoes.get(topic) ?? [];
    pending.push(payload);
    if (pending.length > MAX_PENDING_ECHOES) pending.shift();
    this.pendingEchoes.set(topic, pending);
  }

  /** A message on a command topic goes to its handler (true), whatever else it is. */
  private onCommand(topic: string, payload: Buffer, packet: { retain: boolean; properties?: { responseTopic?: string; correlationData?: Buffer } }): boolean {
    let handler: ((m: CommandMessage) => void) | undefined;
    for (const [f, h] of this.commandHandlers) if (topicMatches(f, topic)) handler = h;
    if (!handler) return false;
    if (this.stopping) return true;
    if (packet.retain) {
      this.log.warn({ topic }, `mqtt: a retained message on command topic ${topic} ignored (a request is never taken from the broker's store); clear it`);
      return true;
    }
    const m: CommandMessage = { topic, payload };
    const props = packet.properties;
    if (typeof props?.responseTopic === 'string') m.responseTopic = props.responseTopic;
    if (props?.correlationData !== undefined) m.correlationData = Buffer.from(props.correlationData);
    try {
      handler(m);
    } catch (e) {
      this.log.error({ topic, err: (e as Error).message }, 'mqtt: command handler failed');
    }
    return true;
  }

  private onMessage(topic: string, payload: Buffer, retain: boolean): void {
    if (this.stopping) return;
    const mine = this.owned.get(topic);
    // A retained message is the snapshot sent on subscribing: older than what we publish on connect.
    if (!mine || retain) return;
    const text = payload.toString();
    const pending = this.pendingEchoes.get(topic);
    const at = pending ? pending.indexOf(text) : -1;
    if (pending && at >= 0) {
      // Our own message coming back (and any older echoes before it will not come any more).
      pending.splice(0, at + 1);
      return;
    }
    if (text === mine.payload) return;
    this.log.warn({ topic, by: 'another client' }, `mqtt: retained ${topic} overwritten by another client; re-asserting the gateway's own`);
    this.scheduleReassert(topic);
  }

  private scheduleReassert(topic: string): void {
    if (this.reassertTimers.has(topic)) return;
    const interval = this.opts.reassertIntervalMs ?? 1_000;
    const wait = Math.max(0, (this.lastReassert.get(topic) ?? -Infinity) + interval - Date.now());
    const run = (): void => {
      this.reassertTimers.delete(topic);
      const mine = this.owned.get(topic);
      if (!mine || this.stopping) return;
      this.lastReassert.set(topic, Date.now());
      this.reasserted++;
      this.enqueue({ topic, payload: mine.payload, qos: mine.qos, retain: true, terminal: true });
    };
    if (wait === 0) run();
    else this.reassertTimers.set(topic, setTimeout(run, wait));
  }

  /** The outage buffer's depth now and its drops since the bridge started (the page's /metrics). */
  bufferTotals(): { buffered: number; droppedProgress: number; droppedTerminal: number } {
    const t = this.buffer.droppedTotals();
    return { buffered: this.buffer.size, droppedProgress: t.progress, droppedTerminal: t.terminal };
  }

  stats(): BridgeStats {
    return { ...this.buffer.counters(), published: this.published, refused: this.refused, connected: this.online, reconnects: this.reconnects, failovers: this.conn.failovers, reasserted: this.reasserted };
  }

  /** The broker in use now (or tried last). */
  get url(): string {
    return this.conn.url;
  }

  /** Every broker URL, in order. */
  get urls(): string[] {
    return this.conn.urls;
  }

  /** Connections made to another broker than the one before. */
  get failovers(): number {
    return this.conn.failovers;
  }

  /**
   * Clean shutdown within `timeoutMs` (default 2 s): wait for the messages in flight to be
   * acknowledged, say `offline` ourselves (the will is only for deaths), disconnect. A broker that
   * does not answer in time is dropped; `unsent` counts what it never acknowledged (buffered
   * during an outage, or in flight), so the caller can say what was lost.
   */
  async stop(timeoutMs = 2_000): Promise<{ unsent: number; connected: boolean }> {
    this.stopping = true;
    for (const timer of this.reassertTimers.values()) clearTimeout(timer);
    this.reassertTimers.clear();
    const deadline = Date.now() + timeoutMs;
    const left = (): number => Math.max(0, deadline - Date.now());
    const connected = this.client.connected;
    if (connected) {
      if (this.inflight > 0) await bounded(new Promise<void>((r) => this.inflightDrained.push(r)), left() / 2);
      await bounded(
        new Promise<void>((resolve) => {
          this.client.publish(statusTopic(this.opts.topics), statusPayload('offline', 'shutdown', nowSeconds()), { qos: 1, retain: true }, () => resolve());
        }),
        left(),
      );
    }
    const unsent = this.buffer.size + this.inflight;
    // A clean end waits for the broker; a broker that said nothing in time gets a forced one.
    await endClient(this.client, this.client.connected && this.inflight === 0 ? Math.max(50, left()) : 0);
    return { unsent, connected };
  }
}
