/**
 * Whole transfers over a real pty pair (socat), master and device in separate processes: every
 * fixture image, a 1 MiB image, and the real CLI (`device --uart --state`, `flash --uart`) with
 * its exit codes and the engine's error reaching the master.
 */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { haveSocat, startPtyPair } from './support/pty.js';
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

test('CLI: flash exits 0 on READY; the engine\'s EEXIST reaches the master as a typed error and exit 1', async (t) => {
  t.timeout(120_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-state-'));
  const pair = await startPtyPair();
  const device = runScript('../src/cli/main.ts', ['device', '--uart', pair.b, '--state', state, '--json']);
  try {
    await device.waitFor((l) => l['event'] === 'listening');
    const first = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', fixturePath('t02_single_instance_reqcap.hxe')]);
    t.is(await first.exited, 0, first.stderr());
    const ready = first.lines.find((l) => l['event'] === 'ready')!;
    t.truthy(ready, JSON.stringify(first.lines));
    t.true(first.lines.some((l) => l['event'] === 'progress'));
    // The device persisted the image into its flash before answering READY.
    await device.waitFor((l) => l['event'] === 'engine' && l['type'] === 'provisioning.persisted' && l['pid'] !== null);
    await device.waitFor((l) => l['event'] === 'ready');

    // Same single-instance app again: the engine refuses it, and the master says exactly that.
    const second = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', fixturePath('t02_single_instance_reqcap.hxe')]);
    t.is(await second.exited, 1);
    const error = second.lines.find((l) => l['event'] === 'error')?.['error'] as Record<string, unknown>;
    t.like(error, { code: 'EEXIST', remote: true });
    t.is(typeof error['reason'], 'string');
    t.is(typeof error['where'], 'string');

    // A bad option is a usage error (2), an unreadable image a failure (1).
    const usage = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--window', '0', fixturePath('t01_minimal.hxe')]);
    t.is(await usage.exited, 2);
    const missing = runScript('../src/cli/main.ts', ['flash', '--uart', pair.a, '--json', join(state, 'nope.hxe')]);
    t.is(await missing.exited, 1);
    t.like(missing.lines.find((l) => l['event'] === 'error')?.['error'], { reason: 'image_unreadable' });
  } finally {
    await stopChild(device);
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  }
});
