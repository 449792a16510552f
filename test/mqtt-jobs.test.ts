/**
 * The MQTT command plane for jobs (src/gateway/mqtt/job-commands.ts, docs/mqtt.md "Jobs") against a
 * real Mosquitto (and the embedded aedes broker for its ACL), with a small fake JobService: the real
 * job manager's end-to-end tests live elsewhere. Every wait is on a message (or a log line), bounded.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { AuditLog } from '../src/gateway/control/audit.js';
import { sha256Hex, TokenStore, type TokenEntry } from '../src/gateway/control/auth.js';
import { validateConfig } from '../src/gateway/config.js';
import { deriveJobState, type JobEvent, type JobRecord, type JobResult, type JobService, type JobSubmit, type JobSubmitter, type JobTarget, type TargetState } from '../src/gateway/jobs/types.js';
import { jobEventToBus } from '../src/gateway/jobs/bus-events.js';
import { MqttBridge } from '../src/gateway/mqtt/bridge.js';
import { startEmbeddedBroker } from '../src/gateway/mqtt/embedded-broker.js';
import { checkCommandsConfig, deviceNamesFromConfig, MqttCommandsConfigError, MqttJobCommands, type MqttJobCommandsOptions } from '../src/gateway/mqtt/job-commands.js';
import {
  eventTopic,
  jobCancelAnswerTopic,
  jobCancelTopic,
  jobDocTopic,
  jobSubmitAnswerTopic,
  jobSubmitTopic,
  statusTopic,
  type TopicRoot,
} from '../src/gateway/mqtt/topics.js';
import { startMosquitto, type Mosquitto } from './support/mosquitto.js';

// ---- tokens, images, audit ------------------------------------------------------------------------

const OPERATOR_TOKEN = 'operator-secret-0123456789';
const VIEWER_TOKEN = 'viewer-secret-0123456789';
const ADMIN_TOKEN = 'admin-secret-0123456789';
const tokenEntries: TokenEntry[] = [
  { name: 'ops', role: 'operator', sha256: sha256Hex(OPERATOR_TOKEN) },
  { name: 'watcher', role: 'viewer', sha256: sha256Hex(VIEWER_TOKEN) },
  { name: 'root', role: 'admin', sha256: sha256Hex(ADMIN_TOKEN) },
];
const SECRETS = [OPERATOR_TOKEN, VIEWER_TOKEN, ADMIN_TOKEN];

const IMAGE_BYTES = Buffer.from('HSXE-not-really-an-image-but-bytes');

function tempDir(t: ExecutionContext, what: string): string {
  void t;
  return mkdtempSync(join(tmpdir(), `hsx-mqtt-jobs-${what}-`));
}

function imagesDir(t: ExecutionContext): string {
  const dir = join(tempDir(t, 'images'), 'images');
  mkdirSync(dir);
  writeFileSync(join(dir, 'blink.hxe'), IMAGE_BYTES);
  return dir;
}

/** The control port's audit log, written to a file (as `serve` does through pino). */
function auditLog(t: ExecutionContext): { audit: AuditLog; lines(): Array<Record<string, unknown>>; text(): string } {
  const file = join(tempDir(t, 'audit'), 'audit.log');
  const logger = pino({ level: 'info' }, pino.destination({ dest: file, sync: true })).child({ component: 'audit' });
  const text = (): string => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return '';
    }
  };
  const lines = () =>
    text()
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l['audit'] === true);
  return { audit: new AuditLog(logger, () => Date.now()), lines, text };
}

// ---- a fake job service -------------------------------------------------------------------------

class FakeJobs implements JobService {
  readonly jobs = new Map<string, JobRecord>();
  readonly submits: JobSubmit[] = [];
  private readonly watchers = new Set<(e: JobEvent) => void>();
  private n = 0;

  links(): string[] {
    return ['demo-bus'];
  }

  async submit(s: JobSubmit): Promise<JobResult<JobRecord>> {
    if (s.targets?.includes('99')) return { ok: false, error: { code: 'EINVAL', reason: 'unknown_target', message: 'no node 99 on demo-bus', field: 'targets' } };
    this.submits.push(s);
    const ts = 1764150000 + this.n;
    const id = `j-${++this.n}`;
    const targets: JobTarget[] = (s.targets?.length ? s.targets : ['1', '2']).map((target) => ({
      target,
      state: 'QUEUED',
      outcome: null,
      error: null,
      from: null,
      to: null,
      acked_bytes: 0,
      updated_ts: ts,
    }));
    const job: JobRecord = {
      id,
      link: s.link,
      image: { name: s.image.name, sha256: createHash('sha256').update(s.image.bytes).digest('hex'), size: s.image.bytes.length, app_name: null },
      options: s.options ?? {},
      state: 'QUEUED',
      targets,
      submitted_by: s.by,
      client_token: s.client_token ?? null,
      submitted_ts: ts,
      started_ts: null,
      finished_ts: null,
      reason: null,
      revision: 1,
    };
    this.jobs.set(id, job);
    this.emit({ type: 'job.submitted', job: structuredClone(job) });
    return { ok: true, value: structuredClone(job) };
  }

  get(id: string): JobRecord | undefined {
    const j = this.jobs.get(id);
    return j && structuredClone(j);
  }

  list(): JobRecord[] {
    return [...this.jobs.values()].reverse().map((j) => structuredClone(j));
  }

  async cancel(id: string, by: JobSubmitter): Promise<JobResult<JobRecord>> {
    void by;
    const job = this.jobs.get(id);
    if (!job) return { ok: false, error: { code: 'ESRCH', reason: 'no_such_job', message: `no job ${id}` } };
    if (job.finished_ts !== null) return { ok: false, error: { code: 'EBUSY', reason: 'job_finished', message: `${id} has finished` } };
    for (const t of job.targets) if (t.state === 'QUEUED' || t.state === 'IN_PROGRESS') t.state = 'CANCELED';
    this.bump(job, 'canceled');
    this.emit({ type: 'job.canceled', job: structuredClone(job) });
    return { ok: true, value: structuredClone(job) };
  }

  watch(fn: (e: JobEvent) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  // Drivers for the tests.
  start(id: string): void {
    const job = this.jobs.get(id)!;
    job.started_ts = job.submitted_ts + 1;
    for (const t of job.targets) t.state = 'IN_PROGRESS';
    this.bump(job);
    this.emit({ type: 'job.started', job: structuredClone(job) });
  }

  progress(id: string, target: string, acked: number, total: number): void {
    const job = this.jobs.get(id)!;
    job.targets.find((t) => t.target === target)!.acked_bytes = acked;
    this.emit({ type: 'job.progress', job: structuredClone(job), target, acked_bytes: acked, total_bytes: total });
  }

  finishTarget(id: string, target: string, state: TargetState): void {
    const job = this.jobs.get(id)!;
    const t = job.targets.find((x) => x.target === target)!;
    t.state = state;
    t.outcome = state === 'SUCCEEDED' ? 'installed' : null;
    this.bump(job);
    this.emit({ type: 'job.target', job: structuredClone(job), target: structuredClone(t) });
    if (job.finished_ts !== null) this.emit({ type: 'job.finished', job: structuredClone(job) });
  }

  /** Retention: the job is forgotten (the real manager prunes its journal). */
  drop(id: string): void {
    this.jobs.delete(id);
  }

  private bump(job: JobRecord, reason?: string): void {
    job.state = deriveJobState(job.targets);
    if (!['QUEUED', 'IN_PROGRESS'].includes(job.state)) {
      job.finished_ts = job.submitted_ts + 2;
      if (reason) job.reason = reason;
    }
    job.revision++;
  }

  private emit(e: JobEvent): void {
    for (const w of this.watchers) w(e);
  }
}

// ---- MQTT helpers -------------------------------------------------------------------------------

interface Received {
  topic: string;
  payload: string;
  retain: boolean;
  correlationData?: Buffer;
}

interface Watcher {
  client: MqttClient;
  got: Received[];
  /** The first message (from index `from`) that `pred` accepts, waiting for it if need be. */
  next(pred: (m: Received) => boolean, what: string, from?: number, ms?: number): Promise<Received>;
}

async function watcher(url: string, topics: string | string[], extra: IClientOptions = {}): Promise<Watcher> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 100, ...extra });
  const got: Received[] = [];
  const waiters = new Set<() => void>();
  client.on('message', (topic, payload, packet) => {
    const m: Received = { topic, payload: payload.toString(), retain: packet.retain };
    if (packet.properties?.correlationData) m.correlationData = Buffer.from(packet.properties.correlationData);
    got.push(m);
    for (const w of [...waiters]) w();
  });
  const next = (pred: (m: Received) => boolean, what: string, from = 0, ms = 15_000): Promise<Received> =>
    new Promise((resolve, reject) => {
      const find = (): boolean => {
        const hit = got.slice(from).find(pred);
        if (!hit) return false;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(hit);
        return true;
      };
      const check = (): void => void find();
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, ms);
      if (!find()) waiters.add(check);
    });
  await client.subscribeAsync(topics, { qos: 1 });
  return { client, got, next };
}

async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const json = (m: Received): Record<string, any> => JSON.parse(m.payload); // eslint-disable-line @typescript-eslint/no-explicit-any

interface Plane {
  broker: Mosquitto;
  bridge: MqttBridge;
  jobs: FakeJobs;
  plane: MqttJobCommands;
  topics: TopicRoot;
  audit: ReturnType<typeof auditLog>;
  /** Everything under the gateway's root and on the response topics, seen by one client. */
  all: Watcher;
  /** A requester (MQTT 3.1.1 unless `v5`). */
  requester(v5?: boolean): Promise<MqttClient>;
}

let gwCount = 0;

async function startPlane(t: ExecutionContext, o: { commands?: boolean; persistence?: boolean; extra?: Partial<MqttJobCommandsOptions>; allSub?: IClientOptions } = {}): Promise<Plane> {
  const broker = await startMosquitto({ persistence: o.persistence ?? false });
  t.teardown(() => broker.stop());
  const topics = { prefix: 'hsxjobs', gatewayId: `gw${++gwCount}` };
  const all = await watcher(broker.url, [`${topics.prefix}/${topics.gatewayId}/#`, 'replies/#'], { protocolVersion: 5, ...o.allSub });
  t.teardown(() => all.client.endAsync(true));
  const bridge = new MqttBridge({ url: broker.url, topics, reconnectPeriodMs: 100 });
  t.teardown(() => bridge.stop().then(() => undefined));
  await bridge.waitConnected();
  const jobs = new FakeJobs();
  const audit = auditLog(t);
  const plane = new MqttJobCommands({
    bridge,
    topics,
    jobs,
    commands: o.commands ?? true,
    tokens: new TokenStore(tokenEntries),
    audit: audit.audit,
    imagesDir: imagesDir(t),
    publishEvents: true,
    deviceName: (link, target) => (link === 'demo-bus' && target === '1' ? 'node1' : undefined),
    ...o.extra,
  });
  plane.start();
  t.teardown(() => plane.stop());
  const requester = async (v5 = false): Promise<MqttClient> => {
    const c = await mqtt.connectAsync(broker.url, { protocolVersion: v5 ? 5 : 4, reconnectPeriod: 0 });
    t.teardown(() => c.endAsync(true));
    return c;
  };
  return { broker, bridge, jobs, plane, topics, audit, all, requester };
}

const submitBody = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  clientToken: 'req-1',
  token: OPERATOR_TOKEN,
  link: 'demo-bus',
  targets: ['1', '2'],
  image: 'blink.hxe',
  ...extra,
});

/** No message any client saw, and no audit line, carries a token secret. */
function noSecretLeaked(t: ExecutionContext, p: Plane, requestTopics: string[]): void {
  for (const m of p.all.got) {
    if (requestTopics.includes(m.topic)) continue; // the requests themselves (a test client reads everything on Mosquitto)
    for (const s of SECRETS) t.false(m.payload.includes(s), `${m.topic} carries no token`);
  }
  for (const s of SECRETS) t.false(p.audit.text().includes(s), 'the audit log carries no token');
}

// ---- tests --------------------------------------------------------------------------------------

test('submit over MQTT 3.1.1: accepted with the clientToken, the job is submitted with the image from the images dir, and its document is retained', async (t) => {
  const p = await startPlane(t);
  const req = await p.requester();
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ options: { force: true, retries: 3 } })), { qos: 1 });
  const ans = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted'), 'accepted answer');
  const body = json(ans);
  t.deepEqual(Object.keys(body).sort(), ['clientToken', 'job']);
  t.is(body['clientToken'], 'req-1');
  t.is(body['job'].id, 'j-1');
  t.deepEqual(body['job'].submitted_by, { name: 'ops', role: 'operator', via: 'mqtt' });
  t.is(p.jobs.submits.length, 1);
  const s = p.jobs.submits[0]!;
  t.is(s.link, 'demo-bus');
  t.deepEqual(s.targets, ['1', '2']);
  t.is(s.image.name, 'blink.hxe');
  t.deepEqual(Buffer.from(s.image.bytes), IMAGE_BYTES);
  t.deepEqual(s.options, { force: true, retries: 3 });
  t.is(s.client_token, 'req-1');
  // The retained document, for a late subscriber too.
  const late = await watcher(p.broker.url, jobDocTopic(p.topics, 'j-1'));
  t.teardown(() => late.client.endAsync(true));
  const doc = await late.next((m) => m.retain, 'retained job document');
  t.is(json(doc)['state'], 'QUEUED');
  t.is(json(doc)['revision'], 1);
  // Audited as a change (verdict ok), with who and what, never the token.
  await until(() => p.audit.lines().some((l) => l['verdict'] === 'ok'), 'audit line');
  t.like(p.audit.lines().find((l) => l['verdict'] === 'ok'), { cmd: 'job.submit', who: 'ops', role: 'operator', peer: 'mqtt', component: 'audit', target_via: 'mqtt', target_job: 'j-1', target_link: 'demo-bus', target_image: 'blink.hxe' });
  noSecretLeaked(t, p, [jobSubmitTopic(p.topics)]);
  // The gateway's client subscribed to the two command topics (Mosquitto's log).
  const log = readFileSync(join(p.broker.dir, 'mosquitto.log'), 'utf8');
  t.true(log.includes(`\t${jobSubmitTopic(p.topics)} (QoS 1)`));
  t.true(log.includes(`\t${p.topics.prefix}/${p.topics.gatewayId}/jobs/+/cancel (QoS 1)`));
});

test('submit over MQTT 5 with a response topic and correlation data: the answer goes there too, the correlation data copied', async (t) => {
  const p = await startPlane(t);
  const req = await p.requester(true);
  const correlationData = Buffer.from([0xde, 0xad, 0x00, 0x01]);
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ clientToken: 'v5-req' })), {
    qos: 1,
    properties: { responseTopic: 'replies/tool-7', correlationData },
  });
  const onResponseTopic = await p.all.next((m) => m.topic === 'replies/tool-7', 'answer on the response topic');
  t.deepEqual(onResponseTopic.correlationData, correlationData);
  t.is(json(onResponseTopic)['clientToken'], 'v5-req');
  t.is(json(onResponseTopic)['job'].id, 'j-1');
  const standard = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted'), 'answer on the standard topic');
  t.is(standard.payload, onResponseTopic.payload);
  t.deepEqual(standard.correlationData, correlationData);
  // A refusal follows the same path.
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ clientToken: 'v5-bad', token: VIEWER_TOKEN })), {
    qos: 1,
    properties: { responseTopic: 'replies/tool-7', correlationData: Buffer.from('c2') },
  });
  const refused = await p.all.next((m) => m.topic === 'replies/tool-7' && json(m)['clientToken'] === 'v5-bad', 'refusal on the response topic');
  t.is(json(refused)['code'], 'EPERM');
  t.deepEqual(refused.correlationData, Buffer.from('c2'));
  // A response topic under the gateway's own topics is not answered on (no forging of its topics).
  const before = p.all.got.length;
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ clientToken: 'v5-own' })), {
    qos: 1,
    properties: { responseTopic: statusTopic(p.topics), correlationData: Buffer.from('c3') },
  });
  await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted') && json(m)['clientToken'] === 'v5-own', 'answer', before);
  t.false(p.all.got.slice(before).some((m) => m.topic === statusTopic(p.topics)), 'nothing published on the gateway status topic');
  noSecretLeaked(t, p, [jobSubmitTopic(p.topics)]);
});

test('a request without a token, with a wrong token or with a viewer token is refused (EPERM) and audited; nothing is submitted', async (t) => {
  const p = await startPlane(t);
  const req = await p.requester();
  const cases = [
    { clientToken: 'no-token', token: undefined, reason: 'token_required', who: 'anonymous', role: null },
    { clientToken: 'wrong-token', token: 'not-a-token-at-all', reason: 'invalid_token', who: 'anonymous', role: null },
    { clientToken: 'viewer-token', token: VIEWER_TOKEN, reason: 'operator_required', who: 'watcher', role: 'viewer' },
  ];
  for (const c of cases) {
    const body = submitBody({ clientToken: c.clientToken });
    if (c.token === undefined) delete body['token'];
    else body['token'] = c.token;
    await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(body), { qos: 1 });
    const ans = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'rejected') && json(m)['clientToken'] === c.clientToken, `refusal of ${c.clientToken}`);
    t.like(json(ans), { clientToken: c.clientToken, code: 'EPERM', reason: c.reason });
    t.is(typeof json(ans)['message'], 'string');
  }
  // A cancel is held to the same rule.
  await req.publishAsync(jobCancelTopic(p.topics, 'j-1'), JSON.stringify({ clientToken: 'cancel-viewer', token: VIEWER_TOKEN }), { qos: 1 });
  const c = await p.all.next((m) => m.topic === jobCancelAnswerTopic(p.topics, 'j-1', 'rejected'), 'cancel refusal');
  t.like(json(c), { clientToken: 'cancel-viewer', code: 'EPERM', reason: 'operator_required' });
  t.is(p.jobs.submits.length, 0, 'nothing was submitted');
  t.false(p.all.got.some((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted')));
  // The audit log file: one denied line per refusal, naming who (when known) and the refusal.
  await until(() => p.audit.lines().filter((l) => l['verdict'] === 'denied').length >= 4, 'four denied audit lines');
  const denied = p.audit.lines().filter((l) => l['verdict'] === 'denied');
  for (const cse of cases) {
    t.truthy(
      denied.find((l) => l['cmd'] === 'job.submit' && l['reason'] === `EPERM:${cse.reason}` && l['who'] === cse.who && l['role'] === cse.role && l['peer'] === 'mqtt'),
      `audit line for ${cse.clientToken}`,
    );
  }
  t.truthy(denied.find((l) => l['cmd'] === 'job.cancel' && l['reason'] === 'EPERM:operator_required' && l['who'] === 'watcher'));
  noSecretLeaked(t, p, [jobSubmitTopic(p.topics), jobCancelTopic(p.topics, 'j-1')]);
});

test('bad requests are rejected naming the field: unknown link, image outside the images dir or missing, bad options, unknown field, not JSON; a service refusal is passed on', async (t) => {
  const p = await startPlane(t);
  const req = await p.requester();
  const cases: Array<{ body: Record<string, unknown> | string; want: Record<string, unknown> }> = [
    { body: submitBody({ clientToken: 'a', link: 'nope-bus' }), want: { code: 'ENOENT', reason: 'unknown_link', field: 'link' } },
    { body: submitBody({ clientToken: 'b', image: '../../etc/passwd' }), want: { code: 'EPERM', reason: 'path_outside_images_dir', field: 'image' } },
    { body: submitBody({ clientToken: 'c', image: 'missing.hxe' }), want: { code: 'ENOENT', reason: 'no_such_image', field: 'image' } },
    { body: submitBody({ clientToken: 'd', options: { window: 'big' } }), want: { code: 'EINVAL', reason: 'bad_option', field: 'options.window' } },
    { body: submitBody({ clientToken: 'e', upload: 'AAAA' }), want: { code: 'EINVAL', reason: 'unknown_field', field: 'upload' } },
    { body: submitBody({ clientToken: 'f', targets: ['1', '99'] }), want: { code: 'EINVAL', reason: 'unknown_target', field: 'targets' } },
    { body: submitBody({ clientToken: 'g', image: undefined }), want: { code: 'EINVAL', reason: 'bad_image', field: 'image' } },
    { body: '{not json', want: { clientToken: null, code: 'EINVAL', reason: 'bad_json' } },
  ];
  for (const [i, c] of cases.entries()) {
    const from = p.all.got.length;
    await req.publishAsync(jobSubmitTopic(p.topics), typeof c.body === 'string' ? c.body : JSON.stringify(c.body), { qos: 1 });
    const ans = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'rejected'), `refusal ${i}`, from);
    t.like(json(ans), c.want, `case ${i}`);
    if (typeof c.body !== 'string') t.is(json(ans)['clientToken'], c.body['clientToken']);
  }
  t.is(p.jobs.submits.length, 0);
  // Refusals of an authorised request are audited as errors.
  await until(() => p.audit.lines().filter((l) => l['verdict'] === 'error').length >= 7, 'error audit lines');
  t.truthy(p.audit.lines().find((l) => l['reason'] === 'ENOENT:unknown_link' && l['who'] === 'ops'));
});

test('cancel: accepted with the job, the document turns CANCELED; an unknown job is ESRCH; a finished job is refused by the service', async (t) => {
  const p = await startPlane(t);
  const req = await p.requester();
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody()), { qos: 1 });
  await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted'), 'accepted');
  p.jobs.start('j-1');
  await req.publishAsync(jobCancelTopic(p.topics, 'j-1'), JSON.stringify({ clientToken: 'cx', token: ADMIN_TOKEN }), { qos: 1 });
  const ans = await p.all.next((m) => m.topic === jobCancelAnswerTopic(p.topics, 'j-1', 'accepted'), 'cancel accepted');
  t.deepEqual(Object.keys(json(ans)).sort(), ['clientToken', 'job']);
  t.is(json(ans)['clientToken'], 'cx');
  t.is(json(ans)['job'].state, 'CANCELED');
  const doc = await p.all.next((m) => m.topic === jobDocTopic(p.topics, 'j-1') && json(m)['state'] === 'CANCELED', 'CANCELED document');
  t.is(json(doc)['reason'], 'canceled');
  await p.all.next((m) => m.topic === eventTopic(p.topics, 'job.canceled'), 'job.canceled event');
  await req.publishAsync(jobCancelTopic(p.topics, 'j-9'), JSON.stringify({ clientToken: 'cy', token: OPERATOR_TOKEN }), { qos: 1 });
  const missing = await p.all.next((m) => m.topic === jobCancelAnswerTopic(p.topics, 'j-9', 'rejected'), 'cancel of an unknown job');
  t.like(json(missing), { clientToken: 'cy', code: 'ESRCH', reason: 'no_such_job' });
  await req.publishAsync(jobCancelTopic(p.topics, 'j-1'), JSON.stringify({ clientToken: 'cz', token: OPERATOR_TOKEN }), { qos: 1 });
  const again = await p.all.next((m) => m.topic === jobCancelAnswerTopic(p.topics, 'j-1', 'rejected'), 'second cancel');
  t.like(json(again), { clientToken: 'cz', code: 'EBUSY', reason: 'job_finished' });
  await until(() => p.audit.lines().some((l) => l['cmd'] === 'job.cancel' && l['verdict'] === 'ok'), 'cancel audited');
  t.like(p.audit.lines().find((l) => l['cmd'] === 'job.cancel' && l['verdict'] === 'ok'), { who: 'root', role: 'admin', target_job: 'j-1' });
});

test('the retained document follows every change (revision by revision); progress goes to the device topics, job events to events/job/<kind>; a job dropped by retention has its document cleared', async (t) => {
  const p = await startPlane(t);
  const req = await p.requester();
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ targets: ['1', '2'] })), { qos: 1 });
  await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted'), 'accepted');
  p.jobs.start('j-1');
  p.jobs.progress('j-1', '1', 512, 1024);
  p.jobs.progress('j-1', '2', 1024, 1024);
  p.jobs.finishTarget('j-1', '1', 'SUCCEEDED');
  p.jobs.finishTarget('j-1', '2', 'SKIPPED');
  const finalRevision = p.jobs.jobs.get('j-1')!.revision;
  await p.all.next((m) => m.topic === jobDocTopic(p.topics, 'j-1') && json(m)['revision'] === finalRevision, 'final document');
  const docs = p.all.got.filter((m) => m.topic === jobDocTopic(p.topics, 'j-1')).map(json);
  t.deepEqual(docs.map((d) => d['revision']), [1, 2, 3, 4], 'one document per change, in order');
  t.deepEqual(docs.map((d) => d['state']), ['QUEUED', 'IN_PROGRESS', 'IN_PROGRESS', 'SUCCEEDED']);
  // Progress on the device topics: a configured device by name, else <link>-<target>.
  const p1 = await p.all.next((m) => m.topic === eventTopic(p.topics, 'job.progress', 'node1'), 'progress of target 1 on node1');
  t.like(json(p1), { type: 'job.progress', device: 'node1', data: { job_id: 'j-1', target: '1', acked_bytes: 512, total_bytes: 1024, percent: 50 } });
  t.false('device' in json(p1)['data'], 'the device is in the envelope, as for events that come through the event bus');
  const p2 = await p.all.next((m) => m.topic === eventTopic(p.topics, 'job.progress', 'demo-bus-2'), 'progress of target 2 on demo-bus-2');
  t.is(json(p2)['data'].percent, 100);
  // The same event through the gateway's event bus (jobEventToBus, no device): the bridge asks the plane for it.
  const viaBus = jobEventToBus({ type: 'job.progress', job: p.jobs.get('j-1')!, target: '1', acked_bytes: 256, total_bytes: 1024 });
  p.bridge.publishEvent({ seq: 9000, ts: 1764150009, type: viaBus.type, pid: viaBus.pid, phase: viaBus.phase, data: viaBus.data });
  const p3 = await p.all.next((m) => m.topic === eventTopic(p.topics, 'job.progress', 'node1') && json(m)['seq'] === 9000, 'bus-path progress on node1');
  t.is(json(p3)['device'], 'node1');
  for (const kind of ['job.submitted', 'job.started', 'job.target', 'job.finished']) {
    const e = await p.all.next((m) => m.topic === eventTopic(p.topics, kind), kind);
    t.is(json(e)['type'], kind);
    t.is(json(e)['data'].job_id, 'j-1');
  }
  // Retention drops the job: the next job event (or the timer) clears its retained document.
  p.jobs.drop('j-1');
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ clientToken: 'second' })), { qos: 1 });
  const cleared = await p.all.next((m) => m.topic === jobDocTopic(p.topics, 'j-1') && m.payload === '', 'empty retained message clearing j-1');
  t.is(cleared.payload, '');
  await p.all.next((m) => m.topic === jobDocTopic(p.topics, 'j-2'), 'j-2 document');
  const late = await watcher(p.broker.url, `${p.topics.prefix}/${p.topics.gatewayId}/jobs/+`);
  t.teardown(() => late.client.endAsync(true));
  await late.next((m) => m.topic === jobDocTopic(p.topics, 'j-2') && m.retain, 'retained j-2 for a late subscriber');
  t.false(late.got.some((m) => m.topic === jobDocTopic(p.topics, 'j-1')), 'no retained j-1 any more');
  // sweep() directly: what the job service (or the timer) triggers after pruning.
  p.jobs.drop('j-2');
  t.is(p.plane.sweep(), 1);
  await p.all.next((m) => m.topic === jobDocTopic(p.topics, 'j-2') && m.payload === '', 'j-2 cleared');
});

test('commands off (the default of mqtt.commands): no subscription at all, a submit gets no answer; documents are still published', async (t) => {
  const p = await startPlane(t, { commands: false });
  t.deepEqual(p.bridge.commandFilters(), []);
  const log = join(p.broker.dir, 'mosquitto.log');
  // The bridge's own subscriptions (its retained topics) are in Mosquitto's log once it has connected.
  await until(() => readFileSync(log, 'utf8').includes(`\t${statusTopic(p.topics)} (QoS 0)`), 'the bridge subscribed to its status');
  const req = await p.requester();
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody()), { qos: 1 });
  await until(() => readFileSync(log, 'utf8').includes(`'${jobSubmitTopic(p.topics)}'`), 'the broker logged the submit');
  // A marker through the gateway's client, after the submit reached the broker.
  p.jobs.submit({ link: 'demo-bus', image: { bytes: IMAGE_BYTES, name: 'blink.hxe' }, by: { name: 'local', role: 'admin', via: 'control' } }).catch(() => undefined);
  await p.all.next((m) => m.topic === jobDocTopic(p.topics, 'j-1'), 'a job document published with commands off');
  const text = readFileSync(log, 'utf8');
  t.false(/jobs\/submit \(QoS/.test(text), 'nobody subscribed to the submit topic');
  t.false(/jobs\/\+\/cancel \(QoS/.test(text), 'nobody subscribed to the cancel topics');
  t.false(p.all.got.some((m) => m.topic.startsWith(jobSubmitTopic(p.topics) + '/')), 'no answer');
  t.is(p.jobs.submits.length, 1, 'only the marker job');
  t.deepEqual(p.audit.lines(), []);
});

test('commands on with no token configured: refused loudly at start-up', (t) => {
  const msg = checkCommandsConfig(true, null);
  t.regex(msg ?? '', /mqtt\.commands = true but no access tokens/);
  t.is(checkCommandsConfig(true, new TokenStore([])), msg);
  t.is(checkCommandsConfig(false, null), null);
  t.is(checkCommandsConfig(true, new TokenStore(tokenEntries)), null);
  const err = t.throws(
    () =>
      new MqttJobCommands({
        bridge: {} as MqttJobCommandsOptions['bridge'],
        topics: { prefix: 'x', gatewayId: 'y' },
        jobs: new FakeJobs(),
        commands: true,
        tokens: null,
        audit: new AuditLog(undefined, () => 0),
        imagesDir: undefined,
      }),
    { instanceOf: MqttCommandsConfigError },
  );
  t.is((err as MqttCommandsConfigError).code, 'ECONFIG');
  // The config key, off by default.
  const off = validateConfig({ gateway: { id: 'g' }, mqtt: { url: 'mqtt://127.0.0.1:1883' } });
  t.true(off.ok && off.value.mqtt?.commands === false);
  const on = validateConfig({ gateway: { id: 'g' }, mqtt: { url: 'mqtt://127.0.0.1:1883', commands: true } });
  t.true(on.ok && on.value.mqtt?.commands === true);
  const bad = validateConfig({ gateway: { id: 'g' }, mqtt: { url: 'mqtt://127.0.0.1:1883', commands: 'yes' } });
  t.false(bad.ok);
});

test('broker outage mid-job: the job runs on; its final retained document and terminal events arrive after the reconnect', async (t) => {
  t.timeout(90_000);
  const p = await startPlane(t, { persistence: true });
  // A persistent subscriber (survives the broker restart) for the job events and documents.
  const sub = await watcher(p.broker.url, [`${p.topics.prefix}/${p.topics.gatewayId}/jobs/+`, `${p.topics.prefix}/${p.topics.gatewayId}/events/job/#`], {
    clean: false,
    clientId: `jobs-outage-${process.pid}`,
    reconnectPeriod: 100,
  });
  t.teardown(() => sub.client.endAsync(true));
  const req = await p.requester();
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify(submitBody({ targets: ['1', '2', '3'] })), { qos: 1 });
  await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted'), 'accepted');
  p.jobs.start('j-1');
  await sub.next((m) => m.topic === jobDocTopic(p.topics, 'j-1') && json(m)['state'] === 'IN_PROGRESS', 'IN_PROGRESS document before the outage');
  await p.broker.stop();
  await until(() => !p.bridge.stats().connected, 'the bridge noticed the outage');
  // The job runs on while the broker is away.
  p.jobs.progress('j-1', '1', 100, 1000);
  p.jobs.finishTarget('j-1', '1', 'SUCCEEDED');
  p.jobs.finishTarget('j-1', '2', 'FAILED');
  p.jobs.finishTarget('j-1', '3', 'SUCCEEDED');
  const final = p.jobs.jobs.get('j-1')!;
  t.is(final.state, 'FAILED');
  t.true(p.bridge.stats().buffered > 0, 'held in the outage buffer');
  await p.broker.restart();
  await until(() => p.bridge.stats().connected, 'the bridge reconnected', 20_000);
  const finished = await sub.next((m) => m.topic === eventTopic(p.topics, 'job.finished'), 'job.finished after the reconnect', 0, 30_000);
  t.is(json(finished)['data'].state, 'FAILED');
  const targetEvents = await until(() => sub.got.filter((m) => m.topic === eventTopic(p.topics, 'job.target')).length >= 3, 'the three job.target events', 30_000).then(() =>
    sub.got.filter((m) => m.topic === eventTopic(p.topics, 'job.target')).map((m) => json(m)['data'].target.target),
  );
  t.deepEqual(targetEvents, ['1', '2', '3']);
  const doc = await sub.next((m) => m.topic === jobDocTopic(p.topics, 'j-1') && json(m)['revision'] === final.revision, 'final document after the reconnect', 0, 30_000);
  t.is(json(doc)['state'], 'FAILED');
  // What the broker holds now is the last document (the newest won through the buffer).
  const late = await watcher(p.broker.url, jobDocTopic(p.topics, 'j-1'));
  t.teardown(() => late.client.endAsync(true));
  const held = await late.next((m) => m.retain, 'retained document for a late subscriber');
  t.is(json(held)['revision'], final.revision);
  t.is(json(held)['state'], 'FAILED');
  t.is(p.bridge.stats().droppedTerminal, 0);
});

test('embedded broker with commands: an operator-token client may publish to submit and cancel (and nothing else); viewer and anonymous clients may not; other clients never see a request', async (t) => {
  t.timeout(60_000);
  const topics = { prefix: 'hsxemb', gatewayId: 'gwe' };
  const brokerTokens = tokenEntries.map((e) => ({ name: e.name, role: e.role, sha256: e.sha256 }));
  const broker = await startEmbeddedBroker({ port: 0, topics, tokens: brokerTokens, anonymousRead: true, commands: true });
  t.teardown(() => broker.close());
  const { username, password, clientId } = broker.internal;
  const bridge = new MqttBridge({ url: broker.url, topics, protocolVersion: 4, username, password, clientId });
  t.teardown(() => bridge.stop().then(() => undefined));
  await bridge.waitConnected();
  const jobs = new FakeJobs();
  const audit = auditLog(t);
  const plane = new MqttJobCommands({ bridge, topics, jobs, commands: true, tokens: new TokenStore(tokenEntries), audit: audit.audit, imagesDir: imagesDir(t) });
  plane.start();
  t.teardown(() => plane.stop());
  // A viewer-token monitor reading everything: it sees answers, never the requests (they carry tokens).
  const monitor = await watcher(broker.url, `${topics.prefix}/${topics.gatewayId}/#`, { username: 'watcher', password: VIEWER_TOKEN, reconnectPeriod: 0 });
  t.teardown(() => monitor.client.endAsync(true));
  const op = await watcher(broker.url, `${topics.prefix}/${topics.gatewayId}/jobs/#`, { username: 'ops', password: OPERATOR_TOKEN, reconnectPeriod: 0 });
  t.teardown(() => op.client.endAsync(true));
  await op.client.publishAsync(jobSubmitTopic(topics), JSON.stringify(submitBody({ clientToken: 'emb-1' })), { qos: 1 });
  const ans = await op.next((m) => m.topic === jobSubmitAnswerTopic(topics, 'accepted'), 'accepted over the embedded broker');
  t.is(json(ans)['clientToken'], 'emb-1');
  await op.client.publishAsync(jobCancelTopic(topics, 'j-1'), JSON.stringify({ clientToken: 'emb-2', token: OPERATOR_TOKEN }), { qos: 1 });
  await op.next((m) => m.topic === jobCancelAnswerTopic(topics, 'j-1', 'accepted'), 'cancel accepted over the embedded broker');
  await monitor.next((m) => m.topic === jobCancelAnswerTopic(topics, 'j-1', 'accepted'), 'the monitor sees the answer');
  t.false(monitor.got.some((m) => m.topic === jobSubmitTopic(topics) || m.topic === jobCancelTopic(topics, 'j-1')), 'requests are not forwarded to other clients');
  t.false(op.got.some((m) => m.topic === jobSubmitTopic(topics)), 'not even to the requester');
  const refusedBefore = broker.stats().refusedPublishes;

  const closes = (c: MqttClient, topic: string, payload: string, retain = false): Promise<void> =>
    new Promise((resolve, reject) => {
      c.on('error', () => undefined);
      const timer = setTimeout(() => reject(new Error(`no disconnect after a publish to ${topic}`)), 15_000);
      c.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      c.publish(topic, payload, { qos: 1, retain });
    });
  // The operator may publish nothing else, and no retained command.
  const op2 = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'ops', password: OPERATOR_TOKEN });
  await closes(op2, statusTopic(topics), '{"state":"offline"}', true);
  const op3 = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'ops', password: OPERATOR_TOKEN });
  await closes(op3, jobSubmitTopic(topics), JSON.stringify(submitBody()), true);
  const op4 = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'ops', password: OPERATOR_TOKEN });
  await closes(op4, `${topics.prefix}/${topics.gatewayId}/jobs/j-1`, '{}');
  // A viewer token and an anonymous reader may not publish a request at all.
  const viewer = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'watcher', password: VIEWER_TOKEN });
  await closes(viewer, jobSubmitTopic(topics), JSON.stringify(submitBody({ token: OPERATOR_TOKEN })));
  const anon = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  await closes(anon, jobCancelTopic(topics, 'j-1'), JSON.stringify({ token: OPERATOR_TOKEN }));
  t.is(broker.stats().refusedPublishes, refusedBefore + 5);
  t.is(jobs.submits.length, 1, 'only the operator submit reached the job service');
});

test('embedded broker without commands (the default): an operator-token client may not publish a request', async (t) => {
  const topics = { prefix: 'hsxemb', gatewayId: 'gwoff' };
  const broker = await startEmbeddedBroker({ port: 0, topics, tokens: tokenEntries });
  t.teardown(() => broker.close());
  const op = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'ops', password: OPERATOR_TOKEN });
  op.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => op.once('close', () => resolve()));
  op.publish(jobSubmitTopic(topics), JSON.stringify(submitBody()), { qos: 1 });
  await closed;
  t.is(broker.stats().refusedPublishes, 1);
});

test('deviceNamesFromConfig maps a CAN master link target (node id) to the configured device', (t) => {
  const cfg = validateConfig({
    gateway: { id: 'g' },
    links: { can: [{ name: 'demo-bus', interface: 'vcan0', backend: 'virtual', role: 'master' }] },
    devices: [
      { name: 'node1', state_dir: '/tmp/x1', node_id: 1 },
      { name: 'node2', state_dir: '/tmp/x2', node_id: 2, can: 'vcan9' },
    ],
  });
  if (!cfg.ok) throw new Error(cfg.error.message);
  const of = deviceNamesFromConfig(cfg.value);
  t.is(of('demo-bus', '1'), 'node1');
  t.is(of('demo-bus', '2'), undefined, 'node 2 is on another bus');
  t.is(of('vcan0', '1'), undefined, 'links go by their name');
});

// ---- the documented payloads (docs/mqtt.md "Jobs"), built by hand ------------------------------------

/** Every key path of a JSON value (arrays: their elements' keys under `[]`), sorted: its shape. */
function shape(v: unknown, at = ''): string[] {
  if (Array.isArray(v)) return [...new Set(v.flatMap((x) => shape(x, `${at}[]`)))].sort();
  if (v === null || typeof v !== 'object') return [];
  const out: string[] = [];
  for (const [k, x] of Object.entries(v)) out.push(`${at}.${k}`, ...shape(x, `${at}.${k}`));
  return out.sort();
}

const SHA = '1a2a6993412027e4e53c03a0175469daa4723877ea2643c90f0a8b1ccf098923';
const queuedTarget = (target: string) => ({ target, state: 'QUEUED', outcome: null, error: null, from: null, to: null, acked_bytes: 0, updated_ts: 1764150000.5 });
const docRecord = (over: Record<string, unknown>) => ({
  id: 'j-12',
  link: 'demo-bus',
  image: { name: 'blink-1.2.0.hxe', sha256: SHA, size: 4096, app_name: 'blink' },
  options: { force: false },
  state: 'QUEUED',
  targets: [queuedTarget('1'), queuedTarget('2')],
  submitted_by: { name: 'ops', role: 'operator', via: 'mqtt' },
  client_token: 'rollout-7/bench-01',
  submitted_ts: 1764150000.5,
  started_ts: null,
  finished_ts: null,
  reason: null,
  revision: 1,
  ...over,
});
const DOCUMENTED = {
  audit: {
    level: 40,
    component: 'audit',
    audit: true,
    when: '2025-11-26T09:40:00.123Z',
    who: 'watcher',
    role: 'viewer',
    peer: 'mqtt',
    cmd: 'job.submit',
    verdict: 'denied',
    reason: 'EPERM:operator_required',
    target_via: 'mqtt',
    target_topic: 'hsx/bench-01/jobs/submit',
    msg: 'audit: job.submit denied for watcher',
  },
  submit: { clientToken: 'rollout-7/bench-01', token: "<an operator's token>", link: 'demo-bus', targets: ['1', '2'], image: 'blink-1.2.0.hxe', options: { force: false } },
  accepted: { clientToken: 'rollout-7/bench-01', job: docRecord({}) },
  rejected: { clientToken: 'rollout-7/bench-01', code: 'ENOENT', reason: 'unknown_link', message: 'no master link "can9" on this gateway (links: demo-bus)', field: 'link' },
  progress: {
    seq: 812,
    ts: 1764150003.25,
    type: 'job.progress',
    pid: null,
    phase: null,
    data: { job_id: 'j-12', target: '1', acked_bytes: 2048, total_bytes: 4096, percent: 50 },
    device: 'node1',
  },
  finished: {
    seq: 840,
    ts: 1764150007.9,
    type: 'job.finished',
    pid: null,
    phase: null,
    data: {
      job_id: 'j-12',
      state: 'SUCCEEDED',
      job: docRecord({
        state: 'SUCCEEDED',
        targets: [
          { target: '1', state: 'SUCCEEDED', outcome: 'installed', error: null, from: null, to: SHA, acked_bytes: 4096, updated_ts: 1764150006.1 },
          { target: '2', state: 'SUCCEEDED', outcome: 'updated', error: null, from: '5d41402abc4b2a76b9719d911017c592ae2f8e8b1a2a6993412027e4e53c03a0', to: SHA, acked_bytes: 4096, updated_ts: 1764150007.9 },
        ],
        started_ts: 1764150001,
        finished_ts: 1764150007.9,
        revision: 6,
      }),
    },
  },
  cancel: { clientToken: 'stop-1', token: "<an operator's token>" },
};

test('docs/mqtt.md "Jobs": each documented payload, built by hand, is in the docs, and a real message has exactly its keys', async (t) => {
  // The docs hold exactly these examples, in this order.
  const md = readFileSync(new URL('../docs/mqtt.md', import.meta.url), 'utf8');
  const section = md.slice(md.indexOf('\n## Jobs'));
  t.true(section.length > 10, 'a Jobs section');
  const blocks = [...section.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1]!.trim()));
  t.deepEqual(blocks, Object.values(DOCUMENTED));

  const p = await startPlane(t);
  const dir = (p.plane as unknown as { opts: { imagesDir: string } }).opts.imagesDir;
  writeFileSync(join(dir, 'blink-1.2.0.hxe'), IMAGE_BYTES);
  const req = await p.requester();
  // The documented submit, with a real token: accepted, and the answer has the documented keys.
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify({ ...DOCUMENTED.submit, token: OPERATOR_TOKEN }), { qos: 1 });
  const accepted = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted'), 'accepted');
  t.deepEqual(shape(json(accepted)), shape(DOCUMENTED.accepted));
  const id = json(accepted)['job'].id as string;
  const doc0 = await p.all.next((m) => m.topic === jobDocTopic(p.topics, id), 'retained document');
  t.deepEqual(shape(json(doc0)), shape(DOCUMENTED.accepted.job));
  // Refused for its link.
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify({ ...DOCUMENTED.submit, token: OPERATOR_TOKEN, link: 'can9' }), { qos: 1 });
  const rejected = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'rejected'), 'rejected');
  t.deepEqual(shape(json(rejected)), shape(DOCUMENTED.rejected));
  t.deepEqual(json(rejected), DOCUMENTED.rejected, 'even the words');
  // Progress on the device topic, then the end.
  p.jobs.start(id);
  p.jobs.progress(id, '1', 2048, 4096);
  const progress = await p.all.next((m) => m.topic === 'hsxjobs/' + p.topics.gatewayId + '/device/node1/events/job/progress', 'progress');
  t.deepEqual(shape(json(progress)), shape(DOCUMENTED.progress));
  p.jobs.finishTarget(id, '1', 'SUCCEEDED');
  p.jobs.finishTarget(id, '2', 'SUCCEEDED');
  const finished = await p.all.next((m) => m.topic === eventTopic(p.topics, 'job.finished'), 'job.finished');
  t.deepEqual(shape(json(finished)), shape(DOCUMENTED.finished));
  const last = p.jobs.jobs.get(id)!.revision;
  const doc = await p.all.next((m) => m.topic === jobDocTopic(p.topics, id) && json(m)['revision'] === last, 'final document');
  t.deepEqual(shape(json(doc)), shape(DOCUMENTED.finished.data.job));
  // The documented cancel, on a second job.
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify({ ...DOCUMENTED.submit, token: OPERATOR_TOKEN, clientToken: 'second' }), { qos: 1 });
  const second = await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'accepted') && json(m)['clientToken'] === 'second', 'second job');
  const id2 = json(second)['job'].id as string;
  await req.publishAsync(jobCancelTopic(p.topics, id2), JSON.stringify({ ...DOCUMENTED.cancel, token: OPERATOR_TOKEN }), { qos: 1 });
  const canceled = await p.all.next((m) => m.topic === jobCancelAnswerTopic(p.topics, id2, 'accepted'), 'cancel accepted');
  t.deepEqual(shape(json(canceled)), shape(DOCUMENTED.accepted));
  t.is(json(canceled)['clientToken'], 'stop-1');
  // The documented audit line: a viewer's submit.
  await req.publishAsync(jobSubmitTopic(p.topics), JSON.stringify({ ...DOCUMENTED.submit, token: VIEWER_TOKEN }), { qos: 1 });
  await p.all.next((m) => m.topic === jobSubmitAnswerTopic(p.topics, 'rejected') && json(m)['code'] === 'EPERM', 'viewer refused');
  await until(() => p.audit.lines().some((l) => l['verdict'] === 'denied'), 'denied audit line');
  const line = { ...p.audit.lines().find((l) => l['verdict'] === 'denied')! };
  for (const k of ['time', 'pid', 'hostname', 'name']) delete line[k];
  t.deepEqual(shape(line), shape(DOCUMENTED.audit));
  t.like(line, { level: 40, who: 'watcher', role: 'viewer', peer: 'mqtt', cmd: 'job.submit', verdict: 'denied', reason: 'EPERM:operator_required', msg: 'audit: job.submit denied for watcher' });
});
