/**
 * The bus layer on the bus the environment selects (virtual, or SocketCAN with HSX_CAN_IFACE):
 * classic and FD frames between endpoints, no echo of one's own frames, acceptance filters,
 * receive-side fault injection, a clear error for an interface that cannot be opened; and the
 * virtual bus's timing model (bit counts with stuffing, arbitration order) and `--can` addresses.
 */
import test from 'ava';
import { parseCanAddress, openCanBus } from '../src/link/can/address.js';
import { FaultyBus } from '../src/link/can/faults.js';
import { fdPaddedLength, frameBits, type CanFrame } from '../src/link/can/frame.js';
import { VirtualBus } from '../src/link/can/virtual-bus.js';
import { CAN_IFACE, CAN_IFACE2, CAN_SERIAL, openTestBus } from './support/can-bus.js';

const canTest = CAN_SERIAL ? test.serial : test;

function collect(bus: { receive(h: (f: CanFrame) => void): () => void }): CanFrame[] {
  const got: CanFrame[] = [];
  bus.receive((f) => got.push(f));
  return got;
}

async function until(pred: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !pred(); i++) await new Promise((r) => setTimeout(r, 5));
  if (!pred()) throw new Error(`never happened: ${what}`);
}

canTest('classic and FD frames cross between endpoints; nobody hears its own frames; filters select', async (t) => {
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const a = await bus.endpoint();
  const b = await bus.endpoint();
  const c = await bus.endpoint();
  const atA = collect(a);
  const atB = collect(b);
  c.setFilters([{ id: 0x400, mask: 0x400 }]); // data range only
  const atC = collect(c);
  const classic = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
  const fd = Uint8Array.from({ length: 64 }, (_, i) => 255 - i);
  t.true(a.post({ id: 0x123, data: classic }));
  t.true(a.post({ id: 0x456, data: fd, fd: true }));
  t.true(a.post({ id: 0x7ff, data: Uint8Array.of() }));
  t.false(a.post({ id: 0x800, data: classic }), 'an 11-bit id above 0x7FF is refused');
  t.false(a.post({ id: 0x100, data: fd }), 'a 64-byte payload needs the FD flag');
  await until(() => atB.length === 3 && atC.length === 2, 'frames delivered');
  t.deepEqual(atB.map((f) => f.id), [0x123, 0x456, 0x7ff]);
  t.deepEqual([...atB[0]!.data], [...classic]);
  t.deepEqual([...atB[1]!.data], [...fd]);
  t.is(atB[1]!.data.length, 64);
  t.deepEqual(atC.map((f) => f.id), [0x456, 0x7ff]);
  t.is(atA.length, 0, 'a sender never receives its own frames');
  t.is(a.status().counters!['refused'], 2);
  t.log(`on ${bus.describe}`);
});

canTest('receive-side faults: seeded loss, duplication and reordering, counted', async (t) => {
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const tx = await bus.endpoint();
  const rx = (await bus.endpoint({ faults: { loss: 0.2, dup: 0.1, reorder: 0.1, seed: 42 } })) as FaultyBus;
  const got = collect(rx);
  for (let i = 0; i < 200; i++) {
    tx.post({ id: 0x400 | (i & 0x3ff), data: Uint8Array.of(i) });
    if (i % 50 === 49) await new Promise((r) => setImmediate(r)); // paced: ≤ 50 frames per turn
  }
  const f = rx.injected;
  await until(() => got.length === 200 - f.dropped + f.duplicated, 'all surviving frames delivered');
  t.log(`200 frames: ${JSON.stringify(f)}`);
  t.true(f.dropped > 10 && f.duplicated > 5 && f.reordered > 5);
  const order = got.map((g) => g.data[0]!);
  t.true(order.some((v, i) => i > 0 && v < order[i - 1]!), 'some frames arrived out of order');
  t.is(new Set(order).size, 200 - f.dropped);
});

test('an interface that cannot be opened fails with a message naming it', async (t) => {
  const e = await t.throwsAsync(openCanBus('nosuchcan7'));
  t.regex(e!.message, /cannot open SocketCAN interface "nosuchcan7"/);
  t.regex(e!.message, /virtual:NAME/);
});

test('a second SocketCAN interface is a separate bus (HIL lane) / virtual buses by name are separate', async (t) => {
  // With HSX_CAN_IFACE2 this checks vcan0 ≠ vcan1; without it, two virtual bus names.
  const one = await openTestBus();
  const two = CAN_IFACE2 ? await openTestBus({ iface: CAN_IFACE2 }) : await openTestBus();
  t.teardown(async () => {
    await one.close();
    await two.close();
  });
  const a = await one.endpoint();
  const b = await one.endpoint();
  const c = await two.endpoint();
  const atB = collect(b);
  const atC = collect(c);
  a.post({ id: 0x321, data: Uint8Array.of(0xaa) });
  await until(() => atB.length === 1, 'same bus delivers');
  await new Promise((r) => setTimeout(r, 20));
  t.is(atC.filter((f) => f.id === 0x321).length, 0);
  t.log(`${CAN_IFACE ?? 'virtual'} vs ${CAN_IFACE2 ?? 'another virtual bus'}`);
});

test('bit counts: a classic 8-byte frame is 111 bits plus stuffing (≤ 135); FD runs its data phase fast', (t) => {
  const zeros = frameBits({ id: 0x000, data: new Uint8Array(8) });
  const alternating = frameBits({ id: 0x555, data: new Uint8Array(8).fill(0x55) });
  for (const b of [zeros, alternating]) {
    t.true(b.nominal >= 111 && b.nominal <= 135, `${b.nominal}`);
    t.is(b.data, 0);
  }
  t.true(zeros.nominal > alternating.nominal, 'long runs of equal bits cost stuff bits');
  // Empty classic frame: SOF+ID+RTR+IDE+r0+DLC+CRC = 34 bits (+ stuffing) + 13.
  const empty = frameBits({ id: 0x7ff, data: new Uint8Array(0) });
  t.true(empty.nominal >= 47 && empty.nominal <= 47 + 8);
  const fd = frameBits({ id: 0x400, data: new Uint8Array(64).fill(0x5a), fd: true });
  // Arbitration phase SOF..BRS (17 bits) + trailer (13) at the nominal rate; 64 data bytes at the data rate.
  t.true(fd.nominal >= 30 && fd.nominal <= 34, `${fd.nominal}`);
  t.true(fd.data >= 1 + 4 + 512 + 25 + 7 && fd.data <= 1 + 4 + 512 + 25 + 7 + 130, `${fd.data}`);
  t.deepEqual([0, 8, 9, 13, 17, 33, 49, 64].map(fdPaddedLength), [0, 8, 12, 16, 20, 48, 64, 64]);
});

test('timed virtual bus: one frame at a time, lowest identifier wins arbitration', async (t) => {
  const bus = new VirtualBus({ bitrate: 500_000 });
  const eps = await Promise.all([0, 1, 2, 3].map(async () => {
    const ep = bus.attach();
    await ep.open();
    return ep;
  }));
  const got = collect(eps[3]!);
  eps[0]!.post({ id: 0x700, data: new Uint8Array(8) }); // takes the idle bus
  eps[0]!.post({ id: 0x650, data: new Uint8Array(8) }); // queued behind it at its sender
  eps[1]!.post({ id: 0x300, data: new Uint8Array(8) });
  eps[2]!.post({ id: 0x100, data: new Uint8Array(8) });
  await until(() => got.length === 4, 'all four frames');
  t.deepEqual(got.map((f) => f.id), [0x700, 0x100, 0x300, 0x650]);
  t.is(bus.stats.frames, 4);
  t.true(bus.stats.busMicros >= (4 * 111 * 1e6) / 500_000, 'each frame held the bus for its bits');
});

test('--can addresses', (t) => {
  t.like(parseCanAddress('vcan0'), { ok: true, address: { kind: 'socketcan', iface: 'vcan0' } });
  t.like(parseCanAddress('can0?loss=0.01&seed=4'), { ok: true, address: { kind: 'socketcan', faults: { loss: 0.01, seed: 4 } } });
  t.like(parseCanAddress('virtual:bench'), { ok: true, address: { kind: 'virtual', name: 'bench' } });
  t.like(parseCanAddress('virtual:127.0.0.1:7000?bitrate=500000'), { ok: true, address: { kind: 'virtual-net', host: '127.0.0.1', port: 7000, timing: { bitrate: 500000 } } });
  for (const bad of ['vcan0?bitrate=500000', 'virtual:127.0.0.1:70000', 'vcan0?loss=1.5', 'vcan0?frobs=1', 'has space', 'virtual:a/b']) {
    t.false(parseCanAddress(bad).ok, bad);
  }
});

test('the bus is the project transport `can`: open, send, receive, status, close through the registry', async (t) => {
  await import('../src/link/can/index.js'); // registers the kind
  const { createTransport } = await import('../src/link/transport.js');
  const a = createTransport('can', { address: 'virtual:registry-test' });
  const b = createTransport('can', { address: 'virtual:registry-test' });
  await a.open();
  await b.open();
  const got: unknown[] = [];
  const stop = b.receive((m) => got.push(m));
  await a.send({ id: 0x42, data: Uint8Array.of(9, 8, 7) });
  await until(() => got.length === 1, 'frame through the registry transport');
  t.like(got[0], { id: 0x42 });
  t.is(a.status().state, 'open');
  await t.throwsAsync(a.send({ id: 0x42, data: new Uint8Array(9) }), { message: /exceeds 8/ });
  stop();
  await a.close();
  await b.close();
  t.is(b.status().state, 'closed');
  t.throws(() => createTransport('can', {}), { message: /options.address/ });
  t.throws(() => createTransport('can', { address: 'virtual:x?bogus=1' }), { message: /unknown option/ });
});

test('loopback virtual bus: the first process hosts the hub; when it leaves, the others re-host and carry on', async (t) => {
  const { NetVirtualBus } = await import('../src/link/can/virtual-net.js');
  const { createServer } = await import('node:net');
  // A free port: listen on 0, note it, close.
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  const a = new NetVirtualBus('127.0.0.1', port);
  const b = new NetVirtualBus('127.0.0.1', port);
  await a.open();
  await b.open();
  t.truthy(a.hostedHub, 'nobody was listening: a hosts the hub');
  t.is(b.hostedHub, null, 'b connected to it');
  const atB = collect(b);
  a.post({ id: 0x10, data: Uint8Array.of(1) });
  await until(() => atB.length === 1, 'a → b through the hub');
  const reconnected = new Promise<void>((resolve) => b.on('status', (s: { state: string }) => s.state === 'open' && resolve()));
  await a.close(); // the hosting process goes away
  await reconnected;
  t.truthy(b.hostedHub, 'b re-hosted the hub');
  const c = new NetVirtualBus('127.0.0.1', port);
  await c.open();
  const atC = collect(c);
  b.post({ id: 0x11, data: Uint8Array.of(2) });
  await until(() => atC.length === 1, 'b → c through the new hub');
  t.deepEqual([...atC[0]!.data], [2]);
  await c.close();
  await b.close();
});
