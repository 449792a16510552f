/**
 * The CLI's one JSON error shape and its exit codes (README "Exit codes"; issue 24 item 5).
 *
 * With `--json`, every failing outcome of every command is one line on stdout:
 *
 *     {"ok":false,"error":{"code":"EUSAGE","reason":"unknown_option","message":"…", …}}
 *
 * `code` is an errno-like code (`EUSAGE`, `ECONFIG`, `EBADMSG`, `EPERM`, …), `reason` a
 * machine-readable word, `message` what a person reads; anything else (the file, the field, the
 * device, `remote: true` for an error the gateway answered) sits beside them in `error`. Local and
 * remote errors have the same shape. Exit codes: 0 ok, 1 failed, 2 usage or config, 3 no device
 * answered.
 *
 * This module imports nothing, so main.ts can use it before any command is loaded.
 */

export const EXIT = { OK: 0, FAILED: 1, USAGE: 2, NO_DEVICE: 3 } as const;

export interface CliError {
  code: string;
  reason: string;
  message: string;
  [extra: string]: unknown;
}

/** `{"ok":false,"error":{code,reason,message,…}}`; extra keys never replace the three. */
export function errorObject(code: string, reason: string, message: string, extra: Record<string, unknown> = {}): { ok: false; error: CliError } {
  return { ok: false, error: { ...extra, code, reason, message } };
}

/** The same, as one line (with its newline) for stdout. */
export function errorLine(code: string, reason: string, message: string, extra: Record<string, unknown> = {}): string {
  return `${JSON.stringify(errorObject(code, reason, message, extra))}\n`;
}

/**
 * A `CODE:reason` string (the control port's and the engine's `error`) split in two; a bare string
 * (the reference's `unknown pid 3`) gets `fallback` as its code and itself, snake_cased, as reason.
 */
export function splitError(error: string, fallback = 'EIO'): { code: string; reason: string } {
  const m = /^([A-Z][A-Z0-9_]*):(.+)$/.exec(error);
  if (m) return { code: m[1]!, reason: m[2]! };
  if (/^[A-Z][A-Z0-9_]+$/.test(error)) return { code: error, reason: error.toLowerCase() };
  return { code: fallback, reason: error.trim().toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_|_$/g, '') || 'error' };
}

/** Writes a usage error (exit 2): JSON on stdout with `json`, else `prefix: message` on stderr. */
export function usageError(json: boolean, prefix: string, message: string, reason = 'bad_usage', extra: Record<string, unknown> = {}): number {
  if (json) process.stdout.write(errorLine('EUSAGE', reason, message, extra));
  else process.stderr.write(`${prefix}: ${message}\n`);
  return EXIT.USAGE;
}

/** `--log-format pretty|json` (serve, demo): the format, undefined for the default, or null when it is neither. */
export function logFormatOption(v: string | undefined): 'pretty' | 'json' | undefined | null {
  if (v === undefined) return undefined;
  return v === 'pretty' || v === 'json' ? v : null;
}
