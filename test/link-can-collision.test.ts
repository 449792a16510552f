/**
 * Two devices configured with one node id on a bus (issue 24, item 3): the master tells them apart by
 * the instance tag each listener puts in its JOIN, reports `node_id_collision` for that node (never
 * READY), and the other nodes are unaffected. Real device processes on the cross-process virtual bus
 * (or vcan in the HIL lane).
 */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJoin, encodeJoin, JoinFlag } from '../src/link/can/messages.js';
import { openTestBus, spawnCli, type CliChild } from './support/can-bus.js';
import { sensorOfSize } from './update-images.js';

test('JOIN carries the instance tag in the high nibble of its flags byte; a JOIN without one decodes as 0', (t) => {
  const b = encodeJoin({ session: 9, flags: JoinFlag.JOINED, have: 0, instance: 11 });
  t.is(b[1], (11 << 4) | JoinFlag.JOINED, 'byte 1: instance tag 11 above the JOINED flag');
  t.like(decodeJoin(b), { session: 9, flags: JoinFlag.JOINED, instance: 11 });
  t.like(decodeJoin(Uint8Array.of(9, JoinFlag.CURRENT, 0, 0, 0)), { flags: JoinFlag.CURRENT, instance: 0 });
});

test('two devices on node 7: the flash reports node_id_collision for 7 (exit 1, never READY) while node 8 is READY', async (t) => {
  t.timeout(120_000);
  const bus = await openTestBus();
  const dir = mkdtempSync(join(tmpdir(), 'hsx-collision-'));
  const children: CliChild[] = [];
  t.teardown(async () => {
    for (const c of children) c.child.kill('SIGKILL');
    await bus.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const device = async (node: number): Promise<{ child: CliChild; instance: number }> => {
    const c = spawnCli(['device', '--can', bus.processAddress(), '--node', String(node), '--json']);
    children.push(c);
    const ready = await c.waitFor((l) => l['type'] === 'ready');
    return { child: c, instance: Number(ready['instance']) };
  };
  const first = await device(7);
  // Tags are drawn at random (1 in 15 alike): a second device with the first one's tag is started again.
  let second = await device(7);
  while (second.instance === first.instance) {
    second.child.child.kill('SIGKILL');
    second = await device(7);
  }
  await device(8);
  // The second time: a new build to the same devices (an update; node 8 is UPDATED).
  for (const round of [1, 2]) {
    const image = join(dir, `sensor-${round}.hxe`);
    writeFileSync(image, sensorOfSize(round + 2, 4000));
    const flash = spawnCli(['flash', '--can', bus.processAddress(), '--nodes', '7,8', '--json', image]);
    const code = await flash.exited;
    t.is(code, 1, `round ${round}: a collision fails the flash`);
    const verdicts = flash.lines.filter((l) => l['type'] === 'verdict');
    t.like(verdicts.find((v) => v['node'] === 7), { status: 'EEXIST', reason: 'node_id_collision' }, `round ${round}`);
    const summary = flash.lines.find((l) => l['type'] === 'summary')!;
    t.deepEqual(summary['node_id_collisions'], [7]);
    t.regex(String(summary['hint']), /node 7: two devices answered as one node id; give each device on the bus its own node id/);
    t.like(verdicts.find((v) => v['node'] === 8), { status: round === 1 ? 'READY' : 'UPDATED' }, `round ${round}: node 8 is unaffected`);
  }
});
