/**
 * Jobs end to end, with real parts only: a `serve` process whose master links sit on cross-process
 * virtual CAN buses, `device` processes as the targets, a real Mosquitto, and the `job` CLI. Every
 * flow runs a second time on the same devices (the second submit of an image is SKIPPED), and every
 * wait is on a line, a reply or a message, bounded.
 */
import test, { type ExecutionContext } from 'ava';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { ControlClient } from '../src/gateway/control/client.js';
import type { JobRecord } from '../src/gateway/jobs/types.js';
import { ROOT } from './support/cli-argv.js';
import { openTestBus, spawnCli, type CliChild, type TestBus } from './support/can-bus.js';
import { startMosquitto, type Mosquitto } from './support/mosquitto.js';
import { startVirtualHub } from '../src/link/can/virtual-net.js';
import { startPtyPair } from '../src/link/uart/pty-pair.js';
import { startServe, type ServeChild } from './support/serve-child.js';
import { sensorOfSize, sha256Hex } from './update-images.js';

const OPERATOR = 'jobs-operator-secret-1';
const VIEWER = 'jobs-viewer-secret-1';
const APPS = join(ROOT, 'configs', 'sd', 'apps');
const V1 = new Uint8Array(readFileSync(join(APPS, 'sensor.hxe')));
const V2 = new Uint8Array(readFileSync(join(APPS, 'sensor-v2.hxe')));

interface Rig {
  dir: string;
  images: string;
  config: string;
  buses: TestBus[];
  devices: CliChild[];
  broker: Mosquitto | null;
}

/** Hubs, one device process per node, an images dir and a gateway config naming them; torn down by the test. */
async function rig(t: ExecutionContext, links: Array<{ name: string; nodes: number; bitrate?: number }>, withMqtt: boolean | 'persistent'): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-jobs-'));
  const images = join(dir, 'images');
  mkdirSync(images);
  copyFileSync(join(APPS, 'sensor.hxe'), join(images, 'sensor.hxe'));
  copyFileSync(join(APPS, 'sensor-v2.hxe'), join(images, 'sensor-v2.hxe'));
  const r: Rig = { dir, images, config: join(dir, 'gateway.toml'), buses: [], devices: [], broker: null };
  t.teardown(async () => {
    for (const d of r.devices) d.child.kill('SIGTERM');
    await Promise.all(r.devices.map((d) => d.exited));
    for (const b of r.buses) await b.close();
    await r.broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const linkToml: string[] = [];
  for (const l of links) {
    // With a bitrate the hub models bus timing (it is the hub's model that counts), so transfers take real time.
    const bus = l.bitrate ? await timedBus(l.bitrate) : await openTestBus();
    r.buses.push(bus);
    const address = bus.processAddress();
    for (let n = 1; n <= l.nodes; n++) {
      r.devices.push(spawnCli(['device', '--can', address, '--node', String(n), '--state', join(dir, `${l.name}-node${n}`), '--json']));
    }
    // The hub's own address, as the gateway's config writes a cross-process virtual bus.
    const iface = address.replace(/^virtual:/, '');
    linkToml.push(`[[links.can]]\nname = "${l.name}"\ninterface = "${iface}"\nbackend = "virtual"\nrole = "master"\n` +
      'timing = false\n');
  }
  await Promise.all(r.devices.map((d) => d.waitFor((l) => l['type'] === 'ready')));
  if (withMqtt) r.broker = await startMosquitto({ persistence: withMqtt === 'persistent' });
  writeFileSync(r.config, [
    `[gateway]\nid = "jobs-test"\nlog_level = "warn"\nstate_dir = "${join(dir, 'gateway')}"\n`,
    `[control]\nlisten = "127.0.0.1:9998"\nimages_dir = "${images}"\n`,
    `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(OPERATOR)}"\n`,
    `[[control.tokens]]\nname = "watcher"\nrole = "viewer"\nsha256 = "${tokenHash(VIEWER)}"\n`,
    r.broker ? `[mqtt]\nurl = "${r.broker.url}"\ntopic_prefix = "hsx"\ncommands = true\n` : '',
    ...linkToml,
  ].join('\n'));
  return r;
}

/** A cross-process virtual bus whose hub models a `bitrate` bus (frames take the time a real one gives them). */
async function timedBus(bitrate: number): Promise<TestBus> {
  const hub = await startVirtualHub('127.0.0.1', 0, { bitrate });
  return {
    kind: 'virtual',
    describe: `virtual bus at ${bitrate} bit/s (hub 127.0.0.1:${hub.port})`,
    endpoint: async () => {
      const b = hub.bus.attach();
      await b.open();
      return b;
    },
    processAddress: () => `virtual:127.0.0.1:${hub.port}`,
    framesOnWire: () => hub.bus.stats.frames,
    close: () => hub.close(),
  };
}

async function serve(t: ExecutionContext, config: string): Promise<ServeChild> {
  const s = await startServe(config);
  t.teardown(async () => {
    if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    await s.exited;
  });
  return s;
}

async function control(t: ExecutionContext, s: ServeChild, token = OPERATOR): Promise<ControlClient> {
  const c = await ControlClient.connect(s.control, { token, timeoutMs: 30_000 });
  if (!c.ok) throw new Error(c.error.message);
  t.teardown(() => c.value.close());
  return c.value;
}

/** `hsx-gateway job submit … --json` to its end: exit code, the final record, every line. */
async function cliSubmit(s: ServeChild, args: string[]): Promise<{ code: number; job: JobRecord; lines: Array<Record<string, unknown>> }> {
  const p = spawnCli(['job', 'submit', '--connect', s.control, '--token', OPERATOR, '--json', ...args]);
  const code = await p.exited;
  const result = p.lines.find((l) => l['type'] === 'result');
  if (!result) throw new Error(`job submit printed no result (exit ${code}): ${JSON.stringify(p.lines.slice(-5))} ${p.stderr()}`);
  return { code, job: result as unknown as JobRecord, lines: p.lines };
}

const states = (j: JobRecord): string[] => j.targets.map((x) => `${x.target}:${x.state}${x.outcome ? `/${x.outcome}` : ''}`);

/** Subscribes and collects; `next` resolves with the first message (already arrived or to come) that matches. */
async function watcher(t: ExecutionContext, url: string, filters: string[], session?: string): Promise<{ client: MqttClient; next(pred: (topic: string, body: any) => boolean, what: string): Promise<{ topic: string; body: any }> }> {
  // With `session`: a persistent session (QoS 1), so what is published while it is cut off is kept for it.
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 200, ...(session ? { clientId: session, clean: false } : {}) });
  t.teardown(() => client.endAsync(true));
  const seen: Array<{ topic: string; body: any }> = [];
  const waiters = new Set<() => void>();
  client.on('message', (topic, payload) => {
    let body: unknown = null;
    try {
      body = payload.length ? JSON.parse(payload.toString()) : null;
    } catch {
      body = payload.toString();
    }
    seen.push({ topic, body });
    for (const w of [...waiters]) w();
  });
  await client.subscribeAsync(filters, { qos: 1 });
  return {
    client,
    next: (pred, what) => new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = seen.find((m) => pred(m.topic, m.body));
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no MQTT message: ${what}; seen ${seen.map((m) => m.topic).join(', ')}`));
      }, 60_000);
      waiters.add(check);
      check();
    }),
  };
}

test.serial('jobs over the control port and MQTT to 8 CAN nodes: installed, then SKIPPED, then an update from MQTT; two links in parallel; bad requests refused; a silent node TIMED_OUT', async (t) => {
  const r = await rig(t, [{ name: 'bus-a', nodes: 8 }, { name: 'bus-b', nodes: 2 }], true);
  const s = await serve(t, r.config);
  const serving = s.lines.find((l) => l['type'] === 'serving')!;
  t.deepEqual(serving['links'], ['bus-a', 'bus-b']);
  t.is(serving['jobs'], 'enabled');
  // The start-up scan found every node: a job without targets goes to all of them.
  t.deepEqual((serving['inventory'] as Record<string, string[]>)['bus-a'], ['1', '2', '3', '4', '5', '6', '7', '8']);

  // 1. Over the control port (the CLI), twice: installed, then SKIPPED (already current).
  const first = await cliSubmit(s, ['--link', 'bus-a', '--nodes', '1-8', '--image-name', 'sensor.hxe']);
  t.is(first.code, 0, JSON.stringify(first.job));
  t.is(first.job.state, 'SUCCEEDED');
  t.deepEqual(states(first.job), [1, 2, 3, 4, 5, 6, 7, 8].map((n) => `${n}:SUCCEEDED/installed`));
  const again = await cliSubmit(s, ['--link', 'bus-a', '--nodes', '1-8', '--image-name', 'sensor.hxe']);
  t.is(again.code, 0);
  t.is(again.job.state, 'SKIPPED');
  t.deepEqual(states(again.job), [1, 2, 3, 4, 5, 6, 7, 8].map((n) => `${n}:SKIPPED/current`));

  // 2. Over MQTT, without targets (every node the last scan found): an update of all 8.
  const w = await watcher(t, r.broker!.url, ['hsx/jobs-test/jobs/#', 'hsx/jobs-test/device/+/inventory']);
  const pub = await mqtt.connectAsync(r.broker!.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => pub.endAsync(true));
  await pub.publishAsync('hsx/jobs-test/jobs/submit', JSON.stringify({ clientToken: 'upd-1', token: OPERATOR, link: 'bus-a', image: 'sensor-v2.hxe' }), { qos: 1 });
  const accepted = await w.next((topic, b) => topic === 'hsx/jobs-test/jobs/submit/accepted' && b?.clientToken === 'upd-1', 'submit accepted');
  const id = accepted.body.job.id as string;
  t.false(JSON.stringify(accepted.body).includes(OPERATOR), 'the token is never echoed');
  const doc = await w.next((topic, b) => topic === `hsx/jobs-test/jobs/${id}` && b?.state === 'SUCCEEDED', 'retained document SUCCEEDED');
  t.deepEqual(states(doc.body as JobRecord), [1, 2, 3, 4, 5, 6, 7, 8].map((n) => `${n}:SUCCEEDED/updated`));
  t.true((doc.body as JobRecord).targets.every((x) => x.to === sha256Hex(V2).slice(0, x.to!.length) && x.from === sha256Hex(V1).slice(0, x.from!.length)));
  // The inventory is scanned again after the job: each device's retained document shows the new build.
  const inv = await w.next((topic, b) => topic.endsWith('/inventory') && b?.target === '5' && b?.sha256 === sha256Hex(V2), 'inventory of node 5 after the update');
  t.is(inv.body.link, 'bus-a');
  t.is(inv.body.app_name, 'sensor_app');
  // The document's keys, as docs/mqtt.md and docs/jobs.md "Inventory" list them.
  t.deepEqual(Object.keys(inv.body).sort(), ['app_name', 'link', 'scanned_ts', 'sha256', 'slot_bytes', 'slots', 'target', 'version']);

  // 3. Refusals over MQTT: no token, a viewer's token (EPERM, and nothing runs).
  await pub.publishAsync('hsx/jobs-test/jobs/submit', JSON.stringify({ clientToken: 'anon', link: 'bus-a', image: 'sensor.hxe' }), { qos: 1 });
  await pub.publishAsync('hsx/jobs-test/jobs/submit', JSON.stringify({ clientToken: 'view', token: VIEWER, link: 'bus-a', image: 'sensor.hxe' }), { qos: 1 });
  for (const ct of ['anon', 'view']) {
    const rej = await w.next((topic, b) => topic === 'hsx/jobs-test/jobs/submit/rejected' && b?.clientToken === ct, `rejected ${ct}`);
    t.is(rej.body.code, 'EPERM', JSON.stringify(rej.body));
  }

  // 4. Bad requests over the control port: a path out of the images dir, an unknown link, a node the link cannot address.
  const c = await control(t, s);
  const before = ((await c.request('job.list')) as { ok: true; value: { jobs: JobRecord[] } }).value.jobs.length;
  for (const [fields, error] of [
    [{ link: 'bus-a', image: '../gateway.toml', targets: ['1'] }, 'EPERM:path_outside_images_dir'],
    [{ link: 'nope', image: 'sensor.hxe', targets: ['1'] }, 'ENOENT'],
    [{ link: 'bus-a', image: 'sensor.hxe', targets: ['99'] }, 'EINVAL'],
  ] as const) {
    const rep = await c.request('job.submit', fields);
    t.false(rep.ok, JSON.stringify(fields));
    if (!rep.ok) t.true(rep.error.error!.startsWith(error), `${JSON.stringify(fields)} → ${rep.error.error} ${JSON.stringify(rep.error.detail)}`);
  }
  t.is(((await c.request('job.list')) as { ok: true; value: { jobs: JobRecord[] } }).value.jobs.length, before, 'a refused submit stores nothing');

  // 5. Two links at once: each link runs its own queue, so both jobs run side by side.
  const a = await c.request('job.submit', { link: 'bus-a', image: 'sensor.hxe', nodes: '1-8' });
  const b = await c.request('job.submit', { link: 'bus-b', image: 'sensor.hxe', nodes: '1-2' });
  t.true(a.ok && b.ok);
  const ida = (a as { ok: true; value: { job: JobRecord } }).value.job.id;
  const idb = (b as { ok: true; value: { job: JobRecord } }).value.job.id;
  const ja = (await w.next((topic, m) => topic === `hsx/jobs-test/jobs/${ida}` && m?.finished_ts !== null && m?.finished_ts !== undefined, 'bus-a job finished')).body as JobRecord;
  const jb = (await w.next((topic, m) => topic === `hsx/jobs-test/jobs/${idb}` && m?.finished_ts !== null && m?.finished_ts !== undefined, 'bus-b job finished')).body as JobRecord;
  t.is(ja.state, 'SUCCEEDED');
  t.is(jb.state, 'SUCCEEDED');
  t.deepEqual(states(jb), ['1:SUCCEEDED/installed', '2:SUCCEEDED/installed']);
  t.true(ja.started_ts! < jb.finished_ts! && jb.started_ts! < ja.finished_ts!, `the two jobs overlapped: a ${ja.started_ts}..${ja.finished_ts}, b ${jb.started_ts}..${jb.finished_ts}`);

  // 6. A node nobody answers for: that target TIMED_OUT (named), the others done; the job is not a success.
  const silent = await cliSubmit(s, ['--link', 'bus-b', '--targets', '1,9', '--image-name', 'sensor.hxe', '--timeout-ms', '50', '--retries', '1']);
  t.is(silent.code, 1);
  t.is(silent.job.state, 'TIMED_OUT');
  t.deepEqual(silent.job.targets.map((x) => [x.target, x.state, x.error?.code ?? null]), [['1', 'SKIPPED', null], ['9', 'TIMED_OUT', 'ETIMEDOUT']]);
});

test.serial('SIGKILL mid-job: after the restart the job is FAILED interrupted, nothing is lost, devices run old or new; a cancel mid-transfer leaves the old image; a broker outage mid-job loses no state', async (t) => {
  // 125 kbit/s with bus timing: a 48 KiB image takes seconds, long enough to kill and to cancel mid-way
  // (sent raw: compressed, this repetitive build would be over before the first progress event).
  const r = await rig(t, [{ name: 'slow', nodes: 3, bitrate: 125_000 }], 'persistent');
  const big = sensorOfSize(7, 48 * 1024);
  writeFileSync(join(r.images, 'big.hxe'), big);
  writeFileSync(join(r.images, 'big2.hxe'), sensorOfSize(8, 48 * 1024));
  let s = await serve(t, r.config);
  const setup = await cliSubmit(s, ['--link', 'slow', '--nodes', '1-3', '--image-name', 'sensor.hxe']);
  t.is(setup.job.state, 'SUCCEEDED');

  for (const round of [1, 2]) {
    // A job, then SIGKILL as soon as data moves.
    const c = await control(t, s);
    const sub = await c.request('job.submit', { link: 'slow', image: 'big.hxe', nodes: '1-3', options: { force: true, compress: false, delta: false } });
    t.true(sub.ok, JSON.stringify(sub));
    const id = (sub as { ok: true; value: { job: JobRecord } }).value.job.id;
    const watch = spawnCli(['job', 'watch', id, '--connect', s.control, '--token', OPERATOR, '--json']);
    await watch.waitFor((l) => l['type'] === 'event' && l['event'] === 'job.progress').catch((e: Error) => {
      throw new Error(`${e.message}; watch printed ${JSON.stringify(watch.lines)}`);
    });
    s.child.kill('SIGKILL');
    await s.exited;
    await watch.exited;
    s = await serve(t, r.config);
    const serving = s.lines.find((l) => l['type'] === 'serving')!;
    t.true(((serving['recovered'] as { interrupted: string[] }).interrupted).includes(id), `round ${round}: ${JSON.stringify(serving['recovered'])}`);
    const c2 = await control(t, s, VIEWER);
    const st = await c2.request('job.status', { id });
    t.true(st.ok);
    const job = (st as { ok: true; value: { job: JobRecord } }).value.job;
    t.is(job.state, 'FAILED');
    t.is(job.reason, 'interrupted');
    t.true(job.targets.every((x) => x.state === 'FAILED' && x.error?.reason === 'interrupted'), JSON.stringify(job.targets));
    // Every job ever submitted is still listed, once.
    const list = ((await c2.request('job.list', { limit: 1000 })) as { ok: true; value: { jobs: JobRecord[] } }).value.jobs;
    t.is(new Set(list.map((j) => j.id)).size, list.length);
    t.true(list.some((j) => j.id === setup.job.id));
    // The devices: each runs the image it had or the new one (a power-safe switch), never neither.
    const scan = spawnCli(['scan', '--can', r.buses[0]!.processAddress(), '--json']);
    await scan.exited;
    const entries = scan.lines.filter((l) => l['type'] === 'entry');
    t.is(entries.length, 3, JSON.stringify(scan.lines));
    for (const e of entries) t.true([sha256Hex(V1), sha256Hex(big)].includes(e['sha256'] as string), JSON.stringify(e));
  }

  // Cancel mid-transfer (twice): every target CANCELED, and the devices keep the image they ran.
  await cliSubmit(s, ['--link', 'slow', '--nodes', '1-3', '--image-name', 'sensor.hxe', '--force']);
  const c = await control(t, s);
  for (const round of [1, 2]) {
    const sub = await c.request('job.submit', { link: 'slow', image: 'big.hxe', nodes: '1-3', options: { force: true, compress: false, delta: false } });
    const id = (sub as { ok: true; value: { job: JobRecord } }).value.job.id;
    const watch = spawnCli(['job', 'watch', id, '--connect', s.control, '--token', OPERATOR, '--json']);
    await watch.waitFor((l) => l['type'] === 'event' && l['event'] === 'job.progress');
    const cancel = spawnCli(['job', 'cancel', id, '--connect', s.control, '--token', OPERATOR, '--json']);
    t.is(await cancel.exited, 0, cancel.stderr());
    t.is(await watch.exited, 1, `round ${round}: a canceled job is not a success`);
    const job = ((await c.request('job.status', { id })) as { ok: true; value: { job: JobRecord } }).value.job;
    t.is(job.state, 'CANCELED');
    t.deepEqual(job.targets.map((x) => x.state), ['CANCELED', 'CANCELED', 'CANCELED']);
    const scan = spawnCli(['scan', '--can', r.buses[0]!.processAddress(), '--json']);
    await scan.exited;
    const shas = scan.lines.filter((l) => l['type'] === 'entry').map((l) => l['sha256']);
    t.deepEqual(shas, [sha256Hex(V1), sha256Hex(V1), sha256Hex(V1)], `round ${round}`);
  }

  // A broker outage mid-job (twice): the job runs on; its final document and terminal event arrive after the reconnect.
  for (const round of [1, 2]) {
    const w = await watcher(t, r.broker!.url, ['hsx/jobs-test/jobs/+', 'hsx/jobs-test/events/job/finished', 'hsx/jobs-test/device/+/events/job/progress'], `outage-watcher-${round}`);
    const sub = await c.request('job.submit', { link: 'slow', image: round === 1 ? 'big.hxe' : 'big2.hxe', nodes: '1-3', options: { force: true, compress: false, delta: false } });
    const id = (sub as { ok: true; value: { job: JobRecord } }).value.job.id;
    const watch = spawnCli(['job', 'watch', id, '--connect', s.control, '--token', OPERATOR, '--json']);
    await watch.waitFor((l) => l['type'] === 'event' && l['event'] === 'job.progress');
    // Per-device progress on the device topics (no [[devices]] entry for these nodes: `<link>-<target>`).
    const progress = await w.next((topic, b) => /^hsx\/jobs-test\/device\/slow-[123]\/events\/job\/progress$/.test(topic) && b?.data?.job_id === id, `round ${round}: progress on a device topic`);
    t.like(progress.body, { type: 'job.progress', pid: null, phase: null });
    await r.broker!.stop();
    t.is(await watch.exited, 0, `round ${round}: the job ran on through the outage`);
    await r.broker!.restart();
    const doc = await w.next((topic, b) => topic === `hsx/jobs-test/jobs/${id}` && b?.state === 'SUCCEEDED', `round ${round}: the final document after the reconnect`);
    t.deepEqual(states(doc.body as JobRecord).map((x) => x.split('/')[0]), ['1:SUCCEEDED', '2:SUCCEEDED', '3:SUCCEEDED']);
    const ev = await w.next((topic, b) => topic === 'hsx/jobs-test/events/job/finished' && b?.data?.job_id === id, `round ${round}: job.finished after the reconnect`);
    t.is(ev.body.data.state, 'SUCCEEDED');
    await w.client.endAsync(true);
  }
});

test.serial('a job on a UART master link: a device process on the other end of a pty pair is installed, then SKIPPED, then updated; the inventory shows what it runs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-jobs-uart-'));
  const pair = await startPtyPair();
  t.teardown(async () => {
    await pair.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  // The device opens its end first (opening a port flushes it), then the gateway its master end.
  const device = spawnCli(['device', '--uart', pair.b, '--state', join(dir, 'device'), '--json']);
  t.teardown(async () => {
    device.child.kill('SIGTERM');
    await device.exited;
  });
  await device.waitFor((l) => l['event'] === 'listening');
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    `[gateway]\nid = "jobs-uart"\nlog_level = "warn"\nstate_dir = "${join(dir, 'gateway')}"\n`,
    `[control]\nlisten = "127.0.0.1:9998"\nimages_dir = "${APPS}"\n`,
    `[[links.uart]]\nname = "cable"\nport = "${pair.a}"\nbaud = 921600\nrole = "master"\n`,
  ].join('\n'));
  const s = await serve(t, config);
  const serving = s.lines.find((l) => l['type'] === 'serving')!;
  t.deepEqual(serving['links'], ['cable']);
  // The start-up INFO scan found the one device, so a job without targets goes to it.
  t.deepEqual((serving['inventory'] as Record<string, string[]>)['cable'], ['1']);
  const submit = async (args: string[]): Promise<{ code: number; job: JobRecord }> => {
    const p = spawnCli(['job', 'submit', '--connect', s.control, '--json', '--link', 'cable', ...args]);
    const code = await p.exited;
    const result = p.lines.find((l) => l['type'] === 'result');
    if (!result) throw new Error(`no result (exit ${code}): ${JSON.stringify(p.lines.slice(-3))} ${p.stderr()}`);
    return { code, job: result as unknown as JobRecord };
  };
  const first = await submit(['--image-name', 'sensor.hxe']);
  t.is(first.code, 0, JSON.stringify(first.job));
  t.deepEqual(states(first.job), ['1:SUCCEEDED/installed']);
  t.is(first.job.targets[0]!.to, sha256Hex(V1));
  const again = await submit(['--image-name', 'sensor.hxe']);
  t.is(again.code, 0);
  t.deepEqual(states(again.job), ['1:SKIPPED/current']);
  // A local file this time (uploaded over the control port), an update of the running app.
  const update = await submit([join(APPS, 'sensor-v2.hxe')]);
  t.is(update.code, 0, JSON.stringify(update.job));
  t.deepEqual(states(update.job), ['1:SUCCEEDED/updated']);
  t.is(update.job.targets[0]!.from, sha256Hex(V1));
  t.is(update.job.targets[0]!.to, sha256Hex(V2));
  // Issue 25: each target says how the image went; every image flashed is kept by SHA-256 in the state dir
  t.like(first.job.targets[0]!.transfer, { mode: 'compressed', image_bytes: V1.length });
  t.like(again.job.targets[0]!.transfer, { mode: 'current', bytes_on_wire: 0 });
  const upd = update.job.targets[0]!.transfer!;
  t.true(upd.mode === 'delta' ? upd.base === sha256Hex(V1) : upd.mode === 'compressed', JSON.stringify(upd));
  t.true(upd.stream_bytes < V2.length && upd.bytes_on_wire >= upd.stream_bytes, JSON.stringify(upd));
  for (const img of [V1, V2]) t.true(existsSync(join(dir, 'gateway', 'images-by-sha', `${sha256Hex(img)}.hxe`)), 'in images-by-sha');
  // The device itself says so, and so does the inventory (scanned again after the job).
  await device.waitFor((l) => l['event'] === 'ready' && l['outcome'] === 'updated' && l['sha256'] === sha256Hex(V2));
  const c = await control(t, s);
  const inv = await c.request('inventory', { link: 'cable', refresh: true });
  t.true(inv.ok, JSON.stringify(inv));
  const links = (inv as { ok: true; value: { links: Array<{ link: string; entries: Array<Record<string, unknown>> }> } }).value.links;
  t.is(links.length, 1);
  t.like(links[0]!.entries[0], { target: '1', app_name: 'sensor_app', sha256: sha256Hex(V2) });
  // A second look without a refresh gives the same scan; an unknown link is named.
  const again2 = await c.request('inventory', {});
  t.like((again2 as { ok: true; value: { links: Array<{ entries: Array<Record<string, unknown>> }> } }).value.links[0]!.entries[0], { sha256: sha256Hex(V2) });
  const unknown = await c.request('inventory', { link: 'nope' });
  t.false(unknown.ok);
  if (!unknown.ok) t.is(unknown.error.error, 'ENOENT:no_such_link');
});
