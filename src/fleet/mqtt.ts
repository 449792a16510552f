/**
 * The `fleet` client's broker connection: standard MQTT 3.1.1, QoS 1, a persistent session (clean
 * session off, a stable client id) so QoS 1 messages for it survive a short cut; a list of broker URLs
 * (failover.ts: the next one when the broker in use goes away; subscriptions are made again there, and
 * retained messages this client published that the new broker lacks are published again). `snapshot()` reads what is retained under some filters: it subscribes,
 * then publishes a marker to a topic of its own and waits for it to come back, so every retained
 * message the broker sends for the filters has arrived before it (Mosquitto delivers in order on one
 * connection).
 */
import { randomBytes } from 'node:crypto';
import type { IClientOptions, MqttClient } from 'mqtt';
import { FailoverClient, endClient } from '../gateway/mqtt/failover.js';
import { topicMatches } from '../gateway/mqtt/bridge.js';
import { fleetRoot } from './rollout.js';

export interface FleetConnectOptions {
  urls: string[];
  prefix: string;
  clientId?: string;
  /** Keep the session on the broker (clean session off). Default true. */
  persistent?: boolean;
  username?: string;
  password?: string;
  connectTimeoutMs?: number;
}

/** A rollout document on the broker with a higher version than ours: someone wrote after us; keep theirs. */
function newerDoc(there: Buffer, ours: string | Buffer): boolean {
  try {
    const a = (JSON.parse(there.toString('utf8')) as { version?: unknown }).version;
    const b = (JSON.parse(Buffer.from(ours).toString('utf8')) as { version?: unknown }).version;
    return typeof a === 'number' && typeof b === 'number' && a >= b;
  } catch {
    return false;
  }
}

export type Handler = (topic: string, payload: Buffer, retained: boolean) => void;

export class FleetMqtt {
  private readonly handlers = new Set<{ filter: string; fn: Handler }>();
  private syncN = 0;
  /** Retained messages this client published (topic → payload): published again after a failover when the new broker lacks them. */
  private readonly owned = new Map<string, string | Buffer>();
  /** Every filter subscribed, made again at each reconnect. */
  private readonly subs = new Set<string>();
  private connects = 1;
  readonly client: MqttClient;
  /** Republishes after failovers so far (resolves when the last is done); for tests. */
  republished: Promise<number> = Promise.resolve(0);

  private constructor(readonly conn: FailoverClient, readonly clientId: string, readonly prefix: string) {
    this.client = conn.client;
    this.client.on('message', (topic, payload, packet) => {
      for (const h of [...this.handlers]) if (topicMatches(h.filter, topic)) h.fn(topic, payload, packet.retain);
    });
    conn.onConnect(({ failedOver }) => {
      // Our subscriptions again, ourselves (mqtt.js' own resubscribe is off: it takes a refusal silently, and
      // a NATS node refuses QoS 1 subscriptions for a while after another node of its cluster was lost).
      if (this.connects++ > 0 && this.subs.size) {
        this.subscribe([...this.subs], 30_000).catch(() => {
          // Still refused after 30 s: the connection is of no use; the next connect tries again (the next broker).
          this.client.stream?.destroy();
        });
      }
      if (failedOver) this.republished = this.republished.then(() => this.republishOwned()).catch(() => 0);
    });
  }

  /** The broker in use now. */
  get url(): string {
    return this.conn.url;
  }

  static async connect(o: FleetConnectOptions): Promise<FleetMqtt> {
    if (o.urls.length === 0) throw new Error('no broker: give --broker URL');
    const clientId = o.clientId ?? `hsx-fleet-${randomBytes(6).toString('hex')}`;
    const opts: IClientOptions = {
      protocolVersion: 4,
      clientId,
      clean: !(o.persistent ?? true),
      reconnectPeriod: 500,
      connectTimeout: o.connectTimeoutMs ?? 5_000,
      resubscribe: false,
    };
    if (o.username !== undefined) opts.username = o.username;
    if (o.password !== undefined) opts.password = o.password;
    const conn = new FailoverClient(o.urls, opts);
    try {
      await conn.waitConnected((o.connectTimeoutMs ?? 5_000) * o.urls.length + 500 * o.urls.length);
    } catch (e) {
      await conn.client.endAsync(true).catch(() => {});
      throw e;
    }
    return new FleetMqtt(conn, clientId, o.prefix);
  }

  /** After a failover: what we hold retained and the new broker has not (another broker of a cluster has it already). */
  private async republishOwned(): Promise<number> {
    if (this.owned.size === 0) return 0;
    const have = await this.snapshot([...this.owned.keys()]);
    let n = 0;
    for (const [topic, payload] of this.owned) {
      const there = have.get(topic);
      if (there && Buffer.compare(there, Buffer.from(payload)) === 0) continue;
      if (there && topic.startsWith(`${fleetRoot(this.prefix)}/rollouts/`) && newerDoc(there, payload)) continue;
      await this.client.publishAsync(topic, payload, { qos: 1, retain: true });
      n++;
    }
    return n;
  }

  on(filter: string, fn: Handler): () => void {
    const h = { filter, fn };
    this.handlers.add(h);
    return () => this.handlers.delete(h);
  }

  /**
   * Subscribes (again: mqtt.js would skip a filter it holds, and the broker re-sends retained messages only on a
   * SUBSCRIBE), and again at every reconnect. A refusal (SUBACK 0x80) is asked again for `patienceMs` before it is an error: a NATS
   * node refuses a QoS 1 subscription while its JetStream is busy (after another node was lost, under load).
   */
  async subscribe(filters: string[], patienceMs = 30_000): Promise<void> {
    for (const f of filters) this.subs.add(f);
    let left = filters;
    const deadline = Date.now() + patienceMs;
    for (let wait = 100; ; wait = Math.min(wait * 2, 2_000)) {
      const map: Record<string, unknown> = { resubscribe: true };
      for (const f of left) map[f] = { qos: 1 };
      const granted = await this.client.subscribeAsync(map as unknown as Parameters<MqttClient['subscribeAsync']>[0]).catch((e: Error & { packet?: { granted?: number[] } }) => {
        // mqtt.js rejects when every filter was refused: the same as a SUBACK of refusals.
        if (e.packet?.granted) return left.map((topic) => ({ topic, qos: 128 }));
        throw e;
      });
      const denied = granted.filter((g) => g.qos === 128).map((g) => g.topic);
      if (denied.length === 0) return;
      if (Date.now() + wait > deadline) throw new Error(`the broker refused the subscription to ${denied.join(', ')}`);
      left = denied;
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  /**
   * Waits until everything the broker sent before now has been handled (a marker round trip). A marker lost in a
   * failover (published to a broker that died, or back before the subscription was made again on the next one) is
   * sent again, with a new number, every 3 s, for up to 30 s; then it is an error.
   */
  async sync(): Promise<void> {
    const topic = `${fleetRoot(this.prefix)}/sync/${this.clientId}`;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const n = String(++this.syncN);
      let off: () => void = () => {};
      let timer: NodeJS.Timeout | undefined;
      const back = new Promise<boolean>((resolve) => {
        off = this.on(topic, (_t, p) => {
          if (p.toString() === n) resolve(true);
        });
        timer = setTimeout(() => resolve(false), 3_000);
      });
      try {
        await this.subscribe([topic]);
        // Not awaited: a publish cut by a failover is acknowledged only after the reconnect; the marker's own wait is bounded.
        this.client.publishAsync(topic, n, { qos: 1, retain: false }).catch(() => {});
        if (await back) return;
      } finally {
        clearTimeout(timer);
        off();
      }
      if (Date.now() > deadline) throw new Error('the broker did not send our sync marker back within 30 s');
    }
  }

  /** Every retained message under `filters` right now: topic → payload (empty payloads left out). */
  async snapshot(filters: string[]): Promise<Map<string, Buffer>> {
    const got = new Map<string, Buffer>();
    const offs = filters.map((f) =>
      this.on(f, (topic, payload) => {
        if (payload.length === 0) got.delete(topic);
        else got.set(topic, payload);
      }),
    );
    try {
      await this.subscribe(filters);
      await this.sync();
    } finally {
      for (const off of offs) off();
    }
    return got;
  }

  async publish(topic: string, payload: string | Buffer, retain: boolean): Promise<void> {
    if (retain) {
      if (payload.length === 0) this.owned.delete(topic);
      else this.owned.set(topic, payload);
    }
    await this.client.publishAsync(topic, payload, { qos: 1, retain });
  }

  async close(timeoutMs = 2_000): Promise<void> {
    await endClient(this.client, timeoutMs);
  }
}
