import type { Command } from 'commander';
import { DEFAULT_CONNECT, runClientCommand, type Reply } from '../../gateway/control/client.js';

/** `hsx-gateway ps`: the tasks of a running gateway's device, through its control server. */
export function registerPs(program: Command): void {
  program
    .command('ps')
    .description('list the tasks loaded on a gateway device (asks the control server)')
    .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
    .option('--token <token>', 'access token (default: $HSX_GATEWAY_TOKEN)')
    .option('--device <name>', 'device (default: the gateway\'s first)')
    .option('--json', 'JSON output')
    .action(async (opts: { connect: string; token?: string; device?: string; json?: boolean }) => {
      process.exitCode = await runClientCommand(opts, 'ps', {}, renderPs);
    });
}

export function renderPs(reply: Reply): string {
  const tasks = ((reply['tasks'] as Reply | undefined)?.['tasks'] ?? []) as Reply[];
  if (tasks.length === 0) return `no tasks on ${String(reply['device'] ?? 'the device')}\n`;
  const rows = tasks.map((t) => [String(t['pid']), String(t['state']), String(t['app_name']), String(t['program'])]);
  const head = ['PID', 'STATE', 'APP', 'SOURCE'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd();
  return [fmt(head), ...rows.map(fmt)].join('\n') + '\n';
}
