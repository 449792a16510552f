/**
 * `hsx-gateway val list|get|set` (src/cli/commands/val.ts) as a real process against a real control
 * server: human and --json output, and exit codes (0 ok, 1 refused, 2 usage, 3 no node answered).
 */
import test from 'ava';
import { sha256Hex } from '../src/gateway/control/auth.js';
import { openCanBus } from '../src/link/can/address.js';
import { runCli } from './hxe-cli-run.js';
import { startHarness } from './control-harness.js';

type Json = Record<string, unknown>;
const json = (s: string): Json => JSON.parse(s.trim().split('\n').pop() as string) as Json;

test('val list, get and set: output, --json and exit codes', async (t) => {
  t.timeout(120_000);
  const bus = await openCanBus('virtual:cli-val-bus');
  t.teardown(() => bus.close());
  const tokens = [
    { name: 'op', role: 'operator' as const, sha256: sha256Hex('operator-secret') },
    { name: 'boss', role: 'admin' as const, sha256: sha256Hex('admin-secret') },
  ];
  const h = await startHarness({ tokens, valueBuses: new Map([['can0', bus]]) });
  t.teardown(() => h.close());
  const c = await h.client();
  await c.request({ cmd: 'load', path: 't04b_value_cmd_help.hxe', token: 'admin-secret' });
  c.destroy();
  const at = ['--connect', `127.0.0.1:${h.port}`];
  const op = { HSX_GATEWAY_TOKEN: 'operator-secret' };

  const list = await runCli(['val', 'list', ...at], op);
  t.is(list.code, 0, list.stderr);
  t.regex(list.stdout, /^OID\s+GROUP:ID\s+NAME\s+VALUE\s+UNIT\s+RANGE\s+FLAGS\s+AUTH\s+PID/);
  t.regex(list.stdout, /258\s+1:2\s+temperature\s+12\.5\s+degC\s+-40\.\.125\s+rw,persist\s+0\s+1/);
  t.regex(list.stdout, /259\s+1:3\s+door_open\s+1\s+ro\s+1\s+1/);
  const listJson = json((await runCli(['val', 'list', '--group', '2', '--json', ...at], op)).stdout);
  t.like(listJson, { ok: true });
  t.deepEqual((listJson['values'] as Json[]).map((v) => v['oid']), [513]);

  const got = await runCli(['val', 'get', '1:2', ...at], op);
  t.is(got.code, 0);
  t.is(got.stdout, '258 (1:2) = 12.5 (f16 0x4a40, pid 1)\n');
  const set = await runCli(['val', 'set', '1:2', '21.5', '--json', ...at], op);
  t.is(set.code, 0, set.stderr);
  t.like(json(set.stdout), { ok: true, value: { status: 0, value: 21.5, f16: 19808, pid: 1, persisted: true }, device: 'default' });
  t.is((await runCli(['val', 'set', '0x102', '22', ...at], op)).stdout, '258 (1:2) set to 22 (f16 0x4d80), persisted\n');

  // refusals: exit 1, the typed error and the reference's status
  const ro = await runCli(['val', 'set', '1:3', '0', '--json', ...at], op);
  t.is(ro.code, 1);
  t.like(json(ro.stdout), { ok: false, error: { kind: 'remote', code: 'EPERM', reason: 'read_only', status: 2, field: 'oid' } });
  const auth = await runCli(['val', 'set', '2:1', '5', ...at], op);
  t.is(auth.code, 1);
  t.regex(auth.stderr, /^val set: server: EPERM:auth_level: value "speed" \(2,1\) needs auth level 2 \(admin\); the caller has 1 \(user\)\n$/);
  t.is((await runCli(['val', 'set', '2:1', '5', '--token', 'admin-secret', ...at])).code, 0);
  const range = await runCli(['val', 'set', '1:2', '500', '--json', ...at], op);
  t.is(range.code, 1);
  t.like(json(range.stdout), { ok: false, error: { code: 'EINVAL', reason: 'out_of_range', status: 4, field: 'value', min: -40, max: 125 } });
  const missing = await runCli(['val', 'get', '9:9', '--json', ...at], op);
  t.is(missing.code, 1);
  t.like(json(missing.stdout), { ok: false, error: { code: 'ENOENT', reason: 'unknown_oid', status: 1 } });
  const viewer = await runCli(['val', 'set', '1:2', '20', '--json', ...at], { HSX_GATEWAY_TOKEN: '' });
  t.is(viewer.code, 1);

  // usage: exit 2, checked before connecting, naming the field
  const bad = await runCli(['val', 'set', '1:2', 'warm', '--json', ...at], op);
  t.is(bad.code, 2);
  t.like(json(bad.stdout), { ok: false, error: { kind: 'usage', code: 'EINVAL', reason: 'value', field: 'value' } });
  const inf = await runCli(['val', 'set', '1:2', 'Infinity', ...at], op);
  t.is(inf.code, 2);
  t.regex(inf.stderr, /Infinity cannot be held by an f16/);
  t.is((await runCli(['val', 'get', 'temperature', ...at], op)).code, 2);
  t.is((await runCli(['val', 'get', '1:2', '--link', 'can0', ...at], op)).code, 2);
  t.is((await runCli(['val', 'get'], op)).code, 2, 'missing argument: commander usage error');

  // a CAN node that never answers: exit 3
  const silent = await runCli(['val', 'get', '1:2', '--link', 'can0', '--node', '9', '--json', ...at], op);
  t.is(silent.code, 3, silent.stdout + silent.stderr);
  t.like(json(silent.stdout), { ok: false, error: { code: 'ETIMEDOUT', reason: 'no_answer', field: 'node' } });
  // nothing listening: exit 3 (no gateway answered)
  t.is((await runCli(['val', 'list', '--connect', '127.0.0.1:1'], op)).code, 3);
});
