import { crc32 } from 'node:zlib';
import type { Clock, EventSink, TimerHandle, ValueDefaultReason, ValueReadResult, ValueStore } from '../engine/ports.js';
import type { BlockDevice } from './block-device.js';
import { PersistError } from './errors.js';
import type { SlotIndex } from './status-record.js';

/**
 * Persisted values (`val.persist`) as a CRC-protected journal in FRAM.
 *
 * FRAM holds a layout header, two values snapshots (one per image slot, taken when that slot's
 * image stops being the active one, for rollback), and two journal banks. The bank with the
 * valid header and the highest generation is live; records are appended to it; when it is full
 * the latest value of every key is compacted into the other bank and that bank's header (with
 * generation + 1) is written last, which is the atomic switch. Each record ends in a commit
 * marker byte, so a torn append (a prefix of the bytes) reads as free space and the key keeps
 * its previous value. Byte tables in docs/persistence.md, "FRAM layout".
 */
export const FRAM_LAYOUT_MAGIC = 'HSXV';
export const SNAPSHOT_MAGIC = 'HSXP';
export const BANK_MAGIC = 'HSXJ';
export const FRAM_LAYOUT_VERSION = 1;
export const FRAM_HEADER_SIZE = 64;
export const RECORD_SIZE = 16;
export const RECORD_MARKER = 0xc3;
export const BANK_HEADER_SIZE = 16;
export const SNAPSHOT_HEADER_SIZE = 16;
export const SNAPSHOT_ENTRY_SIZE = 8;
const AREA_START = 256;

export interface FramLayout {
  framSize: number;
  maxKeys: number;
  snapshots: [number, number];
  snapshotSize: number;
  banks: [number, number];
  bankSize: number;
}

export function planFramLayout(framSize: number): FramLayout {
  const maxKeys = Math.min(4096, Math.floor(framSize / 128));
  const snapshotSize = Math.ceil((SNAPSHOT_HEADER_SIZE + SNAPSHOT_ENTRY_SIZE * maxKeys) / 16) * 16;
  const bankStart = AREA_START + 2 * snapshotSize;
  const bankSize = Math.floor((framSize - bankStart) / 2 / RECORD_SIZE) * RECORD_SIZE;
  if (maxKeys < 8 || bankSize < BANK_HEADER_SIZE + 2 * RECORD_SIZE * maxKeys) {
    throw new PersistError('EINVAL', 'format', 'bad_geometry', `framSize ${framSize} is too small for the value journal`, { field: 'framSize' });
  }
  return {
    framSize, maxKeys, snapshotSize,
    snapshots: [AREA_START, AREA_START + snapshotSize],
    bankSize,
    banks: [bankStart, bankStart + bankSize],
  };
}

export function encodeFramLayout(l: FramLayout): Uint8Array {
  const b = new Uint8Array(FRAM_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(FRAM_LAYOUT_MAGIC), 0);
  dv.setUint16(4, FRAM_LAYOUT_VERSION, true);
  dv.setUint16(6, FRAM_HEADER_SIZE, true);
  dv.setUint32(8, l.framSize, true);
  dv.setUint32(12, l.maxKeys, true);
  dv.setUint32(16, l.snapshots[0], true);
  dv.setUint32(20, l.snapshots[1], true);
  dv.setUint32(24, l.snapshotSize, true);
  dv.setUint32(28, l.banks[0], true);
  dv.setUint32(32, l.banks[1], true);
  dv.setUint32(36, l.bankSize, true);
  dv.setUint32(40, RECORD_SIZE, true);
  dv.setUint32(60, crc32(b.subarray(0, 60)), true);
  return b;
}

export function decodeFramLayout(b: Uint8Array, where: string): FramLayout {
  const dv = new DataView(b.buffer, b.byteOffset, FRAM_HEADER_SIZE);
  const bad = (reason: string, offset: number, msg: string): never => {
    throw new PersistError('EBADMSG', 'open', reason, `${where}: FRAM layout header ${msg} (offset ${offset})`, { offset });
  };
  if (new TextDecoder('latin1').decode(b.subarray(0, 4)) !== FRAM_LAYOUT_MAGIC) bad('fram_layout_magic', 0, 'magic is not "HSXV"');
  if (dv.getUint32(60, true) !== crc32(b.subarray(0, 60))) bad('fram_layout_crc', 60, 'CRC mismatch');
  if (dv.getUint16(4, true) !== FRAM_LAYOUT_VERSION) bad('fram_layout_version', 4, `version ${dv.getUint16(4, true)} unsupported`);
  const l = planFramLayout(dv.getUint32(8, true));
  const same = l.maxKeys === dv.getUint32(12, true) && l.snapshots[0] === dv.getUint32(16, true) && l.snapshots[1] === dv.getUint32(20, true)
    && l.snapshotSize === dv.getUint32(24, true) && l.banks[0] === dv.getUint32(28, true) && l.banks[1] === dv.getUint32(32, true)
    && l.bankSize === dv.getUint32(36, true) && dv.getUint32(40, true) === RECORD_SIZE;
  if (!same) bad('fram_layout_geometry', 12, 'areas do not match this build\'s plan for that FRAM size');
  return l;
}

/** The schema fingerprint stored with each value: CRC-32 of the schema as canonical JSON (sorted keys). */
export function schemaTag(schema: object): number {
  const canon = JSON.stringify(Object.fromEntries(Object.entries(schema).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
  return crc32(canon);
}

export interface StoredValue {
  raw: number;
  tag: number;
}

export function encodeRecord(key: number, v: StoredValue): Uint8Array {
  const b = new Uint8Array(RECORD_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, key, true);
  dv.setUint16(2, v.raw, true);
  dv.setUint32(4, v.tag >>> 0, true);
  dv.setUint16(12, key ^ 0xffff, true);
  b[14] = 0;
  b[15] = RECORD_MARKER;
  dv.setUint32(8, recordCrc(b), true);
  return b;
}

function recordCrc(b: Uint8Array): number {
  return crc32(b.subarray(12, 16), crc32(b.subarray(0, 8)));
}

export function checkKey(key: number, op: 'read' | 'write'): void {
  if (!Number.isInteger(key) || key < 0 || key > 0xffff) {
    throw new PersistError('EINVAL', 'journal', 'bad_key', `value ${op}: persist key ${key} is not a u16`, { key });
  }
  if (key === 0x0000 || key === 0xffff) {
    throw new PersistError('EINVAL', 'journal', 'reserved_key', `value ${op}: persist key 0x${key.toString(16).padStart(4, '0')} is reserved`, { key });
  }
}

export interface ValueJournalOptions {
  events?: EventSink;
  /** Emit `value.defaulted` from `read` (off by default: the engine emits it with the value's oid and name). */
  emitReadEvents?: boolean;
  clock?: Pick<Clock, 'now' | 'setTimeout' | 'clearTimeout'>;
  /**
   * The FRAM was re-created at this boot because the old one was damaged or missing: a key never
   * written since reads as defaulted for that reason instead of `missing`.
   */
  lost?: 'fram_damaged' | 'fram_missing';
}

const realClock = {
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number): TimerHandle => setTimeout(fn, ms),
  clearTimeout: (h: TimerHandle) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

interface Snapshot {
  tag: number;
  entries: Map<number, StoredValue>;
}

export class ValueJournal implements ValueStore {
  readonly layout: FramLayout;
  /** Latest value per key as the application sees it (persisted or still pending). */
  private readonly current = new Map<number, StoredValue>();
  /** Keys whose latest journal record failed its CRC. */
  private readonly corrupt = new Set<number>();
  private readonly pending = new Map<number, StoredValue>();
  private activeBank: 0 | 1 = 0;
  private generation = 0;
  private bankRestoreSeq = 0;
  /** Offset (device) where the next record goes. */
  private tail = 0;
  private timer: TimerHandle | null = null;
  private timerDue = Infinity;
  private flushing: Promise<void> = Promise.resolve();
  private readonly clock: Pick<Clock, 'now' | 'setTimeout' | 'clearTimeout'>;
  readonly stats = { unattributableCorrupt: 0, records: 0, compactions: 0 };

  private constructor(private readonly dev: BlockDevice, layout: FramLayout, private readonly opts: ValueJournalOptions) {
    this.layout = layout;
    this.clock = opts.clock ?? realClock;
  }

  /** Lay out a fresh FRAM: header, empty snapshots, bank 0 generation 1. */
  static format(dev: BlockDevice): FramLayout {
    const l = planFramLayout(dev.size);
    dev.program(0, encodeFramLayout(l));
    dev.program(l.banks[0], bankHeader(1, 0));
    return l;
  }

  static open(dev: BlockDevice, opts: ValueJournalOptions = {}): ValueJournal {
    const l = decodeFramLayout(dev.view(0, FRAM_HEADER_SIZE), 'fram');
    const j = new ValueJournal(dev, l, opts);
    j.load();
    return j;
  }

  private load(): void {
    const heads = this.layout.banks.map((off) => readBankHeader(this.dev.view(off, BANK_HEADER_SIZE)));
    const pick = heads[0] && (!heads[1] || heads[0].gen > heads[1].gen) ? 0 : heads[1] ? 1 : null;
    if (pick === null) {
      throw new PersistError('EBADMSG', 'open', 'no_journal_bank', 'fram: neither value journal bank has an intact header');
    }
    const head = heads[pick]!;
    this.activeBank = pick;
    this.generation = head.gen;
    this.bankRestoreSeq = head.restoreSeq;
    this.current.clear();
    this.corrupt.clear();
    const base = this.layout.banks[pick];
    const end = base + this.layout.bankSize;
    let off = base + BANK_HEADER_SIZE;
    for (; off + RECORD_SIZE <= end; off += RECORD_SIZE) {
      const r = this.dev.view(off, RECORD_SIZE);
      if (r[15] !== RECORD_MARKER) break;
      const dv = new DataView(r.buffer, r.byteOffset, RECORD_SIZE);
      const key = dv.getUint16(0, true);
      this.stats.records++;
      if (dv.getUint32(8, true) === recordCrc(r)) {
        this.current.set(key, { raw: dv.getUint16(2, true), tag: dv.getUint32(4, true) });
        this.corrupt.delete(key);
      } else if ((key ^ 0xffff) === dv.getUint16(12, true)) {
        this.current.delete(key);
        this.corrupt.add(key);
      } else {
        this.stats.unattributableCorrupt++;
        this.opts.events?.emit({ type: 'warning', pid: null, phase: 'restore',
          data: { reason: 'journal_record_corrupt', offset: off, detail: 'key unreadable; record ignored' } });
      }
    }
    this.tail = off;
  }

  read(key: number, schema: { valueType: string }): ValueReadResult {
    checkKey(key, 'read');
    const v = this.current.get(key);
    let reason: ValueDefaultReason | null = null;
    if (!v) reason = this.corrupt.has(key) ? 'corrupt' : this.opts.lost ?? 'missing';
    else if (v.tag !== schemaTag(schema)) reason = 'schema_changed';
    if (reason === null) return { ok: true, raw: v!.raw };
    if (this.opts.emitReadEvents) this.opts.events?.emit({ type: 'value.defaulted', pid: null, phase: 'restore', data: { key, reason, schema } });
    return { ok: false, reason };
  }

  write(key: number, raw: number, schema: { valueType: string }, debounceMs = 0): void {
    checkKey(key, 'write');
    if (!Number.isInteger(raw) || raw < 0 || raw > 0xffff) {
      throw new PersistError('EINVAL', 'journal', 'bad_raw', `value write: raw ${raw} for key ${key} is not a u16 (f16 bits)`, { key, raw });
    }
    if (!this.current.has(key) && this.current.size >= this.layout.maxKeys) {
      throw new PersistError('ENOSPC', 'journal', 'too_many_keys', `value write: key ${key} would exceed the ${this.layout.maxKeys} persisted keys FRAM holds`, { key });
    }
    const v = { raw, tag: schemaTag(schema) };
    this.current.set(key, v);
    this.corrupt.delete(key);
    this.pending.set(key, v);
    // Coalescing debounce: the first unsaved change of a key sets how late it may be written.
    this.armTimer(this.clock.now() + Math.max(0, debounceMs));
  }

  private armTimer(due: number): void {
    if (due >= this.timerDue) return;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timerDue = due;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.timerDue = Infinity;
      this.flush().catch((e: unknown) => {
        this.opts.events?.emit({ type: 'warning', pid: null, phase: 'persist',
          data: { reason: 'value_flush_failed', message: String((e as Error).message ?? e) } });
      });
    }, Math.max(0, due - this.clock.now()));
  }

  /** Write every pending value now and make it durable. */
  flush(): Promise<void> {
    const run = this.flushing.then(() => this.flushNow());
    this.flushing = run.catch(() => {});
    return run;
  }

  private async flushNow(): Promise<void> {
    if (this.timer !== null) {
      this.clock.clearTimeout(this.timer);
      this.timer = null;
      this.timerDue = Infinity;
    }
    if (this.pending.size === 0) return;
    const batch = [...this.pending];
    this.pending.clear();
    const bankEnd = this.layout.banks[this.activeBank] + this.layout.bankSize;
    if (this.tail + batch.length * RECORD_SIZE > bankEnd) {
      const range = this.compact(this.persistedWith(batch), this.bankRestoreSeq);
      await this.dev.sync(range.offset, range.length);
      return;
    }
    const bytes = new Uint8Array(batch.length * RECORD_SIZE);
    batch.forEach(([key, v], i) => bytes.set(encodeRecord(key, v), i * RECORD_SIZE));
    const at = this.tail;
    this.dev.program(at, bytes);
    this.tail += bytes.length;
    await this.dev.sync(at, bytes.length);
  }

  /** The persisted map (journal state) with `batch` applied: `current` minus what is still pending. */
  private persistedWith(batch: [number, StoredValue][]): Map<number, StoredValue> {
    const m = new Map(this.current);
    for (const k of this.pending.keys()) m.delete(k);
    for (const [k, v] of batch) m.set(k, v);
    return m;
  }

  /**
   * Write `entries` into the other bank, header last. Returns the range to sync.
   * Ops: one program for the records (with the rest of the bank zeroed), one for the header.
   */
  private compact(entries: Map<number, StoredValue>, restoreSeq: number): { offset: number; length: number } {
    const other = (1 - this.activeBank) as 0 | 1;
    const base = this.layout.banks[other];
    const body = new Uint8Array(this.layout.bankSize - BANK_HEADER_SIZE);
    let i = 0;
    for (const [k, v] of entries) body.set(encodeRecord(k, v), RECORD_SIZE * i++);
    this.dev.program(base + BANK_HEADER_SIZE, body);
    this.dev.program(base, bankHeader(this.generation + 1, restoreSeq));
    this.activeBank = other;
    this.generation++;
    this.bankRestoreSeq = restoreSeq;
    this.tail = base + BANK_HEADER_SIZE + RECORD_SIZE * entries.size;
    this.corrupt.clear();
    this.stats.compactions++;
    return { offset: base, length: this.layout.bankSize };
  }

  // ---- snapshots for rollback (used by the image store) ----

  /**
   * Flush, then record the persisted values as `slot`'s snapshot with `tag` (one program op).
   * Resolves once written; `synced` settles when it is durable, so the caller can overlap that
   * msync with its own (the commit syncs the snapshot and the new image in parallel).
   */
  async writeSnapshot(slot: SlotIndex, tag: number): Promise<{ synced: Promise<void> }> {
    await this.flush();
    const off = this.layout.snapshots[slot];
    const b = new Uint8Array(this.layout.snapshotSize);
    const dv = new DataView(b.buffer);
    b.set(new TextEncoder().encode(SNAPSHOT_MAGIC), 0);
    dv.setUint32(4, tag, true);
    dv.setUint32(8, this.current.size, true);
    let o = SNAPSHOT_HEADER_SIZE;
    for (const [k, v] of this.current) {
      dv.setUint16(o, k, true);
      dv.setUint16(o + 2, v.raw, true);
      dv.setUint32(o + 4, v.tag >>> 0, true);
      o += SNAPSHOT_ENTRY_SIZE;
    }
    dv.setUint32(12, snapshotCrc(b, this.current.size), true);
    this.dev.program(off, b);
    const synced = this.dev.sync(off, b.length);
    synced.catch(() => {}); // the caller awaits it; never an unhandled rejection if it bails out first
    return { synced };
  }

  readSnapshot(slot: SlotIndex): Snapshot | null {
    const b = this.dev.view(this.layout.snapshots[slot], this.layout.snapshotSize);
    if (new TextDecoder('latin1').decode(b.subarray(0, 4)) !== SNAPSHOT_MAGIC) return null;
    const dv = new DataView(b.buffer, b.byteOffset, b.length);
    const count = dv.getUint32(8, true);
    if (count > this.layout.maxKeys) return null;
    if (dv.getUint32(12, true) !== snapshotCrc(b, count)) return null;
    const entries = new Map<number, StoredValue>();
    for (let i = 0; i < count; i++) {
      const o = SNAPSHOT_HEADER_SIZE + i * SNAPSHOT_ENTRY_SIZE;
      entries.set(dv.getUint16(o, true), { raw: dv.getUint16(o + 2, true), tag: dv.getUint32(o + 4, true) });
    }
    return { tag: dv.getUint32(4, true), entries };
  }

  /** The rollback restore this journal's live bank already reflects (0: none). */
  restoreSeq(): number {
    return this.bankRestoreSeq;
  }

  /**
   * Replace every value with `slot`'s snapshot (it must carry `tag`), marking the new bank with
   * `restoreSeq` so recovery can tell the restore is done. Pending writes are dropped: they
   * belong to the image being rolled back. False when the snapshot is missing or has another tag.
   */
  async restoreSnapshot(slot: SlotIndex, tag: number, restoreSeq: number): Promise<boolean> {
    const snap = this.readSnapshot(slot);
    if (!snap || snap.tag !== tag) return false;
    await this.flushing;
    this.pending.clear();
    const range = this.compact(snap.entries, restoreSeq);
    this.current.clear();
    for (const [k, v] of snap.entries) this.current.set(k, v);
    await this.dev.sync(range.offset, range.length);
    return true;
  }

  /**
   * Forgets `keys` for good: the live bank is rewritten without them (one compaction, durable when
   * this resolves). Keys not held are ignored; pending writes of other keys are kept.
   */
  async drop(keys: readonly number[]): Promise<void> {
    const gone = keys.filter((k) => this.current.has(k) || this.corrupt.has(k));
    if (gone.length === 0) return;
    await this.flush();
    await this.flushing;
    const kept = new Map(this.current);
    for (const k of gone) {
      kept.delete(k);
      this.current.delete(k);
      this.corrupt.delete(k);
      this.pending.delete(k);
    }
    const range = this.compact(kept, this.bankRestoreSeq);
    await this.dev.sync(range.offset, range.length);
  }

  /** Every persisted key and value as the application sees them (for inspection and tests). */
  entries(): Map<number, StoredValue> {
    return new Map(this.current);
  }

  bankInfo(): { bank: 0 | 1; generation: number; usedBytes: number; bankSize: number; keys: number; corruptKeys: number[] } {
    return {
      bank: this.activeBank, generation: this.generation, bankSize: this.layout.bankSize,
      usedBytes: this.tail - this.layout.banks[this.activeBank], keys: this.current.size, corruptKeys: [...this.corrupt],
    };
  }

  async close(): Promise<void> {
    await this.flush();
  }
}

function bankHeader(gen: number, restoreSeq: number): Uint8Array {
  const b = new Uint8Array(BANK_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  b.set(new TextEncoder().encode(BANK_MAGIC), 0);
  dv.setUint32(4, gen, true);
  dv.setUint32(8, restoreSeq, true);
  dv.setUint32(12, crc32(b.subarray(0, 12)), true);
  return b;
}

function readBankHeader(b: Uint8Array): { gen: number; restoreSeq: number } | null {
  if (new TextDecoder('latin1').decode(b.subarray(0, 4)) !== BANK_MAGIC) return null;
  const dv = new DataView(b.buffer, b.byteOffset, BANK_HEADER_SIZE);
  if (dv.getUint32(12, true) !== crc32(b.subarray(0, 12))) return null;
  return { gen: dv.getUint32(4, true), restoreSeq: dv.getUint32(8, true) };
}

function snapshotCrc(b: Uint8Array, count: number): number {
  return crc32(b.subarray(SNAPSHOT_HEADER_SIZE, SNAPSHOT_HEADER_SIZE + count * SNAPSHOT_ENTRY_SIZE), crc32(b.subarray(0, 12)));
}
