import type { Command } from 'commander';
import { DEFAULT_BAUD, DEFAULT_CHUNK, DEFAULT_WINDOW } from '../../link/uart/settings.js';
import { usageError } from '../output.js';

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
    .option('--uart <port>', 'UART: serial port of the device (/dev/ttyUSB0; docs/uart_protocol.md)')
    .option('--baud <n>', `UART line rate (default ${DEFAULT_BAUD})`)
    .option('--chunk <bytes>', `UART frame payload (default ${DEFAULT_CHUNK}; it shrinks on a lossy line and grows back once the line is clean; 256 starts small)`)
    .option('--window <frames>', `UART frames in flight (default ${DEFAULT_WINDOW})`)
    // CAN options (src/link/can)
    .option('--can <iface>', 'CAN bus: SocketCAN interface (can0, vcan0), virtual:NAME or virtual:HOST:PORT (docs/can_protocol.md)')
    .option('--nodes <list>', 'CAN target node ids, e.g. 1-16 or 3,5,7 (default 1)')
    .option('--fd', 'CAN FD: 64-byte data frames with bit-rate switch')
    .option('--can-session <n>', 'CAN session id 1..255 (default random)')
    .option('--can-timeout <ms>', 'CAN base timeout for joins, acks and reports (doubled per retry)')
    .option('--can-retries <n>', 'CAN retries before a silent node is dropped with ETIMEDOUT')
    .option('--force', 'send the image even to a device that already runs it (else it answers CURRENT)')
    // compressed and delta transfers (docs/delta.md)
    .option('--cache <dir>', 'content-addressed image store (default $XDG_CACHE_HOME/hsx-gateway/images or ~/.cache/hsx-gateway/images)')
    .option('--base <file>', 'add an image to the store by hand (a base a device may run; repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--no-compress', 'never send the compressed image')
    .option('--no-delta', 'never send a delta patch')
    .action(async (image: string, opts: Record<string, unknown>) => {
      // transport branches (one per transport)
      if (typeof opts['uart'] === 'string') {
        const { runUartFlash } = await import('../../link/uart/cli.js');
        process.exitCode = await runUartFlash(image, {
          uart: opts['uart'], baud: opts['baud'], chunk: opts['chunk'], window: opts['window'], force: !!opts['force'], json: !!opts['json'],
          compress: opts['compress'] !== false, delta: opts['delta'] !== false,
          ...(typeof opts['cache'] === 'string' ? { cache: opts['cache'] } : {}),
          ...(Array.isArray(opts['base']) ? { bases: opts['base'] as string[] } : {}),
        });
        return;
      }
      if (typeof opts['can'] === 'string') {
        const { runCanFlash } = await import('../../link/can/cli.js');
        process.exitCode = await runCanFlash(image, {
          can: opts['can'], nodes: opts['nodes'] as string | undefined, fd: !!opts['fd'], json: !!opts['json'],
          session: opts['canSession'] as string | undefined, timeout: opts['canTimeout'] as string | undefined, retries: opts['canRetries'] as string | undefined,
          force: !!opts['force'], compress: opts['compress'] !== false, delta: opts['delta'] !== false,
          ...(typeof opts['cache'] === 'string' ? { cache: opts['cache'] } : {}),
          ...(Array.isArray(opts['base']) ? { bases: opts['base'] as string[] } : {}),
        });
        return;
      }
      process.exitCode = usageError(!!opts['json'], 'flash', 'give a transport (--uart PORT or --can IFACE)', 'no_transport');
      void image; void opts;
    });
}
