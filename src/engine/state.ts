/**
 * The per-load state machine of the HSX provisioning design. Every transition is checked against
 * the table; an invalid one is an error value (the caller turns it into `EBUSY`), never a silent
 * no-op. Observers get a callback on every change.
 *
 *   IDLE → LOADING → VERIFY → READY → IDLE (unload)
 *            │          │
 *            │          └──→ FAILED ──→ ABORTING → IDLE
 *            └──→ FAILED / ABORTING ──────┘
 */
import { err, ok, type Result } from '../hxe/result.js';

export type LoadState = 'IDLE' | 'LOADING' | 'VERIFY' | 'READY' | 'FAILED' | 'ABORTING';

export const TRANSITIONS: Readonly<Record<LoadState, readonly LoadState[]>> = {
  IDLE: ['LOADING'],
  LOADING: ['VERIFY', 'FAILED', 'ABORTING'],
  VERIFY: ['READY', 'FAILED'],
  READY: ['IDLE'],
  FAILED: ['ABORTING'],
  ABORTING: ['IDLE'],
};

export interface StateChange {
  /** Session id for streaming loads (equal to the PID reserved at begin), PID for monolithic ones (null before it exists). */
  pid: number | null;
  from: LoadState;
  to: LoadState;
  reason: string;
}

export type StateListener = (change: StateChange) => void;

export function canTransition(from: LoadState, to: LoadState): boolean {
  return TRANSITIONS[from].includes(to);
}

export class LoadStateMachine {
  private current: LoadState = 'IDLE';

  constructor(
    public pid: number | null,
    private readonly onChange: StateListener,
  ) {}

  get state(): LoadState {
    return this.current;
  }

  transition(to: LoadState, reason: string): Result<void, { from: LoadState; to: LoadState }> {
    const from = this.current;
    if (!canTransition(from, to)) return err({ from, to });
    this.current = to;
    this.onChange({ pid: this.pid, from, to, reason });
    return ok(undefined);
  }
}
