/**
 * The engine's ports: everything it needs from the outside world reaches it through these
 * small interfaces, so the engine stays pure logic (no Node I/O) and every timeout is testable
 * with a fake clock. `persist` implements the stores, `gateway` implements the event sink.
 */

/** Milliseconds, monotonic for timeouts; `now()` is also the event timestamp source. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}
export type TimerHandle = { readonly __timer: unique symbol } | number | object;

export type EventPhase = 'begin' | 'write' | 'end' | 'verify' | 'register' | 'persist' | 'boot' | 'restore';

export type ProvisioningEventType =
  | 'provisioning.started'
  | 'provisioning.progress'
  | 'provisioning.complete'
  | 'provisioning.error'
  | 'provisioning.aborted'
  | 'provisioning.unloaded'
  | 'provisioning.persisted'
  | 'provisioning.rollback'
  | 'provisioning.wear_warning'
  | 'provisioning.updated'
  | 'value.changed'
  | 'value.restored'
  | 'value.defaulted'
  | 'value.migrated'
  | 'value.dropped'
  | 'boot.attempt'
  | 'boot.source'
  | 'boot.failed'
  | 'boot.alert'
  | 'warning';

/** An event as the engine produces it; the sink assigns the global `seq` and `ts`. */
export interface EngineEvent {
  type: ProvisioningEventType;
  pid: number | null;
  phase: EventPhase;
  data: Record<string, unknown>;
}

/** The envelope the HSX executive uses on the wire. */
export interface EventEnvelope extends EngineEvent {
  seq: number;
  /** Seconds since the epoch (a float), as the HSX executive's envelope. */
  ts: number;
}

export interface EventSink {
  emit(event: EngineEvent): void;
}

/** Metadata recorded with a persisted image (the manifest entry). */
export interface ImageMeta {
  appName: string;
  version: string;
  securityCounter: number;
  reqCaps: number;
  codeLen: number;
  roLen: number;
  bssSize: number;
  source: string;
  crc32: number;
  sha256: string;
  bootPriority: number;
}

export type CommitMode = 'test' | 'permanent';

/** What one flash slot holds (a device's inventory: `scan`, the daemon). */
export interface SlotSummary {
  slot: 'A' | 'B';
  /** The slot the device boots. */
  active: boolean;
  /** null: the slot holds no image. */
  entry: { state: 'empty' | 'test' | 'good'; meta: Pick<ImageMeta, 'appName' | 'version' | 'sha256'> } | null;
}

/** The device's non-volatile image store (A/B slots with power-fail-safe commit). */
export interface ImageStore {
  /**
   * Write into the inactive slot, verify from the device, then switch atomically. A `meta.sha256`
   * that the image does not hash to is refused (`EBADMSG sha256_mismatch`, detail `expected`,
   * `actual`) before anything is written: the intake relies on this to check an announced SHA-256.
   */
  commit(image: Uint8Array, meta: ImageMeta, mode: CommitMode): Promise<{ slot: 'A' | 'B'; seq: number }>;
  /** Mark a tested image permanent. */
  confirm(): Promise<void>;
  /** Switch back to the previous known-good image. */
  rollback(reason: string): Promise<{ slot: 'A' | 'B'; meta: ImageMeta | null }>;
  /** The active image and its metadata, or null when the device holds none. */
  active(): { image: Uint8Array; meta: ImageMeta; confirmed: boolean } | null;
  /** The active image's metadata without reading the image (an update's CURRENT check runs on every announce). */
  activeMeta(): { meta: ImageMeta; confirmed: boolean } | null;
  /** Highest security counter ever committed; only moves forward (anti-downgrade). */
  securityCounter(): number;
  /** Bytes one slot holds: an announced image larger than this is refused before anything is erased. */
  slotCapacity?(): number;
  /** Both slots, A then B: what each holds and which one is active (inventory). */
  slotStates?(): SlotSummary[];
}

export type ValueReadResult =
  | { ok: true; raw: number }
  | { ok: false; reason: ValueDefaultReason };

/**
 * Why a persisted value falls back to its default: never stored, its record fails its check, its
 * schema changed, or the whole FRAM was found damaged (set aside) or missing at boot.
 */
export type ValueDefaultReason = 'missing' | 'corrupt' | 'schema_changed' | 'fram_damaged' | 'fram_missing';

/** Persisted values by persist key (f16 raw bits), backed by a power-safe journal. */
export interface ValueStore {
  read(key: number, schema: { valueType: string }): ValueReadResult;
  write(key: number, raw: number, schema: { valueType: string }, debounceMs?: number): void;
  flush(): Promise<void>;
  /** Forgets these keys for good (an update the device confirmed no longer declares them). */
  drop?(keys: readonly number[]): Promise<void>;
}
