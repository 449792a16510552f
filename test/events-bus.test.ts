import test from 'ava';
import { readFileSync } from 'node:fs';
import { FakeClock } from '../src/engine/clock.js';
import type { Clock } from '../src/engine/ports.js';
import { EventBus, eventJson, type BusEvent } from '../src/gateway/events/index.js';

const probe = (i: number, pid = 1) => ({ type: 'probe', pid, phase: null, data: { i } });
const complete = (pid: number) => ({ type: 'provisioning.complete', pid, phase: 'end' as const, data: { pid } });

const reference = JSON.parse(readFileSync(new URL('./fixtures/reference/events_scenario.json', import.meta.url), 'utf8'));

test('overflow drops the oldest droppable event and warns event_dropped with cumulative counts', (t) => {
  // Reference scenario A: max_events 2, five probes, consumer not reading.
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const sub = bus.subscribe({ maxEvents: 2, deliver: () => false, deferStart: true });
  for (let i = 0; i < 5; i++) bus.publish(probe(i));
  const q = sub.queued();
  // We keep the newest two probes (seq 5, 7) and one up-to-date drop warning (seq 8); the
  // reference also silently lost its warnings and probe 5 (drops said 3, six were gone).
  t.deepEqual(q.map((e) => e.seq), [5, 7, 8]);
  t.deepEqual(q.map((e) => e.type), ['probe', 'probe', 'warning']);
  const w = q[2]!;
  const refWarning = reference.A_overflow_max_events_2.queue[0];
  t.deepEqual(Object.keys(w.data).sort(), Object.keys(refWarning.data).sort(), 'same warning fields as the reference');
  t.is(w.data['reason'], 'event_dropped');
  t.is(w.data['dropped_seq'], 3);
  t.is(w.data['drops'], 3);
  t.is(w.data['subscription'], sub.token);
  t.is(w.pid, null);
  t.is(sub.metrics().drop_count, reference.A_overflow_max_events_2.metrics.drop_count);
  t.deepEqual(Object.keys(reference.A_overflow_max_events_2.metrics).filter((k) => !(k in sub.metrics())), [],
    'every reference metric is reported');
  for (let i = 1; i < q.length; i++) t.true(q[i]!.seq > q[i - 1]!.seq, 'queue is in seq order');
});

test('terminal events are never dropped under overflow', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock, config: { graceMs: 1e12 } });
  const got: BusEvent[] = [];
  let open = false;
  const sub = bus.subscribe({ maxEvents: 4, deliver: (ev) => (got.push(ev), open) });
  // The consumer takes one event and is full; then 2,000 events arrive, 50 of them terminal.
  let terminals = 0;
  for (let i = 0; i < 2000; i++) {
    if (i % 40 === 39) {
      bus.publish(complete(i));
      terminals++;
    } else bus.publish(probe(i, i));
  }
  t.true(sub.metrics().drop_count > 1000, 'most probes were dropped');
  open = true;
  sub.resume();
  const completes = got.filter((e) => e.type === 'provisioning.complete');
  t.is(completes.length, terminals);
  t.deepEqual(completes.map((e) => e.pid), Array.from({ length: terminals }, (_, k) => k * 40 + 39));
  const warnings = got.filter((e) => e.type === 'warning');
  t.true(warnings.length >= 1);
  t.is(warnings.at(-1)!.data['drops'], sub.metrics().drop_count);
  for (let i = 1; i < got.length; i++) t.true(got[i]!.seq > got[i - 1]!.seq);
});

test('a full queue whose oldest events are essential drops the oldest droppable one and delivers in seq order', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock, config: { graceMs: 1e12 } });
  const got: BusEvent[] = [];
  let open = false;
  const sub = bus.subscribe({ maxEvents: 4, deliver: (ev) => (got.push(ev), open), deferStart: true });
  for (let pid = 1; pid <= 3; pid++) bus.publish(complete(pid)); // seq 1..3, never dropped
  for (let i = 0; i < 10; i++) bus.publish(probe(i)); // each one past the first evicts the previous
  const q = sub.queued();
  t.deepEqual(q.map((e) => e.type), ['provisioning.complete', 'provisioning.complete', 'provisioning.complete', 'probe', 'warning']);
  t.is(q[3]!.data['i'], 9, 'the newest probe is kept');
  t.is(q[4]!.data['drops'], 9, 'one up-to-date drop warning, counting every drop');
  t.is(sub.metrics().queued, 5);
  // An ACK trims the essential part as well as the droppable part.
  sub.ack(2);
  t.deepEqual(sub.queued().map((e) => e.seq), q.slice(2).map((e) => e.seq));
  open = true;
  sub.start();
  t.deepEqual(got.map((e) => e.seq), q.slice(2).map((e) => e.seq), 'delivered exactly what was queued, in seq order');
  t.is(sub.metrics().queued, 0);
});

test('an event is serialized once and the text is shared by every consumer', (t) => {
  const bus = new EventBus({ clock: new FakeClock(0) });
  const texts: string[] = [];
  for (let k = 0; k < 3; k++) bus.subscribe({ deliver: (ev) => (texts.push(eventJson(ev)), true) });
  bus.publish(complete(7));
  t.is(texts.length, 3);
  const ev = JSON.parse(texts[0]!) as BusEvent;
  t.is(ev.type, 'provisioning.complete');
  t.is(ev.pid, 7);
  t.true(texts.every((x) => x === texts[0]), 'same text for every subscriber');
  t.deepEqual(Object.keys(ev), ['seq', 'ts', 'type', 'pid', 'phase', 'data']);
});

test('slow consumer: warning at the warn threshold, then slow_consumer_drop and unsubscribe (reference D)', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got: BusEvent[] = [];
  const closes: string[] = [];
  // ACK mode, a reader that never acknowledges: like the reference's client that never ACKs.
  const sub = bus.subscribe({ maxEvents: 16, ackWindow: 8, deliver: (ev) => (got.push(ev), true), onClose: (r) => closes.push(r) });
  const { warn, drop } = reference.D_slow_consumer_no_ack.thresholds;
  t.is(sub.warnThreshold, warn);
  t.is(sub.dropThreshold, drop);
  clock.advance(1500); // past the grace period
  let emitted = 0;
  while (sub.active && emitted < 10_000) {
    bus.publish(probe(emitted));
    emitted++;
    clock.advance(1);
  }
  t.false(sub.active);
  t.deepEqual(closes, ['slow_consumer_drop']);
  const warnings = got.filter((e) => e.type === 'warning');
  const slow = warnings.filter((w) => w.data['reason'] === 'slow_consumer');
  const cut = warnings.filter((w) => w.data['reason'] === 'slow_consumer_drop');
  t.true(slow.length >= 1);
  t.is(slow[0]!.data['pending'], warn, 'first slow_consumer exactly at the warn threshold');
  t.is(cut.length, 1);
  t.is(cut[0]!.data['pending'], drop, 'cut exactly at the hard limit');
  const refCut = reference.D_slow_consumer_no_ack.warnings[1];
  t.deepEqual(Object.keys(cut[0]!.data).sort(), Object.keys(refCut.data).sort());
  t.is(got.at(-1), cut[0], 'slow_consumer_drop is the last thing the subscriber gets');
  t.is(bus.stats().subscribers, 0);
  const before = got.length;
  bus.publish(probe(1));
  t.is(got.length, before, 'nothing after unsubscription');
});

test('no back-pressure verdicts within the grace period', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock, config: { graceMs: 1000 } });
  const sub = bus.subscribe({ maxEvents: 2, deliver: () => false });
  for (let i = 0; i < 1000; i++) bus.publish(probe(i));
  t.true(sub.active);
  t.is(sub.metrics().slow_count, 0);
  clock.advance(1000);
  bus.publish(probe(1001));
  t.false(sub.active, 'past grace, 1000 behind is beyond the hard limit');
});

test('ACK window pauses delivery and the next ACK resumes it', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got: number[] = [];
  const sub = bus.subscribe({ ackWindow: 3, deliver: (ev) => (got.push(ev.seq), true) });
  for (let i = 0; i < 6; i++) bus.publish(probe(i));
  t.deepEqual(got, [1, 2, 3], 'paused at the window');
  t.is(sub.metrics().unacked, 3);
  t.is(sub.metrics().queued, 3);
  sub.ack(1);
  t.deepEqual(got, [1, 2, 3, 4]);
  sub.ack(4);
  t.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  t.is(sub.metrics().last_ack, 4);
  t.is(sub.metrics().pending, 2);
  sub.ack(6);
  t.is(sub.metrics().pending, 0);
  bus.publish(probe(7));
  t.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
});

test('ACK trims queued events up to seq (reference B)', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const sub = bus.subscribe({ maxEvents: 16, deliver: () => false, deferStart: true });
  for (let i = 0; i < 4; i++) bus.publish(probe(i, 2));
  t.is(sub.metrics().pending, reference.B_ack.metrics_before.pending);
  sub.ack(2);
  t.deepEqual(sub.queued().map((e) => e.seq), reference.B_ack.queue_after_ack_2.map((e: { seq: number }) => e.seq));
  t.is(sub.metrics().pending, reference.B_ack.metrics_after.pending);
  t.is(sub.metrics().last_ack, 2);
  t.is(sub.metrics().high_water, 4);
});

test('since_seq replays retained history before live events (reference C)', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  bus.publish(probe(0, 1));
  bus.publish(probe(1, 1));
  bus.publish(probe(2, 2));
  const got: BusEvent[] = [];
  const sub = bus.subscribe({ sinceSeq: 1, deferStart: true, deliver: (ev) => (got.push(ev), true) });
  t.deepEqual(sub.queued().map((e) => e.seq), reference.C_since_seq_replay.queue.map((e: { seq: number }) => e.seq));
  t.is(sub.metrics().last_ack, 1);
  t.is(got.length, 0, 'deferred until start');
  sub.start();
  bus.publish(probe(3, 1));
  t.deepEqual(got.map((e) => e.seq), [2, 3, 4]);
});

test('replay from beyond the retained history says history_truncated', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock, config: { historySize: 3 } });
  for (let i = 0; i < 10; i++) bus.publish(probe(i));
  const got: BusEvent[] = [];
  bus.subscribe({ sinceSeq: 2, deliver: (ev) => (got.push(ev), true) });
  t.deepEqual(got.slice(0, 3).map((e) => e.seq), [8, 9, 10]);
  t.is(got[3]!.type, 'warning');
  t.is(got[3]!.data['reason'], 'history_truncated');
  t.is(got[3]!.data['oldest_seq'], 8);
  // retention by time as well
  const bus2 = new EventBus({ clock, config: { retentionMs: 1000 } });
  bus2.publish(probe(0));
  clock.advance(2000);
  bus2.publish(probe(1));
  t.deepEqual(bus2.historySince(0).map((e) => e.seq), [2]);
});

test('filters: pid and categories (exact type or dotted prefix)', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const byPid: BusEvent[] = [];
  const byCat: BusEvent[] = [];
  bus.subscribe({ pids: [2], deliver: (ev) => (byPid.push(ev), true) });
  bus.subscribe({ categories: ['provisioning', 'boot.alert'], deliver: (ev) => (byCat.push(ev), true) });
  bus.publish(probe(0, 1));
  bus.publish(probe(1, 2));
  bus.publish(complete(1));
  bus.publish({ type: 'boot.alert', pid: null, phase: 'boot', data: {} });
  bus.publish({ type: 'boot.attempt', pid: null, phase: 'boot', data: {} });
  t.deepEqual(byPid.map((e) => e.seq), [2]);
  t.deepEqual(byCat.map((e) => e.type), ['provisioning.complete', 'boot.alert']);
});

test('seq strictly increases and ts never goes backwards even when the clock does', (t) => {
  let now = 5_000;
  const clock: Clock = { now: () => now, setTimeout: () => 0, clearTimeout: () => {} };
  const bus = new EventBus({ clock });
  const got: BusEvent[] = [];
  bus.subscribe({ deliver: (ev) => (got.push(ev), true) });
  for (const n of [5_000, 4_000, 6_000, 1_000, 7_000]) {
    now = n;
    bus.publish(probe(n));
  }
  t.deepEqual(got.map((e) => e.seq), [1, 2, 3, 4, 5]);
  t.deepEqual(got.map((e) => e.ts), [5, 5, 6, 6, 7]);
  t.is(got[0]!.phase, null);
});

test('the producer never blocks or throws because of a consumer', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const good: number[] = [];
  bus.subscribe({ deliver: () => { throw new Error('consumer bug'); } });
  bus.subscribe({ deliver: () => false }); // never takes anything
  bus.subscribe({ deliver: (ev) => (good.push(ev.seq), true) });
  t.notThrows(() => {
    for (let i = 0; i < 500; i++) bus.publish(probe(i));
  });
  t.is(good.length, 500);
});

test('a consumer may ack from inside deliver without re-entrancy trouble', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got: number[] = [];
  const sub = bus.subscribe({ ackWindow: 1, deliver: (ev) => { got.push(ev.seq); sub.ack(ev.seq); return true; } });
  for (let i = 0; i < 5; i++) bus.publish(probe(i));
  t.deepEqual(got, [1, 2, 3, 4, 5]);
});

test('unsubscribe and close end subscriptions with their reason', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const reasons: string[] = [];
  const a = bus.subscribe({ deliver: () => true, onClose: (r) => reasons.push(`a:${r}`) });
  bus.subscribe({ deliver: () => true, onClose: (r) => reasons.push(`b:${r}`) });
  t.true(bus.unsubscribe(a.token));
  t.false(bus.unsubscribe(a.token));
  bus.close();
  t.deepEqual(reasons, ['a:unsubscribed', 'b:bus_closed']);
  bus.publish(probe(1));
  t.is(bus.lastSeq, 0);
});
