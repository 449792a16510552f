/**
 * The serial byte path (port-io.ts) on real pty pairs: bytes arrive intact and in order whatever
 * the OS takes per write, back-pressure queues and reports 'drain' when a slow reader catches up,
 * and a port whose other end goes away ends with exactly one 'lost' (no hang, no second event).
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { SerialPort } from 'serialport';
import { SerialPortIo } from '../src/link/uart/port-io.js';
import { haveSocat, startPtyPair } from './support/pty.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART port tests need it (apt-get install socat)');
});

const pattern = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + (i >> 9)) & 0xff;
  return b;
};
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

test('1 MiB written while nobody reads: the writer is told to wait, then drain fires and every byte arrives in order', async (t) => {
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  // The reading end is open from the start (opening flushes a port's input) but does not read yet:
  // a paused SerialPort stream makes no read calls until it gets a 'data' listener.
  const reader = new SerialPort({ path: pair.b, baudRate: 921600, autoOpen: false });
  await new Promise<void>((resolve, reject) => reader.open((e) => (e ? reject(e) : resolve())));
  t.teardown(() => new Promise<void>((r) => (reader.isOpen ? reader.close(() => r()) : r())));
  const writer = await SerialPortIo.open(pair.a, 921600);
  const payload = pattern(1 << 20);
  // 64 KiB writes: the pty takes only part of each, so the queue must hold the rest.
  let refused = 0;
  for (let at = 0; at < payload.length; at += 65536) if (!writer.write(payload.subarray(at, at + 65536))) refused++;
  t.true(refused > 0, 'write() asked the caller to wait');
  t.true(writer.needsDrain);
  await new Promise((r) => setTimeout(r, 100));
  t.true(writer.queuedBytes > 0, `still queued after 100 ms with nobody reading: ${writer.queuedBytes} bytes`);
  const drained = new Promise<void>((resolve) => writer.once('drain', resolve));

  const got: Buffer[] = [];
  let total = 0;
  const all = new Promise<void>((resolve) => reader.on('data', (chunk: Buffer) => {
    got.push(chunk);
    total += chunk.length;
    if (total >= payload.length) resolve();
  }));
  await drained;
  t.false(writer.needsDrain);
  t.is(writer.queuedBytes, 0);
  await Promise.race([all, new Promise((r) => setTimeout(r, 10_000))]);
  t.is(total, payload.length);
  t.is(sha(Buffer.concat(got)), sha(payload), 'every byte, in order');
  await writer.close();
});

test('both directions at once over one pair: two 256 KiB streams arrive byte-identical', async (t) => {
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  const a = await SerialPortIo.open(pair.a, 921600);
  const b = await SerialPortIo.open(pair.b, 921600);
  const collect = (io: SerialPortIo, n: number): Promise<Buffer> => new Promise((resolve) => {
    const parts: Buffer[] = [];
    let have = 0;
    io.on('data', (c) => {
      parts.push(Buffer.from(c));
      have += c.length;
      if (have >= n) resolve(Buffer.concat(parts));
    });
  });
  const ab = pattern(256 * 1024);
  const ba = Buffer.from(pattern(256 * 1024).map((x) => x ^ 0x5a));
  const atB = collect(b, ab.length);
  const atA = collect(a, ba.length);
  const send = async (io: SerialPortIo, bytes: Buffer): Promise<void> => {
    for (let at = 0; at < bytes.length; at += 16384) {
      if (!io.write(bytes.subarray(at, at + 16384))) await new Promise<void>((r) => io.once('drain', r));
    }
  };
  await Promise.all([send(a, ab), send(b, ba)]);
  t.is(sha(await atB), sha(ab));
  t.is(sha(await atA), sha(ba));
  await a.close();
  await b.close();
});

test('the other end goes away (socat killed): one lost event, the port is closed, writing throws', async (t) => {
  const pair = await startPtyPair();
  const io = await SerialPortIo.open(pair.a, 921600);
  let lost = 0;
  const gone = new Promise<Error>((resolve) => io.on('lost', (e) => { lost++; resolve(e); }));
  await pair.stop();
  const e = await Promise.race([gone, new Promise<null>((r) => setTimeout(() => r(null), 5000))]);
  t.truthy(e, 'lost was reported within 5 s');
  t.log(`lost: ${e?.message}`);
  t.false(io.isOpen);
  t.throws(() => io.write(Buffer.from([1, 2, 3])), { message: /is lost/ });
  await new Promise((r) => setTimeout(r, 50));
  t.is(lost, 1);
  await io.close(); // closing a lost port is a no-op, not an error
});

test('drain(timeout) waits for queued bytes and returns at the timeout on a stalled line', async (t) => {
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  const io = await SerialPortIo.open(pair.a, 921600);
  // Nobody reads pair.b: the pty fills and the queue stalls.
  io.write(pattern(1 << 20));
  t.true(io.queuedBytes > 0);
  let returned = false;
  const drained = io.drain(300).then(() => { returned = true; });
  // A 100 ms timer set after drain's 300 ms one fires first: drain has not given up yet.
  await new Promise((r) => setTimeout(r, 100));
  t.false(returned, 'drain waits while bytes are queued');
  await drained;
  t.true(io.queuedBytes > 0, `drain returned at its timeout with ${io.queuedBytes} bytes still queued`);
  // close() does not wait for the stalled line either: it returns with the port closed.
  await io.close(500);
  t.false(io.isOpen);
});

test('writeUrgent goes right after the buffer being written, ahead of the rest; discardQueued drops what has not started; an urgent write rejects if the port closes first', async (t) => {
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  const reader = new SerialPort({ path: pair.b, baudRate: 921600, autoOpen: false });
  await new Promise<void>((resolve, reject) => reader.open((e) => (e ? reject(e) : resolve())));
  t.teardown(() => new Promise<void>((r) => (reader.isOpen ? reader.close(() => r()) : r())));
  const io = await SerialPortIo.open(pair.a, 921600);
  // Nobody reads yet: the first buffer is partly written, the second waits whole.
  const first = Buffer.alloc(512 * 1024, 0x11);
  const second = Buffer.alloc(64 * 1024, 0x22);
  io.write(first);
  io.write(second);
  t.true(io.queuedBytes > second.length, 'part of the first buffer is still queued');
  const urgent = Buffer.alloc(100, 0x33);
  let written = false;
  const out = io.writeUrgent(urgent).then(() => { written = true; });
  t.false(written);
  const got: Buffer[] = [];
  let total = 0;
  const want = first.length + second.length + urgent.length;
  const all = new Promise<void>((resolve) => reader.on('data', (c: Buffer) => {
    got.push(c);
    total += c.length;
    if (total >= want) resolve();
  }));
  await out;
  await Promise.race([all, new Promise((r) => setTimeout(r, 10_000))]);
  const stream = Buffer.concat(got);
  t.is(stream.length, want);
  // Whatever arrived of the first buffer arrives whole, then the urgent bytes, then the second buffer.
  t.is(stream.indexOf(0x33), first.length, 'the urgent bytes follow the first buffer');
  t.is(stream.indexOf(0x22), first.length + urgent.length, 'and precede the second');

  // discardQueued keeps the buffer in progress and urgent writes, and drops the rest.
  reader.pause();
  reader.removeAllListeners('data');
  const head = Buffer.alloc(512 * 1024, 0x66);
  io.write(head);
  io.write(Buffer.alloc(64 * 1024, 0x77));
  const urgent2 = Buffer.alloc(10, 0x88);
  const urgentOut = io.writeUrgent(urgent2);
  io.write(Buffer.alloc(32 * 1024, 0x99));
  t.is(io.discardQueued(), 96 * 1024, 'the two whole buffers behind the one in progress');
  const rest: Buffer[] = [];
  let restBytes = 0;
  reader.on('data', (c: Buffer) => {
    rest.push(c);
    restBytes += c.length;
  });
  reader.resume();
  await urgentOut;
  const waitUntil = Date.now() + 5000;
  while (restBytes < head.length + urgent2.length && Date.now() < waitUntil) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50)); // nothing else may follow
  const tail = Buffer.concat(rest);
  t.is(tail.length, head.length + urgent2.length, 'the head and the urgent bytes, nothing of the dropped buffers');
  t.is(tail.indexOf(0x77), -1);
  t.is(tail.indexOf(0x99), -1);
  t.is(tail.indexOf(0x88), head.length);

  // Queued behind a stalled line, an urgent write is refused when the port closes.
  reader.pause();
  io.write(Buffer.alloc(1 << 20, 0x44));
  await new Promise((r) => setTimeout(r, 50));
  const stuck = io.writeUrgent(Buffer.alloc(10, 0x55));
  await io.close(200);
  await t.throwsAsync(stuck, { message: /closed before an urgent write went out/ });
});

test('pause() leaves bytes in the OS and holds the sender up; resume() delivers them all', async (t) => {
  const pair = await startPtyPair();
  t.teardown(() => pair.stop());
  const b = await SerialPortIo.open(pair.b, 921600);
  const a = await SerialPortIo.open(pair.a, 921600);
  let received = 0;
  b.on('data', (c) => { received += c.length; });
  b.pause();
  const payload = pattern(512 * 1024);
  t.false(a.write(payload), 'more than the high-water mark: wait for drain');
  const drained = new Promise<void>((r) => a.once('drain', r));
  await new Promise((r) => setTimeout(r, 200));
  t.is(received, 0, 'nothing is read while paused');
  t.true(a.queuedBytes > 0, 'the OS buffers filled up and the sender holds the rest');
  b.resume();
  await drained;
  const deadline = Date.now() + 10_000;
  while (received < payload.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.is(received, payload.length);
  await a.close();
  await b.close();
});
