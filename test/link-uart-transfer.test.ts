/**
 * Whole transfers over a real pty pair (socat), master and device in separate processes: every
 * fixture image, a 1 MiB image, and the real CLI (`device --uart --state`, `flash --uart`) with
 * its verdicts (READY, CURRENT, UPDATED), exit codes, the engine's error reaching the master, and
 * the device's image restored after a restart.
 */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { haveSocat, startPtyPair } from './support/pty.js';
import { sensorBuild } from './update-images.js';
import {
  fixture, fixtureNames, fixturePath, makeImage, roomFor, runScript, sha256, startDevice, stopChild,
} from './link-uart-harness.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART link tests need it (apt-get install socat)');
});

test('every fixture image reaches READY byte-identical (device and master in separate processes)', async (t) => {
  t.timeout(120_000);
  const pair = await startPtyPair();
  const device = await startDevice(pair.b, { unload: true });
  try {
    const master = runScript('./link-uart-master-child.ts', ['--port', pair.a, ...fixtureNames.map(fixturePath)]);
    const code = await master.exited;
    t.is(code, 0, master.stderr());
    for (const name of fixtureNames) {
      const exit = master.lines.find((l) => l['event'] === 'exit' && String(l['image']).endsWith(name));
      t.is(exit?.['code'], 0, `${name}: master exit`);
    }
    const stored = device.lines.filter((l) => l['event'] === 'stored');
    t.is(stored.length, fixtureNames.length);
    // The engine's copy of every image is the one sent (in order: one transfer at a time).
    t.deepEqual(stored.map((l) => l['sha256']), fixtureNames.map((n) => sha256(fixture(n))));
    t.is(master.lines.filter((l) => l['event'] === 'ready').length, fixtureNames.length);
    t.log(`${fixtureNames.length} fixtures flashed`);
  } finally {
    await stopChild(device);
    await pair.stop();
  }
});

test('a 1 MiB image reaches READY byte-identical (separate processes)', async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'uart-1mib-'));
  const image = makeImage(1 << 20, 'big_app', 7);
  const path = join(dir, 'big.hxe');
  writeFileSync(path, image);
  const pair = await startPtyPair();
  const device = await startDevice(pair.b, { config: roomFor(1 << 20) });
  try {
    const master = runScript('./link-uart-master-child.ts', ['--port', pair.a, path]);
    t.is(await master.exited, 0, JSON.stringify(master.lines.slice(-3)) + master.stderr());
    const ready = master.lines.find((l) => l['event'] === 'ready')!;
    t.is(ready['totalBytes'], 1 << 20);
    t.is(ready['resumeOffset'], 0);
    const stored = await device.waitFor((l) => l['event'] === 'stored');
    t.is(stored['bytes'], 1 << 20);
    t.is(stored['sha256'], sha256(image));
    t.log(`1 MiB in ${String(ready['elapsedMs'])} ms, ${String(ready['retransmits'])} retransmissions`);
  } finally {
    await stopChild(device);
    await pair.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CLI: READY, the same image again CURRENT with nothing sent, a new build UPDATED (from → to), a conflicting image a typed EEXIST (exit 1), and a restarted device restores its image', async (t) => {
  t.timeout(180_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-state-'));
  const pair = await startPtyPair();
  const deviceArgs = ['device', '--uart', pair.b, '--state', state, '--json', '--confirm-window-ms', '100'];
  let device = runScript('../src/cli/main.ts', deviceArgs);
  const v1 = 'configs/sd/apps/sensor.hxe';
  const v2 = 'configs/sd/apps/sensor-v2.hxe';
  try {
    await device.waitFor((l) => l['event'] === 'listening');
    t.false(device.lines.some((l) => l['event'] === 'restored'), 'a fresh device has nothing to restore');
    const first = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', v1]);
    t.is(await first.exited, 0, first.stderr());
    const ready = first.lines.find((l) => l['event'] === 'ready')!;
    t.like(ready, { verdict: 'READY', outcome: 'installed', appName: 'sensor_app', from: null });
    t.true(first.lines.some((l) => l['event'] === 'progress'));
    // The device committed the image to its flash before answering.
    await device.waitFor((l) => l['event'] === 'engine' && l['type'] === 'provisioning.persisted' && l['pid'] !== null);
    await device.waitFor((l) => l['event'] === 'ready');

    // The same image again: CURRENT, no data moves, exit 0.
    const second = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', v1]);
    t.is(await second.exited, 0, second.stderr());
    const current = second.lines.find((l) => l['event'] === 'current')!;
    t.like(current, { verdict: 'CURRENT', outcome: 'current', dataFramesSent: 0, dataBytesSent: 0, pid: ready['pid'] });
    t.like(current['image'], { appName: 'sensor_app', sha256: (ready['image'] as Record<string, unknown>)['sha256'] });
    await device.waitFor((l) => l['event'] === 'current');

    // A new build of the running app (text output): UPDATED from → to.
    const third = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, v2]);
    t.is(await third.exited, 0, third.stderr());
    const text = String(third.lines.find((l) => l['event'] === 'text' && /UPDATED/.test(String(l['text'])))?.['text'] ?? '');
    t.regex(text, /^flash: UPDATED on .*: sensor_app .*\(sha256 [0-9a-f]{12}…\) → sensor_app .*\(sha256 [0-9a-f]{12}…\), pid \d+/);
    await device.waitFor((l) => l['event'] === 'engine' && l['type'] === 'provisioning.persisted' && (l['data'] as Record<string, unknown>)['confirmed'] === true);
    const again = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, v2]);
    t.is(await again.exited, 0);
    t.regex(String(again.lines.at(-1)?.['text']), /^flash: CURRENT on .*: the device already runs sensor_app .* as pid \d+; nothing sent/);

    // Another app whose values collide with the running one's, and which is not an update of it
    // (multi-instance): the device refuses it, and the master says exactly that.
    const conflicting = join(state, 'conflict.hxe');
    writeFileSync(conflicting, sensorBuild(5, 16, { appName: 'other_app', allowMultipleInstances: true }));
    const fourth = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', conflicting]);
    t.is(await fourth.exited, 1);
    const error = fourth.lines.find((l) => l['event'] === 'error')?.['error'] as Record<string, unknown>;
    t.like(error, { code: 'EEXIST', remote: true });
    t.is(typeof error['reason'], 'string');
    t.is(typeof error['where'], 'string');

    // Power cycle: the device runs what its flash holds, and that image is CURRENT.
    await stopChild(device);
    device = runScript('../src/cli/main.ts', deviceArgs);
    const restored = await device.waitFor((l) => l['event'] === 'restored');
    t.like(restored, { appName: 'sensor_app' });
    await device.waitFor((l) => l['event'] === 'listening');
    const fifth = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', v2]);
    t.is(await fifth.exited, 0, fifth.stderr());
    t.like(fifth.lines.find((l) => l['event'] === 'current'), { verdict: 'CURRENT', pid: restored['pid'], dataFramesSent: 0 });

    // A bad option is a usage error (2), an unreadable image a failure (1).
    const usage = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--window', '0', fixturePath('t01_minimal.hxe')]);
    t.is(await usage.exited, 2);
    const badWindow = runScript('../src/cli/main.ts', ['device', '--uart', pair.b, '--confirm-window-ms', 'soon']);
    t.is(await badWindow.exited, 2);
    const missing = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', join(state, 'nope.hxe')]);
    t.is(await missing.exited, 1);
    t.like(missing.lines.find((l) => l['event'] === 'error')?.['error'], { reason: 'image_unreadable' });
  } finally {
    await stopChild(device);
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  }
});
