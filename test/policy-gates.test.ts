import test from 'ava';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { buildImage } from '../src/hxe/build.js';
import { signImage, keyIdOf, type TrustedKeys } from '../src/hxe/signature.js';
import { ProvisioningEngine } from '../src/engine/engine.js';
import { FakeClock } from '../src/engine/clock.js';
import { CollectingEventSink } from '../src/engine/events.js';
import { InMemoryImageStore } from '../src/engine/stores.js';
import { OPEN_POLICY, policyGate, provenanceOf, vouchedSecurityCounter, withAuditLog, type SignaturePolicy } from '../src/engine/policy.js';
import { parseImage } from '../src/hxe/parse.js';
import type { ImageStore } from '../src/engine/ports.js';
import { engineConfigFor, loadProfile } from '../src/gateway/profiles.js';

const fixtureDir = new URL('./fixtures/', import.meta.url);
const fixture = (name: string): Uint8Array => new Uint8Array(readFileSync(new URL(`${name}.hxe`, fixtureDir)));

interface Key { privateKey: KeyObject; publicKey: KeyObject; id: string }
const newKey = (): Key => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey, id: keyIdOf(publicKey) };
};
const trusting = (keys: Key[], revoked: Key[] = []): TrustedKeys => ({
  keys: new Map(keys.map((k, i) => [k.id, { name: `key${i}`, publicKey: k.publicKey }])),
  revoked: new Set(revoked.map((k) => k.id)),
});
const sign = (bytes: Uint8Array, key: Key, securityCounter = 1, version = '1.0.0'): Uint8Array => {
  const [major, minor, patch] = version.split('.').map(Number) as [number, number, number];
  const r = signImage(bytes, key.privateKey, { version: { major, minor, patch, build: 0 }, securityCounter });
  if (!r.ok) throw new Error(r.error.message);
  return r.value.bytes;
};

function engineWith(policy: SignaturePolicy, opts: { profile?: string; config?: Record<string, unknown>; store?: ImageStore } = {}) {
  const clock = new FakeClock();
  const collected = new CollectingEventSink(clock);
  const audit: string[] = [];
  const profile = loadProfile(opts.profile ?? 'desktop');
  if (!profile.ok) throw new Error(profile.error.message);
  const engine = new ProvisioningEngine({
    config: engineConfigFor(profile.value, opts.config ?? {}),
    clock,
    events: withAuditLog(collected, (l) => audit.push(l), () => clock.now()),
    gates: [policyGate(policy)],
    ...(opts.store ? { imageStore: opts.store } : {}),
  });
  return { engine, events: collected, audit };
}

const required = (keys: TrustedKeys): SignaturePolicy => ({ requireSignature: true, trustedKeys: keys });

test('every single-bit flip of a signed image is refused when signatures are required (exhaustive)', (t) => {
  t.timeout(120_000);
  const key = newKey();
  const original = fixture('t06_all_meta_rodata3'); // header, name, code, 3-byte rodata, table, .value/.cmd/.mailbox
  const signed = sign(original, key, 3);
  const { engine, events, audit } = engineWith(required(trusting([key])));
  const clean = engine.resources();

  t.true(engine.loadImage(signed, { source: 'file:signed.hxe' }).ok, 'the unmodified signed image loads');
  const loadedPid = engine.ps()[0]!.pid;
  t.true(engine.unload(loadedPid).ok);

  const h = 96;
  const codeEnd = h + 12; // t06: 12 bytes of code, 3 of rodata
  const region = (off: number): string =>
    off < 0x1c ? 'header (CRC-covered)' : off < 0x20 ? 'header crc32' : off < 0x40 ? 'app name' : off < h ? 'meta pointers + reserved'
      : off < codeEnd ? 'code' : off < codeEnd + 3 ? 'rodata' : off < original.length ? 'meta table + sections' : 'trailer';
  const byRegion = new Map<string, number>();
  const byReason = new Map<string, number>();
  let flips = 0;
  const accepted: string[] = [];
  const errorsBefore = events.ofType('provisioning.error').length;
  for (let byte = 0; byte < signed.length; byte++) {
    for (let bit = 0; bit < 8; bit++) {
      const mutated = signed.slice();
      mutated[byte] = mutated[byte]! ^ (1 << bit);
      const r = engine.loadImage(mutated, { source: 'file:flipped.hxe' });
      flips++;
      byRegion.set(region(byte), (byRegion.get(region(byte)) ?? 0) + 1);
      if (r.ok) {
        accepted.push(`byte ${byte} bit ${bit}`);
        engine.unload(r.value.pid);
        continue;
      }
      const key = `${r.error.code}:${r.error.reason}`;
      byReason.set(key, (byReason.get(key) ?? 0) + 1);
    }
  }
  t.log(`single-bit flips covered: ${flips} (${signed.length} bytes x 8) — by region: ${JSON.stringify(Object.fromEntries(byRegion))}`);
  t.log(`refusals by code:reason: ${JSON.stringify(Object.fromEntries(byReason))}`);
  t.is(flips, signed.length * 8);
  t.deepEqual(accepted, [], 'no flipped image may load');
  // some flips outside the CRC (app name, meta pointers) leave a well-formed image: only the signature catches those
  t.true((byReason.get('EPERM:digest_mismatch') ?? 0) > 0, 'flips outside the CRC are caught by the signature digest');
  t.deepEqual(engine.resources(), clean, 'nothing registered, allocated or buffered after all the refusals');
  t.is(events.ofType('provisioning.error').length - errorsBefore, flips, 'one provisioning.error per refusal');
  t.is(audit.length, flips, 'one audit line per refusal');
});

test('the same exhaustive flips through streaming loads: none reaches READY, nothing is left after abort', (t) => {
  t.timeout(120_000);
  const key = newKey();
  const signed = sign(fixture('t06_all_meta_rodata3'), key, 3);
  const { engine } = engineWith(required(trusting([key])));
  const clean = engine.resources();
  const stream = (bytes: Uint8Array): { ok: boolean; at: string } => {
    const s = engine.begin({ source: 'uart:/dev/ttyUSB0', totalBytes: bytes.length });
    if (!s.ok) return { ok: false, at: 'begin' };
    const id = s.value.sessionId;
    for (let seq = 0, off = 0; off < bytes.length; seq++, off += 128) {
      if (!engine.write(id, seq, bytes.subarray(off, off + 128)).ok) {
        engine.abort(id, 'write refused');
        return { ok: false, at: 'write' };
      }
    }
    const end = engine.end(id);
    if (end.ok) return { ok: true, at: 'end' };
    engine.abort(id, 'end refused');
    return { ok: false, at: 'end' };
  };
  const good = stream(signed);
  t.true(good.ok, 'the unmodified signed image streams to READY');
  engine.unload(engine.ps()[0]!.pid);
  const refusedAt: Record<string, number> = {};
  let flips = 0;
  for (let byte = 0; byte < signed.length; byte++) {
    for (let bit = 0; bit < 8; bit++) {
      const mutated = signed.slice();
      mutated[byte] = mutated[byte]! ^ (1 << bit);
      const r = stream(mutated);
      flips++;
      if (r.ok) {
        t.fail(`byte ${byte} bit ${bit} streamed to READY`);
        engine.unload(engine.ps()[0]!.pid);
        continue;
      }
      refusedAt[r.at] = (refusedAt[r.at] ?? 0) + 1;
    }
  }
  t.log(`streamed single-bit flips covered: ${flips}; refused at ${JSON.stringify(refusedAt)}`);
  t.is(flips, signed.length * 8);
  t.deepEqual(engine.ps(), []);
  t.deepEqual(engine.resources(), clean);
});

test('flipping a bit of the app name is invisible to the CRC alone: an unsigned image loads renamed', (t) => {
  // The reason signatures exist: with requireSignature = false an unsigned, renamed image passes.
  const original = fixture('t01_minimal');
  const renamed = original.slice();
  renamed[0x20] = renamed[0x20]! ^ 0x01;
  const { engine } = engineWith(OPEN_POLICY);
  const r = engine.loadImage(renamed, { source: 'file:renamed.hxe' });
  t.true(r.ok);
  if (r.ok) t.not(r.value.appName, 't01_minimal');
});

test('unsigned, unknown key, revoked key: EPERM with the reason, an error event and an audit line', (t) => {
  const a = newKey();
  const b = newKey();
  const original = fixture('t04_value_cmd');
  const cases: Array<[string, SignaturePolicy, Uint8Array, string]> = [
    ['unsigned', required(trusting([a])), original, 'unsigned'],
    ['wrong key', required(trusting([a])), sign(original, b), 'unknown_key'],
    ['revoked key', required(trusting([a], [a])), sign(original, a), 'revoked_key'],
    ['revoked key, signatures optional', { requireSignature: false, trustedKeys: trusting([a], [a]) }, sign(original, a), 'revoked_key'],
  ];
  for (const [what, policy, bytes, reason] of cases) {
    const { engine, events, audit } = engineWith(policy);
    const clean = engine.resources();
    const r = engine.loadImage(bytes, { source: `file:${what}.hxe` });
    t.false(r.ok, what);
    if (r.ok) continue;
    t.is(r.error.code, 'EPERM', what);
    t.is(r.error.reason, reason, what);
    t.deepEqual(engine.resources(), clean, `${what}: nothing held`);
    const ev = events.ofType('provisioning.error');
    t.is(ev.length, 1, what);
    t.like(ev[0]!.data, { code: 'EPERM', reason });
    t.is(audit.length, 1, what);
    const line = JSON.parse(audit[0]!) as Record<string, unknown>;
    t.like(line, { audit: 'refusal', code: 'EPERM', reason, source: `file:${what}.hxe`, appName: 'sensor_app' });
    if (reason !== 'unsigned') t.is((line['detail'] as Record<string, unknown>)['keyId'], reason === 'unknown_key' ? b.id : a.id);
  }
  // the right key passes, and an unknown key passes when signatures are optional
  t.true(engineWith(required(trusting([a]))).engine.loadImage(sign(original, a), { source: 'file:ok.hxe' }).ok);
  t.true(engineWith({ requireSignature: false, trustedKeys: trusting([a]) }).engine.loadImage(sign(original, b), { source: 'file:ok.hxe' }).ok);
});

test('a streaming load is refused at end, before registration, and holds nothing afterwards', (t) => {
  const a = newKey();
  const b = newKey();
  const original = fixture('t05_mailbox_json');
  for (const [bytes, reason] of [[original, 'unsigned'], [sign(original, b), 'unknown_key']] as const) {
    const { engine, audit } = engineWith(required(trusting([a])));
    const clean = engine.resources();
    const s = engine.begin({ source: 'can:vcan0/master:1', totalBytes: bytes.length });
    if (!s.ok) return t.fail(s.error.message);
    for (let seq = 0, off = 0; off < bytes.length; seq++, off += 64) {
      t.true(engine.write(s.value.sessionId, seq, bytes.subarray(off, off + 64)).ok);
    }
    const end = engine.end(s.value.sessionId);
    t.false(end.ok);
    if (!end.ok) t.like(end.error, { code: 'EPERM', reason });
    t.deepEqual(engine.ps(), []);
    // the refused session waits FAILED for the sender's abort (the engine's contract); nothing was registered
    const after = engine.resources();
    t.deepEqual([after.tasks, after.pids, after.registry, after.arenasUsed], [clean.tasks, clean.pids, clean.registry, clean.arenasUsed],
      `${reason}: nothing registered or allocated`);
    t.true(engine.abort(s.value.sessionId, 'refused').ok);
    t.deepEqual(engine.resources(), clean, `${reason}: everything freed after abort`);
    t.is(audit.length, 1);
  }
  // the same stream, signed by the trusted key, ends READY with its mailboxes registered
  const { engine } = engineWith(required(trusting([a])));
  const bytes = sign(original, a);
  const s = engine.begin({ source: 'can:vcan0/master:1', totalBytes: bytes.length });
  if (!s.ok) return t.fail();
  for (let seq = 0, off = 0; off < bytes.length; seq++, off += 64) engine.write(s.value.sessionId, seq, bytes.subarray(off, off + 64));
  const end = engine.end(s.value.sessionId);
  t.true(end.ok);
  if (end.ok) t.true(end.value.counts.mailboxes > 0);
});

test('anti-downgrade against the store counter: lower refused with both numbers, equal and higher pass', async (t) => {
  const a = newKey();
  const store = new InMemoryImageStore();
  const original = fixture('t01_minimal');
  const { engine, audit } = engineWith(required(trusting([a])), { store });
  const v7 = sign(original, a, 7, '1.2.0');
  const first = engine.loadImage(v7, { source: 'file:v7.hxe' });
  if (!first.ok) return t.fail(first.error.message);
  // the counter a verified signature vouched for is what the device records
  const parsed = parseImage(v7);
  if (!parsed.ok) return t.fail();
  const provenance = provenanceOf(parsed.value, v7, trusting([a]));
  t.like(provenance, { securityCounter: 7, version: '1.2.0+0', verdict: { status: 'verified' } });
  const persisted = await engine.persist(first.value.pid, 'permanent', { securityCounter: provenance.securityCounter });
  t.true(persisted.ok);
  t.is(store.securityCounter(), 7);
  engine.unload(first.value.pid);

  const older = engine.loadImage(sign(original, a, 5, '1.1.0'), { source: 'file:v5.hxe' });
  t.false(older.ok);
  if (!older.ok) {
    t.like(older.error, { code: 'EPERM', reason: 'downgrade' });
    t.like(older.error.detail, { imageCounter: 5, deviceCounter: 7, version: '1.1.0+0' });
    t.regex(older.error.message, /5 is below .* 7/);
  }
  t.is(audit.length, 1);
  const same = engine.loadImage(sign(original, a, 7, '1.2.1'), { source: 'file:v7b.hxe' });
  t.true(same.ok, 'the same counter is not a downgrade (a fix within one security epoch)');
  if (same.ok) engine.unload(same.value.pid);
  t.true(engine.loadImage(sign(original, a, 8, '2.0.0'), { source: 'file:v8.hxe' }).ok);

  // an image whose signature is not verified vouches for nothing: it counts as 0
  const b = newKey();
  const open = engineWith({ requireSignature: false, trustedKeys: trusting([a]) }, { store });
  const unverified = open.engine.loadImage(sign(original, b, 99), { source: 'file:other-key.hxe' });
  t.false(unverified.ok);
  if (!unverified.ok) t.like(unverified.error.detail, { imageCounter: 0, deviceCounter: 7 });
  t.false(open.engine.loadImage(original, { source: 'file:unsigned.hxe' }).ok, 'an unsigned image is a downgrade once a device holds counter 7');
  // turning anti-downgrade off is explicit
  const off = engineWith({ requireSignature: true, trustedKeys: trusting([a]), antiDowngrade: false }, { store });
  t.true(off.engine.loadImage(sign(original, a, 5), { source: 'file:v5.hxe' }).ok);
});

test('the HSX reference vectors still load with requireSignature = false', (t) => {
  const names = readdirSync(fixtureDir).filter((f) => f.endsWith('.hxe')).map((f) => f.slice(0, -4));
  t.true(names.length >= 20);
  for (const name of names) {
    const { engine, audit } = engineWith(OPEN_POLICY, { store: new InMemoryImageStore() });
    const r = engine.loadImage(fixture(name), { source: `file:${name}.hxe` });
    t.true(r.ok, `${name}: ${r.ok ? '' : `${r.error.code} ${r.error.reason}: ${r.error.message}`}`);
    t.deepEqual(audit, []);
  }
  t.log(`${names.length} reference images loaded through the policy gate`);
});

test('capability gate: the missing bits are named; budget gate: the arena and both numbers', (t) => {
  // t02 requires caps 0x5 (mailbox + FRAM); a target with mailbox + value/command only lacks FRAM
  const { engine, audit } = engineWith(OPEN_POLICY, { profile: 'embedded', config: { capabilities: 0x03 } });
  const r = engine.loadImage(fixture('t02_single_instance_reqcap'), { source: 'file:t02.hxe' });
  t.false(r.ok);
  if (!r.ok) {
    t.like(r.error, { code: 'EPERM', reason: 'caps' });
    t.like(r.error.detail, { required: 5, available: 3, missing: 4, missingNames: ['fram'] });
  }
  t.is(audit.length, 1);
  t.like(JSON.parse(audit[0]!), { code: 'EPERM', reason: 'caps' });

  const emb = engineWith(OPEN_POLICY, { profile: 'embedded' });
  const bigBss = buildImage({ code: new Uint8Array(8), bssSize: 4096, appName: 'bss_hog' });
  if (!bigBss.ok) return t.fail(bigBss.error.message);
  const b = emb.engine.loadImage(bigBss.value, { source: 'file:bss.hxe' });
  t.false(b.ok);
  if (!b.ok) {
    t.like(b.error, { code: 'ENOSPC' });
    t.like(b.error.detail, { arena: 'data', required: 4096, limit: 2048 });
    t.regex(b.error.message, /data arena.*4096.*2048/);
  }
  const stack = emb.engine.loadImage(fixture('t01_minimal'), { source: 'file:t01.hxe', stackBytes: 5000 });
  t.false(stack.ok);
  if (!stack.ok) t.like(stack.error.detail, { arena: 'stack', required: 5000, limit: 4096 });
  const tooBig = buildImage({ code: new Uint8Array(8200), appName: 'too_big' });
  if (!tooBig.ok) return t.fail();
  const big = emb.engine.loadImage(tooBig.value, { source: 'file:big.hxe' });
  t.false(big.ok);
  if (!big.ok) t.like(big.error, { code: 'ENOSPC', reason: 'image_too_large', detail: { size: tooBig.value.length, limit: 8192 } });
  t.is(emb.audit.length, 3, 'one audit line per budget refusal');
  t.is(emb.engine.config.defaultStackBytes, 1536, 'embedded default stack is 1.5 KiB');
  const ok = emb.engine.loadImage(fixture('t01_minimal'), { source: 'file:t01.hxe' });
  t.true(ok.ok);
  if (ok.ok) t.is(ok.value.sizes.stack, 1536);

  const desk = engineWith(OPEN_POLICY, { profile: 'desktop' });
  const bigCode = buildImage({ code: new Uint8Array(0x10000 + 4), appName: 'code_hog', limits: { maxCode: 0x20000 } });
  if (!bigCode.ok) return t.fail(bigCode.error.message);
  const c = desk.engine.loadImage(bigCode.value, { source: 'file:code.hxe' });
  t.false(c.ok);
  if (!c.ok) t.like(c.error, { code: 'ENOSPC', detail: { arena: 'code', required: 0x10004, limit: 0x10000 } });
});

test('the gate vouches for a counter only when it verified the signature', (t) => {
  const a = newKey();
  const b = newKey();
  const original = fixture('t01_minimal');
  const gate = policyGate({ requireSignature: false, trustedKeys: trusting([a]) });
  const ctx = { source: 'file:x.hxe' } as Parameters<typeof gate>[2];
  for (const [bytes, expected] of [[sign(original, a, 12), 12], [sign(original, b, 99), 0], [original, 0]] as const) {
    const img = parseImage(bytes);
    if (!img.ok) return t.fail();
    t.is(gate(img.value, bytes, ctx), null);
    t.is(vouchedSecurityCounter(img.value), expected);
  }
});
