/**
 * Both masters check the image before anything goes on a wire (issue 24, "fail fast"): a flash of an
 * image with a bad CRC ends with the format error, naming the reason and the byte offset, before the
 * CAN bus or the serial port is even opened (so the address given here does not have to exist).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { runCli } from './hxe-cli-run.js';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function badImage(): string {
  const bytes = readFileSync('configs/sd/apps/sensor.hxe');
  bytes[bytes.length - 1]! ^= 0xff; // the CRC covers the whole body: it no longer matches
  const path = join(mkdtempSync(join(tmpdir(), 'hsx-badimg-')), 'bad.hxe');
  writeFileSync(path, bytes);
  return path;
}

const cli = (args: string[]) => spawnSync(process.execPath, ['--import=tsx', 'src/cli/main.ts', ...args], { encoding: 'utf8', timeout: 60_000 });

test('flash --can refuses an invalid image before it opens the bus (text and --json)', (t) => {
  const bad = badImage();
  // No hub listens on this address: a master that went to the bus first would report the bus instead.
  const text = cli(['flash', '--can', 'virtual:127.0.0.1:1', '--nodes', '7', bad]);
  t.is(text.status, 1, text.stderr);
  t.regex(text.stderr, /is not a valid image/);
  t.regex(text.stderr, /EBADMSG crc_mismatch/);
  t.notRegex(text.stderr + text.stdout, /ENODEV|ECONNREFUSED|bus/i);
  const json = cli(['flash', '--can', 'virtual:127.0.0.1:1', '--nodes', '7', '--json', bad]);
  t.is(json.status, 1);
  const line = JSON.parse(json.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
  t.like(line, { ok: false, type: 'error', error: { code: 'EBADMSG', reason: 'crc_mismatch', where: 'image' } });
});

test('flash --uart refuses an invalid image before it opens the port', (t) => {
  const bad = badImage();
  const r = cli(['flash', '--uart', '/dev/does-not-exist-hsx', '--json', bad]);
  t.is(r.status, 1);
  const line = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { event: string; error: Record<string, unknown> };
  t.is(line.event, 'error');
  t.like(line.error, { code: 'EBADMSG', reason: 'crc_mismatch', where: 'image' });
});

test('flash --can to a node that never answers gives up after the 3 s join budget at default settings, naming the node and what to check; --can-retries lengthens it', async (t) => {
  const { openTestBus } = await import('./support/can-bus.js');
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const run = async (extra: string[]) => {
    const r = await runCli(['flash', '--can', bus.processAddress(), '--nodes', '9', ...extra, 'configs/sd/apps/sensor.hxe']);
    return { status: r.code, stdout: r.stdout, stderr: r.stderr };
  };
  const json = await run(['--json']);
  t.is(json.status, 3, json.stderr); // 3: no device answered
  const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.like(lines.find((l) => l['type'] === 'verdict'), { node: 9, status: 'ETIMEDOUT', reason: 'no_join' });
  const summary = lines.find((l) => l['type'] === 'summary')!;
  t.deepEqual(summary['never_joined'], [9]);
  t.regex(String(summary['hint']), /node 9 never answered on .*: check that the interface is up, that its bit rate matches the nodes', and the node id/);
  // The announce's whole back-off at default settings: 200 + 400 + 800 + 1600 ms, where it was 12.6 s.
  t.is(summary['joinWaitMs'], 3000);
  t.log(`gave up after ${summary['ms']} ms`);
  const text = await run([]);
  t.regex(text.stdout, /node 9 never answered on virtual:127\.0\.0\.1:\d+: check that the interface is up/);
  // An explicit setting decides the wait by its own back-off, past the default budget: 1300 × (1 + 2) = 3900 ms.
  const longer = await run(['--json', '--can-timeout', '1300', '--can-retries', '1']);
  const s2 = longer.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['type'] === 'summary')!;
  t.is(s2['joinWaitMs'], 3900);
});

test('flash --uart with nothing on the other end gives up after the 5 s open budget, saying what to check, and says it is trying', async (t) => {
  const { startPtyPair } = await import('../src/link/uart/pty-pair.js');
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  const run = async (extra: string[]) => {
    const r = await runCli(['flash', '--uart', pair.a, ...extra, 'configs/sd/apps/sensor.hxe']);
    return { status: r.code, stdout: r.stdout, stderr: r.stderr };
  };
  const json = await run(['--json']);
  t.is(json.status, 3, json.stderr); // 3: no device answered
  const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  // OPEN waits 250, 500, 1000, 2000 ms, then the last 1250 ms of the 5 s budget: five OPENs, each reported.
  t.deepEqual(lines.filter((l) => l['event'] === 'progress').map((l) => l['openAttempts']), [1, 2, 3, 4, 5]);
  const error = lines.at(-1)! as { event: string; error: Record<string, unknown> };
  t.is(error.event, 'error');
  t.like(error.error, { code: 'ETIMEDOUT', where: 'session', reason: 'no_listener' });
  t.regex(String(error.error['message']), /nothing answered on .* at 921600 baud \(no device answered OPEN within 5 s \(5 attempts\)\): check the cable, the baud rate/);
  const text = await run([]);
  t.is(text.status, 3);
  t.regex(text.stderr, /no answer yet on .* at 921600 baud \(OPEN sent 2 times\)/);
  t.regex(text.stdout + text.stderr, /nothing answered on/);
});
