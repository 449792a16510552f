/**
 * Typed errors of the persistence layer. Every failure names what was wrong (`reason`, a stable
 * machine-readable string), where (`op`, plus a byte offset / sector / path in `detail`), and
 * uses the engine's error codes where one fits so the engine can pass it on as `where: 'persist'`.
 */
export type PersistErrorCode =
  | 'EINVAL' // bad argument, misaligned access, reserved key
  | 'EIO' // the device refused an operation (program over non-erased bytes, unmapped view)
  | 'EBADMSG' // stored bytes fail their CRC/hash, or a file is not what its header says
  | 'ENOSPC' // image too large, sector worn out, too many keys
  | 'EPERM' // security counter downgrade
  | 'ENOENT' // nothing to confirm / no image to roll back to / missing file
  | 'EBUSY' // another process holds the device files
  | 'EACCES'; // no permission on a device file

export type PersistOp =
  | 'map'
  | 'format'
  | 'open'
  | 'read'
  | 'program'
  | 'erase'
  | 'commit'
  | 'verify'
  | 'confirm'
  | 'rollback'
  | 'recover'
  | 'journal';

export class PersistError extends Error {
  readonly code: PersistErrorCode;
  readonly op: PersistOp;
  readonly reason: string;
  readonly detail: Record<string, unknown>;
  constructor(code: PersistErrorCode, op: PersistOp, reason: string, message: string, detail: Record<string, unknown> = {}) {
    super(message);
    this.name = 'PersistError';
    this.code = code;
    this.op = op;
    this.reason = reason;
    this.detail = detail;
  }
}

export function isPersistError(e: unknown): e is PersistError {
  return e instanceof PersistError;
}
