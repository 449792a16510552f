/**
 * Simulated CAN devices on a virtual hub for the benches that drive a gateway's jobs (jobs.ts,
 * page.ts): `count` nodes, each a device with its own state directory that runs again what its flash
 * holds, listening on the hub; and a wait until every pending update is confirmed.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CanListener } from '../../src/link/can/listener.js';
import type { CanBus } from '../../src/link/can/bus.js';
import type { VirtualHub } from '../../src/link/can/virtual-net.js';
import { openSimulatedDevice, type SimulatedDevice } from '../../src/persist/simulated-device.js';

export interface BenchDevice {
  node: number;
  dev: SimulatedDevice;
  listener: CanListener;
  ep: CanBus;
}

export async function openBenchDevices(hub: VirtualHub, root: string, count: number, confirmWindowMs: number): Promise<BenchDevice[]> {
  const devs: BenchDevice[] = [];
  for (let node = 1; node <= count; node++) {
    const dev = await openSimulatedDevice({ name: `node${node}`, stateDir: join(root, `node${node}`), confirmWindowMs, events: { emit: () => {} } });
    const restored = dev.engine.restore();
    if (!restored.ok) throw new Error(`node ${node}: restore failed: ${JSON.stringify(restored.error)}`);
    const ep = hub.bus.attach(`node${node}`);
    await ep.open();
    const listener = new CanListener({ bus: ep, node, intake: dev.intake, source: 'can:bench' });
    listener.start();
    devs.push({ node, dev, listener, ep });
  }
  return devs;
}

/** Every device confirmed its last update (an update confirms within its window): the next run starts quiet. */
export async function settled(devs: readonly BenchDevice[]): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (devs.some((d) => d.dev.intake.confirmPending)) {
    if (performance.now() > deadline) throw new Error('devices did not confirm their update within 10 s');
    await sleep(5);
  }
}
