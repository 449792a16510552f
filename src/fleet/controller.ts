/**
 * Rollouts on the broker (docs/fleet.md): reading the fleet (retained status and inventory), creating a
 * rollout (image published, then the document), and the controller that drives one wave after another
 * through the gateways' MQTT job planes. All state is the retained rollout document; the controller holds
 * nothing the document does not, so any client can `resume` a rollout whose controller died.
 */
import { randomBytes } from 'node:crypto';
import type { JobRecord } from '../gateway/jobs/types.js';
import { imageMessages, sha256Hex } from './images.js';
import type { FleetMqtt } from './mqtt.js';
import {
  FleetError,
  ROLLOUT_DOC_VERSION,
  TERMINAL_TARGET,
  checkRolloutDoc,
  countTargets,
  emptyCounts,
  failureRate,
  matches,
  parseSelector,
  parseWaves,
  recount,
  rolloutFilter,
  rolloutTopic,
  validRolloutId,
  waveSizes,
  type FleetDevice,
  type RolloutDoc,
  type RolloutTarget,
  type TargetState,
} from './rollout.js';

const now = (): number => Date.now() / 1000;

export interface Fleet {
  gateways: Array<{ gateway: string; state: string | null; ts: number | null }>;
  devices: FleetDevice[];
}

/** Gateways (retained status) and devices (retained inventory) under `prefix`. */
export async function readFleet(m: FleetMqtt): Promise<Fleet> {
  const p = m.prefix;
  const got = await m.snapshot([`${p}/+/status`, `${p}/+/device/+/inventory`]);
  const gws = new Map<string, { state: string | null; ts: number | null }>();
  const devices: FleetDevice[] = [];
  const parse = (b: Buffer): Record<string, unknown> | null => {
    try {
      const o = JSON.parse(b.toString('utf8')) as unknown;
      return o !== null && typeof o === 'object' && !Array.isArray(o) ? (o as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  };
  const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
  for (const [topic, payload] of got) {
    const parts = topic.split('/');
    const o = parse(payload);
    if (!o) continue;
    if (parts.length === 3 && parts[2] === 'status') gws.set(parts[1]!, { state: str(o['state']), ts: typeof o['ts'] === 'number' ? o['ts'] : null });
  }
  for (const [topic, payload] of got) {
    const parts = topic.split('/');
    const o = parse(payload);
    if (!o || parts.length !== 5 || parts[4] !== 'inventory') continue;
    const gateway = parts[1]!;
    const link = str(o['link']);
    const target = str(o['target']);
    if (!link || !target) continue;
    devices.push({
      gateway,
      device: parts[3]!,
      link,
      target,
      app_name: str(o['app_name']),
      version: str(o['version']),
      sha256: str(o['sha256']),
      scanned_ts: typeof o['scanned_ts'] === 'number' ? o['scanned_ts'] : null,
      gateway_state: gws.get(gateway)?.state ?? null,
    });
    if (!gws.has(gateway)) gws.set(gateway, { state: null, ts: null });
  }
  devices.sort((a, b) => a.gateway.localeCompare(b.gateway) || a.link.localeCompare(b.link) || Number(a.target) - Number(b.target) || a.target.localeCompare(b.target));
  return { gateways: [...gws].map(([gateway, s]) => ({ gateway, ...s })).sort((a, b) => a.gateway.localeCompare(b.gateway)), devices };
}

/** The rollout document as it is on the broker (checked), or null when there is none. */
export async function readRollout(m: FleetMqtt, id: string): Promise<RolloutDoc | null> {
  if (!validRolloutId(id)) throw new FleetError('EINVAL', 'bad_rollout_id', `"${id}" is not a rollout id (1-64 of [A-Za-z0-9_.-])`, 'id');
  const topic = rolloutTopic(m.prefix, id);
  const payload = (await m.snapshot([topic])).get(topic);
  if (!payload) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new FleetError('EINVAL', 'bad_rollout_doc', `the rollout document at ${topic} is not JSON`);
  }
  return checkRolloutDoc(raw, id);
}

export async function listRollouts(m: FleetMqtt): Promise<Array<RolloutDoc | { id: string; error: string }>> {
  const got = await m.snapshot([rolloutFilter(m.prefix)]);
  const out: Array<RolloutDoc | { id: string; error: string }> = [];
  for (const [topic, payload] of got) {
    const id = topic.slice(topic.lastIndexOf('/') + 1);
    try {
      out.push(checkRolloutDoc(JSON.parse(payload.toString('utf8')), id));
    } catch (e) {
      out.push({ id, error: (e as Error).message });
    }
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

export interface CreateOptions {
  id?: string;
  image: Uint8Array;
  imageName: string;
  selector: string;
  waves: string;
  abortFailureRate: number;
  timeoutS: number;
  partBytes: number;
}

/**
 * Checks everything, then publishes the image (retained, parts first) and the rollout's first document.
 * Nothing is published when an input is wrong or the selector matches no device.
 */
export async function createRollout(m: FleetMqtt, o: CreateOptions): Promise<RolloutDoc> {
  const sel = parseSelector(o.selector);
  const specs = parseWaves(o.waves);
  if (!(o.abortFailureRate >= 0 && o.abortFailureRate <= 1)) throw new FleetError('EINVAL', 'bad_threshold', 'abort failure rate must be 0..100%', 'abort-failure-rate');
  const id = o.id ?? `r-${new Date().toISOString().replace(/[-:TZ.]/g, '').slice(0, 14)}-${randomBytes(2).toString('hex')}`;
  if (!validRolloutId(id)) throw new FleetError('EINVAL', 'bad_rollout_id', `"${id}" is not a rollout id (1-64 of [A-Za-z0-9_.-])`, 'id');
  const sha = sha256Hex(o.image);
  const msgs = imageMessages(m.prefix, o.image, o.partBytes);
  const fleet = await readFleet(m);
  const chosen = fleet.devices.filter((d) => matches(sel, d));
  if (chosen.length === 0) {
    throw new FleetError('ENOENT', 'no_match', `the selector "${o.selector}" matches no device (${fleet.devices.length} device(s) on ${fleet.gateways.length} gateway(s) known under ${m.prefix}/)`, 'select');
  }
  const exists = (await m.snapshot([rolloutTopic(m.prefix, id)])).get(rolloutTopic(m.prefix, id));
  if (exists) throw new FleetError('EEXIST', 'rollout_exists', `a rollout ${id} exists already`, 'id');
  const asTarget = (d: FleetDevice, state: TargetState): RolloutTarget => ({ gateway: d.gateway, device: d.device, link: d.link, target: d.target, state, job_id: null, error: null });
  const skipped = chosen.filter((d) => d.sha256 === sha).map((d) => asTarget(d, 'SKIPPED'));
  const work = chosen.filter((d) => d.sha256 !== sha);
  let at = 0;
  const waves = waveSizes(specs, work.length).map(({ spec, size }, index) => {
    const targets = work.slice(at, at + size).map((d) => asTarget(d, 'PENDING'));
    at += size;
    return { index, spec, state: 'pending' as const, started_ts: null, finished_ts: null, targets, counts: emptyCounts() };
  });
  const t = now();
  const doc: RolloutDoc = {
    v: ROLLOUT_DOC_VERSION,
    id,
    version: 1,
    state: waves.length ? 'running' : 'completed',
    reason: waves.length ? null : 'every selected device already runs the image',
    controller: waves.length ? m.clientId : null,
    created_ts: t,
    updated_ts: t,
    image: { sha256: sha, size: o.image.length, name: o.imageName, parts: msgs.parts },
    selector: o.selector,
    waves_spec: specs,
    abort_failure_rate: o.abortFailureRate,
    timeout_s: o.timeoutS,
    current_wave: waves.length ? 0 : null,
    skipped,
    waves,
    totals: { ...emptyCounts(), devices: 0 },
  };
  recount(doc);
  checkRolloutDoc(doc, id);
  if (waves.length) for (const [topic, payload] of msgs.messages) await m.publish(topic, payload, true);
  await m.publish(rolloutTopic(m.prefix, id), JSON.stringify(doc), true);
  return doc;
}

/**
 * Writes a change someone asks for (pause, cancel) to the document: read, change, write, read back;
 * again when another writer (the controller) got in between. Returns the document written.
 */
export async function editRollout(m: FleetMqtt, id: string, change: (d: RolloutDoc) => void): Promise<RolloutDoc> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const d = await readRollout(m, id);
    if (!d) throw new FleetError('ENOENT', 'no_such_rollout', `no rollout ${id} under ${m.prefix}/fleet/rollouts/`, 'id');
    change(d);
    d.version++;
    d.updated_ts = now();
    recount(d);
    checkRolloutDoc(d, id);
    const text = JSON.stringify(d);
    await m.publish(rolloutTopic(m.prefix, id), text, true);
    const back = (await m.snapshot([rolloutTopic(m.prefix, id)])).get(rolloutTopic(m.prefix, id));
    if (back?.toString('utf8') === text) return d;
  }
  throw new FleetError('EAGAIN', 'contended', `rollout ${id} kept changing under us; try again`);
}

export async function pauseRollout(m: FleetMqtt, id: string, who: string): Promise<RolloutDoc> {
  return editRollout(m, id, (d) => {
    if (d.state !== 'running') throw new FleetError('EBUSY', `rollout_${d.state}`, `rollout ${id} is ${d.state}, not running`);
    d.state = 'paused';
    d.reason = `paused by ${who}`;
    d.controller = null;
  });
}

/** Cancel: the document first (gateways refuse its requests from then on), then cancels of running jobs. */
export async function cancelRollout(m: FleetMqtt, id: string, token: string, who: string): Promise<RolloutDoc> {
  const toCancel: RolloutTarget[] = [];
  const d = await editRollout(m, id, (d) => {
    if (d.state === 'completed' || d.state === 'cancelled') throw new FleetError('EBUSY', `rollout_${d.state}`, `rollout ${id} is ${d.state} already`);
    d.state = 'cancelled';
    d.reason = `cancelled by ${who}`;
    d.controller = null;
    toCancel.splice(0);
    for (const w of d.waves) {
      for (const t of w.targets) {
        if (TERMINAL_TARGET.has(t.state)) continue;
        if (t.job_id) toCancel.push({ ...t });
        t.state = 'CANCELED';
        t.error = 'ECANCELED:rollout_cancelled';
      }
      if (w.state === 'running') {
        w.state = 'done';
        w.finished_ts = now();
      }
    }
  });
  const jobs = new Set(toCancel.map((t) => `${t.gateway}/jobs/${t.job_id}`));
  for (const j of jobs) await m.publish(`${m.prefix}/${j}/cancel`, JSON.stringify({ clientToken: `${id}:cancel`, token }), false);
  return d;
}

export interface ControllerOptions {
  token: string;
  /** Every document written or seen. */
  onDoc?: (d: RolloutDoc) => void;
  /**
   * A request with no answer after this long is sent again (default 5000 ms): it may have been lost while
   * its gateway failed over to another broker (clean sessions). The gateway answers a request whose
   * clientToken a job already carries with that job, so nothing runs twice.
   */
  resendMs?: number;
}

interface Group {
  gateway: string;
  link: string;
  clientToken: string;
  targets: RolloutTarget[];
}

/**
 * Drives rollout `id` from its document: takes it over (controller = this client), then runs the current
 * wave and the next ones until the rollout completes, pauses (threshold, or someone paused it), is
 * cancelled, or another client takes it over. Resolves with the last document.
 */
export class RolloutController {
  private doc!: RolloutDoc;
  private lastWritten = '';
  private lastBody = '';
  private stopped: string | null = null;
  private wake: (() => void) | null = null;
  private readonly gwState = new Map<string, string | null>();
  /** Retained job documents seen: `<gw>/<job id>` → record. */
  private readonly jobs = new Map<string, JobRecord>();
  private writing: Promise<void> = Promise.resolve();
  private dirty = false;
  private offs: Array<() => void> = [];
  /** When each group's request (by clientToken) was last sent. */
  private readonly sentAt = new Map<string, number>();
  /** Requests sent again for want of an answer (for the bench and tests). */
  resent = 0;

  constructor(private readonly m: FleetMqtt, private readonly id: string, private readonly o: ControllerOptions) {}

  /** `resume`: from a paused rollout, or one whose controller is gone. */
  async run(): Promise<RolloutDoc> {
    const d = await readRollout(this.m, this.id);
    if (!d) throw new FleetError('ENOENT', 'no_such_rollout', `no rollout ${this.id} under ${this.m.prefix}/fleet/rollouts/`, 'id');
    if (d.state === 'completed' || d.state === 'cancelled') throw new FleetError('EBUSY', `rollout_${d.state}`, `rollout ${this.id} is ${d.state}; there is nothing to resume`);
    this.doc = d;
    const p = this.m.prefix;
    this.offs.push(
      this.m.on(rolloutTopic(p, this.id), (_t, payload) => this.onRolloutDoc(payload)),
      this.m.on(`${p}/+/status`, (t, payload) => this.onStatus(t, payload)),
      this.m.on(`${p}/+/jobs/+`, (t, payload) => this.onJobDoc(t, payload)),
      this.m.on(`${p}/+/jobs/submit/+`, (t, payload) => this.onAnswer(t, payload)),
    );
    try {
      await this.m.subscribe([`${p}/+/status`, `${p}/+/jobs/+`, `${p}/+/jobs/submit/accepted`, `${p}/+/jobs/submit/rejected`]);
      await this.m.sync();
      this.doc.state = 'running';
      this.doc.reason = null;
      this.doc.controller = this.m.clientId;
      await this.write();
      await this.m.subscribe([rolloutTopic(p, this.id)]);
      while (!this.stopped && this.doc.state === 'running' && this.doc.current_wave !== null) {
        await this.runWave(this.doc.current_wave);
        if (this.stopped) break;
        this.afterWave(this.doc.current_wave);
        await this.write();
      }
      await this.writing;
      return this.doc;
    } finally {
      for (const off of this.offs) off();
    }
  }

  private afterWave(i: number): void {
    const rate = failureRate(this.doc);
    const last = i === this.doc.waves.length - 1;
    if (last) {
      this.doc.state = 'completed';
      this.doc.current_wave = null;
      this.doc.controller = null;
      this.doc.reason = rate > 0 ? `completed with a failure rate of ${pct(rate)}` : null;
    } else if (rate > this.doc.abort_failure_rate) {
      this.doc.state = 'paused';
      this.doc.current_wave = i + 1;
      this.doc.controller = null;
      this.doc.reason = `failure rate ${pct(rate)} after wave ${i} is over the threshold ${pct(this.doc.abort_failure_rate)}`;
    } else {
      this.doc.current_wave = i + 1;
    }
  }

  private async runWave(i: number): Promise<void> {
    const w = this.doc.waves[i]!;
    w.state = 'running';
    // A resumed wave gets the whole timeout again from now.
    w.started_ts = now();
    await this.write();
    const deadline = w.started_ts + this.doc.timeout_s;
    // A request a previous controller sent without seeing its answer is sent again (the gateway answers a
    // request whose clientToken a job already carries with that job, so nothing runs twice).
    for (const t of w.targets) if (t.state === 'QUEUED' && t.job_id === null) t.state = 'PENDING';
    const groups = this.groups(i);
    for (const g of groups) this.adopt(g);
    for (const g of groups) await this.submit(g, i);
    await this.write();
    let timer: NodeJS.Timeout | undefined;
    try {
      while (!this.stopped && !w.targets.every((t) => TERMINAL_TARGET.has(t.state))) {
        const left = deadline - now();
        if (left <= 0) {
          await this.timeOut(i);
          break;
        }
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          timer = setTimeout(resolve, Math.min(left * 1000, this.o.resendMs ?? 5_000, 2 ** 31 - 1));
        });
        clearTimeout(timer);
        this.wake = null;
        // A request still unanswered after resendMs (lost in a failover) is sent again.
        const resendMs = this.o.resendMs ?? 5_000;
        for (const g of groups) {
          const unanswered = g.targets.filter((t) => t.state === 'QUEUED' && t.job_id === null);
          if (unanswered.length === 0 || Date.now() - (this.sentAt.get(g.clientToken) ?? 0) < resendMs) continue;
          for (const t of unanswered) t.state = 'PENDING';
          this.resent++;
        }
        // Gateways that came back online get their part (the request then still has to pass their check).
        for (const g of groups) if (g.targets.some((t) => t.state === 'PENDING')) await this.submit(g, i);
        this.flush();
      }
    } finally {
      clearTimeout(timer);
    }
    if (this.stopped) return;
    w.state = 'done';
    w.finished_ts = now();
  }

  private groups(i: number): Group[] {
    const by = new Map<string, Group>();
    for (const t of this.doc.waves[i]!.targets) {
      const k = `${t.gateway}\u0000${t.link}`;
      let g = by.get(k);
      if (!g) by.set(k, (g = { gateway: t.gateway, link: t.link, clientToken: `${this.id}:${i}:${t.gateway}:${t.link}`.slice(0, 256), targets: [] }));
      g.targets.push(t);
    }
    return [...by.values()];
  }

  /** A job already made for this group (a controller before us submitted it): take its id. */
  private adopt(g: Group): void {
    for (const [k, job] of this.jobs) {
      if (!k.startsWith(`${g.gateway}/`) || job.client_token !== g.clientToken) continue;
      for (const t of g.targets) if (!TERMINAL_TARGET.has(t.state)) t.job_id = job.id;
      this.applyJob(g.gateway, job);
    }
  }

  private async submit(g: Group, wave: number): Promise<void> {
    const todo = g.targets.filter((t) => !TERMINAL_TARGET.has(t.state) && t.job_id === null && t.state !== 'QUEUED');
    if (todo.length === 0) return;
    // An offline gateway would lose the request (its session is clean): it gets it when it is back, or times out.
    if (this.gwState.get(g.gateway) !== 'online') return;
    const req = {
      clientToken: g.clientToken,
      token: this.o.token,
      link: g.link,
      targets: g.targets.filter((t) => !TERMINAL_TARGET.has(t.state)).map((t) => t.target),
      image_sha256: this.doc.image.sha256,
      rollout: { id: this.id, wave },
    };
    for (const t of todo) t.state = 'QUEUED';
    this.sentAt.set(g.clientToken, Date.now());
    this.dirty = true;
    await this.m.publish(`${this.m.prefix}/${g.gateway}/jobs/submit`, JSON.stringify(req), false);
  }

  private async timeOut(i: number): Promise<void> {
    const cancels = new Set<string>();
    for (const t of this.doc.waves[i]!.targets) {
      if (TERMINAL_TARGET.has(t.state)) continue;
      t.state = 'TIMED_OUT';
      t.error = this.gwState.get(t.gateway) === 'online' ? 'ETIMEDOUT:rollout_timeout' : 'ETIMEDOUT:gateway_offline';
      if (t.job_id) cancels.add(`${t.gateway}/jobs/${t.job_id}`);
    }
    this.dirty = true;
    for (const c of cancels) await this.m.publish(`${this.m.prefix}/${c}/cancel`, JSON.stringify({ clientToken: `${this.id}:timeout`, token: this.o.token }), false);
  }

  private target(gateway: string, link: string, target: string): RolloutTarget | undefined {
    const i = this.doc.current_wave;
    if (i === null) return undefined;
    return this.doc.waves[i]?.targets.find((t) => t.gateway === gateway && t.link === link && t.target === target);
  }

  private applyJob(gateway: string, job: JobRecord): void {
    for (const jt of job.targets) {
      const t = this.target(gateway, job.link, jt.target);
      if (!t || t.job_id !== job.id || TERMINAL_TARGET.has(t.state)) continue;
      const s = jt.state as TargetState;
      if (s !== t.state) {
        t.state = s;
        t.error = jt.error ? `${jt.error.code}:${jt.error.reason}` : null;
        this.dirty = true;
      }
    }
  }

  private onJobDoc(topic: string, payload: Buffer): void {
    const gw = topic.split('/')[1]!;
    let job: JobRecord;
    try {
      job = JSON.parse(payload.toString('utf8')) as JobRecord;
    } catch {
      return;
    }
    if (!job || typeof job.id !== 'string' || !Array.isArray(job.targets)) return;
    this.jobs.set(`${gw}/${job.id}`, job);
    if (!this.doc || this.doc.current_wave === null) return;
    if (typeof job.client_token === 'string' && job.client_token.startsWith(`${this.id}:${this.doc.current_wave}:${gw}:`)) {
      for (const jt of job.targets) {
        const t = this.target(gw, job.link, jt.target);
        if (t && t.job_id === null && !TERMINAL_TARGET.has(t.state)) t.job_id = job.id;
      }
    }
    this.applyJob(gw, job);
    this.kick();
  }

  private onAnswer(topic: string, payload: Buffer): void {
    const parts = topic.split('/');
    const gw = parts[1]!;
    let a: { clientToken?: unknown; job?: JobRecord; code?: string; reason?: string };
    try {
      a = JSON.parse(payload.toString('utf8')) as typeof a;
    } catch {
      return;
    }
    if (!this.doc || this.doc.current_wave === null || typeof a.clientToken !== 'string') return;
    const prefix = `${this.id}:${this.doc.current_wave}:${gw}:`;
    if (!a.clientToken.startsWith(prefix)) return;
    const link = a.clientToken.slice(prefix.length);
    const mine = this.doc.waves[this.doc.current_wave]!.targets.filter((t) => t.gateway === gw && t.link === link && !TERMINAL_TARGET.has(t.state));
    if (parts[4] === 'accepted' && a.job) {
      for (const t of mine) t.job_id = a.job.id;
      this.jobs.set(`${gw}/${a.job.id}`, a.job);
      this.applyJob(gw, a.job);
    } else if (parts[4] === 'rejected' && a.code === 'EIO') {
      // The gateway could not read the fleet topics (its broker connection was failing over): not the request's
      // fault; it is sent again at the next resend (resendMs), and times out with the wave if it never gets through.
      for (const t of mine) if (t.job_id === null && t.state === 'QUEUED') t.error = `${a.code}:${a.reason ?? 'rejected'}`;
    } else if (parts[4] === 'rejected') {
      for (const t of mine) {
        if (t.job_id !== null) continue;
        t.state = 'FAILED';
        t.error = `${a.code ?? 'EIO'}:${a.reason ?? 'rejected'}`;
      }
    }
    this.dirty = true;
    this.kick();
  }

  private onStatus(topic: string, payload: Buffer): void {
    const gw = topic.split('/')[1]!;
    let state: string | null = null;
    try {
      state = (JSON.parse(payload.toString('utf8')) as { state?: string }).state ?? null;
    } catch {
      state = null;
    }
    const was = this.gwState.get(gw);
    this.gwState.set(gw, state);
    if (was !== state) this.kick();
  }

  /** The document on the broker changed: if not by us, someone paused, cancelled, took over or broke it. */
  private onRolloutDoc(payload: Buffer): void {
    const text = payload.toString('utf8');
    if (text === this.lastWritten || this.stopped) return;
    let d: RolloutDoc;
    try {
      d = checkRolloutDoc(JSON.parse(text), this.id);
    } catch (e) {
      this.stop(`the rollout document was replaced by an invalid one (${(e as Error).message}); stopped without touching more devices`);
      return;
    }
    if (d.version < this.doc.version) return;
    this.doc = d;
    if (d.state !== 'running') this.stop(`rollout ${d.state}${d.reason ? `: ${d.reason}` : ''}`);
    else if (d.controller !== this.m.clientId) this.stop(`taken over by ${String(d.controller)}`);
    this.o.onDoc?.(d);
  }

  private stop(why: string): void {
    this.stopped = why;
    this.kick();
  }

  /** Why it stopped before the end (another writer), or null. */
  get stoppedBecause(): string | null {
    return this.stopped;
  }

  private kick(): void {
    this.wake?.();
  }

  private flush(): void {
    if (this.dirty && !this.stopped) void this.write();
  }

  /** Publishes the document (serialised; version + 1), unless someone else's change stopped us. */
  private write(): Promise<void> {
    this.dirty = false;
    this.writing = this.writing.then(async () => {
      if (this.stopped) return;
      recount(this.doc);
      // Writes are queued and serialise the document as it is when they run: two in a row may carry the same change.
      const body = JSON.stringify({ ...this.doc, version: 0, updated_ts: 0 });
      if (body === this.lastBody) return;
      this.lastBody = body;
      this.doc.version++;
      this.doc.updated_ts = now();
      const text = JSON.stringify(this.doc);
      this.lastWritten = text;
      await this.m.publish(rolloutTopic(this.m.prefix, this.id), text, true);
      this.o.onDoc?.(JSON.parse(text) as RolloutDoc);
    });
    return this.writing;
  }
}

export const pct = (r: number): string => `${Math.round(r * 1000) / 10}%`;
export { countTargets };
