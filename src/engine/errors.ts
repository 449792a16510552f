/**
 * Engine errors are values: every failure names a code (POSIX-like, as the HSX executive reports
 * them), where in the provisioning pipeline it happened, a machine-readable reason and, when
 * useful, the numbers behind it. Transports and the control server map them to their own wire
 * form; nothing here throws on untrusted input.
 */
import type { HxeError } from '../hxe/types.js';

export type EngineErrorCode = 'EBADMSG' | 'ENOSPC' | 'ESRCH' | 'EBUSY' | 'EEXIST' | 'EPERM' | 'ETIMEDOUT' | 'ECANCELED';

export type EngineErrorWhere = 'begin' | 'write' | 'end' | 'verify' | 'register' | 'persist';

export interface EngineError {
  code: EngineErrorCode;
  where: EngineErrorWhere;
  /** Stable, machine-readable (`seq_gap`, `crc_mismatch`, `caps`, `value_exists`, …). */
  reason: string;
  /** One human-readable line naming what was wrong and where. */
  message: string;
  detail?: Record<string, unknown>;
}

export function engineError(
  code: EngineErrorCode,
  where: EngineErrorWhere,
  reason: string,
  message: string,
  detail?: Record<string, unknown>,
): EngineError {
  return detail === undefined ? { code, where, reason, message } : { code, where, reason, message, detail };
}

/** An HXE format verdict keeps its reason and byte offset; only the pipeline stage is added. */
export function fromHxeError(e: HxeError, where: EngineErrorWhere): EngineError {
  const detail: Record<string, unknown> = {};
  if (e.offset !== undefined) detail['offset'] = e.offset;
  return engineError(e.code, where, e.reason, e.message, detail);
}
