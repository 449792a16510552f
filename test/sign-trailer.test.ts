import test from 'ava';
import { createHash, generateKeyPairSync, sign as edSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import {
  parseTrailer, parseVersion, formatVersion, TRAILER_MAGIC, TRAILER_SIZE, encodeSignedTrailerPart, encodeTrailer,
} from '../src/hxe/trailer.js';
import { keyIdOf, rawPublicKey, signBody, signedMessage, unsignedImage, verifySignature, type TrustedKeys } from '../src/hxe/signature.js';

const fixture = (name: string): Uint8Array => new Uint8Array(readFileSync(new URL(`./fixtures/${name}.hxe`, import.meta.url)));

/** The HSX reference rule, written out independently of src/: CRC-32 of 0x00..0x1B, then header end..EOF. */
function referenceRuleCrc(b: Uint8Array): number {
  const hs = ((b[4]! << 8) | b[5]!) === 1 ? 32 : 96;
  return crc32(b.subarray(hs), crc32(b.subarray(0, 0x1c))) >>> 0;
}
const storedCrc = (b: Uint8Array): number => new DataView(b.buffer, b.byteOffset).getUint32(0x1c);

const keyPair = () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey, id: keyIdOf(publicKey) };
};
const trust = (...ks: Array<{ publicKey: import('node:crypto').KeyObject; id: string }>): TrustedKeys => ({
  keys: new Map(ks.map((k, i) => [k.id, { name: `k${i}`, publicKey: k.publicKey }])),
  revoked: new Set(),
});

test('trailer bytes match the byte table in docs/hxe_format.md, built by hand', (t) => {
  const h = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
  const keyId = Buffer.alloc(8, 0xa1);
  const sha = Buffer.alloc(32, 0xb2);
  const sig = Buffer.alloc(64, 0xc3);
  const byHand = Buffer.concat([
    h('48534947'), // magic "HSIG"
    h('00000094'), // total length 148
    h('0014'), // protected length 20
    h('0000'), // reserved
    h('0010 0008'), h('01 02 0003 00000007'), // version 1.2.3+7
    h('0011 0004'), h('0000002a'), // security counter 42
    h('0001 0008'), keyId,
    h('0002 0020'), sha,
    h('0003 0040'), sig,
  ]);
  const part = encodeSignedTrailerPart({ major: 1, minor: 2, patch: 3, build: 7 }, 42);
  const encoded = encodeTrailer(part, keyId, sha, sig);
  t.is(TRAILER_SIZE, 148);
  t.is(part.length, 12 + 20);
  t.deepEqual(Buffer.from(encoded), byHand);

  const image = Buffer.concat([Buffer.alloc(100), byHand]);
  const parsed = parseTrailer(image, 100);
  t.true(parsed.ok);
  if (!parsed.ok || !parsed.value) return t.fail();
  t.is(parsed.value.offset, 100);
  t.is(parsed.value.length, 148);
  t.is(parsed.value.protectedEnd, 132);
  t.is(formatVersion(parsed.value.version), '1.2.3+7');
  t.is(parsed.value.securityCounter, 42);
  t.is(parsed.value.keyId, 'a1'.repeat(8));
  t.is(parsed.value.sha256, 'b2'.repeat(32));
  t.deepEqual(Buffer.from(parsed.value.signature), sig);
});

test('key id is the first 8 bytes of SHA-256 over the raw public key', (t) => {
  const k = keyPair();
  const raw = k.publicKey.export({ format: 'jwk' }).x!;
  const expect = createHash('sha256').update(Buffer.from(raw, 'base64url')).digest().subarray(0, 8).toString('hex');
  t.is(k.id, expect);
  t.deepEqual(Buffer.from(rawPublicKey(k.privateKey)), Buffer.from(raw, 'base64url'));
});

test('sign/verify round trip on every fixture; the signed file passes the reference CRC rule', (t) => {
  const k = keyPair();
  for (const name of ['t01_minimal', 't06_all_meta_rodata3', 't05_mailbox_json', 'v1_asm_write_hxe_rodata_bss']) {
    const original = fixture(name);
    const signed = signBody(original, original.length, k.privateKey, { version: { major: 1, minor: 2, patch: 0, build: 9 }, securityCounter: 7 });
    t.is(signed.length, original.length + TRAILER_SIZE, name);
    t.is(storedCrc(signed), referenceRuleCrc(signed), `${name}: header CRC covers the whole signed file`);
    t.not(storedCrc(signed), storedCrc(original), `${name}: CRC changed`);
    // only the CRC field of the body differs from the original
    t.deepEqual(Buffer.from(signed.subarray(0, 0x1c)), Buffer.from(original.subarray(0, 0x1c)));
    t.deepEqual(Buffer.from(signed.subarray(0x20, original.length)), Buffer.from(original.subarray(0x20)));
    t.deepEqual(Buffer.from(unsignedImage(signed, original.length)), Buffer.from(original), `${name}: stripping gives the original back`);

    const tr = parseTrailer(signed, original.length);
    if (!tr.ok || !tr.value) return t.fail(`${name}: trailer not parsed`);
    t.is(tr.value.securityCounter, 7);
    t.is(formatVersion(tr.value.version), '1.2.0+9');
    t.is(tr.value.keyId, k.id);
    const v = verifySignature(signed, tr.value, trust(k));
    t.deepEqual(v, { status: 'verified', keyId: k.id, keyName: 'k0', version: '1.2.0+9', securityCounter: 7 }, name);
    // the signed message is the original file followed by the trailer's head and protected records
    const m = signedMessage(signed, tr.value);
    t.deepEqual(Buffer.from(m), Buffer.concat([original, signed.subarray(original.length, original.length + 32)]));
    t.is(tr.value.sha256, createHash('sha256').update(m).digest('hex'));
  }
});

test('re-signing replaces the trailer instead of stacking one', (t) => {
  const a = keyPair();
  const b = keyPair();
  const original = fixture('t01_minimal');
  const once = signBody(original, original.length, a.privateKey, { version: { major: 1, minor: 0, patch: 0, build: 0 }, securityCounter: 1 });
  const twice = signBody(once, original.length, b.privateKey, { version: { major: 2, minor: 0, patch: 0, build: 0 }, securityCounter: 2 });
  t.is(twice.length, once.length);
  const tr = parseTrailer(twice, original.length);
  if (!tr.ok || !tr.value) return t.fail();
  t.is(verifySignature(twice, tr.value, trust(b)).status, 'verified');
  t.is(tr.value.securityCounter, 2);
});

test('unknown key, revoked key, altered digest and forged signature are told apart', (t) => {
  const k = keyPair();
  const other = keyPair();
  const original = fixture('t01_minimal');
  const signed = signBody(original, original.length, k.privateKey, { version: { major: 1, minor: 0, patch: 0, build: 0 }, securityCounter: 3 });
  const tr = parseTrailer(signed, original.length);
  if (!tr.ok || !tr.value) return t.fail();
  t.is(verifySignature(signed, tr.value, trust(other)).status, 'unknown_key');
  t.is(verifySignature(signed, tr.value, { keys: trust(k).keys, revoked: new Set([k.id]) }).status, 'revoked_key');
  t.is(verifySignature(signed, undefined, trust(k)).status, 'unsigned');

  // an attacker who re-hashes the altered image still cannot produce the signature
  const forged = signed.slice();
  forged[0x20] = forged[0x20]! ^ 0x01; // app name, outside the CRC
  const ftr = parseTrailer(forged, original.length);
  if (!ftr.ok || !ftr.value) return t.fail();
  t.is(verifySignature(forged, ftr.value, trust(k)).status, 'digest_mismatch');
  const rehashed = { ...ftr.value, sha256: createHash('sha256').update(signedMessage(forged, ftr.value)).digest('hex') };
  t.is(verifySignature(forged, rehashed, trust(k)).status, 'bad_signature');
  // a valid signature by a key that is not the one named in the trailer
  const m = signedMessage(signed, tr.value);
  const wrongSig = { ...tr.value, signature: new Uint8Array(edSign(null, m, other.privateKey)) };
  t.is(verifySignature(signed, wrongSig, trust(k)).status, 'bad_signature');
});

test('malformed trailers are EBADMSG trailer_invalid with the offset of the bad field', (t) => {
  const k = keyPair();
  const original = fixture('t01_minimal');
  const body = original.length;
  const signed = signBody(original, body, k.privateKey, { version: { major: 1, minor: 0, patch: 0, build: 0 }, securityCounter: 1 });
  const cases: Array<[string, (b: Uint8Array) => Uint8Array, number]> = [
    ['truncated head', (b) => b.slice(0, body + 8), body],
    ['total length too big', (b) => { new DataView(b.buffer).setUint32(body + 4, 149); return b; }, body + 4],
    ['one byte cut off', (b) => b.slice(0, b.length - 1), body + 4],
    ['protected length past the end', (b) => { new DataView(b.buffer).setUint16(body + 8, 0x1000); return b; }, body + 8],
    ['reserved non-zero', (b) => { b[body + 11] = 1; return b; }, body + 10],
    ['protected length 12 (counter moved out)', (b) => { new DataView(b.buffer).setUint16(body + 8, 12); return b; }, body + 12],
    ['unknown TLV type', (b) => { new DataView(b.buffer).setUint16(body + 12, 0x0099); return b; }, body + 12],
    ['version TLV length 7', (b) => { new DataView(b.buffer).setUint16(body + 14, 7); return b; }, body + 12 + 4 + 7 + 2],
    ['signature TLV cut', (b) => { const c = b.slice(0, b.length - 10); new DataView(c.buffer).setUint32(body + 4, c.length - body); return c; }, signed.length - 68 + 2],
  ];
  for (const [what, mutate, offset] of cases) {
    const r = parseTrailer(mutate(signed.slice()), body);
    t.false(r.ok, what);
    if (r.ok) continue;
    t.is(r.error.code, 'EBADMSG', what);
    t.is(r.error.reason, 'trailer_invalid', what);
    t.is(r.error.offset, offset, `${what}: ${r.error.message}`);
  }
  // bytes that do not start with the magic are not a trailer (the parser's trailing-bytes case)
  const junk = new Uint8Array([...original, 1, 2, 3, 4, 5]);
  t.deepEqual(parseTrailer(junk, body), { ok: true, value: null });
  t.deepEqual(parseTrailer(original, body), { ok: true, value: null });
  t.is(TRAILER_MAGIC, 0x48534947);
});

test('version text round-trips within the field widths', (t) => {
  t.deepEqual(parseVersion('1.2.0'), { ok: true, value: { major: 1, minor: 2, patch: 0, build: 0 } });
  t.deepEqual(parseVersion('255.255.65535+4294967295'), { ok: true, value: { major: 255, minor: 255, patch: 65535, build: 4294967295 } });
  for (const bad of ['1.2', '256.0.0', '1.2.65536', '1.2.3+4294967296', 'v1.2.3', '1.2.3-rc1']) t.false(parseVersion(bad).ok, bad);
});
