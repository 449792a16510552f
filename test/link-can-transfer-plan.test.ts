/**
 * The CAN schedule (src/link/can/transfer-plan.ts) on its own, from probe answers: groups by base and
 * capabilities, one patch per base, compressed broadcasts merged, raw for nodes that decode nothing,
 * the compressed image to everyone when that moves fewer bytes than the per-group patches, and never a
 * patch that is not smaller than the compressed image; and the plan as `flash --can` prints it.
 */
import test from 'ava';
import { buildImage } from '../src/hxe/index.js';
import type { ProbeAnswer } from '../src/link/can/master.js';
import { describePlan, nodeRanges, planCanTransfer } from '../src/link/can/transfer-plan.js';
import { compressImage, makePatch, MemoryContentStore } from '../src/link/delta/index.js';
import { sha256Hex } from './update-images.js';

/** 8 KiB of code from a 16-symbol alphabet (seeded), so it compresses to about half. */
function code(seed: number, size = 8192): Uint8Array {
  const c = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    c[i] = 0x40 + ((x >>> 16) & 15);
  }
  return c;
}
function image(c: Uint8Array): Uint8Array {
  const r = buildImage({ appName: 'plan_app', code: c });
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}
const CAPS = { deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096 };
const prefix = (img: Uint8Array): string => sha256Hex(img).slice(0, 14);
const answers = (list: Array<[number[], ProbeAnswer]>): Map<number, ProbeAnswer> => new Map(list.flatMap(([ns, a]) => ns.map((n) => [n, a] as const)));

test('groups on a base the store holds get one patch each (two groups on one base: one broadcast); raw-only nodes get the raw image', async (t) => {
  const target = image(code(1));
  const edit = (k: number): Uint8Array => {
    const c = code(1);
    c.fill(0x21 + k, 100 * k, 100 * k + 8);
    return image(c);
  };
  const b1 = edit(1);
  const b2 = edit(2);
  const store = new MemoryContentStore();
  await store.put(b1);
  await store.put(b2);
  const plan = await planCanTransfer(target, answers([
    [[1, 2], { running: prefix(b1), codec: CAPS }],
    [[3], { running: prefix(b1), codec: { ...CAPS, maxWindowBits: 12 } }],
    [[4, 5], { running: prefix(b2), codec: CAPS }],
    [[6], { running: prefix(b2), codec: null }],
  ]), store, {}, [8]);
  t.deepEqual(plan.broadcasts.map((b) => [b.mode, b.nodes, b.base]), [
    ['delta', [1, 2, 3], sha256Hex(b1)],
    ['delta', [4, 5], sha256Hex(b2)],
    ['raw', [6], null],
  ]);
  t.deepEqual(plan.current, [8]);
  const z = compressImage(target).bytes.length;
  t.is(plan.broadcasts[2]!.streamBytes, target.length);
  for (const b of plan.broadcasts.slice(0, 2)) t.true(b.streamBytes < z);
  t.is(plan.totalBytes, plan.broadcasts.reduce((n, b) => n + b.streamBytes, 0));
  t.deepEqual(plan.broadcasts[0]!.stream!.bytes, makePatch(b1, target, { windowBits: 11 }).bytes, 'the patch window fits 4096 bytes of RAM: 11');
  t.is(plan.compressedToAll, undefined);
  // the plan as printed
  const lines = describePlan(plan);
  t.regex(lines[0]!, /^plan: \d+-byte image; 1 CURRENT \(skipped\): nodes 8; 6 to send in 3 broadcasts$/);
  // A node on no known base next to them: its compressed broadcast plus the patches move more than the
  // compressed image to all of them would, so that one broadcast is the plan (the raw-only node stays raw).
  const mixed = await planCanTransfer(target, answers([
    [[1, 2], { running: prefix(b1), codec: CAPS }], [[4, 5], { running: prefix(b2), codec: CAPS }],
    [[6], { running: prefix(b2), codec: null }], [[7], { running: null, codec: CAPS }],
  ]), store);
  t.deepEqual(mixed.broadcasts.map((b) => [b.mode, b.nodes, b.streamBytes]), [['compressed', [1, 2, 4, 5, 7], z], ['raw', [6], target.length]]);
  t.true(mixed.compressedToAll!.instead > z);
  t.regex(lines[1]!, new RegExp(`DELTA from ${sha256Hex(b1).slice(0, 12)}\\s+nodes 1-3\\s+\\d+ bytes \\(ratio 0\\.0\\d\\d\\)`));
  t.regex(lines.at(-1)!, new RegExp(`total ${plan.totalBytes} bytes on the wire before repairs, against ${target.length} for one raw broadcast`));
  t.is(nodeRanges([5, 1, 2, 3, 9, 7, 8]), '1-3,5,7-9');
});

test('the compressed image to everyone when it moves fewer bytes than the patches together; a patch only when smaller than it', async (t) => {
  const target = image(code(1));
  // Three bases that each share only a third of the target: each patch is smaller than the compressed
  // image, together they are larger.
  const part = (k: number): Uint8Array => {
    const c = code(1);
    const other = code(100 + k);
    for (let i = 0; i < c.length; i++) if (Math.floor((i * 3) / c.length) !== k) c[i] = other[i]!;
    return image(c);
  };
  const bases = [part(0), part(1), part(2)];
  const store = new MemoryContentStore();
  for (const b of bases) await store.put(b);
  const z = compressImage(target).bytes.length;
  const patches = bases.map((b) => makePatch(b, target, { windowBits: 11 }).bytes.length);
  t.log(`compressed ${z}, patches ${patches.join(', ')}`);
  t.true(patches.every((p) => p < z) && patches.reduce((a, b) => a + b, 0) > z, 'the case this test is about');
  const plan = await planCanTransfer(target, answers(bases.map((b, k) => [[k + 1], { running: prefix(b), codec: CAPS }])), store);
  t.deepEqual(plan.broadcasts.map((b) => [b.mode, b.nodes, b.streamBytes]), [['compressed', [1, 2, 3], z]]);
  t.deepEqual(plan.compressedToAll, { instead: patches.reduce((a, b) => a + b, 0) });
  t.true(describePlan(plan).some((l) => l.includes(`the compressed image to all: ${z} bytes instead of ${plan.compressedToAll!.instead}`)));
  // A base that shares nothing with the target: its patch is not smaller than the compressed image, so it is not sent.
  const stranger = image(code(999));
  await store.put(stranger);
  t.true(makePatch(stranger, target, { windowBits: 11 }).bytes.length >= z);
  const alone = await planCanTransfer(target, answers([[[9], { running: prefix(stranger), codec: CAPS }]]), store);
  t.deepEqual(alone.broadcasts.map((b) => [b.mode, b.nodes]), [['compressed', [9]]]);
  // --no-compress: the patches, each against the raw image
  const noZ = await planCanTransfer(target, answers(bases.map((b, k) => [[k + 1], { running: prefix(b), codec: CAPS }])), store, { compress: false });
  t.deepEqual(noZ.broadcasts.map((b) => b.mode), ['delta', 'delta', 'delta']);
  // --no-delta: one compressed broadcast
  const noD = await planCanTransfer(target, answers(bases.map((b, k) => [[k + 1], { running: prefix(b), codec: CAPS }])), store, { delta: false });
  t.deepEqual(noD.broadcasts.map((b) => [b.mode, b.nodes]), [['compressed', [1, 2, 3]]]);
});

test('a base prefix the store holds twice (or not at all) is no base: the compressed image', async (t) => {
  const target = image(code(1));
  const base = image(code(2));
  const store = new MemoryContentStore();
  await store.put(base);
  t.is(await store.resolve(sha256Hex(base).slice(0, 1)), sha256Hex(base), 'one image held: any prefix of it resolves');
  t.is(await store.resolve(''), null, 'the empty string is no prefix');
  t.is(await store.resolve('zz'), null, 'not hex');
  // 17 images: two share their first hex digit (pigeonhole), and that digit resolves to none
  const held = [base];
  for (let k = 0; k < 16; k++) {
    held.push(image(code(50 + k, 64)));
    await store.put(held.at(-1)!);
  }
  const first = held.map((h) => sha256Hex(h)[0]!);
  const shared = first.find((d, i) => first.indexOf(d) !== i)!;
  t.is(await store.resolve(shared), null, 'a prefix that two images share resolves to none');
  t.is(await store.resolve(sha256Hex(base).slice(0, 14)), sha256Hex(base));
  const plan = await planCanTransfer(target, answers([[[1], { running: sha256Hex(base).slice(0, 6), codec: CAPS }]]), store);
  t.is(plan.broadcasts[0]!.mode, 'compressed', 'a 3-byte prefix (no JOINX) is never resolved');
});

test('ContentStore.resolve: the one <sha256>.hxe in the directory with that prefix; none for an empty or missing directory', async (t) => {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { ContentStore } = await import('../src/link/delta/index.js');
  const dir = mkdtempSync(join(tmpdir(), 'can-plan-store-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const missing = new ContentStore(join(dir, 'nothing-here'));
  t.is(await missing.resolve('ab'), null);
  const store = new ContentStore(dir);
  const a = image(code(7));
  const sha = await store.put(a);
  writeFileSync(join(dir, `${sha.slice(0, 20)}-not-an-image.txt`), 'x'); // other files are not images
  t.is(await store.resolve(sha.slice(0, 14)), sha);
  t.is(await store.resolve(sha.slice(0, 14).toUpperCase()), sha, 'hex in either case');
  t.is(await store.resolve('0'.repeat(14) === sha.slice(0, 14) ? '1' : '0'.repeat(14)), null);
});
