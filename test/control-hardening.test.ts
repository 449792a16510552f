/**
 * Security hardening of the control server (issue 23), over real sockets: no request kills the
 * process (deep nesting, odd types, huge strings, a handler or the log throwing), the one role
 * table decides every command × role pair, `session.open` with `pid_lock` needs an operator, and
 * a pid lock holds whatever JSON type the pid comes in.
 */
import test from 'ava';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { ROLES, sha256Hex, roleAllows, type Role } from '../src/gateway/control/auth.js';
import { COMMAND_ROLES, MAX_REQUEST_DEPTH, MAX_TEXT_BYTES, nestsDeeperThan } from '../src/gateway/control/roles.js';
import { commandRoles } from '../src/gateway/control/server.js';
import { fixture, LineClient, startHarness } from './control-harness.js';
import { startGateway } from './support/serve-process.js';

type Json = Record<string, unknown>;

const TOKENS: Record<Role, string> = { viewer: 'view-token-1', operator: 'oper-token-2', admin: 'admin-token-3' };
const tokenEntries = ROLES.map((role) => ({ name: `${role}-bot`, role, sha256: sha256Hex(TOKENS[role]) }));
/** Every caller: nobody (no token) and each role. */
const CALLERS: (Role | null)[] = [null, ...ROLES];
const IMAGE_B64 = Buffer.from(fixture('t01_minimal.hxe')).toString('base64');

/** `"[[[[…0…]]]]"` n deep, built as text: JSON.stringify itself would overflow on the way out. */
const deepArray = (n: number): string => `${'['.repeat(n)}0${']'.repeat(n)}`;
const deepObject = (n: number): string => `${'{"a":'.repeat(n)}0${'}'.repeat(n)}`;

function expectWellFormed(t: { true(v: boolean, m?: string): void }, reply: Json, what: string): void {
  t.true(reply['version'] === 1 && (reply['status'] === 'ok' || (reply['status'] === 'error' && typeof reply['error'] === 'string')), `${what}: ${JSON.stringify(reply).slice(0, 300)}`);
}

// ---- the probes from the issue, against a real `serve` process ------------------------------------

test('serve: 5,000-deep cmd and version lines from an unauthenticated client are refused; the process lives and answers', async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-hardening-'));
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "hardening"', 'log_level = "error"',
    '[control]', 'listen = "127.0.0.1:0"',
    '[[control.tokens]]', 'name = "ops"', 'role = "admin"', `sha256 = "${sha256Hex(TOKENS.admin)}"`,
    '[mqtt]', 'embedded = true', 'embedded_port = 0',
    '[[devices]]', 'name = "node1"', `state_dir = "${join(dir, 'node1')}"`, 'flash = { size = 262144 }', 'fram = { size = 16384 }',
  ].join('\n'));
  const gw = await startGateway(config);
  let exited: string | null = null;
  gw.child.once('exit', (code, signal) => (exited = `code ${code} signal ${signal}`));
  t.teardown(() => void gw.child.kill('SIGKILL'));
  const [host, port] = [gw.control.slice(0, gw.control.lastIndexOf(':')), Number(gw.control.slice(gw.control.lastIndexOf(':') + 1))];
  t.is(host, '127.0.0.1');

  const probes = [
    `{"cmd":${deepArray(5000)}}`,
    `{"version":${deepArray(5000)},"cmd":"ping"}`,
    `{"cmd":"ping","version":${deepObject(5000)}}`,
    `{"cmd":"provision.unload","pid":${deepArray(5000)}}`,
  ];
  for (const line of probes) {
    t.true(line.length >= 10_000, 'a ~10 KB line');
    // before it authenticates, a client's lines are at most pre_auth_line_bytes: refused by size, then closed
    const u = await LineClient.connect(port);
    u.sendRaw(`${line}\n`);
    t.deepEqual(await u.nextJson(20_000), { version: 1, status: 'error', error: 'ELIMIT:pre_auth_line_bytes', detail: { limit: 4096 } });
    t.true(await u.waitEnd(20_000), 'closed after the error line');
    u.destroy();
    // once it has authenticated, the deep line reaches the parser (role: none needed for the depth check)
    const c = await LineClient.connect(port);
    t.is((await c.request({ cmd: 'auth', token: TOKENS.admin }, 20_000))['status'], 'ok');
    c.sendRaw(`${line}\n`);
    const reply = await c.nextJson(20_000);
    t.deepEqual(reply, { version: 1, status: 'error', error: 'EINVAL:request_too_deep', detail: { limit: MAX_REQUEST_DEPTH } }, line.slice(0, 30));
    // the same connection still works
    t.deepEqual(await c.request({ cmd: 'ping' }, 20_000), { version: 1, status: 'ok', reply: 'pong' });
    c.destroy();
    // and a new one, with a token
    const d = await LineClient.connect(port);
    t.deepEqual(await d.request({ cmd: 'ping', token: TOKENS.admin }, 20_000), { version: 1, status: 'ok', reply: 'pong' });
    d.destroy();
  }
  t.is(exited, null, 'the gateway did not exit');
  t.is(gw.child.exitCode, null);
  t.is(gw.child.signalCode, null);
});

// ---- depth, size and the error boundary, in-process ------------------------------------------------

test('depth: 32 levels pass, 33 are refused naming the limit, in any field; the check itself does not recurse', async (t) => {
  const h = await startHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  const c = await h.client();
  // request object = level 1, so a field may hold 31 more
  c.sendRaw(`{"cmd":"ping","token":"${TOKENS.viewer}","x":${deepArray(MAX_REQUEST_DEPTH - 1)}}\n`);
  t.deepEqual(await c.nextJson(), { version: 1, status: 'ok', reply: 'pong' });
  for (const field of ['x', 'cmd', 'version', 'pid', 'token', 'session', 'capabilities', 'filters', 'device']) {
    c.sendRaw(`{"cmd":"ping","token":"${TOKENS.viewer}","${field}":${deepArray(MAX_REQUEST_DEPTH)}}\n`);
    t.deepEqual(await c.nextJson(), { version: 1, status: 'error', error: 'EINVAL:request_too_deep', detail: { limit: 32 } }, field);
  }
  c.sendRaw(`{"cmd":"session.open","token":"${TOKENS.viewer}","capabilities":${deepObject(100_000)}}\n`);
  t.is((await c.nextJson())['error'], 'EINVAL:request_too_deep');
  // the walk is iterative: a value far deeper than any stack
  let v: unknown = 0;
  for (let i = 0; i < 200_000; i++) v = [v];
  t.true(nestsDeeperThan(v, 32));
  t.false(nestsDeeperThan({ a: [[{ b: 1 }]] }, 4));
  t.true(nestsDeeperThan({ a: [[{ b: [] }]] }, 4));
});

test('free text is bounded: client, source, reason, device; odd types are refused by name', async (t) => {
  const h = await startHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  const c = await h.client();
  const op = (req: Json) => c.request({ token: TOKENS.admin, ...req });
  const ok = await op({ cmd: 'session.open', client: 'x'.repeat(MAX_TEXT_BYTES) });
  t.is(ok['status'], 'ok');
  const long = await op({ cmd: 'session.open', client: 'x'.repeat(MAX_TEXT_BYTES + 1) });
  t.deepEqual(long, { version: 1, status: 'error', error: 'EINVAL:client_too_long', detail: { field: 'client', limit: 256 } });
  t.is((await op({ cmd: 'session.open', client: 'é'.repeat(129) }))['error'], 'EINVAL:client_too_long', '258 bytes in 129 characters');
  t.is((await op({ cmd: 'session.open', client: 'x'.repeat(1_000_000) }))['error'], 'EINVAL:client_too_long');
  t.is((await op({ cmd: 'session.open', client: { toString: 1 } }))['error'], 'session.open client must be a string');
  t.is((await op({ cmd: 'session.open', client: 7 }))['status'], 'ok', 'a scalar is taken as the reference does');
  t.is((await op({ cmd: 'provision.begin', source: 's'.repeat(300) }))['error'], 'EINVAL:source_too_long');
  t.is((await op({ cmd: 'provision.load', data: IMAGE_B64, source: ['a'] }))['error'], 'provision.load source must be a string');
  const begun = await op({ cmd: 'provision.begin', source: 'ci:ok' });
  t.is(begun['status'], 'ok');
  t.is((await op({ cmd: 'provision.abort', session_id: begun['session_id'], reason: 'r'.repeat(257) }))['error'], 'EINVAL:reason_too_long');
  t.is((await op({ cmd: 'provision.rollback', reason: 'r'.repeat(257) }))['error'], 'EINVAL:reason_too_long');
  t.is((await op({ cmd: 'ps', device: 'd'.repeat(10_000) }))['error'], 'EINVAL:device_too_long');
  t.is((await op({ cmd: 'ps', device: { toString: 1 } }))['error'], 'ps device must be a string');
  t.is((await op({ cmd: 'session.open', capabilities: { features: [{ toString: 1 }, 'x'.repeat(5000)] } }))['status'], 'ok');
  t.is((await op({ cmd: 'session.open', pid_lock: Array.from({ length: 257 }, (_, i) => i + 1000) }))['error'], 'EINVAL:too_many_pid_locks');
  t.is((await op({ cmd: 'events.subscribe', session: ok['session'] && (ok['session'] as Json)['id'], filters: { categories: [{ toString: 1 }] } }))['error'],
    'filters.categories must contain strings');
  // echoed names are clipped
  const unk = await op({ cmd: 'z'.repeat(100_000) });
  t.true((unk['error'] as string).length < 100, 'unknown_cmd echo is clipped');
  const ver = await op({ cmd: 'ping', version: 'v'.repeat(100_000) });
  t.true((ver['error'] as string).startsWith('unsupported_version:') && (ver['error'] as string).length < 100);
  t.is((await op({ cmd: ['ping'] }))['error'], 'unknown_cmd:["ping"]', 'a list is not a command name');
  t.is((await op({ cmd: 'ping' }))['reply'], 'pong');
});

test('error boundary: a throwing handler, an unserialisable reply, a throwing audit log are internal_error; nothing else breaks', async (t) => {
  const lines: Json[] = [];
  let auditThrows = false;
  const logger = pino({ level: 'debug' }, {
    write: (s: string) => {
      const line = JSON.parse(s) as Json;
      lines.push(line);
      if (auditThrows && line['audit'] === true) throw new Error('audit sink is down');
    },
  });
  const h = await startHarness({ tokens: tokenEntries, logger, info: { big: 10n } });
  t.teardown(() => h.close());
  const c = await h.client();
  const other = await h.client();
  const admin = (req: Json) => c.request({ token: TOKENS.admin, ...req });
  const isInternal = (r: Json) => r['status'] === 'error' && r['error'] === 'internal_error' && typeof (r['detail'] as Json)?.['incident'] === 'string';
  const logged = (r: Json) => lines.find((l) => l['incident'] === (r['detail'] as Json)['incident'] && l['level'] === 50);

  // 1. the reply cannot be serialised (a BigInt in `info`)
  const info = await admin({ cmd: 'info' });
  t.true(isInternal(info), JSON.stringify(info));
  t.like(logged(info), { stage: 'reply', cmd: 'info', msg: 'control: internal error answering a request' });

  // 2. a handler throws something that is not a request error
  const engine = h.engine as unknown as Record<string, unknown>;
  const ps = engine['ps'] as () => unknown;
  engine['ps'] = () => {
    throw new RangeError('Maximum call stack size exceeded');
  };
  const r2 = await admin({ cmd: 'ps' });
  t.true(isInternal(r2));
  t.like(logged(r2), { stage: 'dispatch', cmd: 'ps', err: { type: 'RangeError' } });
  engine['ps'] = ps;

  // 3. a changing command throws: internal_error, and still an audit line
  engine['persist'] = () => {
    throw new TypeError('boom');
  };
  const r3 = await admin({ cmd: 'provision.persist', pid: 1 });
  t.true(isInternal(r3));
  t.truthy(lines.find((l) => l['audit'] === true && l['cmd'] === 'provision.persist' && l['verdict'] === 'error' && l['reason'] === 'internal_error'));

  // 4. the audit log throws
  auditThrows = true;
  const r4 = await admin({ cmd: 'provision.begin' });
  t.true(isInternal(r4), JSON.stringify(r4));
  auditThrows = false;

  // the connection and the others carry on; nothing leaked internals to the client
  t.false(JSON.stringify([info, r2, r3, r4]).includes('boom'));
  t.deepEqual(await admin({ cmd: 'ping' }), { version: 1, status: 'ok', reply: 'pong' });
  t.deepEqual(await other.request({ cmd: 'ping', token: TOKENS.viewer }), { version: 1, status: 'ok', reply: 'pong' });
});

// ---- random requests under every role ---------------------------------------------------------------

/** A value the client sends as raw JSON text (too deep for JSON.stringify on our side). */
class Raw {
  constructor(readonly text: string) {}
}

function encode(req: unknown): string {
  const raws: string[] = [];
  const text = JSON.stringify(req, (_k, v: unknown) => {
    if (v instanceof Raw) {
      raws.push(v.text);
      return `\u0000RAW${raws.length - 1}\u0000`;
    }
    return v;
  });
  return (text ?? 'null').replace(/"\\u0000RAW(\d+)\\u0000"/g, (_m, i: string) => raws[Number(i)] as string);
}

const FIELDS = ['cmd', 'version', 'device', 'pid', 'session', 'session_id', 'seq', 'data', 'path', 'source', 'reason', 'client',
  'capabilities', 'pid_lock', 'heartbeat_s', 'filters', 'ack_window', 'target', 'replace', 'total_bytes', 'crc32', 'token', '__proto__', 'constructor'];
const CMD_NAMES = [...COMMAND_ROLES.keys(), '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'PING', ''];

const odd: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.jsonValue({ maxDepth: 4 }) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 1, max: 3000 }), fc.boolean()).map(([n, arr]) => new Raw(arr ? deepArray(n) : deepObject(n))) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 200_000 }).map((n) => 'x'.repeat(n)) },
  { weight: 1, arbitrary: fc.constantFrom<unknown>(1, '1', '0x1', ' 1', -1, 1.5, 1e300, '99999999999999999999', null, true, [], {}, [1, 2], { toString: 1 }, { valueOf: {} }) },
  { weight: 1, arbitrary: fc.array(fc.integer({ min: -5, max: 100_000 }), { maxLength: 300 }) },
);

const requestArb = fc.record({
  caller: fc.constantFrom(...CALLERS),
  cmd: fc.oneof({ weight: 4, arbitrary: fc.constantFrom<unknown>(...CMD_NAMES) }, { weight: 1, arbitrary: odd }),
  fields: fc.dictionary(fc.constantFrom(...FIELDS), odd, { maxKeys: 5 }),
  /** Now and then the whole line is some other value (a list, a number, a deep nest). */
  asTopLevel: fc.oneof({ weight: 9, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: odd.map((v) => ({ v })) }),
});

test('property: random requests under every role never kill the server; every reply is well-formed', async (t) => {
  t.timeout(90_000);
  const h = await startHarness({ tokens: tokenEntries, onShutdown: () => {} });
  t.teardown(() => h.close());
  const byStatus: Record<string, number> = {};
  await fc.assert(
    fc.asyncProperty(requestArb, async ({ caller, cmd, fields, asTopLevel }) => {
      const req: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(fields)) Object.defineProperty(req, k, { value: v, enumerable: true, writable: true, configurable: true });
      req['cmd'] = cmd;
      if (caller) req['token'] = TOKENS[caller];
      const line = asTopLevel !== undefined ? encode(asTopLevel.v) : encode(req);
      const c = await LineClient.connect(h.port);
      try {
        c.sendRaw(`${line}\n`);
        const text = await c.next(20_000);
        if (text === null) throw new Error(`no reply to ${line.slice(0, 200)}`);
        const reply = JSON.parse(text) as Json;
        if (!(reply['version'] === 1 && (reply['status'] === 'ok' || (reply['status'] === 'error' && typeof reply['error'] === 'string')))) {
          throw new Error(`malformed reply ${text.slice(0, 300)} to ${line.slice(0, 200)}`);
        }
        if (reply['error'] === 'internal_error') throw new Error(`internal_error for ${line.slice(0, 300)}`);
        const key = reply['status'] === 'ok' ? 'ok' : String(reply['error']).split(':')[0] as string;
        byStatus[key] = (byStatus[key] ?? 0) + 1;
      } finally {
        c.destroy();
      }
    }),
    { numRuns: 300 },
  );
  t.log(JSON.stringify(byStatus));
  const c = await h.client();
  t.deepEqual(await c.request({ cmd: 'ping', token: TOKENS.viewer }), { version: 1, status: 'ok', reply: 'pong' });
  t.false(h.logs.some((l) => l['msg'] === 'control: internal error answering a request'), 'no internal error was logged');
});

// ---- the role table ---------------------------------------------------------------------------------

/** The command → role table in docs/security.md. */
function documentedRoles(): Map<string, string> {
  const text = readFileSync(new URL('../docs/security.md', import.meta.url), 'utf8');
  const out = new Map<string, string>();
  // a row may name several commands: | `a`, `b` | role |
  // the table that starts at `auth` and ends at the first line that is not a row
  const start = text.indexOf('| `auth` | none');
  const end = text.indexOf('\n\n', start);
  const table = text.slice(start, end === -1 ? undefined : end);
  for (const m of table.matchAll(/^\| (`[a-z._]+`(?:, `[a-z._]+`)*) \| (none|viewer|operator|admin)\b/gm)) {
    for (const c of (m[1] as string).matchAll(/`([a-z._]+)`/g)) out.set(c[1] as string, m[2] as string);
  }
  return out;
}

/** A request for each command with plausible arguments (most fail later for other reasons; that is fine). */
function requestFor(cmd: string, sessionId: string): Json {
  const base: Json = { cmd };
  if (cmd.startsWith('events.') || cmd === 'session.keepalive' || cmd === 'session.close') base['session'] = sessionId;
  if (cmd === 'events.ack') base['seq'] = 0;
  if (cmd === 'load' || cmd === 'exec') base['path'] = 't01_minimal.hxe';
  if (cmd === 'provision.load') base['data'] = IMAGE_B64;
  if (cmd === 'provision.write') Object.assign(base, { session_id: 99, seq: 0, data: 'AAAA' });
  if (cmd === 'provision.end' || cmd === 'provision.abort') base['session_id'] = 99;
  if (['provision.status', 'provision.persist', 'provision.activate', 'provision.unload', 'info'].includes(cmd)) base['pid'] = 1;
  if (cmd === 'auth') base['token'] = 'wrong-token';
  return base;
}

test('the role table is the documented one, and decides every command × every role', async (t) => {
  t.timeout(60_000);
  const documented = documentedRoles();
  const table = new Map([...COMMAND_ROLES].map(([k, v]) => [k, v ?? 'none']));
  t.deepEqual([...documented].sort(), [...table].sort(), 'docs/security.md lists exactly the table');
  t.deepEqual(commandRoles(), Object.fromEntries(COMMAND_ROLES));
  const proto = readFileSync(new URL('../docs/executive_protocol.md', import.meta.url), 'utf8');
  for (const cmd of table.keys()) t.true(proto.includes(`\`${cmd}\``), `${cmd} is in docs/executive_protocol.md`);

  // one session per pair, all opened by one connection
  const h = await startHarness({ tokens: tokenEntries, onShutdown: () => {}, limits: { max_sessions_per_connection: 1000, max_sessions: 1000 } });
  t.teardown(() => h.close());
  const admin = await h.client();
  let checked = 0;
  for (const [cmd, need] of COMMAND_ROLES) {
    for (const who of CALLERS) {
      const opened = await admin.request({ cmd: 'session.open', token: TOKENS.admin });
      const sid = (opened['session'] as Json)['id'] as string;
      const c = await h.client(); // fresh: subscribe turns a connection into a stream
      const req = requestFor(cmd, sid);
      if (who) req['token'] = TOKENS[who];
      const reply = await c.request(req);
      c.destroy();
      expectWellFormed(t, reply, `${cmd} as ${who ?? 'nobody'}`);
      const error = typeof reply['error'] === 'string' ? reply['error'] : '';
      t.not(error, 'internal_error', `${cmd} as ${who ?? 'nobody'}`);
      if (cmd === 'auth') {
        if (who) t.is((reply['auth'] as Json)['role'], who);
        else t.is(error, 'EPERM:invalid_token');
      } else if (need !== null && !roleAllows(who, need)) {
        t.is(error, `EPERM:${need}_required`, `${cmd} as ${who ?? 'nobody'}`);
      } else {
        t.false(error.startsWith('EPERM'), `${cmd} as ${who ?? 'nobody'} was refused: ${error}`);
      }
      checked++;
    }
  }
  t.is(checked, COMMAND_ROLES.size * 4);

  // names that are properties of every object are not commands
  const c = await h.client();
  for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__', 'isPrototypeOf', 'nope']) {
    for (const who of CALLERS) {
      const req: Json = { cmd: name };
      if (who) req['token'] = TOKENS[who];
      t.deepEqual(await c.request(req), { version: 1, status: 'error', error: `unknown_cmd:${name.toLowerCase()}` }, `${name} as ${who ?? 'nobody'}`);
    }
  }
  // and a request whose own keys are such names is an ordinary request
  c.sendRaw(`{"cmd":"ping","token":"${TOKENS.viewer}","__proto__":{"cmd":"shutdown"},"constructor":1}\n`);
  t.deepEqual(await c.nextJson(), { version: 1, status: 'ok', reply: 'pong' });
});

// ---- pid locks --------------------------------------------------------------------------------------

test('pid_lock: a viewer may not take one; an operator\'s lock holds against 1, "1", " 1", "0x1" alike', async (t) => {
  const h = await startHarness({ tokens: tokenEntries });
  t.teardown(() => h.close());
  const a = await h.client();
  const b = await h.client();
  const loaded = await a.request({ cmd: 'provision.load', token: TOKENS.operator, data: IMAGE_B64, source: 'ci:lock' });
  t.is(loaded['status'], 'ok', JSON.stringify(loaded));
  const pid = (loaded['task'] as Json)['pid'] as number;
  t.is(pid, 1);

  // a viewer: no lock, whatever form it takes; a session without one is fine
  for (const pidLock of [1, [1], '1', [2, 3], []]) {
    t.deepEqual(await a.request({ cmd: 'session.open', token: TOKENS.viewer, pid_lock: pidLock }),
      { version: 1, status: 'error', error: 'EPERM:operator_required' }, JSON.stringify(pidLock));
  }
  t.is((await a.request({ cmd: 'session.open', token: TOKENS.viewer }))['status'], 'ok');
  t.is((await a.request({ cmd: 'session.open', token: TOKENS.viewer, pid_lock: null }))['status'], 'ok');
  t.true(h.logs.some((l) => l['audit'] === true && l['cmd'] === 'session.open' && l['verdict'] === 'denied' && l['reason'] === 'EPERM:operator_required'));

  // an operator locks pid 1 (given as hex, it is the same pid)
  const opened = await a.request({ cmd: 'session.open', token: TOKENS.operator, pid_lock: '0x1' });
  t.is(opened['status'], 'ok', JSON.stringify(opened));
  const session = opened['session'] as Json;
  t.is(session['pid_lock'], 1);
  const sid = session['id'] as string;
  t.is((await b.request({ cmd: 'session.open', token: TOKENS.admin, pid_lock: [' 1'] }))['error'], 'pid_locked:1');

  const seqBefore = h.bus.lastSeq;
  for (const form of [pid, String(pid), ` ${pid}`, `0x${pid.toString(16)}`, `${pid} `]) {
    for (const [cmd, token] of [['provision.persist', TOKENS.operator], ['provision.persist', TOKENS.admin], ['provision.unload', TOKENS.admin]] as const) {
      const r = await b.request({ cmd, token, pid: form, target: 'permanent' });
      t.deepEqual(r, { version: 1, status: 'error', error: `pid_locked:${pid}` }, `${cmd} pid ${JSON.stringify(form)}`);
    }
  }
  // forms that are not a pid are refused as bad fields, before anything happens
  for (const form of ['one', '1.0', '', {}, [1], true, 1.5]) {
    const r = await b.request({ cmd: 'provision.unload', token: TOKENS.admin, pid: form });
    t.is(r['error'], 'provision.unload pid must be an integer', JSON.stringify(form));
  }
  t.deepEqual(h.engine.ps().map((x) => [x.pid, x.state]), [[pid, 'READY']], 'the locked task is untouched');
  t.is(h.bus.lastSeq, seqBefore, 'no event: nothing happened to it');

  // the lock's own session may act on it, with the pid in any form
  const mine = await b.request({ cmd: 'provision.persist', token: TOKENS.operator, session: sid, pid: '0x1', target: 'test' });
  t.is(mine['status'], 'ok', JSON.stringify(mine));
  // once the session closes, the lock is gone
  t.is((await a.request({ cmd: 'session.close', token: TOKENS.operator, session: sid }))['status'], 'ok');
  const unloaded = await b.request({ cmd: 'provision.unload', token: TOKENS.admin, pid: ' 1' });
  t.deepEqual(unloaded, { version: 1, status: 'ok', device: 'default', pid: 1, unloaded: true });
  t.deepEqual(h.engine.ps(), []);
});
