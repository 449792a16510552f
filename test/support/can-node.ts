/**
 * One simulated CAN node for the in-process CAN tests: a device (flash and FRAM files in `dir`) behind
 * its intake, a CanListener on its own endpoint of the test bus, and `until(pred)`, which resolves
 * once `pred` holds, checked now and after every event of the device (waiting on events, not time).
 */
import type { EngineEvent } from '../../src/engine/index.js';
import type { CanBus } from '../../src/link/can/bus.js';
import type { FaultOptions } from '../../src/link/can/faults.js';
import { CanListener } from '../../src/link/can/listener.js';
import type { DeviceGeometry } from '../../src/persist/index.js';
import { openSimulatedDevice, type SimulatedDevice } from '../../src/persist/simulated-device.js';
import type { TestBus } from './can-bus.js';

export interface CanNode {
  node: number;
  dir: string;
  dev: SimulatedDevice;
  listener: CanListener;
  ep: CanBus;
  until(pred: () => boolean): Promise<void>;
}

export interface CanNodeOptions {
  confirmWindowMs: number;
  geometry?: Partial<DeviceGeometry>;
  faults?: FaultOptions;
  /** false: a node that decodes neither compressed images nor patches. */
  codec?: false;
  /** Restore the committed image first, as a device does at power-on (default true). */
  restore?: boolean;
}

export async function bootCanNode(bus: TestBus, node: number, dir: string, opts: CanNodeOptions): Promise<CanNode> {
  const waiters: Array<{ pred: () => boolean; resolve: () => void }> = [];
  const check = (): void => {
    for (const w of waiters.splice(0)) {
      if (w.pred()) w.resolve();
      else waiters.push(w);
    }
  };
  const dev = await openSimulatedDevice({
    name: `node${node}`, stateDir: dir, confirmWindowMs: opts.confirmWindowMs,
    events: { emit: (_e: EngineEvent) => queueMicrotask(check) },
    ...(opts.geometry ? { geometry: opts.geometry } : {}),
    ...(opts.codec === false ? { codec: false as const } : {}),
  });
  if (opts.restore !== false) {
    const restored = dev.engine.restore();
    if (!restored.ok) throw new Error(`node ${node}: restore failed: ${JSON.stringify(restored.error)}`);
  }
  const ep = await bus.endpoint(opts.faults ? { faults: opts.faults } : {});
  const listener = new CanListener({ bus: ep, node, intake: dev.intake, source: 'can:test' });
  listener.start();
  return { node, dir, dev, listener, ep, until: (pred) => (pred() ? Promise.resolve() : new Promise((resolve) => waiters.push({ pred, resolve }))) };
}
