/**
 * Both masters check the image before anything goes on a wire (issue 24, "fail fast"): a flash of an
 * image with a bad CRC ends with the format error, naming the reason and the byte offset, before the
 * CAN bus or the serial port is even opened (so the address given here does not have to exist).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
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
  t.like(line, { type: 'error', code: 'EBADMSG', reason: 'crc_mismatch', where: 'image' });
});

test('flash --uart refuses an invalid image before it opens the port', (t) => {
  const bad = badImage();
  const r = cli(['flash', '--uart', '/dev/does-not-exist-hsx', '--json', bad]);
  t.is(r.status, 1);
  const line = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { event: string; error: Record<string, unknown> };
  t.is(line.event, 'error');
  t.like(line.error, { code: 'EBADMSG', reason: 'crc_mismatch', where: 'image' });
});
