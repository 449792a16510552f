/**
 * The master's content-addressed image store and its per-device plan (src/link/delta/image-store.ts,
 * device-plan.ts): images by SHA-256 on disk, a damaged file is no base, the default cache dir; the plan
 * is CURRENT, DELTA (only when the store holds the base and the patch beats the compressed image),
 * COMPRESSED or RAW, as the device's codec and the caller allow.
 */
import test from 'ava';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chooseTransfer, compressImage, ContentStore, defaultCacheDir, MemoryContentStore, imageSha256, stateImageDir } from '../src/link/delta/index.js';
import { sensorBuild } from './update-images.js';

const V1 = sensorBuild(1, 4096);
const V2 = (() => {
  const b = V1.slice();
  for (let i = 0; i < 40; i++) b[200 + i * 50] = b[200 + i * 50]! ^ 0x5a; // a few changed bytes of code
  return b;
})();
const CODEC = { deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096 };

test('ContentStore keeps images by SHA-256, idempotently; a damaged file is not returned', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'images-by-sha-'));
  try {
    const store = new ContentStore(join(dir, 'images-by-sha'));
    const sha = await store.put(V1);
    t.is(sha, imageSha256(V1));
    t.is(await store.put(V1), sha);
    t.deepEqual(readdirSync(join(dir, 'images-by-sha')), [`${sha}.hxe`]);
    t.deepEqual(await store.get(sha), new Uint8Array(V1));
    t.is(await store.get(imageSha256(V2)), null);
    writeFileSync(join(dir, 'images-by-sha', `${sha}.hxe`), V2);
    t.is(await store.get(sha), null, 'a file that does not hash to its name is no base');
    t.is(await store.get('../etc/passwd'), null, 'not a SHA-256: nothing, and no path outside the store');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('default places: $XDG_CACHE_HOME/hsx-gateway/images, ~/.cache/hsx-gateway/images, <state_dir>/images-by-sha', (t) => {
  t.is(defaultCacheDir({ XDG_CACHE_HOME: '/x/cache', HOME: '/home/u' }), '/x/cache/hsx-gateway/images');
  t.is(defaultCacheDir({ HOME: '/home/u' }), '/home/u/.cache/hsx-gateway/images');
  t.is(defaultCacheDir({ XDG_CACHE_HOME: 'relative', HOME: '/home/u' }), '/home/u/.cache/hsx-gateway/images');
  t.is(stateImageDir('/var/lib/gw'), '/var/lib/gw/images-by-sha');
});

test('chooseTransfer: CURRENT, DELTA from a held base, COMPRESSED without it, RAW for an old device or with both off', async (t) => {
  const store = new MemoryContentStore();
  await store.put(V1);
  const runsV1 = { sha256: imageSha256(V1), codec: CODEC };
  t.is((await chooseTransfer(V1, runsV1, store)).mode, 'current');
  t.is((await chooseTransfer(V1, runsV1, store, { force: true })).mode, 'compressed', 'forced: the same image is no patch base for itself');
  const d = await chooseTransfer(V2, runsV1, store);
  t.is(d.mode, 'delta');
  t.is(d.base, imageSha256(V1));
  t.is(d.encoded?.kind, 'patch');
  t.true(d.sizes.patch! < d.sizes.compressed!, 'a patch only when smaller than the compressed image');
  t.is(d.encoded?.windowBits, 11, 'the window the device RAM allows');
  t.is((await chooseTransfer(V2, runsV1, new MemoryContentStore())).mode, 'compressed', 'no base held');
  t.is((await chooseTransfer(V2, runsV1, store, { delta: false })).mode, 'compressed');
  t.is((await chooseTransfer(V2, runsV1, store, { excludeBase: imageSha256(V1) })).mode, 'compressed', 'a refused base is not used again');
  t.is((await chooseTransfer(V2, runsV1, store, { compress: false, delta: false })).mode, 'raw');
  t.is((await chooseTransfer(V2, { sha256: imageSha256(V1), codec: null }, store)).mode, 'raw', 'a device without codec');
  t.is((await chooseTransfer(V2, { sha256: imageSha256(V1), codec: { ...CODEC, patch: false } }, store)).mode, 'compressed');
  // a patch larger than the compressed image is never chosen: an unrelated base
  const other = sensorBuild(9, 4096).map((b, i) => (b * 31 + i) & 0xff);
  await store.put(other);
  const u = await chooseTransfer(V2, { sha256: imageSha256(other), codec: CODEC }, store);
  if (u.sizes.patch !== null && u.sizes.patch >= u.sizes.compressed!) t.is(u.mode, 'compressed');
  t.true(u.mode === 'compressed' || u.sizes.patch! < compressImage(V2).bytes.length);
});
