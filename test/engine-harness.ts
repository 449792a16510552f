/**
 * Shared set-up for the engine's tests (test/engine-*.test.ts): fixtures, an engine on a fake
 * clock with a collecting sink, chunked streaming, image building and the leak-check snapshot.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { buildImage, type ImageSpec } from '../src/hxe/index.js';
import {
  CollectingEventSink, FakeClock, ProvisioningEngine, type EngineOptions, type EngineError, type EngineResources, type TaskInfo,
} from '../src/engine/index.js';
import type { Result } from '../src/hxe/result.js';

const fixtureDir = new URL('./fixtures/', import.meta.url);

export const fixtureNames: string[] = readdirSync(fixtureDir).filter((f) => f.endsWith('.hxe')).sort();

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(new URL(name, fixtureDir)));
}

export function fixtureJson(name: string): any {
  return JSON.parse(readFileSync(new URL(name.replace(/\.hxe$/, '.json'), fixtureDir), 'utf8'));
}

export function scenarios(): any {
  return JSON.parse(readFileSync(new URL('reference/scenarios.json', fixtureDir), 'utf8'));
}

export interface Rig {
  engine: ProvisioningEngine;
  clock: FakeClock;
  sink: CollectingEventSink;
}

export function rig(options: Partial<Omit<EngineOptions, 'clock' | 'events'>> = {}): Rig {
  const clock = new FakeClock(1_000);
  const sink = new CollectingEventSink(clock);
  const engine = new ProvisioningEngine({ clock, events: sink, ...options });
  return { engine, clock, sink };
}

export function chunksOf(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

/** begin, every chunk in order, end; the first error is returned. */
export function stream(engine: ProvisioningEngine, bytes: Uint8Array, chunkSize: number, source = 'uart:/dev/ttyTEST',
  begin: { totalBytes?: number; expectedCrc?: number } = {}): Result<TaskInfo, EngineError> {
  const b = engine.begin({ source, ...begin });
  if (!b.ok) return b;
  const id = b.value.sessionId;
  let seq = 0;
  for (const c of chunksOf(bytes, chunkSize)) {
    const w = engine.write(id, seq++, c);
    if (!w.ok) return w;
  }
  return engine.end(id);
}

/** Everything a load can hold, plus the fake clock's pending timers. */
export function held(r: Rig): EngineResources & { fakeTimers: number } {
  return { ...r.engine.resources(), fakeTimers: r.clock.pendingTimers() };
}

export function build(spec: ImageSpec): Uint8Array {
  const r = buildImage(spec);
  if (!r.ok) throw new Error(`buildImage: ${r.error.field}: ${r.error.message}`);
  return r.value;
}

/** A small valid program: `words` 32-bit words of code, distinct per `seed`. */
export function code(words: number, seed = 1): Uint8Array {
  const c = new Uint8Array(words * 4);
  for (let i = 0; i < c.length; i++) c[i] = (seed * 31 + i * 7) & 0xff;
  return c;
}

export function unwrap<T>(r: Result<T, EngineError>): T {
  if (!r.ok) throw new Error(`unexpected error: ${JSON.stringify(r.error)}`);
  return r.value;
}
