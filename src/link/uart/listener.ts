/**
 * The listener (device) side of the UART session protocol. It answers OPEN with CURRENT when the
 * device already runs the announced image, else with the negotiated frame size and window (and a
 * resume offset when it already holds part of the same image), puts DATA frames back in order
 * inside the window, feeds them to the device's intake, acknowledges what it has fed and saved (so
 * a slow intake or store simply withholds ACKs: flow control), asks for missing frames with NAKs,
 * and reports the intake's verdict (INSTALLED or UPDATED) at END.
 *
 * The intake (src/engine/intake.ts) owns what an image means for the device: the SHA-256 check,
 * updates, staging, switching and persisting. The listener only moves bytes into it.
 *
 * It sees only Frames through the Transport interface; serialport is the framing layer's business.
 */
import { EventEmitter } from 'node:events';
import type { Transport, TransportStatus } from '../transport.js';
import type { DeviceIntake, EngineError, IntakeVerdict, RunningImage } from '../../engine/index.js';
import { FrameType, type Frame } from './frame.js';
import {
  CodecCap, SUPPORTED_VERSIONS, decodeAbort, streamBytesOf, type CodecCaps, decodeInfoRequest, decodeOpen, encodeAccept, encodeCurrent, encodeError, encodeInfo, encodeMissing, encodeResult, encodeResultV1,
  type ErrorMessage, type ImageInfo, type OpenMessage,
} from './messages.js';
import type { PartialStore, PartialWriter, PartialKey } from './partial-store.js';
import {
  DEFAULT_LISTENER_TIMING, LISTENER_MAX_CHUNK, LISTENER_MAX_WINDOW, MIN_CHUNK, type ListenerTiming,
} from './settings.js';

/** The part of the intake the listener drives (`inventory` answers INFO; without it INFO is refused). */
export type ListenerIntake = Pick<DeviceIntake, 'open' | 'write' | 'finish' | 'abort'> & Partial<Pick<DeviceIntake, 'inventory' | 'codec'>>;

export interface ListenerOptions {
  /** The source label for tasks loaded here, e.g. `uart:/dev/ttyUSB1`. */
  source: string;
  partials: PartialStore;
  maxChunk?: number;
  maxWindow?: number;
  /** Largest image accepted at OPEN (before anything is allocated). */
  maxImageBytes?: number;
  /**
   * Protocol versions this device speaks (default SUPPORTED_VERSIONS). `[1, 2]` is a device from
   * before version 3: no codec, INFO_REQ of version 3 refused, raw streams only.
   */
  versions?: readonly number[];
  /** What the device decodes (version 3); false: raw only. Default: the intake's (`DeviceIntake.codec`). */
  codec?: CodecCaps | false;
  timing?: Partial<ListenerTiming>;
}

export type ListenerEvent =
  | { type: 'open'; appName: string; totalBytes: number; sha256: string; chunkSize: number; window: number; resumeOffset: number; force: boolean; protocolVersion: number }
  | { type: 'current'; appName: string; pid: number; version: string; totalBytes: number; sha256: string }
  | {
    type: 'ready'; outcome: 'installed' | 'updated'; appName: string; pid: number; version: string; totalBytes: number; sha256: string; receivedBytes: number;
    from: RunningImage | null; slot: 'A' | 'B' | null; confirmPending: boolean;
  }
  | { type: 'error'; sha256: string | null; error: ErrorMessage & { message: string } }
  | { type: 'aborted'; sha256: string; reason: string; heldBytes: number };

type SessionState = 'preparing' | 'receiving' | 'ending' | 'done';

interface Session {
  tag: number;
  nonce: number;
  open: OpenMessage;
  sha256: string;
  chunk: number;
  window: number;
  totalChunks: number;
  resumeOffset: number;
  state: SessionState;
  /** The intake's session id while bytes are being received. */
  intakeId: number | null;
  /** Next chunk index to feed to the engine. */
  expected: number;
  /** Chunks fed and saved: what ACKs report. */
  saved: number;
  lastAckSent: number;
  buffered: Map<number, Uint8Array>;
  writer: PartialWriter | null;
  /** Bytes received over the link in this session (not re-fed from the partial). */
  receivedBytes: number;
  ackTimer: NodeJS.Timeout | null;
  /** Checks `lastFrameAt` periodically (one timer per session, not one per frame). */
  idleTimer: NodeJS.Timeout | null;
  lastFrameAt: number;
  nakSentAt: Map<number, number>;
  lastDupAckAt: number;
  /** Set once the session is being abandoned (the partial's writer closing). */
  abandoning?: Promise<void>;
  /** The ACCEPT, RESULT or ERROR frame repeated when the master asks again. */
  reply: Frame | null;
  /** Ended without a verdict (ABORT, idle, port lost, superseded): `reply` is `ECANCELED session session_aborted`. */
  aborted?: boolean;
  /** Completion callbacks of the partial store's appends. */
  saveDone: () => void;
  saveFailed: () => void;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

const imageInfo = (r: RunningImage): ImageInfo => ({ pid: r.pid, crc32: r.crc32, sha256: r.sha256, appName: r.appName, version: r.appVersion });

export class UartListener extends EventEmitter {
  private session: Session | null = null;
  /** The intake's verdict on the last complete image, while it is being installed. */
  private installing: Promise<void> | null = null;
  private unsubscribe: (() => void) | null = null;
  private readonly timing: ListenerTiming;
  private readonly maxChunk: number;
  private readonly maxWindow: number;
  private readonly maxImageBytes: number;
  private readonly versions: readonly number[];
  private readonly codec: CodecCaps | null;
  /** Protocol counters (the framing layer keeps its own). */
  readonly counters = { acks: 0, naks: 0, duplicates: 0, outOfWindow: 0, badLength: 0, staleFrames: 0 };

  constructor(
    private readonly transport: Transport<Frame, Frame>,
    private readonly intake: ListenerIntake,
    private readonly options: ListenerOptions,
  ) {
    super();
    this.timing = { ...DEFAULT_LISTENER_TIMING, ...options.timing };
    this.maxChunk = Math.max(MIN_CHUNK, Math.min(options.maxChunk ?? LISTENER_MAX_CHUNK, LISTENER_MAX_CHUNK));
    this.maxWindow = Math.max(1, Math.min(options.maxWindow ?? LISTENER_MAX_WINDOW, LISTENER_MAX_WINDOW));
    this.maxImageBytes = options.maxImageBytes ?? 16 << 20;
    this.versions = options.versions ?? SUPPORTED_VERSIONS;
    this.codec = options.codec === false || !this.versions.includes(3)
      ? null
      : options.codec ?? (intake.codec !== undefined ? intake.codec : { deflate: true, patch: true, maxWindowBits: 12, ramBytes: 4096 });
  }

  start(): void {
    if (this.unsubscribe) return;
    const stopReceiving = this.transport.receive((frame) => this.onFrame(frame));
    // A lost port (cable pulled) ends the session at once: the intake session is aborted,
    // nothing half-received becomes READY, and the partial stays for a resume.
    const onStatus = (st: TransportStatus): void => {
      const s = this.session;
      if ((st.state === 'error' || st.state === 'closed') && s && s.state !== 'done') void this.abandon(s, 'port_lost');
    };
    this.transport.on('status', onStatus);
    this.unsubscribe = () => {
      stopReceiving();
      this.transport.off('status', onStatus);
    };
  }

  /** Stops listening; an unfinished session is aborted in the intake (its partial is kept). */
  async stop(reason: string): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    const s = this.session;
    if (s && s.state !== 'done') await this.abandon(s, reason);
    // A session the lost port already ended: its 'aborted' event comes before stop() returns.
    else if (s?.abandoning) await s.abandoning;
  }

  private emitEvent(e: ListenerEvent): void {
    this.emit('event', e);
  }

  private send(frame: Frame): void {
    // A failed write means the port is gone; the owner sees that through the transport.
    this.transport.send(frame).catch(() => {});
  }

  private onFrame(frame: Frame): void {
    if (frame.type === FrameType.OPEN) {
      this.onOpen(frame);
      return;
    }
    if (frame.type === FrameType.INFO_REQ) {
      this.onInfoRequest(frame);
      return;
    }
    const s = this.session;
    if (!s || frame.tag !== s.tag) {
      this.counters.staleFrames++;
      return;
    }
    this.touch(s);
    switch (frame.type) {
      case FrameType.DATA:
        this.onData(s, frame);
        return;
      case FrameType.END:
        this.onEnd(s, frame);
        return;
      case FrameType.ABORT:
        if (s.state !== 'done') void this.abandon(s, `master: ${decodeAbort(frame.payload) || 'aborted'}`);
        return;
      default:
        this.counters.staleFrames++;
    }
  }

  // ---- OPEN ---------------------------------------------------------------------------------

  private onOpen(frame: Frame): void {
    const current = this.session;
    // A repeated OPEN of a session that ended with a verdict gets that verdict again; one of an
    // aborted session starts a new one, which resumes from what the device kept.
    if (current && current.tag === frame.tag && current.nonce === frame.seq && !current.aborted) {
      // The master did not see our ACCEPT (or asks again): repeat it, nothing else changes.
      this.touch(current);
      if (current.reply) this.send(current.reply);
      return;
    }
    const decoded = decodeOpen(frame.payload);
    if (!decoded.ok) {
      this.send(this.errorFrame(frame.tag, { code: 'EPROTO', where: 'session', reason: 'bad_open' }));
      return;
    }
    const open = decoded.value;
    if (!this.versions.includes(open.version)) {
      this.send(this.errorFrame(frame.tag, { code: 'EPROTO', where: 'session', reason: 'unsupported_version' }));
      return;
    }
    if (open.totalBytes === 0) {
      // an empty image is a malformed announce, not one too large to hold
      this.send(this.errorFrame(frame.tag, { code: 'EBADMSG', where: 'begin', reason: 'total_invalid' }));
      return;
    }
    if (open.totalBytes > this.maxImageBytes || streamBytesOf(open) > this.maxImageBytes) {
      this.send(this.errorFrame(frame.tag, { code: 'ENOSPC', where: 'begin', reason: 'image_too_large' }));
      return;
    }
    const enc = open.encoding?.kind ?? 'raw';
    if (enc !== 'raw' && (this.codec === null || !this.codec[enc] || (enc === 'deflate' && open.encoding!.windowBits > this.codec.maxWindowBits))) {
      this.send(this.errorFrame(frame.tag, { code: 'ENOTSUP', where: 'begin', reason: 'encoding_unsupported' }));
      return;
    }
    if (streamBytesOf(open) === 0) {
      this.send(this.errorFrame(frame.tag, { code: 'EBADMSG', where: 'begin', reason: 'total_invalid' }));
      return;
    }
    void this.startSession(frame, open);
  }

  private async startSession(frame: Frame, open: OpenMessage): Promise<void> {
    const previous = this.session;
    if (previous && previous.state !== 'done') await this.abandon(previous, 'superseded by a new OPEN');
    const chunk = Math.max(MIN_CHUNK, Math.min(open.chunkSize, this.maxChunk));
    const window = Math.max(1, Math.min(open.window, this.maxWindow));
    const s: Session = {
      tag: frame.tag, nonce: frame.seq, open, sha256: hex(open.sha256), chunk, window,
      totalChunks: Math.ceil(streamBytesOf(open) / chunk), resumeOffset: 0, state: 'preparing',
      intakeId: null, expected: 0, saved: 0, lastAckSent: 0, buffered: new Map(),
      writer: null, receivedBytes: 0, ackTimer: null, idleTimer: null, lastFrameAt: 0,
      nakSentAt: new Map(), lastDupAckAt: 0, reply: null,
      saveDone: () => this.onSaved(s),
      saveFailed: () => {
        s.writer = null; // resume is an optimisation: go on without the store
        this.onSaved(s);
      },
    };
    this.session = s;
    this.touch(s);
    // An image still being installed (its master may have lost the link during END) is installed
    // first, so an OPEN for it is answered CURRENT rather than received again.
    if (this.installing) {
      await this.installing;
      if (this.session !== s || s.state !== 'preparing') return;
    }

    // A version 1 master cannot hear CURRENT: it always sends the image, as it did.
    const announce: Parameters<ListenerIntake['open']>[0] = {
      source: this.options.source, totalBytes: open.totalBytes, crc32: open.crc32, sha256: open.sha256,
      appName: open.appName, force: open.force || open.version < 2,
    };
    const e = open.encoding;
    if (e && e.kind !== 'raw') {
      announce.encoding = e.kind === 'deflate' ? { kind: 'deflate', windowBits: e.windowBits } : { kind: 'patch' };
      announce.streamBytes = e.streamBytes;
      if (e.baseSha256) announce.baseSha256 = e.baseSha256;
    }
    const opened = this.intake.open(announce);
    if (!opened.ok) {
      this.finish(s, this.errorFrame(s.tag, opened.error), { type: 'error', sha256: s.sha256, error: { ...opened.error } });
      return;
    }
    if (opened.value.kind === 'current') {
      // The device runs this very image: no data moves, the master ends with CURRENT.
      const running = opened.value.running;
      this.finish(s, { type: FrameType.CURRENT, tag: s.tag, seq: s.nonce, payload: encodeCurrent(imageInfo(running)) }, {
        type: 'current', appName: running.appName, pid: running.pid, version: running.appVersion, totalBytes: open.totalBytes, sha256: s.sha256,
      });
      return;
    }
    s.intakeId = opened.value.id;

    // Resume: re-feed what we already hold to the new intake session, then ask only for the rest.
    const key: PartialKey = { sha256: s.sha256, totalBytes: streamBytesOf(open), crc32: open.crc32 };
    if (e && e.kind !== 'raw') key.encoding = e.kind === 'patch' ? `patch:${hex(e.baseSha256!)}` : `deflate:${e.windowBits}`;
    const held = await this.options.partials.load(key).catch(() => null);
    if (this.session !== s || s.state !== 'preparing') return;
    const resumeChunks = held ? Math.floor(held.length / chunk) : 0;
    if (resumeChunks > 0 && !this.feed(s, 0, held!.subarray(0, resumeChunks * chunk))) return;
    s.expected = s.saved = s.lastAckSent = resumeChunks;
    s.resumeOffset = resumeChunks * chunk;
    try {
      s.writer = await this.options.partials.start(key, s.resumeOffset);
    } catch {
      s.writer = null; // resume is an optimisation: without a store the transfer still works
    }
    if (this.session !== s || s.state !== 'preparing') return;
    s.state = 'receiving';
    s.reply = {
      type: FrameType.ACCEPT, tag: s.tag, seq: s.nonce,
      // The answer speaks the master's version.
      payload: encodeAccept({ version: open.version, chunkSize: chunk, window, resumeOffset: s.resumeOffset, caps: this.capsByte() }),
    };
    this.send(s.reply);
    this.emitEvent({
      type: 'open', appName: open.appName, totalBytes: open.totalBytes, sha256: s.sha256, chunkSize: chunk, window, resumeOffset: s.resumeOffset,
      force: open.force, protocolVersion: open.version,
    });
  }

  // ---- DATA ---------------------------------------------------------------------------------

  private chunkLength(s: Session, seq: number): number {
    return seq === s.totalChunks - 1 ? streamBytesOf(s.open) - seq * s.chunk : s.chunk;
  }

  private onData(s: Session, frame: Frame): void {
    if (s.state === 'done') {
      if (s.reply) this.send(s.reply); // the master missed the verdict
      return;
    }
    if (s.state !== 'receiving') return;
    const seq = frame.seq;
    if (seq < s.expected || s.buffered.has(seq)) {
      // A retransmission of something we have: the master missed our ACK. Say it again (not too often).
      this.counters.duplicates++;
      const now = Date.now();
      if (now - s.lastDupAckAt >= this.timing.nakHoldoffMs) {
        s.lastDupAckAt = now;
        this.sendAck(s, true);
      }
      return;
    }
    if (seq >= s.totalChunks || seq >= s.expected + s.window) {
      this.counters.outOfWindow++;
      return;
    }
    if (frame.payload.length !== this.chunkLength(s, seq)) {
      this.counters.badLength++;
      return;
    }
    s.buffered.set(seq, frame.payload);
    s.receivedBytes += frame.payload.length;
    for (let next = s.buffered.get(s.expected); next !== undefined; next = s.buffered.get(s.expected)) {
      s.buffered.delete(s.expected);
      if (!this.feed(s, s.expected * s.chunk, next)) return;
      s.expected++;
      this.save(s, next);
    }
    if (s.buffered.size > 0) this.sendNak(s);
  }

  /**
   * In-order bytes at `offset` into the intake (which splits them into engine writes and has them
   * checked against the announced SHA-256); false when it refused them (the session is over).
   */
  private feed(s: Session, offset: number, bytes: Uint8Array): boolean {
    const written = this.intake.write(s.intakeId!, offset, bytes);
    if (!written.ok) {
      // The intake's verdict ends the transfer; the partial is useless if the bytes are bad.
      if (written.error.code === 'EBADMSG') void this.options.partials.discard(s.sha256).catch(() => {});
      this.finish(s, this.errorFrame(s.tag, written.error), { type: 'error', sha256: s.sha256, error: { ...written.error } });
      return false;
    }
    return true;
  }

  private save(s: Session, chunk: Uint8Array): void {
    if (!s.writer) {
      this.onSaved(s);
      return;
    }
    // Appends complete in order, so `saved` counts a prefix of the image. The callbacks are made
    // once per session, not per frame.
    s.writer.append(chunk).then(s.saveDone, s.saveFailed);
  }

  private onSaved(s: Session): void {
    if (this.session !== s || s.state !== 'receiving') return;
    s.saved++;
    this.scheduleAck(s);
  }

  private scheduleAck(s: Session): void {
    // Never wait for more frames than half the window: the master would sit on a full window.
    const every = Math.max(1, Math.min(Math.floor(this.timing.ackEveryBytes / s.chunk), s.window >> 1));
    if (s.saved - s.lastAckSent >= every || s.saved === s.totalChunks) {
      this.sendAck(s, false);
      return;
    }
    if (!s.ackTimer && s.saved > s.lastAckSent) {
      s.ackTimer = setTimeout(() => {
        s.ackTimer = null;
        if (this.session === s && s.state === 'receiving' && s.saved > s.lastAckSent) this.sendAck(s, false);
      }, this.timing.ackDelayMs);
    }
  }

  private sendAck(s: Session, force: boolean): void {
    if (!force && s.saved === s.lastAckSent) return;
    if (s.ackTimer) {
      clearTimeout(s.ackTimer);
      s.ackTimer = null;
    }
    s.lastAckSent = s.saved;
    this.counters.acks++;
    this.send({ type: FrameType.ACK, tag: s.tag, seq: s.saved, payload: new Uint8Array(0) });
  }

  /** Asks for the frames missing below the highest one held, each at most once per hold-off. */
  private sendNak(s: Session): void {
    const now = Date.now();
    const highest = Math.max(...s.buffered.keys());
    const missing: number[] = [];
    for (let seq = s.expected; seq < highest && missing.length < 64; seq++) {
      if (s.buffered.has(seq)) continue;
      const last = s.nakSentAt.get(seq);
      if (last !== undefined && now - last < this.timing.nakHoldoffMs) continue;
      s.nakSentAt.set(seq, now);
      missing.push(seq);
    }
    if (missing.length === 0) return;
    for (const seq of s.nakSentAt.keys()) if (seq < s.expected) s.nakSentAt.delete(seq);
    this.counters.naks++;
    s.lastAckSent = s.saved;
    this.send({ type: FrameType.NAK, tag: s.tag, seq: s.saved, payload: encodeMissing(missing) });
  }

  // ---- END ----------------------------------------------------------------------------------

  private onEnd(s: Session, frame: Frame): void {
    if (s.state === 'done' || s.state === 'ending') {
      if (s.reply && s.state === 'done') this.send(s.reply);
      return;
    }
    if (s.state !== 'receiving') return;
    if (frame.seq !== s.totalChunks || s.saved !== s.totalChunks) {
      this.sendAck(s, true); // not everything is here yet: tell the master where we are
      return;
    }
    s.state = 'ending';
    const installing: Promise<void> = this.conclude(s).finally(() => {
      if (this.installing === installing) this.installing = null;
    });
    this.installing = installing;
  }

  /**
   * All bytes are in: the intake checks the SHA-256 against the OPEN (a damaged image is never
   * accepted, even if a frame CRC collided), verifies and admits the image, stages it in flash and
   * switches; only then does the master hear RESULT.
   */
  private async conclude(s: Session): Promise<void> {
    const id = s.intakeId!;
    let verdict: Awaited<ReturnType<ListenerIntake['finish']>>;
    try {
      verdict = await this.intake.finish(id);
    } catch (e) {
      verdict = { ok: false, error: { code: 'EBUSY', where: 'persist', reason: 'intake_failed', message: String(e) } as EngineError };
    }
    // The intake gave its verdict on the whole image: nothing is left to resume either way.
    void this.options.partials.discard(s.sha256).catch(() => {});
    s.intakeId = null; // finish ended the intake session, whatever the verdict
    const event: ListenerEvent = verdict.ok
      ? this.readyEvent(s, verdict.value)
      : { type: 'error', sha256: s.sha256, error: { ...verdict.error } };
    if (this.session !== s || s.state !== 'ending') {
      // The link went away while the device installed: the verdict stands, nobody hears it.
      this.emitEvent(event);
      return;
    }
    if (!verdict.ok) {
      this.finish(s, this.errorFrame(s.tag, verdict.error), event);
      return;
    }
    this.finish(s, { type: FrameType.RESULT, tag: s.tag, seq: s.totalChunks, payload: this.resultPayload(s, verdict.value) }, event);
  }

  private readyEvent(s: Session, v: IntakeVerdict): ListenerEvent {
    return {
      type: 'ready', outcome: v.outcome === 'updated' ? 'updated' : 'installed', appName: v.task.appName, pid: v.task.pid, version: v.task.appVersion,
      totalBytes: s.open.totalBytes, sha256: s.sha256, receivedBytes: s.receivedBytes, from: v.from, slot: v.slot, confirmPending: v.confirmPending,
    };
  }

  private resultPayload(s: Session, v: IntakeVerdict): Buffer {
    if (s.open.version < 2) return encodeResultV1({ pid: v.task.pid, appName: v.task.appName });
    const updated = v.outcome === 'updated' && v.from !== null;
    return encodeResult({
      outcome: updated ? 'updated' : 'installed', confirmPending: v.confirmPending, slot: v.slot,
      image: { pid: v.task.pid, crc32: v.task.crc32, sha256: v.task.sha256, appName: v.task.appName, version: v.task.appVersion },
      from: updated ? imageInfo(v.from!) : null,
    });
  }

  // ---- endings ------------------------------------------------------------------------------

  // ---- INFO ---------------------------------------------------------------------------------

  /** What the device runs and what its slots hold (version 2); any session goes on undisturbed. */
  private onInfoRequest(frame: Frame): void {
    const req = decodeInfoRequest(frame.payload);
    if (!req.ok) return this.send(this.errorFrame(frame.tag, { code: 'EPROTO', where: 'session', reason: 'bad_info_request' }));
    if (req.value.version < 2 || !this.versions.includes(req.value.version)) {
      return this.send(this.errorFrame(frame.tag, { code: 'EPROTO', where: 'session', reason: 'unsupported_version' }));
    }
    let payload: Buffer;
    try {
      if (!this.intake.inventory) throw new Error('no inventory');
      // version 3 adds what the device decodes; a version 2 request gets the version 2 INFO
      payload = encodeInfo({ ...this.intake.inventory(), codec: req.value.version >= 3 ? this.codec : null });
    } catch {
      return this.send(this.errorFrame(frame.tag, { code: 'ENOTSUP', where: 'session', reason: 'info_unavailable' }));
    }
    this.send({ type: FrameType.INFO, tag: frame.tag, seq: frame.seq, payload });
  }

  private capsByte(): number {
    return this.codec ? (this.codec.deflate ? CodecCap.DEFLATE : 0) | (this.codec.patch ? CodecCap.PATCH : 0) : 0;
  }

  private errorFrame(tag: number, e: ErrorMessage): Frame {
    return { type: FrameType.ERROR, tag, seq: 0, payload: encodeError({ code: e.code, where: e.where, reason: e.reason }) };
  }

  /** Ends the session with a verdict the master will get (and get again if it asks). */
  private finish(s: Session, reply: Frame, event: ListenerEvent): void {
    s.state = 'done';
    s.reply = reply;
    // A failed intake session holds nothing but stays until aborted; release it now.
    if (s.intakeId !== null) this.intake.abort(s.intakeId, event.type === 'error' ? event.error.reason : 'finished');
    s.intakeId = null;
    this.clearTimers(s);
    void s.writer?.close().catch(() => {});
    s.buffered.clear();
    this.send(reply);
    this.emitEvent(event);
  }

  /** The link failed or the master gave up: abort the intake session, keep the partial for a resume. */
  private abandon(s: Session, reason: string): Promise<void> {
    const p = this.doAbandon(s, reason);
    s.abandoning = p;
    return p;
  }

  private async doAbandon(s: Session, reason: string): Promise<void> {
    const wasActive = s.state !== 'done';
    // While ending, the intake already holds the whole image and installs it: that goes on.
    const installing = s.state === 'ending';
    s.state = 'done';
    if (wasActive && !installing) {
      // Frames of this session from now on are answered with this, never with its old ACCEPT: the
      // master learns the session is gone and opens a new one, which resumes from the partial.
      s.aborted = true;
      s.reply = this.errorFrame(s.tag, { code: 'ECANCELED', where: 'session', reason: 'session_aborted' });
    }
    this.clearTimers(s);
    s.buffered.clear();
    if (s.intakeId !== null && !installing) {
      this.intake.abort(s.intakeId, reason);
      s.intakeId = null;
    }
    await s.writer?.close().catch(() => {});
    if (wasActive) this.emitEvent({ type: 'aborted', sha256: s.sha256, reason, heldBytes: Math.min(s.saved * s.chunk, streamBytesOf(s.open)) });
  }

  private touch(s: Session): void {
    s.lastFrameAt = Date.now();
    if (s.idleTimer || s.state === 'done') return;
    const period = Math.max(10, Math.floor(this.timing.idleTimeoutMs / 4));
    s.idleTimer = setInterval(() => {
      if (this.session !== s || s.state === 'done') return;
      if (Date.now() - s.lastFrameAt >= this.timing.idleTimeoutMs) void this.abandon(s, 'link_idle');
    }, period);
    s.idleTimer.unref();
  }

  private clearTimers(s: Session): void {
    if (s.ackTimer) clearTimeout(s.ackTimer);
    if (s.idleTimer) clearInterval(s.idleTimer);
    s.ackTimer = s.idleTimer = null;
  }
}
