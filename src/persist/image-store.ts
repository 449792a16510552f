import { createHash } from 'node:crypto';
import type { CommitMode, EventSink, ImageMeta, ImageStore, SlotSummary } from '../engine/ports.js';
import type { BlockDevice } from './block-device.js';
import { PersistError } from './errors.js';
import { partitionBytes, partitionOffset, planLayout, readLayout, writeLayout, type FlashLayout } from './layout.js';
import { FIELD_LIMITS, checkMeta, emptyStatus, utf8Truncate, type SlotEntry, type SlotIndex, type StatusRecord } from './status-record.js';
import { findSlotImage, type FoundImage } from './slot-scan.js';
import { StatusRing, type StatusScan } from './status-ring.js';
import type { ValueJournal } from './value-journal.js';

/**
 * A/B image slots with an MCUboot-style commit on any BlockDevice.
 *
 * commit: (1) if the inactive slot holds an image, a status record first forgets it; (2) the
 * values of the active image are snapshotted (for a later rollback); (3) the slot is erased and
 * programmed page by page; (4) msync; (5) the image is read back from the device and compared byte for byte;
 * (6) one status record switches the active slot (the atomic step); (7) msync.
 * A power failure anywhere leaves the newest intact status record pointing at a complete,
 * verified image: the old one before step 6 lands, the new one after. docs/persistence.md
 * lists the invariants and how the fault-injection test checks them.
 */
export const slotName = (s: SlotIndex | null): 'A' | 'B' | null => (s === null ? null : s === 0 ? 'A' : 'B');

export interface ImageStoreOptions {
  events?: EventSink;
  /** The value journal whose snapshots travel with rollbacks; optional. */
  values?: ValueJournal | null;
  /**
   * Also emit the events of operations the caller asked for (`provisioning.persisted` on commit,
   * `provisioning.rollback` on a commanded rollback). Off by default: the engine emits those
   * itself (with the pid); the store always emits what only it can see (automatic rollbacks at
   * boot, wear warnings, warnings).
   */
  emitOperationEvents?: boolean;
  /** The flash file, for alerts (default "flash"). */
  path?: string;
}

export interface RecoveryReport {
  statusRecords: number;
  tornRecords: number;
  seq: number;
  actions: string[];
  /** Damage found and what was done about it (each also emitted as `boot.alert`). */
  alerts: BootAlert[];
}

/** One piece of damaged state found at boot: which file, where, and what the device did instead. */
export interface BootAlert {
  reason: string;
  file: string;
  offset: number;
  action: string;
  message: string;
}

export interface SlotInfo {
  slot: 'A' | 'B';
  firstSector: number;
  sectorCount: number;
  bytes: number;
  entry: SlotEntry | null;
  active: boolean;
  rollbackTarget: boolean;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const utf8Decoder = new TextDecoder();

export class SlotImageStore implements ImageStore {
  readonly layout: FlashLayout;
  private readonly ring: StatusRing;
  private st: StatusRecord = emptyStatus();
  private chain: Promise<unknown> = Promise.resolve();
  recovery: RecoveryReport = { statusRecords: 0, tornRecords: 0, seq: 0, actions: [], alerts: [] };

  private constructor(private readonly dev: BlockDevice, layout: FlashLayout, private readonly opts: ImageStoreOptions) {
    this.layout = layout;
    this.ring = new StatusRing(dev, layout);
  }

  /** Write the layout header onto a fresh (erased) device. */
  static format(dev: BlockDevice, statusSectors: number): FlashLayout {
    const l = planLayout(dev, statusSectors);
    writeLayout(dev, l);
    return l;
  }

  /** Open and recover: find the newest status record, finish an interrupted rollback, enforce boot policy. */
  static async open(dev: BlockDevice, opts: ImageStoreOptions = {}): Promise<SlotImageStore> {
    const s = new SlotImageStore(dev, readLayout(dev, 'flash'), opts);
    await s.recover();
    return s;
  }

  private async recover(): Promise<void> {
    const scan = this.ring.scan();
    this.st = scan.latest ?? emptyStatus();
    this.recovery = { statusRecords: scan.intact, tornRecords: scan.torn, seq: this.st.seq, actions: [], alerts: [] };
    const values = this.opts.values;
    if (values && this.st.restoreSeq !== 0 && this.st.restoreSlot !== null && values.restoreSeq() !== this.st.restoreSeq) {
      const done = await values.restoreSnapshot(this.st.restoreSlot, this.st.restoreTag, this.st.restoreSeq);
      this.recovery.actions.push(done ? 'completed_value_restore' : 'value_restore_snapshot_missing');
    }
    if (scan.damagedNewest !== null) await this.recoverDamagedStatus(scan.damagedNewest, scan.latest);
    if (!scan.damageReported) await this.reportDamagedHistory(scan);
    const a = this.st.active;
    if (a === null) return;
    const entry = this.st.slots[a];
    if (!entry || !this.slotVerifies(a)) {
      this.recovery.actions.push('active_image_failed_verification');
      const fallback = this.canRollback();
      const offset = this.slotOffset(a);
      if (fallback) await this.doRollback('verify_failed', true);
      else await this.dropActive('verify_failed');
      this.alert('image_damaged', offset, fallback ? `rolled back to slot ${slotName(this.st.active)}` : 'started with no image (no other slot verifies)',
        `slot ${slotName(a)} does not match its SHA-256 ${entry?.meta.sha256 ?? ''}`.trim(), { slot: slotName(a), app_name: entry?.meta.appName ?? null });
      return;
    }
    if (entry.state === 'test') {
      if (this.canRollback()) {
        this.recovery.actions.push('test_image_not_confirmed');
        await this.doRollback('test_not_confirmed', true);
      } else {
        this.recovery.actions.push('test_image_kept_no_fallback');
      }
    }
  }

  /**
   * Damaged record slots other than the one where the newest record would be: history the device no
   * longer reads, but damage all the same, so each is reported (`status_record_damaged`) once. A new
   * status record, the same state with the damage in its `damageSeen`, makes the report durable: the
   * next start finds nothing new and stays quiet (a record torn by a power cut alerts once, not at
   * every start).
   */
  private async reportDamagedHistory(scan: StatusScan): Promise<void> {
    const state = scan.latest ? `the newest intact record (seq ${scan.latest.seq}) still describes the device` : 'no intact record describes the device';
    for (const off of scan.damaged) {
      if (off === scan.damagedNewest) continue;
      this.alert('status_record_damaged', off, `left it unread; ${state}`, `status record at flash offset 0x${off.toString(16)} fails its CRC check`, {});
    }
    // Unless recovery already wrote a record (a rebuild), write one to remember what was reported.
    if (this.st.seq === (scan.latest?.seq ?? 0)) await this.writeStatus({ ...this.st });
    this.recovery.actions.push(`damaged_records_reported:${scan.damaged.length}`);
  }

  /**
   * The record where the newest status should be fails its check. With an older intact record, that
   * record's image runs (the old one, if the damaged record was a switch to a new one). With none, the
   * slots are searched for images that verify by their own CRC (slot-scan.ts); the newest by the slots'
   * erase counters runs, and a rebuilt status record makes that durable. Either way: a loud alert.
   */
  private async recoverDamagedStatus(offset: number, latest: StatusRecord | null): Promise<void> {
    const detail = `status record at flash offset 0x${offset.toString(16)} fails its CRC check`;
    if (latest && latest.active !== null) {
      this.alert('status_record_damaged', offset, `booted the newest intact status record (seq ${latest.seq}, slot ${slotName(latest.active)})`, detail, {});
      return;
    }
    const found = ([0, 1] as const)
      .map((s) => ({ s, image: findSlotImage(this.dev.view(this.slotOffset(s), this.slotBytes()), this.dev.programSize, `recovered:slot ${slotName(s)}`) }))
      .filter((f): f is { s: SlotIndex; image: FoundImage } => f.image !== null);
    if (found.length === 0) {
      this.alert('status_record_damaged', offset, 'started with no image (no slot holds an image that verifies)', detail, {});
      return;
    }
    // Commits alternate A, B, A, ... (the first goes to A) and erase their target slot first: the slot
    // erased more often holds the newer image, and on a tie it is B.
    const erases = (s: SlotIndex): number => this.dev.eraseCount(this.layout.slots[s].firstSector);
    found.sort((x, y) => (erases(y.s) - erases(x.s)) || (y.s - x.s));
    const newest = found[0]!;
    const slots: StatusRecord['slots'] = [null, null];
    for (const f of found) slots[f.s] = { state: 'good', imageLen: f.image.imageLen, commitSeq: 0, meta: f.image.meta };
    const other = found[1]?.s ?? null;
    await this.writeStatus({ ...this.st, active: newest.s, previous: other, restoreSlot: null, restoreSeq: 0, restoreTag: 0, slots });
    this.recovery.actions.push(`status_rebuilt_from_slots:${found.map((f) => slotName(f.s)).join('')}`);
    this.alert('status_record_damaged', offset,
      `rebuilt the status from the slots: running ${newest.image.meta.appName} from slot ${slotName(newest.s)}` + (other !== null ? `, slot ${slotName(other)} kept as the rollback target` : ''),
      detail, { slot: slotName(newest.s), app_name: newest.image.meta.appName, sha256: newest.image.meta.sha256 });
  }

  /** Damage found at boot: an event the gateway logs at error level and publishes (`boot.alert`), and a recovery entry. */
  private alert(reason: string, offset: number, action: string, detail: string, extra: Record<string, unknown>): void {
    const file = this.opts.path ?? 'flash';
    const a: BootAlert = { reason, file, offset, action, message: `${file}: ${detail}; ${action}` };
    this.recovery.alerts.push(a);
    this.opts.events?.emit({ type: 'boot.alert', pid: null, phase: 'boot', data: { ...a, ...extra } });
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.catch(() => {});
    return run;
  }

  private slotOffset(s: SlotIndex): number {
    return partitionOffset(this.layout, this.layout.slots[s]);
  }
  private slotBytes(): number {
    return partitionBytes(this.layout, this.layout.slots[0]);
  }

  private slotVerifies(s: SlotIndex): boolean {
    const e = this.st.slots[s];
    if (!e || e.imageLen > this.slotBytes()) return false;
    return sha256(this.dev.view(this.slotOffset(s), e.imageLen)) === e.meta.sha256;
  }

  private canRollback(): boolean {
    const p = this.st.previous;
    return p !== null && this.st.slots[p]?.state === 'good';
  }

  private emit(type: 'provisioning.persisted' | 'provisioning.rollback' | 'warning', phase: 'persist' | 'boot', data: Record<string, unknown>): void {
    this.opts.events?.emit({ type, pid: null, phase, data });
  }

  /** Append the next status record (seq + 1) and make it durable. */
  private async writeStatus(next: Omit<StatusRecord, 'seq' | 'damageSeen'>): Promise<StatusRecord> {
    const r = this.ring.append({ ...next, seq: this.st.seq + 1 });
    this.st = r;
    const w = this.ring.lastWrite!;
    await this.dev.sync(w.offset, w.length);
    return r;
  }

  private assertErasable(sectors: number[]): void {
    for (const s of sectors) {
      const n = this.dev.eraseCount(s);
      if (n >= this.dev.endurance) {
        throw new PersistError('ENOSPC', 'commit', 'sector_worn_out',
          `flash sector ${s} has been erased ${n} times, its endurance is ${this.dev.endurance}: refusing the commit`,
          { sector: s, eraseCount: n, endurance: this.dev.endurance });
      }
    }
  }

  commit(image: Uint8Array, meta: ImageMeta, mode: CommitMode): Promise<{ slot: 'A' | 'B'; seq: number }> {
    return this.serialize(() => this.doCommit(image, meta, mode));
  }

  private async doCommit(image: Uint8Array, meta: ImageMeta, mode: CommitMode): Promise<{ slot: 'A' | 'B'; seq: number }> {
    // Everything that can refuse the commit is checked before the first write.
    if (image.length === 0) throw new PersistError('EINVAL', 'commit', 'empty_image', 'commit: the image is empty');
    if (image.length > this.slotBytes()) {
      throw new PersistError('ENOSPC', 'commit', 'image_too_large', `commit: image is ${image.length} bytes, a slot holds ${this.slotBytes()}`,
        { imageLen: image.length, slotBytes: this.slotBytes() });
    }
    if (mode !== 'test' && mode !== 'permanent') throw new PersistError('EINVAL', 'commit', 'bad_mode', `commit: mode ${String(mode)} is not test|permanent`);
    checkMeta(meta);
    const digest = sha256(image);
    if (meta.sha256 && meta.sha256.toLowerCase() !== digest) {
      throw new PersistError('EBADMSG', 'commit', 'sha256_mismatch', `commit: meta.sha256 ${meta.sha256} does not match the image (${digest})`,
        { expected: meta.sha256.toLowerCase(), actual: digest });
    }
    if (meta.securityCounter < this.st.securityCounter) {
      throw new PersistError('EPERM', 'commit', 'security_counter_downgrade',
        `commit: security counter ${meta.securityCounter} is below the device's ${this.st.securityCounter}`,
        { securityCounter: meta.securityCounter, deviceCounter: this.st.securityCounter });
    }
    const old = this.st.active;
    const target: SlotIndex = old === null ? 0 : ((1 - old) as SlotIndex);
    const sectorSize = this.layout.sectorSize;
    const firstSector = this.layout.slots[target].firstSector;
    const sectors = Math.ceil(image.length / sectorSize);
    this.assertErasable([...Array(sectors).keys()].map((i) => firstSector + i).concat(this.ring.sectorsToErase(2)));

    // (1) forget what the target slot holds before touching it
    if (this.st.slots[target]) {
      const slots: StatusRecord['slots'] = [...this.st.slots];
      slots[target] = null;
      this.ring.append({ ...this.st, seq: this.st.seq + 1, slots, previous: this.st.previous === target ? null : this.st.previous });
      this.st = { ...this.st, seq: this.st.seq + 1, slots, previous: this.st.previous === target ? null : this.st.previous };
    }
    const switchSeq = this.st.seq + 1;
    // (2) the active image's values, for a rollback to it
    const snapshot = old !== null && this.opts.values ? await this.opts.values.writeSnapshot(old, switchSeq) : null;
    // (3) erase + program
    const base = this.slotOffset(target);
    for (let i = 0; i < sectors; i++) this.dev.erase(base + i * sectorSize, sectorSize);
    const page = this.dev.programSize;
    const full = Math.floor(image.length / page) * page;
    if (this.dev.programPages && full > 0) this.dev.programPages(base, image.subarray(0, full));
    else for (let o = 0; o < full; o += page) this.dev.program(base + o, image.subarray(o, o + page));
    if (full < image.length) {
      const last = new Uint8Array(page).fill(0xff);
      last.set(image.subarray(full));
      this.dev.program(base + full, last);
    }
    // (4) image and values snapshot durable before the switch can point at them (one msync each, in parallel)
    await Promise.all([this.dev.sync(base, image.length), snapshot?.synced]);
    // (5) verify from the device: the slot must read back exactly the bytes whose SHA-256 is `digest`
    // (a byte compare proves the same as hashing the slot again, at a fraction of the cost)
    const stored = this.dev.view(base, image.length);
    if (Buffer.compare(stored, image) !== 0) {
      let at = 0;
      while (at < image.length && stored[at] === image[at]) at++;
      throw new PersistError('EBADMSG', 'verify', 'verify_failed',
        `commit: slot ${slotName(target)} reads back 0x${stored[at]!.toString(16).padStart(2, '0')} at byte ${at}, wrote 0x${image[at]!.toString(16).padStart(2, '0')} (image sha256 ${digest})`,
        { slot: slotName(target), offset: at });
    }
    // (6) the atomic switch, (7) durable
    const slots: StatusRecord['slots'] = [...this.st.slots];
    slots[target] = {
      state: mode === 'test' ? 'test' : 'good',
      imageLen: image.length,
      commitSeq: switchSeq,
      meta: { ...meta, sha256: digest, source: utf8Decoder.decode(utf8Truncate(meta.source, FIELD_LIMITS.source)) },
    };
    const r = await this.writeStatus({
      ...this.st,
      active: target,
      previous: old !== null && this.st.slots[old]?.state === 'good' ? old : null,
      securityCounter: Math.max(this.st.securityCounter, meta.securityCounter),
      slots,
    });
    if (this.opts.emitOperationEvents) this.emit('provisioning.persisted', 'persist', {
      slot: slotName(target), seq: r.seq, mode, app_name: meta.appName, version: meta.version,
      security_counter: meta.securityCounter, image_len: image.length, sha256: digest,
    });
    return { slot: slotName(target)!, seq: r.seq };
  }

  confirm(): Promise<void> {
    return this.serialize(async () => {
      const a = this.st.active;
      const e = a === null ? null : this.st.slots[a];
      if (a === null || !e) throw new PersistError('ENOENT', 'confirm', 'no_active_image', 'confirm: the device holds no active image');
      if (e.state === 'good') return;
      this.assertErasable(this.ring.sectorsToErase(1));
      const slots: StatusRecord['slots'] = [...this.st.slots];
      slots[a] = { ...e, state: 'good' };
      await this.writeStatus({ ...this.st, slots });
    });
  }

  rollback(reason: string): Promise<{ slot: 'A' | 'B'; meta: ImageMeta | null }> {
    return this.serialize(() => this.doRollback(reason, false));
  }

  private async doRollback(reason: string, automatic: boolean): Promise<{ slot: 'A' | 'B'; meta: ImageMeta | null }> {
    const to = this.st.previous;
    const target = to === null ? null : this.st.slots[to];
    if (to === null || !target || target.state !== 'good') {
      throw new PersistError('ENOENT', 'rollback', 'no_previous_image', 'rollback: there is no known-good previous image');
    }
    if (!this.slotVerifies(to)) {
      throw new PersistError('EBADMSG', 'rollback', 'previous_image_corrupt', `rollback: slot ${slotName(to)} no longer matches its sha256`, { slot: slotName(to) });
    }
    this.assertErasable(this.ring.sectorsToErase(1));
    const from = this.st.active;
    const fromEntry = from === null ? null : this.st.slots[from];
    const slots: StatusRecord['slots'] = [...this.st.slots];
    if (from !== null) slots[from] = null;
    // Restore the values the previous image had when it was left, if that snapshot is there.
    const values = this.opts.values;
    const tag = fromEntry?.commitSeq ?? 0;
    const restore = values !== null && values !== undefined && fromEntry !== null && values.readSnapshot(to)?.tag === tag;
    const seq = this.st.seq + 1;
    await this.writeStatus({
      ...this.st,
      active: to,
      previous: null,
      slots,
      ...(restore ? { restoreSlot: to, restoreTag: tag, restoreSeq: seq } : {}),
    });
    if (restore) await values!.restoreSnapshot(to, tag, seq);
    else if (values) this.emit('warning', automatic ? 'boot' : 'persist', { reason: 'values_snapshot_missing', slot: slotName(to) });
    if (automatic) this.recovery.actions.push(`rollback:${reason}`);
    if (automatic || this.opts.emitOperationEvents) this.emit('provisioning.rollback', automatic ? 'boot' : 'persist', {
      from: slotName(from), to: slotName(to), reason, automatic, seq, app_name: target.meta.appName, version: target.meta.version,
    });
    return { slot: slotName(to)!, meta: target.meta };
  }

  /** The active image fails verification and there is nothing to fall back to: the device boots empty. */
  private async dropActive(reason: string): Promise<void> {
    const from = this.st.active;
    const slots: StatusRecord['slots'] = [...this.st.slots];
    if (from !== null) slots[from] = null;
    await this.writeStatus({ ...this.st, active: null, previous: null, slots });
    this.emit('provisioning.rollback', 'boot', { from: slotName(from), to: null, reason, automatic: true, seq: this.st.seq });
  }

  active(): { image: Uint8Array; meta: ImageMeta; confirmed: boolean } | null {
    const a = this.st.active;
    const e = a === null ? null : this.st.slots[a];
    if (a === null || !e) return null;
    return { image: this.dev.read(this.slotOffset(a), e.imageLen), meta: { ...e.meta }, confirmed: e.state === 'good' };
  }

  activeMeta(): { meta: ImageMeta; confirmed: boolean } | null {
    const a = this.st.active;
    const e = a === null ? null : this.st.slots[a];
    return a === null || !e ? null : { meta: { ...e.meta }, confirmed: e.state === 'good' };
  }

  securityCounter(): number {
    return this.st.securityCounter;
  }

  slotCapacity(): number {
    return this.slotBytes();
  }

  /** The current (newest) status record. */
  status(): StatusRecord {
    return structuredClone(this.st);
  }

  slots(): SlotInfo[] {
    return ([0, 1] as const).map((s) => ({
      slot: slotName(s)!,
      firstSector: this.layout.slots[s].firstSector,
      sectorCount: this.layout.slots[s].sectorCount,
      bytes: this.slotBytes(),
      entry: this.st.slots[s] ? structuredClone(this.st.slots[s]) : null,
      active: this.st.active === s,
      rollbackTarget: this.st.previous === s,
    }));
  }

  /** The port's view of `slots()`: what each slot holds and which one is active (inventory). */
  slotStates(): SlotSummary[] {
    return ([0, 1] as const).map((s) => {
      const e = this.st.slots[s];
      return {
        slot: slotName(s)!, active: this.st.active === s,
        entry: e ? { state: e.state, meta: { appName: e.meta.appName, version: e.meta.version, sha256: e.meta.sha256 } } : null,
      };
    });
  }

  statusHistory(): StatusRecord[] {
    return this.ring.records();
  }

  /** Consistency check of manifest against device; empty when everything holds. */
  audit(): string[] {
    const problems: string[] = [];
    const { active, previous, slots, securityCounter } = this.st;
    if (active !== null && !slots[active]) problems.push(`active slot ${slotName(active)} has no manifest entry`);
    if (previous !== null && slots[previous]?.state !== 'good') problems.push(`rollback target ${slotName(previous)} is not a known-good image`);
    if (previous !== null && previous === active) problems.push('rollback target equals the active slot');
    for (const s of [0, 1] as const) {
      const e = slots[s];
      if (!e) continue;
      if (!this.slotVerifies(s)) problems.push(`slot ${slotName(s)} does not match its sha256`);
      if (e.meta.securityCounter > securityCounter) problems.push(`slot ${slotName(s)} security counter exceeds the device's`);
    }
    return problems;
  }
}
