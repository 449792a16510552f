/**
 * One JSON shape (issue 24 item 5): with `--json`, every command's usage errors are one JSON line on
 * stdout, `{"ok":false,"error":{"code","reason","message",…}}`, and exit 2. The commands come from
 * the registered program (subcommands included), so a new command is covered without touching this
 * file. Also: the runtime errors that had their own shapes (`{"event":"error"}`, `{"type":"error"}`,
 * `{"ok":false,"kind":"remote"}`) now have this one, local and remote alike.
 */
import test from 'ava';
import { Command } from 'commander';
import { registerAll } from '../src/cli/commands/index.js';
import { COMMANDS } from '../src/cli/commands/manifest.js';
import { clientErrorJson } from '../src/gateway/control/client.js';
import { errorLine, splitError } from '../src/cli/output.js';
import { runCli, type CliRun } from './hxe-cli-run.js';

/** Every runnable command path: `inspect`, `can get`, `job submit`, … (leaves of the command tree). */
function commandPaths(): string[][] {
  const program = new Command('hsx-gateway');
  registerAll(program);
  const paths: string[][] = [];
  const walk = (c: Command, prefix: string[]): void => {
    if (c.commands.length === 0) paths.push(prefix);
    for (const sub of c.commands) walk(sub, [...prefix, sub.name()]);
  };
  for (const c of program.commands) walk(c, [c.name()]);
  return paths;
}

function errorShape(t: { fail(m: string): void; is(a: unknown, b: unknown, m?: string): void; true(a: boolean, m?: string): void }, what: string, r: CliRun, exit: number): Record<string, unknown> | null {
  t.is(r.code, exit, `${what}: exit code (stderr: ${r.stderr.slice(0, 300)})`);
  const lines = r.stdout.trim().split('\n').filter(Boolean);
  if (lines.length === 0) {
    t.fail(`${what}: nothing on stdout`);
    return null;
  }
  let last: unknown;
  try {
    last = JSON.parse(lines.at(-1)!);
  } catch {
    t.fail(`${what}: stdout is not JSON: ${r.stdout.slice(0, 300)}`);
    return null;
  }
  const o = last as { ok?: unknown; error?: Record<string, unknown> };
  t.is(o.ok, false, `${what}: ok`);
  t.true(o.error !== null && typeof o.error === 'object', `${what}: error is an object`);
  for (const k of ['code', 'reason', 'message']) t.is(typeof o.error?.[k], 'string', `${what}: error.${k}`);
  return o.error ?? null;
}

/** At most two children at a time: two cores shared. */
async function pooled<T, R>(items: T[], run: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await run(items[i]!);
    }
  };
  await Promise.all([worker(), worker()]);
  return out;
}

test('every command × --json × an unknown option: one JSON error line on stdout, exit 2', async (t) => {
  t.timeout(300_000);
  const paths = commandPaths();
  t.true(paths.length >= COMMANDS.length, 'every manifest command is covered');
  for (const c of COMMANDS) t.true(paths.some((p) => p[0] === c.name), `${c.name} is covered`);
  const runs = await pooled(paths, (p) => runCli([...p, '--json', '--no-such-option-hsx']));
  paths.forEach((p, i) => {
    const e = errorShape(t, p.join(' '), runs[i]!, 2);
    if (e) {
      t.is(e['code'], 'EUSAGE', p.join(' '));
      // commander checks required options before unknown ones (`can get` without --can)
      t.true(['unknown_option', 'missing_mandatory_option_value'].includes(String(e['reason'])), `${p.join(' ')}: ${String(e['reason'])}`);
      t.is(runs[i]!.stderr, '', `${p.join(' ')}: nothing on stderr with --json`);
    }
  });
  t.log(`${paths.length} command paths checked: ${paths.map((p) => p.join(' ')).join(', ')}`);
});

test('the usage errors the issue names, and usage checks made by the commands themselves', async (t) => {
  t.timeout(300_000);
  const cases: Array<[string[], string]> = [
    [['flash', '--json'], 'missing_argument'],
    [['inspect', '--json'], 'missing_argument'],
    [['can', 'get', '--json', '--node', '70'], 'missing_mandatory_option_value'],
    [['frobnicate', '--json'], 'unknown_command'],
    // checked by the command, not by commander
    [['flash', '--json', 'configs/sd/apps/sensor.hxe'], 'no_transport'],
    [['device', '--json'], 'no_transport'],
    [['flash', '--json', '--can', 'virtual:127.0.0.1:1', '--nodes', '99', 'configs/sd/apps/sensor.hxe'], 'bad_usage'],
    [['can', 'set', '--json', '--can', 'virtual:x', '--node', '3', 'nope', '1'], 'bad_usage'],
    [['persist', '--json', '1', '--target', 'forever'], 'bad_option'],
    [['flash', '--json', '--uart', '/dev/null', '--baud', 'fast', 'configs/sd/apps/sensor.hxe'], 'bad_usage'],
    [['status', '--json', 'abc'], 'bad_argument'],
    [['serve', '--json', '--config', 'configs/demo.toml', '--log-format', 'xml'], 'bad_option'],
    [['demo', '--json', '--control-port', '99999'], 'bad_option'],
    [['scan', '--json'], 'bad_usage'],
  ];
  const runs = await pooled(cases, ([args]) => runCli(args));
  cases.forEach(([args, reason], i) => {
    const e = errorShape(t, args.join(' '), runs[i]!, 2);
    if (e) t.is(e['reason'], reason, args.join(' '));
    t.is(runs[i]!.stderr, '', `${args.join(' ')}: nothing on stderr with --json`);
  });
});

test('runtime errors, local and remote, have the same shape', async (t) => {
  t.timeout(120_000);
  const local = await runCli(['inspect', '--json', 'test/fixtures/does-not-exist.hxe']);
  t.like(errorShape(t, 'inspect of a missing file', local, 1), { code: 'EIO', reason: 'unreadable' });
  const noGateway = await runCli(['ps', '--json', '--connect', '127.0.0.1:1']);
  t.like(errorShape(t, 'ps without a gateway', noGateway, 3), { kind: 'connect', remote: false });
  // a remote refusal as the client turns it into JSON (the server's CODE:reason split, its detail beside)
  const remote = clientErrorJson({ kind: 'remote', message: 'server: ENODEV:unknown_device', error: 'ENODEV:unknown_device', detail: { devices: ['a', 'b'], message: 'no device x' } });
  t.deepEqual(remote, { ok: false, error: { devices: ['a', 'b'], hint: "the gateway's devices: a, b", kind: 'remote', remote: true, code: 'ENODEV', reason: 'unknown_device', message: 'no device x' } });
  t.deepEqual(JSON.parse(errorLine('EIO', 'x', 'y', { code: 'NOPE', file: 'f' })), { ok: false, error: { file: 'f', code: 'EIO', reason: 'x', message: 'y' } });
  t.deepEqual(splitError('EPERM:read_only'), { code: 'EPERM', reason: 'read_only' });
  t.deepEqual(splitError('unknown pid 3'), { code: 'EIO', reason: 'unknown_pid_3' });
});
