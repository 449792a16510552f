/**
 * One MQTT connection over a list of broker URLs, shared by the gateway's bridge (bridge.ts), its fleet
 * side (fleet-plane.ts) and the `fleet` client (src/fleet/mqtt.ts): the first URL is tried first; when the
 * broker in use goes away (or a connect attempt fails) the next attempt goes to the next URL, round the
 * list. It is one mqtt.js client throughout (mqtt.js `servers`), so its handlers stay, its subscriptions
 * are made again on the new broker (mqtt.js `resubscribe`, clean sessions or a broker that had no session
 * for us), and QoS 1 messages in flight are sent again. What else a client keeps on the broker (retained
 * documents) it publishes again from its own 'connect' handler; `onConnect` says whether the broker is
 * another one than before (`failedOver`).
 */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

export interface BrokerServer {
  url: string;
  protocol: 'mqtt' | 'mqtts';
  host: string;
  port: number;
}

/** A broker URL (`mqtt://host[:port]` or `mqtts://…`) as host, port and protocol; throws naming what is wrong. */
export function parseBrokerUrl(url: string): BrokerServer {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`not a URL: ${JSON.stringify(url)} (expected mqtt://host:port or mqtts://host:port)`);
  }
  const protocol = u.protocol.replace(/:$/, '');
  if (protocol !== 'mqtt' && protocol !== 'mqtts') throw new Error(`${url}: expected an mqtt:// or mqtts:// URL`);
  if (!u.hostname) throw new Error(`${url}: no host`);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return { url, protocol, host, port: u.port ? Number(u.port) : protocol === 'mqtts' ? 8883 : 1883 };
}

/** Waits for `p`, at most `ms` (a timer keeps the process alive meanwhile, so it never exits with a wait unsettled). */
export function bounded(p: Promise<unknown>, ms: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))]).finally(() => clearTimeout(timer));
}

/**
 * Ends an mqtt.js client: a clean end when it is connected and `ms` > 0 (it waits for the broker, at most
 * `ms`), then a forced one when that did not end it. A clean end to a broker that went away
 * during a failover can wait for ever, and a CLI awaiting it exited with 13 (a top-level await unsettled).
 */
export async function endClient(client: MqttClient, ms: number): Promise<void> {
  if (client.connected && ms > 0) await bounded(client.endAsync().catch(() => {}), ms);
  if (!client.disconnected) await bounded(client.endAsync(true).catch(() => {}), 250);
}

export interface FailoverInfo {
  /** The URL of the broker just connected to. */
  url: string;
  /** Connected before, to another broker of the list. */
  failedOver: boolean;
}

export class FailoverClient {
  readonly client: MqttClient;
  readonly servers: BrokerServer[];
  /** Connections made to another broker than the one before. */
  failovers = 0;
  private last: string | null = null;
  private previous: string | null = null;

  constructor(urls: readonly string[], options: IClientOptions) {
    if (urls.length === 0) throw new Error('no broker URL');
    this.servers = urls.map(parseBrokerUrl);
    const opts: IClientOptions = { ...options, servers: this.servers.map((s) => ({ host: s.host, port: s.port, protocol: s.protocol })) };
    this.client = mqtt.connect(this.servers[0]!.url, opts);
    // Registered first, so `url` and `failovers` are right for every other 'connect' handler.
    this.client.on('connect', () => {
      const url = this.url;
      if (this.last !== null && this.last !== url) this.failovers++;
      this.previous = this.last;
      this.last = url;
    });
  }

  /** The broker of the current (or the last) connection attempt. */
  get url(): string {
    const o = this.client.options;
    const hit = this.servers.find((s) => s.host === o.host && s.port === Number(o.port) && s.protocol === o.protocol);
    return hit?.url ?? this.servers[0]!.url;
  }

  /** Every URL, in order. */
  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  /** `fn` on every connect, told the broker and whether it is another one than at the connect before. */
  onConnect(fn: (info: FailoverInfo) => void): void {
    this.client.on('connect', () => fn({ url: this.url, failedOver: this.previous !== null && this.previous !== this.url }));
  }

  /**
   * Resolves at the first connect; rejects once every URL has been tried and failed (each attempt
   * bounded by the client's `connectTimeout`), or after `timeoutMs`, with each URL's error.
   */
  waitConnected(timeoutMs: number): Promise<void> {
    if (this.client.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const errors = new Map<string, string>();
      let attempts = 0;
      const done = (err?: Error): void => {
        clearTimeout(timer);
        this.client.off('connect', onConnect);
        this.client.off('error', onError);
        this.client.off('close', onClose);
        if (err) reject(err);
        else resolve();
      };
      const why = (): string => this.urls.map((u) => `${u}: ${errors.get(u) ?? 'no answer'}`).join('; ');
      const onConnect = (): void => done();
      const onError = (e: Error): void => void errors.set(this.url, e.message);
      const onClose = (): void => {
        if (++attempts >= this.servers.length) done(new Error(`no broker answered (${why()})`));
      };
      const timer = setTimeout(() => done(new Error(`no broker answered within ${timeoutMs} ms (${why()})`)), timeoutMs);
      this.client.on('connect', onConnect);
      this.client.on('error', onError);
      this.client.on('close', onClose);
    });
  }
}
