/**
 * The `fleet` client's broker connection: standard MQTT 3.1.1, QoS 1, a persistent session (clean
 * session off, a stable client id) so QoS 1 messages for it survive a short cut; a list of broker URLs,
 * tried in order at connect. `snapshot()` reads what is retained under some filters: it subscribes,
 * then publishes a marker to a topic of its own and waits for it to come back, so every retained
 * message the broker sends for the filters has arrived before it (Mosquitto delivers in order on one
 * connection).
 */
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
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

export type Handler = (topic: string, payload: Buffer, retained: boolean) => void;

export class FleetMqtt {
  private readonly handlers = new Set<{ filter: string; fn: Handler }>();
  private syncN = 0;

  private constructor(readonly client: MqttClient, readonly url: string, readonly clientId: string, readonly prefix: string) {
    client.on('message', (topic, payload, packet) => {
      for (const h of [...this.handlers]) if (topicMatches(h.filter, topic)) h.fn(topic, payload, packet.retain);
    });
  }

  static async connect(o: FleetConnectOptions): Promise<FleetMqtt> {
    if (o.urls.length === 0) throw new Error('no broker: give --broker URL');
    const clientId = o.clientId ?? `hsx-fleet-${randomBytes(6).toString('hex')}`;
    const errors: string[] = [];
    for (const url of o.urls) {
      const opts: IClientOptions = {
        protocolVersion: 4,
        clientId,
        clean: !(o.persistent ?? true),
        reconnectPeriod: 500,
        connectTimeout: o.connectTimeoutMs ?? 5_000,
      };
      if (o.username !== undefined) opts.username = o.username;
      if (o.password !== undefined) opts.password = o.password;
      const client = mqtt.connect(url, opts);
      try {
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('connect timed out')), o.connectTimeoutMs ?? 5_000);
          client.once('connect', () => {
            clearTimeout(t);
            resolve();
          });
          client.once('error', (e) => {
            clearTimeout(t);
            reject(e);
          });
        });
        client.on('error', () => {});
        return new FleetMqtt(client, url, clientId, o.prefix);
      } catch (e) {
        errors.push(`${url}: ${(e as Error).message}`);
        await client.endAsync(true).catch(() => {});
      }
    }
    throw new Error(`no broker answered (${errors.join('; ')})`);
  }

  on(filter: string, fn: Handler): () => void {
    const h = { filter, fn };
    this.handlers.add(h);
    return () => this.handlers.delete(h);
  }

  /** Subscribes (again: mqtt.js would skip a filter it holds, and the broker re-sends retained messages only on a SUBSCRIBE). */
  async subscribe(filters: string[]): Promise<void> {
    const map: Record<string, unknown> = { resubscribe: true };
    for (const f of filters) map[f] = { qos: 1 };
    const granted = await this.client.subscribeAsync(map as unknown as Parameters<MqttClient['subscribeAsync']>[0]);
    const denied = granted.filter((g) => g.qos === 128);
    if (denied.length) throw new Error(`the broker refused the subscription to ${denied.map((g) => g.topic).join(', ')}`);
  }

  /** Waits until everything the broker sent before now has been handled (a marker round trip). */
  async sync(): Promise<void> {
    const topic = `${fleetRoot(this.prefix)}/sync/${this.clientId}`;
    const n = String(++this.syncN);
    let off: () => void = () => {};
    const back = new Promise<void>((resolve) => {
      off = this.on(topic, (_t, p) => {
        if (p.toString() === n) resolve();
      });
    });
    await this.subscribe([topic]);
    await this.client.publishAsync(topic, n, { qos: 1, retain: false });
    await back;
    off();
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
    await this.client.publishAsync(topic, payload, { qos: 1, retain });
  }

  async close(): Promise<void> {
    await this.client.endAsync();
  }
}
