/**
 * The MQTT side of jobs (docs/mqtt.md "Jobs"), on MQTT 3.1.1 and 5 alike:
 *
 * - **Retained job documents.** Every job event but progress publishes the job's record (JSON) retained
 *   at `<prefix>/<gw>/jobs/<id>` (QoS 1); a job the service no longer knows (dropped by retention) gets
 *   its document cleared (an empty retained message). Through a broker outage the bridge's buffer keeps
 *   the newest document per job and sends it on reconnect.
 * - **Job events.** `job.*` events reach MQTT through the bridge's event path: normally the gateway puts
 *   them on its event bus (`jobEventToBus`) and the bridge republishes the bus; this module only tells
 *   the bridge which device a `job.progress` concerns (so progress lands on
 *   `<prefix>/<gw>/device/<device>/events/job/progress`). With `publishEvents` it publishes them on the
 *   bridge itself (for a setup without the bus: tests, tools).
 * - **Commands** (only with `commands: true`, i.e. `mqtt.commands = true`): requests on
 *   `<prefix>/<gw>/jobs/submit` and `<prefix>/<gw>/jobs/<id>/cancel`, answered on `…/accepted` and
 *   `…/rejected` with the request's `clientToken` (and, with MQTT 5, on the request's response topic
 *   with its correlation data). Each request carries a `[control] tokens` token, mapped to a role by the
 *   control port's own TokenStore and role table (`job.submit`, `job.cancel`: operator); without a valid
 *   one nothing happens but an EPERM answer and an audit line. An MQTT submit names an image in the
 *   images directory (read by image-files.ts, the control port's confinement rules); there is no upload
 *   over MQTT. With commands off nothing is subscribed at all.
 *
 * The token is never echoed, logged or audited.
 */
import type { AuditLog, AuditEntry, Verdict } from '../control/audit.js';
import { roleAllows, type Identity, type TokenStore } from '../control/auth.js';
import { readImageInside, DEFAULT_MAX_IMAGE_BYTES } from '../control/image-files.js';
import { clip, MAX_REQUEST_DEPTH, MAX_TEXT_BYTES, nestsDeeperThan, requiredRole } from '../control/roles.js';
import { linkName, type GatewayConfig } from '../config.js';
import { jobEventToBus, jobIdOf } from '../jobs/bus-events.js';
import type { JobEvent, JobOptions, JobRecord, JobService, JobSubmit, JobSubmitter } from '../jobs/types.js';
import { checkOptions } from '../jobs/manager.js';
import type { BridgeEvent, BridgeLogger, CommandMessage, MqttBridge } from './bridge.js';
import {
  jobCancelAnswerTopic,
  jobCancelFilter,
  jobDocTopic,
  jobSubmitAnswerTopic,
  jobSubmitTopic,
  parseJobCancelTopic,
  topicLevel,
  type TopicRoot,
} from './topics.js';

/** What the command plane needs of the bridge (MqttBridge has it all). */
export type JobBridge = Pick<MqttBridge, 'onCommands' | 'publishAnswer' | 'publishRetained' | 'clearRetained' | 'publishEvent' | 'setDeviceResolver'>;

/** Finds the configured device a link's target is, if any. */
export type DeviceNameOf = (link: string, target: string) => string | undefined;

export interface MqttJobCommandsOptions {
  bridge: JobBridge;
  topics: TopicRoot;
  jobs: JobService;
  /** `mqtt.commands`: subscribe to the command topics. Without it only documents (and events) are published. */
  commands: boolean;
  /** The control port's tokens (config entries and HSX_GATEWAY_TOKENS); required (non-empty) with `commands`. */
  tokens: TokenStore | null;
  /** The control port's audit log (same pino destination and line format). */
  audit: AuditLog;
  /** `[control] images_dir`: the only place an MQTT submit's `image` is read from. */
  imagesDir: string | undefined;
  /** Most bytes of such an image (`[control] max_image_bytes`). */
  maxImageBytes?: number;
  /** The device a target is (default: none known, so progress goes to `<link>-<target>`). */
  deviceName?: DeviceNameOf;
  /**
   * Fleet rollouts (docs/fleet.md): checks a request's `rollout` against the rollout document and
   * fetches an image named by `image_sha256`. Without it such requests are refused (ENOTSUP).
   */
  fleet?: FleetHooks;
  /**
   * Publish `job.*` events on the bridge from here (own `seq`). Leave false when the gateway puts job
   * events on its event bus, whose subscription already republishes them: they would come twice.
   */
  publishEvents?: boolean;
  /** Requests waiting to be handled at most; beyond, a request is answered `EBUSY:too_many_requests`. Default 64. */
  maxPending?: number;
  /** A sweep for jobs dropped by retention this often (ms; 0 = only after job events). Default 30000. */
  sweepIntervalMs?: number;
  logger?: BridgeLogger;
  /** Seconds since the epoch (float), for the `ts` of events published here. */
  now?: () => number;
}

/** The answer to a refused request (`…/rejected`). */
export interface RejectedAnswer {
  clientToken: string | null;
  code: string;
  reason: string;
  message: string;
  field?: string;
}

/** The answer to a granted request (`…/accepted`). */
export interface AcceptedAnswer {
  clientToken: string | null;
  job: JobRecord;
}

/** What the command plane asks of the gateway's fleet side (fleet-plane.ts); each throws a FleetError. */
export interface FleetHooks {
  checkRollout(raw: unknown): Promise<{ id: string; wave: number }>;
  image(sha256: unknown): Promise<Uint8Array>;
  /** Every rollout document (null: invalid or cleared); see `cancelStaleRolloutJobs`. */
  watchRollouts?(fn: (id: string, doc: { state: string; current_wave: number | null } | null) => void): Promise<() => void>;
}

export class MqttCommandsConfigError extends Error {
  readonly code = 'ECONFIG';
}

/**
 * The loud refusal at start-up: commands on and no token configured (every request would be refused,
 * and an operator would believe MQTT commands work). Null when the combination is fine.
 */
export function checkCommandsConfig(commands: boolean, tokens: TokenStore | null): string | null {
  if (!commands) return null;
  if (tokens && tokens.size > 0) return null;
  return 'mqtt.commands = true but no access tokens are configured ([[control.tokens]] or HSX_GATEWAY_TOKENS): ' +
    'every MQTT request must carry an operator token, so there would be no way to use them; add a token or set mqtt.commands = false';
}

/**
 * The device name of a target from the config: a CAN master link's target is a node id, and the
 * device with that `node_id` on that CAN interface (`devices[].can`, default the first CAN link) is it.
 */
/**
 * The `<device>` topic level of a master link's target: the configured device on it, else
 * `<link>-<target>`. Job progress and the inventory documents both use it.
 */
export function targetTopicLevel(deviceOf: DeviceNameOf, link: string, target: string): string {
  return topicLevel(deviceOf(link, target) ?? `${link}-${target}`);
}

export function deviceNamesFromConfig(cfg: Pick<GatewayConfig, 'links' | 'devices'>): DeviceNameOf {
  const map = new Map<string, string>();
  const firstCan = cfg.links.can[0]?.interface;
  for (const l of cfg.links.can) {
    if (l.role !== 'master') continue;
    for (const d of cfg.devices) {
      if (d.node_id === undefined || (d.can ?? firstCan) !== l.interface) continue;
      map.set(`${linkName(l)}\u0000${d.node_id}`, d.name);
    }
  }
  return (link, target) => map.get(`${link}\u0000${target}`);
}

/** Longest request payload taken (bytes); a submit names its image, so requests are small. */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** Most targets one MQTT submit may list. */
export const MAX_TARGETS = 1024;

const SUBMIT_KEYS = new Set(['clientToken', 'token', 'link', 'targets', 'image', 'image_sha256', 'rollout', 'options']);
const CANCEL_KEYS = new Set(['clientToken', 'token']);

const own = (o: Record<string, unknown>, k: string): unknown => (Object.prototype.hasOwnProperty.call(o, k) ? o[k] : undefined);

/** A refusal on its way to the answer topic (the value command plane, value-commands.ts, uses it too). */
export class Refusal {
  /** A permission refusal (audited as `denied`); `identity` when a valid token lacked the role. */
  denied = false;
  identity: Identity | null = null;

  constructor(
    readonly code: string,
    readonly reason: string,
    readonly message: string,
    readonly field?: string,
  ) {}

  static denied(reason: string, message: string, identity: Identity | null, field?: string): Refusal {
    const r = new Refusal('EPERM', reason, message, field);
    r.denied = true;
    r.identity = identity;
    return r;
  }
}

type Kind = 'submit' | 'cancel';

interface Pending {
  kind: Kind;
  msg: CommandMessage;
  /** For a cancel: the job id from the topic. */
  id?: string;
}

export class MqttJobCommands {
  private readonly log: BridgeLogger;
  private readonly maxPending: number;
  private readonly deviceName: DeviceNameOf;
  private readonly now: () => number;
  private unwatch: (() => void) | null = null;
  private unwatchRollouts: (() => void) | null = null;
  private unsubscribe: (() => void) | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  /** Jobs whose retained document we published (and have not cleared) → that document. */
  private readonly published = new Map<string, string>();
  private readonly queue: Pending[] = [];
  private working: Promise<void> | null = null;
  private seq = 0;
  private started = false;
  private warnedResponseTopic = false;

  constructor(private readonly opts: MqttJobCommandsOptions) {
    const refusal = checkCommandsConfig(opts.commands, opts.tokens);
    if (refusal) throw new MqttCommandsConfigError(refusal);
    this.log = opts.logger ?? { info() {}, warn() {}, error() {} };
    this.maxPending = opts.maxPending ?? 64;
    this.deviceName = opts.deviceName ?? (() => undefined);
    this.now = opts.now ?? (() => Date.now() / 1000);
  }

  /**
   * Publishes the documents of the jobs the service knows, watches it for changes, and (with
   * `commands`) subscribes to the command topics.
   */
  start(): void {
    if (this.started) return;
    this.started = true;
    const { bridge, jobs, topics } = this.opts;
    bridge.setDeviceResolver((e) => this.progressDevice(e));
    this.unwatch = jobs.watch((e) => this.onJobEvent(e));
    for (const job of jobs.list({ limit: Number.MAX_SAFE_INTEGER })) this.publishDoc(job);
    if (this.opts.commands) {
      this.unsubscribe = bridge.onCommands([jobSubmitTopic(topics), jobCancelFilter(topics)], (m) => this.onCommand(m));
      this.log.info({ topics: [jobSubmitTopic(topics), jobCancelFilter(topics)] }, 'mqtt: job commands on (mqtt.commands = true)');
    }
    if (this.opts.commands && this.opts.fleet?.watchRollouts) {
      this.opts.fleet
        .watchRollouts((id, doc) => void this.cancelStaleRolloutJobs(id, doc))
        .then((off) => (this.started ? (this.unwatchRollouts = off) : off()))
        .catch((e: Error) => this.log.warn({ err: e.message }, 'mqtt: cannot follow the fleet rollout documents; queued rollout jobs are not re-checked'));
    }
    const every = this.opts.sweepIntervalMs ?? 30_000;
    if (every > 0) {
      this.sweepTimer = setInterval(() => this.sweep(), every);
      this.sweepTimer.unref();
    }
  }

  /** Stops taking requests and watching jobs; waits (bounded) for the request being handled. */
  async stop(timeoutMs = 2_000): Promise<void> {
    if (!this.started) return;
    this.started = false;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.unwatch?.();
    this.unwatch = null;
    this.unwatchRollouts?.();
    this.unwatchRollouts = null;
    this.opts.bridge.setDeviceResolver(null);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.queue.splice(0);
    if (this.working) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.working, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]).finally(() => clearTimeout(timer));
    }
  }

  /**
   * Clears the retained document of every job the service no longer knows (dropped by retention);
   * returns how many. Runs after job events and on a timer; the job service may call it after pruning.
   */
  sweep(except?: string): number {
    let n = 0;
    for (const id of [...this.published.keys()]) {
      if (id === except || this.opts.jobs.get(id) !== undefined) continue;
      this.published.delete(id);
      this.opts.bridge.clearRetained(jobDocTopic(this.opts.topics, id));
      n++;
    }
    return n;
  }

  /**
   * A rollout that no longer runs wave `w` (or whose document is invalid or gone): its jobs still QUEUED
   * here (client token `<id>:<w>:…`, as the fleet controller sends them) are cancelled before they start.
   */
  async cancelStaleRolloutJobs(id: string, doc: { state: string; current_wave: number | null } | null): Promise<number> {
    let n = 0;
    for (const job of this.opts.jobs.list({ state: 'QUEUED', limit: Number.MAX_SAFE_INTEGER })) {
      const ct = job.client_token;
      if (typeof ct !== 'string' || !ct.startsWith(`${id}:`)) continue;
      const wave = Number(ct.slice(id.length + 1).split(':')[0]);
      if (doc && doc.state === 'running' && doc.current_wave === wave) continue;
      const r = await this.opts.jobs.cancel(job.id, { name: 'fleet', role: 'operator', via: 'mqtt' });
      if (r.ok) n++;
      this.log.warn({ job: job.id, rollout: id, wave, state: doc?.state ?? 'invalid' }, 'mqtt: a queued job of a rollout that no longer runs its wave was cancelled');
    }
    return n;
  }

  // ---- documents and events ---------------------------------------------------------------------

  private publishDoc(job: JobRecord): void {
    if (!this.validId(job.id)) {
      this.log.warn({ job: clip(job.id) }, 'mqtt: a job id that is not one topic level; its document is not published');
      return;
    }
    const doc = JSON.stringify(job);
    // Two events of one change (the last job.target and job.finished) carry the same record: one document.
    if (this.published.get(job.id) === doc) return;
    this.published.set(job.id, doc);
    this.opts.bridge.publishRetained(jobDocTopic(this.opts.topics, job.id), doc);
  }

  private validId(id: string): boolean {
    return id.length > 0 && !/[/+#\u0000]/.test(id);
  }

  private onJobEvent(e: JobEvent): void {
    if (!this.started) return;
    try {
      if (e.type !== 'job.progress') this.publishDoc(e.job);
      if (this.opts.publishEvents) this.publishEvent(e);
      if (e.type === 'job.submitted' || e.type === 'job.finished' || e.type === 'job.canceled') this.sweep(e.job.id);
    } catch (err) {
      this.log.error({ err: (err as Error).message, type: e.type }, 'mqtt: publishing a job event failed');
    }
  }

  private publishEvent(e: JobEvent): void {
    const input = jobEventToBus(e);
    const ev: BridgeEvent = { seq: ++this.seq, ts: this.now(), type: input.type, pid: input.pid, phase: input.phase, data: input.data };
    // The same shape as through the event bus: the device in the envelope (the bridge's topic), not in data.
    if (e.type === 'job.progress') ev.device = this.targetDevice(e.job.link, e.target);
    this.opts.bridge.publishEvent(ev);
  }

  /** The device of a `job.progress` event that came through the event bus (data: job_id, target). */
  private progressDevice(e: BridgeEvent): string | undefined {
    if (e.type !== 'job.progress') return undefined;
    const id = jobIdOf(e.data);
    const target = e.data['target'];
    if (id === null || typeof target !== 'string') return undefined;
    const job = this.opts.jobs.get(id);
    return job ? this.targetDevice(job.link, target) : undefined;
  }

  /** The configured device a target is, else `<link>-<target>`; always one topic level. */
  targetDevice(link: string, target: string): string {
    return targetTopicLevel(this.deviceName, link, target);
  }

  // ---- commands ---------------------------------------------------------------------------------

  private onCommand(msg: CommandMessage): void {
    if (!this.started) return;
    const { topics } = this.opts;
    let item: Pending;
    if (msg.topic === jobSubmitTopic(topics)) item = { kind: 'submit', msg };
    else {
      const id = parseJobCancelTopic(topics, msg.topic);
      if (id === null) return;
      item = { kind: 'cancel', msg, id };
    }
    if (this.queue.length >= this.maxPending) {
      this.answerRejected(item, null, new Refusal('EBUSY', 'too_many_requests', `more than ${this.maxPending} MQTT job requests are waiting; try again`));
      this.audit(item, null, 'error', 'EBUSY:too_many_requests', {});
      return;
    }
    this.queue.push(item);
    if (!this.working) this.working = this.drain().finally(() => (this.working = null));
  }

  /** One request at a time, in arrival order: answers come in the order requests came. */
  private async drain(): Promise<void> {
    for (;;) {
      const item = this.queue.shift();
      if (!item) return;
      try {
        await this.handle(item);
      } catch (e) {
        this.log.error({ topic: item.msg.topic, err: (e as Error).message }, 'mqtt: a job request failed');
        this.answerRejected(item, null, new Refusal('EIO', 'internal_error', 'the gateway failed while answering this request; see its log'));
        this.audit(item, null, 'error', 'internal_error', {});
      }
    }
  }

  private async handle(item: Pending): Promise<void> {
    const cmd = item.kind === 'submit' ? 'job.submit' : 'job.cancel';
    let clientToken: string | null = null;
    let identity: Identity | null = null;
    const target: Record<string, unknown> = item.kind === 'cancel' ? { job: clip(item.id!) } : {};
    try {
      const req = this.parse(item.msg.payload);
      const ct = own(req, 'clientToken');
      if (typeof ct === 'string' && Buffer.byteLength(ct) <= MAX_TEXT_BYTES) clientToken = ct;
      // Who asks, before anything else is looked at: without a role nothing is said about links, files or jobs.
      identity = this.authorize(cmd, req);
      if (ct !== undefined && ct !== null && clientToken === null) {
        throw new Refusal('EINVAL', 'bad_client_token', `clientToken must be a string of at most ${MAX_TEXT_BYTES} bytes`, 'clientToken');
      }
      for (const k of Object.keys(req)) {
        if (!(item.kind === 'submit' ? SUBMIT_KEYS : CANCEL_KEYS).has(k)) throw new Refusal('EINVAL', 'unknown_field', `${cmd} has no field "${clip(k)}"`, clip(k));
      }
      const by: JobSubmitter = { name: identity.name, role: identity.role, via: 'mqtt' };
      if (item.kind === 'submit') {
        const rollout = own(req, 'rollout');
        if (rollout !== undefined && rollout !== null) {
          // A rollout's request runs only while its document says that wave runs (never late, never twice).
          if (!this.opts.fleet) throw new Refusal('ENOTSUP', 'no_fleet', 'this gateway takes no rollout requests', 'rollout');
          const ref = await this.fleetCall(() => this.opts.fleet!.checkRollout(rollout));
          target['rollout'] = `${ref.id}/${ref.wave}`;
          const again = clientToken === null ? undefined : this.opts.jobs.list({ limit: Number.MAX_SAFE_INTEGER }).find((j) => j.client_token === clientToken);
          if (again) {
            target['job'] = again.id;
            this.answerAccepted(item, clientToken, again);
            this.audit(item, identity, 'ok', undefined, target);
            return;
          }
        }
        const submit = await this.buildSubmit(req, by, clientToken, target);
        const r = await this.opts.jobs.submit(submit);
        if (!r.ok) throw new Refusal(r.error.code, r.error.reason, r.error.message, r.error.field);
        target['job'] = r.value.id;
        this.answerAccepted(item, clientToken, r.value);
      } else {
        const id = item.id!;
        if (this.opts.jobs.get(id) === undefined) throw new Refusal('ESRCH', 'no_such_job', `no job "${clip(id)}" on this gateway`);
        const r = await this.opts.jobs.cancel(id, by);
        if (!r.ok) throw new Refusal(r.error.code, r.error.reason, r.error.message, r.error.field);
        this.answerAccepted(item, clientToken, r.value);
      }
      this.audit(item, identity, 'ok', undefined, target);
    } catch (e) {
      if (!(e instanceof Refusal)) throw e;
      this.answerRejected(item, clientToken, e);
      this.audit(item, identity ?? e.identity, e.denied ? 'denied' : 'error', `${e.code}:${e.reason}`, target);
    }
  }

  private parse(payload: Buffer): Record<string, unknown> {
    return parseCommandPayload(payload);
  }

  private authorize(cmd: string, req: Record<string, unknown>): Identity {
    return authorizeCommand(this.opts.tokens, cmd, req);
  }

  private async buildSubmit(req: Record<string, unknown>, by: JobSubmitter, clientToken: string | null, target: Record<string, unknown>): Promise<JobSubmit> {
    const link = own(req, 'link');
    if (typeof link !== 'string' || link.length === 0) throw new Refusal('EINVAL', 'bad_link', 'link must be the name of a master link', 'link');
    target['link'] = clip(link);
    if (!this.opts.jobs.links().includes(link)) {
      throw new Refusal('ENOENT', 'unknown_link', `no master link "${clip(link)}" on this gateway (links: ${this.opts.jobs.links().join(', ') || 'none'})`, 'link');
    }
    const rawTargets = own(req, 'targets');
    let targets: string[] | undefined;
    if (rawTargets !== undefined && rawTargets !== null) {
      if (!Array.isArray(rawTargets) || rawTargets.length > MAX_TARGETS) throw new Refusal('EINVAL', 'bad_targets', `targets must be a list of at most ${MAX_TARGETS} target names`, 'targets');
      targets = rawTargets.map((t, i) => {
        if (typeof t === 'number' && Number.isSafeInteger(t) && t >= 0) return String(t);
        if (typeof t === 'string' && t.length > 0 && t.length <= 64) return t;
        throw new Refusal('EINVAL', 'bad_targets', `targets[${i}] must be a target name (a string such as "7")`, 'targets');
      });
    }
    const sha = own(req, 'image_sha256');
    if (sha !== undefined && sha !== null) {
      if (own(req, 'image') !== undefined) throw new Refusal('EINVAL', 'bad_image', 'give image or image_sha256, not both', 'image');
      if (!this.opts.fleet) throw new Refusal('ENOTSUP', 'no_fleet', 'this gateway fetches no images from the broker', 'image_sha256');
      target['image'] = `sha256:${clip(String(sha), 64)}`;
      const options = this.options(own(req, 'options'));
      const bytes = await this.fleetCall(() => this.opts.fleet!.image(sha));
      const submit: JobSubmit = { link, image: { bytes, name: `sha256:${sha as string}` }, client_token: clientToken, by };
      if (targets !== undefined) submit.targets = targets;
      if (options !== undefined) submit.options = options;
      return submit;
    }
    const image = own(req, 'image');
    if (typeof image !== 'string' || image.length === 0) {
      throw new Refusal('EINVAL', 'bad_image', 'image must name a file in the images directory (no upload over MQTT)', 'image');
    }
    target['image'] = clip(image, 200);
    const options = this.options(own(req, 'options'));
    const read = await readImageInside(image, { imagesDir: this.opts.imagesDir, maxBytes: this.opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES, field: 'image' });
    if (!read.ok) {
      const [code = 'EIO', reason = 'image_read_failed'] = read.error.error.split(':');
      const field = typeof read.error.detail?.['field'] === 'string' ? (read.error.detail['field'] as string) : 'image';
      throw new Refusal(code, reason, imageMessage(reason), field);
    }
    const submit: JobSubmit = { link, image: { bytes: read.bytes, name: image }, client_token: clientToken, by };
    if (targets !== undefined) submit.targets = targets;
    if (options !== undefined) submit.options = options;
    return submit;
  }

  /** A fleet hook's FleetError as a refusal; anything else (broker gone) as EIO. */
  private async fleetCall<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      const f = e as { code?: unknown; reason?: unknown; message?: string; field?: string };
      if (typeof f.code === 'string' && typeof f.reason === 'string') throw new Refusal(f.code, f.reason, f.message ?? f.reason, f.field);
      throw new Refusal('EIO', 'fleet_unavailable', `the fleet topics could not be read: ${(e as Error).message}`);
    }
  }

  /** The link options, checked by the job service's one validator (the control port uses it too). */
  private options(raw: unknown): JobOptions | undefined {
    if (raw === undefined || raw === null) return undefined;
    const r = checkOptions(raw);
    if (!r.ok) throw new Refusal(r.error.code, r.error.reason, r.error.message, r.error.field);
    return r.value;
  }

  // ---- answers and audit ------------------------------------------------------------------------

  private answerTopic(item: Pending, verdict: 'accepted' | 'rejected'): string {
    return item.kind === 'submit' ? jobSubmitAnswerTopic(this.opts.topics, verdict) : jobCancelAnswerTopic(this.opts.topics, item.id!, verdict);
  }

  private answerAccepted(item: Pending, clientToken: string | null, job: JobRecord): void {
    const body: AcceptedAnswer = { clientToken, job };
    this.answer(item, 'accepted', JSON.stringify(body));
  }

  private answerRejected(item: Pending, clientToken: string | null, r: Refusal): void {
    const body: RejectedAnswer = { clientToken, code: r.code, reason: r.reason, message: r.message };
    if (r.field !== undefined) body.field = r.field;
    this.answer(item, 'rejected', JSON.stringify(body));
  }

  private answer(item: Pending, verdict: 'accepted' | 'rejected', payload: string): void {
    const { bridge } = this.opts;
    const o = item.msg.correlationData !== undefined ? { correlationData: item.msg.correlationData } : {};
    bridge.publishAnswer(this.answerTopic(item, verdict), payload, o);
    const rt = item.msg.responseTopic;
    if (rt === undefined) return;
    if (this.responseTopicOk(rt)) bridge.publishAnswer(rt, payload, o);
    else if (!this.warnedResponseTopic) {
      this.warnedResponseTopic = true;
      this.log.warn({ responseTopic: clip(rt, 200) }, 'mqtt: a job request named a response topic the gateway does not answer on (wildcards, or under its own topics); answered on the standard topic only');
    }
  }

  private responseTopicOk(rt: string): boolean {
    return responseTopicAllowed(this.opts.topics, rt);
  }

  private audit(item: Pending, identity: Identity | null, verdict: Verdict, reason: string | undefined, target: Record<string, unknown>): void {
    const entry: AuditEntry = {
      who: identity?.name ?? 'anonymous',
      role: identity?.role ?? null,
      peer: 'mqtt',
      cmd: item.kind === 'submit' ? 'job.submit' : 'job.cancel',
      target: { via: 'mqtt', topic: clip(item.msg.topic, 200), ...target },
      verdict,
    };
    if (reason !== undefined) entry.reason = clip(reason, 300);
    this.opts.audit.record(entry);
  }
}

/** A request payload: a JSON object of at most MAX_REQUEST_BYTES, nested at most MAX_REQUEST_DEPTH; else a Refusal. */
export function parseCommandPayload(payload: Buffer): Record<string, unknown> {
  if (payload.length > MAX_REQUEST_BYTES) throw new Refusal('EINVAL', 'request_too_large', `a request is at most ${MAX_REQUEST_BYTES} bytes of JSON`);
  let req: unknown;
  try {
    req = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new Refusal('EINVAL', 'bad_json', 'the request is not JSON');
  }
  if (req === null || typeof req !== 'object' || Array.isArray(req)) throw new Refusal('EINVAL', 'bad_request', 'the request must be a JSON object');
  if (nestsDeeperThan(req, MAX_REQUEST_DEPTH)) throw new Refusal('EINVAL', 'request_too_deep', `the request nests deeper than ${MAX_REQUEST_DEPTH} levels`);
  return req as Record<string, unknown>;
}

/**
 * The request's token → an identity with the role the control port's table asks for `cmd`
 * (job.submit, job.cancel, val.set: operator; a command it lacks needs admin), or an EPERM Refusal.
 * The one token rule of every MQTT command plane.
 */
export function authorizeCommand(tokens: TokenStore | null, cmd: string, req: Record<string, unknown>): Identity {
  const token = own(req, 'token');
  if (typeof token !== 'string' || token.length === 0) throw Refusal.denied('token_required', `${cmd} over MQTT needs a "token" (an operator's [control] token)`, null, 'token');
  const id = tokens?.verify(token) ?? null;
  if (!id) throw Refusal.denied('invalid_token', 'the token is not valid', null, 'token');
  const need = requiredRole(cmd, req) ?? 'admin';
  if (need !== null && !roleAllows(id.role, need)) throw Refusal.denied(`${need}_required`, `${cmd} needs the ${need} role; the token's role is ${id.role}`, id);
  return id;
}

/** A response topic we publish to: no wildcard, not empty, not one of our own topics (no forging there). */
export function responseTopicAllowed(topics: TopicRoot, rt: string): boolean {
  const ownRoot = `${topics.prefix}/${topics.gatewayId}/`;
  return rt.length > 0 && Buffer.byteLength(rt) <= 1024 && !/[+#\u0000]/.test(rt) && !rt.startsWith(ownRoot);
}

function imageMessage(reason: string): string {
  switch (reason) {
    case 'no_such_image':
      return 'no such image in the images directory';
    case 'path_outside_images_dir':
      return 'image must name a file inside the images directory';
    case 'not_a_regular_file':
      return 'image is not a regular file';
    case 'image_too_large':
      return 'image is larger than max_image_bytes';
    case 'no_images_dir':
      return 'no images directory is configured; MQTT submits name an image in it';
    case 'images_dir_missing':
      return 'the images directory does not exist';
    case 'image_not_readable':
      return 'image is not readable';
    default:
      return 'the image could not be read';
  }
}
