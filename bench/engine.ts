/**
 * Engine benchmark: streaming load of a 64 KiB image in 8- and 64-byte chunks (chunks/s, µs per
 * chunk) against the raw cost of a running zlib.crc32 over the same chunks in the same process,
 * and the heap an idle streaming session costs (1,000 concurrent sessions) against a bare
 * per-session record. One JSON object per line.
 *
 *   npx tsx bench/engine.ts
 *
 * Goals (issue 3): ≥ 200k chunks/s with 8-byte chunks; < 16 KiB heap per idle session.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { crc32 } from 'node:zlib';
import { buildImage } from '../src/hxe/index.js';
import { FakeClock, ProvisioningEngine, systemClock, type EventSink } from '../src/engine/index.js';

v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const IMAGE_BYTES = 64 * 1024;

function image64k(): Uint8Array {
  // code + rodata sized so the whole file is exactly 64 KiB (v2 header 96 bytes, no metadata)
  const codeLen = 60 * 1024;
  const code = new Uint8Array(codeLen);
  for (let i = 0; i < codeLen; i++) code[i] = (i * 13) & 0xff;
  const rodata = new Uint8Array(IMAGE_BYTES - 96 - codeLen).fill(0x5a);
  const r = buildImage({ appName: 'bench64k', code, rodata, bssSize: 1024 });
  if (!r.ok) throw new Error(r.error.message);
  if (r.value.length !== IMAGE_BYTES) throw new Error(`image is ${r.value.length} bytes`);
  return r.value;
}

function chunksOf(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

let eventCount = 0;
const countingSink: EventSink = { emit: () => void eventCount++ };

function streamOnce(engine: ProvisioningEngine, chunks: Uint8Array[], totalBytes: number | undefined): number {
  const b = engine.begin({ source: 'bench:mem', ...(totalBytes !== undefined ? { totalBytes } : {}) });
  if (!b.ok) throw new Error(b.error.message);
  const id = b.value.sessionId;
  for (let seq = 0; seq < chunks.length; seq++) {
    const w = engine.write(id, seq, chunks[seq]!);
    if (!w.ok) throw new Error(w.error.message);
  }
  const e = engine.end(id);
  if (!e.ok) throw new Error(e.error.message);
  engine.unload(e.value.pid);
  return chunks.length;
}

function crcBaseline(chunks: Uint8Array[]): number {
  let c = 0;
  for (let i = 0; i < chunks.length; i++) c = crc32(chunks[i]!, c);
  return c;
}

/** Best of `rounds` timings of `fn`, each over enough repetitions to last ≥ 200 ms. */
function measure(fn: () => number, rounds = 5): { perSecond: number; usPerItem: number } {
  for (let i = 0; i < 3; i++) fn(); // warm-up
  let best = Infinity;
  let itemsPerRun = 0;
  for (let r = 0; r < rounds; r++) {
    let items = 0;
    let reps = 0;
    const t0 = process.hrtime.bigint();
    let elapsed = 0;
    do {
      items += fn();
      reps++;
      elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    } while (elapsed < 0.2);
    itemsPerRun = items / reps;
    best = Math.min(best, elapsed / reps);
  }
  return { perSecond: itemsPerRun / best, usPerItem: (best / itemsPerRun) * 1e6 };
}

const img = image64k();
const engine = new ProvisioningEngine({ clock: new FakeClock(), events: countingSink });

for (const size of [8, 64]) {
  const chunks = chunksOf(img, size);
  for (const announced of [true, false]) {
    const eng = measure(() => streamOnce(engine, chunks, announced ? img.length : undefined));
    const base = measure(() => (crcBaseline(chunks), chunks.length));
    console.log(JSON.stringify({
      bench: 'engine.stream', imageBytes: img.length, chunkBytes: size, chunks: chunks.length, totalAnnounced: announced,
      chunksPerSec: Math.round(eng.perSecond), usPerChunk: +eng.usPerItem.toFixed(3),
      baseline: 'zlib.crc32 running over the same chunks', baselineChunksPerSec: Math.round(base.perSecond),
      baselineUsPerChunk: +base.usPerItem.toFixed(3), ratio: +(eng.usPerItem / base.usPerItem).toFixed(2),
      goalChunksPerSec: size === 8 ? 200_000 : undefined, meetsGoal: size === 8 ? eng.perSecond >= 200_000 : undefined,
    }));
  }
}

// Heap per idle session: 1,000 sessions opened on the real clock (their timers are real Timeout objects).
function heapNow(): { heap: number; buffers: number } {
  gc();
  gc();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, buffers: m.arrayBuffers };
}
const SESSIONS = 1000;
{
  const concurrent = new ProvisioningEngine({ clock: systemClock, events: countingSink, config: { maxSessions: SESSIONS, maxTasks: SESSIONS } });
  // warm the code paths so compiled code is not counted
  const w = concurrent.begin({ source: 'bench:warm' });
  if (w.ok) concurrent.abort(w.value.sessionId, 'warm');
  const before = heapNow();
  const ids: number[] = [];
  for (let i = 0; i < SESSIONS; i++) {
    const b = concurrent.begin({ source: `can:vcan0/master:${i}` });
    if (!b.ok) throw new Error(b.error.message);
    ids.push(b.value.sessionId);
  }
  const after = heapNow();
  // baseline: a bare record per session holding the same initial 256-byte buffer
  const bare: Array<{ id: number; buffer: Uint8Array }> = [];
  const b0 = heapNow();
  for (let i = 0; i < SESSIONS; i++) bare.push({ id: i, buffer: new Uint8Array(256) });
  const b1 = heapNow();
  const perSession = (after.heap - before.heap) / SESSIONS;
  const buffersPerSession = (after.buffers - before.buffers) / SESSIONS;
  const basePerSession = (b1.heap - b0.heap) / SESSIONS;
  console.log(JSON.stringify({
    bench: 'engine.idle_sessions', sessions: SESSIONS,
    heapBytesPerSession: Math.round(perSession), bufferBytesPerSession: Math.round(buffersPerSession),
    baseline: 'bare {id, Uint8Array(256)} record per session', baselineHeapBytesPerSession: Math.round(basePerSession),
    ratio: +(perSession / Math.max(1, basePerSession)).toFixed(2),
    goalBytesPerSession: 16 * 1024, meetsGoal: perSession < 16 * 1024,
  }));
  for (const id of ids) concurrent.abort(id, 'bench done');
  if (concurrent.resources().sessions !== 0 || concurrent.resources().pids !== 0) throw new Error('sessions leaked');
  void bare.length;
}
console.log(JSON.stringify({ bench: 'engine.events', emitted: eventCount }));
