import test from 'ava';
import { FakeClock } from '../src/engine/clock.js';
import { EventBus, progressPercent, type BusEvent } from '../src/gateway/events/index.js';

function collect(bus: EventBus): BusEvent[] {
  const got: BusEvent[] = [];
  bus.subscribe({ deliver: (ev) => (got.push(ev), true) });
  return got;
}

const progress = (sessionId: number, bytes: number, total: number) => ({
  type: 'provisioning.progress' as const,
  pid: null,
  phase: 'write' as const,
  data: { sessionId, bytes, total },
});

test('10,000 progress updates in one second: at most 10 delivered, then a final 100% before complete', (t) => {
  const clock = new FakeClock(0); // (an epoch start would add float error to 10,000 tiny steps)
  const bus = new EventBus({ clock });
  const got = collect(bus);
  const total = 10_000;
  for (let i = 0; i < total; i++) {
    if (i > 0) clock.advance(0.1); // updates at t = 0 … 999.9 ms: one second
    bus.emit(progress(7, i, total));
  }
  const during = got.filter((e) => e.type === 'provisioning.progress').length;
  bus.emit({ type: 'provisioning.complete', pid: 3, phase: 'end', data: { sessionId: 7 } });
  const prog = got.filter((e) => e.type === 'provisioning.progress');
  t.true(during <= 10, `delivered ${during} progress events in the second`);
  t.true(during >= 9, 'the rate limit still lets about progressHz through');
  t.is(prog.length, during + 1, 'exactly one more progress event: the final 100%');
  const last = got.at(-1)!;
  const beforeLast = got.at(-2)!;
  t.is(last.type, 'provisioning.complete');
  t.is(beforeLast.type, 'provisioning.progress');
  t.is(beforeLast.data['percent'], 100);
  // monotonic percent, strictly increasing seq, non-decreasing ts
  for (let i = 1; i < prog.length; i++) {
    t.true((prog[i]!.data['percent'] as number) > (prog[i - 1]!.data['percent'] as number));
  }
  for (let i = 1; i < got.length; i++) {
    t.true(got[i]!.seq > got[i - 1]!.seq);
    t.true(got[i]!.ts >= got[i - 1]!.ts);
  }
  t.is(bus.stats().offered, total + 1);
});

test('progress only on whole-percent steps, never backwards', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got = collect(bus);
  const steps = [0, 0.5, 1, 1.9, 5, 3, 5, 4, 6.2, 6.9];
  for (const p of steps) {
    bus.emit({ type: 'provisioning.progress', pid: 1, phase: 'write', data: { percent: p } });
    clock.advance(1000); // rate limit is not the constraint here
  }
  t.deepEqual(got.map((e) => e.data['percent']), [0, 1, 5, 6]);
});

test('a value held back by the rate limit is sent when the interval ends', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock, config: { progressHz: 10 } });
  const got = collect(bus);
  bus.emit(progress(1, 10, 100)); // t=0 passes
  clock.advance(10);
  bus.emit(progress(1, 20, 100)); // held
  clock.advance(10);
  bus.emit(progress(1, 30, 100)); // replaces the held one
  t.deepEqual(got.map((e) => e.data['percent']), [10]);
  clock.advance(79);
  t.is(got.length, 1, 'not before 100 ms');
  clock.advance(1);
  t.deepEqual(got.map((e) => e.data['percent']), [10, 30]);
});

test('error and aborted end a session without a made-up 100%; complete without progress gets none', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got = collect(bus);
  bus.emit(progress(1, 50, 100));
  bus.emit({ type: 'provisioning.error', pid: null, phase: 'verify', data: { sessionId: 1, code: 'EBADMSG' } });
  bus.emit(progress(2, 10, 100));
  clock.advance(5);
  bus.emit(progress(2, 60, 100)); // held
  bus.emit({ type: 'provisioning.aborted', pid: null, phase: 'write', data: { sessionId: 2 } });
  bus.emit({ type: 'provisioning.complete', pid: 9, phase: 'end', data: {} });
  t.deepEqual(got.map((e) => `${e.type}:${e.data['percent'] ?? ''}`), [
    'provisioning.progress:50',
    'provisioning.error:',
    'provisioning.progress:10',
    'provisioning.aborted:',
    'provisioning.complete:',
  ]);
  clock.advance(1000);
  t.is(got.length, 5, 'the held 60% was discarded with its session');
});

test('a held 100% is flushed at once by complete', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got = collect(bus);
  bus.emit(progress(4, 1, 100));
  bus.emit(progress(4, 100, 100)); // held by the rate limit
  bus.emit({ type: 'provisioning.complete', pid: 2, phase: 'end', data: { sessionId: 4 } });
  t.deepEqual(got.map((e) => `${e.type}:${e.data['percent'] ?? ''}`), [
    'provisioning.progress:1',
    'provisioning.progress:100',
    'provisioning.complete:',
  ]);
  t.is(got[1]!.data['bytes'], 100, 'the producer\'s own 100% event is the one sent');
});

test('progressPercent reads percent, or bytes over total', (t) => {
  t.is(progressPercent({ percent: 42.9 }), 42);
  t.is(progressPercent({ bytesWritten: 50, totalBytes: 200 }), 25);
  t.is(progressPercent({ bytes: 5, total: 0 }), null);
  t.is(progressPercent({ percent: 180 }), 100);
});

test('a non-terminal error (terminal:false) keeps the session\'s progress state', (t) => {
  const clock = new FakeClock(0);
  const bus = new EventBus({ clock });
  const got = collect(bus);
  bus.emit({ type: 'provisioning.progress', pid: 5, phase: 'write', data: { percent: 40 } });
  bus.emit({ type: 'provisioning.error', pid: 5, phase: 'write', data: { reason: 'seq_gap', terminal: false } });
  clock.advance(200);
  bus.emit({ type: 'provisioning.progress', pid: 5, phase: 'write', data: { percent: 30 } }); // backwards: not shown
  bus.emit({ type: 'provisioning.complete', pid: 5, phase: 'end', data: {} });
  t.deepEqual(got.map((e) => `${e.type}:${e.data['percent'] ?? ''}`), [
    'provisioning.progress:40',
    'provisioning.error:',
    'provisioning.progress:100',
    'provisioning.complete:',
  ]);
});
