import type { Command } from 'commander';
import { DEFAULT_CONNECT, runClientCommand, type Reply } from '../../gateway/control/client.js';
import { usageError } from '../output.js';

/** `hsx-gateway status [pid]`: one task's (or every task's) provisioning status. */
export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('provisioning status of a task, or of all tasks (asks the control server)')
    .argument('[pid]', 'task pid')
    .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
    .option('--token <token>', 'access token (default: $HSX_GATEWAY_TOKEN)')
    .option('--device <name>', 'device (default: the gateway\'s first)')
    .option('--json', 'JSON output')
    .action(async (pid: string | undefined, opts: { connect: string; token?: string; device?: string; json?: boolean }) => {
      if (pid !== undefined && !/^\d+$/.test(pid)) {
        process.exitCode = usageError(!!opts.json, 'status', `pid must be a non-negative integer, got "${pid}"`, 'bad_argument', { field: 'pid' });
        return;
      }
      process.exitCode = await runClientCommand(opts, 'provision.status', pid === undefined ? {} : { pid: Number(pid) }, renderStatus);
    });
}

function line(t: Reply): string {
  const sizes = (t['sizes'] ?? {}) as Reply;
  return `pid ${String(t['pid'])}  ${String(t['state'])}  ${String(t['app_name'])}  ${String(sizes['image'] ?? '?')} bytes  from ${String(t['source'])}`;
}

export function renderStatus(reply: Reply): string {
  if (reply['task']) return `${line(reply['task'] as Reply)}\n`;
  const tasks = (reply['tasks'] ?? []) as Reply[];
  if (tasks.length === 0) return `no tasks on ${String(reply['device'] ?? 'the device')}\n`;
  return tasks.map(line).join('\n') + '\n';
}
