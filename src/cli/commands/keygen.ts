import type { Command } from 'commander';
import { generateKeyFiles } from '../../gateway/keys.js';
import { errorLine } from '../output.js';

/**
 * `hsx-gateway keygen --out DIR [--name NAME]`: an Ed25519 signing key pair, NAME.key (mode 0600,
 * keep it off the bench) and NAME.pub (copy it into the devices' trusted keys directory).
 */
export function registerKeygen(program: Command): void {
  program
    .command('keygen')
    .description('generate an Ed25519 image-signing key pair (NAME.key mode 0600, NAME.pub)')
    .requiredOption('--out <dir>', 'directory for the key files (created mode 0700 if missing)')
    .option('--name <name>', 'file stem of the key pair', 'signing')
    .option('--json', 'print the result as JSON')
    .action((opts: { out: string; name: string; json?: boolean }) => {
      const r = generateKeyFiles(opts.out, opts.name);
      if (!r.ok) {
        if (opts.json) process.stdout.write(errorLine(r.error.code, 'keygen_failed', r.error.message, { file: r.error.file }));
        else process.stderr.write(`keygen: ${r.error.message}\n`);
        process.exitCode = 1;
        return;
      }
      if (opts.json) process.stdout.write(JSON.stringify({ ok: true, ...r.value }) + '\n');
      else {
        process.stdout.write(`key id      ${r.value.keyId}\nprivate key ${r.value.privateKeyFile} (mode 0600)\npublic key  ${r.value.publicKeyFile}\n`);
      }
    });
}
