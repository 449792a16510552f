/**
 * What a UART device answers to an OPEN it cannot take, before anything is allocated: an empty
 * image is a malformed announce (`EBADMSG total_invalid`), a too large one `ENOSPC image_too_large`.
 * The listener runs over an in-memory frame transport (the framing has its own tests).
 */
import test from 'ava';
import { EventEmitter } from 'node:events';
import { DeviceIntake, ProvisioningEngine, FakeClock, CollectingEventSink } from '../src/engine/index.js';
import { FrameType, type Frame } from '../src/link/uart/frame.js';
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { decodeAccept, decodeError, encodeAbort, encodeOpen } from '../src/link/uart/messages.js';
import { sensorOfSize } from './update-images.js';
import { UartListener } from '../src/link/uart/listener.js';
import { MemoryPartialStore } from '../src/link/uart/partial-store.js';
import type { Transport } from '../src/link/transport.js';

class FrameWire extends EventEmitter implements Transport<Frame, Frame> {
  readonly name = 'memory';
  readonly sent: Frame[] = [];
  private handler: ((f: Frame) => void) | null = null;
  async open(): Promise<void> {}
  async send(f: Frame): Promise<void> {
    this.sent.push(f);
    this.emit('sent', f);
  }
  receive(h: (f: Frame) => void): () => void {
    this.handler = h;
    return () => (this.handler = null);
  }
  deliver(f: Frame): void {
    this.handler?.(f);
  }
  async close(): Promise<void> {}
  status() {
    return { state: 'open' as const };
  }
}

function answerTo(totalBytes: number, maxImageBytes = 1 << 20): Promise<{ code: string; where: string; reason: string }> {
  const clock = new FakeClock(0);
  const sink = new CollectingEventSink(clock);
  const engine = new ProvisioningEngine({ clock, events: sink });
  const intake = new DeviceIntake({ engine, clock, events: sink });
  const wire = new FrameWire();
  const listener = new UartListener(wire, intake, { source: 'uart:test', partials: new MemoryPartialStore(), maxImageBytes });
  listener.start();
  const answered = new Promise<Frame>((resolve) => wire.once('sent', resolve));
  wire.deliver({
    type: FrameType.OPEN, tag: 7, seq: 1,
    payload: encodeOpen({ version: 2, chunkSize: 4096, window: 16, totalBytes, crc32: 0, sha256: new Uint8Array(32), appName: 'x', force: false }),
  });
  return answered.then((f) => {
    void listener.stop('done');
    if (f.type !== FrameType.ERROR) throw new Error(`expected ERROR, got frame type ${f.type}`);
    const e = decodeError(f.payload);
    if (!e.ok) throw new Error('undecodable ERROR');
    return e.value;
  });
}

test('OPEN with total = 0 is EBADMSG total_invalid; past the device limit ENOSPC image_too_large', async (t) => {
  t.like(await answerTo(0), { code: 'EBADMSG', where: 'begin', reason: 'total_invalid' });
  t.like(await answerTo(2048, 1024), { code: 'ENOSPC', where: 'begin', reason: 'image_too_large' });
});

test('frames of an ABORTed session get ERROR ECANCELED session_aborted, never its stale ACCEPT; the same OPEN again resumes from the bytes the device kept', async (t) => {
  const clock = new FakeClock(0);
  const sink = new CollectingEventSink(clock);
  const engine = new ProvisioningEngine({ clock, events: sink });
  const intake = new DeviceIntake({ engine, clock, events: sink });
  const wire = new FrameWire();
  const listener = new UartListener(wire, intake, { source: 'uart:test', partials: new MemoryPartialStore() });
  listener.start();
  t.teardown(() => { void listener.stop('done'); intake.dispose(); });
  const image = sensorOfSize(5, 6000);
  const open: Frame = {
    type: FrameType.OPEN, tag: 9, seq: 1,
    payload: encodeOpen({ version: 2, chunkSize: 1024, window: 16, totalBytes: image.length, crc32: crc32(image), sha256: createHash('sha256').update(image).digest(), appName: 'sensor_app', force: false }),
  };
  const next = (type: Frame['type']): Promise<Frame> => new Promise((resolve) => {
    const on = (f: Frame): void => { if (f.type === type) { wire.off('sent', on); resolve(f); } };
    wire.on('sent', on);
  });
  const accepted = next(FrameType.ACCEPT);
  wire.deliver(open);
  t.like(decodeAccept((await accepted).payload), { ok: true, value: { chunkSize: 1024, resumeOffset: 0 } });
  const acked = new Promise<void>((resolve) => {
    const on = (f: Frame): void => { if (f.type === FrameType.ACK && f.seq >= 2) { wire.off('sent', on); resolve(); } };
    wire.on('sent', on);
  });
  for (const seq of [0, 1]) wire.deliver({ type: FrameType.DATA, tag: 9, seq, payload: image.subarray(seq * 1024, (seq + 1) * 1024) });
  await acked;
  const aborted = new Promise<void>((resolve) => listener.once('event', (e: { type: string }) => { if (e.type === 'aborted') resolve(); }));
  wire.deliver({ type: FrameType.ABORT, tag: 9, seq: 0, payload: encodeAbort('test') });
  await aborted;
  // A DATA frame of the aborted session (the master had it queued): the session is gone, say so.
  const answer = next(FrameType.ERROR);
  wire.deliver({ type: FrameType.DATA, tag: 9, seq: 2, payload: image.subarray(2048, 3072) });
  t.like(decodeError((await answer).payload), { ok: true, value: { code: 'ECANCELED', where: 'session', reason: 'session_aborted' } });
  t.false(wire.sent.slice(-1).some((f) => f.type === FrameType.ACCEPT), 'no stale ACCEPT');
  // The same OPEN again: a new session, resumed at the two chunks the device kept.
  const resumed = next(FrameType.ACCEPT);
  wire.deliver(open);
  t.like(decodeAccept((await resumed).payload), { ok: true, value: { resumeOffset: 2048 } });
});
