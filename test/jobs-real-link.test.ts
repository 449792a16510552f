/**
 * The job manager on a real link (no fake flasher): a CanFlasher on the in-process virtual bus and
 * two simulated devices (mapped flash and FRAM files) with their CAN listeners. 200 jobs queued on
 * the link at once run in submit order, each exactly once, and the journal holds each record once
 * after a restart; the first job installs, the next one updates, the rest find the image current.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CanFlasher } from '../src/link/can/flasher.js';
import { CanListener } from '../src/link/can/listener.js';
import { namedVirtualBus } from '../src/link/can/virtual-bus.js';
import type { FlashRequest, FlashResult } from '../src/link/flasher.js';
import { JobManager } from '../src/gateway/jobs/manager.js';
import type { JobEvent, JobRecord } from '../src/gateway/jobs/types.js';
import { openSimulatedDevice } from '../src/persist/simulated-device.js';
import { nullEventSink } from '../src/engine/index.js';
import { sensorOfSize } from './update-images.js';

test('200 jobs queued on one real CAN link run in submit order, each once; none lost or duplicated across a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jobs-real-'));
  const bus = namedVirtualBus(`jobs-real-${process.pid}`, {});
  const devices: Array<{ dev: Awaited<ReturnType<typeof openSimulatedDevice>>; ep: Awaited<ReturnType<typeof bus.attach>>; listener: CanListener }> = [];
  for (const node of [1, 2]) {
    const dev = await openSimulatedDevice({ name: `node${node}`, stateDir: join(dir, `node${node}`), events: nullEventSink, confirmWindowMs: 3_600_000 });
    const ep = bus.attach(`node${node}`);
    await ep.open();
    const listener = new CanListener({ bus: ep, node, intake: dev.intake, source: 'can:test' });
    listener.start();
    devices.push({ dev, ep, listener });
  }
  const masterEp = bus.attach('master');
  await masterEp.open();
  const flasher = new CanFlasher({ name: 'bus', bus: masterEp });
  // Counts what reaches the link: one flash() per job, with the job's image.
  const calls: number[] = [];
  const counted = Object.assign(Object.create(flasher) as CanFlasher, {
    flash: (req: FlashRequest): Promise<FlashResult> => {
      calls.push(req.image.length);
      return flasher.flash(req);
    },
  });
  t.teardown(async () => {
    for (const d of devices) {
      d.listener.stop();
      await d.dev.close();
      await d.ep.close();
    }
    await masterEp.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const v1 = sensorOfSize(1, 2048);
  const v2 = sensorOfSize(2, 2048);
  const by = { name: 'test', role: 'operator', via: 'control' as const };
  let m = await JobManager.open({ dir: join(dir, 'gateway'), flashers: new Map([['bus', counted]]) });
  const started: string[] = [];
  const finished = new Map<string, JobRecord>();
  let allDone: () => void = () => {};
  const done = new Promise<void>((r) => (allDone = r));
  m.watch((e: JobEvent) => {
    if (e.type === 'job.started') started.push(e.job.id);
    if (e.type === 'job.finished') {
      t.false(finished.has(e.job.id), `${e.job.id} finished twice`);
      finished.set(e.job.id, e.job);
      if (finished.size === 200) allDone();
    }
  });
  const ids: string[] = [];
  for (let i = 0; i < 200; i++) {
    const r = await m.submit({ link: 'bus', targets: ['1', '2'], image: { bytes: i === 1 ? v2 : i === 0 ? v1 : v2, name: `b${i}` }, by });
    if (!r.ok) return t.fail(JSON.stringify(r.error));
    ids.push(r.value.id);
  }
  await done;
  t.deepEqual(started, ids, 'run in submit order');
  t.is(calls.length, 200, 'one transfer per job');
  t.deepEqual([...finished.get(ids[0]!)!.targets.map((x) => `${x.state}/${x.outcome}`)], ['SUCCEEDED/installed', 'SUCCEEDED/installed']);
  t.deepEqual([...finished.get(ids[1]!)!.targets.map((x) => `${x.state}/${x.outcome}`)], ['SUCCEEDED/updated', 'SUCCEEDED/updated']);
  for (const id of ids.slice(2)) t.is(finished.get(id)!.state, 'SKIPPED', id);

  // After a restart the journal lists every job once, finished; nothing runs again.
  await m.close();
  m = await JobManager.open({ dir: join(dir, 'gateway'), flashers: new Map([['bus', counted]]) });
  const listed = m.list({ limit: 1000 });
  t.is(listed.length, 200);
  t.deepEqual(listed.map((j) => j.id).reverse(), ids, 'each job once (newest first)');
  t.true(listed.every((j) => j.finished_ts !== null));
  t.deepEqual(m.recovery.requeued, []);
  t.deepEqual(m.recovery.interrupted, []);
  t.is(calls.length, 200);
  await m.close();
});

test('one state dir, one gateway: a second job manager on a dir in use is refused, naming the dir; after the first closes it opens', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jobs-lock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const first = await JobManager.open({ dir, flashers: new Map() });
  const second = await JobManager.open({ dir, flashers: new Map() }).then(() => null, (e: Error) => e);
  t.truthy(second, 'the second open must fail');
  t.regex(second!.message, new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use: another gateway process holds jobs.lock`));
  await first.close();
  const third = await JobManager.open({ dir, flashers: new Map() });
  t.deepEqual(third.list(), []);
  await third.close();
});
