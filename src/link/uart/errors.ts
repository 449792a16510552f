/**
 * Errors the UART link reports. An error raised by the device's engine keeps the engine's
 * code/where/reason and is marked `remote`, so the master's caller can tell "the image was
 * rejected" from "the cable is bad".
 */
export type UartErrorCode =
  // the engine's codes, reported by the listener
  | 'EBADMSG' | 'ENOSPC' | 'ESRCH' | 'EBUSY' | 'EEXIST' | 'EPERM' | 'ETIMEDOUT' | 'ECANCELED'
  // the link's own
  | 'ENOENT' | 'EACCES' | 'EIO' | 'EPROTO' | 'EINVAL';

export interface UartError {
  code: UartErrorCode | string;
  /** Where it happened: the engine's phase, or the link's (open, session, data, end, link). */
  where: string;
  /** Machine-readable reason, e.g. `port_in_use`, `crc_mismatch`, `retry_limit`. */
  reason: string;
  /** True when the listener (device) reported it. */
  remote: boolean;
  message: string;
  detail?: Record<string, unknown>;
}

export function uartError(code: UartErrorCode, where: string, reason: string, message: string, detail?: Record<string, unknown>): UartError {
  return detail === undefined ? { code, where, reason, remote: false, message } : { code, where, reason, remote: false, message, detail };
}

/** Maps a serialport open failure to a typed error a person can act on. */
export function openFailure(path: string, e: unknown): UartError {
  const message = e instanceof Error ? e.message : String(e);
  if (/Cannot lock port|Resource temporarily unavailable|EAGAIN|EBUSY/i.test(message)) {
    return uartError('EBUSY', 'open', 'port_in_use', `serial port ${path} is in use by another process (${message})`, { path });
  }
  if (/ENOENT|No such file/i.test(message)) {
    return uartError('ENOENT', 'open', 'port_not_found', `serial port ${path} does not exist`, { path });
  }
  if (/EACCES|Permission denied/i.test(message)) {
    return uartError('EACCES', 'open', 'permission_denied', `no permission to open serial port ${path} (${message})`, { path });
  }
  return uartError('EIO', 'open', 'open_failed', `cannot open serial port ${path}: ${message}`, { path });
}
