/**
 * The UART frame: the unit the link sends and checks. Layout (big-endian, docs/uart_protocol.md):
 *
 *   0  type    u8     FrameType
 *   1  tag     u8     session tag chosen by the master (stale frames of another session are ignored)
 *   2  seq     u32    sequence number (meaning depends on the type)
 *   6  len     u16    payload length
 *   8  payload len bytes
 *   8+len crc  u32    CRC-32 (zlib) over bytes 0 .. 8+len-1
 *
 * On the wire each frame is COBS-encoded and followed by one 0x00 delimiter.
 */
import { crc32 } from 'node:zlib';
import { cobsDecode, cobsEncodeStaged, cobsMaxEncodedLength, cobsReserve } from './cobs.js';
import { err, ok, type Result } from '../../hxe/result.js';

export const FrameType = {
  OPEN: 0x01,
  ACCEPT: 0x02,
  DATA: 0x03,
  ACK: 0x04,
  NAK: 0x05,
  END: 0x06,
  RESULT: 0x07,
  ERROR: 0x08,
  ABORT: 0x09,
  CURRENT: 0x0a,
  /** Version 2: what does the device run? (docs/uart_protocol.md, "INFO") */
  INFO_REQ: 0x0b,
  INFO: 0x0c,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

const KNOWN_TYPES = new Set<number>(Object.values(FrameType));

export const FRAME_HEADER_BYTES = 8;
export const FRAME_CRC_BYTES = 4;
export const FRAME_OVERHEAD_BYTES = FRAME_HEADER_BYTES + FRAME_CRC_BYTES;
/** The length field is a u16. */
export const MAX_FRAME_PAYLOAD = 0xffff;

export interface Frame {
  type: FrameTypeValue;
  tag: number;
  seq: number;
  payload: Uint8Array;
}

export type FrameDropReason = 'cobs_invalid' | 'too_short' | 'too_long' | 'length_mismatch' | 'crc_mismatch' | 'unknown_type';

export interface FrameDrop {
  reason: FrameDropReason;
  /** Byte offset inside the decoded frame where the check failed. */
  offset: number;
  message: string;
}

/** The frame's bytes before COBS (header, payload, CRC). */
export function frameBytes(frame: Frame): Buffer {
  return frameBytesInto(frame, Buffer.allocUnsafe(FRAME_OVERHEAD_BYTES + frame.payload.length));
}

function frameBytesInto(frame: Frame, target: Buffer): Buffer {
  const len = frame.payload.length;
  if (len > MAX_FRAME_PAYLOAD) throw new RangeError(`frame payload of ${len} bytes exceeds ${MAX_FRAME_PAYLOAD}`);
  const buf = target.subarray(0, FRAME_OVERHEAD_BYTES + len);
  buf[0] = frame.type;
  buf[1] = frame.tag & 0xff;
  buf.writeUInt32BE(frame.seq >>> 0, 2);
  buf.writeUInt16BE(len, 6);
  buf.set(frame.payload, FRAME_HEADER_BYTES);
  buf.writeUInt32BE(crc32(buf.subarray(0, FRAME_HEADER_BYTES + len)), FRAME_HEADER_BYTES + len);
  return buf;
}

/** The exact bytes written to the wire for a frame: COBS(frameBytes) followed by 0x00. */
export function encodeFrame(frame: Frame): Buffer {
  const out = Buffer.allocUnsafe(wireBytesForPayload(frame.payload.length));
  return out.subarray(0, encodeFrameInto(frame, out, 0));
}

/**
 * Encodes a frame for the wire into `out` at `at` (room: `wireBytesForPayload(payload length)`)
 * and returns the position after its delimiter. The frame is built where COBS wants its input and
 * stuffed in place, so the payload is copied once.
 */
export function encodeFrameInto(frame: Frame, out: Buffer, at: number): number {
  const n = FRAME_OVERHEAD_BYTES + frame.payload.length;
  frameBytesInto(frame, out.subarray(at + cobsReserve(n)));
  return cobsEncodeStaged(out, at, n);
}

/** Wire bytes of a frame with `payloadLength` bytes in the worst case (for sizing and efficiency). */
export function wireBytesForPayload(payloadLength: number): number {
  return cobsMaxEncodedLength(FRAME_OVERHEAD_BYTES + payloadLength) + 1;
}

/** Checks the decoded (un-stuffed) bytes of a frame. */
export function parseFrameBytes(buf: Uint8Array, maxPayload: number = MAX_FRAME_PAYLOAD): Result<Frame, FrameDrop> {
  if (buf.length < FRAME_OVERHEAD_BYTES) {
    return err({ reason: 'too_short', offset: buf.length, message: `frame of ${buf.length} bytes is shorter than the ${FRAME_OVERHEAD_BYTES}-byte minimum` });
  }
  const view = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const len = view.readUInt16BE(6);
  if (len > maxPayload) {
    return err({ reason: 'too_long', offset: 6, message: `frame length field ${len} exceeds the limit ${maxPayload}` });
  }
  if (buf.length !== FRAME_OVERHEAD_BYTES + len) {
    return err({ reason: 'length_mismatch', offset: 6, message: `frame length field ${len} does not match the ${buf.length - FRAME_OVERHEAD_BYTES} payload bytes received` });
  }
  const stored = view.readUInt32BE(FRAME_HEADER_BYTES + len);
  const actual = crc32(view.subarray(0, FRAME_HEADER_BYTES + len));
  if (stored !== actual) {
    return err({ reason: 'crc_mismatch', offset: FRAME_HEADER_BYTES + len, message: `frame CRC 0x${stored.toString(16)} != computed 0x${actual.toString(16)}` });
  }
  const type = view[0]!;
  if (!KNOWN_TYPES.has(type)) {
    return err({ reason: 'unknown_type', offset: 0, message: `unknown frame type 0x${type.toString(16)}` });
  }
  return ok({
    type: type as FrameTypeValue,
    tag: view[1]!,
    seq: view.readUInt32BE(2),
    payload: view.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + len),
  });
}

/**
 * Decodes one delimiter-separated block from the wire (without its 0x00). With `inPlace` the
 * block's memory is reused for the decoded frame (the caller owns the block and lets it go).
 */
export function decodeFrame(block: Uint8Array, maxPayload: number = MAX_FRAME_PAYLOAD, inPlace = false): Result<Frame, FrameDrop> {
  // Reject oversized blocks before decoding: the COBS output can only be smaller than its input.
  if (block.length > cobsMaxEncodedLength(FRAME_OVERHEAD_BYTES + maxPayload)) {
    return err({ reason: 'too_long', offset: 0, message: `block of ${block.length} bytes is longer than any frame with a ${maxPayload}-byte payload` });
  }
  const bytes = cobsDecode(block, inPlace);
  if (bytes === null) return err({ reason: 'cobs_invalid', offset: 0, message: 'block is not valid COBS' });
  return parseFrameBytes(bytes, maxPayload);
}
