import type { Command } from 'commander';

/**
 * `hsx-gateway flash`: the master role. This file only parses options and dispatches to the
 * transport's own flashing module (src/link/uart/…, src/link/can/…); each transport adds its
 * option block and its branch below.
 */
export function registerFlash(program: Command): void {
  program
    .command('flash')
    .description('flash an image to a device (master role) over UART or CAN')
    .argument('<image>', 'the .hxe image to send')
    .option('--json', 'JSON lines instead of a progress bar')
    // UART options (src/link/uart)
    // CAN options (src/link/can)
    .action(async (image: string, opts: Record<string, unknown>) => {
      // transport branches (one per transport)
      process.stderr.write('flash: give a transport (--uart PORT or --can IFACE)\n');
      process.exitCode = 2;
      void image; void opts;
    });
}
