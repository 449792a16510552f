/**
 * The gateway's side of fleet rollouts (docs/fleet.md): for an MQTT job request that names a rollout,
 * the rollout document on the broker must say that rollout is running that wave with a target on this
 * gateway (so a late or replayed request of a paused or cancelled rollout is refused); an image named by
 * SHA-256 is fetched from `<prefix>/fleet/images/<sha256>`, verified, and cached in
 * `<state_dir>/fleet-images/` (a cached, intact copy is never fetched again).
 *
 * It also follows the rollout documents: a job of a rollout still QUEUED here when its rollout stops running
 * that wave (paused, cancelled, a hand-edited invalid document, or found so when the gateway comes back) is
 * cancelled before it starts (`watchRollouts`, used by job-commands.ts).
 *
 * It uses a connection of its own to the gateway's brokers (clean session; the bridge's client stays
 * as it is; the same URL list and failover), opened at the first request.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FleetMqtt } from '../fleet/mqtt.js';
import { assembleImage, sha256Hex } from '../fleet/images.js';
import { FleetError, checkRolloutDoc, imageTopic, rolloutFilter, rolloutTopic, validRolloutId, type RolloutDoc } from '../fleet/rollout.js';

export interface FleetPlaneOptions {
  /** The gateway's brokers (`mqtt.urls`), in order: failover as the bridge's. */
  urls: string[];
  username?: string;
  password?: string;
  prefix: string;
  gatewayId: string;
  /** Where fetched images are kept (`<state_dir>/fleet-images`); none: fetched every time. */
  cacheDir: string | null;
  maxImageBytes: number;
  /** How long a rollout document or image that is missing, or a document a wave behind, is read again before refusing (default 3000 ms). */
  replicationWaitMs?: number;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

export interface RolloutRef {
  id: string;
  wave: number;
}

export class GatewayFleetPlane {
  private conn: Promise<FleetMqtt> | null = null;
  /** Fetches from the broker (not the cache) so far; for tests and the log. */
  fetches = 0;

  constructor(private readonly o: FleetPlaneOptions) {}

  private mqtt(): Promise<FleetMqtt> {
    if (!this.conn) {
      const c: Parameters<typeof FleetMqtt.connect>[0] = { urls: this.o.urls, prefix: this.o.prefix, persistent: false, clientId: `hsx-gateway-${this.o.gatewayId}-fleet-${process.pid}` };
      if (this.o.username !== undefined) c.username = this.o.username;
      if (this.o.password !== undefined) c.password = this.o.password;
      this.conn = FleetMqtt.connect(c);
      this.conn.catch(() => (this.conn = null));
    }
    return this.conn;
  }

  /** The request's `rollout` field checked against the retained rollout document; throws FleetError. */
  async checkRollout(raw: unknown): Promise<RolloutRef> {
    const r = raw as Record<string, unknown> | null;
    if (r === null || typeof r !== 'object' || Array.isArray(r) || typeof r['id'] !== 'string' || !validRolloutId(r['id']) || !Number.isSafeInteger(r['wave']) || (r['wave'] as number) < 0) {
      throw new FleetError('EINVAL', 'bad_rollout', 'rollout must be {"id": a rollout id, "wave": an index ≥ 0}', 'rollout');
    }
    const ref = { id: r['id'] as string, wave: r['wave'] as number };
    // On a broker cluster a retained document reaches the other nodes a little after the request that
    // follows it (NATS: through JetStream): a document not there yet, or one wave behind, is read again for a
    // while before the request is refused. A paused, cancelled or invalid one is refused at once.
    try {
      return await this.whileBehind(() => this.checkOnce(ref), (e) => e.reason === 'unknown_rollout' || e.reason === 'stale_wave_behind');
    } catch (e) {
      if (e instanceof FleetError && e.reason === 'stale_wave_behind') throw new FleetError('ESTALE', 'stale_wave', e.message, 'rollout');
      throw e;
    }
  }

  /** `fn` again (50 ms, doubling to 1 s) while it fails with a FleetError `behind` accepts, up to `replicationWaitMs`. */
  private async whileBehind<T>(fn: () => Promise<T>, behind: (e: FleetError) => boolean): Promise<T> {
    const deadline = Date.now() + (this.o.replicationWaitMs ?? 3_000);
    for (let wait = 50; ; wait = Math.min(wait * 2, 1_000)) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof FleetError) || !behind(e) || Date.now() + wait > deadline) throw e;
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private async checkOnce(ref: RolloutRef): Promise<RolloutRef> {
    const topic = rolloutTopic(this.o.prefix, ref.id);
    const got = await (await this.mqtt()).snapshot([topic]);
    const payload = got.get(topic);
    if (!payload) throw new FleetError('ESTALE', 'unknown_rollout', `no rollout document ${ref.id} on the broker`, 'rollout');
    let doc;
    try {
      doc = checkRolloutDoc(JSON.parse(payload.toString('utf8')), ref.id);
    } catch (e) {
      if (e instanceof FleetError) throw new FleetError('ESTALE', 'bad_rollout_doc', `rollout ${ref.id}: ${e.message}`, 'rollout');
      throw new FleetError('ESTALE', 'bad_rollout_doc', `rollout ${ref.id}: the document is not JSON`, 'rollout');
    }
    if (doc.state !== 'running') throw new FleetError('ESTALE', `rollout_${doc.state}`, `rollout ${ref.id} is ${doc.state}; its requests are not run`, 'rollout');
    if (doc.current_wave !== ref.wave) {
      const behind = doc.current_wave !== null && doc.current_wave < ref.wave;
      throw new FleetError('ESTALE', behind ? 'stale_wave_behind' : 'stale_wave', `rollout ${ref.id} runs wave ${String(doc.current_wave)}, not ${ref.wave}`, 'rollout');
    }
    if (!doc.waves[ref.wave]!.targets.some((t) => t.gateway === this.o.gatewayId)) {
      throw new FleetError('ESTALE', 'not_in_wave', `wave ${ref.wave} of rollout ${ref.id} has no target on gateway ${this.o.gatewayId}`, 'rollout');
    }
    return ref;
  }

  /**
   * Follows every rollout document (retained, so also at each connect and reconnect) and hands each
   * one, checked, to `fn` (null for a document that is invalid or cleared). Returns the stop.
   */
  async watchRollouts(fn: (id: string, doc: RolloutDoc | null) => void): Promise<() => void> {
    const m = await this.mqtt();
    const off = m.on(rolloutFilter(this.o.prefix), (topic, payload) => {
      const id = topic.slice(topic.lastIndexOf('/') + 1);
      let doc: RolloutDoc | null = null;
      try {
        doc = payload.length ? checkRolloutDoc(JSON.parse(payload.toString('utf8')), id) : null;
      } catch {
        doc = null;
      }
      fn(id, doc);
    });
    await m.subscribe([rolloutFilter(this.o.prefix)]);
    return off;
  }

  /** The image with this SHA-256: from the cache, else from the broker (verified, then cached). */
  async image(sha: unknown): Promise<Uint8Array> {
    if (typeof sha !== 'string' || !/^[0-9a-f]{64}$/.test(sha)) throw new FleetError('EINVAL', 'bad_image_sha256', 'image_sha256 must be 64 lower-case hex digits', 'image_sha256');
    const file = this.o.cacheDir ? join(this.o.cacheDir, `${sha}.hxe`) : null;
    if (file) {
      try {
        const b = new Uint8Array(readFileSync(file));
        if (sha256Hex(b) === sha) return b;
        this.o.log?.warn({ file }, 'fleet: a cached image does not match its hash; fetching it again');
      } catch {
        /* not cached */
      }
    }
    const filters = [imageTopic(this.o.prefix, sha), `${imageTopic(this.o.prefix, sha)}/+`];
    // Read again while missing (a cluster node may not have the replicated image yet).
    const bytes = await this.whileBehind(
      async () => assembleImage(this.o.prefix, sha, await (await this.mqtt()).snapshot(filters), this.o.maxImageBytes),
      (e) => e.reason === 'no_such_image' || e.reason === 'image_part_missing',
    );
    this.fetches++;
    this.o.log?.info({ sha256: sha, size: bytes.length }, 'fleet: image fetched from the broker');
    if (file && this.o.cacheDir) {
      try {
        mkdirSync(this.o.cacheDir, { recursive: true });
        writeFileSync(`${file}.tmp`, bytes);
        renameSync(`${file}.tmp`, file);
      } catch (e) {
        this.o.log?.warn({ err: (e as Error).message }, 'fleet: cannot cache an image');
      }
    }
    return bytes;
  }

  async close(): Promise<void> {
    const c = this.conn;
    this.conn = null;
    if (c) await (await c.catch(() => null))?.close().catch(() => {});
  }
}
