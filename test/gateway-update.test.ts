/**
 * Updates through the gateway, as a rig's client drives them: `serve` in its own process with a real
 * Mosquitto; the control port's `load` keeps the HSX reference's `app_exists`, `"replace": true`
 * turns it into an update (`provisioning.updated` on MQTT, the retained device state names the new
 * image's sha256, crc32 and version), a repeat is CURRENT, and a rollback brings the old image and
 * its persisted value back. Run twice in a row on the same state directory, with a restart between.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { ControlClient } from '../src/gateway/control/client.js';
import { startMosquitto } from './support/mosquitto.js';
import { startGateway, until } from './support/serve-process.js';
import { sha256Hex } from './update-images.js';

type Json = Record<string, unknown>;

test('control load: app_exists by default, replace updates (MQTT state names the new image), repeat is CURRENT; twice on one state dir', async (t) => {
  t.timeout(240_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = mkdtempSync(join(tmpdir(), 'hsx-upd-'));
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "upd"', 'log_level = "warn"',
    '[control]', 'listen = "127.0.0.1:0"',
    '[mqtt]', `url = "${broker.url}"`, 'topic_prefix = "hsx"',
    '[[devices]]', 'name = "dut"', 'state_dir = "state/dut"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
    '[boot]', 'confirm_window_ms = 0',
  ].join('\n'));
  const v1 = readFileSync('configs/sd/apps/sensor.hxe');
  const v2 = readFileSync('configs/sd/apps/sensor-v2.hxe');

  const got: Array<{ topic: string; payload: string }> = [];
  const sub = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  sub.on('message', (topic, p) => got.push({ topic, payload: p.toString() }));
  await sub.subscribeAsync('hsx/upd/#', { qos: 1 });
  t.teardown(() => sub.endAsync());
  const state = () => {
    const all = got.filter((m) => m.topic === 'hsx/upd/device/dut/state');
    return all.length ? (JSON.parse(all[all.length - 1]!.payload) as Json) : null;
  };

  for (const run of [1, 2]) {
    const gw = await startGateway(config);
    t.teardown(() => gw.child.kill('SIGKILL'));
    const c = await ControlClient.connect(gw.control);
    if (!c.ok) return t.fail(c.error.message);
    const client = c.value;
    const req = async (cmd: string, body: Json) => client.request(cmd, { device: 'dut', ...body });

    if (run === 1) {
      // v1, persisted: what the device boots from the second time
      const l1 = await req('provision.load', { data: v1.toString('base64') });
      if (!l1.ok) return t.fail(JSON.stringify(l1.error));
      const pid = (l1.value['task'] as Json)['pid'] as number;
      t.true((await req('provision.persist', { pid, target: 'permanent' })).ok);
    } else {
      const st = await req('provision.status', {});
      if (!st.ok) return t.fail(st.error.message);
      const tasks = st.value['tasks'] as Json[];
      t.is(tasks.length, 1, 'the persisted v1 came back at boot');
      t.is(tasks[0]!['sha256'], sha256Hex(v1));
    }

    // The executive's `load` of a running single-instance app keeps the reference's answer.
    const refused = await req('provision.load', { data: v2.toString('base64') });
    t.false(refused.ok);
    if (!refused.ok) t.regex(refused.error.message, /app_exists/);

    got.length = 0;
    const upd = await req('provision.load', { data: v2.toString('base64'), replace: true });
    if (!upd.ok) return t.fail(JSON.stringify(upd.error));
    t.is(upd.value['outcome'], 'updated', `run ${run}`);
    t.is((upd.value['replaced'] as Json)['sha256'], sha256Hex(v1));
    t.is((upd.value['task'] as Json)['sha256'], sha256Hex(v2));
    await until(() => got.some((m) => m.topic === 'hsx/upd/device/dut/events/provisioning/updated'), 'provisioning.updated on MQTT');
    const updated = JSON.parse(got.find((m) => m.topic === 'hsx/upd/device/dut/events/provisioning/updated')!.payload) as Json;
    t.is(((updated['data'] as Json)['from'] as Json)['sha256'], sha256Hex(v1));
    t.is(((updated['data'] as Json)['to'] as Json)['sha256'], sha256Hex(v2));
    await until(() => state()?.['sha256'] === sha256Hex(v2), 'retained state of v2');
    const s = state()!;
    t.is(s['crc32'], v2.readUInt32BE(28), 'the state carries the running image crc32 (header field)');
    t.is(s['version'], '0.0.0+0');
    t.is(s['app_name'], 'sensor_app');
    const ps = await req('provision.status', {});
    if (!ps.ok) return t.fail(ps.error.message);
    t.is((ps.value['tasks'] as Json[]).length, 1, 'the old task is gone, the new one runs');

    const again = await req('provision.load', { data: v2.toString('base64'), replace: true });
    if (!again.ok) return t.fail(JSON.stringify(again.error));
    t.is(again.value['outcome'], 'current');

    client.close();
    gw.child.kill('SIGTERM');
    await new Promise((r) => gw.child.once('exit', r));
  }
});
