import type { Command } from 'commander';
import { inspectDevice, isPersistError, type DeviceReport } from '../../persist/index.js';

/**
 * `hsx-gateway flash-info PATH`: print a device's flash layout, status, slots with their
 * manifest entries, wear, and persisted values. PATH is a device state directory or its
 * flash.bin. Read-only (works while the device runs); damaged state is listed last (`DAMAGED: …`,
 * `damage` in --json) with what the device does about it. Exit 0 ok, 1 unreadable, 2 usage.
 */
function human(r: DeviceReport): string {
  const out: string[] = [];
  const g = r.geometry;
  out.push(`flash ${r.flashPath}: ${g.flashSize} bytes, ${g.sectorCount} sectors × ${g.sectorSize}, page ${g.pageSize}, endurance ${g.endurance}`);
  out.push('partitions:');
  for (const p of r.partitions) {
    out.push(`  ${p.name.padEnd(4)} sectors ${String(p.firstSector).padStart(5)}..${String(p.firstSector + p.sectorCount - 1).padEnd(5)} offset 0x${p.offset.toString(16).padStart(6, '0')}  ${p.bytes} bytes`);
  }
  const s = r.status;
  out.push(`status: seq ${s.seq}, ${s.intactRecords} intact record(s), ${s.tornRecords} torn; active ${s.active ?? '-'}, rollback target ${s.rollbackTarget ?? '-'}, security counter ${s.securityCounter}`);
  for (const slot of r.slots) {
    const m = slot.meta as Record<string, unknown> | null;
    const mark = slot.active ? '*' : ' ';
    if (!m) {
      out.push(` ${mark}slot ${slot.slot}: empty`);
      continue;
    }
    out.push(` ${mark}slot ${slot.slot}: ${slot.state}${slot.verified ? ', verified' : ', HASH MISMATCH'}, ${slot.imageLen} bytes, committed at seq ${slot.commitSeq}`);
    out.push(`      app ${String(m['appName'])} version ${String(m['version'])} security ${String(m['securityCounter'])} caps 0x${Number(m['reqCaps']).toString(16)} boot priority ${String(m['bootPriority'])}`);
    out.push(`      code ${String(m['codeLen'])} ro ${String(m['roLen'])} bss ${String(m['bssSize'])} crc32 0x${(Number(m['crc32']) >>> 0).toString(16).padStart(8, '0')} source ${String(m['source'])}`);
    out.push(`      sha256 ${String(m['sha256'])}`);
  }
  const w = r.wear;
  out.push(`wear: max ${w.maxEraseCount} erases (${((100 * w.maxEraseCount) / w.endurance).toFixed(2)}% of ${w.endurance}), total ${w.totalErases}, warning at ${w.warnAt}${w.sectorsOverWarning.length ? `, OVER WARNING: sectors ${w.sectorsOverWarning.join(',')}` : ''}`);
  for (const [name, p] of Object.entries(w.perPartition)) out.push(`  ${name.padEnd(4)} max ${p.max} total ${p.total}`);
  if (r.values) {
    const v = r.values;
    out.push(`values ${v.framPath}: ${v.keys} key(s), bank ${v.bank} generation ${v.generation}, ${v.usedBytes}/${v.bankSize} bytes used${v.corruptKeys.length ? `, corrupt keys ${v.corruptKeys.join(',')}` : ''}`);
    for (const e of v.entries) out.push(`  key 0x${e.key.toString(16).padStart(4, '0')} = 0x${e.raw.toString(16).padStart(4, '0')}`);
  } else {
    out.push('values: no readable fram.bin next to the flash file');
  }
  for (const d of r.damage) out.push(`DAMAGED: ${d}`);
  return out.join('\n') + '\n';
}

export function registerFlashInfo(program: Command): void {
  program
    .command('flash-info')
    .description('show a device flash/FRAM file: layout, slots, manifest, wear, persisted values')
    .argument('<path>', 'device state directory or its flash.bin')
    .option('--json', 'print the report as one JSON object')
    .action((path: string, opts: { json?: boolean }) => {
      try {
        const report = inspectDevice(path);
        process.stdout.write(opts.json ? JSON.stringify(report) + '\n' : human(report));
        process.exitCode = 0;
      } catch (e) {
        const pe = isPersistError(e) ? { code: e.code, reason: e.reason, message: e.message, detail: e.detail } : { code: 'EIO', reason: 'unreadable', message: String((e as Error).message ?? e) };
        if (opts.json) process.stdout.write(JSON.stringify({ ok: false, error: pe }) + '\n');
        else process.stderr.write(`flash-info: ${pe.message}\n`);
        process.exitCode = 1;
      }
    });
}
