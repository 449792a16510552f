/**
 * Hostile and careless clients, over real TCP: over-long lines, invalid UTF-8, non-object JSON,
 * clients that never read, 200 clients at once. Each gets an error reply or a clean close; the
 * server never crashes and never holds unbounded memory for one client.
 */
import test from 'ava';
import { LineFramer, type Frame } from '../src/gateway/control/framing.js';
import { startHarness, LineClient } from './control-harness.js';

test('framer: over-long lines are reported once and skipped without being buffered', (t) => {
  const frames: Frame[] = [];
  const f = new LineFramer(16, (fr) => frames.push(fr));
  let maxBuffered = 0;
  const push = (s: string | Buffer) => {
    f.push(Buffer.isBuffer(s) ? s : Buffer.from(s));
    maxBuffered = Math.max(maxBuffered, f.buffered);
  };
  push('{"a":1}\n');
  for (let i = 0; i < 1000; i++) push('x'.repeat(1000)); // 1 MB with no newline
  push('tail\n{"b":2}\r\n');
  push('0123456789abcdef\n'); // exactly the limit
  push('0123456789abcdefg\n'); // one over
  push('\n\n');
  push(Buffer.from([0x7b, 0xc3]));
  push(Buffer.from([0xa9, 0x7d, 0x0a])); // "{é}" split inside a UTF-8 sequence: fine
  push(Buffer.from([0x7b, 0xff, 0x7d, 0x0a]));
  t.deepEqual(frames, [
    { kind: 'line', text: '{"a":1}' },
    { kind: 'too_long', limit: 16 },
    { kind: 'line', text: '{"b":2}' },
    { kind: 'line', text: '0123456789abcdef' },
    { kind: 'too_long', limit: 16 },
    { kind: 'line', text: '{é}' },
    { kind: 'invalid_utf8' },
  ]);
  t.true(maxBuffered <= 16, `never held more than the limit (max ${maxBuffered})`);
});

test('a line over 1 MiB gets one error, the connection carries on', async (t) => {
  t.timeout(30_000);
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const chunk = 'x'.repeat(64 * 1024);
  for (let i = 0; i < 48; i++) c.sendRaw(chunk); // 3 MiB, no newline
  c.sendRaw('\n{"version":1,"cmd":"ping"}\n');
  t.deepEqual(await c.nextJson(10_000), { version: 1, status: 'error', error: 'line_too_long:1048576' });
  t.deepEqual(await c.nextJson(), { version: 1, status: 'ok', reply: 'pong' });
});

test('invalid UTF-8 and non-object JSON are answered, not fatal', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  c.sendRaw(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d, 0x0a]));
  t.deepEqual(await c.nextJson(), { version: 1, status: 'error', error: 'invalid_utf8' });
  for (const bad of ['[1,2]', '"ping"', 'null', '42']) {
    c.sendRaw(`${bad}\n`);
    t.deepEqual(await c.nextJson(), { version: 1, status: 'error', error: 'invalid_json' }, bad);
  }
  t.deepEqual(await c.request({ cmd: 'provision.write', session_id: 1, seq: 0, data: 'not base64!' }),
    { version: 1, status: 'error', error: 'provision.write data must be base64' });
  t.deepEqual(await c.request({ cmd: 'provision.end' }), { version: 1, status: 'error', error: "provision.end requires 'session_id'" });
  t.deepEqual(await c.request({ cmd: 'provision.end', session_id: 'abc' }), { version: 1, status: 'error', error: 'provision.end session_id must be an integer' });
  t.deepEqual(await c.request({ cmd: 'ping', version: '1' }), { version: 1, status: 'error', error: 'unsupported_version:1' });
  t.deepEqual(await c.request({ cmd: 'ping' }), { version: 1, status: 'ok', reply: 'pong' });
});

test('a client that sends but never reads: we stop reading it, hold a bounded amount, then drop it', async (t) => {
  t.timeout(30_000);
  const h = await startHarness({ stalledDropMs: 1500 });
  t.teardown(() => h.close());
  const c = await h.client();
  c.socket.pause(); // never read
  const req = Buffer.from('{"version":1,"cmd":"ps"}\n'.repeat(20_000)); // ~500 KB of requests, MBs of replies
  for (let i = 0; i < 10; i++) c.sendRaw(req);
  let maxUnread = 0;
  const deadline = Date.now() + 10_000;
  while (h.server.connectionCount > 0 && Date.now() < deadline) {
    for (const info of h.server.connectionsInfo()) maxUnread = Math.max(maxUnread, info.unreadBytes);
    await new Promise((r) => setTimeout(r, 20));
  }
  t.is(h.server.connectionCount, 0, 'dropped');
  t.true(maxUnread < 1024 * 1024, `held at most ${maxUnread} unread bytes for it`);
  t.log(`max unread bytes held for the non-reading client: ${maxUnread}`);
  // the server is fine
  const d = await h.client();
  t.is((await d.request({ cmd: 'ping' }))['reply'], 'pong');
});

test('an event subscriber that never reads is cut off by the bus, not by our memory', async (t) => {
  t.timeout(30_000);
  const h = await startHarness({ busConfig: { graceMs: 0 } });
  t.teardown(() => h.close());
  const a = await h.client();
  const s = await h.client();
  const sid = ((await a.request({ cmd: 'session.open', capabilities: { max_events: 64 } }))['session'] as Record<string, unknown>)['id'];
  await s.request({ cmd: 'events.subscribe', session: sid });
  s.socket.pause();
  const token = [...h.bus['subs'].keys()][0] as string;
  let maxUnread = 0;
  let maxQueued = 0;
  for (let i = 0; i < 200_000 && h.bus.get(token); i++) {
    h.bus.publish({ type: 'probe', pid: 1, phase: null, data: { i, pad: 'x'.repeat(200) } });
    if (i % 1000 === 0) {
      await new Promise((r) => setImmediate(r));
      for (const info of h.server.connectionsInfo()) maxUnread = Math.max(maxUnread, info.unreadBytes);
      maxQueued = Math.max(maxQueued, h.bus.get(token)?.metrics().queued ?? 0);
    }
  }
  t.is(h.bus.get(token), undefined, 'unsubscribed (slow_consumer_drop)');
  const deadline = Date.now() + 5000;
  while (h.server.connectionsInfo().some((c) => c.streaming) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.false(h.server.connectionsInfo().some((c) => c.streaming), 'its connection was closed');
  t.true(maxQueued <= 64 + 2, `bus queue bounded (max ${maxQueued})`);
  t.true(maxUnread < 1024 * 1024, `socket buffer bounded (max ${maxUnread})`);
});

// Serial: it moves 10 MB, and would starve the 200-clients test running beside it.
test.serial('a subscriber that stops reading does not cost another one any event; batched lines arrive whole and in order', async (t) => {
  t.timeout(30_000);
  const h = await startHarness({ busConfig: { graceMs: 0 } });
  t.teardown(() => h.close());
  const a = await h.client();
  const open = async () => ((await a.request({ cmd: 'session.open', capabilities: { max_events: 64 } }))['session'] as Record<string, unknown>)['id'];
  const fast = await h.client();
  const slow = await h.client();
  t.is((await fast.request({ cmd: 'events.subscribe', session: await open() }))['status'], 'ok');
  t.is((await slow.request({ cmd: 'events.subscribe', session: await open() }))['status'], 'ok');
  slow.socket.pause();
  const first = h.bus.lastSeq + 1;
  const total = 5000;
  const seqs: number[] = [];
  // The producer runs ahead of the fast reader by at most 50 events (100 KB, under the socket's
  // high-water mark), so the fast one is never behind, whatever the host's load; the slow one
  // takes 10 MB in all, more than the kernel buffers hold.
  for (let i = 0; i < total; i += 50) {
    for (let k = i; k < i + 50; k++) h.bus.publish({ type: 'probe', pid: 1, phase: null, data: { i: k, pad: 'x'.repeat(2000) } });
    while (seqs.length < i + 50) {
      const ev = await fast.nextJson(30_000);
      t.is(ev['type'], 'probe', 'the fast subscriber gets no drop or slow warnings');
      t.is((ev['data'] as Record<string, unknown>)['i'], seqs.length, 'every event, whole, in order');
      seqs.push(ev['seq'] as number);
    }
  }
  t.is(seqs[0], first);
  for (let i = 1; i < seqs.length; i++) t.true(seqs[i]! > seqs[i - 1]!);
  const slowStats = h.bus.subscriptionMetrics().find((m) => m.drop_count > 0);
  const slowCut = h.bus.stats().subscribers === 1;
  t.true(slowCut || slowStats !== undefined, 'the slow one was held back (drops) or cut off, not the fast one');
});

test('200 clients at once', async (t) => {
  t.timeout(60_000);
  // the connection limits raised (defaults: 64, 16 per address, 8 before a first line; control-limits.test.ts)
  const h = await startHarness({ limits: { max_connections: 200, max_connections_per_address: 200, max_unauthenticated: 200 } });
  t.teardown(() => h.close());
  const clients = await Promise.all(Array.from({ length: 200 }, () => LineClient.connect(h.port)));
  const replies = await Promise.all(clients.map(async (c, i) => {
    // generous waits: 600 requests at once on a 2-core host shared with other test files
    const open = await c.request({ cmd: 'session.open', client: `c${i}` }, 30_000);
    const ping = await c.request({ cmd: 'ping' }, 30_000);
    const ps = await c.request({ cmd: 'ps' }, 30_000);
    return [open['status'], ping['reply'], ps['status']];
  }));
  t.is(h.server.connectionCount, 200, 'all 200 held open at once');
  t.true(replies.every((r) => r[0] === 'ok' && r[1] === 'pong' && r[2] === 'ok'));
  for (const c of clients) c.destroy();
  const deadline = Date.now() + 5000;
  while (h.server.connectionCount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.is(h.server.connectionCount, 0);
});

test('closing the server ends connections and aborts their streaming loads', async (t) => {
  const h = await startHarness();
  const c = await h.client();
  const begun = await c.request({ cmd: 'provision.begin', total_bytes: 500 });
  t.is(begun['status'], 'ok');
  await h.server.close();
  t.true(await c.waitEnd());
  const deadline = Date.now() + 2000;
  while (h.engine.sessions().length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.is(h.engine.sessions().length, 0);
  h.bus.close();
});
