#!/usr/bin/env node
import { createRequire } from 'node:module';
import type * as CommanderModule from 'commander';
import { commandNamed, registerFor } from './commands/manifest.js';

// commander is CommonJS: require() skips the ESM loader's export scan of it, a good part of its load time
const { Command } = createRequire(import.meta.url)('commander') as typeof CommanderModule;

/**
 * Exit codes are a contract with CI scripts: 0 ok, 1 the operation failed, 2 usage error.
 * commander reports usage errors itself; we map them to 2.
 */
const program = new Command('hsx-gateway')
  .description('Hardware-in-the-loop provisioning gateway for HSX devices')
  .version('0.1.0')
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });

// as registerAll did (sign.ts sets it): program options only before the subcommand name, whichever runs
program.enablePositionalOptions();
// Only the command that runs is imported (manifest.ts): `--help` and `inspect` start in a fraction of
// the time loading every command's modules took (bench/cli.ts).
await registerFor(program, commandNamed(process.argv.slice(2)));

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
