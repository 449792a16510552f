/**
 * The `Flasher` interface on both links, with real parts: CAN devices (flash and FRAM in state
 * directories, behind their intakes and CanListeners) on an in-process virtual bus, and a UART
 * device (runUartDevice on a state directory) at the far end of a socat pty pair. Every workflow
 * runs twice on the same device state: a first image is installed (the second time: an update),
 * the same image again is `current`, another build is `updated`; a cancelled transfer leaves the
 * devices on the image they ran. Waits are on events and promises, never on sleeps.
 */
import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EngineEvent, EventSink } from '../src/engine/index.js';
import type { FlashProgress, FlashResult, TargetOutcome, TargetVerdict } from '../src/link/flasher.js';
import type { CanBus } from '../src/link/can/bus.js';
import { CanFlasher } from '../src/link/can/flasher.js';
import { CanListener, type ListenerEvent } from '../src/link/can/listener.js';
import { namedVirtualBus } from '../src/link/can/virtual-bus.js';
import { runUartDevice } from '../src/link/uart/device-command.js';
import { UartFlasher } from '../src/link/uart/flasher.js';
import { openSimulatedDevice, type SimulatedDevice } from '../src/persist/simulated-device.js';
import { haveSocat, startPtyPair, type PtyPair } from './support/pty.js';
import { sensorBuild, sensorOfSize, sha256Hex } from './update-images.js';

const CONFIRM_MS = 50;
const short = (image: Uint8Array): string => sha256Hex(image).slice(0, 6);

/** Calls `check` after every event a device emits; `until` resolves once a predicate holds. */
class Waiter {
  private readonly waiters: Array<{ pred: () => boolean; resolve: () => void }> = [];
  readonly sink: EventSink = { emit: (_e: EngineEvent) => queueMicrotask(() => this.check()) };
  check(): void {
    for (const w of this.waiters.splice(0)) {
      if (w.pred()) w.resolve();
      else this.waiters.push(w);
    }
  }
  until(pred: () => boolean): Promise<void> {
    return pred() ? Promise.resolve() : new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }
}

/** The device's update is confirmed: nothing pending, the active stored image is known-good. */
const settled = (d: SimulatedDevice): boolean => !d.intake.confirmPending && (d.storage.imageStore.active()?.confirmed ?? true);
const runs = (d: SimulatedDevice): string | undefined => d.intake.primary()?.sha256;

// --- CAN ------------------------------------------------------------------------------------

interface CanNode {
  node: number;
  dev: SimulatedDevice;
  waiter: Waiter;
  listener: CanListener;
  ep: CanBus;
  events: ListenerEvent[];
}

interface CanRig {
  address: string;
  nodes: CanNode[];
  flasher: CanFlasher;
}

async function canRig(t: ExecutionContext, count: number): Promise<CanRig> {
  const name = `flasher-${randomUUID()}`;
  const root = mkdtempSync(join(tmpdir(), 'flasher-can-'));
  const nodes: CanNode[] = [];
  for (let node = 1; node <= count; node++) {
    const waiter = new Waiter();
    const dev = await openSimulatedDevice({ name: `node${node}`, stateDir: join(root, `node${node}`), events: waiter.sink, confirmWindowMs: CONFIRM_MS });
    const ep = namedVirtualBus(name).attach(`node${node}`);
    await ep.open();
    const events: ListenerEvent[] = [];
    const listener = new CanListener({
      bus: ep, node, intake: dev.intake, source: 'can:test',
      onEvent: (e) => {
        events.push(e);
        waiter.check();
      },
    });
    listener.start();
    nodes.push({ node, dev, waiter, listener, ep, events });
  }
  const flasher = await CanFlasher.open('bench-can', `virtual:${name}`);
  t.teardown(async () => {
    await flasher.close();
    for (const n of nodes) {
      await n.waiter.until(() => settled(n.dev));
      n.listener.stop();
      await n.ep.close();
      await n.dev.close();
    }
    rmSync(root, { recursive: true, force: true });
  });
  return { address: `virtual:${name}`, nodes, flasher };
}

const targetsOf = (r: CanRig): string[] => r.nodes.map((n) => String(n.node));

async function canFlash(r: CanRig, image: Uint8Array, extra: { signal?: AbortSignal; onProgress?: (p: FlashProgress) => void } = {}): Promise<{ res: FlashResult; progress: FlashProgress[] }> {
  const progress: FlashProgress[] = [];
  const res = await r.flasher.flash({
    image, targets: targetsOf(r), options: { timeoutMs: 1000 },
    onProgress: (p) => {
      progress.push(p);
      extra.onProgress?.(p);
    },
    ...(extra.signal ? { signal: extra.signal } : {}),
  });
  // The next flash starts once every device has confirmed what it took.
  await Promise.all(r.nodes.map((n) => n.waiter.until(() => settled(n.dev))));
  return { res, progress };
}

const okAll = (t: ExecutionContext, verdicts: TargetVerdict[], outcome: TargetOutcome, from: string | null, to: string, what: string): void => {
  for (const v of verdicts) {
    if (!v.ok) {
      t.fail(`${what}: target ${v.target} failed: ${JSON.stringify(v)}`);
      continue;
    }
    t.is(v.outcome, outcome, `${what}: target ${v.target}`);
    t.is(v.from, from, `${what}: from on ${v.target}`);
    t.is(v.to, to, `${what}: to on ${v.target}`);
    t.false(v.confirmPending);
  }
};

test('CAN flasher, 3 nodes: installed on all, the same image again current on all, another build updated (twice on the same devices)', async (t) => {
  t.timeout(120_000);
  const r = await canRig(t, 3);
  let previous: Uint8Array | null = null;
  for (const round of [0, 1]) {
    const a = sensorBuild(10 * round + 1, 2048);
    const b = sensorBuild(10 * round + 2, 2048);

    const first = await canFlash(r, a);
    t.deepEqual(first.res.verdicts.map((v) => v.target), ['1', '2', '3'], 'one verdict per target, in order');
    okAll(t, first.res.verdicts, previous ? 'updated' : 'installed', previous ? short(previous) : null, short(a), `round ${round}: first`);
    t.true(r.nodes.every((n) => runs(n.dev) === sha256Hex(a)));
    const last = first.progress.at(-1)!;
    t.is(last.phase, 'done');
    t.is(last.totalBytes, a.length);
    t.is(last.sentBytes, a.length);
    t.is(last.verdicts.length, 3, 'every verdict reached the progress');
    t.true(last.targets.every((p) => p.phase === 'done' && p.ackedBytes === a.length));
    t.true(first.progress.every((p) => p.sentBytes <= p.totalBytes));
    const stats = first.res.stats as { chunkSize: number; sent: { data: number } };
    t.is(stats.chunkSize, 8);
    // The nodes ran no image yet: the compressed image (issue 25), one data frame per chunk of it at least.
    const sent = first.res.verdicts[0]!.ok ? first.res.verdicts[0]!.transfer : undefined;
    t.is(sent?.mode, 'compressed');
    t.true(stats.sent.data >= Math.ceil(sent!.stream_bytes / 8));

    const again = await canFlash(r, a);
    okAll(t, again.res.verdicts, 'current', short(a), short(a), `round ${round}: again`);
    t.is((again.res.stats as { sent: { data: number } }).sent.data, 0, 'no data moved for current targets');

    const update = await canFlash(r, b);
    okAll(t, update.res.verdicts, 'updated', short(a), short(b), `round ${round}: update`);
    t.true(r.nodes.every((n) => runs(n.dev) === sha256Hex(b)));
    previous = b;
  }
});

test('CAN flasher: a cancel mid-transfer ends every node ECANCELED, and each still runs the image it ran (twice)', async (t) => {
  t.timeout(120_000);
  const r = await canRig(t, 3);
  const base = sensorBuild(31, 1024);
  okAll(t, (await canFlash(r, base)).res.verdicts, 'installed', null, short(base), 'base');
  for (const round of [0, 1]) {
    const big = sensorOfSize(40 + round, 24 << 10);
    const marks = r.nodes.map((n) => n.events.length);
    const controller = new AbortController();
    let cancelledAt = -1;
    const { res } = await canFlash(r, big, {
      signal: controller.signal,
      onProgress: (p) => {
        if (cancelledAt < 0 && p.phase === 'data' && p.sentBytes >= p.totalBytes / 2) {
          cancelledAt = p.sentBytes;
          controller.abort();
        }
      },
    });
    t.true(cancelledAt > 0 && cancelledAt < big.length, `cancelled mid-transfer (at ${cancelledAt} of ${big.length})`);
    t.deepEqual(res.verdicts.map((v) => (v.ok ? v.outcome : [v.code, v.reason])), [['ECANCELED', 'canceled'], ['ECANCELED', 'canceled'], ['ECANCELED', 'canceled']]);
    // Each node heard the ABORT and dropped its session.
    await Promise.all(r.nodes.map((n, i) =>
      n.waiter.until(() => n.events.slice(marks[i]).some((e) => e.type === 'verdict' && e.status === 'ECANCELED' && e.reason === 'master_abort'))));
    for (const n of r.nodes) {
      t.is(runs(n.dev), sha256Hex(base), `node ${n.node} still runs the base image`);
      t.deepEqual(n.dev.engine.ps().map((p) => p.sha256), [sha256Hex(base)]);
      t.is(n.dev.engine.sessions().length, 0, `node ${n.node}: the engine session was aborted`);
    }
    // The base image is what every node runs: flashing it is `current`.
    okAll(t, (await canFlash(r, base)).res.verdicts, 'current', short(base), short(base), `round ${round}: base after the cancel`);
  }
});

// --- UART -----------------------------------------------------------------------------------

/** The device's JSON lines, with a wait for one that comes after a mark. */
class Lines {
  readonly lines: Array<Record<string, unknown>> = [];
  private readonly bus = new EventEmitter();
  push(l: Record<string, unknown>): void {
    this.lines.push(l);
    this.bus.emit('line', l);
  }
  mark(): number {
    return this.lines.length;
  }
  waitFor(pred: (l: Record<string, unknown>) => boolean, from: number): Promise<Record<string, unknown>> {
    const seen = this.lines.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => {
      const on = (l: Record<string, unknown>): void => {
        if (!pred(l)) return;
        this.bus.off('line', on);
        resolve(l);
      };
      this.bus.on('line', on);
    });
  }
}

interface UartRig {
  dev: SimulatedDevice;
  waiter: Waiter;
  lines: Lines;
  flasher: UartFlasher;
  pair: PtyPair;
}

async function uartRig(t: ExecutionContext): Promise<UartRig> {
  if (!haveSocat()) throw new Error('socat is not installed: the UART flasher tests need it (apt-get install socat)');
  const state = mkdtempSync(join(tmpdir(), 'flasher-uart-'));
  const waiter = new Waiter();
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: waiter.sink, confirmWindowMs: CONFIRM_MS });
  const pair = await startPtyPair();
  const lines = new Lines();
  const controller = new AbortController();
  let listening!: () => void;
  const ready = new Promise<null>((resolve) => (listening = () => resolve(null)));
  const done = runUartDevice({
    port: pair.b, stateDir: state, json: true, intake: dev.intake, signal: controller.signal,
    out: (text) => {
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      if (line['event'] === 'listening') listening();
    },
  });
  const early = await Promise.race([ready, done]);
  if (early !== null) throw new Error(`device did not start: ${JSON.stringify(lines.lines)}`);
  // The device's port is open: the master may write now.
  const flasher = await UartFlasher.open('bench-uart', { path: pair.a });
  t.teardown(async () => {
    await flasher.close();
    await waiter.until(() => settled(dev));
    controller.abort();
    await done;
    await dev.close();
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  });
  return { dev, waiter, lines, flasher, pair };
}

async function uartFlash(r: UartRig, image: Uint8Array, extra: { signal?: AbortSignal; onProgress?: (p: FlashProgress) => void; chunk?: number; window?: number; raw?: boolean } = {}): Promise<{ res: FlashResult; progress: FlashProgress[] }> {
  const progress: FlashProgress[] = [];
  const res = await r.flasher.flash({
    image, appName: 'sensor_app', targets: ['1'],
    options: { ...(extra.chunk ? { chunk: extra.chunk } : {}), ...(extra.window ? { window: extra.window } : {}), ...(extra.raw ? { compress: false, delta: false } : {}) },
    onProgress: (p) => {
      progress.push(p);
      extra.onProgress?.(p);
    },
    ...(extra.signal ? { signal: extra.signal } : {}),
  });
  await r.waiter.until(() => settled(r.dev));
  return { res, progress };
}

const one = (t: ExecutionContext, res: FlashResult): TargetVerdict => {
  t.is(res.verdicts.length, 1);
  t.is(res.verdicts[0]!.target, '1');
  return res.verdicts[0]!;
};

test('UART flasher: installed, the same image again current, another build updated (twice on the same device)', async (t) => {
  t.timeout(120_000);
  const r = await uartRig(t);
  let previous: Uint8Array | null = null;
  for (const round of [0, 1]) {
    const a = sensorBuild(10 * round + 1, 2048);
    const b = sensorBuild(10 * round + 2, 2048);

    const first = await uartFlash(r, a);
    t.like(one(t, first.res), previous
      ? { ok: true, outcome: 'updated', from: sha256Hex(previous), to: sha256Hex(a), confirmPending: true }
      : { ok: true, outcome: 'installed', from: null, to: sha256Hex(a) }, `round ${round}: first`);
    t.is(runs(r.dev), sha256Hex(a));
    const last = first.progress.at(-1)!;
    t.like(last, { phase: 'done', sentBytes: a.length, totalBytes: a.length });
    t.like(last.targets[0], { target: '1', phase: 'done', ackedBytes: a.length });
    t.is(last.verdicts.length, 1);
    // every byte of the stream went out (the stream: the compressed image, since issue 25)
    t.true((first.res.stats['dataBytesSent'] as number) >= (first.res.stats['totalBytes'] as number));
    t.is(first.res.stats['imageBytes'], a.length);

    const again = await uartFlash(r, a);
    t.like(one(t, again.res), { ok: true, outcome: 'current', from: sha256Hex(a), to: sha256Hex(a), confirmPending: false }, `round ${round}: again`);
    t.is(again.res.stats['dataBytesSent'], 0, 'nothing sent to a device that runs the image');

    const update = await uartFlash(r, b);
    t.like(one(t, update.res), { ok: true, outcome: 'updated', from: sha256Hex(a), to: sha256Hex(b), confirmPending: true }, `round ${round}: update`);
    t.is(runs(r.dev), sha256Hex(b));
    previous = b;
  }
});

test('UART flasher: a cancel mid-transfer ends ECANCELED and the device still runs the image it ran (twice)', async (t) => {
  t.timeout(120_000);
  const r = await uartRig(t);
  const base = sensorBuild(31, 1024);
  t.like(one(t, (await uartFlash(r, base)).res), { ok: true, outcome: 'installed' });
  for (const round of [0, 1]) {
    const big = sensorOfSize(40 + round, 40 << 10);
    const mark = r.lines.mark();
    const controller = new AbortController();
    let cancelledAt = -1;
    const { res } = await uartFlash(r, big, {
      // raw: the test image compresses to less than the 8 KiB it cancels at
      chunk: 1024, window: 4, signal: controller.signal, raw: true,
      onProgress: (p) => {
        if (cancelledAt < 0 && p.phase === 'data' && p.sentBytes >= 8 * 1024) {
          cancelledAt = p.sentBytes;
          controller.abort();
        }
      },
    });
    t.true(cancelledAt > 0 && cancelledAt < big.length, `cancelled mid-transfer (at ${cancelledAt} of ${big.length})`);
    t.like(one(t, res), { ok: false, code: 'ECANCELED' });
    // The device heard the ABORT and dropped its session.
    await r.lines.waitFor((l) => l['event'] === 'aborted', mark);
    t.false(r.lines.lines.slice(mark).some((l) => l['event'] === 'ready'), 'nothing half-received was installed');
    t.is(runs(r.dev), sha256Hex(base), 'the base image still runs');
    t.deepEqual(r.dev.engine.ps().map((p) => p.sha256), [sha256Hex(base)]);
    t.like(one(t, (await uartFlash(r, base)).res), { ok: true, outcome: 'current', to: sha256Hex(base) }, `round ${round}: base after the cancel`);
  }
});

// --- requests -------------------------------------------------------------------------------

test('checkTarget: CAN takes node ids 1..63 in decimal, UART only "1"; flash() without targets rejects with a RangeError', async (t) => {
  t.timeout(60_000);
  const name = `flasher-${randomUUID()}`;
  const bus = namedVirtualBus(name).attach('bench');
  await bus.open();
  const can = new CanFlasher({ name: 'bench-can', bus });
  for (const bad of ['0', '64', 'abc', '', '-1', '1.5', '07']) t.truthy(can.checkTarget(bad), `CAN refuses ${JSON.stringify(bad)}`);
  for (const good of ['1', '7', '63']) t.is(can.checkTarget(good), null, `CAN takes ${good}`);
  t.is(can.kind, 'can');
  t.is(can.link, 'bench-can');
  const image = sensorBuild(1);
  await t.throwsAsync(can.flash({ image, targets: [] }), { instanceOf: RangeError, message: /targets/ });
  await t.throwsAsync(can.flash({ image, targets: ['64'] }), { instanceOf: RangeError, message: /targets/ });
  await can.close();
  t.is(bus.status().state, 'open', 'close() leaves a bus it did not open open');
  await bus.close();

  if (!haveSocat()) throw new Error('socat is not installed: the UART flasher tests need it (apt-get install socat)');
  const pair = await startPtyPair();
  try {
    const uart = await UartFlasher.open('bench-uart', { path: pair.a });
    t.is(uart.kind, 'uart');
    t.is(uart.checkTarget('1'), null);
    for (const bad of ['2', '0', 'abc']) t.truthy(uart.checkTarget(bad), `UART refuses ${JSON.stringify(bad)}`);
    await t.throwsAsync(uart.flash({ image, targets: [] }), { instanceOf: RangeError, message: /targets/ });
    await t.throwsAsync(uart.flash({ image, targets: ['2'] }), { instanceOf: RangeError, message: /targets/ });
    await uart.close();
    t.is(uart.transport.status().state, 'closed', 'close() closes the port open() opened');
  } finally {
    await pair.stop();
  }
});
