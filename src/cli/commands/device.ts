import type { Command } from 'commander';
import { usageError } from '../output.js';

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
    .option('--uart <port>', 'UART: serial port to listen on (/dev/ttyUSB1; docs/uart_protocol.md)')
    .option('--baud <n>', 'UART line rate (default 921600)')
    .option('--protocol <n>', 'UART: highest protocol version spoken (default 3; 2: no compressed or delta transfers)')
    // CAN options (src/link/can)
    .option('--can <iface>', 'CAN bus: SocketCAN interface (can0, vcan0), virtual:NAME or virtual:HOST:PORT (docs/can_protocol.md)')
    .option('--node <n>', 'CAN node id of this device (1..63)')
    .option('--confirm-window-ms <ms>', 'CAN: an update is confirmed once it stayed up this long (default 10000)')
    .action(async (opts: Record<string, unknown>) => {
      // transport branches (one per transport)
      if (typeof opts['uart'] === 'string') {
        const { runUartDeviceCommand } = await import('../../link/uart/cli.js');
        process.exitCode = await runUartDeviceCommand({ uart: opts['uart'], baud: opts['baud'], state: opts['state'] as string | undefined, confirmWindowMs: opts['confirmWindowMs'], json: !!opts['json'], protocol: opts['protocol'] });
        return;
      }
      if (typeof opts['can'] === 'string') {
        const { runCanDevice } = await import('../../link/can/cli.js');
        process.exitCode = await runCanDevice({
          can: opts['can'], node: opts['node'] as string | undefined, state: opts['state'] as string | undefined, json: !!opts['json'],
          confirmWindowMs: opts['confirmWindowMs'] as string | undefined,
        });
        return;
      }
      process.exitCode = usageError(!!opts['json'], 'device', 'give a transport (--uart PORT or --can IFACE)', 'no_transport');
      void opts;
    });
}
