/**
 * Property: any interleaving of begin/write/end/abort (and time passing) across sessions, with
 * random chunking of valid and corrupted images, leaves the engine consistent — every session ends
 * READY with an image byte-identical to what was sent, or FAILED/aborted with nothing held — and
 * a valid image is never refused as malformed.
 */
import test from 'ava';
import fc from 'fast-check';
import type { EngineError } from '../src/engine/index.js';
import { chunksOf, fixture, held, rig } from './engine-harness.js';

const POOL = ['t01_minimal.hxe', 't04b_value_cmd_help.hxe', 't05_mailbox_json.hxe', 't06_all_meta_rodata3.hxe',
  't09_stdlib_plus_pragmas.hxe', 't10_test_mailbox_producer.hxe', 'v1_asm_write_hxe_rodata_bss.hxe', 't02_single_instance_reqcap.hxe']
  .map((name) => fixture(name));

type Action =
  | { kind: 'begin'; img: number; corrupt: { pos: number; xor: number } | null; chunk: number; announce: boolean }
  | { kind: 'write'; s: number; dup: boolean; count: number }
  | { kind: 'end'; s: number }
  | { kind: 'abort'; s: number }
  | { kind: 'tick'; ms: number };

const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 2, arbitrary: fc.record({
    kind: fc.constant('begin' as const), img: fc.nat(POOL.length - 1),
    corrupt: fc.option(fc.record({ pos: fc.nat(2000), xor: fc.integer({ min: 1, max: 255 }) }), { freq: 2 }),
    chunk: fc.integer({ min: 1, max: 80 }), announce: fc.boolean(),
  }) },
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('write' as const), s: fc.nat(20), dup: fc.boolean(), count: fc.integer({ min: 1, max: 40 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('end' as const), s: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('abort' as const), s: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 2_500 }) }) },
);

interface Driven {
  id: number;
  bytes: Uint8Array;
  parts: Uint8Array[];
  next: number;
  valid: boolean;
  outcome: 'open' | 'ready' | 'failed' | 'gone';
  errors: EngineError[];
}

test('any interleaving of begin/write/end/abort leaves the engine consistent', (t) => {
  t.timeout(60_000);
  let runs = 0;
  let readyTotal = 0;
  let failedTotal = 0;
  const details = fc.check(fc.property(fc.array(action, { minLength: 1, maxLength: 120, size: 'max' }), (actions) => {
    runs++;
    const r = rig({ config: { writeTimeoutMs: 2_000, totalTimeoutMs: 15_000, maxTasks: 64, closedSessionMemory: 8 } });
    const start = held(r);
    const sessions: Driven[] = [];
    const open = () => sessions.filter((s) => s.outcome === 'open');
    const sync = (s: Driven) => {
      // the engine may have ended a session on its own (timeouts)
      const live = r.engine.sessions().find((x) => x.sessionId === s.id);
      if ((s.outcome === 'open' || s.outcome === 'failed') && !live) s.outcome = 'gone'; // timed out, or a FAILED one expired
      if (s.outcome === 'open' && live?.state === 'FAILED') s.outcome = 'failed';
    };
    const writeOne = (s: Driven, dup: boolean) => {
      const part = s.parts[s.next];
      if (!part) return;
      const w = r.engine.write(s.id, s.next, part);
      if (w.ok) {
        if (w.value.duplicate) throw new Error('fresh chunk reported as duplicate');
        s.next++;
        if (dup) {
          const again = r.engine.write(s.id, s.next - 1, part.slice());
          if (!again.ok || !again.value.duplicate) throw new Error('exact repeat of the last chunk was not acknowledged as duplicate');
        }
      } else {
        s.errors.push(w.error);
      }
      sync(s);
    };
    const endOne = (s: Driven) => {
      const e = r.engine.end(s.id);
      if (e.ok) {
        s.outcome = 'ready';
        if (e.value.pid !== s.id) throw new Error('task PID differs from the session');
      } else {
        s.errors.push(e.error);
        sync(s);
      }
    };

    for (const a of actions) {
      if (a.kind === 'begin') {
        const bytes = POOL[a.img]!.slice();
        const valid = a.corrupt === null;
        if (a.corrupt) {
          const at = a.corrupt.pos % bytes.length;
          bytes[at] = (bytes[at] ?? 0) ^ a.corrupt.xor;
        }
        const b = r.engine.begin({ source: `can:vcan0/master:${sessions.length}`, ...(a.announce ? { totalBytes: bytes.length } : {}) });
        if (!b.ok) throw new Error(`begin failed: ${b.error.message}`);
        sessions.push({ id: b.value.sessionId, bytes, parts: chunksOf(bytes, a.chunk), next: 0, valid, outcome: 'open', errors: [] });
      } else if (a.kind === 'tick') {
        r.clock.advance(a.ms);
        sessions.forEach(sync);
      } else {
        const list = open();
        const s = list[a.s % Math.max(1, list.length)];
        if (!s) continue;
        if (a.kind === 'write') for (let i = 0; i < a.count && s.outcome === 'open'; i++) writeOne(s, a.dup && i === 0);
        else if (a.kind === 'end') endOne(s);
        else if (a.kind === 'abort') {
          if (!r.engine.abort(s.id, 'property').ok) throw new Error('abort of an open session failed');
          s.outcome = 'gone';
        }
      }
    }
    // finish every open session: send the rest and end it
    for (const s of open()) {
      while (s.outcome === 'open' && s.next < s.parts.length) writeOne(s, false);
      if (s.outcome === 'open') endOne(s);
      // a corrupted table or section size can claim bytes that never come: the engine says
      // "incomplete" and leaves the decision to the sender, whose only move is to abort
      if (s.outcome === 'open' && !s.valid && s.errors.at(-1)?.reason === 'incomplete') {
        if (!r.engine.abort(s.id, 'sender gave up').ok) throw new Error('abort of an incomplete session failed');
        s.outcome = 'gone';
      }
    }
    for (const s of sessions) {
      if (s.outcome === 'open') throw new Error(`session ${s.id} is still open after its last chunk and end: ${JSON.stringify(s.errors.at(-1))}`);
      sync(s);
      if (s.outcome === 'failed') {
        if (!r.engine.abort(s.id, 'cleanup').ok) throw new Error('abort of a FAILED session failed');
        s.outcome = 'gone';
      }
      if (s.valid) {
        const malformed = s.errors.find((e) => e.code === 'EBADMSG' && e.reason !== 'incomplete');
        if (malformed) throw new Error(`a valid image was refused as malformed: ${malformed.message}`);
      }
    }

    // READY sessions: the task holds exactly the bytes that were sent; nothing else is held
    const ready = sessions.filter((s) => s.outcome === 'ready');
    readyTotal += ready.length;
    failedTotal += sessions.length - ready.length;
    const ps = r.engine.ps();
    if (ps.map((x) => x.pid).join() !== ready.map((s) => s.id).join()) throw new Error('task table differs from the READY sessions');
    for (const s of ready) {
      const image = r.engine.taskImage(s.id);
      if (!image || Buffer.compare(image, s.bytes) !== 0) throw new Error(`task ${s.id} holds different bytes than were sent`);
    }
    const res = r.engine.resources();
    const sum = (f: (x: (typeof ps)[number]) => number) => ps.reduce((acc, x) => acc + f(x), 0);
    const expected = {
      sessions: 0, bufferedBytes: 0, reservedPids: 0, pids: ready.length, tasks: ready.length,
      code: sum((x) => x.sizes.code), rodata: sum((x) => x.sizes.rodata), data: sum((x) => x.sizes.bss), stack: sum((x) => x.sizes.stack),
      values: sum((x) => x.counts.values), commands: sum((x) => x.counts.commands), mailboxes: sum((x) => x.counts.mailboxes), timers: 0,
    };
    const actual = {
      sessions: res.sessions, bufferedBytes: res.bufferedBytes, reservedPids: res.reservedPids, pids: res.pids, tasks: res.tasks,
      code: res.arenasUsed.code, rodata: res.arenasUsed.rodata, data: res.arenasUsed.data, stack: res.arenasUsed.stack,
      values: res.registry.values, commands: res.registry.commands, mailboxes: res.registry.mailboxes, timers: res.timers,
    };
    if (JSON.stringify(actual) !== JSON.stringify(expected)) throw new Error(`resources ${JSON.stringify(actual)} != ${JSON.stringify(expected)}`);
    for (const s of ready) if (!r.engine.unload(s.id).ok) throw new Error('unload failed');
    if (JSON.stringify(held(r)) !== JSON.stringify(start)) throw new Error(`after unloading: ${JSON.stringify(held(r))} != ${JSON.stringify(start)}`);
  }), { numRuns: 200, seed: 0x5eed });
  if (details.failed) {
    t.log(`counterexample: ${JSON.stringify(details.counterexample)}`);
    t.fail(`property failed after ${details.numRuns} runs (seed ${details.seed}, path ${details.counterexamplePath}): ${String(details.errorInstance)}`);
    return;
  }
  t.log(`${runs} runs, ${readyTotal} sessions READY, ${failedTotal} failed/aborted/timed out`);
  t.true(readyTotal > 50 && failedTotal > 50, 'both outcomes were exercised');
});
