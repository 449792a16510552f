/**
 * The roles as separate processes, through the real CLI: three `device --can` listener processes
 * on one bus, flashed by a `flash --can` process (classic, with loss at one device) and by an
 * in-process master (CAN FD), then a `can set` process against a device (and the state it persisted). Same assertions on the
 * virtual bus (hub on loopback) and on SocketCAN (HSX_CAN_IFACE=vcan0).
 */
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevice } from '../src/persist/index.js';
import { fileURLToPath } from 'node:url';
import { runCanDevice, runCanFlash, runCanValue } from '../src/link/can/cli.js';
import { CanMaster } from '../src/link/can/master.js';
import { requestValue } from '../src/link/can/value-client.js';
import { CAN_SERIAL, openTestBus, spawnCli, type CliChild } from './support/can-bus.js';

const canTest = CAN_SERIAL ? test.serial : test;
const fixture = (name: string): string => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

canTest('device processes take a broadcast from a flash process (classic) and from a master (FD); can get|set reach them', async (t) => {
  t.timeout(180_000);
  const bus = await openTestBus();
  const devices: CliChild[] = [];
  t.teardown(async () => {
    for (const d of devices) d.child.kill('SIGTERM');
    await Promise.all(devices.map((d) => d.exited));
    await bus.close();
  });
  const state = mkdtempSync(join(tmpdir(), 'can-device-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  for (const node of [1, 2, 3]) {
    // Node 3 loses 5% of what it receives: the broadcast must repair it without troubling the others.
    // Node 1 keeps its flash and FRAM files in a state directory.
    const address = bus.processAddress(node === 3 ? { loss: 0.05, seed: 33 } : undefined);
    devices.push(spawnCli(['device', '--can', address, '--node', String(node), '--json', ...(node === 1 ? ['--state', state] : [])]));
  }
  await Promise.all(devices.map((d) => d.waitFor((l) => l['type'] === 'ready')));

  // 1. A flash process, classic frames, JSON lines.
  // Base timeouts of 400 ms: device processes in the HIL VM answer slowly; on a clean exchange no timer fires.
  const flash = spawnCli(['flash', '--can', bus.processAddress(), '--nodes', '1-3', '--json', '--can-session', '21', '--can-timeout', '400', fixture('t04_value_cmd.hxe')]);
  const code = await flash.exited;
  const verdicts = flash.lines.filter((l) => l['type'] === 'verdict');
  const summary = flash.lines.find((l) => l['type'] === 'summary');
  t.log(`flash process: exit ${code}; ${JSON.stringify(summary?.['sent'])}, ${summary?.['repairedChunks']} repaired; stderr: ${flash.stderr().trim()}`);
  t.is(code, 0);
  t.deepEqual(verdicts.map((v) => [v['node'], v['status']]), [[1, 'READY'], [2, 'READY'], [3, 'READY']]);
  // Session 21 is the probe (what each node runs and decodes); the image goes in session 22.
  for (const d of devices) {
    const v = await d.waitFor((l) => l['type'] === 'verdict' && l['session'] === 22);
    t.is(v['status'], 'READY');
    t.is(v['appName'], 'sensor_app');
  }

  // 2. An in-process master, CAN FD, to the same processes.
  const ep = await bus.endpoint({ fd: true });
  const image = new Uint8Array(readFileSync(fixture('t10_test_stdio_mailbox.hxe')));
  const r = await new CanMaster({ bus: ep, image, nodes: [1, 2, 3], fd: true, session: 23, timeoutMs: 400 }).run();
  t.true(r.ok, JSON.stringify(r.verdicts));
  for (const d of devices) t.is((await d.waitFor((l) => l['type'] === 'verdict' && l['session'] === 23))['status'], 'READY');

  // 3. Values over the bus, from separate processes.
  const set = spawnCli(['can', 'set', '--can', bus.processAddress(), '--node', '1', '1:2', '21.5', '--json']);
  t.is(await set.exited, 0, set.stderr());
  t.like(set.lines[0], { type: 'value', op: 'set', ok: true, node: 1, group: 1, id: 2, value: 21.5 });
  t.like(await requestValue({ bus: ep, node: 1, oid: 0x0102 }), { ok: true, value: 21.5, raw: 0x4d60 });
  const denied = await requestValue({ bus: ep, node: 2, oid: 0x0103, raw: 0 });
  t.like(denied, { ok: false, status: 'EPERM' }, 'a read-only value is refused');

  // Node 1 persisted what it was sent: the last image is the active one in its flash file, and the
  // SET of the persisted value 1:2 (persist key 17) is in its FRAM journal.
  devices[0]!.child.kill('SIGTERM');
  t.is(await devices[0]!.exited, 0);
  const stored = await openDevice(state);
  try {
    const active = stored.imageStore.active();
    t.truthy(active);
    t.true(Buffer.from(active!.image).equals(Buffer.from(image)), 'flash holds the FD-flashed image');
    t.is(stored.valueStore.entries().get(17)?.raw, 0x4d60);
  } finally {
    await stored.close();
  }
});

test('usage errors exit 2 before any bus is opened; an interface that cannot be opened exits 1', async (t) => {
  const img = fixture('t01_minimal.hxe');
  const err = process.stderr.write;
  const said: string[] = [];
  process.stderr.write = ((chunk: string) => (said.push(String(chunk)), true)) as typeof process.stderr.write;
  try {
    t.is(await runCanFlash(img, { can: 'virtual:nobus', nodes: '0-3' }), 2);
    t.is(await runCanFlash(img, { can: 'not a valid iface!' }), 2);
    t.is(await runCanFlash(img, { can: 'virtual:nobus?loss=2' }), 2);
    t.is(await runCanDevice({ can: 'virtual:nobus', node: '64' }), 2);
    t.is(await runCanValue('get', '1-2', undefined, { can: 'virtual:nobus', node: '1' }), 2);
    t.is(await runCanValue('set', '1:2', 'warm', { can: 'virtual:nobus', node: '1' }), 2);
    // A SocketCAN interface that does not exist (or a kernel without CAN): a failure, not a usage error.
    t.is(await runCanFlash(img, { can: 'nosuchcan9' }), 1);
  } finally {
    process.stderr.write = err;
  }
  const text = said.join('');
  t.regex(text, /node id must be 1\.\.63/);
  t.regex(text, /not a SocketCAN interface name/);
  t.regex(text, /loss is a probability/);
  t.regex(text, /expected GROUP:ID/);
  t.regex(text, /cannot open SocketCAN interface "nosuchcan9"/);
});
