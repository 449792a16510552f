/**
 * The CLI's thin control-server clients (`ps`, `status`, `persist`, `rollback`), run as real
 * processes against a real server: output, --json, and honest exit codes.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { sha256Hex } from '../src/gateway/control/auth.js';
import { runClientCommand, runClientSession } from '../src/gateway/control/client.js';
import { psOfDevices, renderPs } from '../src/cli/commands/ps.js';
import { renderStatus } from '../src/cli/commands/status.js';
import { renderPersist } from '../src/cli/commands/persist.js';
import { renderRollback } from '../src/cli/commands/rollback.js';
import { makeEngine, startHarness } from './control-harness.js';
import { EventBus } from '../src/gateway/events/index.js';
import { systemClock } from '../src/engine/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: root, env: { ...process.env, ...env } }, (e, stdout, stderr) => {
      const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

test('ps, status, persist, rollback against a running server', async (t) => {
  t.timeout(60_000);
  const tokens = [
    { name: 'op', role: 'operator' as const, sha256: sha256Hex('operator-secret') },
    { name: 'boss', role: 'admin' as const, sha256: sha256Hex('admin-secret') },
  ];
  const h = await startHarness({ tokens });
  t.teardown(() => h.close());
  const c = await h.client();
  const loaded = await c.request({ cmd: 'provision.load', token: 'operator-secret', path: 't04b_value_cmd_help.hxe' });
  const pid = (loaded['task'] as Record<string, unknown>)['pid'] as number;
  const at = `127.0.0.1:${h.port}`;

  // three real processes (the wiring: commander, exit codes, stdout), the rest in-process
  const [ps, rollbackDenied, badConnect] = await Promise.all([
    cli(['ps', '--connect', at, '--json'], { HSX_GATEWAY_TOKEN: 'operator-secret' }),
    cli(['rollback', '--connect', at, '--token', 'operator-secret', '--json']),
    cli(['persist', '7', '--connect', 'nowhere']),
  ]);
  t.is(ps.code, 0, ps.stderr);
  const psJson = JSON.parse(ps.stdout) as Record<string, unknown>;
  t.true(psJson['ok'] as boolean);
  t.deepEqual((psJson['devices'] as Array<{ device: string; tasks: unknown[] }>).map((d) => [d.device, d.tasks.length]), [['default', 1]]);
  t.is(rollbackDenied.code, 1);
  t.like(JSON.parse(rollbackDenied.stdout), { ok: false, error: { code: 'EPERM', reason: 'admin_required', remote: true } });
  t.regex(String((JSON.parse(rollbackDenied.stdout) as { error: { hint: string } }).error.hint), /--token TOKEN or \$HSX_GATEWAY_TOKEN/);
  t.is(badConnect.code, 2);
  t.regex(badConnect.stderr, /expected HOST:PORT/);

  const run = async (cmd: string, fields: Record<string, unknown>, render: (r: Record<string, unknown>) => string, opts: Record<string, unknown>) => {
    let out = '';
    let errText = '';
    const code = await runClientCommand({ connect: at, ...opts }, cmd, fields, render, { out: (x) => void (out += x), err: (x) => void (errText += x) });
    return { code, out, err: errText };
  };
  const runPs = async (opts: Record<string, unknown>) => {
    let out = '';
    let errText = '';
    const code = await runClientSession({ connect: at, ...opts }, 'ps', (client) => psOfDevices(client), renderPs, { out: (x) => void (out += x), err: (x) => void (errText += x) });
    return { code, out, err: errText };
  };
  const psHuman = await runPs({ token: 'operator-secret' });
  t.is(psHuman.code, 0);
  t.regex(psHuman.out, /^DEVICE\s+PID\s+STATE\s+APP\s+SOURCE\n/);
  t.regex(psHuman.out, /^default\s+\d+\s+ready\s+sensor_app/m);
  const status = await run('provision.status', { pid }, renderStatus, { token: 'operator-secret' });
  t.is(status.code, 0, status.err);
  t.regex(status.out, new RegExp(`^pid ${pid}  READY  sensor_app  329 bytes`));
  const noToken = await run('provision.status', {}, renderStatus, { json: true });
  t.is(noToken.code, 1);
  t.like(JSON.parse(noToken.out), { ok: false, error: { kind: 'remote', remote: true, code: 'EPERM', reason: 'viewer_required' } });
  const persist = await run('provision.persist', { pid, target: 'test' }, renderPersist, { token: 'operator-secret' });
  t.is(persist.code, 0, persist.err);
  t.regex(persist.out, /^persisted to slot [AB] \(seq \d+\) on default\n$/);
  const rollback = await run('provision.rollback', { reason: 'cli-test' }, renderRollback, { token: 'admin-secret' });
  t.true(rollback.code === 0 ? /^rolled back to slot/.test(rollback.out) : /server: E/.test(rollback.err), rollback.out + rollback.err);
  const refused = await runPs({ connect: '127.0.0.1:1', json: true });
  t.is(refused.code, 3, 'no gateway answered');
  t.like(JSON.parse(refused.out), { ok: false, error: { kind: 'connect', code: 'ECONNREFUSED', no_gateway: true } });
  const audits = h.logs.filter((l) => l['audit'] === true && l['verdict'] === 'denied').map((l) => `${String(l['cmd'])}:${String(l['who'])}`);
  t.true(audits.includes('provision.rollback:op'));
});

test('ps lists every device of the gateway with a device column; --device narrows it', async (t) => {
  const bus = new EventBus({ clock: systemClock });
  const devA = makeEngine(systemClock, bus);
  const devB = makeEngine(systemClock, bus);
  const h = await startHarness({ engines: new Map([['bench-a', devA], ['bench-b', devB]]), bus });
  t.teardown(() => h.close());
  const c = await h.client();
  t.like(await c.request({ cmd: 'provision.load', device: 'bench-b', path: 't01_minimal.hxe' }), { status: 'ok' });
  const at = `127.0.0.1:${h.port}`;
  const [all, json, one] = await Promise.all([
    cli(['ps', '--connect', at]),
    cli(['ps', '--connect', at, '--json']),
    cli(['ps', '--connect', at, '--device', 'bench-b', '--json']),
  ]);
  t.is(all.code, 0, all.stderr);
  t.regex(all.stdout, /^DEVICE\s+PID\s+STATE\s+APP\s+SOURCE\n/);
  t.regex(all.stdout, /^bench-a\s+-\s+-\s+\(no tasks\)/m);
  t.regex(all.stdout, /^bench-b\s+\d+\s+ready\s+t01_minimal/m);
  const parsed = JSON.parse(json.stdout) as { ok: boolean; devices: Array<{ device: string; tasks: unknown[] }> };
  t.deepEqual(parsed.devices.map((d) => [d.device, d.tasks.length]), [['bench-a', 0], ['bench-b', 1]]);
  t.deepEqual((JSON.parse(one.stdout) as typeof parsed).devices.map((d) => d.device), ['bench-b']);
});

test('a refusal says what to do: EPERM names --token and the variable, an unknown device lists the devices', async (t) => {
  const tokens = [{ name: 'op', role: 'operator' as const, sha256: sha256Hex('operator-secret') }];
  const h = await startHarness({ tokens });
  t.teardown(() => h.close());
  const at = `127.0.0.1:${h.port}`;
  const capture = async (opts: Record<string, unknown>, cmd: string, fields: Record<string, unknown> = {}) => {
    let out = '';
    let errText = '';
    const code = await runClientCommand({ connect: at, ...opts }, cmd, fields, () => '', { out: (x) => void (out += x), err: (x) => void (errText += x) });
    return { code, out, err: errText };
  };
  const denied = await capture({}, 'provision.status');
  t.is(denied.code, 1);
  t.regex(denied.err, /EPERM:viewer_required.*--token TOKEN or \$HSX_GATEWAY_TOKEN/);
  const unknown = await capture({ token: 'operator-secret', device: 'nope' }, 'provision.status');
  t.is(unknown.code, 1);
  t.regex(unknown.err, /ENODEV:unknown_device.*the gateway's devices: default/);
  // --json keeps the server's own shape and detail
  const json = await capture({ token: 'operator-secret', device: 'nope', json: true }, 'provision.status');
  t.like(JSON.parse(json.out), { ok: false, error: { kind: 'remote', code: 'ENODEV', reason: 'unknown_device', devices: ['default'] } });
});
