/**
 * Type-length-value records as the signature trailer stores them: `type u16, length u16, value`,
 * big-endian like the rest of HXE. Decoding is strict (a record that runs past its area is an
 * error naming the byte offset) because the trailer is untrusted input.
 */
import { err, ok, type Result } from './result.js';

export const TLV_HEAD_SIZE = 4;

export interface Tlv {
  type: number;
  /** Absolute offset of the record's first byte (its type field) in the file. */
  offset: number;
  value: Uint8Array;
}

export interface TlvError {
  message: string;
  offset: number;
}

export function encodeTlvs(records: ReadonlyArray<{ type: number; value: Uint8Array }>): Uint8Array {
  const size = records.reduce((n, r) => n + TLV_HEAD_SIZE + r.value.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const r of records) {
    if (r.value.length > 0xffff) throw new RangeError(`TLV 0x${r.type.toString(16)} value too long (${r.value.length} bytes)`);
    view.setUint16(at, r.type);
    view.setUint16(at + 2, r.value.length);
    out.set(r.value, at + TLV_HEAD_SIZE);
    at += TLV_HEAD_SIZE + r.value.length;
  }
  return out;
}

/**
 * Decodes the records filling `bytes[start, end)` exactly. `base` is added to every offset so
 * errors and records name file offsets.
 */
export function decodeTlvs(bytes: Uint8Array, start: number, end: number, base = 0): Result<Tlv[], TlvError> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Tlv[] = [];
  let at = start;
  while (at < end) {
    if (end - at < TLV_HEAD_SIZE) {
      return err({ message: `TLV header needs ${TLV_HEAD_SIZE} bytes, ${end - at} left in the area`, offset: base + at });
    }
    const type = view.getUint16(at);
    const len = view.getUint16(at + 2);
    if (len > end - at - TLV_HEAD_SIZE) {
      return err({ message: `TLV 0x${type.toString(16).padStart(4, '0')} length ${len} runs past the end of its area`, offset: base + at + 2 });
    }
    out.push({ type, offset: base + at, value: bytes.subarray(at + TLV_HEAD_SIZE, at + TLV_HEAD_SIZE + len) });
    at += TLV_HEAD_SIZE + len;
  }
  return ok(out);
}
