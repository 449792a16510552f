import type { BlockDevice } from './block-device.js';
import { partitionOffset, type FlashLayout } from './layout.js';
import { damageFingerprint, decodeStatus, encodeStatus, type StatusRecord } from './status-record.js';

/**
 * The status partition as a ring of record slots spread over several sectors. Records are
 * appended; when a sector is full the next one (holding only older records) is erased and
 * writing continues there, so status writes wear all status sectors evenly and the sector
 * holding the newest record is never erased. Recovery = read every slot, keep the intact record
 * with the highest seq. A slot that is neither intact nor erased (a torn write, a flipped bit) is
 * damaged: skipped, never programmed over (flash with ECC refuses a second program of a page, so it
 * cannot be marked in place either). Each record carries the fingerprint of the damaged slots known
 * when it was written (`damageSeen`), so a start can tell damage already reported from new damage and
 * report each once; when the ring erases a sector, its damaged slots leave the set.
 */
export interface StatusScan {
  latest: StatusRecord | null;
  intact: number;
  /** Record slots neither intact nor erased. */
  torn: number;
  damagedNewest: number | null;
  /** Their offsets, in ring order. */
  damaged: number[];
  /** The newest intact record was written knowing exactly these damaged slots (already reported). */
  damageReported: boolean;
}

export class StatusRing {
  private readonly base: number;
  private readonly sectors: number;
  private readonly perSector: number;
  private readonly recordSize: number;
  private readonly sectorSize: number;
  /** Where the next record goes, and whether that sector must be erased first. */
  private nextSector = 0;
  private nextSlot = 0;
  private nextNeedsErase = false;
  lastWrite: { offset: number; length: number } | null = null;
  /** Damaged slots at the last scan, less those erased since. */
  private damaged = new Set<number>();

  constructor(private readonly dev: BlockDevice, layout: FlashLayout) {
    this.base = partitionOffset(layout, layout.status);
    this.sectors = layout.status.sectorCount;
    this.sectorSize = layout.sectorSize;
    this.recordSize = layout.statusRecordSize;
    this.perSector = Math.floor(layout.sectorSize / layout.statusRecordSize);
  }

  private slotOffset(sector: number, slot: number): number {
    return this.base + sector * this.sectorSize + slot * this.recordSize;
  }

  private isErased(offset: number, length: number): boolean {
    const v = this.dev.view(offset, length);
    for (let i = 0; i < v.length; i++) if (v[i] !== 0xff) return false;
    return true;
  }

  /** Whether `r` was written knowing exactly the damaged slots found now. */
  private seenBy(r: StatusRecord | null, damaged: readonly number[]): boolean {
    const f = damageFingerprint(damaged);
    const seen = r?.damageSeen ?? { count: 0, crc: 0 };
    return seen.count === f.count && seen.crc === f.crc;
  }

  /**
   * Read every slot; return the newest intact record and position the ring after it.
   * `damagedNewest` is the offset of a record slot that fails its check where the newest record
   * would be: right after the newest intact one, or anywhere when none is intact. A damaged slot
   * there means the last status write (or the record read at boot) is damaged; one older than the
   * newest intact record is history the device no longer reads. `damaged` lists every damaged slot;
   * `damageReported` says whether the newest record already knew exactly these.
   */
  scan(): StatusScan {
    let latest: StatusRecord | null = null;
    let at = { sector: 0, slot: -1 };
    let intact = 0;
    let torn = 0;
    let firstTorn: number | null = null;
    const damaged: number[] = [];
    for (let s = 0; s < this.sectors; s++) {
      for (let k = 0; k < this.perSector; k++) {
        const off = this.slotOffset(s, k);
        const v = this.dev.view(off, this.recordSize);
        const r = decodeStatus(v);
        if (r) {
          intact++;
          if (!latest || r.seq > latest.seq) {
            latest = r;
            at = { sector: s, slot: k };
          }
        } else if (!this.isErased(off, this.recordSize)) {
          torn++;
          firstTorn ??= off;
          damaged.push(off);
        }
      }
    }
    this.position(latest ? at : null);
    let damagedNewest: number | null = latest ? null : firstTorn;
    if (latest) {
      const next = at.slot + 1 < this.perSector ? this.slotOffset(at.sector, at.slot + 1) : this.slotOffset((at.sector + 1) % this.sectors, 0);
      const v = this.dev.view(next, this.recordSize);
      if (!decodeStatus(v) && !this.isErased(next, this.recordSize)) damagedNewest = next;
    }
    this.damaged = new Set(damaged);
    // Damage the newest record already knew of is not the newest write failing: it was reported.
    const damageReported = this.seenBy(latest, damaged);
    return { latest, intact, torn, damagedNewest: damageReported ? null : damagedNewest, damaged, damageReported };
  }

  private position(after: { sector: number; slot: number } | null): void {
    if (after) {
      for (let k = after.slot + 1; k < this.perSector; k++) {
        if (this.isErased(this.slotOffset(after.sector, k), this.recordSize)) {
          this.nextSector = after.sector;
          this.nextSlot = k;
          this.nextNeedsErase = false;
          return;
        }
      }
      this.moveToSector((after.sector + 1) % this.sectors);
    } else {
      this.moveToSector(0);
    }
  }

  private moveToSector(sector: number): void {
    this.nextSector = sector;
    this.nextSlot = 0;
    this.nextNeedsErase = !this.isErased(this.slotOffset(sector, 0), this.sectorSize);
  }

  /** Absolute sector numbers the next `n` appends may erase (for the wear check before a commit). */
  sectorsToErase(n: number): number[] {
    const out: number[] = [];
    let sector = this.nextSector;
    let slot = this.nextSlot;
    let needs = this.nextNeedsErase;
    const firstSector = this.base / this.sectorSize;
    for (let i = 0; i < n; i++) {
      if (slot === 0 && needs) out.push(firstSector + sector);
      slot++;
      if (slot >= this.perSector) {
        sector = (sector + 1) % this.sectors;
        slot = 0;
        needs = true;
      } else {
        needs = false;
      }
    }
    return out;
  }

  /**
   * Append one record: erase the sector first if the ring just entered it. The record written carries
   * the damaged slots known now (`damageSeen`); the one written is returned.
   */
  append(r: Omit<StatusRecord, 'damageSeen'>): StatusRecord {
    // A slot that is not erased (damaged past the newest record) is passed over, never programmed over.
    for (let passed = 0; ; passed++) {
      if (passed > this.sectors * this.perSector) {
        throw new Error('status ring: no record slot is erased after a whole turn (the erase did not erase)');
      }
      if (this.nextSlot === 0 && this.nextNeedsErase) {
        const start = this.slotOffset(this.nextSector, 0);
        this.dev.erase(start, this.sectorSize);
        for (const d of this.damaged) if (d >= start && d < start + this.sectorSize) this.damaged.delete(d);
        this.nextNeedsErase = false;
      }
      if (this.isErased(this.slotOffset(this.nextSector, this.nextSlot), this.recordSize)) break;
      this.nextSlot++;
      if (this.nextSlot >= this.perSector) this.moveToSector((this.nextSector + 1) % this.sectors);
    }
    const written: StatusRecord = { ...r, damageSeen: damageFingerprint([...this.damaged]) };
    const off = this.slotOffset(this.nextSector, this.nextSlot);
    this.dev.program(off, encodeStatus(written, this.recordSize));
    this.lastWrite = { offset: off, length: this.recordSize };
    this.nextSlot++;
    if (this.nextSlot >= this.perSector) this.moveToSector((this.nextSector + 1) % this.sectors);
    return written;
  }

  /** Every intact record in the ring, oldest first (for inspection). */
  records(): StatusRecord[] {
    const out: StatusRecord[] = [];
    for (let s = 0; s < this.sectors; s++) {
      for (let k = 0; k < this.perSector; k++) {
        const r = decodeStatus(this.dev.view(this.slotOffset(s, k), this.recordSize));
        if (r) out.push(r);
      }
    }
    return out.sort((a, b) => a.seq - b.seq);
  }
}
