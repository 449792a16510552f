import type { Command } from 'commander';

/**
 * `hsx-gateway device`: the listener role, a simulated device that receives images through the
 * engine. This file only parses options and dispatches to the transport's own listener module.
 */
export function registerDevice(program: Command): void {
  program
    .command('device')
    .description('run a simulated device (listener role) on a UART port or CAN interface')
    .option('--state <dir>', 'directory holding the device flash and FRAM files')
    .option('--json', 'JSON lines instead of human output')
    // UART options (src/link/uart)
    // CAN options (src/link/can)
    .action(async (opts: Record<string, unknown>) => {
      // transport branches (one per transport)
      process.stderr.write('device: give a transport (--uart PORT or --can IFACE)\n');
      process.exitCode = 2;
      void opts;
    });
}
