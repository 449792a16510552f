/**
 * The listener (device) side of the UART session protocol. It answers OPEN with the negotiated
 * frame size and window (and a resume offset when it already holds part of the same image),
 * puts DATA frames back in order inside the window, feeds them to the engine's streaming load,
 * acknowledges what it has fed and saved (so a slow engine or store simply withholds ACKs: flow
 * control), asks for missing frames with NAKs, and reports the engine's verdict at END.
 *
 * It sees only Frames through the Transport interface; serialport is the framing layer's business.
 */
import { createHash, type Hash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Transport, TransportStatus } from '../transport.js';
import type { Result } from '../../hxe/result.js';
import type { EngineError, ProvisioningEngine, TaskInfo } from '../../engine/index.js';
import { FrameType, type Frame } from './frame.js';
import {
  PROTOCOL_VERSION, decodeAbort, decodeOpen, encodeAccept, encodeError, encodeMissing, encodeResult,
  type ErrorMessage, type OpenMessage,
} from './messages.js';
import type { PartialStore, PartialWriter, PartialKey } from './partial-store.js';
import {
  DEFAULT_LISTENER_TIMING, ENGINE_CHUNK, LISTENER_MAX_CHUNK, LISTENER_MAX_WINDOW, MIN_CHUNK, type ListenerTiming,
} from './settings.js';

/** The part of the engine the listener drives: the streaming load. */
export type StreamingEngine = Pick<ProvisioningEngine, 'begin' | 'write' | 'end' | 'abort'>;

export interface ListenerOptions {
  /** The engine's source label for tasks loaded here, e.g. `uart:/dev/ttyUSB1`. */
  source: string;
  partials: PartialStore;
  maxChunk?: number;
  maxWindow?: number;
  /** Largest chunk the engine takes in one write (its `maxChunkBytes`); larger frames are split. */
  engineChunk?: number;
  /** Largest image accepted at OPEN (before anything is allocated). */
  maxImageBytes?: number;
  timing?: Partial<ListenerTiming>;
  /**
   * Runs after the engine reported READY and before the master hears it (the device command
   * persists the image here). An error is reported to the master instead of READY.
   */
  afterReady?: (task: TaskInfo) => Promise<Result<unknown, EngineError>>;
}

export type ListenerEvent =
  | { type: 'open'; appName: string; totalBytes: number; sha256: string; chunkSize: number; window: number; resumeOffset: number }
  | { type: 'ready'; appName: string; pid: number; totalBytes: number; sha256: string; receivedBytes: number }
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
  engineSession: number | null;
  engineSeq: number;
  /** Next chunk index to feed to the engine. */
  expected: number;
  /** Chunks fed and saved: what ACKs report. */
  saved: number;
  lastAckSent: number;
  buffered: Map<number, Uint8Array>;
  hash: Hash;
  writer: PartialWriter | null;
  /** Bytes received over the link in this session (not re-fed from the partial). */
  receivedBytes: number;
  ackTimer: NodeJS.Timeout | null;
  /** Checks `lastFrameAt` periodically (one timer per session, not one per frame). */
  idleTimer: NodeJS.Timeout | null;
  lastFrameAt: number;
  nakSentAt: Map<number, number>;
  lastDupAckAt: number;
  /** The ACCEPT, RESULT or ERROR frame repeated when the master asks again. */
  reply: Frame | null;
  /** Completion callbacks of the partial store's appends. */
  saveDone: () => void;
  saveFailed: () => void;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

export class UartListener extends EventEmitter {
  private session: Session | null = null;
  private unsubscribe: (() => void) | null = null;
  private readonly timing: ListenerTiming;
  private readonly maxChunk: number;
  private readonly maxWindow: number;
  private readonly maxImageBytes: number;
  private readonly engineChunk: number;
  /** Protocol counters (the framing layer keeps its own). */
  readonly counters = { acks: 0, naks: 0, duplicates: 0, outOfWindow: 0, badLength: 0, staleFrames: 0 };

  constructor(
    private readonly transport: Transport<Frame, Frame>,
    private readonly engine: StreamingEngine,
    private readonly options: ListenerOptions,
  ) {
    super();
    this.timing = { ...DEFAULT_LISTENER_TIMING, ...options.timing };
    this.maxChunk = Math.max(MIN_CHUNK, Math.min(options.maxChunk ?? LISTENER_MAX_CHUNK, LISTENER_MAX_CHUNK));
    this.maxWindow = Math.max(1, Math.min(options.maxWindow ?? LISTENER_MAX_WINDOW, LISTENER_MAX_WINDOW));
    this.maxImageBytes = options.maxImageBytes ?? 16 << 20;
    this.engineChunk = Math.max(1, options.engineChunk ?? ENGINE_CHUNK);
  }

  start(): void {
    if (this.unsubscribe) return;
    const stopReceiving = this.transport.receive((frame) => this.onFrame(frame));
    // A lost port (cable pulled) ends the session at once: the engine session is aborted,
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

  /** Stops listening; an unfinished session is aborted in the engine (its partial is kept). */
  async stop(reason: string): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    const s = this.session;
    if (s && s.state !== 'done') await this.abandon(s, reason);
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
    if (current && current.tag === frame.tag && current.nonce === frame.seq) {
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
    if (open.version !== PROTOCOL_VERSION) {
      this.send(this.errorFrame(frame.tag, { code: 'EPROTO', where: 'session', reason: 'unsupported_version' }));
      return;
    }
    if (open.totalBytes === 0 || open.totalBytes > this.maxImageBytes) {
      this.send(this.errorFrame(frame.tag, { code: 'ENOSPC', where: 'begin', reason: 'image_too_large' }));
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
      totalChunks: Math.ceil(open.totalBytes / chunk), resumeOffset: 0, state: 'preparing',
      engineSession: null, engineSeq: 0, expected: 0, saved: 0, lastAckSent: 0, buffered: new Map(),
      hash: createHash('sha256'), writer: null, receivedBytes: 0, ackTimer: null, idleTimer: null, lastFrameAt: 0,
      nakSentAt: new Map(), lastDupAckAt: 0, reply: null,
      saveDone: () => this.onSaved(s),
      saveFailed: () => {
        s.writer = null; // resume is an optimisation: go on without the store
        this.onSaved(s);
      },
    };
    this.session = s;
    this.touch(s);

    const begun = this.engine.begin({ source: this.options.source, totalBytes: open.totalBytes, expectedCrc: open.crc32 });
    if (!begun.ok) {
      this.finish(s, this.errorFrame(s.tag, begun.error), { type: 'error', sha256: s.sha256, error: { ...begun.error } });
      return;
    }
    s.engineSession = begun.value.sessionId;

    // Resume: re-feed what we already hold to the new engine session, then ask only for the rest.
    const key: PartialKey = { sha256: s.sha256, totalBytes: open.totalBytes, crc32: open.crc32 };
    const held = await this.options.partials.load(key).catch(() => null);
    if (this.session !== s) return;
    const resumeChunks = held ? Math.floor(held.length / chunk) : 0;
    for (let i = 0; i < resumeChunks; i++) {
      if (!this.feed(s, held!.subarray(i * chunk, (i + 1) * chunk))) return;
    }
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
      payload: encodeAccept({ version: PROTOCOL_VERSION, chunkSize: chunk, window, resumeOffset: s.resumeOffset }),
    };
    this.send(s.reply);
    this.emitEvent({ type: 'open', appName: open.appName, totalBytes: open.totalBytes, sha256: s.sha256, chunkSize: chunk, window, resumeOffset: s.resumeOffset });
  }

  // ---- DATA ---------------------------------------------------------------------------------

  private chunkLength(s: Session, seq: number): number {
    return seq === s.totalChunks - 1 ? s.open.totalBytes - seq * s.chunk : s.chunk;
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
      if (!this.feed(s, next)) return;
      s.expected++;
      this.save(s, next);
    }
    if (s.buffered.size > 0) this.sendNak(s);
  }

  /** One in-order chunk into the engine; false when the engine refused it (the session is over). */
  private feed(s: Session, chunk: Uint8Array): boolean {
    // A frame larger than the engine's chunk limit goes in as several engine writes.
    for (let at = 0; at < chunk.length; at += this.engineChunk) {
      const written = this.engine.write(s.engineSession!, s.engineSeq++, chunk.subarray(at, at + this.engineChunk));
      if (!written.ok) {
        // The engine's verdict ends the transfer; the partial is useless if the bytes are bad.
        if (written.error.code === 'EBADMSG') void this.options.partials.discard(s.sha256).catch(() => {});
        this.finish(s, this.errorFrame(s.tag, written.error), { type: 'error', sha256: s.sha256, error: { ...written.error } });
        return false;
      }
    }
    s.hash.update(chunk);
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
    const digest = s.hash.digest('hex');
    if (digest !== s.sha256) {
      // Cannot happen unless a frame CRC collided: refuse rather than accept a corrupted image.
      void this.options.partials.discard(s.sha256).catch(() => {});
      const error = { code: 'EBADMSG', where: 'verify', reason: 'sha256_mismatch', message: `received image SHA-256 ${digest} != announced ${s.sha256}` };
      this.finish(s, this.errorFrame(s.tag, error), { type: 'error', sha256: s.sha256, error });
      return;
    }
    const ended = this.engine.end(s.engineSession!);
    // The engine gave its verdict on the whole image: nothing is left to resume either way.
    void this.options.partials.discard(s.sha256).catch(() => {});
    if (ended.ok) s.engineSession = null; // the session became a task
    if (!ended.ok) {
      this.finish(s, this.errorFrame(s.tag, ended.error), { type: 'error', sha256: s.sha256, error: { ...ended.error } });
      return;
    }
    void this.afterReady(s, ended.value);
  }

  private async afterReady(s: Session, task: TaskInfo): Promise<void> {
    if (this.options.afterReady) {
      const r = await this.options.afterReady(task).catch((e: unknown) => ({
        ok: false as const, error: { code: 'EBUSY', where: 'persist', reason: 'persist_failed', message: String(e) } as EngineError,
      }));
      if (!r.ok) {
        this.finish(s, this.errorFrame(s.tag, r.error), { type: 'error', sha256: s.sha256, error: { ...r.error } });
        return;
      }
    }
    const { pid, appName } = task;
    this.finish(s, { type: FrameType.RESULT, tag: s.tag, seq: s.totalChunks, payload: encodeResult({ pid, appName }) }, {
      type: 'ready', appName, pid, totalBytes: s.open.totalBytes, sha256: s.sha256, receivedBytes: s.receivedBytes,
    });
  }

  // ---- endings ------------------------------------------------------------------------------

  private errorFrame(tag: number, e: ErrorMessage): Frame {
    return { type: FrameType.ERROR, tag, seq: 0, payload: encodeError({ code: e.code, where: e.where, reason: e.reason }) };
  }

  /** Ends the session with a verdict the master will get (and get again if it asks). */
  private finish(s: Session, reply: Frame, event: ListenerEvent): void {
    s.state = 'done';
    s.reply = reply;
    // A failed engine session holds nothing but stays until aborted; release it now.
    if (s.engineSession !== null) this.engine.abort(s.engineSession, event.type === 'error' ? event.error.reason : 'finished');
    s.engineSession = null;
    this.clearTimers(s);
    void s.writer?.close().catch(() => {});
    s.buffered.clear();
    this.send(reply);
    this.emitEvent(event);
  }

  /** The link failed or the master gave up: abort the engine session, keep the partial for a resume. */
  private async abandon(s: Session, reason: string): Promise<void> {
    const wasActive = s.state !== 'done';
    s.state = 'done';
    this.clearTimers(s);
    s.buffered.clear();
    if (s.engineSession !== null) {
      this.engine.abort(s.engineSession, reason);
      s.engineSession = null;
    }
    await s.writer?.close().catch(() => {});
    if (wasActive) this.emitEvent({ type: 'aborted', sha256: s.sha256, reason, heldBytes: Math.min(s.saved * s.chunk, s.open.totalBytes) });
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
