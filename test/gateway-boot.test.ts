import test from 'ava';
import { cpSync, mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CollectingEventSink, FakeClock } from '../src/engine/index.js';
import { bootDevice } from '../src/gateway/boot.js';
import { openSimulatedDevice, type SimulatedDevice } from '../src/persist/simulated-device.js';
import { sdManifestSource, preloadDirSource } from '../src/link/sources/source-transport.js';

const SMALL = { flashSize: 256 * 1024, sectorSize: 4096, pageSize: 256, framSize: 16 * 1024 };

function setup() {
  const root = mkdtempSync(join(tmpdir(), 'hsx-boot-'));
  cpSync('configs/sd', join(root, 'sd'), { recursive: true });
  return { root, state: join(root, 'state'), manifest: join(root, 'sd', 'manifest.toml') };
}

async function open(state: string, events: CollectingEventSink, clock: FakeClock): Promise<SimulatedDevice> {
  return openSimulatedDevice({ name: 'dut', stateDir: state, geometry: SMALL, events, clock });
}

const types = (s: CollectingEventSink) => s.events.map((e) => e.type);

test('first boot loads the SD images, persists the one marked persist, confirms it after the window', async (t) => {
  const { state, manifest } = setup();
  const events = new CollectingEventSink();
  const clock = new FakeClock(1000);
  const dev = await open(state, events, clock);
  const r = await bootDevice({ device: dev, stateDir: state, sources: [sdManifestSource(manifest)], events, clock, maxFailedBoots: 3, confirmWindowMs: 5000 });
  t.true(r.ok, JSON.stringify(r.failed));
  t.is(r.restored, null);
  t.deepEqual(r.loaded.map((l) => l.appName), ['sensor_app', 't01_minimal']);
  t.truthy(dev.storage.imageStore.active());
  t.false(dev.storage.imageStore.active()!.confirmed, 'committed as a test image');
  clock.advance(5000);
  await new Promise((res) => setTimeout(res, 50));
  t.true(dev.storage.imageStore.active()!.confirmed, 'confirmed after the window');
  t.true(types(events).includes('boot.attempt'));
  t.true(types(events).includes('boot.source'));
  t.true(types(events).includes('provisioning.persisted'));
  t.true(events.events.every((e) => e.type !== 'boot.attempt' || e.data['device'] === 'dut'));
  await dev.close();
});

test('after a power cycle the persisted image and its persisted value come back; SD duplicates are not loaded twice', async (t) => {
  const { state, manifest } = setup();
  const clock = new FakeClock(0);
  let events = new CollectingEventSink();
  let dev = await open(state, events, clock);
  await bootDevice({ device: dev, stateDir: state, sources: [sdManifestSource(manifest)], events, clock, maxFailedBoots: 3, confirmWindowMs: 0 });
  clock.advance(1);
  await new Promise((res) => setTimeout(res, 50));
  // temperature (group 1, id 2) has persist key 17; init 12.5 = 0x4A40; 30.0 = 0x4F80.
  const oid = (1 << 8) | 2;
  t.true(dev.engine.setValue(oid, 0x4f80).ok);
  await dev.close();

  events = new CollectingEventSink();
  dev = await open(state, events, clock);
  const r = await bootDevice({ device: dev, stateDir: state, sources: [sdManifestSource(manifest)], events, clock, maxFailedBoots: 3, confirmWindowMs: 0 });
  t.true(r.ok, JSON.stringify(r.failed));
  t.is(r.restored?.appName, 'sensor_app');
  t.deepEqual(r.loaded.map((l) => l.appName), ['t01_minimal'], 'the SD copy of the restored image is skipped');
  const v = dev.engine.getValue(oid);
  t.true(v.ok);
  if (v.ok) t.is(v.value.raw, 0x4f80, 'persisted value restored over the init value');
  t.true(events.events.some((e) => e.type === 'value.restored' && e.data['key'] === 17 && e.data['raw'] === 0x4f80));
  await dev.close();
});

test('failed boots are counted across restarts; after the limit the device alerts and stops retrying', async (t) => {
  const { root, state } = setup();
  const bad = join(root, 'bad');
  cpSync('configs/sd', bad, { recursive: true });
  const img = readFileSync(join(bad, 'apps', 'minimal.hxe'));
  img.writeUInt8(img.readUInt8(img.length - 1) ^ 0xff, img.length - 1); // CRC mismatch
  writeFileSync(join(bad, 'apps', 'minimal.hxe'), img);
  writeFileSync(join(bad, 'm.toml'), 'version = 1\n[[images]]\npath = "apps/minimal.hxe"\n');
  const clock = new FakeClock(0);
  const seen: string[][] = [];
  for (let i = 0; i < 4; i++) {
    const events = new CollectingEventSink();
    const dev = await open(state, events, clock);
    const r = await bootDevice({ device: dev, stateDir: state, sources: [sdManifestSource(join(bad, 'm.toml'))], events, clock, maxFailedBoots: 3, confirmWindowMs: 0 });
    seen.push(types(events).filter((x) => x.startsWith('boot.')));
    if (i < 3) {
      t.false(r.ok);
      t.false(r.halted);
      t.regex(r.failed[0]!.error, /^EBADMSG:crc_mismatch/);
    } else {
      t.true(r.halted, 'fourth boot gives up');
    }
    await dev.close();
  }
  t.true(seen[2]!.includes('boot.alert'), 'the third failure raises the alert');
  t.deepEqual(seen[3], ['boot.alert']);
});

test('preload directory comes before the SD manifest', async (t) => {
  const { root, state, manifest } = setup();
  const pre = join(root, 'pre');
  cpSync('test/fixtures', pre, { recursive: true, filter: (s) => !s.includes('.') || s.endsWith('t02_single_instance_reqcap.hxe') || s === 'test/fixtures' });
  const events = new CollectingEventSink();
  const clock = new FakeClock(0);
  const dev = await open(state, events, clock);
  const r = await bootDevice({ device: dev, stateDir: state, sources: [preloadDirSource(pre), sdManifestSource(manifest)], events, clock, maxFailedBoots: 3, confirmWindowMs: 0 });
  t.true(r.ok, JSON.stringify(r.failed));
  t.true(r.loaded[0]!.source.startsWith('file:'));
  t.true(r.loaded.slice(1).every((l) => l.source.startsWith('sd:')));
  await dev.close();
});
