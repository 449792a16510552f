/**
 * Access control: every command × every role over real TCP, the audit line for refusals, and
 * that a refused request changes nothing. Plus the start-up policy (loopback only without tokens).
 */
import test from 'ava';
import { commandRoles, ControlServer } from '../src/gateway/control/server.js';
import { parseTokenEnv, roleAllows, sha256Hex, TokenStore, isLoopbackHost, ROLES, type Role } from '../src/gateway/control/auth.js';
import { EventBus } from '../src/gateway/events/index.js';
import { FakeClock } from '../src/engine/index.js';
import { fixture, makeEngine, startHarness } from './control-harness.js';

const TOKENS: Record<Role, string> = { viewer: 'view-token-1', operator: 'oper-token-2', admin: 'admin-token-3' };
const tokenEntries = ROLES.map((role) => ({ name: `${role}-bot`, role, sha256: sha256Hex(TOKENS[role]) }));

/** A request for each command with plausible arguments (most fail later for other reasons; that is fine). */
function requestFor(cmd: string, sessionId: string): Record<string, unknown> {
  const base: Record<string, unknown> = { cmd };
  if (cmd.startsWith('events.') || cmd === 'session.keepalive' || cmd === 'session.close') base['session'] = sessionId;
  if (cmd === 'events.ack') base['seq'] = 0;
  if (cmd === 'load' || cmd === 'exec' || cmd === 'provision.load') base['path'] = 't01_minimal.hxe';
  if (cmd === 'provision.write') Object.assign(base, { session_id: 99, seq: 0, data: 'AAAA' });
  if (cmd === 'provision.end' || cmd === 'provision.abort') base['session_id'] = 99;
  if (['provision.status', 'provision.persist', 'provision.activate', 'provision.unload', 'info'].includes(cmd)) base['pid'] = 1;
  if (cmd === 'auth') base['token'] = 'wrong-token';
  return base;
}

test('every command × every role: EPERM:<role>_required exactly when the role is too low', async (t) => {
  t.timeout(60_000);
  // one session per pair, all opened by one connection
  const h = await startHarness({ tokens: tokenEntries, onShutdown: () => {}, limits: { max_sessions_per_connection: 1000, max_sessions: 1000 } });
  t.teardown(() => h.close());
  const roles = commandRoles();
  t.true(Object.keys(roles).length >= 20, 'all commands listed');
  const admin = await h.client();
  let checked = 0;
  for (const [cmd, need] of Object.entries(roles)) {
    for (const who of [null, ...ROLES] as (Role | null)[]) {
      // a fresh session and connection per request: subscribe turns a connection into a stream
      const opened = await admin.request({ cmd: 'session.open', token: TOKENS.admin });
      const sid = (opened['session'] as Record<string, unknown>)['id'] as string;
      const c = await h.client();
      const req = requestFor(cmd, sid);
      if (who) req['token'] = TOKENS[who];
      const reply = await c.request(req);
      c.destroy();
      const error = typeof reply['error'] === 'string' ? reply['error'] : '';
      if (cmd === 'auth') {
        if (who) t.is((reply['auth'] as Record<string, unknown>)['role'], who, 'auth with a valid token');
        else t.is(error, 'EPERM:invalid_token', 'auth with a wrong token');
      } else if (need !== null && !roleAllows(who, need as Role)) {
        t.is(error, `EPERM:${need}_required`, `${cmd} as ${who ?? 'nobody'}`);
      } else {
        t.false(error.startsWith('EPERM'), `${cmd} as ${who ?? 'nobody'} was refused: ${error}`);
      }
      checked++;
    }
  }
  t.is(checked, Object.keys(roles).length * 4);
  t.log(`checked ${checked} command × role pairs`);
});

test('roles are as the issue says', (t) => {
  const r = commandRoles();
  for (const c of ['ping', 'info', 'ps', 'provision.status', 'events.subscribe']) t.is(r[c], 'viewer', c);
  for (const c of ['load', 'exec', 'provision.load', 'provision.begin', 'provision.write', 'provision.end', 'provision.abort', 'provision.persist', 'provision.activate']) t.is(r[c], 'operator', c);
  for (const c of ['provision.rollback', 'provision.unload', 'shutdown']) t.is(r[c], 'admin', c);
});

test('a refused request changes nothing and leaves an audit line (who, what, when, verdict)', async (t) => {
  const h = await startHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  const c = await h.client();
  const before = JSON.stringify(h.engine.ps());
  const seqBefore = h.bus.lastSeq;
  const r1 = await c.request({ cmd: 'provision.load', token: TOKENS.viewer, data: Buffer.from(fixture('t01_minimal.hxe')).toString('base64') });
  t.deepEqual(r1, { version: 1, status: 'error', error: 'EPERM:operator_required' });
  const r2 = await c.request({ cmd: 'provision.begin', token: TOKENS.viewer, total_bytes: 100 });
  t.is(r2['error'], 'EPERM:operator_required');
  const loaded = await c.request({ cmd: 'provision.load', token: TOKENS.operator, path: 't01_minimal.hxe' });
  t.is(loaded['status'], 'ok');
  const pid = (loaded['task'] as Record<string, unknown>)['pid'];
  const r3 = await c.request({ cmd: 'provision.unload', token: TOKENS.operator, pid });
  t.is(r3['error'], 'EPERM:admin_required');
  t.is(h.engine.ps().length, 1, 'still loaded');
  t.is(h.engine.sessions().length, 0, 'no session was begun');
  t.not(JSON.stringify(h.engine.ps()), before);
  const audits = h.logs.filter((l) => l['audit'] === true);
  const denied = audits.filter((l) => l['verdict'] === 'denied');
  t.deepEqual(denied.map((l) => [l['cmd'], l['who'], l['role'], l['reason']]), [
    ['provision.load', 'viewer-bot', 'viewer', 'EPERM:operator_required'],
    ['provision.begin', 'viewer-bot', 'viewer', 'EPERM:operator_required'],
    ['provision.unload', 'operator-bot', 'operator', 'EPERM:admin_required'],
  ]);
  for (const d of denied) {
    t.regex(d['when'] as string, /^\d{4}-\d\d-\d\dT/);
    t.regex(d['peer'] as string, /^127\.0\.0\.1:\d+$/);
  }
  t.deepEqual(denied[2]!['target_pid'], pid, 'the target\'s fields are flat keys');
  // Each audit line is one flat object with every key once (a parsed object hides repeats: count them).
  for (const raw of h.rawLogs.filter((l) => l.includes('"audit":true'))) {
    const keys = [...raw.matchAll(/"([A-Za-z_]+)":/g)].map((m) => m[1]!);
    t.is(new Set(keys).size, keys.length, `a key repeats in ${raw}`);
    t.false(/"\{/.test(raw), `no JSON nested in a string: ${raw}`);
  }
  const okLoad = audits.find((l) => l['cmd'] === 'provision.load' && l['verdict'] === 'ok');
  t.truthy(okLoad, 'allowed changes are audited too');
  t.true(h.bus.lastSeq > seqBefore, 'only the allowed load produced events');
  // the token itself never reaches the log
  t.false(JSON.stringify(h.logs).includes(TOKENS.viewer));
});

test('auth command binds an identity to the connection; an invalid token is refused', async (t) => {
  const h = await startHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  const c = await h.client();
  t.is((await c.request({ cmd: 'ping' }))['error'], 'EPERM:viewer_required');
  t.is((await c.request({ cmd: 'auth', token: 'nope-nope' }))['error'], 'EPERM:invalid_token');
  t.deepEqual(await c.request({ cmd: 'auth', token: TOKENS.operator }), { version: 1, status: 'ok', auth: { name: 'operator-bot', role: 'operator' } });
  t.is((await c.request({ cmd: 'ping' }))['reply'], 'pong');
  t.is((await c.request({ cmd: 'provision.rollback' }))['error'], 'EPERM:admin_required');
  t.is((await c.request({ cmd: 'ping', token: 'bad-bad-bad' }))['error'], 'EPERM:invalid_token', 'a bad per-request token is not ignored');
});

test('tokens from the environment variable; hashed at once; constant-time store', (t) => {
  const parsed = parseTokenEnv(`ci:operator:secret-123,ops:admin:sha256:${sha256Hex('other-456')}`);
  t.true(parsed.ok);
  if (!parsed.ok) return;
  t.deepEqual(parsed.value.map((e) => [e.name, e.role]), [['ci', 'operator'], ['ops', 'admin']]);
  t.is(parsed.value[0]!.sha256, sha256Hex('secret-123'));
  t.false(JSON.stringify(parsed.value).includes('secret-123'));
  const store = new TokenStore(parsed.value);
  t.deepEqual(store.verify('secret-123'), { name: 'ci', role: 'operator' });
  t.deepEqual(store.verify('other-456'), { name: 'ops', role: 'admin' });
  t.is(store.verify('secret-12'), null);
  t.is(store.verify(''), null);
  const bad = parseTokenEnv('ci:root:secret-123');
  t.false(bad.ok);
  if (!bad.ok) t.regex(bad.error.message, /HSX_GATEWAY_TOKENS entry 1: role must be/);
  t.false(parseTokenEnv('ci:viewer:short').ok);
});

test('HSX_GATEWAY_TOKENS enables tokens for a server', async (t) => {
  const h = await startHarness({ env: { HSX_GATEWAY_TOKENS: 'ci:viewer:env-token-1' } });
  t.teardown(() => h.close());
  const c = await h.client();
  t.is((await c.request({ cmd: 'ping' }))['error'], 'EPERM:viewer_required');
  t.is((await c.request({ cmd: 'ping', token: 'env-token-1' }))['reply'], 'pong');
  t.true(h.server.notes.some((n) => n.includes('1 access token')));
});

test('without tokens: loopback only, said at start-up; a non-loopback bind is refused', async (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const engine = makeEngine(clock, bus);
  const logs: string[] = [];
  const { default: pino } = await import('pino');
  const logger = pino({}, { write: (s: string) => void logs.push(s) });
  const wide = ControlServer.create({ engine, bus, host: '0.0.0.0', port: 0, env: {}, logger });
  t.true(wide.ok);
  if (!wide.ok) return;
  const r = await wide.value.listen();
  t.false(r.ok);
  if (!r.ok) {
    t.is(r.error.code, 'EINSECURE');
    t.regex(r.error.message, /no access tokens configured/);
  }
  const local = ControlServer.create({ engine, bus, host: '127.0.0.1', port: 0, env: {}, logger });
  if (!local.ok) return t.fail();
  const l = await local.value.listen();
  t.true(l.ok);
  t.regex(local.value.notes[0] ?? '', /loopback only/);
  t.true(logs.some((s) => s.includes('loopback only')));
  await local.value.close();
  // with tokens, a wide bind is allowed
  const tokened = ControlServer.create({ engine, bus, host: '0.0.0.0', port: 0, env: {}, logger, tokens: tokenEntries });
  if (!tokened.ok) return t.fail();
  const tl = await tokened.value.listen();
  t.true(tl.ok);
  await tokened.value.close();
  t.true(isLoopbackHost('127.0.0.1') && isLoopbackHost('::1') && isLoopbackHost('localhost'));
  t.false(isLoopbackHost('0.0.0.0') || isLoopbackHost('10.0.0.1'));
});

test('a bad token list is a start-up error, not a silently open server', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const r = ControlServer.create({ engine: makeEngine(clock, bus), bus, env: { HSX_GATEWAY_TOKENS: 'x:superuser:abcdefgh' } });
  t.false(r.ok);
  if (!r.ok) t.is(r.error.code, 'ETOKENS');
});

test('the gateway config\'s [control] table maps onto the server (hashed tokens, listen, line limit)', async (t) => {
  const { validateConfig } = await import('../src/gateway/config.js');
  const { controlOptionsFromConfig } = await import('../src/gateway/control/server.js');
  const cfg = validateConfig({
    gateway: { id: 'rig-1' },
    control: { listen: '127.0.0.1:0', max_line_bytes: 4096, tokens: [{ name: 'ci', role: 'operator', sha256: sha256Hex('from-config-1') }] },
  });
  if (!cfg.ok) return t.fail(cfg.error.message);
  const opts = controlOptionsFromConfig(cfg.value.control);
  t.deepEqual({ host: opts.host, port: opts.port, maxLineBytes: opts.maxLineBytes }, { host: '127.0.0.1', port: 0, maxLineBytes: 4096 });
  const h = await startHarness({ ...opts });
  t.teardown(() => h.close());
  const c = await h.client();
  t.is((await c.request({ cmd: 'ping', token: 'from-config-1' }))['reply'], 'pong');
  c.sendRaw(`${'x'.repeat(5000)}\n`);
  t.is((await c.nextJson())['error'], 'line_too_long:4096');
});
