#!/usr/bin/env node
import { writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as CommanderModule from 'commander';
import { commandNamed, registerFor } from './commands/manifest.js';
import { EXIT, errorLine } from './output.js';

// commander is CommonJS: require() skips the ESM loader's export scan of it, a good part of its load time
const { Command } = createRequire(import.meta.url)('commander') as typeof CommanderModule;

/**
 * Exit codes are a contract with CI scripts (output.ts, README "Exit codes"): 0 ok, 1 the operation
 * failed, 2 usage or config error, 3 no device answered. commander reports usage errors itself; we
 * map them to 2. With `--json` anywhere on the line, its message is not written to stderr but
 * becomes the one JSON error line on stdout, `{"ok":false,"error":{"code":"EUSAGE",…}}`.
 */
const json = process.argv.slice(2).includes('--json');
if (json) jsonSafetyNet();
const program = new Command('hsx-gateway')
  .description('Hardware-in-the-loop provisioning gateway for HSX devices')
  .version('0.1.0')
  .exitOverride()
  .configureOutput({
    writeErr: (s) => process.stderr.write(s),
    // with --json the error is said once, as JSON, below
    outputError: (s, write) => {
      if (!json) write(s);
    },
  });

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
  if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) {
    if (json) {
      // commander.unknownOption → unknown_option; its message without the "error: " it starts with
      const reason = ce.code.slice('commander.'.length).replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
      const message = ((e as Error).message ?? '').replace(/^error: /, '');
      process.stdout.write(errorLine('EUSAGE', reason, message, { command: commandNamed(process.argv.slice(2))?.name ?? null }));
    }
    process.exit(EXIT.USAGE);
  }
  if (json) {
    process.stdout.write(errorLine('EIO', 'internal_error', (e as Error)?.message ?? String(e)));
    process.exit(EXIT.FAILED);
  }
  throw e;
}

/**
 * With `--json`, a command that ends with a failure code and has said nothing on stdout (a usage
 * check deep in a transport's module that writes to stderr only), or a usage error (2) that never
 * printed the error line, still ends with the one JSON error line: what it wrote to stderr becomes
 * `message`. Commands print their own line (output.ts); this is the net under them.
 */
function jsonSafetyNet(): void {
  let wrote = false;
  let errorSaid = false;
  let errTail = '';
  const out = process.stdout.write.bind(process.stdout) as (...a: unknown[]) => boolean;
  process.stdout.write = ((chunk: unknown, ...rest: unknown[]) => {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8');
    if (text.length > 0) wrote = true;
    if (/"ok":false/.test(text) && /"error":\{/.test(text)) errorSaid = true;
    return out(chunk, ...rest);
  }) as typeof process.stdout.write;
  const err = process.stderr.write.bind(process.stderr) as (...a: unknown[]) => boolean;
  process.stderr.write = ((chunk: unknown, ...rest: unknown[]) => {
    errTail = (errTail + (typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8'))).slice(-4096);
    return err(chunk, ...rest);
  }) as typeof process.stderr.write;
  process.on('exit', (code) => {
    if (code === 0 || errorSaid || (wrote && code !== EXIT.USAGE)) return;
    // eslint-disable-next-line no-control-regex
    const lines = errTail.replace(/\x1b\[[0-9;]*m/g, '').split('\n').map((l) => l.trim()).filter(Boolean);
    const message = lines.at(-1) ?? `failed with exit code ${code}`;
    const [c, reason] = code === EXIT.USAGE ? ['EUSAGE', 'bad_usage'] : code === EXIT.NO_DEVICE ? ['ENODEV', 'no_answer'] : ['EIO', 'failed'];
    writeSync(1, errorLine(c, reason, message, { command: commandNamed(process.argv.slice(2))?.name ?? null }));
  });
}
