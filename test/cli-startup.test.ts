/**
 * CLI start-up (issue 18 item 4): every subcommand is loaded only when it runs. `--help` lists the
 * commands from the manifest without importing one; `inspect` and `verify` load none of the gateway,
 * link, persistence or engine code; the manifest names the same commands, with the same
 * descriptions, as the modules register. (The timing goal is measured by bench/cli.ts.)
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { registerAll } from '../src/cli/commands/index.js';
import { COMMANDS, commandNamed } from '../src/cli/commands/manifest.js';
import { ROOT } from './support/cli-argv.js';

/** Runs the CLI from its sources and returns the exit code, output and our modules it resolved. */
function traced(args: string[]): Promise<{ code: number; stdout: string; modules: string[] }> {
  const trace = join(mkdtempSync(join(tmpdir(), 'hsx-trace-')), 'imports.txt');
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', '--import', './test/support/trace-imports.mjs', 'src/cli/main.ts', ...args],
      { cwd: ROOT, env: { ...process.env, HSX_TRACE_IMPORTS: trace } }, (e, stdout) => {
        const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 1) : 0;
        let lines: string[] = [];
        try {
          lines = readFileSync(trace, 'utf8').split('\n');
        } catch {
          /* nothing resolved */
        }
        const modules = [...new Set(lines.filter((l) => l.includes('/src/')).map((l) => l.slice(l.indexOf('/src/') + 1)))];
        done({ code, stdout, modules });
      });
  });
}

test('the manifest names every registered command with the description its module registers', (t) => {
  const program = new Command('hsx-gateway');
  registerAll(program);
  const registered = program.commands.map((c) => [c.name(), c.description()]);
  t.deepEqual(COMMANDS.map((c) => [c.name, c.description]).sort(), registered.sort());
});

test('commandNamed: the first word, or the one after help', (t) => {
  t.is(commandNamed(['inspect', 'x.hxe'])?.name, 'inspect');
  t.is(commandNamed(['--json', 'val', 'list'])?.name, 'val');
  t.is(commandNamed(['help', 'job'])?.name, 'job');
  t.is(commandNamed(['--help']), undefined);
  t.is(commandNamed(['nope']), undefined);
});

test('--help lists every command and imports none of them', async (t) => {
  t.timeout(60_000);
  const r = await traced(['--help']);
  t.is(r.code, 0);
  for (const c of COMMANDS) t.regex(r.stdout, new RegExp(`\\n  ${c.name} `), c.name);
  t.deepEqual(r.modules.filter((m) => m.startsWith('src/cli/commands/') && !m.endsWith('manifest.ts')), [], 'no command module loaded');
  t.deepEqual(r.modules.filter((m) => !m.startsWith('src/cli/')), []);
});

test('inspect loads only the image parser; a command\'s own --help loads only that command', async (t) => {
  t.timeout(60_000);
  const r = await traced(['inspect', 'test/fixtures/t04b_value_cmd_help.hxe']);
  t.is(r.code, 0);
  t.regex(r.stdout, /sensor_app/);
  t.deepEqual(r.modules.filter((m) => /^src\/(gateway|link|persist|engine)\//.test(m)), [], 'no gateway, link, persist or engine module');
  t.deepEqual(r.modules.filter((m) => m.startsWith('src/cli/commands/')).sort(), ['src/cli/commands/inspect.ts', 'src/cli/commands/manifest.ts']);
  const help = await traced(['val', '--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /list[\s\S]*get[\s\S]*set/);
  t.deepEqual(help.modules.filter((m) => m.startsWith('src/cli/commands/')).sort(), ['src/cli/commands/manifest.ts', 'src/cli/commands/val.ts']);
});

test('unknown commands are still a usage error (exit 2)', async (t) => {
  t.timeout(60_000);
  const r = await traced(['frobnicate']);
  t.is(r.code, 2);
});
