import { crc32 } from 'node:zlib';
import { PersistError } from './errors.js';

/**
 * The 64-byte header at offset 0 of every device file (flash or FRAM). It says what the file
 * models, so a file can be reopened without being told its geometry and a mismatch is caught
 * before anything is written. See docs/persistence.md, "Device files".
 *
 *   0  [8] magic "HSXFLASH" | "HSXFRAM\0"
 *   8  u32 file format version (1)
 *  12  u32 sector size (FRAM: 1)
 *  16  u32 page size (FRAM: 1)
 *  20  u32 sector count (FRAM: data bytes)
 *  24  u32 endurance, erase cycles per sector (FRAM: 0 = not applicable)
 *  28  u32 data offset in the file (a multiple of 4096)
 *  32  [28] reserved, zero
 *  60  u32 CRC-32 of bytes 0..59
 *  64  u32[sector count] erase counters (flash only), then zero padding up to the data offset
 */
export const DEVICE_FILE_HEADER_SIZE = 64;
export const DEVICE_FILE_VERSION = 1;
export const FLASH_MAGIC = 'HSXFLASH';
export const FRAM_MAGIC = 'HSXFRAM\0';
const DATA_ALIGN = 4096;

export interface DeviceFileHeader {
  magic: string;
  version: number;
  sectorSize: number;
  pageSize: number;
  sectorCount: number;
  endurance: number;
  dataOffset: number;
}

export function dataOffsetFor(metaBytes: number): number {
  return Math.ceil((DEVICE_FILE_HEADER_SIZE + metaBytes) / DATA_ALIGN) * DATA_ALIGN;
}

export function encodeDeviceFileHeader(h: DeviceFileHeader): Uint8Array {
  const b = new Uint8Array(DEVICE_FILE_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(h.magic).subarray(0, 8), 0);
  dv.setUint32(8, h.version, true);
  dv.setUint32(12, h.sectorSize, true);
  dv.setUint32(16, h.pageSize, true);
  dv.setUint32(20, h.sectorCount, true);
  dv.setUint32(24, h.endurance, true);
  dv.setUint32(28, h.dataOffset, true);
  dv.setUint32(60, crc32(b.subarray(0, 60)), true);
  return b;
}

/** Parse and check a device file header; `path` only names the file in errors. */
export function decodeDeviceFileHeader(b: Uint8Array, expectMagic: string, path: string): DeviceFileHeader {
  if (b.length < DEVICE_FILE_HEADER_SIZE) {
    throw new PersistError('EBADMSG', 'open', 'file_too_short',
      `${path}: ${b.length} bytes, shorter than the ${DEVICE_FILE_HEADER_SIZE}-byte device header`, { path, offset: 0 });
  }
  const magic = new TextDecoder('latin1').decode(b.subarray(0, 8));
  if (magic !== expectMagic) {
    throw new PersistError('EBADMSG', 'open', 'bad_magic',
      `${path}: magic at offset 0 is ${JSON.stringify(magic)}, expected ${JSON.stringify(expectMagic)}`, { path, offset: 0 });
  }
  const dv = new DataView(b.buffer, b.byteOffset, DEVICE_FILE_HEADER_SIZE);
  const stored = dv.getUint32(60, true);
  const actual = crc32(b.subarray(0, 60));
  if (stored !== actual) {
    throw new PersistError('EBADMSG', 'open', 'header_crc',
      `${path}: device header CRC at offset 60 is 0x${stored.toString(16)}, computed 0x${actual.toString(16)}`,
      { path, offset: 60 });
  }
  const h: DeviceFileHeader = {
    magic,
    version: dv.getUint32(8, true),
    sectorSize: dv.getUint32(12, true),
    pageSize: dv.getUint32(16, true),
    sectorCount: dv.getUint32(20, true),
    endurance: dv.getUint32(24, true),
    dataOffset: dv.getUint32(28, true),
  };
  if (h.version !== DEVICE_FILE_VERSION) {
    throw new PersistError('EBADMSG', 'open', 'bad_version',
      `${path}: file format version ${h.version} at offset 8, this build reads ${DEVICE_FILE_VERSION}`, { path, offset: 8 });
  }
  return h;
}

export function deviceFileSize(h: DeviceFileHeader): number {
  return h.dataOffset + h.sectorSize * h.sectorCount;
}
