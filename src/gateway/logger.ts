/**
 * Logs: pino JSON lines (one object per line, for log shippers and CI), or human lines for a
 * bench engineer. `--log-format pretty|json` (serve, demo) chooses; without it a terminal on stderr
 * gets human lines and anything else (a pipe, a file, systemd) JSON lines. Logs go to stderr so
 * stdout stays free for a command's own output (tables, --json lines).
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export type LogFormat = 'pretty' | 'json';
export const LOG_FORMATS: readonly LogFormat[] = ['pretty', 'json'];

/** The format when none is asked for: pretty on a terminal, JSON otherwise. */
export function defaultLogFormat(isTTY = Boolean(process.stderr.isTTY)): LogFormat {
  return isTTY ? 'pretty' : 'json';
}

export function createLogger(level: LevelWithSilent = 'info', opts: { pretty?: boolean; format?: LogFormat; name?: string } = {}): Logger {
  const wantPretty = opts.format !== undefined ? opts.format === 'pretty' : opts.pretty ?? defaultLogFormat() === 'pretty';
  const base = { level, name: opts.name ?? 'hsx-gateway' };
  if (wantPretty) return pino(base, pretty({ colorize: Boolean(process.stderr.isTTY), destination: 2, sync: true, ignore: 'pid,hostname' }));
  return pino(base, pino.destination({ dest: 2, sync: true }));
}
