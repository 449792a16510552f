/**
 * A device in memory for the power-cut sweeps (persist-update-fault, persist-delta-fault): its flash
 * and FRAM bytes, a copy of them, and a boot that attaches the models (behind a fault plan if given),
 * recovers and runs the stored image again, with a fake clock the test advances.
 */
import { DeviceIntake, FakeClock, ProvisioningEngine } from '../../src/engine/index.js';
import { bootMemory, openStores, type FaultPlan, type SlotImageStore, type ValueJournal } from '../../src/persist/index.js';
import { WaitingSink } from './event-waiter.js';

export interface Bytes { flashBytes: Uint8Array; framBytes: Uint8Array }
export const copy = (b: Bytes): Bytes => ({ flashBytes: b.flashBytes.slice(), framBytes: b.framBytes.slice() });

export interface Dev {
  clock: FakeClock;
  sink: WaitingSink;
  imageStore: SlotImageStore;
  valueStore: ValueJournal;
  engine: ProvisioningEngine;
  intake: DeviceIntake;
}

/** Attach models to the bytes (behind `plan` if given), recover, and boot the stored image. */
export async function boot(b: Bytes, confirmWindowMs: number, plan?: FaultPlan): Promise<Dev> {
  const { flash, fram } = bootMemory(b.flashBytes, b.framBytes, plan);
  const clock = new FakeClock(1_000);
  const sink = new WaitingSink();
  const { imageStore, valueStore } = await openStores(flash, fram, sink, { clock });
  const engine = new ProvisioningEngine({ clock, events: sink, imageStore, valueStore });
  const intake = new DeviceIntake({ engine, clock, events: sink, confirmWindowMs });
  const restored = engine.restore();
  if (!restored.ok) throw new Error(`restore: ${restored.error.message}`);
  return { clock, sink, imageStore, valueStore, engine, intake };
}
