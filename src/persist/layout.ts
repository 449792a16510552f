import { crc32 } from 'node:zlib';
import type { BlockDevice } from './block-device.js';
import { PersistError } from './errors.js';

/**
 * The flash layout (the HSX FRAM/flash schema, flash side): sector 0 holds this header and the
 * partition table; then the status ring; then the two image slots. Byte table in
 * docs/persistence.md, "Flash layout header".
 *
 *   0  [4] magic "HSXL"
 *   4  u16 layout version (1)
 *   6  u16 header size (96)
 *   8  u32 sector size
 *  12  u32 page size
 *  16  u32 sector count
 *  20  u32 status record size
 *  24  u16 partition count (4)
 *  26  u16 reserved, zero
 *  28  4 × 16-byte partition entries: [4] name, u32 first sector, u32 sector count, u32 flags (0)
 *  92  u32 CRC-32 of bytes 0..91
 */
export const LAYOUT_MAGIC = 'HSXL';
export const LAYOUT_VERSION = 1;
export const LAYOUT_HEADER_SIZE = 96;
/** Status record payload size before rounding up to the page size. */
export const STATUS_RECORD_BASE = 512;

export type PartitionName = 'HDR' | 'STAT' | 'SLTA' | 'SLTB';

export interface Partition {
  name: PartitionName;
  firstSector: number;
  sectorCount: number;
}

export interface FlashLayout {
  sectorSize: number;
  pageSize: number;
  sectorCount: number;
  statusRecordSize: number;
  header: Partition;
  status: Partition;
  slots: [Partition, Partition];
}

export function statusRecordSizeFor(pageSize: number): number {
  return Math.ceil(STATUS_RECORD_BASE / pageSize) * pageSize;
}

/** Partition a device: header sector, `statusSectors` status sectors, the rest split into two equal slots. */
export function planLayout(dev: { eraseSize: number; programSize: number; sectorCount: number }, statusSectors: number): FlashLayout {
  const recordSize = statusRecordSizeFor(dev.programSize);
  if (!Number.isInteger(statusSectors) || statusSectors < 2) {
    throw new PersistError('EINVAL', 'format', 'bad_geometry', `statusSectors must be an integer >= 2 (got ${statusSectors})`, { field: 'statusSectors' });
  }
  if (recordSize > dev.eraseSize) {
    throw new PersistError('EINVAL', 'format', 'bad_geometry', `a ${recordSize}-byte status record does not fit a ${dev.eraseSize}-byte sector`, { field: 'sectorSize' });
  }
  const slotSectors = Math.floor((dev.sectorCount - 1 - statusSectors) / 2);
  if (slotSectors < 1) {
    throw new PersistError('EINVAL', 'format', 'bad_geometry',
      `${dev.sectorCount} sectors leave no room for two image slots after the header and ${statusSectors} status sectors`, { field: 'flashSize' });
  }
  return {
    sectorSize: dev.eraseSize,
    pageSize: dev.programSize,
    sectorCount: dev.sectorCount,
    statusRecordSize: recordSize,
    header: { name: 'HDR', firstSector: 0, sectorCount: 1 },
    status: { name: 'STAT', firstSector: 1, sectorCount: statusSectors },
    slots: [
      { name: 'SLTA', firstSector: 1 + statusSectors, sectorCount: slotSectors },
      { name: 'SLTB', firstSector: 1 + statusSectors + slotSectors, sectorCount: slotSectors },
    ],
  };
}

function partitionsOf(l: FlashLayout): Partition[] {
  return [l.header, l.status, l.slots[0], l.slots[1]];
}

export function encodeLayoutHeader(l: FlashLayout): Uint8Array {
  const b = new Uint8Array(LAYOUT_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(LAYOUT_MAGIC), 0);
  dv.setUint16(4, LAYOUT_VERSION, true);
  dv.setUint16(6, LAYOUT_HEADER_SIZE, true);
  dv.setUint32(8, l.sectorSize, true);
  dv.setUint32(12, l.pageSize, true);
  dv.setUint32(16, l.sectorCount, true);
  dv.setUint32(20, l.statusRecordSize, true);
  const parts = partitionsOf(l);
  dv.setUint16(24, parts.length, true);
  parts.forEach((p, i) => {
    const o = 28 + 16 * i;
    b.set(new TextEncoder().encode(p.name.padEnd(4, '\0')), o);
    dv.setUint32(o + 4, p.firstSector, true);
    dv.setUint32(o + 8, p.sectorCount, true);
    dv.setUint32(o + 12, 0, true);
  });
  dv.setUint32(92, crc32(b.subarray(0, 92)), true);
  return b;
}

export function decodeLayoutHeader(b: Uint8Array, where: string): FlashLayout {
  const fail = (reason: string, offset: number, msg: string): never => {
    throw new PersistError('EBADMSG', 'open', reason, `${where}: layout header ${msg} (offset ${offset})`, { offset });
  };
  const dv = new DataView(b.buffer, b.byteOffset, LAYOUT_HEADER_SIZE);
  const magic = new TextDecoder('latin1').decode(b.subarray(0, 4));
  if (magic !== LAYOUT_MAGIC) fail('layout_magic', 0, `magic is ${JSON.stringify(magic)}, expected "HSXL" (not formatted?)`);
  const stored = dv.getUint32(92, true);
  if (stored !== crc32(b.subarray(0, 92))) fail('layout_crc', 92, 'CRC mismatch');
  if (dv.getUint16(4, true) !== LAYOUT_VERSION) fail('layout_version', 4, `version ${dv.getUint16(4, true)} unsupported`);
  if (dv.getUint16(24, true) !== 4) fail('layout_partitions', 24, `has ${dv.getUint16(24, true)} partitions, expected 4`);
  const names: PartitionName[] = ['HDR', 'STAT', 'SLTA', 'SLTB'];
  const parts = names.map((name, i): Partition => {
    const o = 28 + 16 * i;
    const got = new TextDecoder('latin1').decode(b.subarray(o, o + 4)).replace(/\0+$/, '');
    if (got !== name) fail('layout_partitions', o, `partition ${i} is ${JSON.stringify(got)}, expected ${name}`);
    return { name, firstSector: dv.getUint32(o + 4, true), sectorCount: dv.getUint32(o + 8, true) };
  });
  return {
    sectorSize: dv.getUint32(8, true),
    pageSize: dv.getUint32(12, true),
    sectorCount: dv.getUint32(16, true),
    statusRecordSize: dv.getUint32(20, true),
    header: parts[0]!,
    status: parts[1]!,
    slots: [parts[2]!, parts[3]!],
  };
}

/** Read the layout from sector 0 and check it against the device it sits on. */
export function readLayout(dev: BlockDevice, where: string): FlashLayout {
  const l = decodeLayoutHeader(dev.view(0, LAYOUT_HEADER_SIZE), where);
  if (l.sectorSize !== dev.eraseSize || l.pageSize !== dev.programSize || l.sectorCount !== dev.sectorCount) {
    throw new PersistError('EBADMSG', 'open', 'layout_geometry',
      `${where}: layout header geometry (${l.sectorCount}×${l.sectorSize}, page ${l.pageSize}) differs from the device (${dev.sectorCount}×${dev.eraseSize}, page ${dev.programSize})`);
  }
  if (l.statusRecordSize !== statusRecordSizeFor(l.pageSize)) {
    throw new PersistError('EBADMSG', 'open', 'layout_record_size', `${where}: status record size ${l.statusRecordSize} at offset 20 is not ${statusRecordSizeFor(l.pageSize)}`, { offset: 20 });
  }
  let next = 0;
  for (const p of [l.header, l.status, l.slots[0], l.slots[1]]) {
    if (p.firstSector !== next || p.sectorCount < 1) {
      throw new PersistError('EBADMSG', 'open', 'layout_partitions', `${where}: partition ${p.name} does not follow its predecessor`);
    }
    next += p.sectorCount;
  }
  if (next > l.sectorCount || l.status.sectorCount < 2) {
    throw new PersistError('EBADMSG', 'open', 'layout_partitions', `${where}: partitions exceed the device or the status ring is too small`);
  }
  return l;
}

/** Write the header into an erased sector 0. */
export function writeLayout(dev: BlockDevice, l: FlashLayout): void {
  const padded = new Uint8Array(Math.ceil(LAYOUT_HEADER_SIZE / dev.programSize) * dev.programSize).fill(0xff);
  padded.set(encodeLayoutHeader(l));
  dev.program(0, padded);
}

export function partitionOffset(l: FlashLayout, p: Partition): number {
  return p.firstSector * l.sectorSize;
}
export function partitionBytes(l: FlashLayout, p: Partition): number {
  return p.sectorCount * l.sectorSize;
}
