/**
 * In-memory implementations of the engine's storage ports, for the engine's own tests and for
 * other helpers' tests. They keep the ports' semantics (A/B slots, test/permanent commits,
 * forward-only security counter; values by persist key with schema checks) without any I/O.
 */
import { createHash } from 'node:crypto';
import type { CommitMode, ImageMeta, ImageStore, SlotSummary, ValueReadResult, ValueStore } from './ports.js';

/** A store failure the engine maps to an `EngineError` (code and reason are kept). */
export class StoreError extends Error {
  constructor(
    readonly code: 'ESRCH' | 'EBUSY' | 'ENOSPC' | 'EPERM' | 'EBADMSG',
    readonly reason: string,
    message: string,
    readonly detail: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

type Slot = 'A' | 'B';
interface SlotContent {
  image: Uint8Array;
  meta: ImageMeta;
  confirmed: boolean;
}

export class InMemoryImageStore implements ImageStore {
  private slots: Record<Slot, SlotContent | null> = { A: null, B: null };
  private activeSlot: Slot | null = null;
  private commitSeq = 0;
  private counter = 0;
  /** Fault injection for callers' tests: the next commit rejects with this error. */
  failNextCommit: StoreError | null = null;

  async commit(image: Uint8Array, meta: ImageMeta, mode: CommitMode): Promise<{ slot: Slot; seq: number }> {
    if (this.failNextCommit) {
      const e = this.failNextCommit;
      this.failNextCommit = null;
      throw e;
    }
    const digest = createHash('sha256').update(image).digest('hex');
    if (meta.sha256 && meta.sha256.toLowerCase() !== digest) {
      throw new StoreError('EBADMSG', 'sha256_mismatch', `commit: meta.sha256 ${meta.sha256} does not match the image (${digest})`,
        { expected: meta.sha256.toLowerCase(), actual: digest });
    }
    const slot: Slot = this.activeSlot === 'A' ? 'B' : 'A';
    this.slots[slot] = { image: image.slice(), meta: { ...meta }, confirmed: mode === 'permanent' };
    this.activeSlot = slot;
    this.counter = Math.max(this.counter, meta.securityCounter);
    return { slot, seq: ++this.commitSeq };
  }

  async confirm(): Promise<void> {
    const active = this.activeSlot ? this.slots[this.activeSlot] : null;
    if (!active) throw new StoreError('ESRCH', 'no_active_image', 'no active image to confirm');
    active.confirmed = true;
  }

  async rollback(reason: string): Promise<{ slot: Slot; meta: ImageMeta | null }> {
    const other: Slot = this.activeSlot === 'A' ? 'B' : 'A';
    const previous = this.slots[other];
    if (!this.activeSlot || !previous) throw new StoreError('ESRCH', 'no_previous_image', `no previous image to roll back to (${reason})`);
    this.activeSlot = other;
    previous.confirmed = true;
    return { slot: other, meta: { ...previous.meta } };
  }

  active(): { image: Uint8Array; meta: ImageMeta; confirmed: boolean } | null {
    const s = this.activeSlot ? this.slots[this.activeSlot] : null;
    return s ? { image: s.image, meta: { ...s.meta }, confirmed: s.confirmed } : null;
  }

  activeMeta(): { meta: ImageMeta; confirmed: boolean } | null {
    const s = this.activeSlot ? this.slots[this.activeSlot] : null;
    return s ? { meta: { ...s.meta }, confirmed: s.confirmed } : null;
  }

  securityCounter(): number {
    return this.counter;
  }

  /** Test geometry: a slot holds this many bytes. */
  capacity = 1 << 20;

  slotCapacity(): number {
    return this.capacity;
  }

  slotStates(): SlotSummary[] {
    return (['A', 'B'] as const).map((slot) => {
      const c = this.slots[slot];
      return { slot, active: this.activeSlot === slot, entry: c ? { state: c.confirmed ? 'good' : 'test', meta: { ...c.meta } } : null };
    });
  }
}

export class InMemoryValueStore implements ValueStore {
  private readonly records = new Map<number, { raw: number; valueType: string; corrupt: boolean }>();
  /** Every write, in order (tests check write-through). */
  readonly writes: Array<{ key: number; raw: number; valueType: string }> = [];

  read(key: number, schema: { valueType: string }): ValueReadResult {
    const r = this.records.get(key);
    if (!r) return { ok: false, reason: 'missing' };
    if (r.corrupt) return { ok: false, reason: 'corrupt' };
    if (r.valueType !== schema.valueType) return { ok: false, reason: 'schema_changed' };
    return { ok: true, raw: r.raw };
  }

  write(key: number, raw: number, schema: { valueType: string }): void {
    this.records.set(key, { raw: raw & 0xffff, valueType: schema.valueType, corrupt: false });
    this.writes.push({ key, raw: raw & 0xffff, valueType: schema.valueType });
  }

  async flush(): Promise<void> {}

  async drop(keys: readonly number[]): Promise<void> {
    for (const k of keys) this.records.delete(k);
  }

  /** Test helper: the raw bits stored for a key, or undefined. */
  stored(key: number): number | undefined {
    return this.records.get(key)?.raw;
  }

  /** Test helper: mark a record as failing its CRC. */
  corrupt(key: number): void {
    const r = this.records.get(key);
    if (r) r.corrupt = true;
    else this.records.set(key, { raw: 0, valueType: '', corrupt: true });
  }
}
