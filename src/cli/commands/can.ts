import type { Command } from 'commander';

/**
 * `hsx-gateway can get|set --node N GROUP:ID [VALUE]`: read or write a device's registered value
 * over the CAN value binding (f16; VALUE is a number, or raw:0xBITS for exact f16 bits).
 */
export function registerCan(program: Command): void {
  const can = program.command('can').description('CAN bus tools: value GET/SET on a node');
  const common = (c: Command): Command =>
    c
      .requiredOption('--can <iface>', 'CAN bus: SocketCAN interface, virtual:NAME or virtual:HOST:PORT')
      .requiredOption('--node <n>', 'node id (1..63)')
      .option('--can-timeout <ms>', 'first reply timeout (doubled per retry)')
      .option('--json', 'one JSON line');
  common(can.command('get').description('read a value (GROUP:ID)').argument('<target>', 'GROUP:ID')).action(
    async (target: string, opts: Record<string, unknown>) => {
      const { runCanValue } = await import('../../link/can/cli.js');
      process.exitCode = await runCanValue('get', target, undefined, cliOpts(opts));
    },
  );
  common(can.command('set').description('write a value (GROUP:ID VALUE)').argument('<target>', 'GROUP:ID').argument('<value>', 'number or raw:0xBITS')).action(
    async (target: string, value: string, opts: Record<string, unknown>) => {
      const { runCanValue } = await import('../../link/can/cli.js');
      process.exitCode = await runCanValue('set', target, value, cliOpts(opts));
    },
  );
}

function cliOpts(opts: Record<string, unknown>): { can: string; node?: string; json?: boolean; timeout?: string } {
  const o: { can: string; node?: string; json?: boolean; timeout?: string } = { can: String(opts['can']), json: !!opts['json'] };
  if (opts['node'] !== undefined) o.node = String(opts['node']);
  if (opts['canTimeout'] !== undefined) o.timeout = String(opts['canTimeout']);
  return o;
}
