/**
 * The signature trailer's bytes (docs/hxe_format.md, "Signature trailer"): a 12-byte head
 * (magic, total length, protected length, reserved) and TLV records, appended at the end of
 * the image body. Modelled on MCUboot's TLV area: the protected records (version, security
 * counter) are inside the signed message, the rest (key id, digest, signature) check themselves.
 *
 * This module only encodes and structurally decodes; src/hxe/signature.ts does the crypto, so
 * the parser can use this without pulling in signing.
 */
import { err, ok, type Result } from './result.js';
import { decodeTlvs, encodeTlvs, type Tlv } from './tlv.js';
import type { HxeError, ImageVersion, SignatureTrailer } from './types.js';

/** "HSIG". */
export const TRAILER_MAGIC = 0x48534947;
export const TRAILER_HEAD_SIZE = 12;

export const TLV_KEY_ID = 0x0001;
export const TLV_SHA256 = 0x0002;
export const TLV_ED25519 = 0x0003;
export const TLV_VERSION = 0x0010;
export const TLV_SECURITY_COUNTER = 0x0011;

export const KEY_ID_SIZE = 8;
export const SHA256_SIZE = 32;
export const ED25519_SIGNATURE_SIZE = 64;
export const VERSION_SIZE = 8;
export const SECURITY_COUNTER_SIZE = 4;

/**
 * The one accepted record order, with exact value sizes. A canonical encoding means there is
 * exactly one byte string per trailer, so no bit of it can change without the parser or the
 * signature noticing.
 */
const PROTECTED_LAYOUT = [
  { type: TLV_VERSION, size: VERSION_SIZE, name: 'version' },
  { type: TLV_SECURITY_COUNTER, size: SECURITY_COUNTER_SIZE, name: 'security_counter' },
] as const;
const UNPROTECTED_LAYOUT = [
  { type: TLV_KEY_ID, size: KEY_ID_SIZE, name: 'key_id' },
  { type: TLV_SHA256, size: SHA256_SIZE, name: 'sha256' },
  { type: TLV_ED25519, size: ED25519_SIGNATURE_SIZE, name: 'ed25519' },
] as const;

const layoutSize = (l: ReadonlyArray<{ size: number }>): number => l.reduce((n, r) => n + 4 + r.size, 0);
export const PROTECTED_SIZE = layoutSize(PROTECTED_LAYOUT);
export const TRAILER_SIZE = TRAILER_HEAD_SIZE + PROTECTED_SIZE + layoutSize(UNPROTECTED_LAYOUT);

const u32be = (n: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0);
  return b;
};

export function encodeVersion(v: ImageVersion): Uint8Array {
  const b = new Uint8Array(VERSION_SIZE);
  const view = new DataView(b.buffer);
  view.setUint8(0, v.major);
  view.setUint8(1, v.minor);
  view.setUint16(2, v.patch);
  view.setUint32(4, v.build);
  return b;
}

function decodeVersion(b: Uint8Array): ImageVersion {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { major: view.getUint8(0), minor: view.getUint8(1), patch: view.getUint16(2), build: view.getUint32(4) };
}

export function formatVersion(v: ImageVersion): string {
  return `${v.major}.${v.minor}.${v.patch}+${v.build}`;
}

/** Parses `major.minor.patch[+build]` within the field widths (u8.u8.u16+u32). */
export function parseVersion(text: string): Result<ImageVersion, string> {
  const m = /^(\d+)\.(\d+)\.(\d+)(?:\+(\d+))?$/.exec(text.trim());
  if (!m) return err(`version "${text}": expected major.minor.patch[+build], e.g. 1.2.0+7`);
  const [major, minor, patch, build] = [m[1], m[2], m[3], m[4] ?? '0'].map(Number) as [number, number, number, number];
  if (major > 0xff || minor > 0xff) return err(`version "${text}": major and minor must be at most 255`);
  if (patch > 0xffff) return err(`version "${text}": patch must be at most 65535`);
  if (build > 0xffffffff) return err(`version "${text}": build must be at most 4294967295`);
  return ok({ major, minor, patch, build });
}

/**
 * The head and protected records: the part of the trailer that is inside the signed message.
 * Its total-length field already counts the unprotected records that will follow.
 */
export function encodeSignedTrailerPart(version: ImageVersion, securityCounter: number): Uint8Array {
  if (!Number.isInteger(securityCounter) || securityCounter < 0 || securityCounter > 0xffffffff) {
    throw new RangeError(`security counter ${securityCounter} is not a u32`);
  }
  const head = new Uint8Array(TRAILER_HEAD_SIZE);
  const view = new DataView(head.buffer);
  view.setUint32(0, TRAILER_MAGIC);
  view.setUint32(4, TRAILER_SIZE);
  view.setUint16(8, PROTECTED_SIZE);
  view.setUint16(10, 0);
  const prot = encodeTlvs([
    { type: TLV_VERSION, value: encodeVersion(version) },
    { type: TLV_SECURITY_COUNTER, value: u32be(securityCounter) },
  ]);
  const out = new Uint8Array(head.length + prot.length);
  out.set(head, 0);
  out.set(prot, head.length);
  return out;
}

/** The whole trailer: the signed part followed by the key id, digest and signature records. */
export function encodeTrailer(signedPart: Uint8Array, keyId: Uint8Array, sha256: Uint8Array, signature: Uint8Array): Uint8Array {
  const rest = encodeTlvs([
    { type: TLV_KEY_ID, value: keyId },
    { type: TLV_SHA256, value: sha256 },
    { type: TLV_ED25519, value: signature },
  ]);
  const out = new Uint8Array(signedPart.length + rest.length);
  out.set(signedPart, 0);
  out.set(rest, signedPart.length);
  if (out.length !== TRAILER_SIZE) throw new RangeError(`trailer is ${out.length} bytes, expected ${TRAILER_SIZE}`);
  return out;
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

const invalid = (message: string, offset: number): { ok: false; error: HxeError } =>
  err({ code: 'EBADMSG', reason: 'trailer_invalid', message, offset });

/** True when the bytes at `bodyEnd` start with the trailer magic (so they must be a valid trailer). */
export function hasTrailerMagic(bytes: Uint8Array, bodyEnd: number): boolean {
  if (bytes.length - bodyEnd < 4) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return view.getUint32(bodyEnd) === TRAILER_MAGIC;
}

function checkLayout(
  records: Tlv[],
  layout: ReadonlyArray<{ type: number; size: number; name: string }>,
  area: string,
  areaOffset: number,
): { ok: false; error: HxeError } | null {
  if (records.length !== layout.length) {
    return invalid(`${area} area has ${records.length} TLV records, expected ${layout.length} (${layout.map((l) => l.name).join(', ')})`, areaOffset);
  }
  for (let i = 0; i < layout.length; i++) {
    const want = layout[i]!;
    const got = records[i]!;
    if (got.type !== want.type) {
      return invalid(`${area} TLV #${i} has type 0x${got.type.toString(16).padStart(4, '0')}, expected 0x${want.type.toString(16).padStart(4, '0')} (${want.name})`, got.offset);
    }
    if (got.value.length !== want.size) {
      return invalid(`TLV ${want.name} is ${got.value.length} bytes, expected ${want.size}`, got.offset + 2);
    }
  }
  return null;
}

/**
 * Decodes the trailer at `bodyEnd`. `ok(null)` means there is no trailer (nothing after the body,
 * or bytes that do not start with the magic: the parser's `trailing_bytes` case). Bytes that
 * start with the magic but are not a well-formed trailer are `EBADMSG trailer_invalid`.
 */
export function parseTrailer(bytes: Uint8Array, bodyEnd: number): Result<SignatureTrailer | null, HxeError> {
  if (!hasTrailerMagic(bytes, bodyEnd)) return ok(null);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const remaining = bytes.length - bodyEnd;
  if (remaining < TRAILER_HEAD_SIZE) {
    return invalid(`trailer head needs ${TRAILER_HEAD_SIZE} bytes, file has ${remaining} after the body`, bodyEnd);
  }
  const totalLen = view.getUint32(bodyEnd + 4);
  if (totalLen !== remaining) {
    return invalid(`trailer total length ${totalLen} does not match the ${remaining} bytes from the end of the body to the end of the file`, bodyEnd + 4);
  }
  const protLen = view.getUint16(bodyEnd + 8);
  if (protLen > remaining - TRAILER_HEAD_SIZE) {
    return invalid(`trailer protected length ${protLen} runs past the trailer (${remaining - TRAILER_HEAD_SIZE} bytes after the head)`, bodyEnd + 8);
  }
  const reserved = view.getUint16(bodyEnd + 10);
  if (reserved !== 0) return invalid(`trailer reserved field is 0x${reserved.toString(16)}, must be 0`, bodyEnd + 10);

  const protStart = bodyEnd + TRAILER_HEAD_SIZE;
  const protEnd = protStart + protLen;
  const prot = decodeTlvs(bytes, protStart, protEnd);
  if (!prot.ok) return invalid(`protected area: ${prot.error.message}`, prot.error.offset);
  const bad1 = checkLayout(prot.value, PROTECTED_LAYOUT, 'protected', protStart);
  if (bad1) return bad1;
  const rest = decodeTlvs(bytes, protEnd, bytes.length);
  if (!rest.ok) return invalid(`unprotected area: ${rest.error.message}`, rest.error.offset);
  const bad2 = checkLayout(rest.value, UNPROTECTED_LAYOUT, 'unprotected', protEnd);
  if (bad2) return bad2;

  const [versionTlv, counterTlv] = prot.value as [Tlv, Tlv];
  const [keyTlv, shaTlv, sigTlv] = rest.value as [Tlv, Tlv, Tlv];
  return ok({
    offset: bodyEnd,
    length: remaining,
    protectedEnd: protEnd,
    version: decodeVersion(versionTlv.value),
    securityCounter: new DataView(counterTlv.value.buffer, counterTlv.value.byteOffset, 4).getUint32(0),
    keyId: hex(keyTlv.value),
    sha256: hex(shaTlv.value),
    signature: sigTlv.value.slice(),
  });
}
