/**
 * UART protocol version 3 payloads (docs/uart_protocol.md, "Version 3: compressed and delta transfers"),
 * checked byte by byte against the doc's tables: OPEN's encoding block, ACCEPT's caps, INFO's CODEC
 * block, and what version 1 and 2 payloads keep.
 */
import test from 'ava';
import {
  decodeAccept, decodeInfo, decodeOpen, encodeAccept, encodeInfo, encodeInfoRequest, encodeOpen, streamBytesOf, type InfoMessage,
} from '../src/link/uart/messages.js';

const SHA = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
const BASE = Uint8Array.from({ length: 32 }, (_, i) => 0xa0 + i);

test('OPEN version 3: the encoding block after the name, by the byte table', (t) => {
  const patch = encodeOpen({
    version: 3, chunkSize: 1024, window: 8, totalBytes: 20000, crc32: 0x11223344, sha256: SHA, appName: 'ab', force: false,
    encoding: { kind: 'patch', windowBits: 0, streamBytes: 1234, baseSha256: BASE },
  });
  t.is(patch.length, 47 + 2 + 6 + 32);
  t.is(patch[0], 3);
  t.is(patch.readUInt32BE(6), 20000, 'total: the decoded image');
  t.is(patch[49], 2, 'encoding 2 = patch');
  t.is(patch[50], 0);
  t.is(patch.readUInt32BE(51), 1234, 'stream bytes');
  t.deepEqual([...patch.subarray(55, 87)], [...BASE]);
  const d = decodeOpen(patch);
  t.true(d.ok);
  if (d.ok) {
    t.like(d.value.encoding, { kind: 'patch', streamBytes: 1234 });
    t.deepEqual([...d.value.encoding!.baseSha256!], [...BASE]);
    t.is(streamBytesOf(d.value), 1234);
  }
  const z = encodeOpen({ version: 3, chunkSize: 1024, window: 8, totalBytes: 20000, crc32: 1, sha256: SHA, appName: '', force: false, encoding: { kind: 'deflate', windowBits: 12, streamBytes: 900, baseSha256: null } });
  t.is(z.length, 47 + 6);
  t.deepEqual([...z.subarray(47, 53)], [1, 12, 0, 0, 0x03, 0x84]);
  t.like(decodeOpen(z), { ok: true, value: { encoding: { kind: 'deflate', windowBits: 12, streamBytes: 900, baseSha256: null } } });
  // a version 3 raw OPEN: stream must equal total
  const raw = encodeOpen({ version: 3, chunkSize: 1024, window: 8, totalBytes: 50, crc32: 1, sha256: SHA, appName: '', force: false });
  t.deepEqual([...raw.subarray(47)], [0, 0, 0, 0, 0, 50]);
  const lying = Buffer.from(raw);
  lying.writeUInt32BE(49, 49);
  t.like(decodeOpen(lying), { ok: false, error: { offset: 49 } });
  // bad encoding code, a missing block, a patch without its base
  const bad = Buffer.from(z);
  bad[47] = 7;
  t.like(decodeOpen(bad), { ok: false, error: { offset: 47 } });
  t.like(decodeOpen(z.subarray(0, 50)), { ok: false, error: { offset: 47 } });
  t.like(decodeOpen(patch.subarray(0, patch.length - 1)), { ok: false, error: { offset: 49 } });
  // version 2 is unchanged: no block, and one is refused
  const v2 = encodeOpen({ version: 2, chunkSize: 1024, window: 8, totalBytes: 50, crc32: 1, sha256: SHA, appName: '', force: false, encoding: { kind: 'deflate', windowBits: 12, streamBytes: 9, baseSha256: null } });
  t.is(v2.length, 47);
  t.like(decodeOpen(v2), { ok: true, value: { version: 2 } });
  t.is((decodeOpen(v2) as { value: { encoding?: unknown } }).value.encoding, undefined);
});

test('ACCEPT version 3 carries the caps in flags; versions 1 and 2 keep 0', (t) => {
  const a3 = encodeAccept({ version: 3, chunkSize: 512, window: 4, resumeOffset: 1024, caps: 0x03 });
  t.deepEqual([...a3], [3, 3, 0x02, 0x00, 0, 4, 0, 0, 0x04, 0]);
  t.like(decodeAccept(a3), { ok: true, value: { caps: 3, resumeOffset: 1024 } });
  const a2 = encodeAccept({ version: 2, chunkSize: 512, window: 4, resumeOffset: 0, caps: 0x03 });
  t.is(a2[1], 0);
  t.is((decodeAccept(a2) as { value: { caps?: number } }).value.caps, undefined);
});

test('INFO CODEC block (flag bit 3): caps, window, RAM; absent in a version 2 answer', (t) => {
  const m: InfoMessage = { app_name: 'a', version: '', sha256: 'ab'.repeat(32), slots: [], slot_bytes: 65536, codec: { deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096 } };
  const p = encodeInfo(m);
  t.is(p[0], 0x01 | 0x02 | 0x08);
  t.deepEqual([...p.subarray(p.length - 4)], [0x03, 12, 0x10, 0x00]);
  t.like(decodeInfo(p), { ok: true, value: { codec: { deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096 } } });
  const old = encodeInfo({ ...m, codec: null });
  t.is(old[0], 0x03);
  t.is(old.length, p.length - 4);
  const badCaps = Buffer.from(p);
  badCaps[p.length - 4] = 0x04;
  t.like(decodeInfo(badCaps), { ok: false, error: { offset: p.length - 4 } });
  t.like(decodeInfo(p.subarray(0, p.length - 1)), { ok: false, error: { offset: p.length - 4 } });
  t.deepEqual([...encodeInfoRequest()], [2], 'a scan still asks in version 2');
  t.deepEqual([...encodeInfoRequest(3)], [3]);
});
