#!/usr/bin/env node
// HIL lane smoke check: proves that the `socketcan` native addon works on a real SocketCAN interface
// (vcan0 by default; HSX_CAN_IFACE / HSX_CAN_IFACE2 pick others). Two raw channels on the same bus:
// classic standard, extended, RTR and CAN FD (64 bytes, BRS) frames go from one to the other and are compared
// field by field; a second interface must not see the first one's traffic; an unpaced burst must arrive whole
// (it does only when the socket receive buffer is big enough, which the VM's init raises).
// Prints one line per check and `hil smoke socketcan: N ok, N bad`; exit 1 if any check failed.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const can = require('socketcan');
const iface = process.env.HSX_CAN_IFACE || 'vcan0';
const iface2 = process.env.HSX_CAN_IFACE2 || 'vcan1';
const BURST = 2000;

let ok = 0, bad = 0;
function check(name, cond, detail = '') {
  if (cond) ok++; else bad++;
  console.log(`${cond ? 'ok ' : 'BAD'} socketcan ${name}${detail ? ` (${detail})` : ''}`);
}

/** Collects the frames one channel receives; `next(n)` resolves with the next n frames or rejects after ms. */
function receiver(channel) {
  const frames = [];
  let waiter = null;
  channel.addListener('onMessage', (msg) => {
    frames.push(msg);
    if (waiter && frames.length >= waiter.n) { const w = waiter; waiter = null; w.resolve(frames.splice(0, w.n)); }
  });
  return {
    frames,
    next(n, ms = 20_000) {
      if (frames.length >= n) return Promise.resolve(frames.splice(0, n));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiter = null; reject(new Error(`got ${frames.length}/${n} frames in ${ms} ms`)); }, ms);
        waiter = { n, resolve: (f) => { clearTimeout(timer); resolve(f); } };
      });
    },
  };
}

const tx = can.createRawChannel(iface, false);
const rxChannel = can.createRawChannel(iface, false);
const otherTx = can.createRawChannel(iface2, false);
const otherRxChannel = can.createRawChannel(iface2, false);
const rx = receiver(rxChannel);
const otherRx = receiver(otherRxChannel);
const channels = [tx, rxChannel, otherTx, otherRxChannel];
for (const c of channels) c.start();

const fdPayload = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff));
const cases = [
  { name: 'classic standard id', send: () => tx.send({ id: 0x123, ext: false, rtr: false, data: Buffer.from([0xde, 0xad, 0xbe, 0xef]) }),
    expect: { id: 0x123, ext: false, rtr: false, data: Buffer.from([0xde, 0xad, 0xbe, 0xef]) } },
  { name: 'classic extended id', send: () => tx.send({ id: 0x1f334455, ext: true, rtr: false, data: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]) }),
    expect: { id: 0x1f334455, ext: true, rtr: false, data: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]) } },
  { name: 'classic RTR', send: () => tx.send({ id: 0x321, ext: false, rtr: true, data: Buffer.alloc(0) }),
    expect: { id: 0x321, ext: false, rtr: true, data: Buffer.alloc(0) } },
  { name: 'CAN FD 64 bytes with BRS', send: () => tx.sendFD({ id: 0x18daf110, ext: true, rtr: false, fd_brs: true, data: fdPayload }),
    expect: { id: 0x18daf110, ext: true, rtr: false, data: fdPayload } },
];

try {
  for (const c of cases) {
    c.send();
    const [got] = await rx.next(1);
    const same = got.id === c.expect.id && !!got.ext === c.expect.ext && !!got.rtr === c.expect.rtr
      && Buffer.compare(got.data, c.expect.data) === 0;
    check(c.name, same, same ? `${got.data.length} bytes` : `got ${JSON.stringify({ ...got, data: got.data.toString('hex') })}`);
  }

  for (let i = 0; i < BURST; i++) {
    tx.send({ id: 0x200 + (i & 0xff), ext: false, rtr: false, data: Buffer.from([i & 0xff, (i >> 8) & 0xff]) });
  }
  const burst = await rx.next(BURST, 60_000).catch((e) => { check(`unpaced burst of ${BURST}`, false, e.message); return null; });
  if (burst) {
    const inOrder = burst.every((f, i) => f.data[0] === (i & 0xff) && f.data[1] === ((i >> 8) & 0xff));
    check(`unpaced burst of ${BURST}`, inOrder, inOrder ? 'all arrived in order' : 'out of order or corrupted');
  }

  // A frame on the second interface reaches that bus's socket, and the first bus sees only its own marker.
  otherTx.send({ id: 0x7ff, ext: false, rtr: false, data: Buffer.from([0x55]) });
  const [onOther] = await otherRx.next(1);
  tx.send({ id: 0x100, ext: false, rtr: false, data: Buffer.from([0xaa]) });
  const [onFirst] = await rx.next(1);
  check(`${iface2} is a separate bus`, onOther.id === 0x7ff && onFirst.id === 0x100,
    `${iface2} got 0x${onOther.id.toString(16)}, ${iface} got 0x${onFirst.id.toString(16)}`);
} catch (e) {
  check('exchange', false, e instanceof Error ? e.message : String(e));
}
for (const c of channels) c.stop();
console.log(`hil smoke socketcan: ${ok} ok, ${bad} bad`);
process.exit(bad === 0 ? 0 : 1);
