/**
 * persist: the device's non-volatile memory. Memory-mapped NOR flash and FRAM models, the A/B
 * image store with power-fail-safe commit and rollback (ImageStore), the value journal
 * (ValueStore), wear tracking, fault injection, and inspection. docs/persistence.md.
 */
export { PersistError, isPersistError, type PersistErrorCode, type PersistOp } from './errors.js';
export { mapFile, pageSize, type MappedFile, type MapOptions } from './native.js';
export { memoryBacking, mappedBacking, hasRawAccess, type Backing, type BlockDevice, type RawAccess } from './block-device.js';
export { NorFlash, norFileSize, checkNorGeometry, WEAR_WARNING_FRACTION, type NorGeometry, type WearWarning } from './nor-flash.js';
export { Fram, framFileSize } from './fram.js';
export { FaultPlan, FaultyDevice, PowerFail, type TearMode } from './fault.js';
export { planLayout, readLayout, encodeLayoutHeader, decodeLayoutHeader, type FlashLayout, type Partition } from './layout.js';
export { encodeStatus, decodeStatus, emptyStatus, type StatusRecord, type SlotEntry, type SlotIndex, type SlotState } from './status-record.js';
export { SlotImageStore, slotName, type ImageStoreOptions, type RecoveryReport, type SlotInfo } from './image-store.js';
export { ValueJournal, schemaTag, planFramLayout, encodeRecord, type FramLayout, type StoredValue, type ValueJournalOptions } from './value-journal.js';
export {
  openDevice, openStores, formatDevices, formatMemoryDevice, DEFAULT_GEOMETRY, FLASH_FILE, FRAM_FILE,
  type Device, type DeviceGeometry, type OpenOptions,
} from './device.js';
export { inspectDevice, type DeviceReport } from './inspect.js';
export { patternImage, testMeta, EventRecorder, ManualClock, bootMemory } from './testing.js';
