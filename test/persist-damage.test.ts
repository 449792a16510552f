import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_GEOMETRY } from '../src/persist/device.js';
import { DEVICE_FILE_HEADER_SIZE } from '../src/persist/device-file.js';
import { FRAM_HEADER_SIZE } from '../src/persist/value-journal.js';
import { partitionBytes, partitionOffset } from '../src/persist/layout.js';
import {
  EventRecorder, ManualClock, bootMemory, formatMemoryDevice, openDevice, openStores, testMeta, type DeviceGeometry,
} from '../src/persist/index.js';
import { runCli } from './hxe-cli-run.js';
import { openTestBus, spawnCli } from './support/can-bus.js';
import { sensorOfSize, sha256Hex } from './update-images.js';

/**
 * Damaged state is never silent (issue 24, item 1): flipped bytes in the status records, in a committed
 * image and in the FRAM headers, and a deleted fram.bin. For every damage the device runs the old or
 * the new image (never nothing while an image verifies) and raises a `boot.alert` naming file and offset.
 */
const GEOMETRY: Partial<DeviceGeometry> = { flashSize: 64 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 2, framSize: 8192 };
const SCHEMA = { valueType: 'f16' };
const V1 = sensorOfSize(1, 3000);
const V2 = sensorOfSize(2, 3000);
const V3 = sensorOfSize(3, 3000);
const meta = (version: string) => testMeta(version, 0, { appName: 'sensor_app' });

async function memoryDevice(images: Uint8Array[]) {
  const bytes = formatMemoryDevice(GEOMETRY);
  const { flash, fram } = bootMemory(bytes.flashBytes, bytes.framBytes);
  const s = await openStores(flash, fram, undefined, { clock: new ManualClock() });
  for (const [i, img] of images.entries()) await s.imageStore.commit(img, meta(String(i + 1)), 'permanent');
  return { bytes, layout: s.imageStore.layout };
}

async function bootCopy(flashBytes: Uint8Array, framBytes: Uint8Array) {
  const events = new EventRecorder();
  const { flash, fram } = bootMemory(flashBytes, framBytes);
  const s = await openStores(flash, fram, events, { clock: new ManualClock() });
  return { ...s, events, alerts: events.ofType('boot.alert') };
}

test('every byte of the status area flipped, one at a time: the old or the new image runs, with an alert every time, once', async (t) => {
  const d = await memoryDevice([V1, V2]);
  const status = partitionOffset(d.layout, d.layout.status);
  const statusBytes = partitionBytes(d.layout, d.layout.status);
  const recordSize = d.layout.statusRecordSize;
  const dataOffset = d.bytes.flashBytes.length - GEOMETRY.flashSize!; // the file header precedes the data
  let newImage = 0, oldImage = 0, quietAfter = 0;
  for (let i = 0; i < statusBytes; i++) {
    const flashBytes = d.bytes.flashBytes.slice();
    flashBytes[dataOffset + status + i]! ^= 0xff;
    const framBytes = d.bytes.framBytes.slice();
    const b = await bootCopy(flashBytes, framBytes);
    const active = b.imageStore.active();
    if (!active) return t.fail(`flip at status byte ${i}: the device runs nothing although both slots verify`);
    if (b.alerts.length !== 1) return t.fail(`flip at status byte ${i}: ${b.alerts.length} alerts, not exactly one`);
    const a = b.alerts[0]!;
    t.is(a.data['reason'], 'status_record_damaged', `flip at ${i}`);
    // The alert names the record slot holding the flipped byte.
    t.is(a.data['offset'], status + i - (i % recordSize), `flip at ${i}`);
    t.regex(String(a.data['message']), /status record at flash offset 0x[0-9a-f]+ fails its CRC check/);
    const sha = sha256Hex(active.image);
    if (sha === sha256Hex(V2)) newImage++;
    else if (sha === sha256Hex(V1)) oldImage++;
    else return t.fail(`flip at status byte ${i}: the device runs an image that is neither v1 nor v2`);
    // Once: the damaged slot is invalidated, so the next start runs the same image without a new alert.
    if (i % 61 === 0) {
      const again = await bootCopy(flashBytes, framBytes);
      t.is(again.alerts.length, 0, `flip at ${i}: the second start is quiet`);
      t.is(sha256Hex(again.imageStore.active()!.image), sha, `flip at ${i}: the second start runs the same image`);
      // And the damaged slot is never programmed over: the next update commits and boots quietly.
      await again.imageStore.commit(V3, meta('3'), 'permanent');
      const third = await bootCopy(flashBytes, framBytes);
      t.deepEqual(third.imageStore.active()?.image, V3, `flip at ${i}: an update after the damage runs`);
      t.is(third.alerts.length, 0, `flip at ${i}: the start after that update is quiet`);
      quietAfter++;
    }
  }
  t.log(`status flips: ${statusBytes} bytes flipped; ${newImage} boots ran v2, ${oldImage} ran v1; ${statusBytes} alerts (one per flip); 0 silently empty, 0 silent; ${quietAfter} second starts checked quiet, each then updated to v3`);
  t.is(newImage + oldImage, statusBytes);
  t.true(oldImage > 0, 'flipping the newest record falls back to the previous one, loudly');
});

test('the only status record damaged: the slots are searched, the image that verifies runs again, and the rebuilt status lasts', async (t) => {
  const d = await memoryDevice([V1]);
  const status = partitionOffset(d.layout, d.layout.status);
  const dataOffset = d.bytes.flashBytes.length - GEOMETRY.flashSize!;
  let rebuilt = 0;
  for (const at of [0, 4, 8, 30, 200, 508]) {
    const flashBytes = d.bytes.flashBytes.slice();
    flashBytes[dataOffset + status + at]! ^= 0xff;
    const b = await bootCopy(flashBytes, d.bytes.framBytes.slice());
    t.deepEqual(b.imageStore.active()?.image, V1, `flip at record byte ${at}`);
    t.is(b.imageStore.active()?.meta.appName, 'sensor_app');
    t.like(b.alerts[0]!, { type: 'boot.alert', data: { reason: 'status_record_damaged', offset: status, slot: 'A', app_name: 'sensor_app' } });
    t.regex(String(b.alerts[0]!.data['action']), /rebuilt the status from the slots: running sensor_app from slot A/);
    t.true(b.imageStore.recovery.actions.some((a) => a.startsWith('status_rebuilt_from_slots')));
    // The second boot: the rebuilt record holds; nothing to alert about any more.
    const again = await bootCopy(flashBytes, d.bytes.framBytes.slice());
    t.deepEqual(again.imageStore.active()?.image, V1);
    t.is(again.alerts.length, 0, 'the rebuilt status record is intact at the next boot');
    rebuilt++;
  }
  t.is(rebuilt, 6);
});

test('a flipped byte inside the running image: it never runs; the other slot does when it verifies, else the device starts empty — with an alert either way', async (t) => {
  const two = await memoryDevice([V1, V2]); // v2 in slot B, v1 in A
  const dataOffset = two.bytes.flashBytes.length - GEOMETRY.flashSize!;
  const slotB = partitionOffset(two.layout, two.layout.slots[1]);
  const flashBytes = two.bytes.flashBytes.slice();
  flashBytes[dataOffset + slotB + 1000]! ^= 0x01;
  const b = await bootCopy(flashBytes, two.bytes.framBytes.slice());
  t.deepEqual(b.imageStore.active()?.image, V1, 'v1 runs instead');
  t.like(b.alerts[0]!, { data: { reason: 'image_damaged', offset: slotB, slot: 'B', action: 'rolled back to slot A' } });

  const one = await memoryDevice([V1]);
  const slotA = partitionOffset(one.layout, one.layout.slots[0]);
  const f1 = one.bytes.flashBytes.slice();
  f1[dataOffset + slotA + 1000]! ^= 0x01;
  const e = await bootCopy(f1, one.bytes.framBytes.slice());
  t.is(e.imageStore.active(), null, 'a damaged image never runs');
  t.like(e.alerts[0]!, { data: { reason: 'image_damaged', offset: slotA, slot: 'A', action: 'started with no image (no other slot verifies)' } });
});

/** A device in real files (mapped) holding v1 and one persisted value, closed. */
async function fileDevice(t: { teardown(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-damage-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const dev = await openDevice(dir, GEOMETRY);
  await dev.imageStore.commit(V1, meta('1'), 'permanent');
  dev.valueStore.write(0x42, 0x4c30, SCHEMA); // 33.5 as f16... any raw works
  await dev.valueStore.flush();
  await dev.close();
  return { dir, flash: readFileSync(join(dir, 'flash.bin')), fram: readFileSync(join(dir, 'fram.bin')) };
}

test('every byte of the FRAM file and layout headers flipped, one at a time: the device starts with its image, values default (fram_damaged) and the damaged file is kept', async (t) => {
  const d = await fileDevice(t);
  // The file header (its first 64 bytes) and the value journal's layout header at the start of the data.
  const dataOffset = d.fram.length - GEOMETRY.framSize!;
  const offsets = [...Array(DEVICE_FILE_HEADER_SIZE).keys(), ...[...Array(FRAM_HEADER_SIZE).keys()].map((i) => dataOffset + i)];
  const span = offsets.length;
  let damaged = 0, unaffected = 0;
  for (const i of offsets) {
    for (const f of readdirSync(d.dir)) if (f.startsWith('fram.bin.damaged-')) unlinkSync(join(d.dir, f));
    const fram = Buffer.from(d.fram);
    fram[i]! ^= 0xff;
    writeFileSync(join(d.dir, 'fram.bin'), fram);
    writeFileSync(join(d.dir, 'flash.bin'), d.flash);
    const events = new EventRecorder();
    const dev = await openDevice(d.dir, GEOMETRY, events);
    try {
      t.deepEqual(dev.imageStore.active()?.image, V1, `FRAM flip at byte ${i}: the image still runs`);
      const read = dev.valueStore.read(0x42, SCHEMA);
      if (read.ok) {
        t.is(read.raw, 0x4c30);
        unaffected++;
        continue;
      }
      t.is(read.reason, 'fram_damaged', `FRAM flip at byte ${i}`);
      const alert = events.ofType('boot.alert')[0];
      t.like(alert, { data: { reason: 'fram_damaged', file: join(d.dir, 'fram.bin') } }, `FRAM flip at byte ${i}`);
      t.like(dev.alerts[0], { reason: 'fram_damaged' });
      const kept = readdirSync(d.dir).filter((f) => f.startsWith('fram.bin.damaged-'));
      t.is(kept.length, 1, 'the damaged file is kept for inspection');
      t.deepEqual(readFileSync(join(d.dir, kept[0]!)), fram, 'byte for byte');
      damaged++;
    } finally {
      await dev.close();
    }
  }
  t.log(`FRAM header flips: ${span} bytes flipped; ${damaged} detected (values defaulted, alert, file kept), ${unaffected} without effect; 0 devices refused to start`);
  t.is(damaged + unaffected, span);
  t.true(damaged >= FRAM_HEADER_SIZE, 'every byte of the CRC-covered layout header is detected');
});

test('fram.bin deleted: the device starts with its image, raises fram_missing, values default with that reason — and a second start is quiet', async (t) => {
  const d = await fileDevice(t);
  unlinkSync(join(d.dir, 'fram.bin'));
  const events = new EventRecorder();
  const dev = await openDevice(d.dir, GEOMETRY, events);
  t.deepEqual(dev.imageStore.active()?.image, V1);
  t.like(events.ofType('boot.alert')[0], { data: { reason: 'fram_missing', file: join(d.dir, 'fram.bin') } });
  t.deepEqual(dev.valueStore.read(0x42, SCHEMA), { ok: false, reason: 'fram_missing' });
  await dev.close();
  const quiet = new EventRecorder();
  const again = await openDevice(d.dir, GEOMETRY, quiet);
  t.is(quiet.ofType('boot.alert').length, 0, 'the re-created FRAM is the device\'s FRAM from now on');
  t.true(existsSync(join(d.dir, 'fram.bin')));
  await again.close();
});

test('a CAN device started on a damaged status record says BOOT ALERT and restores its image (real process)', async (t) => {
  const bus = await openTestBus();
  t.teardown(() => bus.close());
  const dir = mkdtempSync(join(tmpdir(), 'hsx-damage-can-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const dev = await openDevice(dir);
  await dev.imageStore.commit(V1, meta('1'), 'permanent');
  const status = partitionOffset(dev.imageStore.layout, dev.imageStore.layout.status);
  await dev.close();
  const flash = readFileSync(join(dir, 'flash.bin'));
  flash[flash.length - DEFAULT_GEOMETRY.flashSize + status + 40]! ^= 0xff;
  writeFileSync(join(dir, 'flash.bin'), flash);
  const info = await runCli(['flash-info', dir]);
  t.is(info.code, 0, info.stderr);
  t.regex(info.stdout, new RegExp(`DAMAGED: status record at flash offset 0x${status.toString(16)} fails its CRC check: no intact record describes the slots; the device rebuilds the status from slot\\(s\\) A`));
  for (const round of [1, 2]) {
    const d = spawnCli(['device', '--can', bus.processAddress(), '--node', '9', '--state', dir, '--json']);
    await d.waitFor((l) => l['type'] === 'ready').catch((e: Error) => { throw new Error(`${e.message}; stdout: ${JSON.stringify(d.lines)}`); });
    const alert = d.lines.find((l) => l['type'] === 'boot_alert');
    if (round === 1) t.like(alert, { reason: 'status_record_damaged', offset: status, file: join(dir, 'flash.bin') });
    else t.is(alert, undefined, 'the second start finds the rebuilt status');
    t.like(d.lines.find((l) => l['type'] === 'restore'), { ok: true, appName: 'sensor_app', sha256: sha256Hex(V1) });
    d.child.kill('SIGTERM');
    await d.exited;
  }
});
