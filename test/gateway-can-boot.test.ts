/**
 * The CAN step of the boot sequence and the gateway's power cycle, in process on a virtual bus:
 * devices wait `boot.can_wait_ms` for a master's broadcast, take the image, persist it, and boot
 * it from their own flash after a power cycle.
 */
import test from 'ava';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../src/gateway/config.js';
import { Gateway } from '../src/gateway/gateway.js';
import { createLogger } from '../src/gateway/logger.js';
import { openCanBus } from '../src/link/can/address.js';
import { CanMaster } from '../src/link/can/master.js';

test('devices take an image a CAN master broadcasts during boot, and boot it from flash after a power cycle', async (t) => {
  t.timeout(60_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-canboot-'));
  const cfg = validateConfig({
    gateway: { id: 'canboot', log_level: 'silent' },
    control: { listen: '127.0.0.1:0' },
    links: { can: [{ interface: 'canboot-bus', backend: 'virtual', timing: false, role: 'listener' }] },
    devices: [
      { name: 'n1', state_dir: join(dir, 'n1'), node_id: 1, flash: { size: 262144 }, fram: { size: 16384 } },
      { name: 'n2', state_dir: join(dir, 'n2'), node_id: 2, flash: { size: 262144 }, fram: { size: 16384 } },
    ],
    boot: { can_wait_ms: 6_000 },
  });
  if (!cfg.ok) return t.fail(cfg.error.message);
  const image = new Uint8Array(readFileSync('test/fixtures/t04b_value_cmd_help.hxe'));
  const starting = Gateway.start(cfg.value, createLogger('silent', { pretty: false }), { controlPort: 0 });
  // The master announces while the gateway is still booting its devices.
  const bus = await openCanBus('virtual:canboot-bus');
  await new Promise((r) => setTimeout(r, 300));
  const result = await new CanMaster({ bus, image, nodes: [1, 2] }).run();
  t.true(result.ok, JSON.stringify(result.verdicts));
  const started = await starting;
  if (!started.ok) return t.fail(started.error.message);
  const gw = started.value;
  t.teardown(() => gw.stop());
  for (const name of ['n1', 'n2']) {
    const tasks = gw.devices.get(name)!.engine.ps();
    t.is(tasks.length, 1, `${name} loaded the broadcast image`);
    t.is(tasks[0]!.source, 'can:canboot-bus');
    t.deepEqual(gw.bootReports.get(name)!.failed, []);
  }
  t.truthy(gw.devices.get('n1')!.storage.imageStore.active(), 'persisted by the listener');

  const before = gw.devices.get('n1')!;
  const after = await gw.powerCycle('n1');
  t.not(after, before, 'a new device object: files were closed and reopened');
  t.is(after.engine.ps()[0]?.appName, 'sensor_app');
  t.true(after.engine.ps()[0]!.source.startsWith('store:'), 'booted from its own flash');
  await bus.close();
});
