/**
 * The listener role: a device on the bus. It joins broadcast transfers that name its node id —
 * or answers CURRENT at once when the device already runs the announced image — collects chunks from
 * data frames (sequence in the identifier), checks each 256-chunk block against the CRC-32 its SYNC
 * frame carries, streams verified blocks into the device's intake (open → write by offset → finish:
 * src/engine/intake.ts, which stages, commits and switches), reports what it lacks as a compact
 * bitmap, and answers with the intake's verdict (READY, READY + UPDATED, or the error). It also
 * serves value GET/SET for its node. The listener never touches the engine or the device's flash.
 *
 * Safety rules (hostile or confused traffic): nothing reaches the intake unless its block CRC or the
 * announced SHA-256 vouches for it; `finish` (and so READY) is only reached after the SHA-256 of the
 * whole image matched the announce; a chunk that disagrees with one already held is a conflict, and
 * a block that fails its CRC is dropped and re-requested. No input makes it throw.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import type { DeviceIntake, EngineError, IntakeVerdict } from '../../engine/index.js';
import type { CanBus } from './bus.js';
import { ChunkSet } from './chunk-set.js';
import type { CanFrame } from './frame.js';
import { classifyId, DEFAULT_ID_PLAN, expandSeq, nodeProblem, ProvOp, provId, ValueOp, valueId, type CanIdPlan } from './ids.js';
import {
  AnnounceAssembler,
  BLOCK_CHUNKS,
  CtrlKind,
  decodeCtrl,
  decodeInfoRequest,
  decodeSync,
  decodeValue,
  encodeAck,
  encodeInfoBody,
  encodeInfoParts,
  encodeJoin,
  encodeJoinX,
  encodeRet,
  encodeVerdict,
  JoinFlag,
  shortSha,
  statusCode,
  VerdictFlag,
  verdictReasonCode,
  whereCode,
  type Announce,
  type InfoBody,
  type Join,
} from './messages.js';

/** The part of the device's intake a listener drives (`inventory` answers a scan; without it, INFO says only what runs). */
export type ListenerIntake = Pick<DeviceIntake, 'open' | 'write' | 'finish' | 'abort' | 'primary' | 'current' | 'getValue' | 'setValue'>
  & Partial<Pick<DeviceIntake, 'inventory' | 'codec'>>;

export interface ListenerOptions {
  bus: CanBus;
  node: number;
  /** The device's intake: decides CURRENT, checks, stages, commits and switches (src/engine/intake.ts). */
  intake: ListenerIntake;
  plan?: CanIdPlan;
  /** Largest image accepted (checked before anything is allocated). */
  maxImageBytes?: number;
  /** A session with no frame from its master for this long is abandoned (intake session aborted). */
  sessionTimeoutMs?: number;
  /** Frames per missing-chunk report; the rest is reported in the next round. */
  maxReportFrames?: number;
  /** Largest `intake.write` piece (the intake cuts it to the engine's maxChunkBytes again). */
  engineChunkBytes?: number;
  /** Times the whole image may fail its SHA-256 and be re-collected before the verdict is EBADMSG. */
  shaRetries?: number;
  onEvent?: (e: ListenerEvent) => void;
  /** Source tag for the intake (`can:IFACE`). */
  source?: string;
}

/**
 * `status`: READY (installed), UPDATED (replaced a running image), CURRENT (the device already ran it;
 * no data moved), or the error code. `from`/`to`: short SHA-256s (6 hex digits).
 */
export type ListenerEvent =
  | { type: 'joined'; session: number; totalBytes: number; chunkSize: number; fd: boolean; encoding: 'raw' | 'deflate' | 'patch'; streamBytes: number }
  | { type: 'probed'; session: number; answer: 'current' | 'running' }
  | { type: 'progress'; session: number; held: number; total: number }
  | { type: 'verdict'; session: number; status: string; where: string; reason: string; pid?: number; appName?: string; from?: string; to?: string }
  | { type: 'conflict'; session: number; what: string }
  | { type: 'value'; op: 'get' | 'set'; oid: number; raw: number; status: string }
  | { type: 'info'; req: number; parts: number };

export interface LocalVerdict {
  /** The wire status: OK (READY), CURRENT, or the error code. */
  status: string;
  where: string;
  reason: string;
  crc32: number;
  pid?: number;
  appName?: string;
  /** OK only: the image replaced a running one (VERDICT flag UPDATED). */
  updated?: boolean;
  /** SHA-256 (hex) of the image replaced (UPDATED) or running (CURRENT). */
  from?: string;
  /** SHA-256 (hex) of the image now running. */
  to?: string;
}

/** Engine errors that mean "the session timed out", not "the image is bad". */
const ENGINE_TIMEOUTS = new Set(['write_timeout', 'total_timeout']);

const BLOCK_WAITING = 0;
const BLOCK_COMPLETE = 1; // every chunk held, no CRC known yet
const BLOCK_VERIFIED = 2;

/** A transfer this listener joined. */
interface Rx {
  a: Announce;
  /** Bytes the chunks carry: the encoded stream (version 2 announce) or the image. */
  streamBytes: number;
  nChunks: number;
  nBlocks: number;
  buf: Uint8Array;
  chunks: ChunkSet;
  blockHeld: Uint16Array;
  blockState: Uint8Array;
  blockCrc: Float64Array; // -1 = unknown
  fedBlocks: number;
  /** The intake session receiving this image (null once finished, aborted or failed). */
  intakeId: number | null;
  ref: number;
  hiSeen: number;
  dutyIndex: number;
  nextDuty: number;
  shaFailures: number;
  engineRenewals: number;
  finishing: boolean;
  finalizing: boolean;
  verdict: LocalVerdict | null;
  lastHeard: number;
}

export class CanListener {
  readonly node: number;
  private readonly plan: CanIdPlan;
  private readonly bus: CanBus;
  private readonly intake: ListenerIntake;
  private readonly opts: Required<Pick<ListenerOptions, 'maxImageBytes' | 'sessionTimeoutMs' | 'maxReportFrames' | 'engineChunkBytes' | 'shaRetries'>>;
  private readonly assembler = new AnnounceAssembler();
  private rx: Rx | null = null;
  private unsubscribe: (() => void) | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private lastNeedAnnounce = -Infinity;
  /** The INFO answer waiting for this node's turn (a newer request replaces it). */
  private infoTimer: NodeJS.Timeout | null = null;
  /** The last finished session and its verdict, so a late REPORT still gets an answer. */
  private finished: { session: number; verdict: LocalVerdict; announce?: Announce } | null = null;
  /** The last probe answered (its FINISH is expected, not a session to ask an announce for). */
  private probed: number | null = null;
  readonly counters = {
    frames: 0, data: 0, duplicates: 0, conflicts: 0, outOfRange: 0, malformed: 0, foreign: 0,
    blockCrcFailures: 0, shaFailures: 0, sessions: 0, dropped: 0, engineRenewals: 0, valueRequests: 0, infoRequests: 0,
  };
  readonly verdicts: Array<LocalVerdict & { session: number }> = [];

  /** This listener's instance tag in every JOIN (1..15; see messages.ts JOIN). */
  readonly instance: number = 1 + Math.floor(Math.random() * 15);

  constructor(private readonly options: ListenerOptions) {
    const bad = nodeProblem(options.node);
    if (bad) throw new RangeError(bad);
    this.node = options.node;
    this.bus = options.bus;
    this.intake = options.intake;
    this.plan = options.plan ?? DEFAULT_ID_PLAN;
    this.opts = {
      maxImageBytes: options.maxImageBytes ?? 1 << 20,
      sessionTimeoutMs: options.sessionTimeoutMs ?? 10_000,
      maxReportFrames: options.maxReportFrames ?? 16,
      engineChunkBytes: options.engineChunkBytes ?? 2048,
      shaRetries: options.shaRetries ?? 2,
    };
  }

  start(): void {
    if (this.unsubscribe) return;
    this.unsubscribe = this.bus.receive((f) => this.onFrame(f));
    this.idleTimer = setInterval(() => this.checkIdle(), Math.max(50, this.opts.sessionTimeoutMs / 4));
    this.idleTimer.unref();
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = null;
    if (this.infoTimer) clearTimeout(this.infoTimer);
    this.infoTimer = null;
    if (this.rx && !this.rx.verdict) this.abandon('ECANCELED', 'listener_stopped', 'listener stopped');
  }

  /** The session in progress (for status displays). */
  get current(): { session: number; held: number; total: number; verdict: LocalVerdict | null } | null {
    const rx = this.rx;
    return rx ? { session: rx.a.session, held: rx.chunks.held, total: rx.nChunks, verdict: rx.verdict } : null;
  }

  private emit(e: ListenerEvent): void {
    try {
      this.options.onEvent?.(e);
    } catch {
      // an observer's bug must not take the device down
    }
  }

  private send(id: number, data: Uint8Array, fd = false): void {
    this.bus.post(fd && data.length > 8 ? { id, data, fd: true } : { id, data });
  }

  private sendProv(op: number, data: Uint8Array, fd = false): void {
    this.send(provId(this.plan, this.node, op), data, fd);
  }

  /** JOIN with this listener's instance tag, so a master can tell two devices on one node id apart. */
  private sendJoin(j: Omit<Join, 'instance'>): void {
    this.sendProv(ProvOp.JOIN, encodeJoin({ ...j, instance: this.instance }));
  }

  // ------------------------------------------------------------------------------------------

  private onFrame(f: CanFrame): void {
    this.counters.frames++;
    if (f.ext) return;
    const c = classifyId(this.plan, f.id);
    if (c.kind === 'data') return this.onData(c.low, f.data);
    if (c.kind === 'value') {
      if (c.node === this.node && (c.op === ValueOp.GET || c.op === ValueOp.SET)) this.onValue(c.op, f.data);
      return;
    }
    if (c.kind !== 'prov' || c.op >= 4) return; // other listeners' replies
    if (c.node !== 0 && c.node !== this.node) return; // addressed to another node
    switch (c.op) {
      case ProvOp.ANNOUNCE:
        if (c.node === 0) this.onAnnouncePart(f.data);
        return;
      case ProvOp.SYNC:
        return this.onSync(f.data);
      case ProvOp.CTRL:
        return this.onCtrl(f.data, c.node === this.node);
      case ProvOp.INFO_REQ:
        return this.onInfoRequest(f.data);
    }
  }

  /**
   * A scan: answer with what the device runs and what its slots hold, (node − 1) × spacing ms after
   * the request, so a bus of nodes answers one after another instead of all at once.
   */
  private onInfoRequest(data: Uint8Array): void {
    const req = decodeInfoRequest(data);
    if (!req) {
      this.counters.malformed++;
      return;
    }
    this.counters.infoRequests++;
    if (this.infoTimer) clearTimeout(this.infoTimer);
    this.infoTimer = null;
    const answer = (): void => {
      this.infoTimer = null;
      if (!this.unsubscribe) return;
      let body: Uint8Array;
      try {
        body = encodeInfoBody(this.inventory());
      } catch {
        this.counters.malformed++; // the device holds something the body cannot say (a malformed SHA-256): stay silent
        return;
      }
      const parts = encodeInfoParts(req.req, body);
      for (const p of parts) this.send(valueId(this.plan, this.node, ValueOp.INFO), p);
      this.emit({ type: 'info', req: req.req, parts: parts.length });
    };
    const delay = (this.node - 1) * req.spacingMs;
    if (delay === 0) return answer();
    this.infoTimer = setTimeout(answer, delay);
    this.infoTimer.unref();
  }

  private inventory(): InfoBody {
    if (this.intake.inventory) return this.intake.inventory();
    const p = this.intake.primary();
    return { app_name: p?.appName ?? null, version: p ? p.appVersion : null, sha256: p?.sha256 ?? null, slots: [], slot_bytes: null };
  }

  private onAnnouncePart(data: Uint8Array): void {
    const a = this.assembler.push(data);
    if (!a) return;
    if (!a.nodes.includes(this.node)) return;
    if (a.probe) return this.answerProbe(a);
    const rx = this.rx;
    if (rx && rx.a.session === a.session) {
      if (sameAnnounce(rx.a, a)) {
        rx.lastHeard = Date.now();
        // A repeat of an announce we installed from: if the device runs the image now, that is the answer.
        if (rx.verdict?.status === 'OK' && !a.force && this.intake.current(Buffer.from(a.sha256).toString('hex'))) {
          this.retire(rx);
          return this.joinSession(a);
        }
        // The master repeats an announce while someone has not joined: maybe our JOIN was lost.
        this.sendJoin({ session: a.session, flags: JoinFlag.JOINED, have: rx.chunks.held, ...this.runningField() });
        return;
      }
      if (!rx.verdict) {
        this.counters.conflicts++;
        this.emit({ type: 'conflict', session: a.session, what: 'announce differs from the joined one (second master?)' });
        return;
      }
      // Our transfer under this id is over (its FINISH was lost): this is a new one that reuses the id.
    }
    if (!rx && this.finished?.session === a.session && this.finished.announce && sameAnnounce(this.finished.announce, a)) {
      const v = this.finished.verdict;
      // A repeated announce after we answered it without joining: repeat the answer.
      if (v.status === 'CURRENT' && v.to && this.intake.current(v.to)) {
        this.sendJoin({ session: a.session, flags: JoinFlag.CURRENT, have: 0, running: Buffer.from(v.to.slice(0, 6), 'hex') });
        return;
      }
      if (v.status !== 'CURRENT') return this.sendVerdict(a.session, v);
    }
    if (rx && !rx.verdict && Date.now() - rx.lastHeard < Math.min(1000, this.opts.sessionTimeoutMs)) {
      // Busy with a live transfer: a new session only takes over once the old master went quiet.
      this.counters.foreign++;
      return;
    }
    if (rx) this.retire(rx);
    this.joinSession(a);
  }

  /**
   * A probe (issue 25): say CURRENT, or what the device runs and decodes (JOINX, then JOIN JOINED with
   * RUNNING), so the master can group nodes by base and pick patch, compressed or raw per group.
   * Nothing is opened; a transfer in progress carries on.
   */
  private answerProbe(a: Announce): void {
    this.probed = a.session;
    const sha = Buffer.from(a.sha256).toString('hex');
    const running = !a.force ? this.intake.current(sha) : null;
    if (running) {
      const v: LocalVerdict = {
        status: 'CURRENT', where: 'none', reason: 'current', crc32: running.crc32, pid: running.pid, appName: running.appName, from: running.sha256, to: running.sha256,
      };
      if (this.finished?.session !== a.session) this.record(a.session, v, a);
      this.sendJoin({ session: a.session, flags: JoinFlag.CURRENT, have: 0, running: Buffer.from(running.sha256.slice(0, 6), 'hex') });
      this.emit({ type: 'probed', session: a.session, answer: 'current' });
      return;
    }
    const caps = this.intake.codec ?? null;
    const p = this.intake.primary();
    if (caps && (caps.deflate || caps.patch)) {
      this.sendProv(ProvOp.JOIN, encodeJoinX({
        session: a.session, deflate: caps.deflate, patch: caps.patch, maxWindowBits: caps.maxWindowBits, ramBytes: caps.ramBytes, instance: this.instance,
        ...(p ? { running: Buffer.from(p.sha256.slice(6, 14), 'hex') } : {}),
      }));
    }
    // JOINED answers a probe (as a listener from before probes answers it too; the master's FINISH ends it).
    this.sendJoin({ session: a.session, flags: JoinFlag.JOINED, have: 0, ...this.runningField() });
    this.emit({ type: 'probed', session: a.session, answer: 'running' });
  }

  /** JOIN's RUNNING field: the image the device runs (the one a master should call "from"). */
  private runningField(): { running?: Uint8Array } {
    const p = this.intake.primary();
    return p ? { running: Buffer.from(p.sha256.slice(0, 6), 'hex') } : {};
  }

  private openIntake(a: Announce, force: boolean): ReturnType<ListenerIntake['open']> {
    const st = a.stream;
    return this.intake.open({
      source: this.options.source ?? `can:node${this.node}`, totalBytes: a.totalBytes, crc32: a.crc32, sha256: a.sha256, force,
      ...(st ? { encoding: st.encoding, streamBytes: st.streamBytes, ...(st.baseSha256 ? { baseSha256: st.baseSha256 } : {}) } : {}),
    });
  }

  private joinSession(a: Announce): void {
    this.counters.sessions++;
    const chunkSize = a.chunkSize;
    const refuse = (status: string, reason: string, where = 'transfer'): void => {
      this.finishSession(a, { status, where, reason, crc32: 0 });
    };
    if (a.fd && !this.bus.fd) return refuse('EINVAL', 'fd_unsupported');
    if (a.totalBytes === 0) return refuse('EBADMSG', 'empty_image');
    if (a.totalBytes > this.opts.maxImageBytes) return refuse('ENOSPC', 'image_too_large');
    const streamBytes = a.stream?.streamBytes ?? a.totalBytes;
    if (streamBytes > this.opts.maxImageBytes) return refuse('ENOSPC', 'image_too_large');
    const opened = this.openIntake(a, !!a.force);
    if (!opened.ok) return refuse(opened.error.code, opened.error.reason, opened.error.where);
    if (opened.value.kind === 'current') {
      // The device runs this image already: no data needs to move; we take no part in the transfer.
      const running = opened.value.running;
      this.rx = null;
      const v: LocalVerdict = {
        status: 'CURRENT', where: 'none', reason: 'current', crc32: running.crc32, pid: running.pid, appName: running.appName,
        from: running.sha256, to: running.sha256,
      };
      this.record(a.session, v, a);
      this.sendJoin({ session: a.session, flags: JoinFlag.CURRENT, have: 0, running: Buffer.from(running.sha256.slice(0, 6), 'hex') });
      return;
    }
    const nChunks = Math.ceil(streamBytes / chunkSize);
    const nBlocks = Math.ceil(nChunks / BLOCK_CHUNKS);
    const rx: Rx = {
      a, streamBytes, nChunks, nBlocks,
      buf: new Uint8Array(nChunks * chunkSize),
      chunks: new ChunkSet(nChunks),
      blockHeld: new Uint16Array(nBlocks),
      blockState: new Uint8Array(nBlocks),
      blockCrc: new Float64Array(nBlocks).fill(-1),
      fedBlocks: 0,
      intakeId: opened.value.id,
      ref: 0,
      hiSeen: -1,
      dutyIndex: a.nodes.indexOf(this.node),
      nextDuty: a.nodes.indexOf(this.node),
      shaFailures: 0,
      engineRenewals: 0,
      finishing: false,
      finalizing: false,
      verdict: null,
      lastHeard: Date.now(),
    };
    this.rx = rx;
    this.emit({ type: 'joined', session: a.session, totalBytes: a.totalBytes, chunkSize, fd: a.fd, encoding: a.stream?.encoding.kind ?? 'raw', streamBytes });
    this.sendJoin({ session: a.session, flags: JoinFlag.JOINED, have: 0, ...this.runningField() });
  }

  /** Forget a session (its intake session is aborted if still open). */
  private retire(rx: Rx): void {
    if (rx.intakeId !== null && !rx.verdict) this.intake.abort(rx.intakeId, 'superseded by a new transfer');
    rx.intakeId = null;
    if (this.rx === rx) this.rx = null;
  }

  private abandon(status: 'ETIMEDOUT' | 'ECANCELED', reason: string, why: string): void {
    const rx = this.rx;
    if (!rx) return;
    if (rx.intakeId !== null) this.intake.abort(rx.intakeId, why);
    rx.intakeId = null;
    this.setVerdict(rx, { status, where: 'transfer', reason, crc32: 0 });
    this.rx = null;
  }

  private checkIdle(): void {
    const rx = this.rx;
    if (rx && !rx.verdict && Date.now() - rx.lastHeard > this.opts.sessionTimeoutMs) this.abandon('ETIMEDOUT', 'master_silent', 'no frames from the master');
  }

  /** A session is known when it is the joined one; otherwise ask the master to announce again. */
  private known(session: number): Rx | null {
    const rx = this.rx;
    if (rx && rx.a.session === session) {
      rx.lastHeard = Date.now();
      return rx;
    }
    if (this.finished?.session === session || this.probed === session) return null;
    // A master is running a session we do not know (we restarted, or missed the announce).
    const now = Date.now();
    if (now - this.lastNeedAnnounce > 200 && (!rx || rx.verdict || now - rx.lastHeard > 1000)) {
      this.lastNeedAnnounce = now;
      this.sendJoin({ session, flags: JoinFlag.NEED_ANNOUNCE, have: 0 });
    }
    return null;
  }

  private onSync(data: Uint8Array): void {
    const s = decodeSync(data);
    if (!s) return void this.counters.malformed++;
    const rx = this.known(s.session);
    if (!rx || rx.verdict) return;
    if (s.base % BLOCK_CHUNKS !== 0 || s.base >= rx.nChunks) return void this.counters.outOfRange++;
    const b = s.base / BLOCK_CHUNKS;
    rx.ref = s.base;
    if (rx.blockCrc[b] === -1) {
      rx.blockCrc[b] = s.blockCrc;
      if (rx.blockState[b] === BLOCK_COMPLETE) this.checkBlock(rx, b);
    } else if (rx.blockCrc[b] !== s.blockCrc) {
      this.counters.conflicts++;
      this.emit({ type: 'conflict', session: s.session, what: `block ${b} CRC differs from the first SYNC` });
    }
  }

  private onCtrl(data: Uint8Array, addressed: boolean): void {
    const c = decodeCtrl(data);
    if (!c) return void this.counters.malformed++;
    if (c.kind === CtrlKind.REPORT && this.finished?.session === c.session && !this.rx) {
      // A node that answered CURRENT takes no part: it answers only a REPORT addressed to it (the
      // master missed its JOIN), not the broadcast one.
      if (this.finished.verdict.status === 'CURRENT' && !addressed) return;
      return this.sendVerdict(c.session, this.finished.verdict);
    }
    const rx = this.known(c.session);
    if (!rx) return;
    switch (c.kind) {
      case CtrlKind.REPORT:
        return this.onReportRequest(rx);
      case CtrlKind.STATUS:
        return this.sendProv(ProvOp.ACK, encodeAck({ session: c.session, next: rx.hiSeen + 1, missing: rx.chunks.missingBelow(rx.hiSeen + 1), polled: true }));
      case CtrlKind.ABORT:
      case CtrlKind.FINISH:
        // Drop the transfer (its intake session is aborted) but remember no verdict: if this came
        // from a confused or hostile sender and the real master carries on, we rejoin it. (While the
        // intake finishes, the verdict is coming: let it.)
        if (!rx.verdict && !rx.finishing) {
          if (rx.intakeId !== null) this.intake.abort(rx.intakeId, c.kind === CtrlKind.ABORT ? 'aborted by the master' : 'master finished without us');
          rx.intakeId = null;
          this.counters.dropped++;
          this.emit({ type: 'verdict', session: rx.a.session, status: 'ECANCELED', where: 'transfer', reason: c.kind === CtrlKind.ABORT ? 'master_abort' : 'master_finished' });
        }
        this.rx = null;
        return;
    }
  }

  private onReportRequest(rx: Rx): void {
    if (rx.verdict) return this.sendVerdict(rx.a.session, rx.verdict);
    if (rx.finishing) return; // the verdict goes out when the intake has finished
    if (rx.chunks.complete) {
      this.finalize(rx);
      if (rx.verdict) return this.sendVerdict(rx.a.session, rx.verdict);
      if (rx.finishing) return;
    }
    const bitmapBytes = rx.a.fd ? 60 : 4;
    const frames = rx.chunks.report(rx.a.session, bitmapBytes, this.opts.maxReportFrames);
    for (const f of frames) this.sendProv(ProvOp.MISSING, f, rx.a.fd);
  }

  // ------------------------------------------------------------------------------------------

  private onData(low: number, data: Uint8Array): void {
    const rx = this.rx;
    if (!rx || rx.verdict || rx.finishing) return;
    this.counters.data++;
    const seq = expandSeq(low, rx.ref);
    if (seq < 0 || seq >= rx.nChunks) return void this.counters.outOfRange++;
    const cs = rx.a.chunkSize;
    const len = seq === rx.nChunks - 1 ? rx.streamBytes - seq * cs : cs;
    if (data.length < len) return void this.counters.malformed++;
    // Follow the master's position only for frames near it, so stray frames cannot drag it away.
    if (Math.abs(seq - rx.ref) <= 2 * rx.a.window) rx.ref = seq;
    if (seq > rx.hiSeen) rx.hiSeen = seq;
    const off = seq * cs;
    if (rx.chunks.has(seq)) {
      let same = true;
      for (let i = 0; i < len; i++) if (rx.buf[off + i] !== data[i]) { same = false; break; }
      if (same) this.counters.duplicates++;
      else this.counters.conflicts++;
    } else {
      rx.buf.set(len === data.length ? data : data.subarray(0, len), off);
      rx.chunks.add(seq);
      const b = (seq / BLOCK_CHUNKS) | 0;
      if (++rx.blockHeld[b]! === this.blockChunks(rx, b)) this.checkBlock(rx, b);
    }
    this.maybeAck(rx);
  }

  private blockChunks(rx: Rx, b: number): number {
    return Math.min(BLOCK_CHUNKS, rx.nChunks - b * BLOCK_CHUNKS);
  }

  private blockBytes(rx: Rx, b: number): Uint8Array {
    const start = b * BLOCK_CHUNKS * rx.a.chunkSize;
    const end = Math.min(start + BLOCK_CHUNKS * rx.a.chunkSize, rx.streamBytes);
    return rx.buf.subarray(start, end);
  }

  /** A block is complete: check it against its SYNC CRC when known, then feed what is verified. */
  private checkBlock(rx: Rx, b: number): void {
    const expected = rx.blockCrc[b]!;
    if (expected === -1) {
      rx.blockState[b] = BLOCK_COMPLETE;
      return;
    }
    if (crc32(this.blockBytes(rx, b)) >>> 0 === expected) {
      rx.blockState[b] = BLOCK_VERIFIED;
      this.feed(rx);
    } else {
      this.counters.blockCrcFailures++;
      this.dropBlock(rx, b);
      // Either the data or the CRC was wrong (a stray SYNC could have come first): take the CRC from
      // the next SYNC, which the master sends again before it repairs this block.
      rx.blockCrc[b] = -1;
    }
  }

  private dropBlock(rx: Rx, b: number): void {
    const first = b * BLOCK_CHUNKS;
    for (let s = first; s < first + this.blockChunks(rx, b); s++) rx.chunks.remove(s);
    rx.blockHeld[b] = 0;
    rx.blockState[b] = BLOCK_WAITING;
  }

  /** Stream every verified block at the front of the image into the intake. */
  private feed(rx: Rx, all = false): void {
    while (rx.fedBlocks < rx.nBlocks && (rx.blockState[rx.fedBlocks] === BLOCK_VERIFIED || (all && rx.blockState[rx.fedBlocks] !== BLOCK_WAITING))) {
      if (!this.writeBlock(rx, rx.fedBlocks)) return;
      rx.fedBlocks++;
    }
    this.emit({ type: 'progress', session: rx.a.session, held: rx.chunks.held, total: rx.nChunks });
  }

  private writeBlock(rx: Rx, b: number): boolean {
    const bytes = this.blockBytes(rx, b);
    const base = b * BLOCK_CHUNKS * rx.a.chunkSize;
    for (let off = 0; off < bytes.length; off += this.opts.engineChunkBytes) {
      if (rx.intakeId === null) return false;
      const w = this.intake.write(rx.intakeId, base + off, bytes.subarray(off, off + this.opts.engineChunkBytes));
      if (w.ok) continue;
      if (this.timedOut(w.error) && this.renewIntakeSession(rx)) return this.writeBlock(rx, b);
      this.fail(rx, w.error);
      return false;
    }
    return true;
  }

  private timedOut(e: EngineError): boolean {
    return e.code === 'ETIMEDOUT' && ENGINE_TIMEOUTS.has(e.reason);
  }

  /**
   * The engine gave up on a session that waited for a repair (its write timeout is shorter than a
   * long transfer with a hole near the front). We still hold every byte we fed it, so open the intake
   * again and replay them from offset 0; bounded, so a genuinely stuck engine still ends in a verdict.
   */
  private renewIntakeSession(rx: Rx): boolean {
    if (rx.engineRenewals++ >= 3) return false;
    this.counters.engineRenewals++;
    if (rx.intakeId !== null) this.intake.abort(rx.intakeId, 'renewed');
    rx.intakeId = null;
    const opened = this.openIntake(rx.a, true);
    if (!opened.ok || opened.value.kind !== 'receiving') return false;
    rx.intakeId = opened.value.id;
    const fed = rx.fedBlocks;
    for (let b = 0; b < fed; b++) if (!this.writeBlock(rx, b)) return false;
    return true;
  }

  private maybeAck(rx: Rx): void {
    const n = rx.a.nodes.length;
    const w = rx.a.window;
    const windows = Math.ceil(rx.nChunks / w);
    if (rx.dutyIndex < 0 || rx.nextDuty >= windows) return;
    const lastOfDuty = Math.min((rx.nextDuty + 1) * w, rx.nChunks) - 1;
    if (rx.hiSeen < lastOfDuty) return;
    this.sendProv(ProvOp.ACK, encodeAck({ session: rx.a.session, next: rx.hiSeen + 1, missing: 0 }));
    // Our next duty window is the first one that ends beyond what we have seen.
    while (rx.nextDuty < windows && Math.min((rx.nextDuty + 1) * w, rx.nChunks) - 1 <= rx.hiSeen) rx.nextDuty += n;
  }

  /** Every chunk is held: check the whole image, then let the intake decide. */
  private finalize(rx: Rx): void {
    rx.finalizing = true;
    try {
      this.verifyAndEnd(rx);
    } finally {
      rx.finalizing = false;
    }
  }

  private verifyAndEnd(rx: Rx): void {
    // The raw image must hash to the announced SHA-256; an encoded stream must match its announced
    // CRC-32 (the intake then checks the decoded image's SHA-256 before anything is switched).
    const st = rx.a.stream;
    const whole = rx.buf.subarray(0, rx.streamBytes);
    const good = st ? crc32(whole) >>> 0 === st.streamCrc32 : createHash('sha256').update(whole).digest().equals(rx.a.sha256);
    if (!good) {
      this.counters.shaFailures++;
      if (++rx.shaFailures > this.opts.shaRetries) {
        if (rx.intakeId !== null) this.intake.abort(rx.intakeId, st ? 'stream CRC-32 mismatch' : 'SHA-256 mismatch');
        rx.intakeId = null;
        return this.setVerdict(rx, { status: 'EBADMSG', where: 'transfer', reason: st ? 'stream_crc_mismatch' : 'sha256_mismatch', crc32: 0 });
      }
      // Re-collect what no block CRC vouched for; if everything was vouched for, start over.
      let dropped = false;
      for (let b = 0; b < rx.nBlocks; b++) if (rx.blockState[b] !== BLOCK_VERIFIED) {
        this.dropBlock(rx, b);
        dropped = true;
      }
      if (!dropped) this.restartSession(rx);
      return;
    }
    this.feed(rx, true);
    if (rx.verdict || rx.intakeId === null) return;
    rx.finishing = true;
    const done = (v: LocalVerdict): void => {
      this.setVerdict(rx, v);
      // The REPORT that triggered this is still unanswered (unless the transfer was dropped meanwhile).
      if (rx.verdict === v) this.sendVerdict(rx.a.session, v);
    };
    this.finishIntake(rx).then(done, (e: unknown) => done({ status: 'EBUSY', where: 'persist', reason: String(e), crc32: 0 }));
  }

  /** The intake checks, admits, stages, commits and switches; its verdict is ours. */
  private async finishIntake(rx: Rx): Promise<LocalVerdict> {
    let finished = await this.intake.finish(rx.intakeId!);
    if (!finished.ok && this.timedOut(finished.error) && !rx.verdict) {
      rx.fedBlocks = rx.nBlocks;
      if (this.renewIntakeSession(rx)) finished = await this.intake.finish(rx.intakeId!);
    }
    rx.intakeId = null;
    if (!finished.ok) return errorVerdict(finished.error);
    return okVerdict(rx.a, finished.value);
  }

  private restartSession(rx: Rx): void {
    if (rx.intakeId !== null) this.intake.abort(rx.intakeId, 'SHA-256 mismatch; collecting again');
    rx.intakeId = null;
    for (let b = 0; b < rx.nBlocks; b++) this.dropBlock(rx, b);
    rx.blockCrc.fill(-1);
    rx.fedBlocks = 0;
    const opened = this.openIntake(rx.a, true);
    if (!opened.ok) return this.fail(rx, opened.error);
    if (opened.value.kind === 'receiving') rx.intakeId = opened.value.id;
  }

  private fail(rx: Rx, e: EngineError): void {
    if (rx.intakeId !== null) this.intake.abort(rx.intakeId, `${e.code} ${e.reason}`);
    rx.intakeId = null;
    this.setVerdict(rx, errorVerdict(e));
    // An early rejection is worth telling the master now: it stops repairing for us. (During
    // finalize the REPORT handler sends it.)
    if (!rx.finalizing) this.sendVerdict(rx.a.session, rx.verdict!);
  }

  private setVerdict(rx: Rx, v: LocalVerdict): void {
    rx.finishing = false;
    if (rx.verdict) return;
    rx.verdict = v;
    this.record(rx.a.session, v, rx.a);
    // The image buffer is no longer needed; keep the small state for late REPORTs.
    rx.buf = new Uint8Array(0);
  }

  /** Remember a session's verdict (a late REPORT gets it again) and tell the observer. */
  private record(session: number, v: LocalVerdict, a?: Announce): void {
    this.finished = a ? { session, verdict: v, announce: a } : { session, verdict: v };
    this.verdicts.push({ session, ...v });
    const status = v.status === 'OK' ? (v.updated ? 'UPDATED' : 'READY') : v.status;
    const e: ListenerEvent = { type: 'verdict', session, status, where: v.where, reason: v.reason };
    if (v.pid !== undefined) e.pid = v.pid;
    if (v.appName !== undefined) e.appName = v.appName;
    if (v.from !== undefined) e.from = shortSha(v.from);
    if (v.to !== undefined) e.to = shortSha(v.to);
    this.emit(e);
  }

  /** A session answered without joining it (refused at the announce): the verdict goes out now. */
  private finishSession(a: Announce, v: LocalVerdict): void {
    this.rx = null;
    this.record(a.session, v, a);
    this.sendVerdict(a.session, v);
  }

  private sendVerdict(session: number, v: LocalVerdict): void {
    let flags = v.updated ? VerdictFlag.UPDATED : 0;
    let crc = v.crc32;
    // A failure names its reason where the table has it (the CRC field is unused then).
    const code = v.status !== 'OK' && v.status !== 'CURRENT' ? verdictReasonCode(v.reason) : 0;
    if (code > 0) {
      flags |= VerdictFlag.REASON;
      crc = code;
      if (v.reason === 'base_mismatch' || v.reason === 'base_size_mismatch') flags |= VerdictFlag.BASE_MISMATCH;
    }
    this.sendProv(ProvOp.VERDICT, encodeVerdict({ session, status: statusCode(v.status), where: whereCode(v.where), flags, crc32: crc }));
  }

  // ------------------------------------------------------------------------------------------

  private onValue(op: number, data: Uint8Array): void {
    this.counters.valueRequests++;
    const req = decodeValue(data, op === ValueOp.GET ? 'get' : 'set');
    if (!req) return void this.counters.malformed++;
    const r = op === ValueOp.GET ? this.intake.getValue(req.oid) : this.intake.setValue(req.oid, req.raw);
    const status = r.ok ? 'OK' : r.error.code;
    const raw = r.ok ? r.value.raw : 0;
    this.emit({ type: 'value', op: op === ValueOp.GET ? 'get' : 'set', oid: req.oid, raw: r.ok ? raw : req.raw, status });
    this.send(valueId(this.plan, this.node, ValueOp.RET), encodeRet({ oid: req.oid, raw, status: statusCode(status) }));
  }
}

function errorVerdict(e: EngineError): LocalVerdict {
  return { status: e.code, where: e.where, reason: e.reason, crc32: 0 };
}

function okVerdict(a: Announce, v: IntakeVerdict): LocalVerdict {
  const out: LocalVerdict = {
    status: 'OK', where: 'none', reason: v.outcome === 'updated' ? 'updated' : 'ready', crc32: a.crc32,
    pid: v.task.pid, appName: v.task.appName, to: v.task.sha256,
  };
  if (v.outcome === 'updated') out.updated = true;
  if (v.from) out.from = v.from.sha256;
  return out;
}

function sameAnnounce(a: Announce, b: Announce): boolean {
  return (
    a.totalBytes === b.totalBytes && a.crc32 === b.crc32 && a.chunkSize === b.chunkSize && a.fd === b.fd && a.window === b.window &&
    Buffer.from(a.sha256).equals(Buffer.from(b.sha256)) && a.nodes.join() === b.nodes.join() && !!a.force === !!b.force && !!a.probe === !!b.probe &&
    JSON.stringify(a.stream?.encoding ?? null) === JSON.stringify(b.stream?.encoding ?? null) && a.stream?.streamBytes === b.stream?.streamBytes && a.stream?.streamCrc32 === b.stream?.streamCrc32 &&
    Buffer.from(a.stream?.baseSha256 ?? []).equals(Buffer.from(b.stream?.baseSha256 ?? []))
  );
}
