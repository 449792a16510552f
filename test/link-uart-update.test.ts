/**
 * Updates over the UART link, on real pty pairs (socat), with a device on a state directory
 * (openSimulatedDevice: mapped flash and FRAM) behind its intake: a new build of the running app
 * is UPDATED with its persisted value kept, the image the device runs is CURRENT and no DATA moves,
 * a cable pulled mid-update resumes and ends UPDATED (the old build runs until the switch), and a
 * restarted device runs the image it had, so flashing it again is CURRENT. Every workflow runs
 * twice in a row on the same state directory.
 *
 * The device runs in this process (so the test can set a value and look at its engine); the master
 * talks to it through the pty only. Waits are on events and lines, never on sleeps.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sendImage, type FlashOutcome, type MasterOptions } from '../src/link/uart/master.js';
import { openSimulatedDevice, type SimulatedDevice } from '../src/persist/simulated-device.js';
import { haveSocat, startPtyPair, type PtyPair } from './support/pty.js';
import { confirmed, EventLog, listen, masterOn, runningSha, tempOf, type CountingTransport } from './support/uart-device.js';
import { TEMP_OID, f16, sensorBuild, sensorOfSize, sha256Hex } from './update-images.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART link tests need it (apt-get install socat)');
});

const CONFIRM_WINDOW_MS = 150;


async function openDevice(state: string, log: EventLog): Promise<SimulatedDevice> {
  return openSimulatedDevice({ name: 'uart', stateDir: state, events: log, confirmWindowMs: CONFIRM_WINDOW_MS });
}

async function flash(master: CountingTransport, image: Uint8Array, opts: MasterOptions = {}): Promise<{ outcome: FlashOutcome; dataFrames: number }> {
  const before = master.dataFrames;
  const r = await sendImage(master, image, { appName: 'sensor_app', ...opts });
  if (!r.ok) throw new Error(`flash failed: ${JSON.stringify(r.error)}`);
  return { outcome: r.value, dataFrames: master.dataFrames - before };
}


test('a new build of the running app is UPDATED with its value kept; the running build again is CURRENT and no DATA moves (twice on one state dir)', async (t) => {
  t.timeout(120_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-update-'));
  const log = new EventLog();
  const pair = await startPtyPair();
  const dev = await openDevice(state, log);
  const link = await listen(dev, pair.b, state, { restore: true });
  const master = await masterOn(pair.a);
  try {
    let previous: Uint8Array | null = null;
    for (const round of [0, 1]) {
      const v1 = sensorBuild(10 * round + 1);
      const v2 = sensorBuild(10 * round + 2);
      // v1: a first install on a fresh device, an update of the last round's v2 after that.
      let mark = log.mark();
      const first = await flash(master, v1);
      t.is(first.outcome.outcome, previous ? 'updated' : 'installed', `round ${round}: v1`);
      t.is(first.outcome.image.sha256, sha256Hex(v1));
      if (previous) {
        t.is(first.outcome.from?.sha256, sha256Hex(previous));
        await log.waitFor(confirmed, mark, 'confirm of v1');
      }
      const raw = f16(21.5 + round);
      t.true(dev.intake.setValue(TEMP_OID, raw).ok);

      mark = log.mark();
      const pidBefore = dev.engine.ps()[0]!.pid;
      const update = await flash(master, v2);
      t.is(update.outcome.outcome, 'updated', `round ${round}: v2`);
      t.like(update.outcome.from, { appName: 'sensor_app', sha256: sha256Hex(v1), pid: pidBefore });
      t.like(update.outcome.image, { appName: 'sensor_app', sha256: sha256Hex(v2), pid: update.outcome.pid });
      t.true(update.outcome.confirmPending);
      t.not(update.outcome.slot, null);
      t.true(update.dataFrames > 0);
      t.deepEqual(runningSha(dev), [sha256Hex(v2)], 'v2 runs, alone');
      t.is(tempOf(dev), raw, 'the persisted value was carried');
      await log.waitFor(confirmed, mark, 'confirm of v2');
      t.false(dev.intake.confirmPending);

      const again = await flash(master, v2);
      t.is(again.outcome.outcome, 'current', `round ${round}: v2 again`);
      t.is(again.dataFrames, 0, 'no DATA frame was sent');
      t.is(again.outcome.dataBytesSent, 0);
      t.like(again.outcome.image, { appName: 'sensor_app', sha256: sha256Hex(v2), pid: update.outcome.pid });
      t.is(tempOf(dev), raw);
      t.is(link.lines.filter((l) => l['event'] === 'current').length, round + 1, 'the device said CURRENT');

      // --force sends it anyway: an update of itself, the value still kept.
      mark = log.mark();
      const forced = await flash(master, v2, { force: true });
      t.is(forced.outcome.outcome, 'updated');
      t.is(forced.outcome.from?.sha256, sha256Hex(v2));
      t.true(forced.dataFrames > 0);
      t.is(tempOf(dev), raw);
      await log.waitFor(confirmed, mark, 'confirm of the forced update');
      previous = v2;
    }
  } finally {
    await master.close();
    await link.stop();
    await dev.close();
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  }
});

test('cable pulled mid-update: the old build keeps running, the next flash resumes and ends UPDATED with the value kept (twice on one state dir)', async (t) => {
  t.timeout(180_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-update-pull-'));
  const log = new EventLog();
  const dev = await openDevice(state, log);
  const chunk = 1024;
  const cut = 12;
  try {
    let previous: Uint8Array | null = null;
    for (const round of [0, 1]) {
      const v1 = sensorOfSize(2 * round + 1, 40 << 10);
      const v2 = sensorOfSize(2 * round + 2, 40 << 10);
      // v1 in place, a value set.
      const pair1 = await startPtyPair();
      const link1 = await listen(dev, pair1.b, state);
      const master1 = await masterOn(pair1.a);
      let mark = log.mark();
      const first = await flash(master1, v1);
      t.is(first.outcome.outcome, previous ? 'updated' : 'installed');
      if (previous) await log.waitFor(confirmed, mark, 'confirm of v1');
      const raw = f16(30 + round);
      t.true(dev.intake.setValue(TEMP_OID, raw).ok);
      const v1Pid = dev.engine.ps()[0]!.pid;

      // v2 until the device has `cut` chunks, then the cable goes.
      master1.cutAt = cut;
      let atPull: string[] = [];
      const pulled = await sendImage(master1, v2, {
        appName: 'sensor_app', chunkSize: chunk, window: 4,
        onProgress: (p) => {
          if (p.ackedBytes >= cut * chunk && atPull.length === 0) {
            atPull = runningSha(dev);
            void pair1.stop(); // kills socat: both ends of the line close
          }
        },
      });
      t.false(pulled.ok);
      if (!pulled.ok) t.like(pulled.error, { code: 'EIO', reason: 'port_lost' });
      t.is(await link1.done, 1, 'the device lost its port');
      await master1.close();
      t.deepEqual(atPull, [sha256Hex(v1)], 'v1 ran while v2 was coming in');
      t.deepEqual(runningSha(dev), [sha256Hex(v1)], 'v1 still runs after the pull');
      t.is(dev.engine.ps()[0]!.pid, v1Pid);
      const lastOpen = link1.lines.map((l) => l['event']).lastIndexOf('open');
      const sinceOpen = link1.lines.slice(lastOpen);
      t.true(sinceOpen.some((l) => l['event'] === 'aborted' && l['reason'] === 'port_lost'), JSON.stringify(sinceOpen));
      t.false(sinceOpen.some((l) => l['event'] === 'ready'), 'nothing half-received was installed');
      t.is(tempOf(dev), raw);

      // A new cable, the same device: the flash resumes where the device stopped.
      const pair2 = await startPtyPair();
      let atOpen: string[] = [];
      const link2 = await listen(dev, pair2.b, state, { onLine: (l) => { if (l['event'] === 'open') atOpen = runningSha(dev); } });
      const master2 = await masterOn(pair2.a);
      try {
        mark = log.mark();
        const resumed = await flash(master2, v2, { chunkSize: chunk });
        t.is(resumed.outcome.outcome, 'updated');
        t.true(resumed.outcome.resumeOffset >= cut * chunk, `resumed at ${resumed.outcome.resumeOffset}`);
        t.is(resumed.outcome.dataBytesSent, v2.length - resumed.outcome.resumeOffset, 'only the rest was sent');
        t.like(resumed.outcome.from, { sha256: sha256Hex(v1), pid: v1Pid });
        t.deepEqual(atOpen, [sha256Hex(v1)], 'v1 ran until the switch');
        t.deepEqual(runningSha(dev), [sha256Hex(v2)]);
        t.is(tempOf(dev), raw, 'the value was carried');
        await log.waitFor(confirmed, mark, 'confirm of v2');
      } finally {
        await master2.close();
        await link2.stop();
        await pair2.stop();
      }
      previous = v2;
    }
  } finally {
    await dev.close();
    rmSync(state, { recursive: true, force: true });
  }
});

test('a restarted device runs the image it had, with its value, and flashing that image is CURRENT (twice on one state dir)', async (t) => {
  t.timeout(180_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-update-restart-'));
  const pair = await startPtyPair();
  const master = await masterOn(pair.a);
  try {
    for (const round of [0, 1]) {
      const v1 = sensorBuild(100 + 2 * round);
      const v2 = sensorBuild(101 + 2 * round);
      const log = new EventLog();
      let dev = await openDevice(state, log);
      let link = await listen(dev, pair.b, state, { restore: true });
      try {
        // Round 1 starts on the image round 0 left.
        const restoredAtStart = link.lines.find((l) => l['event'] === 'restored');
        if (round === 0) t.is(restoredAtStart, undefined, 'a fresh device has nothing to restore');
        else t.like(restoredAtStart, { appName: 'sensor_app' });

        let mark = log.mark();
        const first = await flash(master, v1);
        t.is(first.outcome.outcome, round === 0 ? 'installed' : 'updated');
        if (round > 0) await log.waitFor(confirmed, mark, 'confirm of v1');
        const raw = f16(40 + round);
        t.true(dev.intake.setValue(TEMP_OID, raw).ok);
        mark = log.mark();
        const update = await flash(master, v2);
        t.is(update.outcome.outcome, 'updated');
        // Restart only once the update is confirmed (an unconfirmed one reverts at the next start).
        await log.waitFor(confirmed, mark, 'confirm of v2');

        // Power off, power on: the same state directory.
        t.is(await link.stop(), 0);
        await dev.close();
        dev = await openDevice(state, log);
        link = await listen(dev, pair.b, state, { restore: true });
        const restored = link.lines.find((l) => l['event'] === 'restored');
        t.like(restored, { appName: 'sensor_app', sha256: sha256Hex(v2) });
        t.is(restored?.['pid'], dev.engine.ps()[0]?.pid);
        t.deepEqual(runningSha(dev), [sha256Hex(v2)]);
        t.is(tempOf(dev), raw, 'the value survived the restart');

        const again = await flash(master, v2);
        t.is(again.outcome.outcome, 'current');
        t.is(again.dataFrames, 0, 'no DATA frame was sent');
        t.is(again.outcome.pid, restored?.['pid'] as number);
      } finally {
        await link.stop();
        await dev.close();
      }
    }
  } finally {
    await master.close();
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  }
});

test('a version 1 master still flashes: no CURRENT in version 1, the image is sent and READY names the task', async (t) => {
  t.timeout(60_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-update-v1-'));
  const log = new EventLog();
  const pair = await startPtyPair();
  const dev = await openDevice(state, log);
  const link = await listen(dev, pair.b, state);
  const master = await masterOn(pair.a);
  try {
    const v1 = sensorBuild(201);
    const first = await flash(master, v1, { protocolVersion: 1 });
    t.is(first.outcome.protocolVersion, 1);
    t.is(first.outcome.outcome, 'installed');
    t.is(first.outcome.appName, 'sensor_app');
    t.is(first.outcome.pid, dev.engine.ps()[0]!.pid);
    // The same image again: a version 1 master cannot hear CURRENT, so it is sent (an update of itself).
    const again = await flash(master, v1, { protocolVersion: 1 });
    t.is(again.outcome.outcome, 'installed', 'version 1 RESULT says READY only');
    t.true(again.dataFrames > 0);
    t.deepEqual(runningSha(dev), [sha256Hex(v1)]);
    t.true(link.lines.some((l) => l['event'] === 'open' && l['protocolVersion'] === 1));
    // And version 2 right after: CURRENT.
    const v2 = await flash(master, v1);
    t.is(v2.outcome.outcome, 'current');
    t.is(v2.outcome.protocolVersion, 2);
  } finally {
    await master.close();
    await link.stop();
    await dev.intake.confirmNow();
    await dev.close();
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  }
});
