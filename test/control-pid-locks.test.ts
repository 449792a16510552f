/**
 * Pid locks against every command that changes, replaces or removes a task (issue 23, and
 * src/gateway/control/pid-locks.ts): a lock held by connection A's session keeps connection B off
 * the task — an admin included, with or without a session of its own, whatever JSON type the pid
 * comes in — through `kill`, `reload`, `val.set`, `provision.persist/activate/unload/rollback`, and
 * an update of the running app by `load`, `exec`, `provision.load` or a `provision.begin … end`
 * stream with `replace`. Nothing changes on a refusal; the lock's own session may do all of it, and
 * when it updates or reloads the task the lock follows the app to its new pid.
 */
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceIntake, InMemoryImageStore, InMemoryValueStore, ProvisioningEngine, systemClock } from '../src/engine/index.js';
import { EventBus } from '../src/gateway/events/index.js';
import { ROLES, sha256Hex as tokenHash, type Role } from '../src/gateway/control/auth.js';
import type { ControlEngine } from '../src/gateway/control/engine-port.js';
import { changingCommands } from '../src/gateway/control/server.js';
import { LineClient, startHarness } from './control-harness.js';
import { startServe } from './support/serve-child.js';
import { sensorBuild, sha256Hex, TEMP_OID } from './update-images.js';

type Json = Record<string, unknown>;

const TOKENS: Record<Role, string> = { viewer: 'view-token-1', operator: 'oper-token-2', admin: 'admin-token-3' };
const tokenEntries = ROLES.map((role) => ({ name: `${role}-bot`, role, sha256: tokenHash(TOKENS[role]) }));

/**
 * Changing commands that act on no task of a device, so no pid lock applies: sessions and their
 * event streams, streaming uploads (owned by their connection), jobs (other devices, over a master
 * link), `cmd.call` (always `ENOTSUP:no_vm`), `shutdown`.
 */
const NOT_A_TASK = new Set(['session.open', 'session.close', 'events.unsubscribe', 'provision.begin', 'provision.write', 'provision.abort',
  'job.submit', 'job.upload.begin', 'job.upload.write', 'job.cancel', 'cmd.call', 'shutdown']);

/** A device with an intake (updates, rollback), as the gateway gives the control server one. */
async function start(t: { teardown(f: () => unknown): void }) {
  const bus = new EventBus({ clock: systemClock });
  const engine = new ProvisioningEngine({ clock: systemClock, events: bus, imageStore: new InMemoryImageStore(), valueStore: new InMemoryValueStore() });
  const intake = new DeviceIntake({ engine, clock: systemClock, events: bus, confirmWindowMs: 3_600_000 });
  const handle: ControlEngine = {
    loadImage: (b, o) => engine.loadImage(b, o),
    begin: (o) => engine.begin(o),
    write: (s, q, c) => engine.write(s, q, c),
    end: (s) => engine.end(s),
    abort: (s, r) => engine.abort(s, r),
    unload: (p) => engine.unload(p),
    ps: () => engine.ps(),
    persist: (p, m) => engine.persist(p, m),
    confirm: () => engine.confirm(),
    rollback: (r) => engine.rollback(r),
    get metadata() {
      return engine.metadata;
    },
    pids: () => engine.pids(),
    taskImage: (p) => engine.taskImage(p),
    setValue: (o, r) => engine.setValue(o, r),
    flushValues: async () => {},
    intake: {
      load: (b, o) => intake.load(b, o),
      finishSession: (s, o) => intake.finishSession(s, o),
      rollback: (r, a) => intake.rollback(r, a),
    },
  };
  const imagesDir = mkdtempSync(join(tmpdir(), 'hsx-locks-'));
  const v1 = sensorBuild(1);
  const v2 = sensorBuild(2);
  writeFileSync(join(imagesDir, 'v1.hxe'), v1);
  writeFileSync(join(imagesDir, 'v2.hxe'), v2);
  const h = await startHarness({ tokens: tokenEntries, bus, engines: new Map([['default', handle]]), imagesDir });
  t.teardown(() => {
    intake.dispose();
    return h.close();
  });
  return { h, engine, intake, v1, v2 };
}

test('every changing command that names or replaces a task honours a lock another connection holds, whatever the pid type', async (t) => {
  t.timeout(60_000);
  const { h, engine, v1, v2 } = await start(t);
  const a = await h.client();
  const b = await h.client();
  t.is((await a.request({ cmd: 'auth', token: TOKENS.operator }))['status'], 'ok');
  t.is((await b.request({ cmd: 'auth', token: TOKENS.admin }))['status'], 'ok');

  // v1 runs and is persisted (so a rollback would stop it); A locks its pid
  const loaded = await a.request({ cmd: 'load', path: 'v1.hxe' });
  t.is(loaded['status'], 'ok', JSON.stringify(loaded));
  const pid = (loaded['image'] as Json)['pid'] as number;
  t.is((await a.request({ cmd: 'provision.persist', pid, target: 'permanent' }))['status'], 'ok');
  const opened = await a.request({ cmd: 'session.open', client: 'holder', pid_lock: `0x${pid.toString(16)}` });
  t.is(opened['status'], 'ok', JSON.stringify(opened));
  const sid = (opened['session'] as Json)['id'] as string;
  // B: an admin, with a session of its own (and, below, without one)
  const bOpened = await b.request({ cmd: 'session.open', client: 'other' });
  const bSid = (bOpened['session'] as Json)['id'] as string;

  const before = () => engine.ps().map((x) => [x.pid, x.sha256, x.state]);
  const snapshot = JSON.stringify(before());
  const tempBefore = (await b.request({ cmd: 'val.get', oid: TEMP_OID }))['value'] as Json;
  const locked = { version: 1, status: 'error', error: `pid_locked:${pid}` };

  const forms: unknown[] = [pid, String(pid), ` ${pid}`, `0x${pid.toString(16)}`];
  const tried: Record<string, number> = {};
  const expectLocked = async (c: LineClient, req: Json, what: string) => {
    for (const session of [undefined, bSid]) {
      const r = await c.request({ ...req, ...(session ? { session } : {}) });
      t.deepEqual(r, locked, `${what} (${session ? 'own session' : 'no session'}): ${JSON.stringify(r).slice(0, 300)}`);
      tried[req['cmd'] as string] = (tried[req['cmd'] as string] ?? 0) + 1;
    }
  };
  // by pid, in every form
  for (const form of forms) {
    await expectLocked(b, { cmd: 'kill', pid: form }, `kill ${JSON.stringify(form)}`);
    await expectLocked(b, { cmd: 'reload', pid: form }, `reload ${JSON.stringify(form)}`);
    await expectLocked(b, { cmd: 'provision.unload', pid: form }, `unload ${JSON.stringify(form)}`);
    await expectLocked(b, { cmd: 'provision.persist', pid: form, target: 'test' }, `persist ${JSON.stringify(form)}`);
    await expectLocked(b, { cmd: 'provision.activate', pid: form }, `activate ${JSON.stringify(form)}`);
  }
  // by what the command does
  await expectLocked(b, { cmd: 'provision.activate' }, 'activate without a pid');
  await expectLocked(b, { cmd: 'provision.rollback', reason: 'attack' }, 'rollback (stops the locked task)');
  await expectLocked(b, { cmd: 'val.set', oid: TEMP_OID, value: 30 }, 'val.set of a value the locked task owns');
  await expectLocked(b, { cmd: 'val.set', oid: `0x${TEMP_OID.toString(16)}`, value: '31' }, 'val.set, oid as hex text');
  await expectLocked(b, { cmd: 'load', path: 'v2.hxe', replace: true }, 'load replace');
  await expectLocked(b, { cmd: 'exec', path: 'v2.hxe', replace: true }, 'exec replace');
  await expectLocked(b, { cmd: 'provision.load', data: Buffer.from(v2).toString('base64'), replace: true }, 'provision.load replace');
  for (const session of [undefined, bSid]) {
    const begun = await b.request({ cmd: 'provision.begin', replace: true, source: 'b:stream', ...(session ? { session } : {}) });
    t.is(begun['status'], 'ok', JSON.stringify(begun));
    const s = begun['session_id'] as number;
    t.is((await b.request({ cmd: 'provision.write', session_id: s, seq: 0, data: Buffer.from(v2).toString('base64') }))['status'], 'ok');
    t.deepEqual(await b.request({ cmd: 'provision.end', session_id: s, ...(session ? { session } : {}) }), locked, 'stream with replace');
    tried['provision.end'] = (tried['provision.end'] ?? 0) + 1;
  }
  // the page (run-as.ts) goes through the same check
  for (const cmd of ['kill', 'reload', 'provision.unload']) {
    const r = await h.server.runAs(cmd, { pid: String(pid) }, { identity: { name: 'page', role: 'admin' }, peer: 'http:test' });
    t.deepEqual(r, { kind: 'error', error: `pid_locked:${pid}` }, `page ${cmd}`);
  }
  const plain = await b.request({ cmd: 'provision.load', data: Buffer.from(v2).toString('base64') });
  t.is(plain['status'], 'error');
  t.true(String(plain['error']).startsWith('EEXIST:'), `a load without replace is the reference's refusal, not a lock matter: ${String(plain['error'])}`);

  t.is(JSON.stringify(before()), snapshot, 'the locked task is untouched: same pid, image and state');
  t.deepEqual(((await b.request({ cmd: 'val.get', oid: TEMP_OID }))['value'] as Json)['value'], tempBefore['value'], 'its value too');
  t.is(engine.storedSha256(), sha256Hex(v1), 'the store still holds v1');

  // every changing command is either tried above or acts on no task of a device
  const untested = changingCommands().filter((c) => !NOT_A_TASK.has(c) && !(c in tried));
  t.deepEqual(untested, [], 'changing commands not tried against a lock');
  t.log(`requests refused by the lock: ${Object.values(tried).reduce((x, y) => x + y, 0)} (${Object.entries(tried).map(([k, v]) => `${k} ${v}`).join(', ')})`);

  // the lock's own session may update, set and roll back
  const upd = await a.request({ cmd: 'load', path: 'v2.hxe', replace: true, session: sid });
  t.is(upd['status'], 'ok', JSON.stringify(upd));
  t.is(upd['outcome'], 'updated');
  const newPid = (upd['image'] as Json)['pid'] as number;
  t.is(engine.ps().length, 1);
  t.is(engine.ps()[0]!.sha256, sha256Hex(v2));
  // the lock followed the app to its new pid: B is still kept off it
  t.not(newPid, pid);
  t.deepEqual(((await a.request({ cmd: 'session.current', session: sid }))['session'] as Json)['pid_locks'], [newPid]);
  t.deepEqual(await b.request({ cmd: 'kill', pid: newPid }), { version: 1, status: 'error', error: `pid_locked:${newPid}` });
  // and through a reload by its own session
  const rel = await a.request({ cmd: 'reload', pid: newPid, session: sid });
  t.is(rel['status'], 'ok', JSON.stringify(rel));
  const reloadedPid = (rel['reload'] as Json)['new_pid'] as number;
  t.deepEqual(await b.request({ cmd: 'provision.unload', pid: reloadedPid }), { version: 1, status: 'error', error: `pid_locked:${reloadedPid}` });
  t.is((await b.request({ cmd: 'provision.unload', pid: newPid }))['error'], 'ESRCH:unknown_pid', 'the old pid is gone, and no longer locked');
  // once the lock's session closes, anyone with the role may act on the task
  t.is((await a.request({ cmd: 'session.close', session: sid }))['status'], 'ok');
  const killed = await b.request({ cmd: 'kill', pid: reloadedPid });
  t.is(killed['status'], 'ok', JSON.stringify(killed));
});

test('a lock on a pid does not stop an update of another app, nor a first install', async (t) => {
  const { h, engine, v1 } = await start(t);
  const a = await h.client();
  const b = await h.client();
  t.is((await a.request({ cmd: 'auth', token: TOKENS.operator }))['status'], 'ok');
  t.is((await b.request({ cmd: 'auth', token: TOKENS.operator }))['status'], 'ok');
  // a lock on a pid that runs nothing yet
  t.is((await a.request({ cmd: 'session.open', pid_lock: [42] }))['status'], 'ok');
  const r = await b.request({ cmd: 'load', path: 'v1.hxe', replace: true });
  t.is(r['status'], 'ok', JSON.stringify(r));
  t.is(r['outcome'], 'installed');
  t.is(engine.ps()[0]!.sha256, sha256Hex(v1));
});

test('serve: the gateway\'s devices honour a lock against an update by load replace, a rollback and kill (real process, real intake)', async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-locks-serve-'));
  const images = join(dir, 'images');
  mkdirSync(images);
  const v1 = sensorBuild(1);
  const v2 = sensorBuild(2);
  writeFileSync(join(images, 'v1.hxe'), v1);
  writeFileSync(join(images, 'v2.hxe'), v2);
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "locks"', 'log_level = "warn"',
    '[control]', 'listen = "127.0.0.1:0"',
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
    '[boot]', 'confirm_window_ms = 0',
  ].join('\n'));
  const gw = await startServe(config);
  t.teardown(() => {
    if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const port = Number(gw.control.slice(gw.control.lastIndexOf(':') + 1));
  const a = await LineClient.connect(port);
  const b = await LineClient.connect(port);
  t.teardown(() => {
    a.destroy();
    b.destroy();
  });
  const loaded = await a.request({ cmd: 'load', path: 'v1.hxe' });
  t.is(loaded['status'], 'ok', JSON.stringify(loaded));
  const pid = (loaded['image'] as Json)['pid'] as number;
  t.is((await a.request({ cmd: 'provision.persist', pid, target: 'permanent' }))['status'], 'ok');
  const sid = ((await a.request({ cmd: 'session.open', pid_lock: String(pid) }))['session'] as Json)['id'] as string;
  const locked = { version: 1, status: 'error', error: `pid_locked:${pid}` };
  t.deepEqual(await b.request({ cmd: 'load', path: 'v2.hxe', replace: true }), locked, 'load replace');
  t.deepEqual(await b.request({ cmd: 'provision.load', data: Buffer.from(v2).toString('base64'), replace: true }), locked, 'provision.load replace');
  t.deepEqual(await b.request({ cmd: 'provision.rollback' }), locked, 'rollback');
  t.deepEqual(await b.request({ cmd: 'kill', pid: `0x${pid.toString(16)}` }), locked, 'kill');
  const ps = (await b.request({ cmd: 'provision.status', pid }))['task'] as Json;
  t.is(ps['sha256'], sha256Hex(v1), 'still v1');
  const upd = await a.request({ cmd: 'load', path: 'v2.hxe', replace: true, session: sid });
  t.is(upd['outcome'], 'updated', JSON.stringify(upd));
});
