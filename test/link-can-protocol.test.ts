/**
 * docs/can_protocol.md, checked: every example frame of the page is built here by hand, compared
 * with the encoders, decoded back, and looked up in the page. Plus the identifier plan, sequence
 * reconstruction, the missing-chunk report and the announce assembler. (Pure code: the same on every
 * lane.)
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { ChunkSet } from '../src/link/can/chunk-set.js';
import { BROADCAST, classifyId, dataId, DEFAULT_ID_PLAN, expandSeq, idPlanProblem, ProvOp, provId, ValueOp, valueId } from '../src/link/can/ids.js';
import {
  AnnounceAssembler, CtrlKind, decodeAck, decodeAnnounceBody, decodeCtrl, decodeJoin, decodeMissing, decodeSync, decodeValue, decodeVerdict,
  encodeAck, encodeAnnounceBody, encodeAnnounceParts, encodeCtrl, encodeGet, encodeJoin, encodeMissingBitmap, encodeMissingRange, encodePub, encodeRet,
  encodeSet, encodeSync, encodeVerdict, JoinFlag, shortSha, statusCode, statusName, VerdictFlag, type Announce,
} from '../src/link/can/messages.js';

const doc = readFileSync(new URL('../docs/can_protocol.md', import.meta.url), 'utf8');
const plan = DEFAULT_ID_PLAN;
const hex = (id: number, bytes: Uint8Array | number[]): string =>
  `0x${id.toString(16).toUpperCase().padStart(3, '0')}  ${[...bytes].map((b) => b.toString(16).toUpperCase().padStart(2, '0')).join(' ')}`;

/** The frame is what the page shows, and the encoder produces exactly it. */
function documented(t: import('ava').ExecutionContext, id: number, encoded: Uint8Array, byHand: number[]): void {
  t.deepEqual([...encoded], byHand, hex(id, byHand));
  t.true(doc.includes(hex(id, byHand)), `docs/can_protocol.md shows ${hex(id, byHand)}`);
}

const example: Announce = {
  session: 0x2a, fd: false, chunkSize: 8, window: 64, totalBytes: 313, crc32: 0x12345678,
  sha256: Uint8Array.from({ length: 32 }, (_, i) => i), nodes: [1, 2, 3],
};

test('ANNOUNCE: body table and the classic parts of the example', (t) => {
  const body = [0x01, 0x00, 0x08, 0x40, 0x00, 0x00, 0x01, 0x39, 0x12, 0x34, 0x56, 0x78, ...Array.from({ length: 32 }, (_, i) => i), 0, 0, 0, 0, 0, 0, 0, 0x0e];
  t.deepEqual([...encodeAnnounceBody(example)], body);
  const parts = encodeAnnounceParts(example, 8);
  t.is(parts.length, 9);
  t.is(provId(plan, BROADCAST, ProvOp.ANNOUNCE), 0x200);
  documented(t, 0x200, parts[0]!, [0x2a, 0x00, 0x01, 0x00, 0x08, 0x40, 0x00, 0x00]);
  documented(t, 0x200, parts[1]!, [0x2a, 0x01, 0x01, 0x39, 0x12, 0x34, 0x56, 0x78]);
  documented(t, 0x200, parts[8]!, [0x2a, 0x08, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x00]);
  t.deepEqual(decodeAnnounceBody(0x2a, Uint8Array.from(body)), example);
  // FD: the whole body in one frame.
  const fd = encodeAnnounceParts({ ...example, fd: true, chunkSize: 64 }, 64);
  t.is(fd.length, 1);
  t.is(fd[0]!.length, 64);
  // Impossible announces decode to null: bad version, no nodes, node 0, chunk larger than the frame.
  const bad = (patch: (b: Uint8Array) => void): Announce | null => {
    const b = Uint8Array.from(body);
    patch(b);
    return decodeAnnounceBody(1, b);
  };
  t.is(bad((b) => (b[0] = 2)), null);
  t.is(bad((b) => (b[51] = 0)), null);
  t.is(bad((b) => (b[51] = 0x0f)), null);
  t.is(bad((b) => (b[2] = 9)), null);
  t.is(decodeAnnounceBody(1, Uint8Array.from(body).subarray(0, 51)), null);
});

test('announce parts assemble in any order, repeated or mixed with another session', (t) => {
  const parts = encodeAnnounceParts(example, 8);
  const asm = new AnnounceAssembler();
  const order = [8, 3, 0, 3, 5, 1, 7, 2, 4];
  for (const i of order) t.is(asm.push(parts[i]!), null);
  t.deepEqual(asm.push(parts[6]!), example);
  // Parts of another session interleaved with ours: both assemble.
  const other = encodeAnnounceParts({ ...example, session: 7, totalBytes: 999 }, 8);
  let mine = null;
  let theirs = null;
  for (let i = 0; i < 9; i++) {
    theirs = asm.push(other[i]!) ?? theirs;
    mine = asm.push(parts[i]!) ?? mine;
  }
  t.deepEqual(mine, example);
  t.is(theirs!.totalBytes, 999);
  t.is(asm.push(Uint8Array.of(1, 99, 0)), null, 'a part index beyond the body is ignored');
});

test('SYNC, CTRL, JOIN, ACK, MISSING and VERDICT examples', (t) => {
  documented(t, provId(plan, BROADCAST, ProvOp.SYNC), encodeSync({ session: 0x2a, base: 0x100, blockCrc: 0xcafebabe }), [0x2a, 0x00, 0x01, 0x00, 0xca, 0xfe, 0xba, 0xbe]);
  t.deepEqual(decodeSync(Uint8Array.of(0x2a, 0x00, 0x01, 0x00, 0xca, 0xfe, 0xba, 0xbe)), { session: 0x2a, base: 0x100, blockCrc: 0xcafebabe });
  documented(t, provId(plan, BROADCAST, ProvOp.CTRL), encodeCtrl({ session: 0x2a, kind: CtrlKind.REPORT, round: 1 }), [0x2a, 0x01, 0x01]);
  t.is(provId(plan, 3, ProvOp.CTRL), 0x21a);
  documented(t, 0x21a, encodeCtrl({ session: 0x2a, kind: CtrlKind.REPORT, round: 2 }), [0x2a, 0x01, 0x02]);
  t.deepEqual(decodeCtrl(Uint8Array.of(0x2a, 0x01, 0x02)), { session: 0x2a, kind: 1, round: 2 });
  t.is(provId(plan, 3, ProvOp.JOIN), 0x21c);
  documented(t, 0x21c, encodeJoin({ session: 0x2a, flags: JoinFlag.JOINED, have: 0 }), [0x2a, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
  t.deepEqual(decodeJoin(Uint8Array.of(0x2a, 0x02, 0, 0, 5)), { session: 0x2a, flags: JoinFlag.NEED_ANNOUNCE, have: 5, instance: 0 }, 'a 5-byte JOIN still decodes');
  documented(t, provId(plan, 3, ProvOp.ACK), encodeAck({ session: 0x2a, next: 0x80, missing: 0 }), [0x2a, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]);
  t.deepEqual(decodeAck(Uint8Array.of(0x2a, 0, 0, 0x80, 0, 0, 3)), { session: 0x2a, next: 0x80, missing: 3, polled: false });
  documented(t, 0x21d, encodeAck({ session: 0x2a, next: 0x2c0, missing: 5, polled: true }), [0x2a, 0x00, 0x02, 0xc0, 0x80, 0x00, 0x05]);
  t.deepEqual(decodeAck(Uint8Array.of(0x2a, 0x00, 0x02, 0xc0, 0x80, 0x00, 0x05)), { session: 0x2a, next: 0x2c0, missing: 5, polled: true });

  // MISSING: chunks 0x40, 0x42, 0x47 as a bitmap (MSB first), and 0x100..0x2FF as a range.
  const bitmap = encodeMissingBitmap(0x2a, 0x40, Uint8Array.of(0b1010_0001, 0, 0, 0), true);
  documented(t, provId(plan, 3, ProvOp.MISSING), bitmap, [0x2a, 0x40, 0x00, 0x40, 0xa1, 0x00, 0x00, 0x00]);
  t.deepEqual(decodeMissing(bitmap, 1000), { session: 0x2a, last: true, start: 0x40, seqs: [0x40, 0x42, 0x47] });
  const range = encodeMissingRange(0x2a, 0x100, 0x200, true);
  documented(t, 0x21e, range, [0x2a, 0xc0, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00]);
  const decoded = decodeMissing(range, 0x180)!;
  t.is(decoded.seqs.length, 0x80, 'a range is clipped to the image');
  t.is(decodeMissing(Uint8Array.of(0x2a, 0xc0, 0, 0, 0xff, 0xff, 0xff, 0xff), 10)!.seqs.length, 10, 'a hostile count allocates nothing beyond the image');

  documented(t, provId(plan, 3, ProvOp.VERDICT), encodeVerdict({ session: 0x2a, status: 0, where: 0, crc32: 0x12345678 }), [0x2a, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
  documented(t, 0x21f, encodeVerdict({ session: 0x2a, status: 1, where: 4, crc32: 0 }), [0x2a, 0x01, 0x04, 0, 0, 0, 0, 0]);
  t.deepEqual(decodeVerdict(Uint8Array.of(0x2a, 1, 4, 0, 0, 0, 0, 0)), { session: 0x2a, status: 1, where: 4, flags: 0, crc32: 0 });
  for (const dec of [decodeSync, decodeCtrl, decodeJoin, decodeAck, decodeVerdict]) t.is(dec(Uint8Array.of(0x2a)), null, 'short frames decode to null');
});

test('value binding examples: GET, SET and RET of 1:2 on node 5', (t) => {
  t.is(valueId(plan, 5, ValueOp.GET), 0x028);
  documented(t, 0x028, encodeGet(0x0102), [0x01, 0x02]);
  documented(t, valueId(plan, 5, ValueOp.SET), encodeSet(0x0102, 0x4d60), [0x01, 0x02, 0x4d, 0x60]);
  documented(t, valueId(plan, 5, ValueOp.RET), encodeRet({ oid: 0x0102, raw: 0x4d60, status: 0 }), [0x01, 0x02, 0x4d, 0x60, 0x00]);
  t.deepEqual(decodeValue(Uint8Array.of(1, 2, 0x4d, 0x60, 6), 'ret'), { oid: 0x0102, raw: 0x4d60, status: 6 });
  t.is(decodeValue(Uint8Array.of(1, 2, 3), 'set'), null);
});

test('value binding example: PUB of 3:4 = -2.5 from node 9', (t) => {
  t.is(valueId(plan, 9, ValueOp.PUB), 0x04a);
  documented(t, 0x04a, encodePub(0x0304, 0xc100), [0x03, 0x04, 0xc1, 0x00]);
  t.deepEqual(decodeValue(Uint8Array.of(3, 4, 0xc1, 0x00), 'pub'), { oid: 0x0304, raw: 0xc100, status: 0 });
  t.is(decodeValue(Uint8Array.of(3, 4, 0xc1), 'pub'), null);
  t.deepEqual(classifyId(plan, 0x04a), { kind: 'value', node: 9, op: ValueOp.PUB });
});

test('identifier plan: three disjoint ranges, data sequence in the identifier', (t) => {
  t.is(idPlanProblem(plan), null);
  t.is(dataId(plan, 1029), 0x405);
  t.true(doc.includes('0x405  (8 image bytes 8232..8239)'));
  t.deepEqual(classifyId(plan, 0x405), { kind: 'data', low: 5 });
  t.deepEqual(classifyId(plan, 0x21e), { kind: 'prov', node: 3, op: ProvOp.MISSING });
  t.deepEqual(classifyId(plan, 0x02c), { kind: 'value', node: 5, op: ValueOp.RET });
  t.deepEqual(classifyId(plan, 0x1fffffff), { kind: 'other' });
  const swapped = { valueBase: 0x200, provBase: 0x000, dataBase: 0x400 };
  t.is(idPlanProblem(swapped), null);
  t.deepEqual(classifyId(swapped, 0x21e), { kind: 'value', node: 3, op: 6 });
  t.regex(idPlanProblem({ valueBase: 0x100, provBase: 0x200, dataBase: 0x400 })!, /multiple of 0x200/);
  t.regex(idPlanProblem({ valueBase: 0x200, provBase: 0x200, dataBase: 0x400 })!, /differ/);
  // Every identifier the plan can produce lands in exactly its own range.
  for (let node = 0; node < 64; node++) {
    for (let op = 0; op < 8; op++) {
      t.deepEqual(classifyId(plan, provId(plan, node, op)), { kind: 'prov', node, op });
      t.deepEqual(classifyId(plan, valueId(plan, node, op)), { kind: 'value', node, op });
    }
  }
});

test('sequence reconstruction picks the candidate nearest the reference, across 10-bit wraps', (t) => {
  let checked = 0;
  for (const ref of [0, 1, 511, 512, 1000, 1023, 1024, 5000, 8191]) {
    for (let d = -511; d <= 511; d += 7) {
      const seq = ref + d;
      if (seq < 0) continue;
      t.is(expandSeq(seq & 0x3ff, ref), seq);
      checked++;
    }
  }
  t.log(`${checked} (reference, sequence) pairs`);
});

test('missing-chunk report: ranges for runs, bitmaps for holes, capped, and decoded back exactly', (t) => {
  const set = new ChunkSet(5000);
  const missing = new Set<number>();
  for (let s = 0; s < 5000; s++) {
    const lost = (s >= 1000 && s < 1400) || s % 97 === 0 || s === 4999;
    if (lost) missing.add(s);
    else set.add(s);
  }
  t.is(set.held, 5000 - missing.size);
  t.is(set.nextMissing(1), 97);
  const frames = set.report(9, 4, 1000);
  const got = new Set<number>();
  let last = 0;
  for (const f of frames) {
    const m = decodeMissing(f, 5000)!;
    for (const s of m.seqs) got.add(s);
    if (m.last) last++;
  }
  t.deepEqual([...got].sort((a, b) => a - b), [...missing].sort((a, b) => a - b));
  t.is(last, 1);
  t.true(frames.some((f) => (f[1]! & 0x80) !== 0), 'the 400-chunk run went out as a RANGE frame');
  t.true(frames.length < missing.size / 2, `${frames.length} frames for ${missing.size} missing chunks`);
  // FD bitmaps cover 480 chunks per frame; a capped report names a prefix and ends with LAST.
  const fd = set.report(9, 60, 1000);
  t.true(fd.every((f) => f.length <= 64));
  const capped = set.report(9, 4, 3);
  t.is(capped.length, 3);
  t.true(decodeMissing(capped[2]!, 5000)!.last);
});

test('updates and skip: ANNOUNCE FORCE, JOIN CURRENT/RUNNING, VERDICT UPDATED and CURRENT, built by hand', (t) => {
  // ANNOUNCE body byte 1: bit 0 FD, bit 1 FORCE. The example with FORCE, classic: part 0.
  const forced = { ...example, force: true };
  const body = encodeAnnounceBody(forced);
  t.is(body[1], 0x02);
  documented(t, 0x200, encodeAnnounceParts(forced, 8)[0]!, [0x2a, 0x00, 0x01, 0x02, 0x08, 0x40, 0x00, 0x00]);
  t.deepEqual(decodeAnnounceBody(0x2a, body), forced);
  t.is(encodeAnnounceBody({ ...example, fd: true, chunkSize: 64, force: true })[1], 0x03);
  t.false('force' in decodeAnnounceBody(0x2a, encodeAnnounceBody(example))!, 'no FORCE bit, no force field');

  // JOIN [session, flags, held u24, running[3]]: node 3 joins while it runs 3f2a1c… (JOINED | RUNNING),
  // and node 3 already runs the announced 9b0e44… (CURRENT | RUNNING).
  t.deepEqual([JoinFlag.JOINED, JoinFlag.NEED_ANNOUNCE, JoinFlag.CURRENT, JoinFlag.RUNNING], [1, 2, 4, 8]);
  const running = Uint8Array.of(0x3f, 0x2a, 0x1c);
  const joined = encodeJoin({ session: 0x2a, flags: JoinFlag.JOINED, have: 0, running });
  documented(t, 0x21c, joined, [0x2a, 0x09, 0x00, 0x00, 0x00, 0x3f, 0x2a, 0x1c]);
  t.deepEqual(decodeJoin(joined), { session: 0x2a, flags: JoinFlag.JOINED | JoinFlag.RUNNING, have: 0, running, instance: 0 });
  const current = encodeJoin({ session: 0x2a, flags: JoinFlag.CURRENT, have: 0, running: Uint8Array.of(0x9b, 0x0e, 0x44) });
  documented(t, 0x21c, current, [0x2a, 0x0c, 0x00, 0x00, 0x00, 0x9b, 0x0e, 0x44]);
  t.deepEqual(decodeJoin(Uint8Array.of(0x2a, 0x0c, 0, 0, 0, 0x9b, 0x0e, 0x44)), { session: 0x2a, flags: 0x0c, have: 0, running: Uint8Array.of(0x9b, 0x0e, 0x44), instance: 0 });
  t.is(shortSha(decodeJoin(current)!.running!), '9b0e44');
  // RUNNING without the bytes (a 5-byte frame) is not trusted: the flag is cleared.
  t.deepEqual(decodeJoin(Uint8Array.of(0x2a, 0x09, 0, 0, 0)), { session: 0x2a, flags: JoinFlag.JOINED, have: 0, instance: 0 });

  // VERDICT [session, status, where, flags, crc32]: node 3 READY + UPDATED; node 3 CURRENT (answer to a late REPORT).
  t.is(VerdictFlag.UPDATED, 1);
  const updated = encodeVerdict({ session: 0x2a, status: 0, where: 0, flags: VerdictFlag.UPDATED, crc32: 0x12345678 });
  documented(t, 0x21f, updated, [0x2a, 0x00, 0x00, 0x01, 0x12, 0x34, 0x56, 0x78]);
  t.deepEqual(decodeVerdict(updated), { session: 0x2a, status: 0, where: 0, flags: 1, crc32: 0x12345678 });
  t.is(statusCode('CURRENT'), 10);
  t.is(statusName(10), 'CURRENT');
  const cur = encodeVerdict({ session: 0x2a, status: statusCode('CURRENT'), where: 0, crc32: 0x12345678 });
  documented(t, 0x21f, cur, [0x2a, 0x0a, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78]);
});
