/**
 * Payload layouts of the provisioning and value frames (big-endian, byte 0 of every provisioning
 * frame is the session id). Decoders never throw: a frame of the wrong length or with impossible
 * fields decodes to null and is counted by the caller. Byte tables: docs/can_protocol.md.
 */
import { crc32 } from 'node:zlib';

export const ANNOUNCE_VERSION = 1;
export const ANNOUNCE_BODY_BYTES = 52;
/** Version 2 (issue 25): the version 1 body plus the encoding of the stream the chunks carry. */
export const ANNOUNCE_V2 = 2;
export const ANNOUNCE_V2_BODY_BYTES = 94;
/** ANNOUNCE version 2 byte 52: what the chunks carry (raw keeps version 1, so older listeners take it). */
export const AnnounceEncoding = { DEFLATE: 1, PATCH: 2 } as const;
/** Chunks per block: one SYNC frame (position + CRC-32 of the block) per block. */
export const BLOCK_CHUNKS = 256;

export const CtrlKind = { REPORT: 1, STATUS: 2, ABORT: 3, FINISH: 4 } as const;
export const JoinFlag = { JOINED: 1, NEED_ANNOUNCE: 2, CURRENT: 4, RUNNING: 8 } as const;
/** ANNOUNCE body byte 1. */
export const AnnounceFlag = { FD: 1, FORCE: 2, PROBE: 4 } as const;
/**
 * VERDICT byte 3. REASON: bytes 4..7 of a failed verdict carry a reason code (VERDICT_REASONS) instead of
 * the CRC-32; BASE_MISMATCH: a patch was refused at the announce because the active slot does not hash to
 * its base (the master sends that node the full image).
 */
export const VerdictFlag = { UPDATED: 1, REASON: 2, BASE_MISMATCH: 4 } as const;
/** Reason codes of a failed VERDICT with flag REASON (index = code; 0: none). */
export const VERDICT_REASONS = [
  '', 'sha256_mismatch', 'base_mismatch', 'base_size_mismatch', 'encoding_unsupported', 'crc_mismatch', 'stream_crc_mismatch',
  'window_exceeded', 'output_overflow', 'truncated', 'copy_beyond_base', 'seek_beyond_base', 'length_overflow', 'bad_header',
  'bad_magic', 'target_too_large', 'image_too_large', 'exceeds_total', 'distance_before_start', 'bad_symbol', 'bad_code_lengths',
  'transfer_crc_mismatch', 'crc_invalid', 'bad_block_type', 'stored_length_mismatch', 'trailing_data', 'bad_version', 'incomplete',
  'base_sha256_invalid', 'stream_size_invalid',
] as const;
export const verdictReasonCode = (reason: string): number => Math.max(0, VERDICT_REASONS.indexOf(reason as (typeof VERDICT_REASONS)[number]));
export const MissingFlag = { LAST: 1, RANGE: 2 } as const;

/** Wire codes for verdicts and value replies (0 = READY / ok). */
export const STATUS_CODES = ['OK', 'EBADMSG', 'ENOSPC', 'ESRCH', 'EBUSY', 'EEXIST', 'EPERM', 'ETIMEDOUT', 'ECANCELED', 'EINVAL', 'CURRENT'] as const;
export type StatusName = (typeof STATUS_CODES)[number];
export const WHERE_CODES = ['none', 'begin', 'write', 'end', 'verify', 'register', 'persist', 'transfer'] as const;
export type WhereName = (typeof WHERE_CODES)[number];

export const statusCode = (name: string): number => Math.max(0, STATUS_CODES.indexOf(name as StatusName));
export const statusName = (code: number): StatusName | `E#${number}` => STATUS_CODES[code] ?? `E#${code}`;
export const whereCode = (name: string): number => Math.max(0, WHERE_CODES.indexOf(name as WhereName));
export const whereName = (code: number): WhereName | `W#${number}` => WHERE_CODES[code] ?? `W#${code}`;

const u24 = (b: Uint8Array, o: number): number => ((b[o]! << 16) | (b[o + 1]! << 8) | b[o + 2]!) >>> 0;
const u32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
function put24(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 16) & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = v & 0xff;
}
function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

// ---------------------------------------------------------------------------------------------
// ANNOUNCE: a 52-byte body cut into parts of (frame payload − 2) bytes: [session, part, bytes…]

export interface Announce {
  session: number;
  fd: boolean;
  chunkSize: number;
  /** Data frames per flow-control window. */
  window: number;
  totalBytes: number;
  crc32: number;
  sha256: Uint8Array;
  /** Target node ids (1..63). */
  nodes: number[];
  /** Receive even when the node already runs this image (body byte 1 bit 1). */
  force?: boolean;
  /**
   * Body byte 1 bit 2: a probe (issue 25). A node answers what it runs and decodes (JOINX, then JOIN
   * JOINED with RUNNING) or CURRENT, and opens nothing; the master plans from the answers and FINISHes it.
   */
  probe?: boolean;
  /** Version 2: the chunks carry this encoded stream of the image (absent: the raw image, version 1). */
  stream?: AnnounceStream;
}

/** What a version 2 announce says about the encoded stream (totalBytes, crc32 and sha256 stay the image's). */
export interface AnnounceStream {
  encoding: { kind: 'deflate'; windowBits: number } | { kind: 'patch' };
  /** Length of the encoded stream: chunks are numbered in it. */
  streamBytes: number;
  /** CRC-32 of the whole encoded stream (which blocks to collect again when the stream does not add up). */
  streamCrc32: number;
  /** A patch's base: the SHA-256 the node's active slot must hash to (32 bytes). */
  baseSha256?: Uint8Array;
}

export const announceBodyBytes = (version: number): number => (version === ANNOUNCE_V2 ? ANNOUNCE_V2_BODY_BYTES : ANNOUNCE_BODY_BYTES);

export function encodeAnnounceBody(a: Announce): Uint8Array {
  const b = new Uint8Array(a.stream ? ANNOUNCE_V2_BODY_BYTES : ANNOUNCE_BODY_BYTES);
  b[0] = a.stream ? ANNOUNCE_V2 : ANNOUNCE_VERSION;
  b[1] = (a.fd ? AnnounceFlag.FD : 0) | (a.force ? AnnounceFlag.FORCE : 0) | (a.probe ? AnnounceFlag.PROBE : 0);
  b[2] = a.chunkSize;
  b[3] = a.window;
  put32(b, 4, a.totalBytes);
  put32(b, 8, a.crc32);
  b.set(a.sha256.subarray(0, 32), 12);
  let hi = 0;
  let lo = 0;
  for (const n of a.nodes) {
    if (n >= 32) hi |= 1 << (n - 32);
    else lo |= 1 << n;
  }
  put32(b, 44, hi >>> 0);
  put32(b, 48, lo >>> 0);
  const st = a.stream;
  if (st) {
    b[52] = st.encoding.kind === 'deflate' ? AnnounceEncoding.DEFLATE : AnnounceEncoding.PATCH;
    b[53] = st.encoding.kind === 'deflate' ? st.encoding.windowBits : 0;
    put32(b, 54, st.streamBytes);
    put32(b, 58, st.streamCrc32);
    if (st.baseSha256) b.set(st.baseSha256.subarray(0, 32), 62);
  }
  return b;
}

/** Null when the body is malformed (wrong version, impossible sizes, no node bits). */
export function decodeAnnounceBody(session: number, b: Uint8Array): Announce | null {
  if (b[0] !== ANNOUNCE_VERSION && b[0] !== ANNOUNCE_V2) return null;
  if (b.length < announceBodyBytes(b[0]!)) return null;
  const fd = (b[1]! & AnnounceFlag.FD) !== 0;
  const force = (b[1]! & AnnounceFlag.FORCE) !== 0;
  const probe = (b[1]! & AnnounceFlag.PROBE) !== 0;
  const chunkSize = b[2]!;
  const window = b[3]!;
  if (chunkSize < 1 || chunkSize > (fd ? 64 : 8) || window < 1) return null;
  const nodes: number[] = [];
  const hi = u32(b, 44);
  const lo = u32(b, 48);
  for (let n = 1; n < 64; n++) if (n >= 32 ? (hi >>> (n - 32)) & 1 : (lo >>> n) & 1) nodes.push(n);
  if (nodes.length === 0 || (lo & 1) !== 0) return null;
  const a: Announce = { session, fd, chunkSize, window, totalBytes: u32(b, 4), crc32: u32(b, 8), sha256: b.slice(12, 44), nodes };
  if (force) a.force = true;
  if (probe) a.probe = true;
  if (b[0] === ANNOUNCE_V2) {
    const kind = b[52];
    const streamBytes = u32(b, 54);
    if (streamBytes === 0) return null;
    if (kind === AnnounceEncoding.DEFLATE) {
      a.stream = { encoding: { kind: 'deflate', windowBits: b[53]! }, streamBytes, streamCrc32: u32(b, 58) };
    } else if (kind === AnnounceEncoding.PATCH) {
      a.stream = { encoding: { kind: 'patch' }, streamBytes, streamCrc32: u32(b, 58), baseSha256: b.slice(62, 94) };
    } else return null;
  }
  return a;
}

export const announcePartBytes = (frameMax: number): number => frameMax - 2;
export const announceParts = (frameMax: number, version = ANNOUNCE_VERSION): number => Math.ceil(announceBodyBytes(version) / announcePartBytes(frameMax));

export function encodeAnnounceParts(a: Announce, frameMax: number): Uint8Array[] {
  const body = encodeAnnounceBody(a);
  const per = announcePartBytes(frameMax);
  const parts: Uint8Array[] = [];
  for (let p = 0; p < announceParts(frameMax, body[0]); p++) {
    const slice = body.subarray(p * per, p * per + per);
    const f = new Uint8Array(2 + per);
    f[0] = a.session;
    f[1] = p;
    f.set(slice, 2);
    parts.push(f);
  }
  return parts;
}

/**
 * Collects announce parts per session (a few sessions at once, so interleaved announces of another
 * master cannot keep ours from assembling); the part size is taken from the frame's length.
 */
export class AnnounceAssembler {
  private readonly pending = new Map<number, { body: Uint8Array; per: number; got: Set<number> }>();

  /** Returns the announce once every part of one session arrived, else null (the body length follows from part 0's version). */
  push(data: Uint8Array): Announce | null {
    if (data.length < 3) return null;
    const session = data[0]!;
    const part = data[1]!;
    const per = data.length - 2;
    let p = this.pending.get(session);
    if (!p || p.per !== per) {
      p = { body: new Uint8Array(Math.ceil(ANNOUNCE_V2_BODY_BYTES / per) * per), per, got: new Set() };
      this.pending.delete(session);
      this.pending.set(session, p);
      if (this.pending.size > 4) this.pending.delete(this.pending.keys().next().value!);
    }
    if (part * per >= ANNOUNCE_V2_BODY_BYTES) return null;
    p.got.add(part);
    p.body.set(data.subarray(2), part * per);
    if (!p.got.has(0)) return null;
    const version = p.body[0]!;
    if (version !== ANNOUNCE_VERSION && version !== ANNOUNCE_V2) return null;
    const needed = Math.ceil(announceBodyBytes(version) / per);
    for (let i = 0; i < needed; i++) if (!p.got.has(i)) return null;
    this.pending.delete(session); // a repeated announce re-assembles from scratch
    return decodeAnnounceBody(session, p.body.subarray(0, needed * per));
  }
}

// ---------------------------------------------------------------------------------------------
// SYNC [session, base u24, crc32 of the block u32]

export interface Sync {
  session: number;
  base: number;
  blockCrc: number;
}

export function encodeSync(s: Sync): Uint8Array {
  const b = new Uint8Array(8);
  b[0] = s.session;
  put24(b, 1, s.base);
  put32(b, 4, s.blockCrc);
  return b;
}

export function decodeSync(b: Uint8Array): Sync | null {
  if (b.length < 8) return null;
  return { session: b[0]!, base: u24(b, 1), blockCrc: u32(b, 4) };
}

// CTRL [session, kind, round]
export interface Ctrl {
  session: number;
  kind: number;
  round: number;
}

export const encodeCtrl = (c: Ctrl): Uint8Array => Uint8Array.of(c.session, c.kind, c.round & 0xff);
export const decodeCtrl = (b: Uint8Array): Ctrl | null => (b.length < 3 ? null : { session: b[0]!, kind: b[1]!, round: b[2]! });

// JOIN [session, flags, have u24, running[3]]: flags JOINED, NEED_ANNOUNCE, CURRENT (the node runs the
// announced image and takes no part in the transfer), RUNNING (bytes 5..7 are the first three bytes of
// the SHA-256 of the image the node runs); the high nibble of the flags byte is the listener's instance
// tag (1..15, drawn at random when it starts; 0 from listeners before it), so two devices answering as
// one node id are told apart (node_id_collision). A 5-byte JOIN (no running field) still decodes.
export const JOIN_INSTANCE_SHIFT = 4;
export interface Join {
  session: number;
  flags: number;
  have: number;
  /** First 3 bytes of the SHA-256 of the image the node runs (flag RUNNING). */
  running?: Uint8Array;
  /** The listener's instance tag, 1..15 (0 or absent: not sent). */
  instance?: number;
}

export function encodeJoin(j: Join): Uint8Array {
  const b = new Uint8Array(8);
  b[0] = j.session;
  b[1] = (j.flags & 0x0f & ~JoinFlag.RUNNING) | (j.running ? JoinFlag.RUNNING : 0) | (((j.instance ?? 0) & 0x0f) << JOIN_INSTANCE_SHIFT);
  put24(b, 2, Math.min(j.have, 0xffffff));
  if (j.running) b.set(j.running.subarray(0, 3), 5);
  return b;
}

export function decodeJoin(b: Uint8Array): Join | null {
  if (b.length < 5) return null;
  const j: Join = { session: b[0]!, flags: b[1]! & 0x0f, have: u24(b, 2), instance: b[1]! >> JOIN_INSTANCE_SHIFT };
  if (b.length >= 8 && (j.flags & JoinFlag.RUNNING) !== 0) j.running = b.slice(5, 8);
  else j.flags &= ~JoinFlag.RUNNING;
  return j;
}

// JOINX [session, flags 0 | instance << 4, caps, ram64, running[3..7]] (issue 25): sent by a listener
// that decodes compressed or delta streams right before its JOIN to a probe (and so, frames of one sender
// arriving in order, before the master counts it as answered). A JOIN frame whose low flag nibble is 0:
// masters from before ignore it. caps: bit 0 deflate, bit 1 patch, bits 4..7 the largest deflate window
// (bits); ram64: RAM the node offers its decoder and patch applier, in units of 64 bytes; running[3..7]:
// bytes 3..6 of the SHA-256 of the image it runs (JOIN's RUNNING carries bytes 0..2): a 7-byte prefix
// the master resolves in its image store. The node checks the whole base SHA-256 at a patch's announce.
export const JoinxCap = { DEFLATE: 1, PATCH: 2 } as const;

export interface JoinX {
  session: number;
  deflate: boolean;
  patch: boolean;
  maxWindowBits: number;
  /** Decoder RAM in bytes (a multiple of 64, at most 16,320). */
  ramBytes: number;
  /** Bytes 3..6 of the running image's SHA-256 (meaningful when the JOIN after it has flag RUNNING). */
  running?: Uint8Array;
  instance?: number;
}

export function encodeJoinX(j: JoinX): Uint8Array {
  const b = new Uint8Array(8);
  b[0] = j.session;
  b[1] = ((j.instance ?? 0) & 0x0f) << JOIN_INSTANCE_SHIFT;
  b[2] = (j.deflate ? JoinxCap.DEFLATE : 0) | (j.patch ? JoinxCap.PATCH : 0) | ((Math.min(15, j.maxWindowBits) & 0x0f) << 4);
  b[3] = Math.min(255, Math.floor(j.ramBytes / 64));
  if (j.running) b.set(j.running.subarray(0, 4), 4);
  return b;
}

/** Null unless an 8-byte JOIN with no flag bits (the JOINX shape). */
export function decodeJoinX(b: Uint8Array): JoinX | null {
  if (b.length < 8 || (b[1]! & 0x0f) !== 0) return null;
  const j: JoinX = {
    session: b[0]!, deflate: (b[2]! & JoinxCap.DEFLATE) !== 0, patch: (b[2]! & JoinxCap.PATCH) !== 0, maxWindowBits: b[2]! >> 4,
    ramBytes: b[3]! * 64, instance: b[1]! >> JOIN_INSTANCE_SHIFT,
  };
  j.running = b.slice(4, 8);
  return j;
}

// ACK [session, next u24, flags(1) | missing(23) u24]: next = highest chunk seen + 1; missing =
// holes below it; POLLED marks the answer to a STATUS poll, sent after every frame before the poll was
// consumed (a sender's frames arrive in order), so the master may count everything it had sent as drained.
export const ACK_POLLED = 0x80_0000;

export interface Ack {
  session: number;
  next: number;
  missing: number;
  polled?: boolean;
}

export function encodeAck(a: Ack): Uint8Array {
  const b = new Uint8Array(7);
  b[0] = a.session;
  put24(b, 1, Math.min(a.next, 0xffffff));
  put24(b, 4, (Math.min(a.missing, ACK_POLLED - 1) | (a.polled ? ACK_POLLED : 0)) >>> 0);
  return b;
}

export function decodeAck(b: Uint8Array): Ack | null {
  if (b.length < 7) return null;
  const m = u24(b, 4);
  return { session: b[0]!, next: u24(b, 1), missing: m & (ACK_POLLED - 1), polled: (m & ACK_POLLED) !== 0 };
}

// MISSING [session, flags(2 bits)|start(22 bits), payload]: a bitmap of the chunks from `start`
// (MSB first), or with RANGE a u32 count of consecutive missing chunks.
export const MAX_START = (1 << 22) - 1;

export interface Missing {
  session: number;
  last: boolean;
  start: number;
  /** Missing chunk sequences this frame names. */
  seqs: number[];
}

export function encodeMissingBitmap(session: number, start: number, bitmap: Uint8Array, last: boolean): Uint8Array {
  const b = new Uint8Array(4 + bitmap.length);
  b[0] = session;
  put24(b, 1, (((last ? MissingFlag.LAST : 0) << 22) | start) >>> 0);
  b.set(bitmap, 4);
  return b;
}

export function encodeMissingRange(session: number, start: number, count: number, last: boolean): Uint8Array {
  const b = new Uint8Array(8);
  b[0] = session;
  put24(b, 1, ((((last ? MissingFlag.LAST : 0) | MissingFlag.RANGE) << 22) | start) >>> 0);
  put32(b, 4, count);
  return b;
}

/** `limit` caps a range so a hostile count cannot make the master allocate without bound. */
export function decodeMissing(b: Uint8Array, limit: number): Missing | null {
  if (b.length < 5) return null;
  const head = u24(b, 1);
  const flags = head >>> 22;
  const start = head & MAX_START;
  const seqs: number[] = [];
  if (flags & MissingFlag.RANGE) {
    if (b.length < 8) return null;
    const end = Math.min(start + u32(b, 4), limit);
    for (let s = start; s < end; s++) seqs.push(s);
  } else {
    for (let i = 4; i < b.length; i++) {
      const byte = b[i]!;
      if (byte === 0) continue;
      for (let j = 0; j < 8; j++) if (byte & (0x80 >> j)) {
        const s = start + (i - 4) * 8 + j;
        if (s < limit) seqs.push(s);
      }
    }
  }
  return { session: b[0]!, last: (flags & MissingFlag.LAST) !== 0, start, seqs };
}

// VERDICT [session, status, where, flags, crc32 of the verified image]; flags bit 0 UPDATED (the image
// replaced a running one)
export interface Verdict {
  session: number;
  status: number;
  where: number;
  /** VerdictFlag bits (0 when absent). */
  flags?: number;
  crc32: number;
}

export function encodeVerdict(v: Verdict): Uint8Array {
  const b = new Uint8Array(8);
  b[0] = v.session;
  b[1] = v.status;
  b[2] = v.where;
  b[3] = (v.flags ?? 0) & 0xff;
  put32(b, 4, v.crc32);
  return b;
}

export const decodeVerdict = (b: Uint8Array): Required<Verdict> | null =>
  b.length < 8 ? null : { session: b[0]!, status: b[1]!, where: b[2]!, flags: b[3]!, crc32: u32(b, 4) };

/** Six hex digits: the first three bytes of a SHA-256 (how masters and people name an image). */
export const shortSha = (sha: Uint8Array | string): string =>
  typeof sha === 'string' ? sha.slice(0, 6).toLowerCase() : Buffer.from(sha.subarray(0, 3)).toString('hex');

// ---------------------------------------------------------------------------------------------
// Value binding: GET [oid u16], SET and PUB [oid u16, f16 raw u16], RET [oid u16, f16 raw u16, status u8]

export interface ValueFrame {
  oid: number;
  raw: number;
  status: number;
}

export const encodeGet = (oid: number): Uint8Array => Uint8Array.of(oid >> 8, oid & 0xff);
export const encodeSet = (oid: number, raw: number): Uint8Array => Uint8Array.of(oid >> 8, oid & 0xff, raw >> 8, raw & 0xff);
export const encodeRet = (v: ValueFrame): Uint8Array => Uint8Array.of(v.oid >> 8, v.oid & 0xff, v.raw >> 8, v.raw & 0xff, v.status);
/** PUB (op 2, node = the sender): a node announces that a value of its changed, `[oid u16, f16 u16]` like SET. */
export const encodePub = (oid: number, raw: number): Uint8Array => encodeSet(oid, raw);

export function decodeValue(b: Uint8Array, op: 'get' | 'set' | 'pub' | 'ret'): ValueFrame | null {
  const need = op === 'get' ? 2 : op === 'set' || op === 'pub' ? 4 : 5;
  if (b.length < need) return null;
  return {
    oid: (b[0]! << 8) | b[1]!,
    raw: op === 'get' ? 0 : (b[2]! << 8) | b[3]!,
    status: op === 'ret' ? b[4]! : 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Scan: INFO_REQ [req, version, spacing ms] from the master (provBase | node<<3 | 3, node 0 = all);
// each node answers with INFO parts [req, part, 6 body bytes] on valueBase | node<<3 | 5. The INFO
// body says what the node runs and what its flash slots hold, and ends with a CRC-32 of itself.

export const INFO_VERSION = 1;
/** Body bytes per INFO frame (classic 8-byte frames, also on an FD bus). */
export const INFO_PART_BYTES = 6;
/** Header (version, flags, length) and CRC-32. */
export const INFO_MIN_BODY = 8;
/** Largest body a decoder accepts (the largest the encoder makes is 218 bytes). */
export const INFO_MAX_BODY = 384;
/** Default per-node answer spacing: node N answers (N − 1) × spacing ms after the request. */
export const INFO_DEFAULT_SPACING_MS = 2;
/** INFO body byte 1. */
export const InfoFlag = { RUNNING: 1, CAPACITY: 2, SLOTS: 4 } as const;
/** Slot byte: state in bits 0..1, ACTIVE in bit 7. */
export const INFO_SLOT_ACTIVE = 0x80;
export const INFO_SLOT_STATES = ['empty', 'test', 'good'] as const;
export type InfoSlotState = (typeof INFO_SLOT_STATES)[number];
/** Field limits (those of the flash manifest: docs/persistence.md). */
export const INFO_MAX_NAME = 32;
export const INFO_MAX_VERSION = 24;

export interface InfoRequest {
  /** Request id 1..255: answers carry it, so answers to an earlier scan are never taken for this one. */
  req: number;
  /** Node N waits (N − 1) × spacing ms before it answers (0..255). */
  spacingMs: number;
}

export const encodeInfoRequest = (r: InfoRequest): Uint8Array => Uint8Array.of(r.req & 0xff, INFO_VERSION, Math.max(0, Math.min(255, r.spacingMs)));

/** Null for a short request or one of another version (a listener ignores it). */
export function decodeInfoRequest(b: Uint8Array): InfoRequest | null {
  if (b.length < 3 || b[1] !== INFO_VERSION || b[0] === 0) return null;
  return { req: b[0]!, spacingMs: b[2]! };
}

/** What a node answers (the shape of link/flasher.ts `InventoryEntry` without its target). */
export interface InfoSlot {
  slot: 'A' | 'B';
  state: InfoSlotState;
  active: boolean;
  sha256: string | null;
  version: string | null;
}

export interface InfoBody {
  app_name: string | null;
  version: string | null;
  sha256: string | null;
  slots: InfoSlot[];
  slot_bytes: number | null;
}

/** Why an INFO body (or one of its frames) was refused: `offset` is the byte offset in the body. */
export interface InfoProblem {
  reason: string;
  offset: number;
  message: string;
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function utf8Cut(s: string, max: number): Uint8Array {
  const b = utf8.encode(s);
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

const SHA_HEX = /^[0-9a-f]{64}$/;

function shaBytes(hex: string | null, what: string): Uint8Array {
  if (hex === null || !SHA_HEX.test(hex.toLowerCase())) throw new RangeError(`INFO: ${what} must be 64 hex digits, got ${String(hex)}`);
  return Buffer.from(hex, 'hex');
}

/**
 * The INFO body (docs/can_protocol.md, "INFO body"): version, flags, length, then the running image
 * (RUNNING), the slot size (CAPACITY), slots A and B (SLOTS), and a CRC-32 of everything before it.
 */
export function encodeInfoBody(info: InfoBody): Uint8Array {
  const out: number[] = [INFO_VERSION, 0, 0, 0];
  const str = (s: string | null, max: number): void => {
    const b = utf8Cut(s ?? '', max);
    out.push(b.length, ...b);
  };
  let flags = 0;
  if (info.sha256 !== null) {
    flags |= InfoFlag.RUNNING;
    out.push(...shaBytes(info.sha256, 'sha256'));
    str(info.app_name, INFO_MAX_NAME);
    str(info.version, INFO_MAX_VERSION);
  }
  if (info.slot_bytes !== null) {
    flags |= InfoFlag.CAPACITY;
    const v = info.slot_bytes >>> 0;
    out.push((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
  }
  if (info.slots.length > 0) {
    flags |= InfoFlag.SLOTS;
    for (const name of ['A', 'B'] as const) {
      const s = info.slots.find((x) => x.slot === name);
      const state = s && s.sha256 !== null ? s.state : 'empty';
      out.push(INFO_SLOT_STATES.indexOf(state) | (s?.active ? INFO_SLOT_ACTIVE : 0));
      if (state !== 'empty') {
        out.push(...shaBytes(s!.sha256, `slot ${name} sha256`));
        str(s!.version, INFO_MAX_VERSION);
      }
    }
  }
  const b = new Uint8Array(out.length + 4);
  b.set(out);
  b[1] = flags;
  b[2] = (b.length >>> 8) & 0xff;
  b[3] = b.length & 0xff;
  put32(b, b.length - 4, crc32(b.subarray(0, b.length - 4)));
  return b;
}

/** Decodes a whole INFO body; a refusal names the reason and the body offset where it was found. */
export function decodeInfoBody(b: Uint8Array): { ok: true; value: InfoBody } | { ok: false; error: InfoProblem } {
  const fail = (reason: string, offset: number, message: string): { ok: false; error: InfoProblem } => ({ ok: false, error: { reason, offset, message } });
  if (b.length < INFO_MIN_BODY) return fail('bad_length', b.length, `INFO body of ${b.length} bytes is shorter than ${INFO_MIN_BODY}`);
  if (b[0] !== INFO_VERSION) return fail('bad_version', 0, `INFO version ${b[0]} is not ${INFO_VERSION}`);
  const len = (b[2]! << 8) | b[3]!;
  if (len < INFO_MIN_BODY || len > INFO_MAX_BODY || len > b.length) return fail('bad_length', 2, `INFO length ${len} is outside ${INFO_MIN_BODY}..${Math.min(INFO_MAX_BODY, b.length)}`);
  const want = u32(b, len - 4);
  const got = crc32(b.subarray(0, len - 4));
  if (want !== got) return fail('crc_mismatch', len - 4, `INFO CRC-32 0x${want.toString(16).padStart(8, '0')} does not match the body (0x${got.toString(16).padStart(8, '0')})`);
  const flags = b[1]!;
  if (flags & ~(InfoFlag.RUNNING | InfoFlag.CAPACITY | InfoFlag.SLOTS)) return fail('bad_flags', 1, `INFO flags 0x${flags.toString(16)} has unknown bits`);
  const end = len - 4;
  let at = 4;
  const need = (n: number, what: string): InfoProblem | null =>
    at + n > end ? { reason: 'field_overrun', offset: at, message: `INFO ${what} (${n} bytes at ${at}) runs past the body's end (${end})` } : null;
  const sha = (what: string): string | InfoProblem => {
    const p = need(32, what);
    if (p) return p;
    const v = Buffer.from(b.subarray(at, at + 32)).toString('hex');
    at += 32;
    return v;
  };
  const str = (what: string, max: number): string | InfoProblem => {
    const p = need(1, `${what} length`);
    if (p) return p;
    const n = b[at]!;
    if (n > max) return { reason: 'bad_field', offset: at, message: `INFO ${what} of ${n} bytes exceeds ${max}` };
    const q = need(1 + n, what);
    if (q) return q;
    let v: string;
    try {
      v = utf8Strict.decode(b.subarray(at + 1, at + 1 + n));
    } catch {
      return { reason: 'bad_field', offset: at + 1, message: `INFO ${what} is not UTF-8` };
    }
    at += 1 + n;
    return v;
  };
  const info: InfoBody = { app_name: null, version: null, sha256: null, slots: [], slot_bytes: null };
  if (flags & InfoFlag.RUNNING) {
    const s = sha('running sha256');
    if (typeof s !== 'string') return { ok: false, error: s };
    const name = str('app name', INFO_MAX_NAME);
    if (typeof name !== 'string') return { ok: false, error: name };
    const version = str('version', INFO_MAX_VERSION);
    if (typeof version !== 'string') return { ok: false, error: version };
    info.sha256 = s;
    info.app_name = name;
    info.version = version;
  }
  if (flags & InfoFlag.CAPACITY) {
    const p = need(4, 'slot size');
    if (p) return { ok: false, error: p };
    info.slot_bytes = u32(b, at);
    at += 4;
  }
  if (flags & InfoFlag.SLOTS) {
    for (const slot of ['A', 'B'] as const) {
      const p = need(1, `slot ${slot}`);
      if (p) return { ok: false, error: p };
      const code = b[at]!;
      const state = INFO_SLOT_STATES[code & 0x03];
      if (!state || (code & 0x7c) !== 0) return fail('bad_slot_state', at, `INFO slot ${slot} byte 0x${code.toString(16)} is not a state (0 empty, 1 test, 2 good; bit 7 active)`);
      at++;
      const entry: InfoSlot = { slot, state, active: (code & INFO_SLOT_ACTIVE) !== 0, sha256: null, version: null };
      if (state !== 'empty') {
        const s = sha(`slot ${slot} sha256`);
        if (typeof s !== 'string') return { ok: false, error: s };
        const v = str(`slot ${slot} version`, INFO_MAX_VERSION);
        if (typeof v !== 'string') return { ok: false, error: v };
        entry.sha256 = s;
        entry.version = v;
      }
      info.slots.push(entry);
    }
  }
  if (at !== end) return fail('trailing_bytes', at, `INFO body has ${end - at} bytes after its last field`);
  return { ok: true, value: info };
}

/** The body cut into INFO frames: [req, part, 6 bytes], the last zero-padded; always 8 bytes. */
export function encodeInfoParts(req: number, body: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let p = 0; p * INFO_PART_BYTES < body.length; p++) {
    const f = new Uint8Array(2 + INFO_PART_BYTES);
    f[0] = req;
    f[1] = p;
    f.set(body.subarray(p * INFO_PART_BYTES, (p + 1) * INFO_PART_BYTES), 2);
    parts.push(f);
  }
  return parts;
}

export type InfoPush =
  | { kind: 'pending' }
  | { kind: 'done'; info: InfoBody }
  | { kind: 'problem'; problem: InfoProblem };

/**
 * Collects one node's INFO frames of one request, in any order. The part count is known from
 * part 0 (the body length); a repeated part must repeat its bytes (else `part_conflict`: two nodes
 * with one id, or a confused one). Once done or refused, it takes nothing more.
 */
export class InfoAssembler {
  private readonly parts = new Map<number, Uint8Array>();
  private needed: number | null = null;
  private ended = false;

  push(data: Uint8Array): InfoPush {
    if (this.ended) return { kind: 'pending' };
    const part = data[1] ?? 0;
    const offset = part * INFO_PART_BYTES;
    const problem = (reason: string, at: number, message: string): InfoPush => {
      this.ended = true;
      return { kind: 'problem', problem: { reason, offset: at, message } };
    };
    if (data.length < 2 + INFO_PART_BYTES) return problem('short_frame', offset, `INFO frame of ${data.length} bytes (part ${part}); every part has 8`);
    const maxParts = this.needed ?? Math.ceil(INFO_MAX_BODY / INFO_PART_BYTES);
    if (part >= maxParts) return problem('part_out_of_range', offset, `INFO part ${part} is beyond the body's ${maxParts} parts`);
    const bytes = data.slice(2, 2 + INFO_PART_BYTES);
    const held = this.parts.get(part);
    if (held) {
      if (Buffer.compare(held, bytes) !== 0) return problem('part_conflict', offset, `INFO part ${part} arrived twice with different bytes (two nodes with one id?)`);
      return { kind: 'pending' };
    }
    this.parts.set(part, bytes);
    if (part === 0) {
      if (bytes[0] !== INFO_VERSION) return problem('bad_version', 0, `INFO version ${bytes[0]} is not ${INFO_VERSION}`);
      const len = (bytes[2]! << 8) | bytes[3]!;
      if (len < INFO_MIN_BODY || len > INFO_MAX_BODY) return problem('bad_length', 2, `INFO length ${len} is outside ${INFO_MIN_BODY}..${INFO_MAX_BODY}`);
      this.needed = Math.ceil(len / INFO_PART_BYTES);
      for (const p of this.parts.keys()) if (p >= this.needed) return problem('part_out_of_range', p * INFO_PART_BYTES, `INFO part ${p} is beyond the body's ${this.needed} parts`);
    }
    if (this.needed === null || this.parts.size < this.needed) return { kind: 'pending' };
    this.ended = true;
    const body = new Uint8Array(this.needed * INFO_PART_BYTES);
    for (const [p, b] of this.parts) body.set(b, p * INFO_PART_BYTES);
    const decoded = decodeInfoBody(body);
    return decoded.ok ? { kind: 'done', info: decoded.value } : { kind: 'problem', problem: decoded.error };
  }

  /** Whether any frame arrived and no verdict was reached. */
  get incomplete(): boolean {
    return !this.ended && this.parts.size > 0;
  }

  /** Body offset of the first part still missing. */
  firstMissing(): number {
    for (let p = 0; ; p++) if (!this.parts.has(p)) return p * INFO_PART_BYTES;
  }

  /** Parts expected (null until part 0 arrived). */
  get partsNeeded(): number | null {
    return this.needed;
  }
}
