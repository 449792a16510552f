/**
 * `make run`'s scenario, run as a user would (the CLI in its own process, --once --json): every
 * step must succeed — CAN broadcast to four nodes, UART flash over a real pty pair, CAN GET/SET,
 * and the image and persisted value surviving a power cycle.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('demo --once --json twice on one state dir (--keep-state): every step succeeds, the state survives the power cycle, the second run finds every node CURRENT', (t) => {
  const state = mkdtempSync(join(tmpdir(), 'hsx-demo-'));
  for (const run of [1, 2]) {
    const keep = run === 2 ? ['--keep-state'] : [];
    const r = spawnSync(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'demo', '--once', '--json', '--state', state, ...keep, '--control-port', '0', '--mqtt-port', '0'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    t.is(r.status, 0, `run ${run}: exit ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const summary = lines.find((l) => l['type'] === 'demo_summary')!;
    t.truthy(summary, 'summary line');
    t.true(summary['ok'] as boolean, `run ${run}`);
    const steps = summary['steps'] as Record<string, boolean>;
    for (const s of ['can_flash', 'uart_flash', 'can_get', 'can_set', 'image_survived', 'value_survived', 'can_get_after_cycle']) {
      t.true(steps[s], `run ${run}: step ${s}`);
    }
    const verdicts = lines.filter((l) => l['type'] === 'verdict');
    // the second run's devices already run the image: nothing is sent to them
    t.deepEqual(verdicts.map((v) => v['status']), run === 1 ? ['READY', 'READY', 'READY', 'READY'] : ['CURRENT', 'CURRENT', 'CURRENT', 'CURRENT'], `run ${run}`);
    const ps = lines.filter((l) => l['type'] === 'ps');
    t.deepEqual([...new Set(ps.map((p) => p['device']))].sort(), ['node1', 'node2', 'node3', 'node4', 'uart1']);
    const cycle = lines.find((l) => l['type'] === 'power_cycle')!;
    t.is(cycle['temperature_raw'], 0x4f80);
    t.truthy(lines.find((l) => l['type'] === 'mqtt'), 'prints the MQTT topics to watch');
  }
});

test('demo rejects a bad port with exit code 2', (t) => {
  const r = spawnSync(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'demo', '--once', '--control-port', '99999'], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 2);
  t.regex(r.stderr, /--control-port must be 0\.\.65535/);
});
