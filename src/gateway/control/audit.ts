/**
 * The audit trail of the control server: one structured log line per decision that matters —
 * every refused request and every request that changes a device — naming who (token name and
 * role, peer address), what (command, device, pid/session), when (ISO time) and the verdict.
 * It goes through pino so it lands wherever the gateway's log goes.
 */
import type { Logger } from 'pino';
import type { Role } from './auth.js';

export type Verdict = 'denied' | 'ok' | 'error';

export interface AuditEntry {
  who: string;
  role: Role | null;
  peer: string;
  cmd: string;
  device?: string;
  target?: Record<string, unknown>;
  verdict: Verdict;
  /** For denials: the wire error; for failures: the error string. */
  reason?: string;
}

export class AuditLog {
  constructor(
    private readonly logger: Logger | undefined,
    private readonly now: () => number,
  ) {}

  record(entry: AuditEntry): void {
    if (!this.logger) return;
    // One flat object, each key once: the target's fields become `target_<key>` (a log shipper
    // indexes them without parsing nested JSON), and the logger's own bindings stay as they are.
    const { target, ...rest } = entry;
    const flat = Object.fromEntries(Object.entries(target ?? {}).map(([k, v]) => [`target_${k}`, v]));
    const line = { audit: true, when: new Date(this.now()).toISOString(), ...rest, ...flat };
    if (entry.verdict === 'denied') this.logger.warn(line, `audit: ${entry.cmd} denied for ${entry.who}`);
    else this.logger.info(line, `audit: ${entry.cmd} ${entry.verdict} for ${entry.who}`);
  }
}
