import type { MappedFile } from './native.js';

/**
 * The one interface every non-volatile memory model implements: NOR flash, FRAM, and their
 * in-memory variants used by tests and fault injection. Layers above (image store, value
 * journal) never know which one they have; they ask `needsErase` and respect the alignment.
 *
 * Offsets are device offsets (0 = first data byte), never file offsets.
 */
export interface BlockDevice {
  readonly kind: 'nor' | 'fram';
  /** Data bytes. */
  readonly size: number;
  /** Erase unit (sector size); 1 for FRAM. */
  readonly eraseSize: number;
  /** Program unit and alignment (page size); 1 for FRAM. */
  readonly programSize: number;
  /** True when a byte must be erased (0xFF) before it is programmed. */
  readonly needsErase: boolean;
  readonly sectorCount: number;
  /** Rated erase cycles per sector (Infinity for FRAM). */
  readonly endurance: number;
  /** A copy of the bytes. */
  read(offset: number, length: number): Uint8Array;
  /** A view of the bytes without copying; valid until the next write or close. */
  view(offset: number, length: number): Uint8Array;
  program(offset: number, data: Uint8Array): void;
  /**
   * Many whole pages in one call, the same as `program` page by page (a part programs them in
   * order). Optional: a device that counts operations (the fault injector) leaves it out, so every
   * page stays one operation there; callers fall back to `program` per page.
   */
  programPages?(offset: number, data: Uint8Array): void;
  erase(offset: number, length: number): void;
  eraseCount(sector: number): number;
  /** Make everything up to the end of this range durable, device metadata (erase counters) included. */
  sync(offset: number, length: number): Promise<void>;
  close(): void;
}

/** Raw access to the data array, bypassing device semantics. Only the fault injector uses it (to tear writes). */
export interface RawAccess {
  rawData(): Uint8Array;
}

export function hasRawAccess(d: BlockDevice): d is BlockDevice & RawAccess {
  return typeof (d as Partial<RawAccess>).rawData === 'function';
}

/** Where a device model keeps its whole file image: a mapped file or plain memory. */
export interface Backing {
  readonly bytes: Uint8Array;
  /** The file behind it, for messages; null in memory. */
  readonly path: string | null;
  /** Mapped read-only (inspection): the device models refuse every write instead of faulting. */
  readonly readonly: boolean;
  sync(offset: number, length: number): Promise<void>;
  close(): void;
}

/** A backing in process memory. The same bytes survive a simulated reboot: attach a new model to them. */
export function memoryBacking(bytes: Uint8Array): Backing {
  return {
    bytes,
    path: null,
    readonly: false,
    sync: async () => {},
    close: () => {},
  };
}

export function mappedBacking(m: MappedFile, readonly = false): Backing {
  return {
    bytes: m.bytes,
    path: m.path,
    readonly,
    sync: (offset, length) => m.syncAsync(offset, length),
    close: () => m.unmap(),
  };
}
