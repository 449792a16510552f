/**
 * The event bus's vocabulary: the wire envelope, the bus configuration and the two event
 * classes that decide what may be coalesced or dropped. Kept apart from the bus so the control
 * server, the MQTT bridge and the CLI can import the shapes without the machinery.
 */
import type { EngineEvent, EventPhase } from '../../engine/ports.js';

/**
 * One event as subscribers see it. It is the engine's `EventEnvelope` widened in two ways:
 * `type` may name an event the bus itself makes (`warning` for a subscriber, `history_truncated`
 * is a warning reason), and `phase` is null for those, because the HSX executive's own events
 * carry no phase.
 */
export interface BusEvent {
  seq: number;
  /** Seconds (float), like the HSX executive's `ts`; never smaller than an earlier seq's. */
  ts: number;
  type: string;
  pid: number | null;
  phase: EventPhase | null;
  data: Record<string, unknown>;
}

/** What a producer hands the bus (the engine's `EngineEvent`, or a gateway-made event). */
export type BusInput = Pick<EngineEvent, 'pid' | 'data'> & { type: string; phase: EventPhase | null };

export interface EventBusConfig {
  /** Progress events per second per session, at most (whole-percent steps only). */
  progressHz: number;
  /** Events kept for `since_seq` replay, at most... */
  historySize: number;
  /** ...and for at most this long (reported to subscribers as `retention_ms`). */
  retentionMs: number;
  /** Default per-subscriber queue depth (droppable events); a session's `max_events` overrides it. */
  queueDepth: number;
  /** Upper bound a subscriber may ask for. */
  queueDepthMax: number;
  /**
   * A subscriber is slow once `pending` ≥ max(queueDepth × warnFactor, warnFloor)... `pending` is
   * how far behind it is: events held for it (queued, or delivered and unacknowledged in ACK
   * mode) plus events dropped on its behalf since it last took or acknowledged one.
   */
  warnFactor: number;
  warnFloor: number;
  /** ...and is cut off once `pending` ≥ max(queueDepth × dropFactor, dropFloor). */
  dropFactor: number;
  dropFloor: number;
  /** No back-pressure verdicts in a subscription's first `graceMs`; pending must stay high this long. */
  graceMs: number;
  /** `slow_consumer` warnings are repeated at most this often while the subscriber stays slow. */
  slowWarningIntervalMs: number;
}

/**
 * Defaults follow the HSX executive (execd.py): 256 events per subscriber, warn at
 * max(2×depth, 64) pending, drop at max(4×depth, 256), 1 s grace, 0.5 s between warnings.
 * Unlike the executive, a reader that keeps up but never ACKs is not counted as behind (ACKs
 * pace delivery only when the subscriber asked for ACK mode).
 */
export const DEFAULT_BUS_CONFIG: EventBusConfig = {
  progressHz: 10,
  historySize: 4096,
  retentionMs: 5000,
  queueDepth: 256,
  queueDepthMax: 2048,
  warnFactor: 2,
  warnFloor: 64,
  dropFactor: 4,
  dropFloor: 256,
  graceMs: 1000,
  slowWarningIntervalMs: 500,
};

export const PROGRESS_TYPE = 'provisioning.progress';

/** Events that end a session's story: never coalesced, never dropped. */
const TERMINAL_TYPES: ReadonlySet<string> = new Set([
  'provisioning.complete',
  'provisioning.error',
  'provisioning.aborted',
  'provisioning.persisted',
  'provisioning.rollback',
]);

/**
 * Events a subscriber must see even when it is behind: the terminal ones, plus alarms a person
 * acts on. Everything else (progress, started, value and boot chatter, task_state...) may be
 * dropped oldest-first when a subscriber's queue overflows; the subscriber is told it happened.
 */
const ESSENTIAL_TYPES: ReadonlySet<string> = new Set([
  ...TERMINAL_TYPES,
  'provisioning.unloaded',
  'provisioning.wear_warning',
  'boot.failed',
  'boot.alert',
  'warning',
  // a job's state changes: a watcher that fell behind still learns how each target and the job ended
  'job.submitted',
  'job.started',
  'job.target',
  'job.finished',
  'job.canceled',
]);

export function isTerminal(type: string): boolean {
  return TERMINAL_TYPES.has(type);
}

export function isDroppable(type: string): boolean {
  return !ESSENTIAL_TYPES.has(type);
}

export type SlowReason = 'slow_consumer' | 'slow_consumer_drop';
