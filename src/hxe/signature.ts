/**
 * Ed25519 image signatures (docs/hxe_format.md, "Signature trailer"; docs/security.md).
 *
 * The signed message is the unsigned image — every byte from 0x00 to the end of the body,
 * header, app name, meta table and reserved bytes included, with the CRC the unsigned image
 * had — followed by the trailer's head and protected records (version, security counter).
 * Signing appends the trailer and then recomputes the header CRC over the whole file with the
 * HSX reference rule (bytes 0x00..0x1B, then every byte after the header), so the reference
 * loader still accepts the signed file. The verifier rebuilds the unsigned image by restoring
 * the CRC over the body only; removing the trailer gives back the original file byte for byte.
 *
 * Pure: node:crypto only; keys arrive as KeyObjects (loading them is I/O and
 * lives in src/gateway/keys.ts).
 */
import { createHash, createPublicKey, generateKeyPairSync, sign as edSign, verify as edVerify, type KeyObject } from 'node:crypto';
import { OFF_CRC } from './constants.js';
import { hxeCrc32 } from './crc.js';
import { parseImage } from './parse.js';
import type { Result } from './result.js';
import {
  ED25519_SIGNATURE_SIZE, KEY_ID_SIZE, encodeSignedTrailerPart, encodeTrailer, formatVersion, TRAILER_SIZE,
} from './trailer.js';
import type { HxeError, HxeImage, HxeLimits, ImageVersion, SignatureTrailer } from './types.js';

function withCrc(bytes: Uint8Array, crc: number): Uint8Array {
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(OFF_CRC, crc);
  return bytes;
}

/** The image as it was before signing: the body with the CRC over the body only. */
export function unsignedImage(bytes: Uint8Array, bodyEnd: number): Uint8Array {
  const u = bytes.slice(0, bodyEnd);
  return withCrc(u, hxeCrc32(u));
}

/** What the signature covers for a signed file (see the module comment). */
export function signedMessage(bytes: Uint8Array, trailer: Pick<SignatureTrailer, 'offset' | 'protectedEnd'>): Uint8Array {
  // one allocation: body, then the signed trailer part, then the body's own CRC patched in
  const m = new Uint8Array(trailer.protectedEnd);
  m.set(bytes.subarray(0, trailer.protectedEnd), 0);
  withCrc(m, hxeCrc32(m.subarray(0, trailer.offset)));
  return m;
}

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** The raw 32-byte Ed25519 public key (from the SPKI encoding's last 32 bytes). */
export function rawPublicKey(key: KeyObject): Uint8Array {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== 'ed25519') throw new TypeError(`expected an Ed25519 key, got ${pub.asymmetricKeyType ?? pub.type}`);
  const der = pub.export({ type: 'spki', format: 'der' });
  return new Uint8Array(der.subarray(der.length - 32));
}

/** Key id: SHA-256 of the raw public key, truncated to 8 bytes; lowercase hex. */
export function keyIdOf(key: KeyObject): string {
  return sha256(rawPublicKey(key)).subarray(0, KEY_ID_SIZE).toString('hex');
}

export function generateSigningKey(): { privateKey: KeyObject; publicKey: KeyObject; keyId: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

export interface SignOptions {
  version: ImageVersion;
  securityCounter: number;
}

/**
 * Signs the image whose body ends at `bodyEnd` (the caller has parsed and verified it; `signImage`
 * below does both for a file). Any old trailer past `bodyEnd` is replaced. Returns the signed file.
 */
export function signBody(bytes: Uint8Array, bodyEnd: number, privateKey: KeyObject, opts: SignOptions): Uint8Array {
  if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'ed25519') {
    throw new TypeError('signing needs an Ed25519 private key');
  }
  const u = unsignedImage(bytes, bodyEnd);
  const signedPart = encodeSignedTrailerPart(opts.version, opts.securityCounter);
  const message = new Uint8Array(u.length + signedPart.length);
  message.set(u, 0);
  message.set(signedPart, u.length);
  const signature = edSign(null, message, privateKey);
  const keyId = Buffer.from(keyIdOf(privateKey), 'hex');
  const trailer = encodeTrailer(signedPart, keyId, sha256(message), signature);
  const out = new Uint8Array(u.length + TRAILER_SIZE);
  out.set(u, 0);
  out.set(trailer, u.length);
  return withCrc(out, hxeCrc32(out));
}

/**
 * Parses and verifies `bytes`, then signs it. An existing trailer is replaced; bytes after the
 * body that are not a trailer are dropped (they were never part of the image). The result is
 * parsed again, so a caller never gets a file its own parser would refuse.
 */
export function signImage(
  bytes: Uint8Array, privateKey: KeyObject, opts: SignOptions, limits?: Partial<HxeLimits>,
): Result<{ bytes: Uint8Array; image: HxeImage }, HxeError> {
  const parsed = parseImage(bytes, limits);
  if (!parsed.ok) return parsed;
  const signed = signBody(bytes, parsed.value.bodyEnd, privateKey, opts);
  const again = parseImage(signed, limits);
  if (!again.ok) return again;
  return { ok: true, value: { bytes: signed, image: again.value } };
}

/** The keys a verifier trusts, by key id, and the ids it has revoked. */
export interface TrustedKeys {
  keys: ReadonlyMap<string, { name: string; publicKey: KeyObject }>;
  revoked: ReadonlySet<string>;
}

export const NO_KEYS: TrustedKeys = { keys: new Map(), revoked: new Set() };

export type SignatureVerdict =
  | { status: 'unsigned' }
  | { status: 'verified'; keyId: string; keyName: string; version: string; securityCounter: number }
  | { status: 'unknown_key'; keyId: string; version: string; securityCounter: number }
  | { status: 'revoked_key'; keyId: string; version: string; securityCounter: number }
  | { status: 'digest_mismatch'; keyId: string; expected: string; actual: string }
  | { status: 'bad_signature'; keyId: string };

/**
 * Checks a parsed image's trailer against the trusted keys. The digest is checked first (it needs
 * no key, so even an unknown-key image is caught if it was altered); revocation wins over trust.
 */
export function verifySignature(bytes: Uint8Array, trailer: SignatureTrailer | undefined, trusted: TrustedKeys): SignatureVerdict {
  if (!trailer) return { status: 'unsigned' };
  const message = signedMessage(bytes, trailer);
  const actual = sha256(message).toString('hex');
  if (actual !== trailer.sha256) return { status: 'digest_mismatch', keyId: trailer.keyId, expected: trailer.sha256, actual };
  const info = { keyId: trailer.keyId, version: formatVersion(trailer.version), securityCounter: trailer.securityCounter };
  if (trusted.revoked.has(trailer.keyId)) return { status: 'revoked_key', ...info };
  const key = trusted.keys.get(trailer.keyId);
  if (!key) return { status: 'unknown_key', ...info };
  if (trailer.signature.length !== ED25519_SIGNATURE_SIZE || !edVerify(null, message, key.publicKey, trailer.signature)) {
    return { status: 'bad_signature', keyId: trailer.keyId };
  }
  return { status: 'verified', keyName: key.name, ...info };
}

/** A verdict as one line for humans (CLI and audit). */
export function describeVerdict(v: SignatureVerdict): string {
  switch (v.status) {
    case 'unsigned': return 'unsigned';
    case 'verified': return `verified (key ${v.keyId} "${v.keyName}", version ${v.version}, security counter ${v.securityCounter})`;
    case 'unknown_key': return `signed by unknown key ${v.keyId} (not checked)`;
    case 'revoked_key': return `signed by REVOKED key ${v.keyId}`;
    case 'digest_mismatch': return `SHA-256 mismatch: trailer says ${v.expected}, image hashes to ${v.actual}`;
    case 'bad_signature': return `BAD signature for key ${v.keyId}`;
  }
}
