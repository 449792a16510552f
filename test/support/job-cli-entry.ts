/**
 * A CLI entry with only `hsx-gateway job …` registered (the real entry, src/cli/main.ts, registers
 * every command through src/cli/commands/index.ts), with main.ts's exit-code handling: the CLI
 * tests of test/control-jobs.test.ts run it as a process.
 */
import { Command } from 'commander';
import { registerJob } from '../../src/cli/commands/job.js';

const program = new Command('hsx-gateway')
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });

registerJob(program);

try {
  await program.parseAsync(process.argv);
} catch (e: unknown) {
  const ce = e as { code?: string };
  if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.version' || ce.code === 'commander.help') process.exit(0);
  if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) process.exit(2);
  throw e;
}
