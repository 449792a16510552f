/**
 * The UART link when things go wrong, on real pty pairs: ports that do not exist or are taken,
 * the engine rejecting an image, frames lost on the way (NAK and timeout paths, back-off, retry
 * limit), a listener that stops acknowledging (the master stays inside its window), the cable
 * pulled mid-transfer, and resuming after the master gave up or the device process restarted.
 */
import test from 'ava';
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTransport, type Transport, type TransportStatus } from '../src/link/transport.js';
import '../src/link/uart/index.js'; // registers transport kind "uart"
import { FrameType, type Frame } from '../src/link/uart/frame.js';
import { UartLinkError, UartPortTransport } from '../src/link/uart/port-transport.js';
import { sendImage } from '../src/link/uart/master.js';
import type { PartialStore } from '../src/link/uart/partial-store.js';
import { MemoryPartialStore } from '../src/link/uart/partial-store.js';
import { UartListener, type ListenerEvent } from '../src/link/uart/listener.js';
import { CollectingEventSink, DeviceIntake, InMemoryImageStore, ProvisioningEngine, systemClock } from '../src/engine/index.js';
import { haveSocat, startPtyPair } from './support/pty.js';
import { startPacedCable } from './support/paced-cable.js';
import { fixture, makeImage, rig, roomFor, sha256, startDevice, stopChild, until } from './link-uart-harness.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART link tests need it (apt-get install socat)');
});

const fast = { rtoMs: 40, maxRtoMs: 300, maxRetries: 4 };

/** Wraps a real transport and drops or records frames on their way out (the master's side). */
class TapTransport extends EventEmitter implements Transport<Frame, Frame> {
  readonly name = 'tap';
  readonly sent: Frame[] = [];
  readonly received: Frame[] = [];
  constructor(private readonly inner: UartPortTransport, private readonly drop: (f: Frame, nth: number) => boolean = () => false) {
    super();
    inner.on('status', (s: TransportStatus) => this.emit('status', s));
    inner.receive((f) => this.received.push(f));
  }
  open(): Promise<void> { return this.inner.open(); }
  async send(f: Frame): Promise<void> {
    const nth = this.sent.filter((s) => s.type === f.type && s.seq === f.seq).length;
    this.sent.push(f);
    if (this.drop(f, nth)) return;
    await this.inner.send(f);
  }
  receive(h: (f: Frame) => void): () => void { return this.inner.receive(h); }
  close(): Promise<void> { return this.inner.close(); }
  status(): TransportStatus { return this.inner.status(); }
}

test('a port that does not exist and a port already in use are clear, typed errors', async (t) => {
  const pair = await startPtyPair();
  try {
    const missing = new UartPortTransport({ path: join(pair.dir, 'no-such-port') });
    const e1 = await t.throwsAsync(missing.open(), { instanceOf: UartLinkError });
    t.like((e1 as UartLinkError).info, { code: 'ENOENT', where: 'open', reason: 'port_not_found' });

    const first = new UartPortTransport({ path: pair.b });
    await first.open();
    const second = new UartPortTransport({ path: pair.b });
    const e2 = await t.throwsAsync(second.open(), { instanceOf: UartLinkError });
    t.like((e2 as UartLinkError).info, { code: 'EBUSY', where: 'open', reason: 'port_in_use' });
    t.regex(e2!.message, /in use/);
    await first.close();
  } finally {
    await pair.stop();
  }
});

test('the framing layer is registered as transport kind "uart" and reports its state', async (t) => {
  const pair = await startPtyPair();
  try {
    const transport = createTransport('uart', { path: pair.a });
    t.true(transport instanceof UartPortTransport);
    const states: string[] = [];
    transport.on('status', (s: TransportStatus) => states.push(s.state));
    await transport.open();
    t.is(transport.status().state, 'open');
    await transport.close();
    t.deepEqual(states, ['opening', 'open', 'closed']);
    t.throws(() => createTransport('uart', {}), { message: /path/ });
  } finally {
    await pair.stop();
  }
});

test('the engine\'s verdict ends the transfer at the master, typed, and the device holds nothing', async (t) => {
  t.timeout(60_000);
  const r = await rig();
  try {
    const before = r.engine.resources();
    // Bad magic: the engine's streaming verifier rejects the header in the first chunk.
    const badMagic = fixture('t09_stdlib_plus_pragmas.hxe').slice();
    badMagic[0] = 0x58;
    const e1 = await sendImage(r.master, badMagic, { timing: fast });
    t.false(e1.ok);
    if (!e1.ok) t.like(e1.error, { code: 'EBADMSG', remote: true });
    // A flipped byte in the code: every frame is intact, the image's own CRC is not.
    const badCrc = makeImage(20_000, 'crc_app', 3);
    badCrc[5000] = badCrc[5000]! ^ 0x40;
    const e2 = await sendImage(r.master, badCrc, { timing: fast });
    t.false(e2.ok);
    if (!e2.ok) {
      t.like(e2.error, { code: 'EBADMSG', remote: true });
      t.regex(e2.error.reason, /crc/);
    }
    t.deepEqual(r.engine.ps(), []);
    t.deepEqual(r.engine.resources(), before);
    t.deepEqual(r.events.map((e) => e.type), ['open', 'error', 'open', 'error']);
  } finally {
    await r.close();
  }
});

test('lost DATA frames are repaired: a NAK for a gap, a timeout for a lost last frame', async (t) => {
  t.timeout(60_000);
  const r = await rig({ config: roomFor(64 << 10) });
  try {
    const image = makeImage(40_000, 'lossy_app', 5);
    const chunk = 1024;
    const last = Math.ceil(image.length / chunk) - 1;
    // First transmissions of frames 3 and 7 (a gap the listener sees) and of the last frame (no later frame reveals it).
    const dropped = [3, 7, last];
    const tap = new TapTransport(r.master, (f, nth) => f.type === FrameType.DATA && nth === 0 && dropped.includes(f.seq));
    const res = await sendImage(tap, image, { chunkSize: chunk, window: 8, timing: { rtoMs: 200, maxRtoMs: 1000 } });
    t.true(res.ok, JSON.stringify(res));
    if (!res.ok) return;
    // Each dropped frame went out again (a busy machine may add a spurious timeout's retransmission).
    for (const seq of dropped) t.true(tap.sent.filter((f) => f.type === FrameType.DATA && f.seq === seq).length >= 2, `frame ${seq} resent`);
    t.true(res.value.retransmits >= 3);
    t.true(res.value.naks >= 1, 'the gap was reported by a NAK');
    t.true(res.value.timeouts >= 1, 'the lost last frame was found by a timeout');
    t.deepEqual(r.engine.taskImage(res.value.pid), image);
  } finally {
    await r.close();
  }
});

test('no answer: OPEN is retried with back-off up to the limit, then ETIMEDOUT', async (t) => {
  const pair = await startPtyPair();
  const port = new UartPortTransport({ path: pair.a });
  await port.open();
  try {
    const tap = new TapTransport(port);
    const res = await sendImage(tap, fixture('t01_minimal.hxe'), { timing: { rtoMs: 10, maxRtoMs: 80, maxRetries: 3 } });
    t.false(res.ok);
    if (!res.ok) t.like(res.error, { code: 'ETIMEDOUT', where: 'session', reason: 'no_listener', remote: false });
    t.is(tap.sent.filter((f) => f.type === FrameType.OPEN).length, 4);
  } finally {
    await port.close();
    await pair.stop();
  }
});

test('a slow device withholds ACKs and the master never has more than its window in flight', async (t) => {
  t.timeout(60_000);
  // A partial store that takes 5 ms per append: the listener acknowledges only what it saved.
  const inner = new MemoryPartialStore();
  const slow: PartialStore = {
    load: (k) => inner.load(k),
    discard: (s) => inner.discard(s),
    start: async (k, keep) => {
      const w = await inner.start(k, keep);
      return { append: async (b) => { await new Promise((res) => setTimeout(res, 5)); await w.append(b); }, close: () => w.close() };
    },
  };
  const r = await rig({ config: roomFor(64 << 10), listener: { partials: slow } });
  try {
    const image = makeImage(24_000, 'slow_app', 9);
    const tap = new TapTransport(r.master);
    const window = 4;
    let maxInFlight = 0;
    let acked = 0;
    let highest = -1;
    const orig = tap.send.bind(tap);
    tap.send = async (f: Frame) => {
      if (f.type === FrameType.DATA) {
        highest = Math.max(highest, f.seq);
        for (const a of tap.received) if (a.type === FrameType.ACK || a.type === FrameType.NAK) acked = Math.max(acked, a.seq);
        maxInFlight = Math.max(maxInFlight, highest + 1 - acked);
      }
      return orig(f);
    };
    const res = await sendImage(tap, image, { chunkSize: 256, window, timing: { rtoMs: 2000 } });
    t.true(res.ok, JSON.stringify(res));
    t.true(maxInFlight <= window, `at most ${window} frames in flight, saw ${maxInFlight}`);
    t.is(maxInFlight, window, 'the window was used');
    if (res.ok) t.deepEqual(r.engine.taskImage(res.value.pid), image);
  } finally {
    await r.close();
  }
});

test('cable pulled mid-transfer: a clear error at both ends, the engine session aborted, nothing READY', async (t) => {
  t.timeout(60_000);
  const r = await rig({ config: roomFor(1 << 20) });
  try {
    const before = r.engine.resources();
    const image = makeImage(1 << 20, 'pulled_app', 11);
    let pulled = false;
    const res = await sendImage(r.master, image, {
      timing: fast,
      onProgress: (p) => {
        if (!pulled && p.ackedBytes >= image.length / 4) {
          pulled = true;
          void r.pair.stop(); // kills socat: both pty masters close
        }
      },
    });
    t.true(pulled);
    t.false(res.ok);
    if (!res.ok) t.like(res.error, { code: 'EIO', reason: 'port_lost', remote: false });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const aborted = r.events.find((e) => e.type === 'aborted');
    t.like(aborted, { type: 'aborted', reason: 'port_lost' });
    t.deepEqual(r.engine.ps(), [], 'nothing READY');
    t.deepEqual(r.engine.sessions(), [], 'the engine session was aborted');
    t.deepEqual(r.engine.resources(), before);
    t.true(r.sink.events.some((e) => e.type === 'provisioning.aborted'));
    t.false(r.events.some((e) => e.type === 'ready'));
  } finally {
    await r.close();
  }
});

test('on a slow cable an ABORT overtakes the DATA queued ahead of it, which is dropped, and the device aborts at once', async (t) => {
  t.timeout(60_000);
  // 1 Mbaud: 100 KB/s, so most of a 256 KiB window waits in the master's queue.
  const cable = await startPacedCable(1_000_000);
  const device = new UartPortTransport({ path: cable.b });
  await device.open();
  const arrived: Frame[] = [];
  device.receive((f) => arrived.push(f));
  const sink = new CollectingEventSink();
  const engine = new ProvisioningEngine({ clock: systemClock, events: sink, imageStore: new InMemoryImageStore(), config: roomFor(1 << 20) });
  const intake = new DeviceIntake({ engine, clock: systemClock, events: sink });
  const listener = new UartListener(device, intake, { source: 'uart:cable', partials: new MemoryPartialStore() });
  const aborted = new Promise<number>((resolve) => listener.on('event', (e: ListenerEvent) => { if (e.type === 'aborted') resolve(performance.now()); }));
  listener.start();
  const inner = new UartPortTransport({ path: cable.a });
  await inner.open();
  const master = new TapTransport(inner);
  try {
    const image = makeImage(512 << 10, 'abort_app', 21);
    const controller = new AbortController();
    let queuedAtAbort = 0;
    let abortedAt = 0;
    // Abort once the device has some of the image and more than one batch of DATA waits in the
    // master's own queue (the level moves with the line; wait for it rather than guess a moment).
    let acked = 0;
    const watcher = setInterval(() => {
      const queued = inner.status().counters?.['queuedBytes'] ?? 0;
      if (controller.signal.aborted || acked < 16 << 10 || queued <= 20 << 10) return;
      queuedAtAbort = queued;
      abortedAt = performance.now();
      controller.abort();
    }, 2);
    const result = await sendImage(master, image, { signal: controller.signal, onProgress: (p) => { acked = p.ackedBytes; } });
    clearInterval(watcher);
    t.false(result.ok);
    if (!result.ok) t.like(result.error, { code: 'ECANCELED' });
    t.true(queuedAtAbort > 20 << 10, `DATA was waiting in the master's queue when it aborted (${queuedAtAbort} bytes)`);
    const deviceAbortedAt = await aborted;
    t.log(`device aborted ${Math.round(deviceAbortedAt - abortedAt)} ms after the master (${queuedAtAbort} bytes were queued: ${Math.round(queuedAtAbort / 100)} ms of line time)`);
    // The master sent DATA up to `lastSent` before the ABORT; the device got the ABORT before the last of them.
    const abortIndex = master.sent.findIndex((f) => f.type === FrameType.ABORT);
    const lastSent = Math.max(...master.sent.slice(0, abortIndex).filter((f) => f.type === FrameType.DATA).map((f) => f.seq));
    const abortArrived = arrived.findIndex((f) => f.type === FrameType.ABORT);
    t.true(abortArrived >= 0, 'the ABORT reached the device');
    const lastBefore = Math.max(...arrived.slice(0, abortArrived).filter((f) => f.type === FrameType.DATA).map((f) => f.seq));
    t.true(lastBefore < lastSent, `DATA up to seq ${lastBefore} arrived before the ABORT, of ${lastSent} sent before it`);
    // The rest of the aborted session's DATA was dropped at the master, not sent after the ABORT
    // (at 100 KB/s it would have arrived within ~0.3 s).
    await new Promise((r) => setTimeout(r, 600));
    const after = arrived.slice(abortArrived + 1).filter((f) => f.type === FrameType.DATA);
    t.is(after.length, 0, `DATA after the ABORT: ${after.map((f) => f.seq).join(',')}`);
    t.true((inner.status().counters?.['bytesDiscarded'] ?? 0) > 0, 'the master counted what it dropped');
    t.deepEqual(engine.sessions(), [], 'the engine session was aborted');
    t.deepEqual(engine.ps(), []);
  } finally {
    await listener.stop('test over');
    intake.dispose();
    await inner.close();
    await device.close();
    await cable.stop();
  }
});

test('resume in the same listener: after the master gave up, only the missing part is sent', async (t) => {
  t.timeout(60_000);
  const r = await rig({ config: roomFor(1 << 20) });
  try {
    const image = makeImage(300_000, 'resume_app', 13);
    const controller = new AbortController();
    const first = await sendImage(r.master, image, {
      signal: controller.signal,
      onProgress: (p) => { if (p.ackedBytes >= image.length / 2) controller.abort(); },
    });
    t.false(first.ok);
    if (!first.ok) t.like(first.error, { code: 'ECANCELED' });
    // The ABORT is written after the DATA frames already queued for the port (up to a window).
    await until(() => r.engine.sessions().length === 0);
    t.deepEqual(r.engine.sessions(), [], 'the master\'s ABORT aborted the engine session');
    // A generous RTO: on a loaded CI machine a 250 ms gap between ACKs is possible, and a timeout
    // retransmission would be counted below although nothing is wrong with the resume.
    const second = await sendImage(r.master, image, { timing: { rtoMs: 2000 } });
    t.true(second.ok, JSON.stringify(second));
    if (!second.ok) return;
    t.true(second.value.resumeOffset >= image.length / 2, `resumed at ${second.value.resumeOffset}`);
    t.is(second.value.retransmits, 0, JSON.stringify(second.value));
    t.is(second.value.dataBytesSent, image.length - second.value.resumeOffset);
    t.deepEqual(r.engine.taskImage(second.value.pid), image);
  } finally {
    await r.close();
  }
});

test('device process restarted mid-transfer: the new process resumes from its state dir and only the missing part is sent', async (t) => {
  t.timeout(120_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-resume-'));
  const pair = await startPtyPair();
  const image = makeImage(512 << 10, 'restart_app', 17);
  let device = await startDevice(pair.b, { state, config: roomFor(1 << 20) });
  const master = new UartPortTransport({ path: pair.a });
  await master.open();
  try {
    let killed = false;
    const first = await sendImage(master, image, {
      timing: fast,
      onProgress: (p) => {
        if (!killed && p.ackedBytes >= image.length * 0.4) {
          killed = true;
          device.proc.kill('SIGKILL'); // no goodbye: whatever reached the state dir is all there is
        }
      },
    });
    t.true(killed);
    t.false(first.ok, 'the first transfer cannot finish without its device');
    await device.exited;
    // The same master port goes on (its writes queued behind the dead device must not wedge it).
    device = await startDevice(pair.b, { state, config: roomFor(1 << 20) });
    const second = await sendImage(master, image, {});
    t.true(second.ok, `${JSON.stringify(second)}\ndevice: ${JSON.stringify(device.lines)}\n${device.stderr()}\nsocat alive ${pair.alive()}: ${pair.log()}\nmaster: ${JSON.stringify(master.status())}`);
    if (!second.ok) return;
    t.true(second.value.resumeOffset > 0, 'the restarted device resumed');
    t.is(second.value.retransmits, 0, JSON.stringify(second.value));
    t.is(second.value.dataBytesSent, image.length - second.value.resumeOffset, 'only the missing part was sent');
    const open = await device.waitFor((l) => l['event'] === 'open');
    t.is(open['resumeOffset'], second.value.resumeOffset);
    const stored = await device.waitFor((l) => l['event'] === 'stored');
    t.is(stored['sha256'], sha256(image), 'the engine holds the image byte-identical');
    t.log(`resumed at byte ${second.value.resumeOffset} of ${image.length}`);
  } finally {
    await master.close();
    await stopChild(device);
    await pair.stop();
    rmSync(state, { recursive: true, force: true });
  }
});
