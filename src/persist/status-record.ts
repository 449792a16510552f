import { crc32 } from 'node:zlib';
import type { ImageMeta } from '../engine/ports.js';
import { PersistError } from './errors.js';

/**
 * A status record: one complete, self-contained copy of the manifest (active slot, rollback
 * target, security counter, both slots' metadata), sequence-numbered and CRC-protected. The
 * record with the highest valid sequence number *is* the device state; writing a new one is the
 * single atomic step of commit, confirm and rollback. Byte table in docs/persistence.md.
 *
 *   0  [4] magic "HSXS"          4 u32 seq
 *   8  u8 active slot (0 A, 1 B, 0xFF none)
 *   9  u8 rollback target slot (0/1/0xFF)
 *  10  u8 restore slot: whose values snapshot a pending rollback restores (0/1/0xFF)
 *  11  u8 reserved
 *  12  u32 security counter (highest ever committed)
 *  16  u32 restore seq (seq of the rollback record that asked for a value restore; 0 none)
 *  20  u32 restore tag (the snapshot tag to restore)
 *  24  slot entry A (224 bytes)   248 slot entry B (224 bytes)
 * 472  u32 damage seen: count     476 u32 damage seen: CRC-32 of the offsets
 * 480  [28] reserved             508 u32 CRC-32 of bytes 0..507
 */
export const STATUS_MAGIC = 'HSXS';
export const STATUS_PAYLOAD = 512;
export const SLOT_ENTRY_SIZE = 224;
export const NO_SLOT = 0xff;

export type SlotIndex = 0 | 1;
export type SlotState = 'empty' | 'test' | 'good';
const STATE_CODE: Record<SlotState, number> = { empty: 0, test: 1, good: 2 };
const CODE_STATE: SlotState[] = ['empty', 'test', 'good'];

export const FIELD_LIMITS = { appName: 32, version: 24, source: 96 } as const;

export interface SlotEntry {
  state: SlotState;
  imageLen: number;
  /** Status seq of the record that switched to this image; also the tag of the values snapshot taken then. */
  commitSeq: number;
  meta: ImageMeta;
}

export interface StatusRecord {
  seq: number;
  active: SlotIndex | null;
  previous: SlotIndex | null;
  restoreSlot: SlotIndex | null;
  securityCounter: number;
  restoreSeq: number;
  restoreTag: number;
  /** The damaged record slots already reported when this record was written (status-ring.ts). */
  damageSeen: DamageSeen;
  slots: [SlotEntry | null, SlotEntry | null];
}

/**
 * A fingerprint of a set of damaged status-record slots: how many, and the CRC-32 of their flash
 * offsets (u32 little-endian, ascending). Records written before this field existed hold zeros, which
 * is the fingerprint of the empty set.
 */
export interface DamageSeen {
  count: number;
  crc: number;
}

export function damageFingerprint(offsets: readonly number[]): DamageSeen {
  const sorted = [...offsets].sort((a, b) => a - b);
  const b = new Uint8Array(sorted.length * 4);
  const dv = new DataView(b.buffer);
  sorted.forEach((o, i) => dv.setUint32(i * 4, o, true));
  return { count: sorted.length, crc: sorted.length ? crc32(b) : 0 };
}

export function emptyStatus(): StatusRecord {
  return {
    seq: 0, active: null, previous: null, restoreSlot: null, securityCounter: 0, restoreSeq: 0, restoreTag: 0,
    damageSeen: { count: 0, crc: 0 }, slots: [null, null],
  };
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const MAGIC_BYTES = enc.encode(STATUS_MAGIC);

/** UTF-8 bytes of `s`, cut at a character boundary to at most `max` bytes. */
export function utf8Truncate(s: string, max: number): Uint8Array {
  const b = enc.encode(s);
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

/** Check the fields a slot entry can hold; source is truncated (documented), the rest must fit. */
export function checkMeta(meta: ImageMeta): void {
  for (const f of ['appName', 'version'] as const) {
    const n = enc.encode(meta[f]).length;
    if (n > FIELD_LIMITS[f]) {
      throw new PersistError('EINVAL', 'commit', 'meta_field_too_long', `meta.${f} is ${n} bytes, the manifest holds ${FIELD_LIMITS[f]}`, { field: f, length: n });
    }
  }
  for (const f of ['securityCounter', 'reqCaps', 'codeLen', 'roLen', 'bssSize', 'crc32', 'bootPriority'] as const) {
    const v = meta[f];
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
      throw new PersistError('EINVAL', 'commit', 'meta_field_range', `meta.${f} must be a u32 (got ${v})`, { field: f });
    }
  }
}

/**
 * A slot entry's 224 bytes, encoded once per entry object: entries are never changed in place (a
 * new state is a new entry), and every record repeats both slots, so each commit, confirm and
 * rollback would otherwise re-encode the same strings.
 */
const encodedSlots = new WeakMap<SlotEntry, Uint8Array>();

function encodeSlot(b: Uint8Array, o: number, e: SlotEntry | null): void {
  if (!e) return; // all zero = empty
  let bytes = encodedSlots.get(e);
  if (!bytes) {
    bytes = new Uint8Array(SLOT_ENTRY_SIZE);
    const dv = new DataView(bytes.buffer);
    dv.setUint8(0, STATE_CODE[e.state]);
    dv.setUint32(4, e.imageLen, true);
    dv.setUint32(8, e.meta.securityCounter, true);
    dv.setUint32(12, e.meta.reqCaps, true);
    dv.setUint32(16, e.meta.codeLen, true);
    dv.setUint32(20, e.meta.roLen, true);
    dv.setUint32(24, e.meta.bssSize, true);
    dv.setUint32(28, e.meta.crc32 >>> 0, true);
    dv.setUint32(32, e.meta.bootPriority, true);
    dv.setUint32(36, e.commitSeq, true);
    bytes.set(Buffer.from(e.meta.sha256, 'hex').subarray(0, 32), 40);
    bytes.set(utf8Truncate(e.meta.appName, FIELD_LIMITS.appName), 72);
    bytes.set(utf8Truncate(e.meta.version, FIELD_LIMITS.version), 104);
    bytes.set(utf8Truncate(e.meta.source, FIELD_LIMITS.source), 128);
    encodedSlots.set(e, bytes);
  }
  b.set(bytes, o);
}

function str(b: Uint8Array): string {
  let end = b.indexOf(0);
  if (end < 0) end = b.length;
  return dec.decode(b.subarray(0, end));
}

function decodeSlot(b: Uint8Array, o: number): SlotEntry | null {
  const dv = new DataView(b.buffer, b.byteOffset + o, SLOT_ENTRY_SIZE);
  const state = CODE_STATE[dv.getUint8(0)];
  if (!state || state === 'empty') return null;
  return {
    state,
    imageLen: dv.getUint32(4, true),
    commitSeq: dv.getUint32(36, true),
    meta: {
      appName: str(b.subarray(o + 72, o + 104)),
      version: str(b.subarray(o + 104, o + 128)),
      securityCounter: dv.getUint32(8, true),
      reqCaps: dv.getUint32(12, true),
      codeLen: dv.getUint32(16, true),
      roLen: dv.getUint32(20, true),
      bssSize: dv.getUint32(24, true),
      source: str(b.subarray(o + 128, o + 224)),
      crc32: dv.getUint32(28, true),
      sha256: Buffer.from(b.subarray(o + 40, o + 72)).toString('hex'),
      bootPriority: dv.getUint32(32, true),
    },
  };
}

const slotCode = (s: SlotIndex | null): number => (s === null ? NO_SLOT : s);
const codeSlot = (c: number): SlotIndex | null => (c === 0 || c === 1 ? c : null);

/** Encode into `recordSize` bytes (the payload, then 0xFF padding up to the page-rounded size). */
export function encodeStatus(r: StatusRecord, recordSize: number): Uint8Array {
  const b = new Uint8Array(recordSize).fill(0xff);
  b.fill(0, 0, STATUS_PAYLOAD);
  const dv = new DataView(b.buffer);
  b.set(MAGIC_BYTES, 0);
  dv.setUint32(4, r.seq, true);
  dv.setUint8(8, slotCode(r.active));
  dv.setUint8(9, slotCode(r.previous));
  dv.setUint8(10, slotCode(r.restoreSlot));
  dv.setUint32(12, r.securityCounter, true);
  dv.setUint32(16, r.restoreSeq, true);
  dv.setUint32(20, r.restoreTag, true);
  encodeSlot(b, 24, r.slots[0]);
  encodeSlot(b, 24 + SLOT_ENTRY_SIZE, r.slots[1]);
  dv.setUint32(472, r.damageSeen.count, true);
  dv.setUint32(476, r.damageSeen.crc, true);
  dv.setUint32(508, crc32(b.subarray(0, 508)), true);
  return b;
}

/** Decode one record; null when the bytes are not a complete, intact record (erased, torn, corrupt). */
export function decodeStatus(b: Uint8Array): StatusRecord | null {
  if (b.length < STATUS_PAYLOAD) return null;
  if (b[0] !== 0x48 || b[1] !== 0x53 || b[2] !== 0x58 || b[3] !== 0x53) return null; // "HSXS"
  const dv = new DataView(b.buffer, b.byteOffset, STATUS_PAYLOAD);
  if (dv.getUint32(508, true) !== crc32(b.subarray(0, 508))) return null;
  return {
    seq: dv.getUint32(4, true),
    active: codeSlot(dv.getUint8(8)),
    previous: codeSlot(dv.getUint8(9)),
    restoreSlot: codeSlot(dv.getUint8(10)),
    securityCounter: dv.getUint32(12, true),
    restoreSeq: dv.getUint32(16, true),
    restoreTag: dv.getUint32(20, true),
    damageSeen: { count: dv.getUint32(472, true), crc: dv.getUint32(476, true) },
    slots: [decodeSlot(b, 24), decodeSlot(b, 24 + SLOT_ENTRY_SIZE)],
  };
}
