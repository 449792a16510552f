/**
 * What a UART device answers to an OPEN it cannot take, before anything is allocated: an empty
 * image is a malformed announce (`EBADMSG total_invalid`), a too large one `ENOSPC image_too_large`.
 * The listener runs over an in-memory frame transport (the framing has its own tests).
 */
import test from 'ava';
import { EventEmitter } from 'node:events';
import { DeviceIntake, ProvisioningEngine, FakeClock, CollectingEventSink } from '../src/engine/index.js';
import { FrameType, type Frame } from '../src/link/uart/frame.js';
import { decodeError, encodeOpen } from '../src/link/uart/messages.js';
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
