import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { engineConfigFor, engineSetup, loadProfile, profilesDir } from '../src/gateway/profiles.js';
import { ProvisioningEngine } from '../src/engine/engine.js';
import { FakeClock } from '../src/engine/clock.js';
import { nullEventSink } from '../src/engine/events.js';
import { signImage } from '../src/hxe/signature.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { generateKeyFiles, loadPrivateKey, loadSignaturePolicy } from '../src/gateway/keys.js';

test('configs/profiles: desktop and embedded load and carry the HSX budgets', (t) => {
  t.true(profilesDir().endsWith(join('configs', 'profiles')));
  const emb = loadProfile('embedded');
  if (!emb.ok) return t.fail(emb.error.message);
  const e = emb.value.resolved;
  t.is(e.maxImageBytes, 8 * 1024, 'image <= 8 KiB');
  t.is(e.defaultStackBytes, 1536, '1.5 KiB default stack');
  t.is(e.registry.maxMailboxes, 16);
  t.is(e.registry.maxValues, 64);
  t.is(e.registry.maxCommands, 16);
  t.is(e.capabilities, 0x1f);
  t.true(e.imageLimits.code <= e.maxImageBytes && e.imageLimits.rodata <= e.maxImageBytes);

  const desk = loadProfile('desktop');
  if (!desk.ok) return t.fail(desk.error.message);
  // the desktop profile is the engine's defaults, written out
  const defaults = validateEngineConfig({});
  if (!defaults.ok) return t.fail();
  t.deepEqual(desk.value.resolved, defaults.value);
});

test('overrides merge key by key into a profile', (t) => {
  const emb = loadProfile('embedded');
  if (!emb.ok) return t.fail();
  const merged = validateEngineConfig(engineConfigFor(emb.value, { capabilities: 3, registry: { maxValues: 32 } }));
  if (!merged.ok) return t.fail(merged.error.message);
  t.is(merged.value.capabilities, 3);
  t.is(merged.value.registry.maxValues, 32);
  t.is(merged.value.registry.maxCommands, 16, 'the rest of the table is kept');
});

test('a bad profile file names the key', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-profile-'));
  const file = join(dir, 'odd.toml');
  writeFileSync(file, 'name = "odd"\n[engine]\ndefaultStackBytes = -1\n[engine.registry]\nmaxValus = 3\n');
  const r = loadProfile(file);
  t.false(r.ok);
  if (!r.ok) {
    t.true(r.error.problems.some((p) => p.startsWith('engine.defaultStackBytes')), r.error.message);
    t.true(r.error.problems.some((p) => p.includes('registry.maxValus')), r.error.message);
  }
  writeFileSync(file, 'name = "odd"\ncolour = "red"\n[engine]\n');
  const unknown = loadProfile(file);
  t.false(unknown.ok);
  if (!unknown.ok) t.regex(unknown.error.message, /colour/);
  t.false(loadProfile(join(dir, 'missing.toml')).ok);
});

test('the gateway [policy] table becomes a signature policy', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-policy-keys-'));
  const k = generateKeyFiles(dir, 'release');
  if (!k.ok) return t.fail();
  const p = loadSignaturePolicy({ require_signature: true, keys_dir: dir });
  if (!p.ok) return t.fail(p.error.message);
  t.true(p.value.requireSignature);
  t.true(p.value.trustedKeys.keys.has(k.value.keyId));
  t.true(p.value.antiDowngrade);
  const missing = loadSignaturePolicy({ require_signature: true });
  t.false(missing.ok);
  if (!missing.ok) t.is(missing.error.file, 'policy.keys_dir');
  const open = loadSignaturePolicy({ require_signature: false });
  t.true(open.ok && open.value.trustedKeys.keys.size === 0);
});

test('engineSetup: profile + [engine] overrides + signature gate in one engine config', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-setup-'));
  const k = generateKeyFiles(dir, 'release');
  if (!k.ok) return t.fail();
  const setup = engineSetup({ profile: 'embedded', require_signature: true, keys_dir: dir }, { maxTasks: 2 });
  if (!setup.ok) return t.fail(setup.error.message);
  const engine = new ProvisioningEngine({ config: setup.value.config, clock: new FakeClock(), events: nullEventSink });
  t.is(engine.config.maxImageBytes, 8192);
  t.is(engine.config.maxTasks, 2);
  const image = new Uint8Array(readFileSync(new URL('./fixtures/t01_minimal.hxe', import.meta.url)));
  const unsigned = engine.loadImage(image, { source: 'file:t01.hxe' });
  t.false(unsigned.ok);
  if (!unsigned.ok) t.is(unsigned.error.reason, 'unsigned');
  const key = loadPrivateKey(k.value.privateKeyFile);
  if (!key.ok) return t.fail();
  const signed = signImage(image, key.value, { version: { major: 1, minor: 0, patch: 0, build: 0 }, securityCounter: 1 });
  if (!signed.ok) return t.fail();
  t.true(engine.loadImage(signed.value.bytes, { source: 'file:t01-signed.hxe' }).ok);

  const bad = engineSetup({ profile: 'embedded', require_signature: false }, { registry: { maxValues: -1 } });
  t.false(bad.ok);
  if (!bad.ok) t.regex(bad.error.message, /engine\.registry\.maxValues/);
});
