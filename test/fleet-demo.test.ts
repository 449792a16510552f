/**
 * `hsx-gateway fleet demo` as a child process: gateways with simulated devices, v1 then a 2-wave rollout of v2.
 * First on a running Mosquitto given twice with --broker (the gateways spread round-robin), then again on the
 * same state with a broker of its own: every device already on v2, all SKIPPED, still exit 0. Waits are on exits.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnCli } from './support/can-bus.js';
import { mosquittoAvailable, startMosquitto } from './support/mosquitto.js';

test('fleet demo: bad sizes are usage errors (exit 2, JSON)', async (t) => {
  const p = spawnCli(['fleet', 'demo', '--gateways', '0', '--json']);
  t.is(await p.exited, 2);
  t.regex(String(p.lines.find((l) => l['type'] === 'error')?.['message']), /--gateways must be 1\.\.32, got 0/);
  const q = spawnCli(['fleet', 'demo', '--devices', '17', '--json']);
  t.is(await q.exited, 2);
  const r = spawnCli(['fleet', 'demo', '--broker', 'http://x:1', '--json']);
  t.is(await r.exited, 2);
});

test('fleet demo: 2 gateways × 2 devices on given brokers (round-robin), v1 then v2 in 2 waves; again on the same state: all skipped, exit 0', async (t) => {
  if (!mosquittoAvailable()) return t.pass('mosquitto not installed');
  t.timeout(600_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const state = mkdtempSync(join(tmpdir(), 'fleet-demo-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const other = `${broker.url}/`; // the same broker under a second URL: enough to see the round-robin
  const first = spawnCli(['fleet', 'demo', '--gateways', '2', '--devices', '2', '--once', '--json', '--state', state, '--broker', broker.url, '--broker', other]);
  t.is(await first.exited, 0, first.stderr());
  t.deepEqual(first.lines.find((l) => l['type'] === 'broker'), { type: 'broker', kind: 'given', urls: [broker.url, other] });
  t.deepEqual(first.lines.filter((l) => l['type'] === 'gateway').map((l) => l['broker']), [broker.url, other]);
  const v2 = first.lines.filter((l) => l['type'] === 'rollout' && l['image'] === 'v2');
  t.is(v2.at(-1)?.['state'], 'completed');
  t.true(v2.some((l) => l['current_wave'] === 1), 'two waves');
  t.deepEqual(first.lines.at(-1), { type: 'summary', succeeded: 4, failed: 0, skipped: 0, timed_out: 0, canceled: 0, devices: 4, on_v2: 4, ok: true });

  const again = spawnCli(['fleet', 'demo', '--gateways', '2', '--devices', '2', '--once', '--json', '--state', state]);
  t.is(await again.exited, 0, again.stderr());
  t.is(again.lines.find((l) => l['type'] === 'broker')?.['kind'], 'mosquitto');
  t.is(again.lines.find((l) => l['type'] === 'v1')?.['skipped'], true);
  t.deepEqual(again.lines.at(-1), { type: 'summary', succeeded: 0, failed: 0, skipped: 4, timed_out: 0, canceled: 0, devices: 4, on_v2: 4, ok: true });
});
