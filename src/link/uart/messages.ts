/**
 * Payloads of the session frames (docs/uart_protocol.md, "Messages"). Every decoder checks the
 * payload length before reading, so a frame that passed its CRC but carries a malformed payload
 * (a bug or a hostile peer) is a typed error, never an exception or an out-of-range read.
 */
import { err, ok, type Result } from '../../hxe/result.js';

export const PROTOCOL_VERSION = 1;

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
}

export interface AcceptMessage {
  version: number;
  /** Negotiated DATA payload size: every DATA frame but the last carries exactly this many bytes. */
  chunkSize: number;
  /** Negotiated window in frames. */
  window: number;
  /** Byte offset the master starts from (a multiple of chunkSize); > 0 when resuming. */
  resumeOffset: number;
}

export interface ResultMessage {
  pid: number;
  appName: string;
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
  buf[1] = 0; // flags, reserved
  buf.writeUInt16BE(m.chunkSize, 2);
  buf.writeUInt16BE(m.window, 4);
  buf.writeUInt32BE(m.totalBytes, 6);
  buf.writeUInt32BE(m.crc32 >>> 0, 10);
  buf.set(m.sha256.subarray(0, 32), 14);
  buf[46] = name.length;
  buf.set(name, OPEN_FIXED);
  return buf;
}

export function decodeOpen(p: Uint8Array): Result<OpenMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length < OPEN_FIXED) return err({ message: `OPEN payload of ${buf.length} bytes is shorter than ${OPEN_FIXED}`, offset: buf.length });
  const nameLen = buf[46]!;
  if (nameLen > MAX_NAME) return err({ message: `OPEN app name length ${nameLen} exceeds ${MAX_NAME}`, offset: 46 });
  if (buf.length !== OPEN_FIXED + nameLen) return err({ message: `OPEN payload is ${buf.length} bytes, expected ${OPEN_FIXED + nameLen}`, offset: 46 });
  return ok({
    version: buf[0]!,
    chunkSize: buf.readUInt16BE(2),
    window: buf.readUInt16BE(4),
    totalBytes: buf.readUInt32BE(6),
    crc32: buf.readUInt32BE(10),
    sha256: Uint8Array.from(buf.subarray(14, 46)),
    appName: buf.toString('latin1', OPEN_FIXED, OPEN_FIXED + nameLen),
  });
}

export function encodeAccept(m: AcceptMessage): Buffer {
  const buf = Buffer.alloc(ACCEPT_LEN);
  buf[0] = m.version;
  buf[1] = 0;
  buf.writeUInt16BE(m.chunkSize, 2);
  buf.writeUInt16BE(m.window, 4);
  buf.writeUInt32BE(m.resumeOffset, 6);
  return buf;
}

export function decodeAccept(p: Uint8Array): Result<AcceptMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length !== ACCEPT_LEN) return err({ message: `ACCEPT payload is ${buf.length} bytes, expected ${ACCEPT_LEN}`, offset: 0 });
  return ok({ version: buf[0]!, chunkSize: buf.readUInt16BE(2), window: buf.readUInt16BE(4), resumeOffset: buf.readUInt32BE(6) });
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

/** RESULT payload: pid u32, then the registered app name (u8 length + UTF-8). */
export function encodeResult(m: ResultMessage): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(m.pid >>> 0, 0);
  return Buffer.concat([head, putShortString(m.appName)]);
}

export function decodeResult(p: Uint8Array): Result<ResultMessage, MessageError> {
  const buf = asBuffer(p);
  if (buf.length < 5) return err({ message: `RESULT payload of ${buf.length} bytes is shorter than 5`, offset: buf.length });
  const name = shortString(buf, 4, 'RESULT app name');
  if (!name.ok) return name;
  if (name.value.next !== buf.length) return err({ message: 'RESULT payload has trailing bytes', offset: name.value.next });
  return ok({ pid: buf.readUInt32BE(0), appName: name.value.value });
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
