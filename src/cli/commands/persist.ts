import type { Command } from 'commander';
import { DEFAULT_CONNECT, runClientCommand, type Reply } from '../../gateway/control/client.js';
import { usageError } from '../output.js';

/** `hsx-gateway persist <pid>`: commit a loaded task's image to the device's flash. */
export function registerPersist(program: Command): void {
  program
    .command('persist')
    .description('persist a loaded task\'s image to the device (asks the control server; operator role)')
    .argument('<pid>', 'task pid')
    .option('--target <mode>', 'test (boots once, rolls back unless activated) or permanent', 'test')
    .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
    .option('--token <token>', 'access token (default: $HSX_GATEWAY_TOKEN)')
    .option('--device <name>', 'device (default: the gateway\'s first)')
    .option('--json', 'JSON output')
    .action(async (pid: string, opts: { target: string; connect: string; token?: string; device?: string; json?: boolean }) => {
      if (!/^\d+$/.test(pid)) {
        process.exitCode = usageError(!!opts.json, 'persist', `pid must be a non-negative integer, got "${pid}"`, 'bad_argument', { field: 'pid' });
        return;
      }
      if (opts.target !== 'test' && opts.target !== 'permanent') {
        process.exitCode = usageError(!!opts.json, 'persist', `--target must be test or permanent, got "${opts.target}"`, 'bad_option', { option: '--target' });
        return;
      }
      process.exitCode = await runClientCommand(opts, 'provision.persist', { pid: Number(pid), target: opts.target }, renderPersist);
    });
}

export function renderPersist(reply: Reply): string {
  const p = (reply['persisted'] ?? {}) as Reply;
  return `persisted to slot ${String(p['slot'])} (seq ${String(p['seq'])}) on ${String(reply['device'])}\n`;
}
