import type { Command } from 'commander';
import { DEFAULT_CONNECT, runClientSession, type ControlClient, type Reply } from '../../gateway/control/client.js';

/**
 * `hsx-gateway ps`: the tasks of every device of a running gateway (or of `--device`), through
 * its control server: `info` names the devices, then one `ps` each, on one connection.
 */
export function registerPs(program: Command): void {
  program
    .command('ps')
    .description('list the tasks loaded on every device of a gateway (asks the control server)')
    .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
    .option('--token <token>', 'access token (default: $HSX_GATEWAY_TOKEN)')
    .option('--device <name>', 'only this device')
    .option('--json', 'JSON output: {"ok":true,"devices":[{"device","tasks":[…]}]}')
    .action(async (opts: { connect: string; token?: string; device?: string; json?: boolean }) => {
      process.exitCode = await runClientSession(opts, 'ps', (client) => psOfDevices(client, opts.device), renderPs);
    });
}

/** `{ devices: [{ device, tasks }] }` for `only`, or for every device the gateway names. */
export async function psOfDevices(client: ControlClient, only?: string): ReturnType<ControlClient['request']> {
  let names: string[];
  if (only !== undefined) names = [only];
  else {
    const info = await client.request('info');
    if (!info.ok) return info;
    const listed = (info.value['info'] as Reply | undefined)?.['devices'];
    names = Array.isArray(listed) ? listed.map(String) : [];
  }
  const devices: Reply[] = [];
  for (const device of names) {
    const r = await client.request('ps', { device });
    if (!r.ok) return r;
    devices.push({ device, tasks: ((r.value['tasks'] as Reply | undefined)?.['tasks'] ?? []) as Reply[] });
  }
  return { ok: true, value: { devices } };
}

export function renderPs(reply: Reply): string {
  const devices = (reply['devices'] ?? []) as Array<{ device: string; tasks: Reply[] }>;
  if (devices.length === 0) return 'the gateway has no devices\n';
  const rows = devices.flatMap((d) =>
    d.tasks.length === 0
      ? [[d.device, '-', '-', '(no tasks)', '']]
      : d.tasks.map((t) => [d.device, String(t['pid']), String(t['state']), String(t['app_name']), String(t['program'])]));
  const head = ['DEVICE', 'PID', 'STATE', 'APP', 'SOURCE'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd();
  return [fmt(head), ...rows.map(fmt)].join('\n') + '\n';
}
