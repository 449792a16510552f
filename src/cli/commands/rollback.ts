import type { Command } from 'commander';
import { DEFAULT_CONNECT, runClientCommand, type Reply } from '../../gateway/control/client.js';

/** `hsx-gateway rollback`: switch a device back to its previous known-good image. */
export function registerRollback(program: Command): void {
  program
    .command('rollback')
    .description('roll a device back to its previous image (asks the control server; admin role)')
    .option('--reason <text>', 'recorded with the rollback event', 'operator_rollback')
    .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
    .option('--token <token>', 'access token (default: $HSX_GATEWAY_TOKEN)')
    .option('--device <name>', 'device (default: the gateway\'s first)')
    .option('--json', 'JSON output')
    .action(async (opts: { reason: string; connect: string; token?: string; device?: string; json?: boolean }) => {
      process.exitCode = await runClientCommand(opts, 'provision.rollback', { reason: opts.reason }, renderRollback);
    });
}

export function renderRollback(reply: Reply): string {
  const r = (reply['rollback'] ?? {}) as Reply;
  const meta = (r['meta'] ?? null) as Reply | null;
  return `rolled back to slot ${String(r['slot'])}${meta ? ` (${String(meta['app_name'])})` : ''} on ${String(reply['device'])}\n`;
}
