/**
 * `hsx-gateway scan` as its own program, for the scan tests, until the command is registered in
 * src/cli/commands/index.ts: the same commander set-up and exit-code mapping as src/cli/main.ts.
 */
import { Command } from 'commander';
import { registerScan } from '../../src/cli/commands/scan.js';

const program = new Command('hsx-gateway')
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });
registerScan(program);

try {
  await program.parseAsync(process.argv);
} catch (e: unknown) {
  const ce = e as { code?: string };
  if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.help') process.exit(0);
  if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) process.exit(2);
  throw e;
}
