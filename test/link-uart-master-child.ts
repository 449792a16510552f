/**
 * A master in its own process for the UART link tests: flashes each image given on the command
 * line through --port with the CLI's own flash code, printing its JSON lines. Exit code: the
 * highest of the per-image exit codes.
 */
import { parseArgs } from 'node:util';
import { uartFlashCommand } from '../src/link/uart/flash-command.js';

const { values, positionals } = parseArgs({ options: { port: { type: 'string' } }, allowPositionals: true });
let worst = 0;
for (const image of positionals) {
  const code = await uartFlashCommand({ port: values.port!, image, json: true, out: (line) => void process.stdout.write(`${line}\n`) });
  process.stdout.write(`${JSON.stringify({ event: 'exit', image, code })}\n`);
  worst = Math.max(worst, code);
}
process.exit(worst);
