/**
 * CAN link benchmark on the virtual bus. One JSON object per line.
 *
 * 1. Timing model on (500 kbit/s and 1 Mbit/s; FD data phase at 4 × nominal): a 64 KiB image to 1 and to
 *    16 listeners, classic and FD. Payload efficiency = payload bits / bus bits of everything sent
 *    (announce, SYNC, data, ACKs, reports, verdicts); the frame-format limit is computed in the same run
 *    from the same data sent as bare data frames (no protocol at all), and the ratio between them is
 *    the figure that matters (goal ≥ 0.95). Transfer time is wall-clock, next to the ideal wire time of
 *    the bare data frames.
 * 2. Timing model off: frames per second through master → bus → listener → engine, against the goal
 *    (81,000/s = 3 × 27,000) and against a baseline measured in the same process: the same number of
 *    frames through the same bus to as many receivers that only count them. With 16 listeners in one
 *    process every bus frame is processed 16 times (`deliveriesPerSec`).
 *
 * 3. Updates and skip (timing model off, 16 listeners with image stores behind their device intakes):
 *    (a) re-flash of an unchanged 64 KiB image (every node CURRENT) against a full flash of it in the
 *    same run (goal ≤ 2 % of the frames); (b) an update of the running 64 KiB app to a new build against
 *    the first flash of the same size (goal ≤ 1.05 × the frames). Median of several runs, each on fresh devices.
 *
 * Run: npx tsx bench/can.ts
 */
import { DeviceIntake, InMemoryImageStore, InMemoryValueStore, nullEventSink, ProvisioningEngine, systemClock } from '../src/engine/index.js';
import { frameBits, type CanFrame } from '../src/link/can/frame.js';
import { dataId, DEFAULT_ID_PLAN } from '../src/link/can/ids.js';
import { CanListener } from '../src/link/can/listener.js';
import { CanMaster } from '../src/link/can/master.js';
import { VirtualBus, type VirtualBusOptions } from '../src/link/can/virtual-bus.js';
import { imageOfSize } from '../test/support/can-image.js';
import { sensorOfSize } from '../test/update-images.js';

const IMAGE = imageOfSize(65536, 1);
const out = (o: Record<string, unknown>): void => console.log(JSON.stringify(o));
const round = (x: number, d = 4): number => Math.round(x * 10 ** d) / 10 ** d;

async function transfer(busOptions: VirtualBusOptions, nodes: number, fd: boolean) {
  const bus = new VirtualBus(busOptions);
  const listeners: CanListener[] = [];
  for (let n = 1; n <= nodes; n++) {
    const ep = bus.attach();
    await ep.open();
    const engine = new ProvisioningEngine({ clock: systemClock, events: nullEventSink });
    const l = new CanListener({ bus: ep, node: n, intake: new DeviceIntake({ engine, clock: systemClock, events: nullEventSink }) });
    l.start();
    listeners.push(l);
  }
  const ep = bus.attach();
  await ep.open();
  const t0 = performance.now();
  const r = await new CanMaster({ bus: ep, image: IMAGE, nodes: Array.from({ length: nodes }, (_, i) => i + 1), fd }).run();
  const ms = performance.now() - t0;
  for (const l of listeners) l.stop();
  if (!r.ok) throw new Error(`transfer failed: ${JSON.stringify(r.verdicts)}`);
  return { ms, stats: { ...bus.stats }, master: r.stats };
}

/** The frame-format limit: the image as bare data frames, bits and wire time counted the same way. */
function limit(fd: boolean, bitrate: number, dataBitrate: number) {
  const chunk = fd ? 64 : 8;
  let bits = 0;
  let micros = 0;
  for (let off = 0, seq = 0; off < IMAGE.length; off += chunk, seq++) {
    const frame: CanFrame = { id: dataId(DEFAULT_ID_PLAN, seq), data: IMAGE.subarray(off, off + chunk), fd };
    const b = frameBits(frame);
    bits += b.nominal + b.data;
    micros += (b.nominal * 1e6) / bitrate + (b.data * 1e6) / (fd ? dataBitrate : bitrate);
  }
  return { efficiency: (IMAGE.length * 8) / bits, wireMs: micros / 1000 };
}

// --- 1. timing model on ---------------------------------------------------------------------
for (const bitrate of [500_000, 1_000_000]) {
  const dataBitrate = bitrate * 4;
  for (const fd of [false, true]) {
    const lim = limit(fd, bitrate, dataBitrate);
    const frames: Record<number, number> = {};
    for (const nodes of [1, 16]) {
      const { ms, stats, master } = await transfer({ bitrate, dataBitrate }, nodes, fd);
      const busBits = stats.nominalBits + stats.dataBits;
      const efficiency = (IMAGE.length * 8) / busBits;
      frames[nodes] = stats.frames;
      out({
        bench: 'can.transfer', bitrate, dataBitrate: fd ? dataBitrate : undefined, format: fd ? 'fd' : 'classic', nodes, bytes: IMAGE.length,
        ms: Math.round(ms), idealWireMs: round(lim.wireMs, 1), busBusyMs: round(stats.busMicros / 1000, 1),
        frames: stats.frames, framePayloadRatio: round(IMAGE.length / (stats.frames * (fd ? 64 : 8))),
        payloadBitsPerBusBit: round(efficiency), formatLimit: round(lim.efficiency), ratioToLimit: round(efficiency / lim.efficiency),
        goal: 0.95, repairs: master.repairedChunks, ...(nodes === 16 ? { framesVs1Node: round(stats.frames / frames[1]!) } : {}),
      });
    }
  }
}

// --- 2. timing model off: frames per second ---------------------------------------------------
/** Baseline: the same frames through the same kind of bus to a receiver that only counts. */
async function rawBusFps(count: number, receivers: number): Promise<number> {
  const bus = new VirtualBus();
  const tx = bus.attach();
  await tx.open();
  let got = 0;
  let done: () => void = () => {};
  const finished = new Promise<void>((r) => (done = r));
  for (let i = 0; i < receivers; i++) {
    const rx = bus.attach();
    await rx.open();
    rx.receive(() => {
      if (++got === count * receivers) done();
    });
  }
  const t0 = performance.now();
  for (let seq = 0; seq < count; seq++) {
    tx.post({ id: dataId(DEFAULT_ID_PLAN, seq), data: IMAGE.subarray((seq * 8) % IMAGE.length, ((seq * 8) % IMAGE.length) + 8) });
    if (seq % 128 === 127) await new Promise((r) => setImmediate(r));
  }
  await finished;
  return count / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const nodes of [1, 16]) {
  for (let i = 0; i < 3; i++) await transfer({}, nodes, false); // warm-up (JIT)
  const fps: number[] = [];
  const base: number[] = [];
  for (let i = 0; i < 7; i++) {
    const { ms, stats } = await transfer({}, nodes, false);
    fps.push(stats.frames / (ms / 1000));
    base.push(await rawBusFps(stats.frames, nodes));
  }
  const fullBus1M = 1e6 / (frameBits({ id: 0x400, data: IMAGE.subarray(0, 8) }).nominal);
  out({
    bench: 'can.throughput', timing: 'off', format: 'classic', nodes, runs: fps.length,
    framesPerSec: Math.round(median(fps)), deliveriesPerSec: Math.round(median(fps) * nodes), goal: 81_000, ratioToGoal: round(median(fps) / 81_000, 2),
    fullBus1MbitFramesPerSec: Math.round(fullBus1M), ratioToFullBus1Mbit: round(median(fps) / fullBus1M, 1),
    rawBusFramesPerSec: Math.round(median(base)), ratioToRawBus: round(median(fps) / median(base), 3),
  });
}

// --- 3. updates and skip ----------------------------------------------------------------------
/** 16 devices with image and value stores; three transfers in a row: first flash, unchanged re-flash, update. */
async function updateRun(seed: number, nodes = 16) {
  const bus = new VirtualBus();
  const listeners: CanListener[] = [];
  const intakes: DeviceIntake[] = [];
  for (let n = 1; n <= nodes; n++) {
    const ep = bus.attach();
    await ep.open();
    const engine = new ProvisioningEngine({ clock: systemClock, events: nullEventSink, imageStore: new InMemoryImageStore(), valueStore: new InMemoryValueStore() });
    const intake = new DeviceIntake({ engine, clock: systemClock, events: nullEventSink, confirmWindowMs: 5 });
    const l = new CanListener({ bus: ep, node: n, intake });
    l.start();
    listeners.push(l);
    intakes.push(intake);
  }
  const ep = bus.attach();
  await ep.open();
  const ids = Array.from({ length: nodes }, (_, i) => i + 1);
  const v1 = sensorOfSize(seed, 65536);
  const v2 = sensorOfSize(seed + 1, 65536);
  let session = 1;
  const flash = async (image: Uint8Array, expect: string) => {
    const r = await new CanMaster({ bus: ep, image, nodes: ids, session: session++, timeoutMs: 1000 }).run();
    if (!r.verdicts.every((v) => v.status === expect)) throw new Error(`expected ${expect}: ${JSON.stringify(r.verdicts)}`);
    return r.stats.frameBytes / r.stats.chunkSize;
  };
  const first = await flash(v1, 'READY');
  const reflash = await flash(v1, 'CURRENT');
  const update = await flash(v2, 'UPDATED');
  for (const l of listeners) l.stop();
  for (const i of intakes) i.dispose();
  return { bytes: v1.length, first, reflash, update };
}

{
  await updateRun(100); // warm-up
  const runs = await (async () => {
    const out: Array<Awaited<ReturnType<typeof updateRun>>> = [];
    for (let i = 0; i < 5; i++) out.push(await updateRun(200 + 2 * i));
    return out;
  })();
  const fullFrames = median(runs.map((r) => r.first));
  const reflashFrames = median(runs.map((r) => r.reflash));
  const updateFrames = median(runs.map((r) => r.update));
  out({
    bench: 'can.reflash_unchanged', format: 'classic', nodes: 16, bytes: runs[0]!.bytes, runs: runs.length,
    frames: reflashFrames, baselineFullFlashFrames: fullFrames, ratio: round(reflashFrames / fullFrames), goal: 0.02,
  });
  out({
    bench: 'can.update', format: 'classic', nodes: 16, bytes: runs[0]!.bytes, runs: runs.length,
    frames: updateFrames, baselineFirstFlashFrames: fullFrames, ratio: round(updateFrames / fullFrames), goal: 1.05,
  });
}
