/**
 * Errors are values in this project: every operation that can fail on untrusted input
 * returns a Result instead of throwing, so callers cannot forget the failure path.
 */
export type Result<T, E> = { ok: true; value: T } | { ok: false; error: E };

export const ok = <T>(value: T): { ok: true; value: T } => ({ ok: true, value });
export const err = <E>(error: E): { ok: false; error: E } => ({ ok: false, error });
