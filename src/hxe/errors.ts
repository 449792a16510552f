import { err } from './result.js';
import type { HxeError, HxeErrorReason } from './types.js';

/** Reasons that are resource-budget failures rather than malformed input. */
const ENOSPC_REASONS: ReadonlySet<HxeErrorReason> = new Set(['code_too_large', 'ro_too_large', 'bss_too_large']);

export function hxeError(reason: HxeErrorReason, message: string, offset?: number): HxeError {
  const code = ENOSPC_REASONS.has(reason) ? 'ENOSPC' : 'EBADMSG';
  return offset === undefined ? { code, reason, message } : { code, reason, message, offset };
}

/** Shorthand for returning a failed Result. */
export function fail(reason: HxeErrorReason, message: string, offset?: number): { ok: false; error: HxeError } {
  return err(hxeError(reason, message, offset));
}

export const hex = (n: number): string => `0x${n.toString(16)}`;
