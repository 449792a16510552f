/**
 * Logs: pino JSON lines (one object per line, for log shippers and CI), pretty-printed when
 * stderr is a terminal so a bench engineer can read them. Logs go to stderr so stdout stays
 * free for a command's own output (tables, --json lines).
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export function createLogger(level: LevelWithSilent = 'info', opts: { pretty?: boolean; name?: string } = {}): Logger {
  const wantPretty = opts.pretty ?? Boolean(process.stderr.isTTY);
  const base = { level, name: opts.name ?? 'hsx-gateway' };
  if (wantPretty) return pino(base, pretty({ colorize: true, destination: 2, sync: true, ignore: 'pid,hostname' }));
  return pino(base, pino.destination({ dest: 2, sync: true }));
}
