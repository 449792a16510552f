import type { Backing, BlockDevice } from './block-device.js';
import { DEVICE_FILE_VERSION, FRAM_MAGIC, dataOffsetFor, decodeDeviceFileHeader, encodeDeviceFileHeader } from './device-file.js';
import { DeviceModel } from './device-model.js';
import { PersistError } from './errors.js';

/**
 * FRAM: byte-addressable, no erase, write anywhere, no meaningful wear. It has the same
 * interface as flash (erase unit and program unit 1, `needsErase` false) so a layer written
 * against BlockDevice works on both.
 */
export function framFileSize(size: number): number {
  return dataOffsetFor(0) + size;
}

export class Fram extends DeviceModel implements BlockDevice {
  readonly kind = 'fram' as const;
  readonly needsErase = false;
  readonly eraseSize = 1;
  readonly programSize = 1;
  readonly endurance = Infinity;
  readonly sectorCount: number;

  private constructor(backing: Backing, dataOffset: number, size: number) {
    super(backing, dataOffset, size, 'FRAM');
    this.sectorCount = size;
  }

  static format(backing: Backing, size: number): Fram {
    if (!Number.isInteger(size) || size < 4096 || size > 1 << 30) {
      throw new PersistError('EINVAL', 'format', 'bad_geometry', `framSize must be 4096..1 GiB (got ${size})`, { field: 'framSize' });
    }
    const dataOffset = dataOffsetFor(0);
    DeviceModel.checkFormatSize(backing, dataOffset + size, 'FRAM');
    backing.bytes.fill(0);
    backing.bytes.set(encodeDeviceFileHeader({
      magic: FRAM_MAGIC, version: DEVICE_FILE_VERSION, sectorSize: 1, pageSize: 1, sectorCount: size, endurance: 0, dataOffset,
    }), 0);
    return new Fram(backing, dataOffset, size);
  }

  static attach(backing: Backing): Fram {
    const path = backing.path ?? 'memory';
    const h = decodeDeviceFileHeader(backing.bytes, FRAM_MAGIC, path);
    if (h.sectorSize !== 1 || h.pageSize !== 1 || h.dataOffset !== dataOffsetFor(0)) {
      throw new PersistError('EBADMSG', 'open', 'bad_geometry', `${path}: not an FRAM geometry (sector ${h.sectorSize}, page ${h.pageSize})`, { path });
    }
    DeviceModel.checkAttachSize(backing, h, path);
    return new Fram(backing, h.dataOffset, h.sectorCount);
  }

  program(offset: number, bytes: Uint8Array): void {
    this.access('program', offset, bytes.length);
    this.data.set(bytes, offset);
  }

  /** FRAM has no erase; erasing is a programming error in the layer above. */
  erase(offset: number, length: number): void {
    throw new PersistError('EINVAL', 'erase', 'no_erase', `FRAM has no erase (asked [${offset}, +${length}))`, { offset, length });
  }

  eraseCount(): number {
    return 0;
  }

  /** Unlike flash (which has always only range-checked here), a closed FRAM refuses a sync. */
  override sync(offset: number, length: number): Promise<void> {
    this.live('read');
    return super.sync(offset, length);
  }
}
