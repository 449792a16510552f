import { closeSync, existsSync, fstatSync, fsyncSync, linkSync, openSync, readSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { join, dirname } from 'node:path';
import type { EventSink } from '../engine/ports.js';
import { mappedBacking, memoryBacking, type Backing, type BlockDevice } from './block-device.js';
import { DEVICE_FILE_HEADER_SIZE, FLASH_MAGIC, FRAM_MAGIC, decodeDeviceFileHeader, deviceFileSize, type DeviceFileHeader } from './device-file.js';
import { PersistError } from './errors.js';
import { Fram, framFileSize } from './fram.js';
import { SlotImageStore, type BootAlert } from './image-store.js';
import { mapFile, type MappedFile } from './native.js';
import { NorFlash, norFileSize, type NorGeometry } from './nor-flash.js';
import { ValueJournal, type ValueJournalOptions } from './value-journal.js';

/**
 * A simulated device's non-volatile memory: `flash.bin` (NOR flash with the A/B image layout)
 * and `fram.bin` (FRAM with the value journal) in a state directory, memory-mapped. First use
 * creates and formats them (in a temporary file, linked into place only when complete); later
 * uses reopen them and run recovery.
 */
export interface DeviceGeometry {
  flashSize: number;
  sectorSize: number;
  pageSize: number;
  /** Rated erase cycles per flash sector. */
  endurance: number;
  /** Sectors in the status ring (>= 2). */
  statusSectors: number;
  framSize: number;
}

export const DEFAULT_GEOMETRY: DeviceGeometry = {
  flashSize: 1 << 20,
  sectorSize: 4096,
  pageSize: 256,
  endurance: 100_000,
  statusSectors: 4,
  framSize: 64 << 10,
};

export const FLASH_FILE = 'flash.bin';
export const FRAM_FILE = 'fram.bin';

export interface Device {
  imageStore: SlotImageStore;
  valueStore: ValueJournal;
  flash: BlockDevice;
  fram: BlockDevice;
  paths: { flash: string | null; fram: string | null };
  /** Damaged or missing state found when the device was opened, and what was done (each also a `boot.alert` event). */
  alerts: BootAlert[];
  close(): Promise<void>;
}

export function norGeometryOf(g: DeviceGeometry): NorGeometry {
  if (!Number.isInteger(g.flashSize) || g.flashSize % g.sectorSize !== 0) {
    throw new PersistError('EINVAL', 'format', 'bad_geometry', `flashSize ${g.flashSize} is not a multiple of sectorSize ${g.sectorSize}`, { field: 'flashSize' });
  }
  return { sectorSize: g.sectorSize, pageSize: g.pageSize, sectorCount: g.flashSize / g.sectorSize, endurance: g.endurance };
}

/** Attach the stores to two devices (any BlockDevice: mapped, in memory, fault-injecting) and recover. */
export interface OpenOptions {
  /** Timer source for value debouncing (tests pass a manual clock). */
  clock?: ValueJournalOptions['clock'];
  /**
   * 'own' (default): emit only what the store alone sees — automatic rollbacks at boot, wear
   * warnings, journal warnings; the engine emits persisted/rollback/value.defaulted for the
   * operations it drives. 'all': also those (for use without an engine).
   */
  emit?: 'own' | 'all';
  /** The files behind the devices, named in alerts. */
  paths?: { flash: string | null; fram: string | null };
  /** The FRAM was re-created at this boot (see openFram): values read as defaulted for this reason. */
  lostValues?: 'fram_damaged' | 'fram_missing';
}

export async function openStores(flash: BlockDevice, fram: BlockDevice, events?: EventSink, options: OpenOptions = {}):
Promise<{ imageStore: SlotImageStore; valueStore: ValueJournal }> {
  const all = options.emit === 'all';
  const valueStore = ValueJournal.open(fram, {
    ...(events ? { events } : {}), ...(options.clock ? { clock: options.clock } : {}), emitReadEvents: all, ...(options.lostValues ? { lost: options.lostValues } : {}),
  });
  const imageStore = await SlotImageStore.open(flash, {
    values: valueStore, ...(events ? { events } : {}), emitOperationEvents: all, ...(options.paths?.flash ? { path: options.paths.flash } : {}),
  });
  return { imageStore, valueStore };
}

/** Format fresh devices (erased flash + layout header, zeroed FRAM + journal). */
export function formatDevices(flash: BlockDevice, fram: BlockDevice, statusSectors: number): void {
  SlotImageStore.format(flash, statusSectors);
  ValueJournal.format(fram);
}

/** Fresh device images in memory, for tests and fault injection. Attach with NorFlash/Fram.attach(memoryBacking(bytes)). */
export function formatMemoryDevice(geometry: Partial<DeviceGeometry> = {}): { flashBytes: Uint8Array; framBytes: Uint8Array } {
  const g = { ...DEFAULT_GEOMETRY, ...geometry };
  const ng = norGeometryOf(g);
  const flashBytes = new Uint8Array(norFileSize(ng));
  const framBytes = new Uint8Array(framFileSize(g.framSize));
  const flash = NorFlash.format(memoryBacking(flashBytes), ng);
  const fram = Fram.format(memoryBacking(framBytes), g.framSize);
  formatDevices(flash, fram, g.statusSectors);
  return { flashBytes, framBytes };
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}

/** Read and check a device file's header; returns its total size. Errors name the path. */
export function probeDeviceFile(path: string, magic: string): { size: number; header: DeviceFileHeader } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const ne = e as NodeJS.ErrnoException;
    throw new PersistError(ne.code === 'EACCES' ? 'EACCES' : 'ENOENT', 'open', (ne.code ?? 'open_failed').toLowerCase(),
      `${path}: ${ne.message}`, { path, errno: ne.errno, syscall: ne.syscall });
  }
  try {
    const head = new Uint8Array(DEVICE_FILE_HEADER_SIZE);
    const n = readSync(fd, head, 0, head.length, 0);
    const header = decodeDeviceFileHeader(head.subarray(0, n), magic, path);
    const size = deviceFileSize(header);
    const actual = fstatSync(fd).size;
    if (actual !== size) {
      throw new PersistError('EBADMSG', 'open', 'size_mismatch', `${path}: file is ${actual} bytes, its header describes ${size}`, { path, actual, expected: size });
    }
    return { size, header };
  } finally {
    closeSync(fd);
  }
}

/**
 * Create `path` completely or not at all: map a temporary file, format it, msync, then hard-link
 * it into place (link fails if another process won the race, and we open theirs instead).
 */
function createMapped<T>(path: string, size: number, format: (b: Backing) => T): { map: MappedFile; model: T } | null {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const map = mapFile(tmp, size, { create: true, lock: true });
  try {
    const model = format(mappedBacking(map));
    map.sync();
    try {
      linkSync(tmp, path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        map.unmap();
        return null;
      }
      throw e;
    }
    fsyncDir(dirname(path));
    return { map, model };
  } catch (e) {
    map.unmap();
    throw e;
  } finally {
    try { unlinkSync(tmp); } catch { /* already gone */ }
  }
}

function checkGeometryMatches(path: string, want: Partial<DeviceGeometry>, have: Partial<DeviceGeometry>): void {
  for (const k of Object.keys(want) as (keyof DeviceGeometry)[]) {
    if (k === 'statusSectors') continue; // a property of the layout, checked against the header when read
    if (have[k] !== undefined && want[k] !== undefined && want[k] !== have[k]) {
      throw new PersistError('EINVAL', 'open', 'geometry_mismatch',
        `${path}: existing device has ${k} ${have[k]}, asked for ${want[k]}`, { path, field: k, existing: have[k], requested: want[k] });
    }
  }
}

/** How to create, recognise and attach one of a device's two files. */
interface DeviceFileKind<M extends BlockDevice> {
  magic: string;
  /** Called only when the file does not exist yet: its size and how to format it. */
  create(): { size: number; format(b: Backing): M };
  attach(b: Backing): M;
  /** The DeviceGeometry fields an existing file's header fixes, compared with what the caller asked. */
  geometryOf(h: DeviceFileHeader): Partial<DeviceGeometry>;
}

function flashFile(g: DeviceGeometry): DeviceFileKind<NorFlash> {
  return {
    magic: FLASH_MAGIC,
    create: () => {
      const ng = norGeometryOf(g);
      return {
        size: norFileSize(ng),
        format: (b) => {
          const flash = NorFlash.format(b, ng);
          SlotImageStore.format(flash, g.statusSectors);
          return flash;
        },
      };
    },
    attach: (b) => NorFlash.attach(b),
    geometryOf: (h) => ({ sectorSize: h.sectorSize, pageSize: h.pageSize, endurance: h.endurance, flashSize: h.sectorSize * h.sectorCount }),
  };
}

function framFile(g: DeviceGeometry): DeviceFileKind<Fram> {
  return {
    magic: FRAM_MAGIC,
    create: () => ({
      size: framFileSize(g.framSize),
      format: (b) => {
        const fram = Fram.format(b, g.framSize);
        ValueJournal.format(fram);
        return fram;
      },
    }),
    attach: (b) => Fram.attach(b),
    geometryOf: (h) => ({ framSize: h.sectorCount }),
  };
}

/**
 * Create and format `path` when it does not exist (see createMapped), else check the existing
 * file's header and geometry against what was asked, then map and attach it.
 */
function openOrCreate<M extends BlockDevice>(path: string, kind: DeviceFileKind<M>, asked: Partial<DeviceGeometry>): M {
  try {
    statSync(path);
  } catch {
    const { size, format } = kind.create();
    const made = createMapped(path, size, format);
    if (made) return made.model;
  }
  const { size, header } = probeDeviceFile(path, kind.magic);
  checkGeometryMatches(path, asked, kind.geometryOf(header));
  const map = mapFile(path, size, { lock: true });
  try {
    return kind.attach(mappedBacking(map));
  } catch (e) {
    map.unmap();
    throw e;
  }
}

export async function openDevice(stateDir: string, geometry: Partial<DeviceGeometry> = {}, events?: EventSink, options: OpenOptions = {}): Promise<Device> {
  let st;
  try {
    st = statSync(stateDir);
  } catch (e) {
    throw new PersistError('ENOENT', 'open', 'state_dir_missing', `${stateDir}: state directory does not exist (${(e as Error).message})`, { path: stateDir });
  }
  if (!st.isDirectory()) throw new PersistError('EINVAL', 'open', 'state_dir_not_directory', `${stateDir}: not a directory`, { path: stateDir });
  const g = { ...DEFAULT_GEOMETRY, ...geometry };
  const paths = { flash: join(stateDir, FLASH_FILE), fram: join(stateDir, FRAM_FILE) };
  const flashExisted = existsSync(paths.flash);
  const flash = openOrCreate(paths.flash, flashFile(g), geometry);
  let opened: { fram: Fram; alert: BootAlert | null; lost?: 'fram_damaged' | 'fram_missing' };
  try {
    opened = openFram(paths.fram, g, geometry, flashExisted);
  } catch (e) {
    flash.close();
    throw e;
  }
  const { fram, alert } = opened;
  if (alert) events?.emit({ type: 'boot.alert', pid: null, phase: 'boot', data: { ...alert } });
  if (events) {
    flash.onWearWarning = (w) => events.emit({
      type: 'provisioning.wear_warning', pid: null, phase: 'persist',
      data: { sector: w.sector, erase_count: w.eraseCount, endurance: w.endurance, percent: w.percent, path: paths.flash },
    });
  }
  try {
    const { imageStore, valueStore } = await openStores(flash, fram, events, { ...options, paths, ...(opened.lost ? { lostValues: opened.lost } : {}) });
    let closed = false;
    return {
      imageStore, valueStore, flash, fram, paths,
      alerts: [...(alert ? [alert] : []), ...imageStore.recovery.alerts],
      async close() {
        if (closed) return;
        closed = true;
        try { await valueStore.close(); } finally { flash.close(); fram.close(); }
      },
    };
  } catch (e) {
    flash.close();
    fram.close();
    throw e;
  }
}

/** A damaged FRAM file: its own header or the value journal's layout fails its check (not a geometry the caller disagrees with). */
function isFramDamage(e: unknown): e is PersistError {
  return e instanceof PersistError && e.code === 'EBADMSG';
}

/**
 * Open fram.bin. Damaged values never stop a device whose flash is intact: a FRAM whose file header,
 * layout header or journal banks fail their checks is kept beside as `fram.bin.damaged-<ms>` for
 * inspection and a fresh one takes its place; values read as defaulted (`fram_damaged`). A FRAM
 * missing beside an existing flash file is re-created the same way (`fram_missing`). Either is an alert.
 */
function openFram(path: string, g: DeviceGeometry, asked: Partial<DeviceGeometry>, flashExisted: boolean):
{ fram: Fram; alert: BootAlert | null; lost?: 'fram_damaged' | 'fram_missing' } {
  if (!existsSync(path)) {
    const fram = openOrCreate(path, framFile(g), asked);
    if (!flashExisted) return { fram, alert: null };
    return {
      fram, lost: 'fram_missing',
      alert: { reason: 'fram_missing', file: path, offset: 0, action: 'created an empty FRAM; persisted values start from their defaults',
        message: `${path}: missing although the device's flash exists; created an empty FRAM; persisted values start from their defaults` },
    };
  }
  let fram: Fram | null = null;
  try {
    fram = openOrCreate(path, framFile(g), asked);
    ValueJournal.open(fram); // throws when the layout header or both journal banks fail their checks
    return { fram, alert: null };
  } catch (e) {
    fram?.close();
    if (!isFramDamage(e)) throw e;
    const aside = `${path}.damaged-${Date.now()}`;
    renameSync(path, aside);
    fsyncDir(dirname(path));
    const fresh = openOrCreate(path, framFile(g), asked);
    const offset = typeof e.detail?.['offset'] === 'number' ? e.detail['offset'] : 0;
    const action = `kept it as ${aside} and created an empty FRAM; persisted values start from their defaults`;
    return {
      fram: fresh, lost: 'fram_damaged',
      alert: { reason: 'fram_damaged', file: path, offset, action, message: `${path}: ${e.message}; ${action}` },
    };
  }
}
