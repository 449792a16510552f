import test from 'ava';
import { crc32 } from 'node:zlib';
import {
  decodeLayoutHeader, decodeStatus, encodeLayoutHeader, encodeRecord, encodeStatus, formatMemoryDevice, planLayout,
  planFramLayout, schemaTag, testMeta, NorFlash, Fram, memoryBacking, ValueJournal,
  type StatusRecord,
} from '../src/persist/index.js';

/**
 * Every byte table in docs/persistence.md, built here by hand from the table (not from the
 * encoder) and compared with what the code writes or reads.
 */
const u16 = (b: Uint8Array, o: number, v: number) => { b[o] = v & 0xff; b[o + 1] = (v >>> 8) & 0xff; };
const u32 = (b: Uint8Array, o: number, v: number) => { for (let i = 0; i < 4; i++) b[o + i] = (v >>> (8 * i)) & 0xff; };
const ascii = (b: Uint8Array, o: number, s: string) => { for (let i = 0; i < s.length; i++) b[o + i] = s.charCodeAt(i); };

test('device file header (flash): magic, geometry, data offset, CRC, erase counters', (t) => {
  const g = { sectorSize: 4096, pageSize: 256, sectorCount: 16, endurance: 10_000 };
  const bytes = new Uint8Array(4096 + 16 * 4096);
  const flash = NorFlash.format(memoryBacking(bytes), g);
  flash.erase(2 * 4096, 4096);
  const want = new Uint8Array(64);
  ascii(want, 0, 'HSXFLASH');
  u32(want, 8, 1);
  u32(want, 12, 4096);
  u32(want, 16, 256);
  u32(want, 20, 16);
  u32(want, 24, 10_000);
  u32(want, 28, 4096);
  u32(want, 60, crc32(want.subarray(0, 60)));
  t.deepEqual(bytes.subarray(0, 64), want);
  t.deepEqual([...bytes.subarray(64 + 2 * 4, 64 + 3 * 4)], [1, 0, 0, 0], 'u32 erase counter of sector 2 at 64 + 4×2');
  t.is(bytes[4096], 0xff, 'data starts at the data offset, erased');
});

test('device file header (FRAM)', (t) => {
  const bytes = new Uint8Array(4096 + 8192);
  Fram.format(memoryBacking(bytes), 8192);
  const want = new Uint8Array(64);
  ascii(want, 0, 'HSXFRAM\0');
  u32(want, 8, 1);
  u32(want, 12, 1);
  u32(want, 16, 1);
  u32(want, 20, 8192);
  u32(want, 24, 0);
  u32(want, 28, 4096);
  u32(want, 60, crc32(want.subarray(0, 60)));
  t.deepEqual(bytes.subarray(0, 64), want);
});

test('flash layout header and partition table', (t) => {
  const l = planLayout({ eraseSize: 4096, programSize: 256, sectorCount: 256 }, 4);
  const want = new Uint8Array(96);
  ascii(want, 0, 'HSXL');
  u16(want, 4, 1);
  u16(want, 6, 96);
  u32(want, 8, 4096);
  u32(want, 12, 256);
  u32(want, 16, 256);
  u32(want, 20, 512);
  u16(want, 24, 4);
  const parts: [string, number, number][] = [['HDR', 0, 1], ['STAT', 1, 4], ['SLTA', 5, 125], ['SLTB', 130, 125]];
  parts.forEach(([name, first, count], i) => {
    ascii(want, 28 + 16 * i, name);
    u32(want, 28 + 16 * i + 4, first);
    u32(want, 28 + 16 * i + 8, count);
  });
  u32(want, 92, crc32(want.subarray(0, 92)));
  t.deepEqual(encodeLayoutHeader(l), want);
  t.deepEqual(decodeLayoutHeader(want, 'hand-built'), l);
  // and that is what a formatted device carries at flash offset 0
  const { flashBytes } = formatMemoryDevice();
  const dataOffset = flashBytes.length - (1 << 20); // 1 MiB of data after the device file's metadata
  t.deepEqual(flashBytes.subarray(dataOffset, dataOffset + 96), want);
});

test('status record and slot entry', (t) => {
  const hash = 'ab'.repeat(32);
  const want = new Uint8Array(512);
  ascii(want, 0, 'HSXS');
  u32(want, 4, 7); // seq
  want[8] = 1; // active B
  want[9] = 0; // rollback target A
  want[10] = 0xff; // no restore slot
  u32(want, 12, 3); // security counter
  u32(want, 16, 0);
  u32(want, 20, 0);
  const slotB = 24 + 224;
  want[slotB] = 1; // test
  u32(want, slotB + 4, 1234); // image length
  u32(want, slotB + 8, 3);
  u32(want, slotB + 12, 0x11);
  u32(want, slotB + 16, 100);
  u32(want, slotB + 20, 20);
  u32(want, slotB + 24, 8);
  u32(want, slotB + 28, 0xdeadbeef);
  u32(want, slotB + 32, 2);
  u32(want, slotB + 36, 7); // commit seq
  for (let i = 0; i < 32; i++) want[slotB + 40 + i] = 0xab;
  ascii(want, slotB + 72, 'blinky');
  ascii(want, slotB + 104, '1.2.3');
  ascii(want, slotB + 128, 'can:vcan0');
  u32(want, 472, 2); // damage seen: two slots, with the CRC-32 of their offsets
  u32(want, 476, 0xdeadbeef);
  u32(want, 508, crc32(want.subarray(0, 508)));
  const r: StatusRecord = {
    seq: 7, active: 1, previous: 0, restoreSlot: null, securityCounter: 3, restoreSeq: 0, restoreTag: 0, damageSeen: { count: 2, crc: 0xdeadbeef },
    slots: [null, {
      state: 'test', imageLen: 1234, commitSeq: 7,
      meta: testMeta('1.2.3', 3, { appName: 'blinky', reqCaps: 0x11, codeLen: 100, roLen: 20, bssSize: 8, crc32: 0xdeadbeef, bootPriority: 2, source: 'can:vcan0', sha256: hash }),
    }],
  };
  // slot A is empty (all zero) in both; a 256-byte page rounds the record to 512, a 1024-byte page pads with 0xff
  t.deepEqual(encodeStatus(r, 512), want);
  t.deepEqual(decodeStatus(want), r);
  const padded = encodeStatus(r, 1024);
  t.true(padded.subarray(512).every((b) => b === 0xff));
  want[100] = want[100]! ^ 1;
  t.is(decodeStatus(want), null, 'a flipped bit fails the CRC');
});

test('FRAM layout header, bank header, journal record, snapshot', async (t) => {
  const l = planFramLayout(65536);
  t.deepEqual(l, { framSize: 65536, maxKeys: 512, snapshotSize: 4112, snapshots: [256, 4368], bankSize: 28528, banks: [8480, 37008] });
  const want = new Uint8Array(64);
  ascii(want, 0, 'HSXV');
  u16(want, 4, 1);
  u16(want, 6, 64);
  u32(want, 8, 65536);
  u32(want, 12, 512);
  u32(want, 16, 256);
  u32(want, 20, 4368);
  u32(want, 24, 4112);
  u32(want, 28, 8480);
  u32(want, 32, 37008);
  u32(want, 36, 28528);
  u32(want, 40, 16);
  u32(want, 60, crc32(want.subarray(0, 60)));
  const { framBytes } = formatMemoryDevice();
  const data = framBytes.subarray(4096);
  t.deepEqual(data.subarray(0, 64), want);

  const bank = new Uint8Array(16);
  ascii(bank, 0, 'HSXJ');
  u32(bank, 4, 1); // generation
  u32(bank, 8, 0); // restore seq
  u32(bank, 12, crc32(bank.subarray(0, 12)));
  t.deepEqual(data.subarray(8480, 8496), bank);

  const tag = schemaTag({ valueType: 'f16' });
  t.is(tag, crc32('{"valueType":"f16"}'));
  const rec = new Uint8Array(16);
  u16(rec, 0, 0x0011);
  u16(rec, 2, 0x4f80);
  u32(rec, 4, tag);
  u16(rec, 12, 0x0011 ^ 0xffff);
  rec[14] = 0;
  rec[15] = 0xc3;
  u32(rec, 8, crc32(rec.subarray(12, 16), crc32(rec.subarray(0, 8))));
  t.deepEqual(encodeRecord(0x11, { raw: 0x4f80, tag }), rec);

  const j = ValueJournal.open(Fram.attach(memoryBacking(framBytes)));
  j.write(0x11, 0x4f80, { valueType: 'f16' });
  await j.flush();
  t.deepEqual(data.subarray(8496, 8512), rec, 'the first record follows the bank header');
  await j.writeSnapshot(1, 9);
  const snap = new Uint8Array(16 + 8);
  ascii(snap, 0, 'HSXP');
  u32(snap, 4, 9);
  u32(snap, 8, 1);
  u16(snap, 16, 0x11);
  u16(snap, 18, 0x4f80);
  u32(snap, 20, tag);
  u32(snap, 12, crc32(snap.subarray(16, 24), crc32(snap.subarray(0, 12))));
  t.deepEqual(data.subarray(4368, 4368 + 24), snap);
});
