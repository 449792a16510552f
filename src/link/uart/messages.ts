/**
 * Payloads of the session frames (docs/uart_protocol.md, "Messages"). Every decoder checks the
 * payload length before reading, so a frame that passed its CRC but carries a malformed payload
 * (a bug or a hostile peer) is a typed error, never an exception or an out-of-range read.
 */
import { err, ok, type Result } from '../../hxe/result.js';

/**
 * Version 2 (docs/uart_protocol.md, "Versions"): OPEN's FORCE flag, the CURRENT answer to OPEN and a
 * RESULT that says INSTALLED or UPDATED and carries the image (and the one it replaced). A listener
 * still takes a version 1 OPEN and answers it the version 1 way.
 */
export const PROTOCOL_VERSION = 3;
export const SUPPORTED_VERSIONS: readonly number[] = [1, 2, 3];
/** The INFO_REQ version a scan sends: every INFO-capable device (2 and 3) answers it the same way. */
export const INFO_VERSION = 2;
/** A raw transfer speaks version 2 (version 3 adds nothing to a raw stream), so older devices need no step down. */
export const RAW_VERSION = 2;
/** Compressed and delta streams, and INFO_REQ asking for the codec block. */
export const CODEC_VERSION = 3;

/**
 * Version 3 (docs/uart_protocol.md, "Compressed and delta transfers"): INFO asked in version 3 carries
 * the device's codec capabilities; OPEN carries the encoding of the stream that follows (raw, deflate,
 * patch), its length and, for a patch, the base SHA-256; ACCEPT carries the capabilities in its flags.
 */
export const CodecCap = { DEFLATE: 0x01, PATCH: 0x02 } as const;
export const ENCODING_CODE = { raw: 0, deflate: 1, patch: 2 } as const;
export type EncodingName = keyof typeof ENCODING_CODE;

export interface StreamEncoding {
  kind: EncodingName;
  /** deflate: the stream's window (8..12); 0 otherwise (a patch header carries its own). */
  windowBits: number;
  /** Bytes of the encoded stream (DATA frames and offsets count in it); the image size for raw. */
  streamBytes: number;
  /** patch: the SHA-256 of the image the patch applies to. */
  baseSha256: Uint8Array | null;
}

/** What a version 3 device says it can decode (INFO's CODEC block, ACCEPT's flags). */
export interface CodecCaps {
  deflate: boolean;
  patch: boolean;
  /** Largest deflate window it takes (bits). */
  maxWindowBits: number;
  /** RAM it offers the decoder and patch applier (bytes): picks the patch window. */
  ramBytes: number;
}

/** OPEN `flags` bits (version 2; version 1 sends 0). */
export const OPEN_FLAG_FORCE = 0x01;

export interface OpenMessage {
  version: number;
  /** Largest DATA payload the master proposes. */
  chunkSize: number;
  /** Frames in flight the master proposes. */
  window: number;
  totalBytes: number;
  crc32: number;
  sha256: Uint8Array; // 32 bytes
  appName: string;
  /** Version 2: send even when the device already runs this image (no CURRENT answer). */
  force: boolean;
  /** Version 3: how the DATA bytes encode the image (absent: raw, `streamBytes` = `totalBytes`). */
  encoding?: StreamEncoding;
}

export interface AcceptMessage {
  version: number;
  /** Negotiated DATA payload size: every DATA frame but the last carries exactly this many bytes. */
  chunkSize: number;
  /** Negotiated window in frames. */
  window: number;
  /** Byte offset the master starts from (a multiple of chunkSize); > 0 when resuming. */
  resumeOffset: number;
  /** Version 3: the device's codec capabilities (CodecCap bits; 0 in versions 1 and 2). */
  caps?: number;
}

/** RESULT of version 1: the READY task. */
export interface ResultMessageV1 {
  pid: number;
  appName: string;
}

/** An image a device runs (IMAGE block): in CURRENT, and in RESULT for the new task and the one it replaced. */
export interface ImageInfo {
  pid: number;
  crc32: number;
  /** SHA-256 of the image, 64 hex digits. */
  sha256: string;
  appName: string;
  /** The version the device records for it (from the signature trailer; may be empty). */
  version: string;
}

export type ResultOutcome = 'installed' | 'updated';

/** RESULT of version 2. */
export interface ResultMessage {
  outcome: ResultOutcome;
  /** An update committed in test mode, waiting for its confirm window. */
  confirmPending: boolean;
  /** Flash slot the image was committed to (null: a device without flash). */
  slot: 'A' | 'B' | null;
  image: ImageInfo;
  /** For `updated`: the image it replaced. */
  from: ImageInfo | null;
}

/** A typed error carried across the link (the engine's, or the link's own). */
export interface ErrorMessage {
  code: string;
  where: string;
  reason: string;
}

export interface MessageError {
  message: string;
  offset: number;
}

const OPEN_FIXED = 47;
const ACCEPT_LEN = 10;
const MAX_NAME = 32;
const IMAGE_FIXED = 42;
const RESULT_FIXED = 3;
const OUTCOME_CODE: Record<ResultOutcome, number> = { installed: 1, updated: 2 };
const SLOT_CODE = { A: 0x41, B: 0x42 } as const;
const RESULT_FLAG_CONFIRM_PENDING = 0x01;

function shortString(buf: Buffer, at: number, what: string): Result<{ value: string; next: number }, MessageError> {
  if (at >= buf.length) return err({ message: `${what} length byte missing`, offset: at });
  const n = buf[at]!;
  if (at + 1 + n > buf.length) return err({ message: `${what} of ${n} bytes runs past the payload end`, offset: at });
  return ok({ value: buf.toString('utf8', at + 1, at + 1 + n), next: at + 1 + n });
}

function putShortString(value: string): Buffer {
  const bytes = Buffer.from(value, 'utf8').subarray(0, 255);
  return Buffer.concat([Buffer.from([bytes.length]), bytes]);
}

const asBuffer = (p: Uint8Array): Buffer => Buffer.from(p.buffer, p.byteOffset, p.length);

export function encodeOpen(m: OpenMessage): Buffer {
  const name = Buffer.from(m.appName, 'latin1').subarray(0, MAX_NAME);
  const buf = Buffer.alloc(OPEN_FIXED + name.length);
  buf[0] = m.version;
  buf[1] = m.force && m.version >= 2 ? OPEN_FLAG_FORCE : 0;
  buf.writeUInt16BE(m.chunkSize, 2);
  buf.writeUInt16BE(m.window, 4);
  buf.writeUInt32BE(m.totalBytes, 6);
  buf.writeUInt32BE(m.crc32 >>> 0, 10);
  buf.set(m.sha256.subarray(0, 32), 14);
  buf[46] = name.length;
  buf.set(name, OPEN_FIXED);
  if (m.version < 3) return buf;
  const e = m.encoding ?? { kind: 'raw', windowBits: 0, streamBytes: m.totalBytes, baseSha256: null };
  const tail = Buffer.alloc(6 + (e.kind === 'patch' ? 32 : 0));
  tail[0] = ENCODING_CODE[e.kind];
  tail[1] = e.kind === 'deflate' ? e.windowBits : 0;
  tail.writeUInt32BE(e.streamBytes >>> 0, 2);
  if (e.kind === 'patch') {
    if (!e.baseSha256 || e.baseSha256.length !== 32) throw new RangeError('a patch OPEN needs the 32-byte base SHA-256');
    tail.set(e.baseSha256, 6);
  }
  return Buffer.concat([buf, tail]);
}

export function decodeOpen(p: Uint8Array): Result<OpenMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length < OPEN_FIXED) return err({ message: `OPEN payload of ${buf.length} bytes is shorter than ${OPEN_FIXED}`, offset: buf.length });
  const nameLen = buf[46]!;
  if (nameLen > MAX_NAME) return err({ message: `OPEN app name length ${nameLen} exceeds ${MAX_NAME}`, offset: 46 });
  const v3 = buf[0]! >= 3;
  let encoding: StreamEncoding | undefined;
  if (v3) {
    const at = OPEN_FIXED + nameLen;
    if (buf.length < at + 6) return err({ message: `OPEN (version 3) payload of ${buf.length} bytes has no encoding block at ${at}`, offset: at });
    const code = buf[at]!;
    const kind = (Object.keys(ENCODING_CODE) as EncodingName[]).find((k) => ENCODING_CODE[k] === code);
    if (!kind) return err({ message: `OPEN encoding ${code} is not 0 (raw), 1 (deflate) or 2 (patch)`, offset: at });
    const want = at + 6 + (kind === 'patch' ? 32 : 0);
    if (buf.length !== want) return err({ message: `OPEN payload is ${buf.length} bytes, expected ${want} for a ${kind} stream`, offset: at });
    const streamBytes = buf.readUInt32BE(at + 2);
    if (kind === 'raw' && streamBytes !== buf.readUInt32BE(6)) return err({ message: `OPEN raw stream of ${streamBytes} bytes, but the image is ${buf.readUInt32BE(6)}`, offset: at + 2 });
    encoding = { kind, windowBits: buf[at + 1]!, streamBytes, baseSha256: kind === 'patch' ? Uint8Array.from(buf.subarray(at + 6, at + 38)) : null };
  } else if (buf.length !== OPEN_FIXED + nameLen) return err({ message: `OPEN payload is ${buf.length} bytes, expected ${OPEN_FIXED + nameLen}`, offset: 46 });
  const out: OpenMessage = {
    version: buf[0]!,
    chunkSize: buf.readUInt16BE(2),
    window: buf.readUInt16BE(4),
    totalBytes: buf.readUInt32BE(6),
    crc32: buf.readUInt32BE(10),
    sha256: Uint8Array.from(buf.subarray(14, 46)),
    appName: buf.toString('latin1', OPEN_FIXED, OPEN_FIXED + nameLen),
    // Version 1 has no flags (reserved, 0); other bits are reserved and ignored.
    force: buf[0]! >= 2 && (buf[1]! & OPEN_FLAG_FORCE) !== 0,
  };
  if (encoding) out.encoding = encoding;
  return ok(out);
}

/** Bytes of the stream DATA frames carry for this OPEN. */
export const streamBytesOf = (m: OpenMessage): number => m.encoding?.streamBytes ?? m.totalBytes;

export function encodeAccept(m: AcceptMessage): Buffer {
  const buf = Buffer.alloc(ACCEPT_LEN);
  buf[0] = m.version;
  buf[1] = m.version >= 3 ? (m.caps ?? 0) & 0xff : 0;
  buf.writeUInt16BE(m.chunkSize, 2);
  buf.writeUInt16BE(m.window, 4);
  buf.writeUInt32BE(m.resumeOffset, 6);
  return buf;
}

export function decodeAccept(p: Uint8Array): Result<AcceptMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length !== ACCEPT_LEN) return err({ message: `ACCEPT payload is ${buf.length} bytes, expected ${ACCEPT_LEN}`, offset: 0 });
  const m: AcceptMessage = { version: buf[0]!, chunkSize: buf.readUInt16BE(2), window: buf.readUInt16BE(4), resumeOffset: buf.readUInt32BE(6) };
  if (m.version >= 3) m.caps = buf[1]!;
  return ok(m);
}

/** NAK payload: the sequence numbers the listener is missing, u32 each. */
export function encodeMissing(seqs: readonly number[]): Buffer {
  const buf = Buffer.alloc(seqs.length * 4);
  seqs.forEach((s, i) => buf.writeUInt32BE(s >>> 0, i * 4));
  return buf;
}

export function decodeMissing(p: Uint8Array): Result<number[], MessageError> {
  const buf = asBuffer(p);
  if (buf.length % 4 !== 0) return err({ message: `NAK payload of ${buf.length} bytes is not a list of u32`, offset: buf.length - (buf.length % 4) });
  const out: number[] = [];
  for (let i = 0; i < buf.length; i += 4) out.push(buf.readUInt32BE(i));
  return ok(out);
}

/** RESULT payload of version 1: pid u32, then the registered app name (u8 length + UTF-8). */
export function encodeResultV1(m: ResultMessageV1): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(m.pid >>> 0, 0);
  return Buffer.concat([head, putShortString(m.appName)]);
}

export function decodeResultV1(p: Uint8Array): Result<ResultMessageV1, MessageError> {
  const buf = asBuffer(p);
  if (buf.length < 5) return err({ message: `RESULT payload of ${buf.length} bytes is shorter than 5`, offset: buf.length });
  const name = shortString(buf, 4, 'RESULT app name');
  if (!name.ok) return name;
  if (name.value.next !== buf.length) return err({ message: 'RESULT payload has trailing bytes', offset: name.value.next });
  return ok({ pid: buf.readUInt32BE(0), appName: name.value.value });
}

/** IMAGE block: pid u32, crc32 u32, sha256 (32 bytes), app name and version (u8 length + UTF-8 each). */
export function encodeImageInfo(m: ImageInfo): Buffer {
  const sha = Buffer.from(m.sha256, 'hex');
  if (sha.length !== 32) throw new RangeError(`IMAGE sha256 must be 32 bytes, got ${sha.length}`);
  const head = Buffer.alloc(40);
  head.writeUInt32BE(m.pid >>> 0, 0);
  head.writeUInt32BE(m.crc32 >>> 0, 4);
  sha.copy(head, 8);
  return Buffer.concat([head, putShortString(m.appName), putShortString(m.version)]);
}

function readImageInfo(buf: Buffer, at: number, what: string): Result<{ value: ImageInfo; next: number }, MessageError> {
  if (buf.length - at < IMAGE_FIXED) return err({ message: `${what} of ${buf.length - at} bytes is shorter than ${IMAGE_FIXED}`, offset: buf.length });
  const name = shortString(buf, at + 40, `${what} app name`);
  if (!name.ok) return name;
  const version = shortString(buf, name.value.next, `${what} version`);
  if (!version.ok) return version;
  return ok({
    value: {
      pid: buf.readUInt32BE(at), crc32: buf.readUInt32BE(at + 4), sha256: buf.toString('hex', at + 8, at + 40),
      appName: name.value.value, version: version.value.value,
    },
    next: version.value.next,
  });
}

/** CURRENT payload: one IMAGE block, the image the device runs. */
export function encodeCurrent(m: ImageInfo): Buffer {
  return encodeImageInfo(m);
}

export function decodeCurrent(p: Uint8Array): Result<ImageInfo, MessageError> {
  const buf = asBuffer(p);
  const image = readImageInfo(buf, 0, 'CURRENT image');
  if (!image.ok) return image;
  if (image.value.next !== buf.length) return err({ message: 'CURRENT payload has trailing bytes', offset: image.value.next });
  return ok(image.value.value);
}

/** RESULT payload of version 2: outcome u8, flags u8, slot u8, IMAGE of the new task, for UPDATED the IMAGE it replaced. */
export function encodeResult(m: ResultMessage): Buffer {
  const head = Buffer.from([
    OUTCOME_CODE[m.outcome],
    m.confirmPending ? RESULT_FLAG_CONFIRM_PENDING : 0,
    m.slot === null ? 0 : SLOT_CODE[m.slot],
  ]);
  const parts = [head, encodeImageInfo(m.image)];
  if (m.outcome === 'updated') {
    if (!m.from) throw new RangeError('an UPDATED RESULT needs the image it replaced');
    parts.push(encodeImageInfo(m.from));
  }
  return Buffer.concat(parts);
}

export function decodeResult(p: Uint8Array): Result<ResultMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length < RESULT_FIXED) return err({ message: `RESULT payload of ${buf.length} bytes is shorter than ${RESULT_FIXED}`, offset: buf.length });
  const outcome = buf[0] === 1 ? 'installed' : buf[0] === 2 ? 'updated' : null;
  if (!outcome) return err({ message: `RESULT outcome ${buf[0]} is not 1 (INSTALLED) or 2 (UPDATED)`, offset: 0 });
  const slot = buf[2] === 0 ? null : buf[2] === SLOT_CODE.A ? 'A' : buf[2] === SLOT_CODE.B ? 'B' : undefined;
  if (slot === undefined) return err({ message: `RESULT slot 0x${buf[2]!.toString(16)} is not 0, 'A' or 'B'`, offset: 2 });
  const image = readImageInfo(buf, RESULT_FIXED, 'RESULT image');
  if (!image.ok) return image;
  let next = image.value.next;
  let from: ImageInfo | null = null;
  if (outcome === 'updated') {
    const replaced = readImageInfo(buf, next, 'RESULT replaced image');
    if (!replaced.ok) return replaced;
    from = replaced.value.value;
    next = replaced.value.next;
  }
  if (next !== buf.length) return err({ message: 'RESULT payload has trailing bytes', offset: next });
  return ok({ outcome, confirmPending: (buf[1]! & RESULT_FLAG_CONFIRM_PENDING) !== 0, slot, image: image.value.value, from });
}

/** ERROR payload: code, where, reason, each a u8 length + UTF-8 text. */
export function encodeError(m: ErrorMessage): Buffer {
  return Buffer.concat([putShortString(m.code), putShortString(m.where), putShortString(m.reason)]);
}

export function decodeError(p: Uint8Array): Result<ErrorMessage, MessageError> {
  const buf = asBuffer(p);
  const code = shortString(buf, 0, 'ERROR code');
  if (!code.ok) return code;
  const where = shortString(buf, code.value.next, 'ERROR where');
  if (!where.ok) return where;
  const reason = shortString(buf, where.value.next, 'ERROR reason');
  if (!reason.ok) return reason;
  if (reason.value.next !== buf.length) return err({ message: 'ERROR payload has trailing bytes', offset: reason.value.next });
  return ok({ code: code.value.value, where: where.value.value, reason: reason.value.value });
}

/** ABORT payload: the master's reason, UTF-8 (the frame length bounds it). */
export function encodeAbort(reason: string): Buffer {
  return Buffer.from(reason, 'utf8').subarray(0, 255);
}

export function decodeAbort(p: Uint8Array): string {
  return asBuffer(p).toString('utf8');
}

// ---------------------------------------------------------------------------------------------
// INFO (version 2): the master asks what the device runs (INFO_REQ, payload: the version), the
// device answers INFO: what it runs and what its flash slots hold (docs/uart_protocol.md, "INFO").

/** INFO `flags` bits. */
export const InfoFlag = { RUNNING: 0x01, CAPACITY: 0x02, SLOTS: 0x04, CODEC: 0x08 } as const;
const INFO_CODEC_LEN = 4;
const INFO_FIXED = 5;
const INFO_SLOT_STATES = ['empty', 'test', 'good'] as const;
const INFO_SLOT_ACTIVE = 0x01;
const MAX_VERSION_TEXT = 24;

export interface InfoSlot {
  slot: 'A' | 'B';
  state: 'empty' | 'test' | 'good';
  active: boolean;
  sha256: string | null;
  version: string | null;
}

/** INFO: the shape of link/flasher.ts `InventoryEntry` without its target. */
export interface InfoMessage {
  app_name: string | null;
  version: string | null;
  sha256: string | null;
  slots: InfoSlot[];
  slot_bytes: number | null;
  /** Version 3 only: what the device decodes (null: not said, or asked in version 2). */
  codec?: CodecCaps | null;
}

/** INFO_REQ payload: the protocol version the master speaks (2). */
export const encodeInfoRequest = (version = INFO_VERSION): Buffer => Buffer.from([version]);

export function decodeInfoRequest(p: Uint8Array): Result<{ version: number }, MessageError> {
  if (p.length !== 1) return err({ message: `INFO_REQ payload is ${p.length} bytes, expected 1`, offset: 0 });
  return ok({ version: p[0]! });
}

function utf8Cut(value: string, max: number): Buffer {
  const b = Buffer.from(value, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

const cutString = (value: string | null, max: number): Buffer => {
  const b = utf8Cut(value ?? '', max);
  return Buffer.concat([Buffer.from([b.length]), b]);
};

function shaOf(hex: string | null, what: string): Buffer {
  const b = Buffer.from(hex ?? '', 'hex');
  if (b.length !== 32 || !/^[0-9a-f]{64}$/i.test(hex ?? '')) throw new RangeError(`INFO ${what} must be 64 hex digits, got ${String(hex)}`);
  return b;
}

/** INFO payload: flags, slot size, the running image (sha256, name, version), slots A and B. */
export function encodeInfo(m: InfoMessage): Buffer {
  const head = Buffer.alloc(INFO_FIXED);
  const parts: Buffer[] = [head];
  let flags = 0;
  if (m.sha256 !== null) {
    flags |= InfoFlag.RUNNING;
    parts.push(shaOf(m.sha256, 'sha256'), cutString(m.app_name, MAX_NAME), cutString(m.version, MAX_VERSION_TEXT));
  }
  if (m.slot_bytes !== null) {
    flags |= InfoFlag.CAPACITY;
    head.writeUInt32BE(m.slot_bytes >>> 0, 1);
  }
  if (m.slots.length > 0) {
    flags |= InfoFlag.SLOTS;
    for (const name of ['A', 'B'] as const) {
      const s = m.slots.find((x) => x.slot === name);
      const state = s && s.sha256 !== null ? s.state : 'empty';
      parts.push(Buffer.from([SLOT_CODE[name], INFO_SLOT_STATES.indexOf(state), s?.active ? INFO_SLOT_ACTIVE : 0]));
      if (state !== 'empty') parts.push(shaOf(s!.sha256, `slot ${name} sha256`), cutString(s!.version, MAX_VERSION_TEXT));
    }
  }
  if (m.codec) {
    flags |= InfoFlag.CODEC;
    const c = Buffer.alloc(INFO_CODEC_LEN);
    c[0] = (m.codec.deflate ? CodecCap.DEFLATE : 0) | (m.codec.patch ? CodecCap.PATCH : 0);
    c[1] = m.codec.maxWindowBits;
    c.writeUInt16BE(Math.min(0xffff, m.codec.ramBytes), 2);
    parts.push(c);
  }
  head[0] = flags;
  return Buffer.concat(parts);
}

export function decodeInfo(p: Uint8Array): Result<InfoMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length < INFO_FIXED) return err({ message: `INFO payload of ${buf.length} bytes is shorter than ${INFO_FIXED}`, offset: buf.length });
  const flags = buf[0]!;
  if (flags & ~(InfoFlag.RUNNING | InfoFlag.CAPACITY | InfoFlag.SLOTS | InfoFlag.CODEC)) return err({ message: `INFO flags 0x${flags.toString(16)} has unknown bits`, offset: 0 });
  const m: InfoMessage = { app_name: null, version: null, sha256: null, slots: [], slot_bytes: null };
  if (flags & InfoFlag.CAPACITY) m.slot_bytes = buf.readUInt32BE(1);
  let at = INFO_FIXED;
  const sha = (what: string): Result<string, MessageError> => {
    if (at + 32 > buf.length) return err({ message: `INFO ${what} runs past the payload end`, offset: at });
    const v = buf.toString('hex', at, at + 32);
    at += 32;
    return ok(v);
  };
  const text = (what: string, max: number): Result<string, MessageError> => {
    const s = shortString(buf, at, `INFO ${what}`);
    if (!s.ok) return s;
    if (buf[at]! > max) return err({ message: `INFO ${what} of ${buf[at]} bytes exceeds ${max}`, offset: at });
    at = s.value.next;
    return ok(s.value.value);
  };
  if (flags & InfoFlag.RUNNING) {
    const s = sha('sha256');
    if (!s.ok) return s;
    const name = text('app name', MAX_NAME);
    if (!name.ok) return name;
    const version = text('version', MAX_VERSION_TEXT);
    if (!version.ok) return version;
    m.sha256 = s.value;
    m.app_name = name.value;
    m.version = version.value;
  }
  if (flags & InfoFlag.SLOTS) {
    for (const name of ['A', 'B'] as const) {
      if (at + 3 > buf.length) return err({ message: `INFO slot ${name} runs past the payload end`, offset: at });
      if (buf[at] !== SLOT_CODE[name]) return err({ message: `INFO slot byte 0x${buf[at]!.toString(16)} is not '${name}'`, offset: at });
      const state = INFO_SLOT_STATES[buf[at + 1]!];
      if (!state) return err({ message: `INFO slot ${name} state ${buf[at + 1]} is not 0 (empty), 1 (test) or 2 (good)`, offset: at + 1 });
      if (buf[at + 2]! & ~INFO_SLOT_ACTIVE) return err({ message: `INFO slot ${name} flags 0x${buf[at + 2]!.toString(16)} has unknown bits`, offset: at + 2 });
      const slot: InfoSlot = { slot: name, state, active: (buf[at + 2]! & INFO_SLOT_ACTIVE) !== 0, sha256: null, version: null };
      at += 3;
      if (state !== 'empty') {
        const s = sha(`slot ${name} sha256`);
        if (!s.ok) return s;
        const v = text(`slot ${name} version`, MAX_VERSION_TEXT);
        if (!v.ok) return v;
        slot.sha256 = s.value;
        slot.version = v.value;
      }
      m.slots.push(slot);
    }
  }
  if (flags & InfoFlag.CODEC) {
    if (at + INFO_CODEC_LEN > buf.length) return err({ message: 'INFO codec block runs past the payload end', offset: at });
    const caps = buf[at]!;
    if (caps & ~(CodecCap.DEFLATE | CodecCap.PATCH)) return err({ message: `INFO codec caps 0x${caps.toString(16)} has unknown bits`, offset: at });
    m.codec = { deflate: (caps & CodecCap.DEFLATE) !== 0, patch: (caps & CodecCap.PATCH) !== 0, maxWindowBits: buf[at + 1]!, ramBytes: buf.readUInt16BE(at + 2) };
    at += INFO_CODEC_LEN;
  }
  if (at !== buf.length) return err({ message: 'INFO payload has trailing bytes', offset: at });
  return ok(m);
}
