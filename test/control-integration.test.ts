/**
 * End to end over real TCP on an ephemeral port: a full load (path and base64), a streaming load
 * in base64 chunks, an abort, persist/activate/rollback, and an event subscription paced by ACKs
 * on a second connection, as the HSX shell does it.
 */
import test from 'ava';
import { systemClock } from '../src/engine/index.js';
import { EventBus } from '../src/gateway/events/index.js';
import { fixture, makeEngine, startHarness, type LineClient } from './control-harness.js';

type Json = Record<string, unknown>;

/** Reads events from the stream, ACKing each batch on the control connection, until `until` holds. */
async function collectWithAcks(s: LineClient, a: LineClient, sid: string, window: number, until: (evs: Json[]) => boolean, t: { true(v: boolean, m?: string): void }): Promise<Json[]> {
  const events: Json[] = [];
  let pausesSeen = 0;
  while (!until(events)) {
    const batch: Json[] = [];
    while (batch.length < window) {
      const line = await s.next(batch.length === 0 ? 5000 : 150);
      if (line === null) break;
      batch.push(JSON.parse(line) as Json);
    }
    if (batch.length === 0) throw new Error(`stream stalled after ${events.length} events`);
    events.push(...batch);
    if (batch.length === window) {
      // window full: nothing more may arrive until we ACK
      const extra = await s.next(100);
      t.true(extra === null, 'delivery paused at the ACK window');
      pausesSeen++;
    }
    const last = batch.at(-1)!['seq'] as number;
    const acked = await a.request({ cmd: 'events.ack', session: sid, seq: last });
    t.true(acked['status'] === 'ok', 'ack accepted');
  }
  t.true(pausesSeen > 0, 'the window was reached at least once');
  return events;
}

test('full load, streaming load, abort and an ACK-paced event subscription over TCP', async (t) => {
  t.timeout(30_000);
  const h = await startHarness();
  t.teardown(() => h.close());
  const a = await h.client();
  const s = await h.client();

  const opened = await a.request({ cmd: 'session.open', client: 'itest', capabilities: { features: ['events'], max_events: 64 } });
  const sid = (opened['session'] as Json)['id'] as string;
  const subscribed = await s.request({ cmd: 'events.subscribe', session: sid, ack_window: 4, filters: { categories: ['provisioning'] } });
  t.is(subscribed['status'], 'ok');
  t.is((subscribed['events'] as Json)['ack_window'], 4);

  // 1. full loads: from a path, and as base64 bytes
  const byPath = await a.request({ cmd: 'provision.load', path: 't01_minimal.hxe' });
  t.is(byPath['status'], 'ok', JSON.stringify(byPath));
  const pidPath = (byPath['task'] as Json)['pid'] as number;
  const byData = await a.request({ cmd: 'provision.load', data: Buffer.from(fixture('t05_mailbox_json.hxe')).toString('base64'), source: 'itest:t05' });
  t.is(byData['status'], 'ok', JSON.stringify(byData));
  t.is((byData['task'] as Json)['source'], 'itest:t05');

  // 2. a streaming load in 32-byte base64 chunks
  const image = fixture('t04b_value_cmd_help.hxe');
  const begun = await a.request({ cmd: 'provision.begin', source: 'itest:stream', total_bytes: image.length });
  t.is(begun['status'], 'ok', JSON.stringify(begun));
  const sessionId = begun['session_id'] as number;
  let seq = 0;
  for (let off = 0; off < image.length; off += 32) {
    const chunk = Buffer.from(image.subarray(off, off + 32)).toString('base64');
    const w = await a.request({ cmd: 'provision.write', session_id: sessionId, seq, data: chunk });
    t.is(w['status'], 'ok', JSON.stringify(w));
    t.is(w['bytes_written'], Math.min(32, image.length - off));
    t.is(w['total_bytes_written'], Math.min(off + 32, image.length));
    seq++;
  }
  const dup = await a.request({ cmd: 'provision.write', session_id: sessionId, seq: seq - 1, data: Buffer.from(image.subarray((seq - 1) * 32)).toString('base64') });
  t.is(dup['duplicate'], true, 'a resent last chunk is acknowledged as a duplicate');
  const gap = await a.request({ cmd: 'provision.write', session_id: sessionId, seq: seq + 5, data: 'AAAA' });
  t.is(gap['error'], 'EBADMSG:seq_gap');
  t.is((gap['detail'] as Json)['expectedSeq'], seq);
  const ended = await a.request({ cmd: 'provision.end', session_id: sessionId });
  t.is(ended['status'], 'ok', JSON.stringify(ended));
  const streamPid = (ended['task'] as Json)['pid'] as number;
  t.is((ended['task'] as Json)['app_name'], 'sensor_app');

  // 3. an abort
  const b2 = await a.request({ cmd: 'provision.begin', source: 'itest:abort', total_bytes: image.length });
  const abortId = b2['session_id'] as number;
  t.is((await a.request({ cmd: 'provision.write', session_id: abortId, seq: 0, data: Buffer.from(image.subarray(0, 64)).toString('base64') }))['status'], 'ok');
  t.deepEqual(await a.request({ cmd: 'provision.abort', session_id: abortId, reason: 'operator_changed_mind' }),
    { version: 1, status: 'ok', device: 'default', session_id: abortId, aborted: true });
  const late = await a.request({ cmd: 'provision.write', session_id: abortId, seq: 1, data: 'AAAA' });
  t.is(late['error'], 'ECANCELED:operator_changed_mind');
  t.is(h.engine.sessions().length, 0);

  // 4. status, ps, persist / activate / rollback
  const st = await a.request({ cmd: 'provision.status', pid: streamPid });
  t.is((st['task'] as Json)['state'], 'READY');
  t.is((await a.request({ cmd: 'provision.status', pid: 999 }))['error'], 'ESRCH:unknown_pid');
  const ps = await a.request({ cmd: 'ps' });
  t.is(((ps['tasks'] as Json)['tasks'] as Json[]).length, 3);
  const persisted = await a.request({ cmd: 'provision.persist', pid: pidPath, target: 'test' });
  t.is(persisted['status'], 'ok', JSON.stringify(persisted));
  t.truthy((persisted['persisted'] as Json)['slot']);
  t.is((await a.request({ cmd: 'provision.persist', pid: pidPath, target: 'forever' }))['error'], "provision.persist target must be 'test' or 'permanent'");
  t.is((await a.request({ cmd: 'provision.activate', pid: pidPath }))['status'], 'ok');
  const rb = await a.request({ cmd: 'provision.rollback', reason: 'itest' });
  t.true(rb['status'] === 'ok' || String(rb['error']).startsWith('E'), JSON.stringify(rb));
  t.is((await a.request({ cmd: 'provision.unload', pid: pidPath }))['status'], 'ok');

  // 5. the subscriber saw all of it, paced by its ACK window
  const events = await collectWithAcks(s, a, sid, 4, (evs) => evs.some((e) => e['type'] === 'provisioning.unloaded'), t);
  for (let i = 1; i < events.length; i++) t.true((events[i]!['seq'] as number) > (events[i - 1]!['seq'] as number), 'seq increases');
  for (const e of events) t.true(String(e['type']).startsWith('provisioning.'), 'category filter');
  const stream = events.filter((e) => e['pid'] === streamPid);
  const kinds = stream.map((e) => e['type']);
  t.is(kinds[0], 'provisioning.started');
  const completeAt = kinds.indexOf('provisioning.complete');
  t.true(completeAt > 0);
  // A final 100% before complete. Between them there may only be the error of the test's own gapped
  // write: whether 100% went out at the last chunk or was held for the end depends on the progress
  // rate limit, that is on how fast this machine ran the writes.
  const lastProgress = kinds.lastIndexOf('provisioning.progress', completeAt);
  t.true(lastProgress > 0, 'progress before complete');
  t.is((stream[lastProgress]!['data'] as Json)['percent'], 100, 'a final 100% before complete');
  t.deepEqual(kinds.slice(lastProgress + 1, completeAt).filter((k) => k !== 'provisioning.error'), [], 'nothing but the gap error between them');
  const percents = stream.filter((e) => e['type'] === 'provisioning.progress').map((e) => (e['data'] as Json)['percent'] as number);
  t.deepEqual(percents, [...percents].sort((x, y) => x - y), 'progress is monotonic');
  const aborted = events.find((e) => e['type'] === 'provisioning.aborted' && e['pid'] === abortId);
  t.is((aborted?.['data'] as Json | undefined)?.['reason'], 'operator_changed_mind');
  t.truthy(events.find((e) => e['type'] === 'provisioning.persisted'));
  t.truthy(events.find((e) => e['type'] === 'provisioning.complete' && e['pid'] === pidPath));
});

test('a client that disconnects mid-stream has its streaming session aborted', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client();
  const image = fixture('t04b_value_cmd_help.hxe');
  const begun = await c.request({ cmd: 'provision.begin', source: 'leaver', total_bytes: image.length });
  const id = begun['session_id'] as number;
  await c.request({ cmd: 'provision.write', session_id: id, seq: 0, data: Buffer.from(image.subarray(0, 64)).toString('base64') });
  t.is(h.engine.sessions().length, 1);
  c.destroy();
  const deadline = Date.now() + 5000;
  while (h.engine.sessions().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.is(h.engine.sessions().length, 0, 'session freed');
  const ev = h.bus.historySince(0).find((e) => e.type === 'provisioning.aborted' && e.pid === id);
  t.is(ev?.data['reason'], 'client_disconnected');
  t.is(h.engine.resources().bufferedBytes, 0, 'its buffer released');
  t.is(h.engine.resources().timers, 0, 'its timers disarmed');
});

test('several devices behind one server: requests name a device, default the first', async (t) => {
  const bus = new EventBus({ clock: systemClock });
  const devA = makeEngine(systemClock, bus);
  const devB = makeEngine(systemClock, bus);
  const h = await startHarness({ engines: new Map([['bench-a', devA], ['bench-b', devB]]), bus });
  t.teardown(() => h.close());
  const c = await h.client();
  t.is((await c.request({ cmd: 'provision.load', device: 'bench-b', path: 't01_minimal.hxe' }))['device'], 'bench-b');
  t.is(devB.ps().length, 1);
  t.is(devA.ps().length, 0);
  t.is((await c.request({ cmd: 'ps' }))['device'], 'bench-a');
  const bad = await c.request({ cmd: 'ps', device: 'nope' });
  t.is(bad['error'], 'ENODEV:unknown_device');
  t.deepEqual((bad['detail'] as Json)['devices'], ['bench-a', 'bench-b']);
  const info = await c.request({ cmd: 'info' });
  t.deepEqual((info['info'] as Json)['devices'], ['bench-a', 'bench-b']);
});
