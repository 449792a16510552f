/**
 * The executive's commands beyond provisioning (src/gateway/control/exec-commands.ts): the HSX
 * shell's recorded session replayed against the gateway (reply shapes: keys and types), every new
 * command × role, the value rule's refusals with the reference's statuses, bad input with typed
 * errors, and a persisted value set over the control port surviving a power cycle.
 */
import test from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { roleAllows, sha256Hex, ROLES, type Role } from '../src/gateway/control/auth.js';
import { commandRoles } from '../src/gateway/control/server.js';
import { validateConfig } from '../src/gateway/config.js';
import { Gateway } from '../src/gateway/gateway.js';
import { createLogger } from '../src/gateway/logger.js';
import { fixturePath, LineClient, startHarness, type Harness } from './control-harness.js';

type Json = Record<string, unknown>;

const TRANSCRIPT = '/work/shared/vectors/hsx-reference/shell_transcript.json';
const localTranscript = new URL('./fixtures/reference/shell_transcript.json', import.meta.url).pathname;

function loadTranscript(): { exchanges: Array<{ label: string; request: Json; replies: Json[] }> } {
  for (const p of [localTranscript, TRANSCRIPT]) {
    try {
      return JSON.parse(readFileSync(p, 'utf8')) as { exchanges: Array<{ label: string; request: Json; replies: Json[] }> };
    } catch {
      /* next */
    }
  }
  throw new Error('shell_transcript.json not found');
}

/** An images directory laid out as the transcript names files (`images/<name>`). */
function imagesRoot(): string {
  const root = mkdtempSync(join(tmpdir(), 'hsx-exec-'));
  mkdirSync(join(root, 'images'));
  for (const f of ['t01_minimal.hxe', 't04b_value_cmd_help.hxe', 't05_mailbox_json.hxe']) copyFileSync(fixturePath(f), join(root, 'images', f));
  return root;
}

const kind = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

/**
 * Where `ours` does not have the reference's shape: every key of a reference object is present
 * with the same JSON type (numbers are numbers, int or float), recursively; arrays element by
 * element as far as both go; `null` on either side matches anything (what an id, a timestamp or
 * a VM-only field may be). Extra keys of ours are allowed.
 */
function shapeDiff(ref: unknown, ours: unknown, path = '$'): string[] {
  if (ref === null || ours === null) return [];
  if (kind(ref) !== kind(ours)) return [`${path}: reference ${kind(ref)}, gateway ${kind(ours)}`];
  if (Array.isArray(ref)) {
    const o = ours as unknown[];
    const out: string[] = [];
    for (let i = 0; i < Math.min(ref.length, o.length); i++) out.push(...shapeDiff(ref[i], o[i], `${path}[${i}]`));
    return out;
  }
  if (typeof ref === 'object') {
    const o = ours as Json;
    const out: string[] = [];
    for (const [k, v] of Object.entries(ref as Json)) {
      if (!(k in o)) out.push(`${path}.${k}: missing`);
      else out.push(...shapeDiff(v, o[k], `${path}.${k}`));
    }
    return out;
  }
  return [];
}

/** `ours` cut down to the reference's keys (arrays as far as the reference's go). */
function project(ref: unknown, ours: unknown): unknown {
  if (Array.isArray(ref) && Array.isArray(ours)) return ref.map((r, i) => project(r, ours[i]));
  if (ref !== null && typeof ref === 'object' && ours !== null && typeof ours === 'object') {
    return Object.fromEntries(Object.keys(ref).filter((k) => k !== 'desc_head').map((k) => [k, project((ref as Json)[k], (ours as Json)[k])]));
  }
  return ours;
}

function withoutDescHead(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutDescHead);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).filter(([k]) => k !== 'desc_head').map(([k, x]) => [k, withoutDescHead(x)]));
  return v;
}

/** Commands the gateway answers `ENOTSUP:no_vm` (it runs no code). */
const NO_VM = new Set(['cmd.call', 'clock', 'sched', 'stdio_fanout', 'peek', 'dumpregs', 'step', 'pause', 'resume', 'listen', 'send', 'disasm', 'stack', 'symbols', 'sym', 'memory', 'watch', 'bp', 'trace', 'attach', 'detach']);

test('the HSX shell\'s recorded session replays: every served exchange has the reference\'s reply shape', async (t) => {
  t.timeout(60_000);
  const h = await startHarness({ imagesDir: imagesRoot() });
  t.teardown(() => h.close());
  const { exchanges } = loadTranscript();
  let refSession: string | null = null;
  let session: string | null = null;
  let same = 0;
  const noVm: string[] = [];
  const differs: string[] = [];
  for (const ex of exchanges) {
    const text = JSON.stringify(ex.request);
    const req = JSON.parse(refSession && session ? text.split(refSession).join(session) : text) as Json;
    const refReply = ex.replies.find((r) => 'status' in r) as Json;
    // one connection per request, as the shell client does (events.subscribe makes its own a stream)
    const c = await LineClient.connect(h.port);
    const reply = await c.request(req);
    c.destroy();
    const cmd = String(req['cmd']);
    if (cmd === 'session.open') {
      refSession = (refReply['session'] as Json)['id'] as string;
      session = (reply['session'] as Json)['id'] as string;
    }
    if (NO_VM.has(cmd)) {
      t.is(reply['error'], 'ENOTSUP:no_vm', `${ex.label}: ${cmd}`);
      const detail = reply['detail'] as Json;
      t.is(detail['command'], cmd);
      t.regex(String(detail['message']), new RegExp(`^${cmd.replace('.', '\\.')}: .*no VM`));
      noVm.push(cmd);
      continue;
    }
    if (cmd === 'reload') {
      // the reference kills pid 1 and then fails to register its values again (its registry keeps
      // the killed task's entries); the gateway reloads: a new pid, the same app
      t.is(refReply['status'], 'error');
      t.is(reply['status'], 'ok', JSON.stringify(reply));
      const r = reply['reload'] as Json;
      t.is(r['old_pid'], 1);
      t.is((r['image'] as Json)['app_name'], 'sensor_app');
      differs.push(`${ex.label}: reference error "${String(refReply['error'])}", gateway ok`);
      continue;
    }
    t.is(reply['status'], refReply['status'], `${ex.label}: ${JSON.stringify(reply).slice(0, 300)}`);
    t.deepEqual(shapeDiff(refReply, reply), [], `${ex.label} (${cmd})`);
    // the registries' contents are the reference's too, value for value (but for VM string-table offsets)
    if (['val.list', 'val.get', 'val.set', 'cmd.list'].includes(cmd)) t.deepEqual(project(refReply, reply), withoutDescHead(refReply), ex.label);
    same++;
  }
  t.log(`${same} exchanges with the reference's shape, ${noVm.length} ENOTSUP:no_vm (${[...new Set(noVm)].join(', ')}), ${differs.length} documented difference(s): ${differs.join('; ')}`);
  t.true(same >= 24);
});

const TOKENS: Record<Role, string> = { viewer: 'view-token-1', operator: 'oper-token-2', admin: 'admin-token-3' };
const tokenEntries = ROLES.map((role) => ({ name: `${role}-bot`, role, sha256: sha256Hex(TOKENS[role]) }));

async function withTask(h: Harness): Promise<number> {
  const c = await h.client();
  const r = await c.request({ cmd: 'load', path: 'images/t04b_value_cmd_help.hxe', token: TOKENS.admin });
  c.destroy();
  return (r['image'] as Json)['pid'] as number;
}

const NEW_COMMANDS = ['val.list', 'val.get', 'val.set', 'cmd.list', 'cmd.call', 'mailbox_snapshot', 'list', 'session.list', 'session.current', 'kill', 'reload', 'dmesg',
  ...NO_VM].filter((c, i, a) => a.indexOf(c) === i);

test('every new command × every role: refused below its role, answered (never unknown_cmd) from it', async (t) => {
  t.timeout(60_000);
  const h = await startHarness({ imagesDir: imagesRoot(), tokens: tokenEntries, limits: { max_sessions_per_connection: 1000, max_sessions: 1000 } });
  t.teardown(() => h.close());
  const roles = commandRoles();
  const admin = await h.client();
  let checked = 0;
  for (const cmd of [...NEW_COMMANDS, 'regs', 'poke', 'stdio']) {
    const need = roles[cmd] as Role | undefined;
    t.truthy(need, `${cmd} has a role`);
    for (const who of [null, ...ROLES] as (Role | null)[]) {
      const pid = await withTask(h); // kill/reload need something to act on
      const opened = await admin.request({ cmd: 'session.open', token: TOKENS.admin });
      const sid = (opened['session'] as Json)['id'] as string;
      const req: Json = { cmd, pid, oid: 258, value: 20, session: sid };
      if (who) req['token'] = TOKENS[who];
      const c = await h.client();
      const reply = await c.request(req);
      c.destroy();
      const error = typeof reply['error'] === 'string' ? reply['error'] : '';
      t.false(error.startsWith('unknown_cmd'), `${cmd}`);
      if (!roleAllows(who, need as Role)) t.is(error, `EPERM:${need}_required`, `${cmd} as ${who ?? 'nobody'}`);
      else t.false(error.startsWith('EPERM'), `${cmd} as ${who}: ${error}`);
      for (const row of ((await admin.request({ cmd: 'ps', token: TOKENS.admin }))['tasks'] as Json)['tasks'] as Json[]) {
        await admin.request({ cmd: 'kill', pid: row['pid'], token: TOKENS.admin });
      }
      checked++;
    }
  }
  t.log(`${checked} command × role pairs`);
  // reads are a viewer's, changes an operator's
  for (const c of ['val.list', 'val.get', 'cmd.list', 'mailbox_snapshot', 'list', 'session.list', 'session.current', 'dmesg', 'regs', 'disasm', 'peek']) t.is(roles[c], 'viewer', c);
  for (const c of ['val.set', 'cmd.call', 'kill', 'reload', 'step', 'pause', 'resume', 'poke', 'send']) t.is(roles[c], 'operator', c);
});

test('val.set: read-only, out of range and too low an auth level are refused with the reference\'s status; bad input names the field', async (t) => {
  const h = await startHarness({ imagesDir: imagesRoot(), tokens: tokenEntries });
  t.teardown(() => h.close());
  await withTask(h);
  const c = await h.client();
  const op = (req: Json) => c.request({ ...req, token: TOKENS.operator });

  // door_open (1,3) is RO|BOOL: the reference's HSX_VAL_STATUS_EPERM (2)
  const ro = await op({ cmd: 'val.set', oid: 259, value: 0 });
  t.is(ro['status'], 'ok');
  t.like(ro['value'] as Json, { status: 2, error: 'EPERM:read_only', field: 'oid' });
  // temperature (1,2) is declared -40..125: HSX_VAL_STATUS_EINVAL (4)
  const range = await op({ cmd: 'val.set', oid: '1:2', value: 200 });
  t.like(range['value'] as Json, { status: 4, error: 'EINVAL:out_of_range', field: 'value', min: -40, max: 125 });
  // speed (2,1) needs ADMIN (2); an operator is USER (1)
  const auth = await op({ cmd: 'val.set', oid: 513, value: 10 });
  t.like(auth['value'] as Json, { status: 2, error: 'EPERM:auth_level', required: 2, have: 1 });
  const asAdmin = await c.request({ cmd: 'val.set', oid: 513, value: 10, token: TOKENS.admin });
  t.like(asAdmin['value'] as Json, { status: 0, value: 10, f16: 0x4900, pid: 1 });
  // nothing refused was changed
  const list = await op({ cmd: 'val.list' });
  const values = list['values'] as Json[];
  t.deepEqual(values.map((v) => [v['oid'], v['last_value']]), [[258, 12.5], [259, 1], [513, 10]]);

  // an oid that does not exist: the reference's ENOENT (1), typed and naming the field
  const missing = await op({ cmd: 'val.set', oid: 999, value: 1 });
  t.like(missing['value'] as Json, { status: 1, error: 'ENOENT:unknown_oid', field: 'oid' });
  const missingGet = await op({ cmd: 'val.get', oid: '0x3e7' });
  t.like(missingGet['value'] as Json, { status: 1, error: 'ENOENT:unknown_oid', field: 'oid' });
  // malformed input is an error naming the field
  const bad = async (req: Json, error: string, field: string, message: RegExp) => {
    const r = await op(req);
    t.is(r['status'], 'error', JSON.stringify(req));
    t.is(r['error'], error);
    t.is((r['detail'] as Json)['field'], field);
    t.regex(String((r['detail'] as Json)['message']), message);
  };
  await bad({ cmd: 'val.set', oid: 258, value: 'warm' }, 'EINVAL:value', 'value', /value must be a number, got "warm"/);
  await bad({ cmd: 'val.set', oid: 258, value: { x: 1 } }, 'EINVAL:value', 'value', /must be a number/);
  await bad({ cmd: 'val.set', oid: 258, value: 'NaN' }, 'EINVAL:value', 'value', /must be a number, got "NaN"/);
  await bad({ cmd: 'val.set', oid: 258, value: 'Infinity' }, 'EINVAL:value', 'value', /Infinity cannot be held by an f16/);
  await bad({ cmd: 'val.set', oid: 258, value: '-inf' }, 'EINVAL:value', 'value', /-Infinity cannot be held by an f16/);
  await bad({ cmd: 'val.set', oid: 258, value: 1e6 }, 'EINVAL:value', 'value', /1000000 is too large for an f16/);
  await bad({ cmd: 'val.set', oid: 'temperature', value: 1 }, 'EINVAL:oid', 'oid', /oid must be an integer 0\.\.65535 or GROUP:ID/);
  await bad({ cmd: 'val.get', oid: '300:1' }, 'EINVAL:oid', 'oid', /GROUP and ID must be 0\.\.255/);
  t.like(await op({ cmd: 'val.set', oid: 258 }), { status: 'error', error: "val.set requires 'value'" });
  t.like(await op({ cmd: 'val.get' }), { status: 'error', error: "val.get requires 'oid'" });
  // each refusal is an audit line with the verdict error, naming the value
  const audits = h.logs.filter((l) => l['component'] === 'audit' && l['cmd'] === 'val.set');
  t.like(audits.find((l) => l['target_oid'] === 259), { verdict: 'error', reason: 'EPERM:read_only', who: 'operator-bot' });
  t.like(audits.find((l) => l['target_oid'] === 513 && l['who'] === 'admin-bot'), { verdict: 'ok' });
  // a numeric string is a number, as the reference's float(value)
  t.like((await op({ cmd: 'val.set', oid: 258, value: '21.5' }))['value'] as Json, { status: 0, value: 21.5, f16: 19808, persisted: true });
  c.destroy();
});

test('cmd.list, mailbox_snapshot, list, kill, reload, dmesg and session.current answer from the registries', async (t) => {
  const h = await startHarness({ imagesDir: imagesRoot() });
  t.teardown(() => h.close());
  const c = await h.client();
  const a = ((await c.request({ cmd: 'load', path: 'images/t04b_value_cmd_help.hxe' }))['image'] as Json)['pid'] as number;
  const b = ((await c.request({ cmd: 'exec', path: 'images/t05_mailbox_json.hxe' }))['image'] as Json)['pid'] as number;
  const cmds = (await c.request({ cmd: 'cmd.list' }))['commands'] as Json[];
  t.deepEqual(cmds.map((x) => [x['oid'], x['name'], x['help'], x['owner_pid']]), [[263, 'reset', 'Soft reset', a], [264, 'calibrate', 'Run calibration', a]]);
  const snap = await c.request({ cmd: 'mailbox_snapshot' });
  const descs = snap['descriptors'] as Json[];
  t.deepEqual(descs.map((d) => [d['namespace'], d['name']]), [[2, 'telemetry'], [0, 'pid:7'], [3, 'metrics'], [1, 'log']]);
  t.deepEqual(descs.map((d) => d['owner_pid']), [b, 7, b, b]);
  const chans = ((await c.request({ cmd: 'list', pid: b }))['channels'] as Json);
  t.is(chans['pid'], b);
  t.is((chans['channels'] as Json[]).length, 3);
  t.like(await c.request({ cmd: 'list' }), { error: "list requires 'pid'" });
  t.like(await c.request({ cmd: 'list', pid: 99 }), { error: 'unknown pid 99' });
  // reload: the same app under a new pid; kill: gone, then the reference's "unknown pid"
  const re = (await c.request({ cmd: 'reload', pid: a }))['reload'] as Json;
  t.like(re, { old_pid: a, program: 'images/t04b_value_cmd_help.hxe', from: 'file' });
  const fresh = re['new_pid'] as number;
  t.not(fresh, a);
  t.like(await c.request({ cmd: 'kill', pid: fresh }), { status: 'ok', task: { pid: fresh, state: 'terminated' } });
  t.like(await c.request({ cmd: 'kill', pid: fresh }), { status: 'error', error: `unknown pid ${fresh}` });
  const rows = ((await c.request({ cmd: 'ps' }))['tasks'] as Json)['tasks'] as Json[];
  t.deepEqual(rows.map((r) => r['pid']), [b]);
  // session.current needs a session; session.list shows it
  t.like(await c.request({ cmd: 'session.current' }), { error: 'session_required' });
  const sid = ((await c.request({ cmd: 'session.open', client: 'probe' }))['session'] as Json)['id'] as string;
  t.like(await c.request({ cmd: 'session.current', session: sid }), { session: { id: sid, client: 'probe', pid_locks: [], warnings: [] } });
  const sessions = (await c.request({ cmd: 'session.list' }))['sessions'] as Json[];
  t.true(sessions.some((s) => s['id'] === sid && typeof s['age_s'] === 'number'));
  // dmesg: the last requests, newest last, with the reference's fields
  const logs = (await c.request({ cmd: 'dmesg', limit: 3 }))['logs'] as Json[];
  t.is(logs.length, 3);
  t.like(logs[2], { level: 'debug', message: 'control request', command: 'session.list', clock_steps: 0 });
  t.true((logs[0]!['seq'] as number) < (logs[2]!['seq'] as number));
  const mine = (await c.request({ cmd: 'dmesg', filter_session: sid }))['logs'] as Json[];
  t.true(mine.length >= 1 && mine.every((l) => l['session'] === sid));
  // cmd.call: one documented error, saying why
  const call = await c.request({ cmd: 'cmd.call', oid: 263 });
  t.like(call, { status: 'error', error: 'ENOTSUP:no_vm', detail: { command: 'cmd.call' } });
  t.regex(String((call['detail'] as Json)['message']), /handler is code in the image/);
  c.destroy();
});

test('a PERSIST value set over the control port survives a power cycle; a CAN node\'s value is read and written by link and node', async (t) => {
  t.timeout(60_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-exec-gw-'));
  const images = imagesRoot();
  const cfg = validateConfig({
    gateway: { id: 'exec', log_level: 'silent' },
    control: { listen: '127.0.0.1:0', images_dir: join(images, 'images') },
    links: { can: [{ interface: 'exec-bus', backend: 'virtual', timing: false, role: 'master' }] },
    devices: [{ name: 'd7', state_dir: join(dir, 'd7'), node_id: 7, flash: { size: 262144 }, fram: { size: 16384 } }],
  });
  if (!cfg.ok) return t.fail(cfg.error.message);
  const started = await Gateway.start(cfg.value, createLogger('silent', { pretty: false }), { controlPort: 0 });
  if (!started.ok) return t.fail(started.error.message);
  const gw = started.value;
  t.teardown(() => gw.stop());
  const port = gw.controlAddress()!.port;
  const ask = async (req: Json) => {
    const c = await LineClient.connect(port);
    const r = await c.request(req);
    c.destroy();
    return r;
  };
  const loaded = await ask({ cmd: 'load', path: 't04b_value_cmd_help.hxe' });
  const pid = (loaded['image'] as Json)['pid'] as number;
  t.like(await ask({ cmd: 'provision.persist', pid, target: 'permanent' }), { status: 'ok' });
  t.like(await ask({ cmd: 'val.set', oid: 258, value: 33.5 }), { status: 'ok', value: { status: 0, value: 33.5, persisted: true }, device: 'd7' });

  await gw.powerCycle('d7');
  const after = await ask({ cmd: 'val.get', oid: 258 });
  t.like(after, { status: 'ok', value: { status: 0, value: 33.5 } }, 'restored from the value journal after the power cycle');

  // the same device as a node on the gateway's CAN master link
  t.like(await ask({ cmd: 'val.get', link: 'exec-bus', node: 7, oid: 258 }), { status: 'ok', value: { status: 0, value: 33.5, pid: null }, link: 'exec-bus', node: 7 });
  t.like(await ask({ cmd: 'val.set', link: 'exec-bus', node: 7, oid: '1:2', value: 40 }), { status: 'ok', value: { status: 0, value: 40 } });
  t.like(await ask({ cmd: 'val.get', oid: 258 }), { value: { value: 40 } }, 'written through CAN, read locally');
  t.like(await ask({ cmd: 'val.set', link: 'exec-bus', node: 7, oid: 259, value: 0 }), { status: 'ok', value: { status: 2, error: 'EPERM:read_only' } });
  t.like(await ask({ cmd: 'val.get', link: 'exec-bus', node: 7, oid: 999 }), { status: 'ok', value: { status: 1, error: 'ENOENT:unknown_oid' } });
  t.like(await ask({ cmd: 'val.list', link: 'exec-bus', node: 7 }), { status: 'error', error: 'ENOTSUP:no_value_list', detail: { field: 'link' } });
  t.like(await ask({ cmd: 'val.get', link: 'nope', node: 7, oid: 258 }), { status: 'error', error: 'ENOENT:no_such_link', detail: { field: 'link', links: ['exec-bus'] } });
  t.like(await ask({ cmd: 'val.get', link: 'exec-bus', node: 99, oid: 258 }), { status: 'error', error: 'EINVAL:node', detail: { field: 'node' } });
});

test('reload re-reads the file; when the new load fails the old image is loaded again and the error says so', async (t) => {
  const root = imagesRoot();
  const h = await startHarness({ imagesDir: root });
  t.teardown(() => h.close());
  const c = await h.client();
  const pid = ((await c.request({ cmd: 'load', path: 'images/t04b_value_cmd_help.hxe' }))['image'] as Json)['pid'] as number;
  writeFileSync(join(root, 'images', 't04b_value_cmd_help.hxe'), Buffer.from('not an image at all'));
  const r = await c.request({ cmd: 'reload', pid });
  t.is(r['status'], 'error');
  t.regex(String(r['error']), /^EBADMSG:/);
  t.like(r['detail'] as Json, { old_pid: pid, restored: true });
  const rows = ((await c.request({ cmd: 'ps' }))['tasks'] as Json)['tasks'] as Json[];
  t.deepEqual(rows.map((x) => x['app_name']), ['sensor_app'], 'the old image runs again (under a new pid)');
  t.like(await c.request({ cmd: 'reload' }), { error: "reload requires 'pid'" });
  t.like(await c.request({ cmd: 'reload', pid: 77 }), { error: 'unknown pid 77' });
  c.destroy();
});
