/**
 * Value GET/SET over the HSX CAN value binding (ID = valueBase | node<<3 | op), answered with RET,
 * on the bus the environment selects. A SET of a persisted value is written through the engine's
 * value store; refusals come back as the engine's own error codes.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { DeviceIntake, InMemoryValueStore, nullEventSink, ProvisioningEngine, systemClock } from '../src/engine/index.js';
import { encodeF16 } from '../src/hxe/f16.js';
import type { CanFrame } from '../src/link/can/frame.js';
import { CanListener } from '../src/link/can/listener.js';
import { CanMaster } from '../src/link/can/master.js';
import { requestValue } from '../src/link/can/value-client.js';
import { watchValuePubs, type ValuePub } from '../src/link/can/value-watch.js';
import { CAN_SERIAL, openTestBus } from './support/can-bus.js';
import { imageOfSize } from './support/can-image.js';

const canTest = CAN_SERIAL ? test.serial : test;

canTest('GET and SET registered values by GROUP:ID; persisted SETs go through the value store; errors are typed', async (t) => {
  t.timeout(60_000);
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const store = new InMemoryValueStore();
  const engine = new ProvisioningEngine({ clock: systemClock, events: nullEventSink, valueStore: store });
  const devEp = await bus.endpoint();
  const listener = new CanListener({ bus: devEp, node: 5, intake: new DeviceIntake({ engine, clock: systemClock, events: nullEventSink }) });
  listener.start();
  t.teardown(() => listener.stop());
  const client = await bus.endpoint();

  // Load t04 (temperature 1:2 persisted at key 17, door_open 1:3 read-only) over the bus itself.
  const image = new Uint8Array(readFileSync(new URL('./fixtures/t04_value_cmd.hxe', import.meta.url)));
  t.true((await new CanMaster({ bus: client, image, nodes: [5], session: 31 }).run()).ok);

  // The raw frames, built by hand: GET 1:2 to node 5 is ID 0x028 [01 02]; the RET is ID 0x02C.
  const seen: CanFrame[] = [];
  const off = client.receive((f) => seen.push(f));
  client.post({ id: 0x028, data: Uint8Array.of(0x01, 0x02) });
  const ret = await waitFrame(seen, 0x02c);
  off();
  t.deepEqual([...ret.data], [0x01, 0x02, 0x4a, 0x40, 0x00], 'RET: oid, f16 12.5, status OK');

  t.like(await requestValue({ bus: client, node: 5, oid: 0x0102 }), { ok: true, value: 12.5, raw: 0x4a40 });
  t.like(await requestValue({ bus: client, node: 5, oid: 0x0102, raw: encodeF16(21.5) }), { ok: true, value: 21.5 });
  t.deepEqual(store.writes, [{ key: 17, raw: encodeF16(21.5), valueType: store.writes[0]?.valueType ?? '' }], 'write-through to persist key 17');
  t.like(await requestValue({ bus: client, node: 5, oid: 0x0102 }), { ok: true, value: 21.5 });
  t.like(await requestValue({ bus: client, node: 5, oid: 0x0103, raw: encodeF16(0) }), { ok: false, status: 'EPERM' });
  t.like(await requestValue({ bus: client, node: 5, oid: 0x0102, raw: encodeF16(200) }), { ok: false, status: 'EBADMSG' });
  t.like(await requestValue({ bus: client, node: 5, oid: 0x0909 }), { ok: false, status: 'ESRCH' });
  t.is(store.writes.length, 1, 'refused SETs change nothing');
  // Nobody is node 6: the client gives up after its retries.
  t.like(await requestValue({ bus: client, node: 6, oid: 0x0102, timeoutMs: 20, retries: 1 }), { ok: false, status: 'ETIMEDOUT', attempts: 2 });

  // Value traffic has lower identifiers than a running transfer: it is answered in the middle of one.
  let during: Awaited<ReturnType<typeof requestValue>> | null = null;
  const pending: Array<Promise<void>> = [];
  const big = imageOfSize(16384, 21, 'other_app');
  const r = await new CanMaster({
    bus: client, image: big, nodes: [5], session: 32,
    onProgress: (p) => {
      if (p.phase === 'data' && p.sent > 0 && pending.length === 0) {
        pending.push(requestValue({ bus: client, node: 5, oid: 0x0102 }).then((v) => void (during = v)));
      }
    },
  }).run();
  await Promise.all(pending);
  t.true(r.ok);
  t.like(during, { ok: true, value: 21.5 });
});

canTest('PUB frames (op 2) from any node are seen by a watcher on the bus; malformed ones and node 0 are counted and ignored', async (t) => {
  t.timeout(30_000);
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const watcherEp = await bus.endpoint();
  const node = await bus.endpoint();
  const got: ValuePub[] = [];
  let arrived: (() => void) | null = null;
  const watch = watchValuePubs(watcherEp, (p) => {
    got.push(p);
    arrived?.();
  });
  t.teardown(() => watch.stop());
  const next = (n: number) => new Promise<void>((resolve) => {
    arrived = () => got.length >= n && resolve();
  });
  // Built by hand (docs/can_protocol.md): node 9 PUB 3:4 = -2.5 is ID 0x04A [03 04 C1 00]; then a short
  // PUB, a PUB from node 0, a GET and a SET (not PUBs), and node 63 PUB 1:2 = 21.5.
  const two = next(2);
  node.post({ id: 0x04a, data: Uint8Array.of(0x03, 0x04, 0xc1, 0x00) });
  node.post({ id: 0x04a, data: Uint8Array.of(0x03, 0x04, 0xc1) });
  node.post({ id: 0x002, data: Uint8Array.of(0x01, 0x02, 0x4d, 0x60) });
  node.post({ id: 0x048, data: Uint8Array.of(0x01, 0x02) });
  node.post({ id: 0x049, data: Uint8Array.of(0x01, 0x02, 0x4d, 0x60) });
  node.post({ id: (63 << 3) | 2, data: Uint8Array.of(0x01, 0x02, 0x4d, 0x60) });
  await two;
  t.deepEqual(got, [
    { node: 9, oid: 0x0304, group: 3, id: 4, raw: encodeF16(-2.5) },
    { node: 63, oid: 0x0102, group: 1, id: 2, raw: encodeF16(21.5) },
  ]);
  t.deepEqual(watch.counters, { pubs: 2, malformed: 2 });
});

async function waitFrame(seen: CanFrame[], id: number): Promise<CanFrame> {
  for (let i = 0; i < 2000; i++) {
    const f = seen.find((x) => x.id === id);
    if (f) return f;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`no frame 0x${id.toString(16)}`);
}
