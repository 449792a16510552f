import type { Backing, BlockDevice, RawAccess } from './block-device.js';
import { DEVICE_FILE_VERSION, FRAM_MAGIC, dataOffsetFor, decodeDeviceFileHeader, deviceFileSize, encodeDeviceFileHeader } from './device-file.js';
import { PersistError } from './errors.js';

/**
 * FRAM: byte-addressable, no erase, write anywhere, no meaningful wear. It has the same
 * interface as flash (erase unit and program unit 1, `needsErase` false) so a layer written
 * against BlockDevice works on both.
 */
export function framFileSize(size: number): number {
  return dataOffsetFor(0) + size;
}

export class Fram implements BlockDevice, RawAccess {
  readonly kind = 'fram' as const;
  readonly needsErase = false;
  readonly eraseSize = 1;
  readonly programSize = 1;
  readonly endurance = Infinity;
  readonly size: number;
  readonly sectorCount: number;
  private readonly data: Uint8Array;
  private closed = false;

  private constructor(private readonly backing: Backing, private readonly dataOffset: number, size: number) {
    this.size = size;
    this.sectorCount = size;
    this.data = backing.bytes.subarray(dataOffset, dataOffset + size);
  }

  static format(backing: Backing, size: number): Fram {
    if (!Number.isInteger(size) || size < 4096 || size > 1 << 30) {
      throw new PersistError('EINVAL', 'format', 'bad_geometry', `framSize must be 4096..1 GiB (got ${size})`, { field: 'framSize' });
    }
    const dataOffset = dataOffsetFor(0);
    if (backing.bytes.length !== dataOffset + size) {
      throw new PersistError('EINVAL', 'format', 'size_mismatch',
        `${backing.path ?? 'memory'}: backing is ${backing.bytes.length} bytes, FRAM needs ${dataOffset + size}`);
    }
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
    if (backing.bytes.length !== deviceFileSize(h)) {
      throw new PersistError('EBADMSG', 'open', 'size_mismatch',
        `${path}: file is ${backing.bytes.length} bytes, its header describes ${deviceFileSize(h)}`, { path });
    }
    return new Fram(backing, h.dataOffset, h.sectorCount);
  }

  get path(): string | null {
    return this.backing.path;
  }

  private check(op: 'read' | 'program', offset: number, length: number): void {
    if (this.closed) throw new PersistError('EIO', op, 'closed', `${this.backing.path ?? 'memory'}: FRAM is closed`);
    if (op !== 'read' && this.backing.readonly) {
      throw new PersistError('EACCES', op, 'read_only', `${this.backing.path ?? 'memory'}: FRAM is open read-only`);
    }
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new PersistError('EINVAL', op, 'out_of_range', `FRAM ${op} [${offset}, +${length}) outside the ${this.size}-byte device`, { offset, length });
    }
  }

  read(offset: number, length: number): Uint8Array {
    return this.view(offset, length).slice();
  }

  view(offset: number, length: number): Uint8Array {
    this.check('read', offset, length);
    return this.data.subarray(offset, offset + length);
  }

  program(offset: number, bytes: Uint8Array): void {
    this.check('program', offset, bytes.length);
    this.data.set(bytes, offset);
  }

  /** FRAM has no erase; erasing is a programming error in the layer above. */
  erase(offset: number, length: number): void {
    throw new PersistError('EINVAL', 'erase', 'no_erase', `FRAM has no erase (asked [${offset}, +${length}))`, { offset, length });
  }

  eraseCount(): number {
    return 0;
  }

  sync(offset: number, length: number): Promise<void> {
    this.check('read', offset, length);
    return this.backing.sync(0, this.dataOffset + offset + length);
  }

  rawData(): Uint8Array {
    return this.data;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.backing.close();
  }
}
