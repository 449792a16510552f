/**
 * The provisioning engine: the executive-owned provisioning service of the HSX design, as pure
 * logic. Transports and the gateway drive it through `loadImage` (monolithic) and
 * `begin/write/end/abort` (streaming); it verifies images, runs the pre-registration gates,
 * registers metadata, hands the stripped image to the VM loader and keeps the task table. Time,
 * storage and event delivery come in through the ports (src/engine/ports.ts).
 *
 * Every public operation returns a Result; every error is also emitted as `provisioning.error`.
 * A failed load gives back everything it took (PID, registry entries, arenas, buffer) before the
 * call returns.
 */
import { createHash } from 'node:crypto';
import { decodeF16, parseImage, strip, InPlaceVerifier } from '../hxe/index.js';
import { u16be } from '../hxe/bytes.js';
import { headerSizeForVersion } from '../hxe/header.js';
import { checkLayout } from '../hxe/layout.js';
import { formatVersion } from '../hxe/trailer.js';
import type { HxeImage, HxeLimits } from '../hxe/types.js';
import { err, ok, type Result } from '../hxe/result.js';
import { vouchedSecurityCounter } from './policy.js';
import { EngineConfigValidationError, validateEngineConfig, type EngineConfig, type EngineConfigInput } from './config.js';
import { engineError, fromHxeError, type EngineError, type EngineErrorWhere } from './errors.js';
import { budgetGate, capabilityGate, checkBudgets, type GateContext, type PreRegistrationGate } from './gates.js';
import { assignInstanceName, fallbackAppName, trimUtf8 } from './naming.js';
import type { Clock, CommitMode, EventPhase, EventSink, ImageMeta, ImageStore, ProvisioningEventType, ValueStore } from './ports.js';
import { isPersistedValue, MetadataRegistry, oidOf, rangeCheck, valueSchemaOf, type RegistryCounts } from './registry.js';
import { INITIAL_BUFFER_BYTES, StreamSession } from './session.js';
import { canTransition, LoadStateMachine, type LoadState, type StateChange, type StateListener } from './state.js';
import { InProcessVmLoader, type ArenaBlock, type ArenaKind, type VmLoader } from './vm.js';

export interface EngineOptions {
  config?: EngineConfigInput & { gates?: PreRegistrationGate[] };
  clock: Clock;
  events: EventSink;
  vm?: VmLoader;
  imageStore?: ImageStore;
  valueStore?: ValueStore;
  /** Extra pre-registration gates (signature, anti-downgrade…), run before the built-in capability and budget gates. */
  gates?: PreRegistrationGate[];
  onStateChange?: StateListener;
}

export interface LoadOptions {
  /** Where the image came from: `file:PATH`, `can:IFACE/master:NODE`, `uart:PORT`, `sd:MANIFEST#ENTRY`. */
  source: string;
  /** Stack for the task; the configured default when absent (HXE carries no stack field). */
  stackBytes?: number;
}

export interface BeginOptions extends LoadOptions {
  totalBytes?: number;
  /** zlib CRC-32 of the whole byte stream, checked at `end` (the transport's end-to-end check). */
  expectedCrc?: number;
}

export interface WriteAck {
  /** Bytes of this chunk (0 for an empty one). */
  bytesWritten: number;
  /** The chunk repeated the last one exactly and was ignored. */
  duplicate: boolean;
  /** Bytes received so far in the session. */
  totalBytesWritten: number;
}

export interface TaskInfo {
  pid: number;
  appName: string;
  appNameBase: string;
  allowMultipleInstances: boolean;
  state: LoadState;
  source: string;
  /** Clock time of the load. */
  loadedAt: number;
  entry: number;
  version: 1 | 2;
  reqCaps: number;
  crc32: number;
  sizes: { image: number; code: number; rodata: number; bss: number; stack: number };
  counts: { values: number; commands: number; mailboxes: number };
  arenas: Record<ArenaKind, ArenaBlock>;
}

export interface SessionInfo {
  sessionId: number;
  pid: number;
  state: LoadState;
  source: string;
  bytesWritten: number;
  totalBytes: number | null;
  nextSeq: number;
  startedAt: number;
}

/** Everything a load can hold; a leak check compares two snapshots. */
export interface EngineResources {
  sessions: number;
  bufferedBytes: number;
  pids: number;
  reservedPids: number;
  tasks: number;
  arenasUsed: Record<ArenaKind, number>;
  registry: RegistryCounts;
  timers: number;
}

interface TaskRecord {
  info: TaskInfo;
  /** The verified image as received (metadata included), for persisting. */
  bytes: Uint8Array;
  image: HxeImage;
  sm: LoadStateMachine;
}

interface ClosedSession {
  code: 'ETIMEDOUT' | 'ECANCELED';
  reason: string;
}

const toHex = (n: number) => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

export class ProvisioningEngine {
  readonly config: Readonly<EngineConfig>;
  private readonly clock: Clock;
  private readonly sink: EventSink;
  private readonly vm: VmLoader;
  private readonly imageStore: ImageStore | undefined;
  private readonly valueStore: ValueStore | undefined;
  private readonly registry: MetadataRegistry;
  private readonly gates: PreRegistrationGate[];
  private readonly listeners = new Set<StateListener>();
  private readonly sessionTable = new Map<number, StreamSession>();
  private readonly taskTable = new Map<number, TaskRecord>();
  private readonly closed = new Map<number, ClosedSession>();
  private bufferedBytes = 0;
  private timersArmed = 0;
  /** Format limits for parsing: the budget gate (not the parser) judges sizes, so it can name the arena. */
  private readonly parseLimits: HxeLimits;

  constructor(options: EngineOptions) {
    const { gates: configGates, ...rawConfig } = options.config ?? {};
    const validated = validateEngineConfig(rawConfig);
    if (!validated.ok) throw new EngineConfigValidationError(validated.error);
    this.config = validated.value;
    this.clock = options.clock;
    this.sink = options.events;
    this.imageStore = options.imageStore;
    this.valueStore = options.valueStore;
    this.vm = options.vm ?? new InProcessVmLoader({ arenas: this.config.arenas, maxTasks: this.config.maxTasks });
    this.registry = new MetadataRegistry(this.config.registry);
    this.gates = [...(configGates ?? []), ...(options.gates ?? [])];
    if (options.onStateChange) this.listeners.add(options.onStateChange);
    this.parseLimits = { maxCode: this.config.maxImageBytes, maxRodata: this.config.maxImageBytes, maxBss: 0xffffffff };
  }

  /** Subscribe to every state change of every load; returns the unsubscribe function. */
  onStateChange(listener: StateListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private readonly notify = (change: StateChange): void => {
    for (const l of this.listeners) l(change);
  };

  // ───────────────────────────── events ─────────────────────────────

  private emit(type: ProvisioningEventType, pid: number | null, phase: EventPhase, data: Record<string, unknown>): void {
    this.sink.emit({ type, pid, phase, data });
  }

  /** Every error leaves as a value and as a `provisioning.error` event. */
  private fail<T>(e: EngineError, pid: number | null, terminal: boolean): Result<T, EngineError> {
    this.emit('provisioning.error', pid, e.where, {
      code: e.code, where: e.where, reason: e.reason, message: e.message, detail: e.detail ?? {}, terminal,
    });
    return err(e);
  }

  // ───────────────────────────── monolithic ─────────────────────────────

  loadImage(bytes: Uint8Array, options: LoadOptions): Result<TaskInfo, EngineError> {
    const bad = this.checkLoadOptions(options, 'verify');
    if (bad) return this.fail(bad, null, true);
    const sm = new LoadStateMachine(null, this.notify);
    sm.transition('LOADING', 'load');
    this.emit('provisioning.started', null, 'begin', { source: options.source, mode: 'monolithic', total_bytes: bytes.length });
    sm.transition('VERIFY', 'image complete');
    if (bytes.length > this.config.maxImageBytes) {
      return this.failLoad(sm, engineError('ENOSPC', 'verify', 'image_too_large',
        `image is ${bytes.length} bytes, limit is ${this.config.maxImageBytes}`, { size: bytes.length, limit: this.config.maxImageBytes }));
    }
    const parsed = parseImage(bytes, this.parseLimits);
    if (!parsed.ok) return this.failLoad(sm, fromHxeError(parsed.error, 'verify'));
    const admitted = this.admit(sm, parsed.value, bytes, options.source, 'monolithic', options.stackBytes);
    if (!admitted.ok) return this.failLoad(sm, admitted.error);
    return admitted;
  }

  /** A monolithic load has no session to abort later: a failure is torn down at once (FAILED → ABORTING → IDLE). */
  private failLoad(sm: LoadStateMachine, e: EngineError): Result<TaskInfo, EngineError> {
    sm.transition('FAILED', e.reason);
    this.releasePid(sm.pid);
    const result = this.fail<TaskInfo>(e, sm.pid, true);
    sm.transition('ABORTING', 'load failed');
    sm.transition('IDLE', 'released');
    return result;
  }

  private checkLoadOptions(options: LoadOptions, where: EngineErrorWhere): EngineError | null {
    if (typeof options?.source !== 'string' || options.source.length === 0) {
      return engineError('EBADMSG', where, 'source_missing', 'source must be a non-empty string (file:PATH, can:IFACE/master:NODE, uart:PORT, sd:MANIFEST#ENTRY)');
    }
    if (options.stackBytes !== undefined && !(Number.isSafeInteger(options.stackBytes) && options.stackBytes >= 0)) {
      return engineError('EBADMSG', where, 'stack_invalid', `stackBytes must be a non-negative integer, got ${String(options.stackBytes)}`);
    }
    return null;
  }

  // ───────────────────────── verified image → READY ─────────────────────────

  /**
   * Shared tail of both load kinds, entered in VERIFY with a parsed image: gates, PID (monolithic),
   * name, persisted values, registration, VM load, READY. On failure it undoes what it did itself
   * (registrations); the caller releases the PID.
   */
  private admit(sm: LoadStateMachine, image: HxeImage, bytes: Uint8Array, source: string, mode: 'monolithic' | 'stream',
    stackOption: number | undefined): Result<TaskInfo, EngineError> {
    const stackBytes = stackOption ?? this.config.defaultStackBytes;
    const ctx: GateContext = { source, mode, pid: sm.pid, config: this.config, stackBytes, vm: this.vm.usage() };
    if (this.imageStore) ctx.imageStore = this.imageStore;
    for (const gate of this.gates) {
      const refusal = gate(image, bytes, ctx);
      if (refusal) return err(refusal);
    }
    for (const gate of [capabilityGate, budgetGate]) {
      const refusal = gate(image, bytes, ctx);
      if (refusal) return err(refusal);
    }

    let pid = sm.pid;
    if (pid === null) {
      const reserved = this.vm.reservePid();
      if (!reserved.ok) return err({ ...reserved.error, where: 'register' });
      pid = reserved.value;
      sm.pid = pid;
    }

    const h = image.header;
    const base = h.appName.trim() !== '' ? h.appName : fallbackAppName(source, pid);
    const name = assignInstanceName(base, h.allowMultipleInstances, (n) => this.nameTaken(n), this.config.maxAppNameBytes);
    if (!name) {
      const bare = trimUtf8(base, this.config.maxAppNameBytes);
      return err(engineError('EEXIST', 'register', 'app_exists', `app_exists:${bare}`, { appName: bare }));
    }

    const restored = this.restoreValues(image);
    const registered = this.registry.register(pid, image, restored.overrides);
    if (!registered.ok) return registered;

    const loaded = this.vm.load(pid, strip(image), stackBytes);
    if (!loaded.ok) {
      this.registry.release(pid);
      return err({ ...loaded.error, where: 'end' });
    }
    const info: TaskInfo = {
      pid, appName: name.appName, appNameBase: name.appNameBase, allowMultipleInstances: h.allowMultipleInstances,
      state: 'READY', source, loadedAt: this.clock.now(), entry: h.entry, version: h.version, reqCaps: h.reqCaps, crc32: h.crc32,
      sizes: { image: bytes.length, code: h.codeLen, rodata: h.roLen, bss: h.bssSize, stack: stackBytes },
      counts: { values: registered.value.values, commands: registered.value.commands, mailboxes: registered.value.mailboxes },
      arenas: loaded.value.arenas,
    };
    // in the table before READY is announced, so a state listener already finds the task
    // a monolithic caller may reuse its buffer: the task keeps its own copy (a stream hands over its buffer in end())
    this.taskTable.set(pid, { info, bytes: mode === 'monolithic' ? bytes.slice() : bytes, image, sm });
    sm.transition('READY', 'loaded');
    for (const e of restored.events) this.emit(e.type, pid, 'register', e.data);
    this.emit('provisioning.complete', pid, 'end', {
      app_name: info.appName, app_name_base: info.appNameBase, source, mode, size: bytes.length,
      code_len: h.codeLen, ro_len: h.roLen, bss: h.bssSize, stack: stackBytes, ...info.counts,
    });
    return ok(structuredClone(info));
  }

  private nameTaken(name: string): boolean {
    for (const t of this.taskTable.values()) if (t.info.appName === name) return true;
    return false;
  }

  /** Persisted values are read back over their init values; the events go out only if the load succeeds. */
  private restoreValues(image: HxeImage): {
    overrides: Map<number, number>;
    events: Array<{ type: 'value.restored' | 'value.defaulted'; data: Record<string, unknown> }>;
  } {
    const overrides = new Map<number, number>();
    const events: Array<{ type: 'value.restored' | 'value.defaulted'; data: Record<string, unknown> }> = [];
    if (!this.valueStore) return { overrides, events };
    for (const v of image.values) {
      if (!isPersistedValue(v)) continue;
      const oid = oidOf(v.group, v.id);
      const base = { oid, key: v.persistKey, group: v.group, id: v.id, name: v.name };
      const read = this.valueStore.read(v.persistKey, valueSchemaOf(v));
      if (!read.ok) {
        events.push({ type: 'value.defaulted', data: { ...base, reason: read.reason, raw: v.init.raw } });
        continue;
      }
      if (!rangeCheck(v, read.raw).ok) {
        events.push({ type: 'value.defaulted', data: { ...base, reason: 'out_of_range', raw: v.init.raw, stored_raw: read.raw } });
        continue;
      }
      overrides.set(oid, read.raw);
      events.push({ type: 'value.restored', data: { ...base, raw: read.raw } });
    }
    return { overrides, events };
  }

  private releasePid(pid: number | null): void {
    if (pid !== null && !this.taskTable.has(pid)) this.vm.release(pid);
  }

  // ───────────────────────────── streaming ─────────────────────────────

  begin(options: BeginOptions): Result<{ sessionId: number }, EngineError> {
    const bad = this.checkLoadOptions(options, 'begin');
    if (bad) return this.fail(bad, null, true);
    const { totalBytes, expectedCrc } = options;
    const cfg = this.config;
    if (totalBytes !== undefined) {
      if (!Number.isSafeInteger(totalBytes) || totalBytes < 0) {
        return this.fail(engineError('EBADMSG', 'begin', 'total_invalid', `totalBytes must be a non-negative integer, got ${String(totalBytes)}`), null, true);
      }
      if (totalBytes > cfg.maxImageBytes) {
        return this.fail(engineError('ENOSPC', 'begin', 'image_too_large', `totalBytes ${totalBytes} exceeds the image limit of ${cfg.maxImageBytes}`,
          { totalBytes, limit: cfg.maxImageBytes }), null, true);
      }
    }
    if (expectedCrc !== undefined && !(Number.isInteger(expectedCrc) && expectedCrc >= 0 && expectedCrc <= 0xffffffff)) {
      return this.fail(engineError('EBADMSG', 'begin', 'crc_invalid', `expectedCrc must be a u32, got ${String(expectedCrc)}`), null, true);
    }
    if (this.sessionTable.size >= cfg.maxSessions) {
      return this.fail(engineError('ENOSPC', 'begin', 'too_many_sessions', `${this.sessionTable.size} sessions open, limit ${cfg.maxSessions}`,
        { open: this.sessionTable.size, limit: cfg.maxSessions }), null, true);
    }
    const capacity = Math.max(1, Math.min(totalBytes ?? INITIAL_BUFFER_BYTES, cfg.maxImageBytes));
    if (this.bufferedBytes + capacity > cfg.maxBufferedBytes) {
      return this.fail(engineError('ENOSPC', 'begin', 'buffer_budget', `buffering ${capacity} more bytes would exceed ${cfg.maxBufferedBytes} (${this.bufferedBytes} in use)`,
        { requested: capacity, inUse: this.bufferedBytes, limit: cfg.maxBufferedBytes }), null, true);
    }
    const reserved = this.vm.reservePid();
    if (!reserved.ok) return this.fail({ ...reserved.error, where: 'begin' }, null, true);
    const pid = reserved.value;
    this.closed.delete(pid);
    const sm = new LoadStateMachine(pid, this.notify);
    const now = this.clock.now();
    const s = new StreamSession(pid, options.source, totalBytes, expectedCrc, options.stackBytes, now, sm, capacity);
    s.verifier = new InPlaceVerifier(this.parseLimits, totalBytes !== undefined ? { totalBytes } : {});
    this.bufferedBytes += capacity;
    this.sessionTable.set(pid, s);
    this.scheduleProgress(s);
    sm.transition('LOADING', 'begin');
    this.armTimer(s, Math.min(cfg.writeTimeoutMs, cfg.totalTimeoutMs));
    this.emit('provisioning.started', pid, 'begin', { source: options.source, mode: 'stream', total_bytes: totalBytes ?? null });
    return ok({ sessionId: pid });
  }

  /** Why there is no session `sessionId`: the load finished, it timed out or was aborted, or it never existed. */
  private missingSession(sessionId: number, where: EngineErrorWhere): EngineError {
    if (this.taskTable.has(sessionId)) {
      return engineError('EBUSY', where, 'task_ready', `session ${sessionId} already ended: PID ${sessionId} is a READY task`, { pid: sessionId });
    }
    const closed = this.closed.get(sessionId);
    if (closed) {
      return engineError(closed.code, where, closed.reason, `session ${sessionId} was ${closed.code === 'ETIMEDOUT' ? 'timed out' : 'aborted'} (${closed.reason})`,
        { sessionId });
    }
    return engineError('ESRCH', where, 'unknown_session', `unknown streaming session ${sessionId}`, { sessionId });
  }

  write(sessionId: number, seq: number, chunk: Uint8Array): Result<WriteAck, EngineError> {
    const s = this.sessionTable.get(sessionId);
    if (!s) return this.fail(this.missingSession(sessionId, 'write'), this.taskTable.has(sessionId) ? sessionId : null, false);
    if (s.sm.state !== 'LOADING') {
      return this.fail(engineError('EBUSY', 'write', 'not_writable', `session ${sessionId} is ${s.sm.state}, not LOADING`, { state: s.sm.state }), sessionId, false);
    }
    if (chunk.length > this.config.maxChunkBytes) {
      return this.fail(engineError('EBADMSG', 'write', 'chunk_too_large', `chunk of ${chunk.length} bytes exceeds the limit of ${this.config.maxChunkBytes}`,
        { size: chunk.length, limit: this.config.maxChunkBytes, expectedSeq: s.nextSeq }), sessionId, false);
    }
    const verdict = s.classify(seq, chunk);
    if (verdict === 'duplicate') {
      s.lastActivityAt = this.clock.now();
      return ok({ bytesWritten: chunk.length, duplicate: true, totalBytesWritten: s.length });
    }
    if (verdict !== 'next') return this.fail(verdict, sessionId, false);

    const limit = s.totalBytes ?? this.config.maxImageBytes;
    if (s.length + chunk.length > limit) {
      const e = s.totalBytes !== undefined
        ? engineError('EBADMSG', 'write', 'exceeds_total', `chunk ${seq} takes the stream to ${s.length + chunk.length} bytes, past the announced ${s.totalBytes}`,
          { received: s.length + chunk.length, totalBytes: s.totalBytes })
        : engineError('ENOSPC', 'write', 'image_too_large', `chunk ${seq} takes the stream to ${s.length + chunk.length} bytes, past the image limit of ${limit}`,
          { received: s.length + chunk.length, limit });
      return this.failSession(s, e);
    }
    const grow = s.growthNeeded(chunk.length, limit);
    if (grow !== 0) {
      const extra = grow - s.buffer.length;
      if (this.bufferedBytes + extra > this.config.maxBufferedBytes) {
        return this.failSession(s, engineError('ENOSPC', 'write', 'buffer_budget',
          `buffering ${extra} more bytes would exceed ${this.config.maxBufferedBytes} (${this.bufferedBytes} in use)`,
          { requested: extra, inUse: this.bufferedBytes, limit: this.config.maxBufferedBytes }));
      }
      s.grow(grow);
      this.bufferedBytes += extra;
    }
    s.append(chunk, this.clock.now());
    const headerError = this.verifyChunk(s);
    if (headerError) return this.failSession(s, headerError);
    if (s.length >= s.nextProgressAt) this.progress(s);
    return ok({ bytesWritten: chunk.length, duplicate: false, totalBytesWritten: s.length });
  }

  /** Feeds the streaming verifier; on the chunk that completes the header, also checks the budgets early. */
  private verifyChunk(s: StreamSession): EngineError | null {
    const v = s.verifier!;
    const rejected = v.advance(s.buffer, s.length);
    if (rejected) return fromHxeError(rejected, 'write');
    if (!s.headerChecked && v.header) {
      s.headerChecked = true;
      const over = checkBudgets(v.header, s.stackBytes ?? this.config.defaultStackBytes, this.config, this.vm.usage());
      if (over) return { ...over, where: 'write' };
    }
    return null;
  }

  private scheduleProgress(s: StreamSession): void {
    if (s.totalBytes !== undefined && s.totalBytes > 0) {
      const nextPercent = Math.floor((s.length * 100) / s.totalBytes) + 1;
      s.nextProgressAt = nextPercent > 100 ? Infinity : Math.ceil((nextPercent * s.totalBytes) / 100);
    } else {
      s.nextProgressAt = s.length + this.config.progressStepBytes - (s.length % this.config.progressStepBytes);
    }
  }

  /** Progress goes out on whole-percent steps (total known) or every `progressStepBytes`; the event bus rate-limits further. */
  private progress(s: StreamSession): void {
    const total = s.totalBytes ?? null;
    const percent = total ? Math.floor((s.length * 100) / total) : null;
    this.emit('provisioning.progress', s.id, 'write', { bytes_written: s.length, total_bytes: total, percent });
    this.scheduleProgress(s);
  }

  end(sessionId: number): Result<TaskInfo, EngineError> {
    const s = this.sessionTable.get(sessionId);
    if (!s) return this.fail(this.missingSession(sessionId, 'end'), this.taskTable.has(sessionId) ? sessionId : null, false);
    if (s.sm.state !== 'LOADING') {
      return this.fail(engineError('EBUSY', 'end', 'session_failed', `session ${sessionId} is ${s.sm.state}; abort it`, { state: s.sm.state }), sessionId, false);
    }
    // An incomplete stream is not a verdict on the image: the session stays LOADING so the sender can go on.
    const incomplete = this.incompleteBy(s);
    if (incomplete) return this.fail(incomplete, sessionId, false);

    s.sm.transition('VERIFY', 'end');
    if (s.expectedCrc !== undefined) {
      // From the verifier's running CRC of the body: the image is not read a second time here.
      const actual = s.verifier!.streamCrc();
      if (actual !== s.expectedCrc) {
        return this.failSession(s, engineError('EBADMSG', 'end', 'transfer_crc_mismatch',
          `stream CRC-32 is ${toHex(actual)}, sender announced ${toHex(s.expectedCrc)}`, { expected: s.expectedCrc, actual }));
      }
    }
    const bytes = s.exactImage();
    const finished = s.verifier!.finish(bytes);
    s.verifier = null;
    if (!finished.ok) return this.failSession(s, fromHxeError(finished.error, 'verify'));
    const admitted = this.admit(s.sm, finished.value, bytes, s.source, 'stream', s.stackBytes);
    if (!admitted.ok) return this.failSession(s, admitted.error);

    // The task keeps an exactly-sized copy of the image; the session and its timer go.
    const held = s.buffer.length;
    const image = s.takeImage();
    const record = this.taskTable.get(sessionId);
    if (record) record.bytes = image; // (absent only if a state listener unloaded it already)
    this.bufferedBytes -= held;
    this.disarmTimer(s);
    this.sessionTable.delete(sessionId);
    return admitted;
  }

  /**
   * Whether the stream cannot be a whole image yet: fewer bytes than announced, no complete header,
   * or a metadata table or section that reaches past what has arrived. (Without an announced total,
   * a truncated image and an image still arriving look the same; the sender decides.)
   */
  private incompleteBy(s: StreamSession): EngineError | null {
    const incomplete = (expected: number, why: string) =>
      engineError('EBADMSG', 'end', 'incomplete', `HXE payload incomplete: ${s.length} bytes received, ${why} ${expected}`,
        { received: s.length, expected, expectedSeq: s.nextSeq });
    if (s.totalBytes !== undefined && s.length < s.totalBytes) return incomplete(s.totalBytes, 'announced');
    const h = s.verifier!.header;
    if (!h) return incomplete(s.length < 6 ? 32 : headerSizeForVersion(u16be(s.buffer, 4)), 'the header needs');
    const roEnd = h.headerSize + h.codeLen + h.roLen;
    if (s.length < roEnd) return incomplete(roEnd, 'header, code and rodata need');
    const layout = checkLayout(s.buffer.subarray(0, s.length), h, []);
    if (!layout.ok && (layout.error.reason === 'meta_table_out_of_bounds' || layout.error.reason === 'section_out_of_bounds')) {
      return incomplete(s.length + 1, 'the metadata needs more than');
    }
    return null;
  }

  /** LOADING/VERIFY → FAILED: frees the buffer and the PID at once; the session stays (holding nothing) until abort or expiry. */
  private failSession<T>(s: StreamSession, e: EngineError): Result<T, EngineError> {
    s.sm.transition('FAILED', e.reason);
    this.bufferedBytes -= s.releaseBuffer();
    s.verifier = null;
    this.releasePid(s.id);
    s.lastActivityAt = this.clock.now();
    return this.fail(e, s.id, true);
  }

  abort(sessionId: number, reason: string): Result<void, EngineError> {
    const s = this.sessionTable.get(sessionId);
    if (!s) {
      // ESRCH for an ended session too (the HSX reference answers "abort twice" that way)
      const e = this.taskTable.has(sessionId)
        ? engineError('EBUSY', 'end', 'task_ready', `PID ${sessionId} is a READY task, not a session; unload it instead`, { pid: sessionId })
        : engineError('ESRCH', 'end', 'unknown_session', `unknown streaming session ${sessionId}`, { sessionId });
      return this.fail(e, this.taskTable.has(sessionId) ? sessionId : null, false);
    }
    if (!canTransition(s.sm.state, 'ABORTING')) {
      // only reachable from a state listener re-entering the engine mid-transition
      return this.fail(engineError('EBUSY', 'end', 'not_abortable', `session ${sessionId} is ${s.sm.state} and cannot be aborted now`,
        { state: s.sm.state }), sessionId, false);
    }
    this.teardown(s, 'ECANCELED', reason);
    return ok(undefined);
  }

  /** LOADING/FAILED → ABORTING → IDLE, everything freed, `provisioning.aborted`. */
  private teardown(s: StreamSession, code: ClosedSession['code'], reason: string): void {
    s.sm.transition('ABORTING', reason);
    this.disarmTimer(s);
    const bytesWritten = s.length;
    this.bufferedBytes -= s.releaseBuffer();
    s.verifier = null;
    this.releasePid(s.id);
    this.sessionTable.delete(s.id);
    this.remember(s.id, { code, reason });
    s.sm.transition('IDLE', 'released');
    this.emit('provisioning.aborted', s.id, 'end', { reason, source: s.source, bytes_written: bytesWritten });
  }

  private remember(id: number, closed: ClosedSession): void {
    if (this.config.closedSessionMemory === 0) return;
    this.closed.set(id, closed);
    if (this.closed.size > this.config.closedSessionMemory) {
      const oldest = this.closed.keys().next().value;
      if (oldest !== undefined) this.closed.delete(oldest);
    }
  }

  // ───────────────────────────── timeouts ─────────────────────────────

  /**
   * One timer per session, re-armed lazily: a write only records its time, and the timer, when it
   * fires, works out whether a deadline really passed. No timer is created per chunk.
   */
  private armTimer(s: StreamSession, ms: number): void {
    s.timer = this.clock.setTimeout(() => this.onTimer(s), ms);
    this.timersArmed++;
  }

  private disarmTimer(s: StreamSession): void {
    if (s.timer !== null) {
      this.clock.clearTimeout(s.timer);
      s.timer = null;
      this.timersArmed--;
    }
  }

  private onTimer(s: StreamSession): void {
    s.timer = null;
    this.timersArmed--;
    if (this.sessionTable.get(s.id) !== s) return;
    const now = this.clock.now();
    const cfg = this.config;
    const writeDeadline = s.lastActivityAt + cfg.writeTimeoutMs;
    const totalDeadline = s.startedAt + cfg.totalTimeoutMs;
    if (s.sm.state === 'FAILED') {
      // a failed session holds nothing; it is forgotten one write-timeout after it failed
      if (now >= writeDeadline) this.teardown(s, 'ETIMEDOUT', 'failed_session_expired');
      else this.armTimer(s, writeDeadline - now);
      return;
    }
    const reason = now >= totalDeadline ? 'total_timeout' : now >= writeDeadline ? 'write_timeout' : null;
    if (reason === null) {
      this.armTimer(s, Math.min(writeDeadline, totalDeadline) - now);
      return;
    }
    const limit = reason === 'total_timeout' ? cfg.totalTimeoutMs : cfg.writeTimeoutMs;
    this.fail(engineError('ETIMEDOUT', 'write', reason,
      `session ${s.id} ${reason === 'total_timeout' ? `took longer than ${limit} ms` : `received nothing for ${limit} ms`}; aborted`,
      { timeoutMs: limit, bytesWritten: s.length, expectedSeq: s.nextSeq }), s.id, true);
    this.teardown(s, 'ETIMEDOUT', reason);
  }

  // ───────────────────────────── tasks ─────────────────────────────

  unload(pid: number): Result<void, EngineError> {
    const t = this.taskTable.get(pid);
    if (!t) {
      const e = this.sessionTable.has(pid)
        ? engineError('EBUSY', 'end', 'session_open', `PID ${pid} is still loading; abort its session instead`, { pid })
        : engineError('ESRCH', 'end', 'unknown_pid', `unknown PID ${pid}`, { pid });
      return this.fail(e, this.sessionTable.has(pid) ? pid : null, false);
    }
    this.registry.release(pid);
    this.vm.release(pid);
    this.taskTable.delete(pid);
    t.sm.transition('IDLE', 'unload');
    this.emit('provisioning.unloaded', pid, 'end', { app_name: t.info.appName, source: t.info.source });
    return ok(undefined);
  }

  ps(): TaskInfo[] {
    return [...this.taskTable.values()].map((t) => structuredClone(t.info)).sort((a, b) => a.pid - b.pid);
  }

  task(pid: number): TaskInfo | undefined {
    const t = this.taskTable.get(pid);
    return t ? structuredClone(t.info) : undefined;
  }

  /** The image bytes a READY task was loaded from. */
  taskImage(pid: number): Uint8Array | undefined {
    return this.taskTable.get(pid)?.bytes;
  }

  sessions(): SessionInfo[] {
    return [...this.sessionTable.values()].map((s) => ({
      sessionId: s.id, pid: s.id, state: s.sm.state, source: s.source, bytesWritten: s.length,
      totalBytes: s.totalBytes ?? null, nextSeq: s.nextSeq, startedAt: s.startedAt,
    }));
  }

  resources(): EngineResources {
    const u = this.vm.usage();
    return {
      sessions: this.sessionTable.size, bufferedBytes: this.bufferedBytes, pids: u.pids, reservedPids: u.reserved, tasks: u.tasks,
      arenasUsed: { code: u.arenas.code.used, rodata: u.arenas.rodata.used, data: u.arenas.data.used, stack: u.arenas.stack.used },
      registry: this.registry.counts(), timers: this.timersArmed,
    };
  }

  /** The registries, read-only (mailbox and command lookups for the gateway). */
  get metadata(): Pick<MetadataRegistry, 'value' | 'command' | 'valuesOf' | 'commandsOf' | 'mailboxesOf' | 'counts'> {
    return this.registry;
  }

  // ───────────────────────────── values ─────────────────────────────

  getValue(oid: number): Result<{ raw: number; value: number }, EngineError> {
    const v = this.registry.value(oid);
    if (!v) return this.fail(engineError('ESRCH', 'register', 'unknown_value', `no value with OID ${oid} (group ${oid >> 8}, id ${oid & 0xff})`, { oid }), null, false);
    return ok({ raw: v.raw, value: decodeF16(v.raw) });
  }

  setValue(oid: number, raw: number): Result<{ raw: number }, EngineError> {
    const v = this.registry.value(oid);
    if (!v) return this.fail(engineError('ESRCH', 'register', 'unknown_value', `no value with OID ${oid} (group ${oid >> 8}, id ${oid & 0xff})`, { oid }), null, false);
    if (!Number.isInteger(raw) || raw < 0 || raw > 0xffff) {
      return this.fail(engineError('EBADMSG', 'register', 'raw_invalid', `raw must be f16 bits 0..0xFFFF, got ${String(raw)}`, { oid, raw }), v.pid, false);
    }
    if (v.readOnly) return this.fail(engineError('EPERM', 'register', 'read_only', `value (${v.group},${v.id}) is read-only`, { oid }), v.pid, false);
    const range = rangeCheck(v, raw);
    if (!range.ok) {
      return this.fail(engineError('EBADMSG', 'register', 'out_of_range', `value ${range.value} is outside [${v.min.value}, ${v.max.value}] of (${v.group},${v.id})`,
        { oid, value: range.value, min: v.min.value, max: v.max.value }), v.pid, false);
    }
    v.raw = raw;
    if (v.persisted && this.valueStore) this.valueStore.write(v.persistKey, raw, valueSchemaOf(v));
    return ok({ raw });
  }

  // ───────────────────────────── persistence ─────────────────────────────

  private metaFor(t: TaskRecord, overrides?: Partial<ImageMeta>): ImageMeta {
    const h = t.image.header;
    const tr = t.image.trailer;
    return {
      appName: t.info.appName,
      version: tr ? formatVersion(tr.version) : '0.0.0+0',
      // Only a counter that a verified signature vouched for (the policy gate records it) is ever recorded:
      // an unverified high counter would lock the device out of every later image.
      securityCounter: vouchedSecurityCounter(t.image),
      reqCaps: h.reqCaps, codeLen: h.codeLen, roLen: h.roLen, bssSize: h.bssSize, source: t.info.source, crc32: h.crc32,
      sha256: createHash('sha256').update(t.bytes).digest('hex'),
      bootPriority: 0,
      ...overrides,
    };
  }

  private storeError(e: unknown, what: string): EngineError {
    const codes = ['EBADMSG', 'ENOSPC', 'ESRCH', 'EBUSY', 'EEXIST', 'EPERM', 'ETIMEDOUT', 'ECANCELED'];
    const maybe = e as { code?: unknown; reason?: unknown; message?: unknown };
    const code = typeof maybe?.code === 'string' && codes.includes(maybe.code) ? (maybe.code as EngineError['code']) : 'EBUSY';
    const reason = typeof maybe?.reason === 'string' ? maybe.reason : 'store_error';
    return engineError(code, 'persist', reason, `${what}: ${typeof maybe?.message === 'string' ? maybe.message : String(e)}`);
  }

  private noStore(): EngineError {
    return engineError('ESRCH', 'persist', 'no_image_store', 'the engine has no image store');
  }

  /** Writes a READY task's image to the store (A/B commit); `test` images revert at next boot unless confirmed. */
  async persist(pid: number, mode: CommitMode, meta?: Partial<ImageMeta>): Promise<Result<{ slot: 'A' | 'B'; seq: number; meta: ImageMeta }, EngineError>> {
    if (!this.imageStore) return this.fail(this.noStore(), pid, true);
    if (mode !== 'test' && mode !== 'permanent') {
      return this.fail(engineError('EBADMSG', 'persist', 'mode_invalid', `mode must be "test" or "permanent", got ${String(mode)}`), pid, true);
    }
    const t = this.taskTable.get(pid);
    if (!t) return this.fail(engineError('ESRCH', 'persist', 'unknown_pid', `unknown PID ${pid}`, { pid }), null, true);
    const m = this.metaFor(t, meta);
    try {
      const r = await this.imageStore.commit(t.bytes, m, mode);
      this.emit('provisioning.persisted', pid, 'persist', { slot: r.slot, seq: r.seq, mode, app_name: m.appName, sha256: m.sha256, version: m.version });
      return ok({ ...r, meta: m });
    } catch (e) {
      return this.fail(this.storeError(e, 'commit failed'), pid, true);
    }
  }

  async confirm(): Promise<Result<void, EngineError>> {
    if (!this.imageStore) return this.fail(this.noStore(), null, true);
    try {
      await this.imageStore.confirm();
      const active = this.imageStore.active();
      this.emit('provisioning.persisted', null, 'persist', { confirmed: true, app_name: active?.meta.appName ?? null });
      return ok(undefined);
    } catch (e) {
      return this.fail(this.storeError(e, 'confirm failed'), null, true);
    }
  }

  /** Switches the store back to the previous image; what `restore()` loads from then on. */
  async rollback(reason: string): Promise<Result<{ slot: 'A' | 'B'; meta: ImageMeta | null }, EngineError>> {
    if (!this.imageStore) return this.fail(this.noStore(), null, true);
    try {
      const r = await this.imageStore.rollback(reason);
      this.emit('provisioning.rollback', null, 'persist', { reason, slot: r.slot, app_name: r.meta?.appName ?? null });
      return ok(r);
    } catch (e) {
      return this.fail(this.storeError(e, 'rollback failed'), null, true);
    }
  }

  /** Boot: loads the store's active image (a normal monolithic load, so every check runs again). Null when the store is empty. */
  restore(): Result<TaskInfo | null, EngineError> {
    if (!this.imageStore) return this.fail(this.noStore(), null, true);
    const active = this.imageStore.active();
    if (!active) return ok(null);
    return this.loadImage(active.image, { source: `store:${active.meta.source}` });
  }
}
