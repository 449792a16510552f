import test from 'ava';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { signImage, keyIdOf, type TrustedKeys } from '../src/hxe/signature.js';
import { ProvisioningEngine } from '../src/engine/engine.js';
import { FakeClock } from '../src/engine/clock.js';
import { CollectingEventSink } from '../src/engine/events.js';
import { policyGate, provenanceOf, withAuditLog } from '../src/engine/policy.js';
import { parseImage } from '../src/hxe/parse.js';
import type { ImageStore } from '../src/engine/ports.js';
import { FaultPlan, FaultyDevice, Fram, NorFlash, formatMemoryDevice, memoryBacking, openDevice, openStores } from '../src/persist/index.js';

/**
 * Anti-downgrade across power cycles of a device's real memory-mapped flash/FRAM files: the
 * recorded security counter is read back from the files after the gateway process closed them,
 * and after a process that committed was killed with SIGKILL right after the commit.
 */
const root = new URL('..', import.meta.url).pathname;
const original = new Uint8Array(readFileSync(join(root, 'test/fixtures/t04_value_cmd.hxe')));
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted: TrustedKeys = { keys: new Map([[keyIdOf(publicKey), { name: 'release', publicKey }]]), revoked: new Set() };

const signed = (counter: number, key: KeyObject = privateKey): Uint8Array => {
  const r = signImage(original, key, { version: { major: 1, minor: counter, patch: 0, build: 0 }, securityCounter: counter });
  if (!r.ok) throw new Error(r.error.message);
  return r.value.bytes;
};

/** The counter a verified signature vouches for: what the device may record for these bytes. */
function vouched(bytes: Uint8Array): { securityCounter: number } {
  const p = parseImage(bytes);
  if (!p.ok) throw new Error(p.error.message);
  return { securityCounter: provenanceOf(p.value, bytes, trusted).securityCounter };
}

function engineOn(store: ImageStore) {
  const audit: string[] = [];
  const clock = new FakeClock();
  const engine = new ProvisioningEngine({
    clock,
    events: withAuditLog(new CollectingEventSink(clock), (l) => audit.push(l)),
    imageStore: store,
    gates: [policyGate({ requireSignature: true, trustedKeys: trusted })],
  });
  return { engine, audit };
}

test('the recorded counter survives closing and reopening the device files; a lower counter is refused', async (t) => {
  t.timeout(60_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-policy-dev-'));
  let device = await openDevice(dir);
  t.is(device.imageStore.securityCounter(), 0, 'a fresh device has counter 0');
  const { engine } = engineOn(device.imageStore);
  const v7 = engine.loadImage(signed(7), { source: 'file:v7.hxe' });
  if (!v7.ok) return t.fail(v7.error.message);
  const p = await engine.persist(v7.value.pid, 'permanent', vouched(signed(7)));
  t.true(p.ok, p.ok ? '' : p.error.message);
  await device.close();

  // power cycle: new process state, same files
  device = await openDevice(dir);
  t.is(device.imageStore.securityCounter(), 7);
  const after = engineOn(device.imageStore);
  const v5 = after.engine.loadImage(signed(5), { source: 'file:v5.hxe' });
  t.false(v5.ok);
  if (!v5.ok) {
    t.like(v5.error, { code: 'EPERM', reason: 'downgrade', detail: { imageCounter: 5, deviceCounter: 7 } });
  }
  t.is(after.audit.length, 1);
  t.like(JSON.parse(after.audit[0]!), { code: 'EPERM', reason: 'downgrade', source: 'file:v5.hxe' });
  t.true(after.engine.loadImage(signed(7), { source: 'file:v7-again.hxe' }).ok);
  await device.close();
});

test('a commit is not lost when the process dies right after it (SIGKILL): the counter only moves forward', async (t) => {
  t.timeout(60_000);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-policy-kill-'));
  let device = await openDevice(dir);
  {
    const { engine } = engineOn(device.imageStore);
    const v3 = engine.loadImage(signed(3), { source: 'file:v3.hxe' });
    if (!v3.ok) return t.fail(v3.error.message);
    t.true((await engine.persist(v3.value.pid, 'permanent', vouched(signed(3)))).ok);
  }
  await device.close();

  // A second process commits counter 9 through the engine and is killed before it can close anything.
  const image = join(dir, 'v9.hxe');
  writeFileSync(image, signed(9));
  const child = `
    import { readFileSync } from 'node:fs';
    import { openDevice } from ${JSON.stringify(join(root, 'src/persist/index.ts'))};
    import { ProvisioningEngine } from ${JSON.stringify(join(root, 'src/engine/engine.ts'))};
    import { FakeClock } from ${JSON.stringify(join(root, 'src/engine/clock.ts'))};
    import { nullEventSink } from ${JSON.stringify(join(root, 'src/engine/events.ts'))};
    const device = await openDevice(${JSON.stringify(dir)});
    const engine = new ProvisioningEngine({ clock: new FakeClock(), events: nullEventSink, imageStore: device.imageStore });
    const r = engine.loadImage(new Uint8Array(readFileSync(${JSON.stringify(image)})), { source: 'file:v9.hxe' });
    if (!r.ok) { console.error(r.error.message); process.exit(3); }
    const p = await engine.persist(r.value.pid, 'permanent', { securityCounter: 9 }); // verified by the parent
    if (!p.ok) { console.error(p.error.message); process.exit(4); }
    console.log('committed', device.imageStore.securityCounter());
    process.kill(process.pid, 'SIGKILL');
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', child], { cwd: root, encoding: 'utf8' });
  t.is(r.signal, 'SIGKILL', r.stderr);
  t.regex(r.stdout, /committed 9/);

  device = await openDevice(dir);
  t.is(device.imageStore.securityCounter(), 9, 'the counter committed before the kill is on the files');
  const { engine } = engineOn(device.imageStore);
  for (const c of [3, 8]) {
    const low = engine.loadImage(signed(c), { source: `file:v${c}.hxe` });
    t.false(low.ok);
    if (!low.ok) t.like(low.error, { reason: 'downgrade', detail: { imageCounter: c, deviceCounter: 9 } });
  }
  t.true(engine.loadImage(signed(9), { source: 'file:v9.hxe' }).ok);
  await device.close();
});

test('power fails at every write of a higher-counter commit: after reboot the counter is old or new, never lower, and downgrades stay refused', async (t) => {
  t.timeout(120_000);
  const geometry = { flashSize: 256 << 10, framSize: 16 << 10 };
  const { flashBytes, framBytes } = formatMemoryDevice(geometry);
  const boot = async (flash: Uint8Array, fram: Uint8Array, plan?: FaultPlan) => {
    const f = NorFlash.attach(memoryBacking(flash));
    const r = Fram.attach(memoryBacking(fram));
    return plan ? openStores(new FaultyDevice(f, plan, 'flash'), new FaultyDevice(r, plan, 'fram')) : openStores(f, r);
  };
  const commit = async (store: ImageStore, counter: number): Promise<boolean> => {
    const { engine } = engineOn(store);
    const bytes = signed(counter);
    const loaded = engine.loadImage(bytes, { source: `file:v${counter}.hxe` });
    if (!loaded.ok) throw new Error(loaded.error.message);
    return (await engine.persist(loaded.value.pid, 'permanent', vouched(bytes))).ok;
  };
  t.true(await commit((await boot(flashBytes, framBytes)).imageStore, 7));

  // how many device operations a whole open + commit of counter 9 issues
  const counting = new FaultPlan(null);
  t.true(await commit((await boot(flashBytes.slice(), framBytes.slice(), counting)).imageStore, 9));
  const points = counting.ops;
  t.true(points > 0);

  const seen = { 7: 0, 9: 0 } as Record<number, number>;
  for (const tear of ['none', 'prefix', 'bits'] as const) {
    // failAt = points + 1: the power goes right after the last write of the commit
    for (let failAt = 1; failAt <= points + 1; failAt++) {
      const flash = flashBytes.slice();
      const fram = framBytes.slice();
      try {
        await commit((await boot(flash, fram, new FaultPlan(failAt, tear))).imageStore, 9);
      } catch {
        // the power went during open: that is one of the fault points too
      }
      const { imageStore } = await boot(flash, fram); // reboot on the same bytes
      const counter = imageStore.securityCounter();
      t.true(counter === 7 || counter === 9, `fail at op ${failAt} (${tear}): counter ${counter}`);
      seen[counter] = (seen[counter] ?? 0) + 1;
      const { engine } = engineOn(imageStore);
      const low = engine.loadImage(signed(5), { source: 'file:v5.hxe' });
      t.false(low.ok, `fail at op ${failAt} (${tear}): counter 5 must stay refused`);
      if (!low.ok) t.is(low.error.reason, 'downgrade');
    }
  }
  t.log(`power-fail points covered: ${points + 1} (each of ${points} device operations, and after the last) x 3 tear modes = ${(points + 1) * 3}; counter after reboot: 7 in ${seen[7]}, 9 in ${seen[9]}`);
  t.true(seen[9]! > 0 && seen[7]! > 0, 'both outcomes occur: a failure during the commit keeps 7, one after it has committed 9');
});
