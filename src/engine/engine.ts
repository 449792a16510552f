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
import { assignInstanceName, fallbackAppName, trimUtf8, type InstanceName } from './naming.js';
import type { Clock, CommitMode, EventPhase, EventSink, ImageMeta, ImageStore, ProvisioningEventType, SlotSummary, ValueStore } from './ports.js';
import { isPersistedValue, MetadataRegistry, oidOf, rangeCheck, valueSchemaOf, type RegisteredValue, type RegistryCounts } from './registry.js';
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
  /**
   * What a load whose app is already running does (docs/provisioning.md, "Updates"): `reject`
   * answers `EEXIST app_exists` as the HSX reference does (the default of `loadImage`/`end`);
   * `replace` makes it an update of that task. Only the staged API (`stageImage`/`endStaged`) can
   * replace, because an update is finished by `activate`.
   */
  update?: UpdatePolicy;
  /** The version to record for the task when the image has no signature trailer (a store's manifest). */
  appVersion?: string;
  /**
   * SHA-256 (hex) of exactly these bytes, when the caller already hashed them while they arrived (the
   * intake does): the engine then does not hash the image a second time. Trusted as given.
   */
  sha256?: string;
}

export type UpdatePolicy = 'replace' | 'reject';

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
  /** `major.minor.patch+build` from the signature trailer (or the store's manifest), else `0.0.0+0`. */
  appVersion: string;
  /** SHA-256 (hex) of the image as received: what a master announces, what "already current" compares. */
  sha256: string;
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
  /** Verified loads waiting for `activate` or `discard`. */
  staged: number;
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

/**
 * A verified image that passed every gate and check but is not running yet: what `stageImage` and
 * `endStaged` return, `commitStaged` writes to the store, and `activate` switches to (or `discard`
 * drops). While staged, the task it replaces keeps running and stays registered, untouched.
 */
export interface StagedLoad {
  readonly pid: number;
  readonly appName: string;
  readonly appVersion: string;
  readonly sha256: string;
  readonly crc32: number;
  readonly size: number;
  readonly source: string;
  /** The running task this image replaces (an update), or null (a new app). */
  readonly replaces: TaskInfo | null;
}

/** A persisted value carried across an update, or given its new init value. */
interface ValuePlan {
  overrides: Map<number, number>;
  /** Migrated values whose declaration changed: rewritten under the new schema once switched. */
  rewrites: Array<{ key: number; raw: number; schema: { valueType: string } }>;
  events: Array<{ type: 'value.restored' | 'value.defaulted' | 'value.migrated'; data: Record<string, unknown> }>;
}

interface Staged extends StagedLoad {
  sm: LoadStateMachine;
  image: HxeImage;
  bytes: Uint8Array;
  mode: 'monolithic' | 'stream';
  stackBytes: number;
  name: InstanceName;
  /** Buffer capacity still counted against `maxBufferedBytes` (a stream's image). */
  held: number;
  done: boolean;
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
  private readonly stagedTable = new Map<number, Staged>();
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
    const parsed = this.parseMonolithic(bytes, options);
    if (!parsed.ok) return parsed;
    const { sm, image } = parsed.value;
    const admitted = this.admit(sm, image, bytes, options, 'monolithic');
    if (!admitted.ok) return this.failLoad(sm, admitted.error);
    return admitted;
  }

  /**
   * `loadImage` up to the switch: verified, gated, name and registrations checked (against what
   * will be there once the task it replaces is gone), nothing registered and
   * nothing running changed. Finish with `activate` or `discard`.
   */
  stageImage(bytes: Uint8Array, options: LoadOptions): Result<StagedLoad, EngineError> {
    const parsed = this.parseMonolithic(bytes, options);
    if (!parsed.ok) return parsed;
    const { sm, image } = parsed.value;
    const prepared = this.prepare(sm, image, bytes.slice(), options, 'monolithic');
    if (!prepared.ok) return this.failLoad(sm, prepared.error);
    return ok(this.publicStaged(prepared.value));
  }

  /** A monolithic load up to VERIFY with the image parsed: options, size limit, format. */
  private parseMonolithic(bytes: Uint8Array, options: LoadOptions): Result<{ sm: LoadStateMachine; image: HxeImage }, EngineError> {
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
    return ok({ sm, image: parsed.value });
  }

  /** A monolithic load has no session to abort later: a failure is torn down at once (FAILED → ABORTING → IDLE). */
  private failLoad<T = TaskInfo>(sm: LoadStateMachine, e: EngineError): Result<T, EngineError> {
    sm.transition('FAILED', e.reason);
    this.releasePid(sm.pid);
    const result = this.fail<T>(e, sm.pid, true);
    sm.transition('ABORTING', 'load failed');
    sm.transition('IDLE', 'released');
    return result;
  }

  private checkLoadOptions(options: LoadOptions, where: EngineErrorWhere): EngineError | null {
    if (options?.update !== undefined && options.update !== 'replace' && options.update !== 'reject') {
      return engineError('EBADMSG', where, 'update_invalid', `update must be "replace" or "reject", got ${String(options.update)}`);
    }
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
   * Shared tail of both load kinds, entered in VERIFY with a parsed image: prepare, then switch.
   * On failure it undoes what it did itself (registrations); the caller releases the PID.
   */
  private admit(sm: LoadStateMachine, image: HxeImage, bytes: Uint8Array, options: LoadOptions, mode: 'monolithic' | 'stream'): Result<TaskInfo, EngineError> {
    // `loadImage` and `end` keep the HSX reference's answer to a running app (`app_exists`).
    const prepared = this.prepare(sm, image, mode === 'monolithic' ? bytes.slice() : bytes, { ...options, update: 'reject' }, mode);
    if (!prepared.ok) return prepared;
    const switched = this.switchTo(prepared.value);
    return switched.ok ? ok(switched.value.task) : switched;
  }

  /**
   * Everything that can refuse a load, with nothing changed: gates (against the arenas as they will
   * be once a replaced task is gone), the PID (monolithic), the instance name or the task this
   * image updates, and the registrations (persisted values are planned at the switch).
   */
  private prepare(sm: LoadStateMachine, image: HxeImage, bytes: Uint8Array, options: LoadOptions, mode: 'monolithic' | 'stream'): Result<Staged, EngineError> {
    const source = options.source;
    const stackBytes = options.stackBytes ?? this.config.defaultStackBytes;
    const h = image.header;
    const target = this.updateTarget(image, source, sm.pid, options.update ?? 'reject');
    if (!target.ok) return target;
    const replaces = target.value;
    const ctx: GateContext = { source, mode, pid: sm.pid, config: this.config, stackBytes, vm: this.vm.usage(replaces?.info.pid) };
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

    const base = h.appName.trim() !== '' ? h.appName : fallbackAppName(source, pid);
    const name = assignInstanceName(base, h.allowMultipleInstances, (n) => this.nameTaken(n, replaces?.info.pid), this.config.maxAppNameBytes);
    if (!name) {
      const bare = trimUtf8(base, this.config.maxAppNameBytes);
      return err(engineError('EEXIST', 'register', 'app_exists', `app_exists:${bare}`, { appName: bare }));
    }
    const checked = this.registry.checkReplacing(image, replaces?.info.pid ?? null);
    if (!checked.ok) return this.explainConflict(checked.error, h.allowMultipleInstances);

    const sha256 = options.sha256 ?? createHash('sha256').update(bytes).digest('hex');
    const staged: Staged = {
      pid, appName: name.appName, appVersion: image.trailer ? formatVersion(image.trailer.version) : options.appVersion ?? '0.0.0+0',
      sha256, crc32: h.crc32, size: bytes.length, source, replaces: replaces ? structuredClone(replaces.info) : null,
      sm, image, bytes, mode, stackBytes, name, held: 0, done: false,
    };
    return ok(staged);
  }

  /**
   * The running task an image updates, or null for a new app: a single-instance image whose name a
   * running single-instance app has, or whose values and commands collide with exactly one running
   * task's own (and that task is single-instance). With `reject`, such an image is refused as the
   * HSX reference refuses it (`app_exists`, or the registry's `*_exists`).
   */
  private updateTarget(image: HxeImage, source: string, pid: number | null, policy: UpdatePolicy): Result<TaskRecord | null, EngineError> {
    const h = image.header;
    if (policy === 'reject' || h.allowMultipleInstances) return ok(null);
    const base = trimUtf8(h.appName.trim() !== '' ? h.appName : fallbackAppName(source, pid ?? 0), this.config.maxAppNameBytes);
    for (const t of this.taskTable.values()) {
      if (t.info.appName === base && !t.info.allowMultipleInstances) return ok(t);
    }
    const owners = [...this.registry.collisions(image).keys()];
    if (owners.length === 1) {
      const t = this.taskTable.get(owners[0]!);
      if (t && !t.info.allowMultipleInstances) return ok(t);
    }
    return ok(null);
  }

  /** A registration conflict, said in words that name the other app and why it is not an update. */
  private explainConflict(e: EngineError, multiInstance: boolean): Result<never, EngineError> {
    const owner = typeof e.detail?.['ownerPid'] === 'number' ? this.taskTable.get(e.detail['ownerPid'] as number) : undefined;
    if (e.code !== 'EEXIST' || !owner) return err(e);
    const why = multiInstance
      ? 'a new instance of a multi-instance app cannot share it'
      : owner.info.allowMultipleInstances ? `${owner.info.appName} is a multi-instance app, which an update never replaces` : 'this image also collides with another app';
    return err({ ...e, message: `${e.message} (app ${owner.info.appName}); ${why}`, detail: { ...e.detail, ownerApp: owner.info.appName } });
  }

  /**
   * Persisted values for a new task. For an update, a value whose persist key the replaced task
   * declared too is carried over from that task's live value (`value.migrated`) unless the new
   * declaration makes it invalid (other type, out of the new range: `value.defaulted`); any other
   * key is read back from the store as at boot.
   */
  private planValues(image: HxeImage, replaces: TaskRecord | null): ValuePlan {
    return this.restoreValues(image, replaces ? this.registry.valuesOf(replaces.info.pid) : []);
  }

  /**
   * The switch: stop and unregister the replaced task, register the staged image and load it into
   * the VM, READY. A failure after the replaced task is gone is reported as such (the caller rolls
   * the store back and restores the previous image from it).
   */
  private switchTo(st: Staged): Result<{ task: TaskInfo; replaced: TaskInfo | null }, EngineError> {
    const old = st.replaces ? this.taskTable.get(st.replaces.pid) ?? null : null;
    if (st.replaces && !old) {
      return err(engineError('EBUSY', 'register', 'replaced_task_gone', `PID ${st.replaces.pid} (${st.replaces.appName}) was unloaded while the update was staged`,
        { pid: st.replaces.pid }));
    }
    // Checked again: another load may have registered something while the image was being committed.
    const checked = this.registry.checkReplacing(st.image, old?.info.pid ?? null);
    if (!checked.ok) return this.explainConflict(checked.error, st.image.header.allowMultipleInstances);
    // Values are planned at the switch, not when the image was staged: the old task kept running
    // (and could be SET) while the image was committed.
    const values = this.planValues(st.image, old);
    if (old) {
      this.registry.release(old.info.pid);
      this.vm.release(old.info.pid);
      this.taskTable.delete(old.info.pid);
      old.sm.transition('IDLE', 'replaced');
    }
    const pid = st.pid;
    const h = st.image.header;
    const registered = this.registry.register(pid, st.image, values.overrides);
    if (!registered.ok) return this.switchFailed(registered.error, old);
    const loaded = this.vm.load(pid, strip(st.image), st.stackBytes);
    if (!loaded.ok) {
      this.registry.release(pid);
      return this.switchFailed({ ...loaded.error, where: 'end' }, old);
    }
    const info: TaskInfo = {
      pid, appName: st.name.appName, appNameBase: st.name.appNameBase, allowMultipleInstances: h.allowMultipleInstances,
      state: 'READY', source: st.source, loadedAt: this.clock.now(), entry: h.entry, version: h.version,
      appVersion: st.appVersion, sha256: st.sha256, reqCaps: h.reqCaps, crc32: h.crc32,
      sizes: { image: st.bytes.length, code: h.codeLen, rodata: h.roLen, bss: h.bssSize, stack: st.stackBytes },
      counts: { values: registered.value.values, commands: registered.value.commands, mailboxes: registered.value.mailboxes },
      arenas: loaded.value.arenas,
    };
    // in the table before READY is announced, so a state listener already finds the task
    this.taskTable.set(pid, { info, bytes: st.bytes, image: st.image, sm: st.sm });
    st.sm.transition('READY', 'loaded');
    for (const w of values.rewrites) {
      try {
        this.valueStore?.write(w.key, w.raw, w.schema);
      } catch (e) {
        this.emit('warning', pid, 'register', { reason: 'value_write_failed', key: w.key, message: String((e as Error).message ?? e) });
      }
    }
    for (const e of values.events) this.emit(e.type, pid, 'register', e.data);
    // Every value the task now has, once: what a watcher of live values (MQTT's retained
    // `values/<group>:<id>`) needs, whether it came from the store, an old task or the declaration.
    const causes = new Map(values.events.map((e) => [e.data['oid'] as number, e.type.slice('value.'.length)]));
    for (const v of this.registry.valuesOf(pid)) this.emitValueChanged(v, causes.get(v.oid) ?? 'init');
    if (old) {
      this.emit('provisioning.unloaded', old.info.pid, 'end', { app_name: old.info.appName, source: old.info.source, replaced_by: pid });
    }
    this.emit('provisioning.complete', pid, 'end', {
      app_name: info.appName, app_name_base: info.appNameBase, source: st.source, mode: st.mode, size: st.bytes.length,
      code_len: h.codeLen, ro_len: h.roLen, bss: h.bssSize, stack: st.stackBytes, ...info.counts,
      version: info.appVersion, crc32: info.crc32, sha256: info.sha256,
      ...(old ? { replaced_pid: old.info.pid } : {}),
    });
    return ok({ task: structuredClone(info), replaced: old ? structuredClone(old.info) : null });
  }

  private switchFailed(e: EngineError, old: TaskRecord | null): Result<never, EngineError> {
    if (!old) return err(e);
    return err({ ...e, detail: { ...e.detail, replacedPid: old.info.pid, replacedGone: true } });
  }

  private nameTaken(name: string, except?: number): boolean {
    for (const t of this.taskTable.values()) if (t.info.appName === name && t.info.pid !== except) return true;
    return false;
  }

  /**
   * Persisted values are read back over their init values; with `carried` (the live values of a task
   * being replaced), a key it declared is carried from there instead. Nothing is written and no
   * event goes out here: both happen only if the load succeeds.
   */
  private restoreValues(image: HxeImage, carried: readonly RegisteredValue[] = []): ValuePlan {
    const overrides = new Map<number, number>();
    const rewrites: ValuePlan['rewrites'] = [];
    const events: ValuePlan['events'] = [];
    if (!this.valueStore) return { overrides, rewrites, events };
    const byKey = new Map(carried.filter((c) => c.persisted).map((c) => [c.persistKey, c]));
    for (const v of image.values) {
      if (!isPersistedValue(v)) continue;
      const oid = oidOf(v.group, v.id);
      const base = { oid, key: v.persistKey, group: v.group, id: v.id, name: v.name };
      const schema = valueSchemaOf(v);
      const from = byKey.get(v.persistKey);
      if (from) {
        const oldSchema = valueSchemaOf(from);
        const typeOf = (s: string) => s.slice(0, s.indexOf('['));
        if (typeOf(oldSchema.valueType) !== typeOf(schema.valueType)) {
          events.push({ type: 'value.defaulted', data: { ...base, reason: 'type_changed', raw: v.init.raw, stored_raw: from.raw } });
          continue;
        }
        if (!rangeCheck(v, from.raw).ok) {
          events.push({ type: 'value.defaulted', data: { ...base, reason: 'out_of_range', raw: v.init.raw, stored_raw: from.raw } });
          continue;
        }
        overrides.set(oid, from.raw);
        if (oldSchema.valueType !== schema.valueType) rewrites.push({ key: v.persistKey, raw: from.raw, schema });
        events.push({ type: 'value.migrated', data: { ...base, raw: from.raw, from_pid: from.pid, from_oid: from.oid } });
        continue;
      }
      const read = this.valueStore.read(v.persistKey, schema);
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
    return { overrides, rewrites, events };
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
    if (options.update !== undefined) s.update = options.update;
    if (options.appVersion !== undefined) s.appVersion = options.appVersion;
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
      const replaced = s.update === 'replace' && !v.header.allowMultipleInstances
        ? [...this.taskTable.values()].find((t) => t.info.appName === trimUtf8(v.header!.appName, this.config.maxAppNameBytes) && !t.info.allowMultipleInstances)
        : undefined;
      const over = checkBudgets(v.header, s.stackBytes ?? this.config.defaultStackBytes, this.config, this.vm.usage(replaced?.info.pid));
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
    const v = this.verifyStream(sessionId);
    if (!v.ok) return v;
    const { s, image, bytes } = v.value;
    const admitted = this.admit(s.sm, image, bytes, this.streamOptions(s), 'stream');
    if (!admitted.ok) return this.failSession(s, admitted.error);

    // The task keeps an exactly-sized copy of the image; the session and its timer go.
    const held = s.buffer.length;
    const taken = s.takeImage();
    const record = this.taskTable.get(sessionId);
    if (record) record.bytes = taken; // (absent only if a state listener unloaded it already)
    this.bufferedBytes -= held;
    this.disarmTimer(s);
    this.sessionTable.delete(sessionId);
    return admitted;
  }

  /**
   * `end` up to the switch (see `stageImage`): the session's image is verified and prepared, the
   * session closes and its buffer goes to the staged load. Finish with `activate` or `discard`.
   */
  endStaged(sessionId: number, options: { sha256?: string } = {}): Result<StagedLoad, EngineError> {
    const v = this.verifyStream(sessionId);
    if (!v.ok) return v;
    const { s, image, bytes } = v.value;
    const prepared = this.prepare(s.sm, image, bytes, { ...this.streamOptions(s), ...options }, 'stream');
    if (!prepared.ok) return this.failSession(s, prepared.error);
    const st = prepared.value;
    st.held = s.buffer.length;
    st.bytes = s.takeImage();
    this.disarmTimer(s);
    this.sessionTable.delete(sessionId);
    return ok(this.publicStaged(st));
  }

  private streamOptions(s: StreamSession): LoadOptions {
    const o: LoadOptions = { source: s.source, update: s.update };
    if (s.stackBytes !== undefined) o.stackBytes = s.stackBytes;
    if (s.appVersion !== undefined) o.appVersion = s.appVersion;
    return o;
  }

  /** LOADING → VERIFY with the whole stream checked (completeness, transfer CRC, the image itself). */
  private verifyStream(sessionId: number): Result<{ s: StreamSession; image: HxeImage; bytes: Uint8Array }, EngineError> {
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
    return ok({ s, image: finished.value, bytes });
  }

  // ───────────────────────────── staged loads ─────────────────────────────

  private publicStaged(st: Staged): StagedLoad {
    this.stagedTable.set(st.pid, st);
    const { pid, appName, appVersion, sha256, crc32, size, source, replaces } = st;
    return { pid, appName, appVersion, sha256, crc32, size, source, replaces };
  }

  private stagedOf(staged: StagedLoad, where: EngineErrorWhere): Result<Staged, EngineError> {
    const st = this.stagedTable.get(staged.pid);
    if (!st || st.done) return err(engineError('ESRCH', where, 'unknown_staged', `no staged load with PID ${staged.pid}`, { pid: staged.pid }));
    return ok(st);
  }

  /** Writes a staged image to the store's inactive slot and switches the store to it (A/B commit). */
  async commitStaged(staged: StagedLoad, mode: CommitMode, meta?: Partial<ImageMeta>): Promise<Result<{ slot: 'A' | 'B'; seq: number; meta: ImageMeta }, EngineError>> {
    if (!this.imageStore) return this.fail(this.noStore(), staged.pid, true);
    const found = this.stagedOf(staged, 'persist');
    if (!found.ok) return this.fail(found.error, staged.pid, true);
    const st = found.value;
    const m: ImageMeta = {
      appName: st.appName, version: st.appVersion, securityCounter: vouchedSecurityCounter(st.image),
      reqCaps: st.image.header.reqCaps, codeLen: st.image.header.codeLen, roLen: st.image.header.roLen, bssSize: st.image.header.bssSize,
      source: st.source, crc32: st.crc32, sha256: st.sha256, bootPriority: 0, ...meta,
    };
    try {
      const r = await this.imageStore.commit(st.bytes, m, mode);
      this.emit('provisioning.persisted', st.pid, 'persist', { slot: r.slot, seq: r.seq, mode, app_name: m.appName, sha256: m.sha256, version: m.version });
      return ok({ ...r, meta: m });
    } catch (e) {
      return this.fail(this.storeError(e, 'commit failed'), st.pid, true);
    }
  }

  /** The switch (`switchTo`); on failure the staged load is dropped and its PID freed. */
  activate(staged: StagedLoad): Result<{ task: TaskInfo; replaced: TaskInfo | null }, EngineError> {
    const found = this.stagedOf(staged, 'register');
    if (!found.ok) return this.fail(found.error, staged.pid, true);
    const st = found.value;
    const switched = this.switchTo(st);
    if (!switched.ok) {
      this.closeStaged(st, 'FAILED', switched.error.reason);
      return this.fail(switched.error, st.pid, true);
    }
    st.done = true;
    this.stagedTable.delete(st.pid);
    this.bufferedBytes -= st.held;
    return switched;
  }

  /** Drops a staged load (a later step failed): nothing it would have changed is touched. */
  discard(staged: StagedLoad, reason: string): void {
    const st = this.stagedTable.get(staged.pid);
    if (!st || st.done) return;
    this.closeStaged(st, 'FAILED', reason);
    this.emit('provisioning.aborted', st.pid, 'end', { reason, source: st.source, bytes_written: st.size });
  }

  private closeStaged(st: Staged, via: 'FAILED', reason: string): void {
    st.done = true;
    this.stagedTable.delete(st.pid);
    this.bufferedBytes -= st.held;
    if (st.sm.state === 'VERIFY') st.sm.transition(via, reason);
    if (st.sm.state === 'FAILED') st.sm.transition('ABORTING', reason);
    if (st.sm.state === 'ABORTING') st.sm.transition('IDLE', 'released');
    this.releasePid(st.pid);
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

  /** The READY task loaded from an image with this SHA-256 (hex), if any (one copy, not the whole table). */
  taskBySha256(sha256: string): TaskInfo | undefined {
    for (const t of this.taskTable.values()) if (t.info.sha256 === sha256) return structuredClone(t.info);
    return undefined;
  }

  /** PIDs of the READY tasks, in order. */
  pids(): number[] {
    return [...this.taskTable.keys()].sort((a, b) => a - b);
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
      sessions: this.sessionTable.size, staged: this.stagedTable.size, bufferedBytes: this.bufferedBytes, pids: u.pids, reservedPids: u.reserved, tasks: u.tasks,
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
    const changed = v.raw !== raw;
    v.raw = raw;
    if (v.persisted && this.valueStore) this.valueStore.write(v.persistKey, raw, valueSchemaOf(v));
    if (changed) this.emitValueChanged(v, 'set');
    return ok({ raw });
  }

  /**
   * `value.changed`: a live value now holds `v.raw`. `cause` is `set` (a write through `setValue`:
   * a CAN SET, the control port, MQTT), or, when a task is registered, `init` (its declared init
   * value), `restored` (from the value store), `migrated` (carried from the task an update replaced)
   * or `defaulted` (the init value, the stored one being unusable).
   */
  private emitValueChanged(v: RegisteredValue, cause: string): void {
    this.emit('value.changed', v.pid, 'register', {
      oid: v.oid, group: v.group, id: v.id, name: v.name, unit: v.unit, raw: v.raw, value: decodeF16(v.raw), cause,
    });
  }

  // ───────────────────────────── persistence ─────────────────────────────

  private metaFor(t: TaskRecord, overrides?: Partial<ImageMeta>): ImageMeta {
    const h = t.image.header;
    const tr = t.image.trailer;
    return {
      appName: t.info.appName,
      version: tr ? formatVersion(tr.version) : t.info.appVersion,
      // Only a counter that a verified signature vouched for (the policy gate records it) is ever recorded:
      // an unverified high counter would lock the device out of every later image.
      securityCounter: vouchedSecurityCounter(t.image),
      reqCaps: h.reqCaps, codeLen: h.codeLen, roLen: h.roLen, bssSize: h.bssSize, source: t.info.source, crc32: h.crc32,
      sha256: t.info.sha256,
      bootPriority: 0,
      ...overrides,
    };
  }

  private storeError(e: unknown, what: string): EngineError {
    const codes = ['EBADMSG', 'ENOSPC', 'ESRCH', 'EBUSY', 'EEXIST', 'EPERM', 'ETIMEDOUT', 'ECANCELED'];
    const maybe = e as { code?: unknown; reason?: unknown; message?: unknown; detail?: unknown };
    const code = typeof maybe?.code === 'string' && codes.includes(maybe.code) ? (maybe.code as EngineError['code']) : 'EBUSY';
    const reason = typeof maybe?.reason === 'string' ? maybe.reason : 'store_error';
    const detail = maybe?.detail !== null && typeof maybe?.detail === 'object' ? (maybe.detail as Record<string, unknown>) : undefined;
    return engineError(code, 'persist', reason, `${what}: ${typeof maybe?.message === 'string' ? maybe.message : String(e)}`, detail);
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

  /** Whether the engine persists images (an image store was given). */
  get hasImageStore(): boolean {
    return this.imageStore !== undefined;
  }

  /** Bytes one flash slot holds, or null without a store (or one that does not say). */
  slotCapacity(): number | null {
    return this.imageStore?.slotCapacity?.() ?? null;
  }

  /** SHA-256 (hex) of the store's active image, or null. */
  storedSha256(): string | null {
    return this.imageStore?.activeMeta()?.meta.sha256 ?? null;
  }

  /**
   * The bytes of the image the device runs from its active slot (a delta patch's base), or null: no
   * store, or a store without an active image. Read from the store, never from a RAM copy.
   */
  activeImageBytes(): Uint8Array | null {
    return this.imageStore?.active()?.image ?? null;
  }

  /** What each flash slot holds (empty when the store cannot say, or there is none): for a scan's answer. */
  slotStates(): SlotSummary[] {
    return this.imageStore?.slotStates?.() ?? [];
  }

  /** Forgets persisted values for good (see ValueStore.drop). */
  async dropValues(keys: readonly number[]): Promise<Result<void, EngineError>> {
    if (!this.valueStore?.drop) return ok(undefined);
    try {
      await this.valueStore.drop(keys);
      return ok(undefined);
    } catch (e) {
      return this.fail(this.storeError(e, 'dropping values failed'), null, false);
    }
  }

  async confirm(): Promise<Result<void, EngineError>> {
    if (!this.imageStore) return this.fail(this.noStore(), null, true);
    try {
      await this.imageStore.confirm();
      const active = this.imageStore.activeMeta();
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
    return this.loadImage(active.image, { source: `store:${active.meta.source}`, appVersion: active.meta.version });
  }
}
