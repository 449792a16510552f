/**
 * docs/can_protocol.md "Compressed and delta transfers", checked by hand: ANNOUNCE version 2 (the
 * encoded stream), the PROBE flag, JOINX, VERDICT flags REASON and BASE_MISMATCH, every example frame
 * built byte by byte, compared with the encoders, decoded back and looked up in the page; the assembler
 * takes a version 2 announce in any part order; and the receive RAM of docs/delta.md, computed.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { ProvOp, provId } from '../src/link/can/ids.js';
import {
  AnnounceAssembler, AnnounceFlag, decodeAnnounceBody, decodeJoin, decodeJoinX, decodeVerdict, encodeAnnounceBody, encodeAnnounceParts, encodeJoin,
  encodeJoinX, encodeVerdict, JoinFlag, VERDICT_REASONS, verdictReasonCode, VerdictFlag, type Announce,
} from '../src/link/can/messages.js';
import { canStreamRamBytes } from '../src/link/can/stream-ram.js';

const doc = readFileSync(new URL('../docs/can_protocol.md', import.meta.url), 'utf8');
const deltaDoc = readFileSync(new URL('../docs/delta.md', import.meta.url), 'utf8');
const hex = (id: number, bytes: Uint8Array | number[]): string =>
  `0x${id.toString(16).toUpperCase().padStart(3, '0')}  ${[...bytes].map((b) => b.toString(16).toUpperCase().padStart(2, '0')).join(' ')}`;
function documented(t: import('ava').ExecutionContext, id: number, encoded: Uint8Array, byHand: number[]): void {
  t.deepEqual([...encoded], byHand, hex(id, byHand));
  t.true(doc.includes(hex(id, byHand)), `docs/can_protocol.md shows ${hex(id, byHand)}`);
}

const base = Uint8Array.from({ length: 32 }, (_, i) => 0x20 + i);
const patchAnnounce: Announce = {
  session: 0x2a, fd: false, chunkSize: 8, window: 64, totalBytes: 313, crc32: 0x12345678,
  sha256: Uint8Array.from({ length: 32 }, (_, i) => i), nodes: [1, 2, 3],
  stream: { encoding: { kind: 'patch' }, streamBytes: 200, streamCrc32: 0xcafebabe, baseSha256: base },
};

test('ANNOUNCE version 2: the 94-byte body, the 16 classic parts of the example, decoded back', (t) => {
  const body = [
    0x02, 0x00, 0x08, 0x40, 0x00, 0x00, 0x01, 0x39, 0x12, 0x34, 0x56, 0x78, ...Array.from({ length: 32 }, (_, i) => i), 0, 0, 0, 0, 0, 0, 0, 0x0e,
    0x02, 0x00, 0x00, 0x00, 0x00, 0xc8, 0xca, 0xfe, 0xba, 0xbe, ...base,
  ];
  t.is(body.length, 94);
  t.deepEqual([...encodeAnnounceBody(patchAnnounce)], body);
  const parts = encodeAnnounceParts(patchAnnounce, 8);
  t.is(parts.length, 16);
  const id = provId({ valueBase: 0, provBase: 0x200, dataBase: 0x400 }, 0, ProvOp.ANNOUNCE);
  documented(t, id, parts[0]!, [0x2a, 0x00, 0x02, 0x00, 0x08, 0x40, 0x00, 0x00]);
  documented(t, id, parts[8]!, [0x2a, 0x08, 0x00, 0x00, 0x00, 0x0e, 0x02, 0x00]);
  documented(t, id, parts[9]!, [0x2a, 0x09, 0x00, 0x00, 0x00, 0xc8, 0xca, 0xfe]);
  documented(t, id, parts[10]!, [0x2a, 0x0a, 0xba, 0xbe, 0x20, 0x21, 0x22, 0x23]);
  documented(t, id, parts[15]!, [0x2a, 0x0f, 0x3c, 0x3d, 0x3e, 0x3f, 0x00, 0x00]);
  t.deepEqual(decodeAnnounceBody(0x2a, Uint8Array.from(body)), patchAnnounce);
  // the compressed form: encoding 1, window 12, no base
  const z: Announce = { ...patchAnnounce, stream: { encoding: { kind: 'deflate', windowBits: 12 }, streamBytes: 200, streamCrc32: 0xcafebabe } };
  t.deepEqual([...encodeAnnounceParts(z, 8)[8]!], [0x2a, 0x08, 0x00, 0x00, 0x00, 0x0e, 0x01, 0x0c]);
  t.true(doc.includes('part 8: `2A 08 00 00 00 0E 01 0C`'));
  t.deepEqual(decodeAnnounceBody(0x2a, encodeAnnounceBody(z)), z);
  // refused: an unknown encoding, an empty stream, a version 2 body cut short
  const bad = Uint8Array.from(body);
  bad[52] = 3;
  t.is(decodeAnnounceBody(0x2a, bad), null, 'encoding 3');
  const empty = Uint8Array.from(body);
  empty.fill(0, 54, 58);
  t.is(decodeAnnounceBody(0x2a, empty), null, 'stream of 0 bytes');
  t.is(decodeAnnounceBody(0x2a, Uint8Array.from(body.slice(0, 60))), null, 'short body');
});

test('the assembler takes version 1 and version 2 announces, parts in any order; PROBE survives the round trip', (t) => {
  const asm = new AnnounceAssembler();
  const parts = encodeAnnounceParts(patchAnnounce, 8);
  const order = [15, 3, 9, 0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13];
  for (const i of order) t.is(asm.push(parts[i]!), null, `part ${i}: not complete yet`);
  t.deepEqual(asm.push(parts[14]!), patchAnnounce);
  // version 1 is complete after 9 parts even though a version 2 body would need 16
  const probe: Announce = { ...patchAnnounce, session: 7, probe: true };
  delete probe.stream;
  const p1 = encodeAnnounceParts(probe, 8);
  t.is(p1.length, 9);
  t.is(p1[0]![3]! & AnnounceFlag.PROBE, AnnounceFlag.PROBE, 'body byte 1 bit 2');
  let got: Announce | null = null;
  for (const p of p1.reverse()) got = asm.push(p) ?? got;
  t.deepEqual(got, probe);
  // FD: two parts of 62 bytes
  const fd = encodeAnnounceParts({ ...patchAnnounce, fd: true, chunkSize: 64 }, 64);
  t.is(fd.length, 2);
  t.is(asm.push(fd[1]!), null);
  t.like(asm.push(fd[0]!), { fd: true, stream: { streamBytes: 200 } });
});

test('JOINX: the table built by hand; masters from before see a JOIN without flags', (t) => {
  const running = Uint8Array.from([0xd5, 0xe6, 0xf7, 0x08]);
  const x = encodeJoinX({ session: 0x2a, deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096, running });
  documented(t, 0x21c, x, [0x2a, 0x00, 0xc3, 0x40, 0xd5, 0xe6, 0xf7, 0x08]);
  documented(t, 0x21c, encodeJoin({ session: 0x2a, flags: JoinFlag.JOINED, have: 0, running: Uint8Array.of(0x3f, 0x2a, 0x1c) }), [0x2a, 0x09, 0x00, 0x00, 0x00, 0x3f, 0x2a, 0x1c]);
  t.deepEqual(decodeJoinX(x), { session: 0x2a, deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096, running, instance: 0 });
  t.like(decodeJoinX(encodeJoinX({ session: 1, deflate: true, patch: false, maxWindowBits: 9, ramBytes: 1000, instance: 11 })),
    { deflate: true, patch: false, maxWindowBits: 9, ramBytes: 960, instance: 11 }, 'RAM rounds down to 64-byte units');
  t.is(encodeJoinX({ session: 1, deflate: true, patch: true, maxWindowBits: 12, ramBytes: 1 << 20 })[3], 255, 'capped at 16,320 bytes');
  t.like(decodeJoin(x), { flags: 0 }, 'an older master decodes a JOIN with no flag: it joins nothing');
  t.is(decodeJoinX(encodeJoin({ session: 0x2a, flags: JoinFlag.JOINED, have: 0 })), null, 'a JOIN with flags is not a JOINX');
  t.is(decodeJoinX(x.subarray(0, 7)), null, 'short');
});

test('VERDICT flags REASON and BASE_MISMATCH: the examples built by hand and the reason codes', (t) => {
  t.deepEqual([VerdictFlag.UPDATED, VerdictFlag.REASON, VerdictFlag.BASE_MISMATCH], [1, 2, 4]);
  const base = encodeVerdict({ session: 0x2a, status: 1, where: 1, flags: VerdictFlag.REASON | VerdictFlag.BASE_MISMATCH, crc32: verdictReasonCode('base_mismatch') });
  documented(t, 0x21f, base, [0x2a, 0x01, 0x01, 0x06, 0x00, 0x00, 0x00, 0x02]);
  documented(t, 0x21f, encodeVerdict({ session: 0x2a, status: 1, where: 3, flags: VerdictFlag.REASON, crc32: verdictReasonCode('transfer_crc_mismatch') }),
    [0x2a, 0x01, 0x03, 0x02, 0x00, 0x00, 0x00, 0x15]);
  t.like(decodeVerdict(base), { status: 1, where: 1, flags: 6, crc32: 2 });
  t.is(verdictReasonCode('no_such_reason'), 0);
  // the page lists every code with its name
  VERDICT_REASONS.forEach((name, code) => {
    if (code > 0) t.true(doc.includes(`${code} \`${name}\``), `code ${code} ${name} in the page`);
  });
});

test('receive RAM of an encoded stream (docs/delta.md): computed, inside 4 KiB besides flash', (t) => {
  const z = canStreamRamBytes({ kind: 'deflate', windowBits: 12 });
  const p11 = canStreamRamBytes({ kind: 'patch', windowBits: 11 });
  t.deepEqual(z, { total: 1633, decoder: 1413, receive: 220 });
  t.deepEqual(p11, { total: 3825, decoder: 3605, receive: 220 });
  t.is(canStreamRamBytes({ kind: 'patch', windowBits: 11 }, true).total, 3881);
  t.is(canStreamRamBytes({ kind: 'patch', windowBits: 10 }).total, 2801);
  t.true(p11.total <= 4096 && z.total <= 4096);
  for (const figure of ['**220** (FD 276)', '1,413 + 220 = **1,633 bytes**', '3,605 + 220 = **3,825 bytes** (FD 3,881)', '2,801']) t.true(deltaDoc.includes(figure), figure);
});
