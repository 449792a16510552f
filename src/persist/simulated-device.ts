/**
 * One simulated device: an engine whose image and value stores live in memory-mapped flash and
 * FRAM files under the device's state directory. Every listener (UART, CAN), the gateway and the
 * demo assemble a device here, so there is one way to make one.
 */
import { mkdirSync } from 'node:fs';
import { DeviceIntake, ProvisioningEngine, systemClock, type Clock, type EngineConfigInput, type EventSink, type UpdatePolicy, type IntakeOptions } from '../engine/index.js';
import { openDevice, type Device, type DeviceGeometry } from './device.js';

export interface SimulatedDeviceOptions {
  name: string;
  /** Created when missing; holds flash.bin and fram.bin. */
  stateDir: string;
  geometry?: Partial<DeviceGeometry>;
  events: EventSink;
  engineConfig?: EngineConfigInput;
  clock?: Clock;
  /** What an image of a running app does: `replace` (update, the default) or `reject`. */
  update?: UpdatePolicy;
  /** How long an update must stay loaded before it is confirmed (default 10 s). */
  confirmWindowMs?: number;
  /** What the device decodes (IntakeOptions.codec; default: deflate and patches; false: raw images only). */
  codec?: IntakeOptions['codec'];
}

export interface SimulatedDevice {
  name: string;
  engine: ProvisioningEngine;
  /** Where every link, the control port and the boot sources hand images (src/engine/intake.ts). */
  intake: DeviceIntake;
  storage: Device;
  close(): Promise<void>;
}

/** Events from a device carry its name in `data.device`, so one bus can serve many devices. */
export function deviceEventSink(sink: EventSink, device: string): EventSink {
  return { emit: (e) => sink.emit({ ...e, data: { ...e.data, device } }) };
}

export async function openSimulatedDevice(opts: SimulatedDeviceOptions): Promise<SimulatedDevice> {
  mkdirSync(opts.stateDir, { recursive: true });
  const events = deviceEventSink(opts.events, opts.name);
  const storage = await openDevice(opts.stateDir, opts.geometry ?? {}, events);
  const engineOpts: ConstructorParameters<typeof ProvisioningEngine>[0] = {
    clock: opts.clock ?? systemClock,
    events,
    imageStore: storage.imageStore,
    valueStore: storage.valueStore,
  };
  if (opts.engineConfig) engineOpts.config = opts.engineConfig;
  const engine = new ProvisioningEngine(engineOpts);
  const intake = new DeviceIntake({
    engine, clock: engineOpts.clock, events,
    ...(opts.update ? { update: opts.update } : {}),
    ...(opts.confirmWindowMs !== undefined ? { confirmWindowMs: opts.confirmWindowMs } : {}),
    ...(opts.codec !== undefined ? { codec: opts.codec } : {}),
  });
  return {
    name: opts.name,
    engine,
    intake,
    storage,
    async close() {
      intake.dispose();
      await storage.valueStore.flush();
      await storage.close();
    },
  };
}
