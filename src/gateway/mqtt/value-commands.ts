/**
 * `val.set` over MQTT (docs/mqtt.md "Value commands"), on MQTT 3.1.1 and 5 alike, only with
 * `mqtt.commands = true`:
 *
 * - a request on `<prefix>/<gw>/values/set`: `{"clientToken"?, "token", "device", "oid", "value"}`
 *   (or `"link"` and `"node"` instead of `"device"`: a node on one of the gateway's CAN master links);
 * - answered once, in arrival order, on `<prefix>/<gw>/values/set/accepted` or `…/rejected` (and, with
 *   MQTT 5, on the request's response topic with its correlation data), like the job plane.
 *
 * The same rules as the job plane and the control port, with no second copy of any of them: the token
 * and the role table (`authorizeCommand`: `val.set` needs operator), and the value rule in
 * src/gateway/values.ts (`parseOid`, `setValue` with `authLevelOf(role)`: read-only, auth level, range,
 * f16, the PERSIST journal flushed before the answer). The device's engine then emits `value.changed`,
 * which the bridge publishes retained at `<prefix>/<gw>/device/<d>/values/<group>:<id>`, exactly as for
 * a `val.set` on the control port. Every refusal and every granted set gets one audit line (`peer:
 * "mqtt"`, `target.via: "mqtt"`). The token is never echoed, logged or audited.
 */
import type { AuditEntry, AuditLog, Verdict } from '../control/audit.js';
import type { Identity, TokenStore } from '../control/auth.js';
import { clip, MAX_TEXT_BYTES } from '../control/roles.js';
import { authLevelOf, parseOid, setValue, type ValueTarget } from '../values.js';
import type { BridgeLogger, CommandMessage, MqttBridge } from './bridge.js';
import { authorizeCommand, parseCommandPayload, Refusal, responseTopicAllowed } from './job-commands.js';
import { valueSetAnswerTopic, valueSetTopic, type TopicRoot } from './topics.js';

export type ValueBridge = Pick<MqttBridge, 'onCommands' | 'publishAnswer'>;

export interface MqttValueCommandsOptions {
  bridge: ValueBridge;
  topics: TopicRoot;
  /** The control port's tokens; the gateway refuses `mqtt.commands = true` without one. */
  tokens: TokenStore | null;
  audit: AuditLog;
  /** The value target of one of the gateway's devices, looked up at each request (a power cycle replaces it). */
  device(name: string): ValueTarget | undefined;
  /** The gateway's device names (said in an `unknown_device` refusal). */
  devices(): string[];
  /** The value target of node `node` on CAN master link `link`, if the gateway has that link. */
  canNode?(link: string, node: number): ValueTarget | undefined;
  /** The CAN master links (said in an `unknown_link` refusal). */
  canLinks?(): string[];
  /** Requests waiting at most; beyond, `EBUSY:too_many_requests`. Default 64. */
  maxPending?: number;
  /**
   * Whether a control-port session holds this pid locked (pid-locks.ts). MQTT has no sessions, so a
   * value of a locked task is refused, as a control-port write from another session is.
   */
  pidLocked?(pid: number): boolean;
  logger?: BridgeLogger;
}

/** The answer to a granted set (`…/accepted`). */
export interface ValueSetAccepted {
  clientToken: string | null;
  device: string | null;
  link?: string;
  node?: number;
  oid: number;
  group: number;
  id: number;
  value: number;
  f16: number;
  pid: number | null;
  persisted: boolean;
}

/** The answer to a refused set (`…/rejected`); `status` is the HSX value status when the registry refused. */
export interface ValueSetRejected {
  clientToken: string | null;
  code: string;
  reason: string;
  message: string;
  field?: string;
  status?: number;
}

const KEYS = new Set(['clientToken', 'token', 'device', 'link', 'node', 'oid', 'value']);
const own = (o: Record<string, unknown>, k: string): unknown => (Object.prototype.hasOwnProperty.call(o, k) ? o[k] : undefined);

/** A refusal by the value rule: the Refusal with the HSX status beside it. */
class ValueRefusal extends Refusal {
  constructor(code: string, reason: string, message: string, field: string | undefined, readonly status: number | null) {
    super(code, reason, message, field);
  }
}

export class MqttValueCommands {
  private readonly log: BridgeLogger;
  private readonly maxPending: number;
  private unsubscribe: (() => void) | null = null;
  private readonly queue: CommandMessage[] = [];
  private working: Promise<void> | null = null;
  private warnedResponseTopic = false;

  constructor(private readonly opts: MqttValueCommandsOptions) {
    this.log = opts.logger ?? { info() {}, warn() {}, error() {} };
    this.maxPending = opts.maxPending ?? 64;
  }

  /** Subscribes to the request topic (call only with `mqtt.commands = true`). */
  start(): void {
    if (this.unsubscribe) return;
    const topic = valueSetTopic(this.opts.topics);
    this.unsubscribe = this.opts.bridge.onCommands([topic], (m) => this.onCommand(m));
    this.log.info({ topics: [topic] }, 'mqtt: value commands on (mqtt.commands = true)');
  }

  async stop(timeoutMs = 2_000): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.queue.splice(0);
    if (this.working) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.working, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]).finally(() => clearTimeout(timer));
    }
  }

  private onCommand(msg: CommandMessage): void {
    if (!this.unsubscribe || msg.topic !== valueSetTopic(this.opts.topics)) return;
    if (this.queue.length >= this.maxPending) {
      this.rejected(msg, null, new Refusal('EBUSY', 'too_many_requests', `more than ${this.maxPending} MQTT value requests are waiting; try again`));
      this.audit(msg, null, 'error', 'EBUSY:too_many_requests', {});
      return;
    }
    this.queue.push(msg);
    if (!this.working) this.working = this.drain().finally(() => (this.working = null));
  }

  private async drain(): Promise<void> {
    for (;;) {
      const msg = this.queue.shift();
      if (!msg) return;
      try {
        await this.handle(msg);
      } catch (e) {
        this.log.error({ topic: msg.topic, err: (e as Error).message }, 'mqtt: a value request failed');
        this.rejected(msg, null, new Refusal('EIO', 'internal_error', 'the gateway failed while answering this request; see its log'));
        this.audit(msg, null, 'error', 'internal_error', {});
      }
    }
  }

  private async handle(msg: CommandMessage): Promise<void> {
    let clientToken: string | null = null;
    let identity: Identity | null = null;
    const target: Record<string, unknown> = {};
    try {
      const req = parseCommandPayload(msg.payload);
      const ct = own(req, 'clientToken');
      if (typeof ct === 'string' && Buffer.byteLength(ct) <= MAX_TEXT_BYTES) clientToken = ct;
      // who asks, before anything else: without the role nothing is said about devices or values
      identity = authorizeCommand(this.opts.tokens, 'val.set', req);
      if (ct !== undefined && ct !== null && clientToken === null) {
        throw new Refusal('EINVAL', 'bad_client_token', `clientToken must be a string of at most ${MAX_TEXT_BYTES} bytes`, 'clientToken');
      }
      for (const k of Object.keys(req)) if (!KEYS.has(k)) throw new Refusal('EINVAL', 'unknown_field', `val.set has no field "${clip(k)}"`, clip(k));
      const where = this.targetOf(req, target);
      const rawOid = own(req, 'oid');
      if (rawOid === undefined || rawOid === null) throw new Refusal('EINVAL', 'oid', 'val.set needs "oid" (GROUP:ID, or a number 0..65535)', 'oid');
      const oid = parseOid(rawOid);
      if (!oid.ok) throw new Refusal(oid.error.code, oid.error.reason, oid.error.message, 'oid');
      target['oid'] = oid.value;
      if (!Object.prototype.hasOwnProperty.call(req, 'value')) throw new Refusal('EINVAL', 'value', 'val.set needs "value" (a number an f16 holds)', 'value');
      if (where.target.kind === 'local') {
        const owner = where.target.engine.metadata.value(oid.value)?.pid;
        if (owner !== undefined && this.opts.pidLocked?.(owner)) {
          throw new Refusal('EPERM', 'pid_locked', `PID ${owner}, which owns this value, is locked by a control-port session`, 'oid');
        }
      }
      const r = await setValue(where.target, oid.value, req['value'], { auth: authLevelOf(identity.role) });
      if (!r.ok) {
        const e = r.error;
        throw new ValueRefusal(e.code, e.reason, e.message, e.field ?? undefined, e.status);
      }
      const body: ValueSetAccepted = {
        clientToken, device: where.device, ...where.can,
        oid: oid.value, group: oid.value >> 8, id: oid.value & 0xff,
        value: r.value.value, f16: r.value.f16, pid: r.value.pid, persisted: r.value.persisted,
      };
      this.answer(msg, 'accepted', JSON.stringify(body));
      this.audit(msg, identity, 'ok', undefined, target);
    } catch (e) {
      if (!(e instanceof Refusal)) throw e;
      this.rejected(msg, clientToken, e);
      // a permission refusal is `denied` (token, role, and the value's own read-only or auth level), the rest `error`
      const denied = e.denied || e.code === 'EPERM';
      this.audit(msg, identity ?? e.identity, denied ? 'denied' : 'error', `${e.code}:${e.reason}`, target);
    }
  }

  /** `device`, or `link` and `node`; checked here, the rest by the value rule. */
  private targetOf(req: Record<string, unknown>, audit: Record<string, unknown>):
    { target: ValueTarget; device: string | null; can: { link?: string; node?: number } } {
    const device = own(req, 'device');
    const link = own(req, 'link');
    const node = own(req, 'node');
    if (link !== undefined || node !== undefined) {
      if (device !== undefined) throw new Refusal('EINVAL', 'device', 'give "device", or "link" and "node", not both', 'device');
      if (typeof link !== 'string' || link.length === 0) throw new Refusal('EINVAL', 'link', 'link must be the name of a CAN master link', 'link');
      audit['link'] = clip(link);
      if (typeof node !== 'number' || !Number.isInteger(node) || node < 1 || node > 63) throw new Refusal('EINVAL', 'node', 'node must be a CAN node id 1..63', 'node');
      audit['node'] = node;
      const t = this.opts.canNode?.(link, node);
      if (!t) throw new Refusal('ENOENT', 'no_such_link', `${clip(link)} is not a CAN master link of this gateway (links: ${this.opts.canLinks?.().join(', ') || 'none'})`, 'link');
      return { target: t, device: null, can: { link, node } };
    }
    if (typeof device !== 'string' || device.length === 0) throw new Refusal('EINVAL', 'device', 'val.set needs "device" (a device name of this gateway), or "link" and "node"', 'device');
    audit['device'] = clip(device);
    const t = this.opts.device(device);
    if (!t) throw new Refusal('ENODEV', 'unknown_device', `no device "${clip(device)}" on this gateway (devices: ${this.opts.devices().join(', ') || 'none'})`, 'device');
    return { target: t, device, can: {} };
  }

  private rejected(msg: CommandMessage, clientToken: string | null, r: Refusal): void {
    const body: ValueSetRejected = { clientToken, code: r.code, reason: r.reason, message: r.message };
    if (r.field !== undefined) body.field = r.field;
    if (r instanceof ValueRefusal && r.status !== null) body.status = r.status;
    this.answer(msg, 'rejected', JSON.stringify(body));
  }

  private answer(msg: CommandMessage, verdict: 'accepted' | 'rejected', payload: string): void {
    const { bridge, topics } = this.opts;
    const o = msg.correlationData !== undefined ? { correlationData: msg.correlationData } : {};
    bridge.publishAnswer(valueSetAnswerTopic(topics, verdict), payload, o);
    const rt = msg.responseTopic;
    if (rt === undefined) return;
    if (responseTopicAllowed(topics, rt)) bridge.publishAnswer(rt, payload, o);
    else if (!this.warnedResponseTopic) {
      this.warnedResponseTopic = true;
      this.log.warn({ responseTopic: clip(rt, 200) }, 'mqtt: a value request named a response topic the gateway does not answer on (wildcards, or under its own topics); answered on the standard topic only');
    }
  }

  private audit(msg: CommandMessage, identity: Identity | null, verdict: Verdict, reason: string | undefined, target: Record<string, unknown>): void {
    const entry: AuditEntry = {
      who: identity?.name ?? 'anonymous',
      role: identity?.role ?? null,
      peer: 'mqtt',
      cmd: 'val.set',
      target: { via: 'mqtt', topic: clip(msg.topic, 200), ...target },
      verdict,
    };
    if (reason !== undefined) entry.reason = clip(reason, 300);
    this.opts.audit.record(entry);
  }
}
