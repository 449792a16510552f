/**
 * The control server against the HSX executive's recorded transcript
 * (fixtures/reference/protocol_transcript.json), over real TCP. Lines the reference answers with
 * fixed text must match byte for byte; lines with ids, times and engine-specific content must
 * have the reference's shape.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, fixturePath } from './control-harness.js';

interface Line { conn: string; dir: 'send' | 'recv'; line: string }
const transcript = JSON.parse(readFileSync(new URL('./fixtures/reference/protocol_transcript.json', import.meta.url), 'utf8')) as { lines: Line[] };
const lines = transcript.lines;

/** The reference's reply to the request at index i (the next recv line on the same connection). */
function replyTo(i: number): string {
  const conn = lines[i]!.conn;
  for (let j = i + 1; j < lines.length; j++) if (lines[j]!.conn === conn && lines[j]!.dir === 'recv') return lines[j]!.line;
  throw new Error(`no reply for line ${i}`);
}
const sendIndex = (needle: string) => lines.findIndex((l) => l.dir === 'send' && l.line.includes(needle));

/** A load root laid out like the reference run (vectors/hsx-reference/...), plus a bad-magic image. */
function loadRoot(): string {
  const root = mkdtempSync(join(tmpdir(), 'hsx-ctl-'));
  const dir = join(root, 'vectors/hsx-reference/toolchain');
  mkdirSync(dir, { recursive: true });
  for (const n of ['t04b_value_cmd_help.hxe', 't05_mailbox_json.hxe', 't02_single_instance_reqcap.hxe']) copyFileSync(fixturePath(n), join(dir, n));
  mkdirSync(join(root, 'vectors/hsx-reference/corrupt'), { recursive: true });
  const bad = readFileSync(fixturePath('t01_minimal.hxe'));
  bad[3] = 0x46; // "HSXF"
  writeFileSync(join(root, 'vectors/hsx-reference/corrupt/c01_bad_magic.hxe'), bad);
  return root;
}

test('fixed replies match the reference byte for byte', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const a = await h.client();
  const fixed = ['"cmd":"ping"}', '"version":2', '{not json', '"cmd":"nope"', '"cmd":"events.subscribe"}'];
  for (const needle of fixed) {
    const i = sendIndex(needle);
    a.sendRaw(`${lines[i]!.line}\n`);
    t.is(await a.next(), replyTo(i), `reply to ${lines[i]!.line}`);
  }
});

test('the recorded session replays with the reference shapes and error strings', async (t) => {
  const h = await startHarness({ imagesDir: loadRoot(), onShutdown: () => {} });
  t.teardown(() => h.close());
  const a = await h.client();
  const s = await h.client();

  // session.open: same request, same negotiated values and warnings
  const openIdx = sendIndex('"cmd":"session.open"');
  a.sendRaw(`${lines[openIdx]!.line}\n`);
  const opened = await a.nextJson();
  const refOpened = JSON.parse(replyTo(openIdx));
  t.deepEqual(Object.keys(opened), Object.keys(refOpened));
  const sess = opened['session'] as Record<string, unknown>;
  const refSess = refOpened.session as Record<string, unknown>;
  t.deepEqual(Object.keys(sess), Object.keys(refSess));
  for (const k of ['client', 'heartbeat_s', 'features', 'max_events', 'pid_lock', 'warnings']) t.deepEqual(sess[k], refSess[k], k);
  t.regex(sess['id'] as string, /^[0-9a-f-]{36}$/);
  const sid = sess['id'] as string;
  const withSession = (line: string) => line.replaceAll(refSess['id'] as string, sid);

  // events.subscribe on connection S
  const subIdx = sendIndex('"filters":{"since_seq":0}');
  s.sendRaw(`${withSession(lines[subIdx]!.line)}\n`);
  const sub = await s.nextJson();
  const refSub = JSON.parse(replyTo(subIdx));
  t.is(sub['status'], 'ok');
  t.deepEqual(Object.keys(sub['events'] as object), Object.keys(refSub.events));
  t.is((sub['events'] as Record<string, unknown>)['max'], 4);
  t.is((sub['events'] as Record<string, unknown>)['since_seq'], 0);
  t.true(((sub['events'] as Record<string, unknown>)['token'] as string).startsWith(`${sid}:`));

  // loads: the reference's image fields for the same images
  for (const name of ['t04b_value_cmd_help', 't05_mailbox_json', 't02_single_instance_reqcap']) {
    const i = sendIndex(`"cmd":"load","path":"vectors/hsx-reference/toolchain/${name}.hxe"`);
    a.sendRaw(`${lines[i]!.line}\n`);
    const got = await a.nextJson();
    const ref = JSON.parse(replyTo(i));
    t.is(got['status'], 'ok', name);
    const img = got['image'] as Record<string, unknown>;
    for (const k of ['entry', 'code_len', 'ro_len', 'bss', 'version', 'req_caps', 'app_name', 'app_name_base', 'allow_multiple_instances']) {
      t.deepEqual(img[k], ref.image[k], `${name}.${k}`);
    }
    t.is(typeof img['pid'], 'number');
  }
  // a corrupt image: typed error instead of the reference's Python message
  a.sendRaw(`${lines[sendIndex('c01_bad_magic')]!.line}\n`);
  const bad = await a.nextJson();
  t.is(bad['status'], 'error');
  t.regex(bad['error'] as string, /^EBADMSG:bad_magic$/);
  t.is((bad['detail'] as Record<string, unknown>)['where'], 'verify');
  // exec of a loaded single-instance app: the reference's exact error string
  const execIdx = sendIndex('"cmd":"exec"');
  a.sendRaw(`${lines[execIdx]!.line}\n`);
  const exec = await a.nextJson();
  t.is(exec['error'], JSON.parse(replyTo(execIdx)).error);

  // ps: the reference's row fields
  const psIdx = sendIndex('"cmd":"ps"');
  a.sendRaw(`${lines[psIdx]!.line}\n`);
  const ps = await a.nextJson();
  const refPs = JSON.parse(replyTo(psIdx));
  const rows = (ps['tasks'] as Record<string, unknown>)['tasks'] as Record<string, unknown>[];
  t.is(rows.length, 3);
  t.true('current_pid' in (ps['tasks'] as object));
  for (const k of ['pid', 'program', 'state', 'app_name', 'app_name_base', 'metadata']) t.true(k in rows[0]!, k);
  t.deepEqual(rows.map((r) => [r['program'], r['state'], r['app_name']]),
    refPs.tasks.tasks.map((r: Record<string, unknown>) => [r['program'], r['state'], r['app_name']]));

  // S got the load events, seq strictly increasing, in the executive's envelope
  const events: Record<string, unknown>[] = [];
  while (events.length < 6) events.push(await s.nextJson());
  for (const ev of events) t.deepEqual(Object.keys(ev), ['seq', 'ts', 'type', 'pid', 'phase', 'data']);
  for (let i = 1; i < events.length; i++) t.true((events[i]!['seq'] as number) > (events[i - 1]!['seq'] as number));
  const lastSeq = events.at(-1)!['seq'] as number;

  // events.ack (with our seq), the missing-seq and unknown-session errors verbatim
  a.sendRaw(`${JSON.stringify({ version: 1, cmd: 'events.ack', session: sid, seq: lastSeq })}\n`);
  const acked = await a.nextJson();
  const ackIdx = lines.findIndex((l) => l.dir === 'send' && l.line.includes('"events.ack"') && l.line.includes('"seq":8'));
  t.deepEqual(Object.keys(acked['events'] as object), Object.keys(JSON.parse(replyTo(ackIdx)).events));
  t.is((acked['events'] as Record<string, unknown>)['last_ack'], lastSeq);
  for (const needle of [`"events.ack","session":"${refSess['id'] as string}"}`, '"no-such-session"']) {
    const i = sendIndex(needle);
    a.sendRaw(`${withSession(lines[i]!.line)}\n`);
    t.is(await a.next(), replyTo(i));
  }

  // a request on the stream connection is ignored; unsubscribe ends the stream (EOF)
  s.sendRaw('{"version":1,"cmd":"ping"}\n');
  const unsubIdx = sendIndex('"events.unsubscribe"');
  a.sendRaw(`${withSession(lines[unsubIdx]!.line)}\n`);
  t.is(await a.next(), replyTo(unsubIdx));
  let rest: string | null;
  while ((rest = await s.next()) !== null) t.true(rest.startsWith('{"seq":'), `only events on the stream: ${rest}`);
  t.true(s.ended, 'EOF on the stream connection');

  for (const needle of ['"session.close"', '"shutdown"']) {
    const i = sendIndex(needle);
    a.sendRaw(`${withSession(lines[i]!.line)}\n`);
    t.is(await a.next(), replyTo(i), needle);
  }
});

test('sessions: keepalive, pid locks, expiry by heartbeat and clamping of max_events', async (t) => {
  const h = await startHarness({ fakeClock: true });
  t.teardown(() => h.close());
  const a = await h.client();
  const opened = await a.request({ cmd: 'session.open', client: 'x', pid_lock: 7, capabilities: { max_events: 1 }, heartbeat_s: 900 });
  const sess = opened['session'] as Record<string, unknown>;
  t.deepEqual(sess['warnings'], ['max_events_clamped:2', 'heartbeat_clamped:300']);
  t.is(sess['pid_lock'], 7);
  const other = await a.request({ cmd: 'session.open', pid_lock: [7] });
  t.is(other['error'], 'pid_locked:7');
  t.deepEqual(await a.request({ cmd: 'session.keepalive', session: sess['id'] }), { version: 1, status: 'ok' });
  t.deepEqual(await a.request({ cmd: 'session.keepalive' }), { version: 1, status: 'error', error: 'session_required' });
  t.is((await a.request({ cmd: 'provision.unload', pid: 7 }))['error'], 'pid_locked:7', 'locked pid, no session');
  const b = (await a.request({ cmd: 'session.open' }))['session'] as Record<string, unknown>;
  t.is((await a.request({ cmd: 'provision.unload', pid: 7, session: b['id'] }))['error'], 'pid_locked:7', 'another session');
  t.is((await a.request({ cmd: 'provision.unload', pid: 7, session: sess['id'] }))['error'], 'ESRCH:unknown_pid', 'the owner passes the lock');
  (h.clock as unknown as { advance(ms: number): void }).advance(301_000);
  t.deepEqual(await a.request({ cmd: 'session.keepalive', session: sess['id'] }), { version: 1, status: 'error', error: 'session_required' });
});
