/**
 * `serve` and `demo` start-up (issue 24 items 7 and 8): the configuration is read and validated
 * before the gateway, its links, MQTT and the broker are imported, so a config error exits 2 at
 * once whatever bus backend the config names (a cross-process `virtual:HOST:PORT` bus used to
 * hang). The time is measured and printed, not asserted: the test counts the modules that were not
 * loaded. And `--log-format pretty|json` chooses the log lines (default JSON when stderr is not a
 * terminal).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliArgv, ROOT } from './support/cli-argv.js';
import { runCli } from './hxe-cli-run.js';
import { startServe } from './support/serve-child.js';

/** Modules a config error must not load: the gateway, links, persistence, MQTT, the broker, serial ports, logs. */
const HEAVY = [
  /\/src\/gateway\/gateway\.ts$/, /\/src\/gateway\/demo\.ts$/, /\/src\/gateway\/mqtt\//, /\/src\/link\/uart\//, /\/src\/link\/can\/(?!ids\.ts$)/,
  /\/src\/persist\//, /\/node_modules\/mqtt\//, /\/node_modules\/aedes\//, /\/node_modules\/serialport\//, /\/node_modules\/socketcan\//,
  /\/node_modules\/pino\//,
];

function traced(args: string[]): Promise<{ code: number; stdout: string; stderr: string; modules: string[]; ms: number }> {
  const trace = join(mkdtempSync(join(tmpdir(), 'hsx-trace-')), 'imports.txt');
  const t0 = performance.now();
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', '--import', './test/support/trace-imports.mjs', 'src/cli/main.ts', ...args],
      { cwd: ROOT, timeout: 60_000, env: { ...process.env, HSX_TRACE_IMPORTS: trace } }, (e, stdout, stderr) => {
        const ms = performance.now() - t0;
        const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : -1) : 0;
        let lines: string[] = [];
        try {
          lines = readFileSync(trace, 'utf8').split('\n').filter(Boolean);
        } catch {
          /* nothing resolved */
        }
        done({ code, stdout, stderr, modules: [...new Set(lines)], ms });
      });
  });
}

const dir = mkdtempSync(join(tmpdir(), 'hsx-daemon-start-'));
const badNodeCrossProcess = join(dir, 'bad-node.toml');
writeFileSync(badNodeCrossProcess, `
[gateway]
id = "t"
[[links.can]]
interface = "127.0.0.1:1"
backend = "virtual"
[[devices]]
name = "n1"
state_dir = "${join(dir, 'n1')}"
node_id = 100
`);
const badSyntax = join(dir, 'bad-syntax.toml');
writeFileSync(badSyntax, '[gateway]\nid = "t"\nlog level = 3\n');

for (const [cmd, file, what] of [
  ['serve', badNodeCrossProcess, 'node_id 100 on a cross-process bus'],
  ['serve', badSyntax, 'a TOML syntax error'],
  ['demo', badNodeCrossProcess, 'node_id 100 on a cross-process bus'],
] as const) {
  test(`${cmd} with ${what}: exit 2, the error as JSON, nothing heavy loaded`, async (t) => {
    t.timeout(60_000);
    const run = await traced([cmd, '--config', file, '--json', ...(cmd === 'demo' ? ['--once'] : [])]);
    t.is(run.code, 2, run.stderr);
    const line = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as { ok: boolean; error: Record<string, unknown> };
    t.like(line, { ok: false, error: { code: 'ECONFIG', reason: 'invalid_config', file } });
    if (file === badNodeCrossProcess) t.regex(String(line.error['message']), /devices\[0\]\.node_id = 100: must be <= 63/);
    else t.regex(String(line.error['message']), /bad-syntax.toml:3:5: TOML syntax error/);
    const heavy = run.modules.filter((m) => HEAVY.some((h) => h.test(m)));
    t.deepEqual(heavy, [], 'no gateway, link, MQTT, broker, serial or logger module');
    const ours = run.modules.filter((m) => m.includes('/src/')).length;
    // the same process doing nothing but loading tsx, for scale (same machine, same moment)
    const base = await traced(['--version']);
    // untraced, as users run it (the build when it is fresh, else the sources through tsx)
    const t0 = performance.now();
    const plain = await runCli([cmd, '--config', file, ...(cmd === 'demo' ? ['--once'] : [])]);
    const plainMs = performance.now() - t0;
    t.is(plain.code, 2);
    t.log(`${cmd} ${what} (${cliArgv()[0]!.endsWith('.js') ? 'dist' : 'tsx'}): exit 2 after ${plainMs.toFixed(0)} ms untraced`);
    t.log(`${cmd} ${what}: exit ${run.code} after ${run.ms.toFixed(0)} ms (\`--version\` through the same loader: ${base.ms.toFixed(0)} ms), ` +
      `${run.modules.length} modules resolved (${ours} of ours), 0 of the heavy ones`);
  });
}

test('serve --log-format: json gives JSON log lines, pretty human ones; the default off a terminal is JSON', async (t) => {
  t.timeout(120_000);
  const cfg = join(dir, 'ok.toml');
  writeFileSync(cfg, `[gateway]\nid = "logs"\nlog_level = "info"\n[control]\nlisten = "127.0.0.1:0"\n[[devices]]\nname = "d1"\nstate_dir = "${join(dir, 'd1')}"\n`);
  const stderrOf = async (extra: string[]): Promise<string> => {
    const s = await startServe(cfg, extra);
    s.child.kill('SIGTERM');
    await s.exited;
    return s.stderr();
  };
  const logLines = (text: string) => text.split('\n').filter((l) => l.trim() !== '');
  const asJson = logLines(await stderrOf(['--log-format', 'json']));
  t.true(asJson.length > 0, 'serve logs something at info');
  for (const l of asJson) t.notThrows(() => JSON.parse(l), l);
  const byDefault = logLines(await stderrOf([]));
  t.true(byDefault.length > 0);
  for (const l of byDefault) t.notThrows(() => JSON.parse(l), `default off a terminal: ${l}`);
  const pretty = logLines(await stderrOf(['--log-format', 'pretty']));
  t.true(pretty.length > 0);
  t.true(pretty.some((l) => { try { JSON.parse(l); return false; } catch { return true; } }), 'pretty lines are not JSON');
  t.regex(pretty.join('\n'), /INFO/);
});
