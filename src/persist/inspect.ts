import { statSync } from 'node:fs';
import { join } from 'node:path';
import { mappedBacking } from './block-device.js';
import { FLASH_FILE, FRAM_FILE, probeDeviceFile } from './device.js';
import { FLASH_MAGIC, FRAM_MAGIC } from './device-file.js';
import { Fram } from './fram.js';
import { readLayout, partitionBytes, type Partition } from './layout.js';
import { mapFile } from './native.js';
import { NorFlash, WEAR_WARNING_FRACTION } from './nor-flash.js';
import { StatusRing } from './status-ring.js';
import { findSlotImage } from './slot-scan.js';
import { ValueJournal } from './value-journal.js';
import { createHash } from 'node:crypto';
import { PersistError } from './errors.js';

/**
 * Read-only inspection of a device's files (for `hsx-gateway flash-info`). Maps the files
 * PROT_READ without the writer's lock, so it works while a device process runs, and never
 * writes: no recovery actions, it only reports what recovery would find.
 */
export interface DeviceReport {
  flashPath: string;
  geometry: { sectorSize: number; pageSize: number; sectorCount: number; flashSize: number; endurance: number };
  partitions: (Partition & { offset: number; bytes: number })[];
  status: { seq: number; intactRecords: number; tornRecords: number; active: 'A' | 'B' | null; rollbackTarget: 'A' | 'B' | null; securityCounter: number };
  slots: {
    slot: 'A' | 'B'; state: 'empty' | 'test' | 'good'; active: boolean; verified: boolean | null; imageLen: number; commitSeq: number;
    meta: Record<string, unknown> | null;
  }[];
  wear: { maxEraseCount: number; totalErases: number; warnAt: number; endurance: number; sectorsOverWarning: number[]; perPartition: Record<string, { max: number; total: number }> };
  values: { framPath: string; keys: number; generation: number; bank: number; usedBytes: number; bankSize: number; corruptKeys: number[]; entries: { key: number; raw: number }[] } | null;
  /** What is damaged and what the device does about it at its next start (see image-store recover, device openFram). */
  damage: string[];
}

/** `path` is a state directory or a flash file; the FRAM file is looked for next to it. */
export function inspectDevice(path: string): DeviceReport {
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (e) {
    throw new PersistError('ENOENT', 'open', 'missing', `${path}: ${(e as Error).message}`, { path });
  }
  const flashPath = isDir ? join(path, FLASH_FILE) : path;
  const framPath = join(isDir ? path : join(flashPath, '..'), FRAM_FILE);
  const { size } = probeDeviceFile(flashPath, FLASH_MAGIC);
  const map = mapFile(flashPath, size, { readonly: true });
  try {
    const flash = NorFlash.attach(mappedBacking(map, true));
    const layout = readLayout(flash, flashPath);
    const ring = new StatusRing(flash, layout);
    const scan = ring.scan();
    const st = scan.latest;
    const name = (s: 0 | 1 | null | undefined): 'A' | 'B' | null => (s === 0 ? 'A' : s === 1 ? 'B' : null);
    const slots = ([0, 1] as const).map((s) => {
      const e = st?.slots[s] ?? null;
      const off = layout.slots[s].firstSector * layout.sectorSize;
      const verified = e ? createHash('sha256').update(flash.view(off, Math.min(e.imageLen, partitionBytes(layout, layout.slots[s])))).digest('hex') === e.meta.sha256 : null;
      return {
        slot: name(s)!, state: e?.state ?? 'empty', active: st?.active === s, verified,
        imageLen: e?.imageLen ?? 0, commitSeq: e?.commitSeq ?? 0, meta: e ? { ...e.meta } : null,
      };
    });
    const counts = [...Array(flash.sectorCount).keys()].map((i) => flash.eraseCount(i));
    const warnAt = Math.ceil(flash.endurance * WEAR_WARNING_FRACTION);
    const parts = [layout.header, layout.status, layout.slots[0], layout.slots[1]];
    const perPartition: Record<string, { max: number; total: number }> = {};
    for (const p of parts) {
      const c = counts.slice(p.firstSector, p.firstSector + p.sectorCount);
      perPartition[p.name] = { max: Math.max(0, ...c), total: c.reduce((a, b) => a + b, 0) };
    }
    const damage: string[] = [];
    if (scan.damagedNewest !== null) {
      const at = `status record at flash offset 0x${scan.damagedNewest.toString(16)} fails its CRC check`;
      if (st && st.active !== null) damage.push(`${at}: the device boots the newest intact record (seq ${st.seq}, slot ${name(st.active)})`);
      else {
        const found = ([0, 1] as const).filter((s) => findSlotImage(flash.view(layout.slots[s].firstSector * layout.sectorSize, partitionBytes(layout, layout.slots[s])), flash.programSize, '') !== null);
        damage.push(found.length
          ? `${at}: no intact record describes the slots; the device rebuilds the status from slot(s) ${found.map((s) => name(s)).join(', ')}, whose image(s) verify`
          : `${at}: no intact record and no slot holds an image that verifies; the device starts empty`);
      }
    }
    if (!scan.damageReported) {
      for (const off of scan.damaged) {
        if (off !== scan.damagedNewest) damage.push(`status record at flash offset 0x${off.toString(16)} fails its CRC check: history the device no longer reads; the next start reports it once`);
      }
    }
    for (const slot of slots) {
      if (slot.active && slot.verified === false) damage.push(`slot ${slot.slot} (active) does not match its SHA-256: the device will not run it`);
    }
    const values = inspectValues(framPath, damage);
    return {
      flashPath,
      geometry: { sectorSize: flash.eraseSize, pageSize: flash.programSize, sectorCount: flash.sectorCount, flashSize: flash.size, endurance: flash.endurance },
      partitions: parts.map((p) => ({ ...p, offset: p.firstSector * layout.sectorSize, bytes: partitionBytes(layout, p) })),
      status: {
        seq: st?.seq ?? 0, intactRecords: scan.intact, tornRecords: scan.torn, active: name(st?.active), rollbackTarget: name(st?.previous),
        securityCounter: st?.securityCounter ?? 0,
      },
      slots,
      wear: {
        maxEraseCount: Math.max(0, ...counts), totalErases: counts.reduce((a, b) => a + b, 0), warnAt, endurance: flash.endurance,
        sectorsOverWarning: counts.flatMap((c, i) => (c >= warnAt ? [i] : [])), perPartition,
      },
      values,
      damage,
    };
  } finally {
    map.unmap();
  }
}

function inspectValues(framPath: string, damage: string[]): DeviceReport['values'] {
  try {
    statSync(framPath);
  } catch {
    damage.push(`${framPath} is missing: the device re-creates it and persisted values start from their defaults`);
    return null;
  }
  let map: ReturnType<typeof mapFile> | null = null;
  try {
    const { size } = probeDeviceFile(framPath, FRAM_MAGIC);
    map = mapFile(framPath, size, { readonly: true });
    const j = ValueJournal.open(Fram.attach(mappedBacking(map, true)));
    const info = j.bankInfo();
    return {
      framPath, keys: info.keys, generation: info.generation, bank: info.bank, usedBytes: info.usedBytes, bankSize: info.bankSize,
      corruptKeys: info.corruptKeys, entries: [...j.entries()].map(([key, v]) => ({ key, raw: v.raw })).sort((a, b) => a.key - b.key),
    };
  } catch (e) {
    if (!(e instanceof PersistError) || e.code !== 'EBADMSG') throw e;
    damage.push(`${e.message}: the device keeps it as fram.bin.damaged-<ms> and starts with default values`);
    return null;
  } finally {
    map?.unmap();
  }
}
