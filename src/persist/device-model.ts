import type { Backing, RawAccess } from './block-device.js';
import { deviceFileSize, type DeviceFileHeader } from './device-file.js';
import { PersistError } from './errors.js';

export type DeviceOp = 'read' | 'program' | 'erase';

/**
 * What the NOR flash and FRAM models have in common: a data area at `dataOffset` of a backing
 * (mapped file or memory), the closed and read-only guards, range checks, reads, sync and close.
 * The subclasses add what makes them different (erase and program semantics, wear counters).
 * `label` ('flash' | 'FRAM') names the device in every error message.
 */
export abstract class DeviceModel implements RawAccess {
  readonly size: number;
  protected readonly data: Uint8Array;
  private closed = false;

  protected constructor(
    protected readonly backing: Backing,
    protected readonly dataOffset: number,
    size: number,
    private readonly label: 'flash' | 'FRAM',
  ) {
    this.size = size;
    this.data = backing.bytes.subarray(dataOffset, dataOffset + size);
  }

  /** `format` is handed a backing of exactly the file size it needs. */
  protected static checkFormatSize(backing: Backing, expected: number, label: 'flash' | 'FRAM'): void {
    if (backing.bytes.length !== expected) {
      throw new PersistError('EINVAL', 'format', 'size_mismatch',
        `${backing.path ?? 'memory'}: backing is ${backing.bytes.length} bytes, ${label} needs ${expected}`);
    }
  }

  /** `attach` refuses a file whose length is not what its header describes. */
  protected static checkAttachSize(backing: Backing, h: DeviceFileHeader, path: string): void {
    if (backing.bytes.length !== deviceFileSize(h)) {
      throw new PersistError('EBADMSG', 'open', 'size_mismatch',
        `${path}: file is ${backing.bytes.length} bytes, its header describes ${deviceFileSize(h)}`, { path });
    }
  }

  get path(): string | null {
    return this.backing.path;
  }

  /** Refuses any access after close, and any write to a read-only mapping. */
  protected live(op: DeviceOp): void {
    if (this.closed) throw new PersistError('EIO', op, 'closed', `${this.backing.path ?? 'memory'}: ${this.label} is closed`);
    if (op !== 'read' && this.backing.readonly) {
      throw new PersistError('EACCES', op, 'read_only', `${this.backing.path ?? 'memory'}: ${this.label} is open read-only`);
    }
  }

  protected range(op: DeviceOp, offset: number, length: number): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new PersistError('EINVAL', op, 'out_of_range',
        `${this.label} ${op} [${offset}, +${length}) outside the ${this.size}-byte device`, { offset, length });
    }
  }

  /** Both guards, in the order every access applies them. */
  protected access(op: DeviceOp, offset: number, length: number): void {
    this.live(op);
    this.range(op, offset, length);
  }

  read(offset: number, length: number): Uint8Array {
    return this.view(offset, length).slice();
  }

  view(offset: number, length: number): Uint8Array {
    this.access('read', offset, length);
    return this.data.subarray(offset, offset + length);
  }

  /** Everything from the file's start (header, counters) up to the end of the range. */
  sync(offset: number, length: number): Promise<void> {
    this.range('read', offset, length);
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
