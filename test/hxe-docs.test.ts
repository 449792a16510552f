import test from 'ava';
import { crc32 } from 'node:zlib';
import { parseImage, hxeCrc32, buildImage } from '../src/hxe/index.js';

/**
 * docs/hxe_format.md, table by table: the bytes are written out by hand here from the documented offsets
 * (no helper from src/ or the other tests), then parsed.
 */
const h = (s: string): Buffer => Buffer.from(s.replace(/[\s|]+/g, ''), 'hex');
const str = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');

/** Stores the CRC the documented way: crc32(bytes[0..0x1B]) then crc32(bytes[header_size..], crc). */
function withDocumentedCrc(b: Buffer, headerSize: number): Buffer {
  const crc = crc32(b.subarray(headerSize), crc32(b.subarray(0, 0x1c))) >>> 0;
  b.writeUInt32BE(crc, 0x1c);
  return b;
}

test('CRC recipe: zlib CRC-32 check value, and hxeCrc32 equals the documented two-step recipe', (t) => {
  t.is(crc32('123456789') >>> 0, 0xcbf43926);
  const img = Buffer.alloc(120, 0x5a);
  img.write('HSXE', 0, 'latin1');
  img.writeUInt16BE(2, 4);
  t.is(hxeCrc32(img), crc32(Buffer.concat([img.subarray(0, 0x1c), img.subarray(96)])) >>> 0);
});

test('a v2 image with one section of each type, written from the byte tables, parses as documented', (t) => {
  const code = h('60100000 25000000'); // 8 bytes
  const rodata = h('010203'); // 3 bytes: ro_len not a multiple of 4
  const headerSize = 96;
  const tableAt = headerSize + code.length + rodata.length; // 107
  // .value: 1 entry (20 bytes) + strings "speed\0rpm\0motor\0" at 20, 26, 30
  const value = Buffer.concat([
    h('01 05 02 01'), // group 1, id 5, flags PERSIST, auth USER
    h('3c00'), // init f16 1.0
    h('0014'), h('001a'), // name_off 20, unit_off 26
    h('2e66'), h('0000'), h('7c00'), // epsilon ~0.1, min 0, max +inf
    h('1234'), h('001e'), // persist_key, group_name_off 30
    str('speed'), str('rpm'), str('motor'),
  ]);
  // .cmd: 1 entry (16 bytes) + strings "stop\0" at 16; help_off 0 (none)
  const cmd = Buffer.concat([
    h('01 07 01 02'), // group 1, id 7, flags PIN, auth ADMIN
    h('00000004'), // handler_offset
    h('0010'), h('0000'), // name_off 16, help_off 0
    h('0000'), h('0000'), // reserved, group_name_off 0
    str('stop'),
  ]);
  const mailbox = Buffer.from('{"mailboxes":[{"capacity":96,"mode":"rw|tap","target":"app:telemetry"}],"version":1}', 'latin1');
  const sectionsAt = tableAt + 3 * 16;
  const table = Buffer.alloc(48);
  [[1, value, 1], [2, cmd, 1], [3, mailbox, 1]].reduce((off, [type, payload, count], i) => {
    table.writeUInt32BE(type as number, i * 16);
    table.writeUInt32BE(off as number, i * 16 + 4);
    table.writeUInt32BE((payload as Buffer).length, i * 16 + 8);
    table.writeUInt32BE(count as number, i * 16 + 12);
    return (off as number) + (payload as Buffer).length;
  }, sectionsAt);
  const header = Buffer.alloc(96);
  h('48535845').copy(header, 0x00); // magic
  header.writeUInt16BE(2, 0x04); // version
  header.writeUInt16BE(0x0003, 0x06); // flags: manifest + allow multiple
  header.writeUInt32BE(4, 0x08); // entry
  header.writeUInt32BE(code.length, 0x0c);
  header.writeUInt32BE(rodata.length, 0x10);
  header.writeUInt32BE(256, 0x14); // bss_size
  header.writeUInt32BE(0b11, 0x18); // req_caps: mailbox + value/command
  header.write('docs', 0x20, 'latin1'); // app_name, NUL-padded
  header.writeUInt32BE(tableAt, 0x40);
  header.writeUInt32BE(3, 0x44);
  // 0x48..0x5F reserved: left zero
  const file = withDocumentedCrc(Buffer.concat([header, code, rodata, table, value, cmd, mailbox]), headerSize);

  const r = parseImage(new Uint8Array(file));
  if (!r.ok) return t.fail(`${r.error.reason}: ${r.error.message}`);
  const img = r.value;
  t.like(img.header, { version: 2, flags: 3, manifestPresent: true, allowMultipleInstances: true, entry: 4, codeLen: 8, roLen: 3, bssSize: 256, reqCaps: 3, appName: 'docs', metaOffset: 107, metaCount: 3, headerSize: 96 });
  t.deepEqual(img.sections.map((s) => [s.type, s.offset, s.entryCount]), [[1, 155, 1], [2, 155 + value.length, 1], [3, 155 + value.length + cmd.length, 1]]);
  t.like(img.values[0], { group: 1, id: 5, flags: 2, auth: 1, name: 'speed', unit: 'rpm', groupName: 'motor', persistKey: 0x1234 });
  t.deepEqual([img.values[0]?.init.value, img.values[0]?.max.value, img.values[0]?.epsilon.raw], [1, Infinity, 0x2e66]);
  t.like(img.commands[0], { group: 1, id: 7, flags: 1, auth: 2, handlerOffset: 4, name: 'stop', help: null, groupName: null });
  t.like(img.mailboxes[0], { target: 'app:telemetry', capacity: 96, mode: 0x07 });
  t.deepEqual(img.warnings.map((w) => w.reason), ['ro_len_unaligned']);
  t.is(img.bodyEnd, file.length);
});

test('the documented v1 header (32 bytes) parses; the CRC skips only the CRC field', (t) => {
  const file = Buffer.concat([
    h('48535845 0001 0001'), // magic, version 1, flags manifest
    h('00000004 00000008 00000006 00000040 00000013'), // entry, code_len, ro_len, bss_size, req_caps
    h('00000000'), // crc placeholder at 0x1C
    h('01100005 25000000'), // code
    Buffer.from('hello\0', 'latin1'), // rodata
  ]);
  withDocumentedCrc(file, 32);
  const r = parseImage(new Uint8Array(file));
  if (!r.ok) return t.fail(r.error.message);
  t.like(r.value.header, { version: 1, headerSize: 32, entry: 4, codeLen: 8, roLen: 6, bssSize: 64, reqCaps: 19, appName: '', allowMultipleInstances: true });
});

test('the documented legacy mailbox struct (16 bytes + strings) parses', (t) => {
  const payload = Buffer.concat([h('00000010 0020 0001 0000000000000000'), str('svc:log')]);
  const spec = buildImage({ code: new Uint8Array(4) });
  if (!spec.ok) return t.fail();
  const header = Buffer.from(spec.value.subarray(0, 96));
  const tableAt = 100;
  header.writeUInt32BE(tableAt, 0x40);
  header.writeUInt32BE(1, 0x44);
  const table = Buffer.alloc(16);
  table.writeUInt32BE(3, 0);
  table.writeUInt32BE(tableAt + 16, 4);
  table.writeUInt32BE(payload.length, 8);
  table.writeUInt32BE(1, 12);
  const file = withDocumentedCrc(Buffer.concat([header, h('25000000'), table, payload]), 96);
  const r = parseImage(new Uint8Array(file));
  if (!r.ok) return t.fail(r.error.message);
  t.deepEqual(r.value.mailboxes, [{ target: 'svc:log', capacity: 32, mode: 1 }]);
  t.is(r.value.mailboxFormat, 'legacy');
});

test('the CRC does not cover app_name, meta pointers or reserved: renaming keeps it valid', (t) => {
  const b = buildImage({ code: new Uint8Array(4), appName: 'before' });
  if (!b.ok) return t.fail();
  const renamed = Buffer.from(b.value);
  renamed.write('after\0', 0x20, 'latin1');
  const r = parseImage(new Uint8Array(renamed));
  t.true(r.ok && r.value.header.appName === 'after');
});
