import type { EngineEvent, EventSink, ImageMeta, TimerHandle } from '../engine/ports.js';
import { memoryBacking, type BlockDevice } from './block-device.js';
import { FaultPlan, FaultyDevice } from './fault.js';
import { Fram } from './fram.js';
import { NorFlash } from './nor-flash.js';

/**
 * Helpers shared by the persistence tests, the fault-injection sweeps, the crash-test child and
 * the bench: deterministic images, manifest entries, a manual clock, an event recorder, and
 * "boot" (attach fresh device models to surviving bytes, optionally behind a fault plan).
 */

/** Deterministic image bytes: the same (seed, length) always gives the same image. */
export function patternImage(seed: number, length: number): Uint8Array {
  const b = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export function testMeta(version: string, securityCounter: number, overrides: Partial<ImageMeta> = {}): ImageMeta {
  return {
    appName: 'app', version, securityCounter, reqCaps: 0, codeLen: 0, roLen: 0, bssSize: 0,
    source: 'test', crc32: 0, sha256: '', bootPriority: 0, ...overrides,
  };
}

export class EventRecorder implements EventSink {
  readonly events: EngineEvent[] = [];
  emit(e: EngineEvent): void {
    this.events.push(e);
  }
  ofType(type: EngineEvent['type']): EngineEvent[] {
    return this.events.filter((e) => e.type === type);
  }
}

/** A clock whose timers fire only when the test advances it. */
export class ManualClock {
  private t = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private nextId = 1;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: TimerHandle): void {
    this.timers.delete(h as number);
  }
  pending(): number {
    return this.timers.size;
  }
  advance(ms: number): void {
    this.t += ms;
    for (const [id, tm] of [...this.timers].sort((a, b) => a[1].at - b[1].at)) {
      if (tm.at <= this.t) {
        this.timers.delete(id);
        tm.fn();
      }
    }
  }
}

/** Attach flash and FRAM models to surviving bytes (a "reboot"); behind `plan` when given. */
export function bootMemory(flashBytes: Uint8Array, framBytes: Uint8Array, plan?: FaultPlan): { flash: BlockDevice; fram: BlockDevice } {
  const flash = NorFlash.attach(memoryBacking(flashBytes));
  const fram = Fram.attach(memoryBacking(framBytes));
  if (!plan) return { flash, fram };
  return { flash: new FaultyDevice(flash, plan, 'flash'), fram: new FaultyDevice(fram, plan, 'fram') };
}
