import type { Backing, BlockDevice } from './block-device.js';
import { DEVICE_FILE_HEADER_SIZE, DEVICE_FILE_VERSION, FLASH_MAGIC, dataOffsetFor, decodeDeviceFileHeader, encodeDeviceFileHeader } from './device-file.js';
import { DeviceModel } from './device-model.js';
import { PersistError } from './errors.js';

/**
 * NOR flash with the semantics of a real part: erase works on whole sectors and sets them to
 * 0xFF; program works on whole pages and can only clear bits, so programming a byte that is not
 * erased is refused (a real part would silently AND the bits together and corrupt the data).
 * Every erase bumps the sector's counter in the file's own metadata area, before the data is
 * touched, so a counter never under-counts even if power fails mid-erase.
 */
export interface NorGeometry {
  sectorSize: number;
  pageSize: number;
  sectorCount: number;
  /** Rated erase cycles per sector: warn at 80%, refuse past 100%. */
  endurance: number;
}

export interface WearWarning {
  sector: number;
  eraseCount: number;
  endurance: number;
  percent: number;
}

export const WEAR_WARNING_FRACTION = 0.8;

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function checkNorGeometry(g: NorGeometry, where = 'geometry'): void {
  const bad = (field: string, why: string): never => {
    throw new PersistError('EINVAL', 'format', 'bad_geometry', `${where}: ${field} ${why}`, { field });
  };
  if (!isPow2(g.pageSize) || g.pageSize < 16) bad('pageSize', `must be a power of two >= 16 (got ${g.pageSize})`);
  if (!isPow2(g.sectorSize) || g.sectorSize < g.pageSize) bad('sectorSize', `must be a power of two >= pageSize (got ${g.sectorSize})`);
  if (!Number.isInteger(g.sectorCount) || g.sectorCount < 1 || g.sectorCount > 1 << 20) bad('sectorCount', `must be 1..1048576 (got ${g.sectorCount})`);
  if (!Number.isInteger(g.endurance) || g.endurance < 1 || g.endurance > 0xffffffff) bad('endurance', `must be a positive integer (got ${g.endurance})`);
}

export function norFileSize(g: NorGeometry): number {
  return dataOffsetFor(4 * g.sectorCount) + g.sectorSize * g.sectorCount;
}

export class NorFlash extends DeviceModel implements BlockDevice {
  readonly kind = 'nor' as const;
  readonly needsErase = true;
  readonly eraseSize: number;
  readonly programSize: number;
  readonly sectorCount: number;
  readonly endurance: number;
  /** Called when an erase brings a sector to 80% of its endurance. */
  onWearWarning: ((w: WearWarning) => void) | null = null;

  private readonly counters: DataView;

  private constructor(backing: Backing, g: NorGeometry, dataOffset: number) {
    super(backing, dataOffset, g.sectorSize * g.sectorCount, 'flash');
    this.sectorCount = g.sectorCount;
    this.eraseSize = g.sectorSize;
    this.programSize = g.pageSize;
    this.endurance = g.endurance;
    const b = backing.bytes;
    this.counters = new DataView(b.buffer, b.byteOffset + DEVICE_FILE_HEADER_SIZE, 4 * g.sectorCount);
  }

  /** Write a fresh device into `backing` (which must be exactly `norFileSize(g)` bytes): erased, counters zero. */
  static format(backing: Backing, g: NorGeometry): NorFlash {
    checkNorGeometry(g);
    const dataOffset = dataOffsetFor(4 * g.sectorCount);
    DeviceModel.checkFormatSize(backing, dataOffset + g.sectorSize * g.sectorCount, 'flash');
    backing.bytes.fill(0, 0, dataOffset);
    backing.bytes.set(encodeDeviceFileHeader({
      magic: FLASH_MAGIC, version: DEVICE_FILE_VERSION, sectorSize: g.sectorSize, pageSize: g.pageSize,
      sectorCount: g.sectorCount, endurance: g.endurance, dataOffset,
    }), 0);
    backing.bytes.fill(0xff, dataOffset);
    return new NorFlash(backing, g, dataOffset);
  }

  /** Attach to a backing that already holds a formatted flash file. */
  static attach(backing: Backing): NorFlash {
    const path = backing.path ?? 'memory';
    const h = decodeDeviceFileHeader(backing.bytes, FLASH_MAGIC, path);
    const g: NorGeometry = { sectorSize: h.sectorSize, pageSize: h.pageSize, sectorCount: h.sectorCount, endurance: h.endurance };
    checkNorGeometry(g, path);
    if (h.dataOffset !== dataOffsetFor(4 * h.sectorCount)) {
      throw new PersistError('EBADMSG', 'open', 'bad_data_offset', `${path}: data offset ${h.dataOffset} at offset 28 does not fit the geometry`, { path, offset: 28 });
    }
    DeviceModel.checkAttachSize(backing, h, path);
    return new NorFlash(backing, g, h.dataOffset);
  }

  program(offset: number, bytes: Uint8Array): void {
    this.access('program', offset, bytes.length);
    if (offset % this.programSize !== 0 || bytes.length % this.programSize !== 0) {
      throw new PersistError('EINVAL', 'program', 'unaligned',
        `flash program at ${offset} length ${bytes.length}: must be aligned to the ${this.programSize}-byte page`,
        { offset, length: bytes.length, pageSize: this.programSize });
    }
    const d = this.data;
    // The usual case, programming freshly erased pages, is one scan of the target and one copy.
    if (isErased(d, offset, bytes.length)) {
      d.set(bytes, offset);
      return;
    }
    // Check everything first: a refused program changes nothing.
    for (let i = 0; i < bytes.length; i++) {
      const v = bytes[i]!;
      if (v !== 0xff && d[offset + i] !== 0xff) {
        throw new PersistError('EIO', 'program', 'program_not_erased',
          `flash program at ${offset + i}: byte is 0x${d[offset + i]!.toString(16)}, not erased (0xff)`,
          { offset: offset + i, current: d[offset + i], wanted: v });
      }
    }
    for (let i = 0; i < bytes.length; i++) d[offset + i] = d[offset + i]! & bytes[i]!;
  }

  /** Pages in order, one range check and one erased-scan for all of them (see BlockDevice.programPages). */
  programPages(offset: number, bytes: Uint8Array): void {
    this.program(offset, bytes);
  }

  erase(offset: number, length: number): void {
    this.access('erase', offset, length);
    if (offset % this.eraseSize !== 0 || length % this.eraseSize !== 0) {
      throw new PersistError('EINVAL', 'erase', 'unaligned',
        `flash erase at ${offset} length ${length}: must be aligned to the ${this.eraseSize}-byte sector`,
        { offset, length, sectorSize: this.eraseSize });
    }
    const first = offset / this.eraseSize;
    const count = length / this.eraseSize;
    for (let s = first; s < first + count; s++) this.assertNotWorn(s);
    for (let s = first; s < first + count; s++) {
      const n = this.bumpEraseCount(s);
      this.data.fill(0xff, s * this.eraseSize, (s + 1) * this.eraseSize);
      this.noteWear(s, n);
    }
  }

  /** Throws the wear refusal if erasing `sector` once more would exceed its endurance. */
  assertNotWorn(sector: number): void {
    const n = this.eraseCount(sector);
    if (n >= this.endurance) {
      throw new PersistError('ENOSPC', 'erase', 'sector_worn_out',
        `flash sector ${sector} has been erased ${n} times, its endurance is ${this.endurance}: refusing to erase it again`,
        { sector, eraseCount: n, endurance: this.endurance });
    }
  }

  eraseCount(sector: number): number {
    return this.counters.getUint32(4 * sector, true);
  }

  /** Counter first, then data (see class comment). Returns the new count. Also used by the fault injector. */
  bumpEraseCount(sector: number): number {
    const n = this.eraseCount(sector) + 1;
    this.counters.setUint32(4 * sector, n, true);
    return n;
  }

  private noteWear(sector: number, n: number): void {
    const threshold = Math.ceil(this.endurance * WEAR_WARNING_FRACTION);
    if (n === threshold && this.onWearWarning) {
      this.onWearWarning({ sector, eraseCount: n, endurance: this.endurance, percent: Math.round((100 * n) / this.endurance) });
    }
  }
}

/** 4 KiB of erased flash, compared against in blocks (a native memcmp, not a loop in JS). */
const ERASED_BLOCK = new Uint8Array(4096).fill(0xff);

/** Whether `length` bytes of `d` from `offset` are all 0xFF (erased). */
function isErased(d: Uint8Array, offset: number, length: number): boolean {
  for (let at = 0; at < length; at += ERASED_BLOCK.length) {
    const n = Math.min(ERASED_BLOCK.length, length - at);
    if (Buffer.compare(d.subarray(offset + at, offset + at + n), n === ERASED_BLOCK.length ? ERASED_BLOCK : ERASED_BLOCK.subarray(0, n)) !== 0) return false;
  }
  return true;
}
