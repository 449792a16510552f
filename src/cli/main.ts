#!/usr/bin/env node
import { Command } from 'commander';
import { registerAll } from './commands/index.js';

/**
 * Exit codes are a contract with CI scripts: 0 ok, 1 the operation failed, 2 usage error.
 * commander reports usage errors itself; we map them to 2.
 */
const program = new Command('hsx-gateway')
  .description('Hardware-in-the-loop provisioning gateway for HSX devices')
  .version('0.1.0')
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });

registerAll(program);

try {
  await program.parseAsync(process.argv);
} catch (e: unknown) {
  const ce = e as { code?: string; exitCode?: number };
  if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.version' || ce.code === 'commander.help') {
    process.exit(0);
  }
  if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) process.exit(2);
  throw e;
}
