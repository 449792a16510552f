/**
 * `make run`'s scenario, run as a user would (the CLI in its own process, --once --json): every
 * step must succeed — the gateway's start-up scan of its CAN master link, a daemon job (submitted
 * over the control port) that flashes the four CAN nodes in one broadcast and the rescan after it,
 * UART flash over a real pty pair, CAN GET/SET, and the image and persisted value surviving a
 * power cycle.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('demo --once --json twice on one state dir (--keep-state): every step succeeds, the job flashes every node, the second job finds every node current (SKIPPED) and counts as success', (t) => {
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
    for (const s of ['can_scan', 'can_job', 'can_inventory', 'uart_flash', 'can_get', 'can_set', 'image_survived', 'value_survived', 'can_get_after_cycle']) {
      t.true(steps[s], `run ${run}: step ${s}`);
    }
    // the gateway's start-up scan found the four CAN nodes; the job went to them (no targets given)
    const scan = lines.find((l) => l['type'] === 'inventory' && l['when'] === 'start')!;
    t.deepEqual(scan['targets'], ['1', '2', '3', '4'], `run ${run}: start-up scan`);
    const submitted = lines.find((l) => l['type'] === 'job_submitted')!;
    // the journal is in the state dir: with --keep-state the second job's id follows the first's
    t.is(submitted['id'], `j-${run}`, `run ${run}: job id`);
    t.is(submitted['link'], 'demo-bus');
    t.deepEqual(submitted['targets'], ['1', '2', '3', '4']);
    const targets = lines.filter((l) => l['type'] === 'job_target');
    // the second run's devices already run the image: nothing is sent to them, and that is a success
    t.deepEqual(targets.map((v) => [v['target'], v['state'], v['outcome']]),
      ['1', '2', '3', '4'].map((n) => (run === 1 ? [n, 'SUCCEEDED', 'installed'] : [n, 'SKIPPED', 'current'])), `run ${run}`);
    const result = lines.find((l) => l['type'] === 'job_result')!;
    t.true(result['ok'] as boolean, `run ${run}: job result`);
    t.is(result['state'], run === 1 ? 'SUCCEEDED' : 'SKIPPED', `run ${run}: job state`);
    // after the job the gateway rescanned the link: every node runs the job's image
    const rescan = lines.find((l) => l['type'] === 'inventory' && l['when'] === 'after_job')!;
    const sha = (submitted['image'] as Record<string, unknown>)['sha256'];
    t.deepEqual((rescan['entries'] as Array<Record<string, unknown>>).map((e) => [e['target'], e['sha256']]), ['1', '2', '3', '4'].map((n) => [n, sha]));
    t.false(lines.some((l) => l['type'] === 'verdict'), 'the CAN nodes are flashed by the job, not by a one-shot master');
    const ps = lines.filter((l) => l['type'] === 'ps');
    t.deepEqual([...new Set(ps.map((p) => p['device']))].sort(), ['node1', 'node2', 'node3', 'node4', 'uart1']);
    const cycle = lines.find((l) => l['type'] === 'power_cycle')!;
    t.is(cycle['temperature_raw'], 0x4f80);
    t.truthy(lines.find((l) => l['type'] === 'mqtt'), 'prints the MQTT topics to watch');
    const jobTopics = lines.find((l) => l['type'] === 'mqtt_jobs')!;
    t.truthy(jobTopics, 'prints the job topics to watch');
    for (const topic of ['hsx/demo/jobs/#', 'hsx/demo/device/+/inventory']) t.true((jobTopics['topics'] as string[]).includes(topic), topic);
    t.regex(String(lines.find((l) => l['type'] === 'control_jobs')?.['list']), /^hsx-gateway job list --connect 127\.0\.0\.1:\d+$/);
  }
  t.true(existsSync(join(state, 'gateway', 'jobs.journal')), 'the job journal lives under the demo state dir');
});

test('demo rejects a bad port with exit code 2', (t) => {
  const r = spawnSync(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'demo', '--once', '--control-port', '99999'], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 2);
  t.regex(r.stderr, /--control-port must be 0\.\.65535/);
});
