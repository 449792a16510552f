import type { Command } from 'commander';
import { readFileSync, writeFileSync } from 'node:fs';
import { loadPrivateKey } from '../../gateway/keys.js';
import { signImage } from '../../hxe/signature.js';
import { formatVersion, parseVersion } from '../../hxe/trailer.js';
import { errorLine } from '../output.js';

/**
 * `hsx-gateway sign IMAGE --key KEY [--version 1.2.0+3] [--counter 7] -o OUT`: appends the
 * signature trailer (docs/hxe_format.md) and recomputes the header CRC over the whole file.
 */
export function registerSign(program: Command): void {
  // `sign --version 1.2.0` must reach this command, not the program's own -V/--version: program
  // options are only recognised before the subcommand name.
  program.enablePositionalOptions();
  program
    .command('sign')
    .description('sign an .hxe image with an Ed25519 key (appends the signature trailer)')
    .argument('<image>', 'the .hxe image to sign (an existing signature is replaced)')
    .requiredOption('--key <file>', 'private key file (from keygen; must be mode 0600)')
    .requiredOption('-o, --out <file>', 'where to write the signed image')
    .option('--version <major.minor.patch[+build]>', 'image version recorded in the trailer', '0.0.0')
    .option('--counter <n>', 'security counter (anti-downgrade); devices refuse images below their recorded counter', '0')
    .option('--json', 'print the result as JSON')
    .action((image: string, opts: { key: string; out: string; version: string; counter: string; json?: boolean }) => {
      const fail = (code: 1 | 2, message: string, extra: Record<string, unknown> = {}): void => {
        const e = extra['error'] as { code?: string; reason?: string; offset?: number } | undefined;
        if (opts.json) {
          process.stdout.write(errorLine(e?.code ?? (code === 2 ? 'EUSAGE' : 'EIO'), e?.reason ?? (code === 2 ? 'bad_option' : 'sign_failed'), message,
            e?.offset !== undefined ? { offset: e.offset } : {}));
        }
        else process.stderr.write(`sign: ${message}\n`);
        process.exitCode = code;
      };
      const version = parseVersion(opts.version);
      if (!version.ok) return fail(2, version.error);
      if (!/^\d+$/.test(opts.counter) || Number(opts.counter) > 0xffffffff) {
        return fail(2, `--counter "${opts.counter}": expected an integer 0..4294967295`);
      }
      const key = loadPrivateKey(opts.key);
      if (!key.ok) return fail(1, key.error.message);
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(readFileSync(image));
      } catch (e) {
        return fail(1, `${image}: ${(e as Error).message}`);
      }
      const signed = signImage(bytes, key.value, { version: version.value, securityCounter: Number(opts.counter) });
      if (!signed.ok) {
        const e = signed.error;
        return fail(1, `${image}: ${e.code} ${e.reason}${e.offset !== undefined ? ` at offset 0x${e.offset.toString(16)}` : ''}: ${e.message}`, { error: e });
      }
      try {
        writeFileSync(opts.out, signed.value.bytes);
      } catch (e) {
        return fail(1, `${opts.out}: ${(e as Error).message}`);
      }
      const t = signed.value.image.trailer!;
      const result = {
        ok: true, image, out: opts.out, size: signed.value.bytes.length, keyId: t.keyId,
        version: formatVersion(t.version), securityCounter: t.securityCounter, sha256: t.sha256,
        crc32: `0x${signed.value.image.header.crc32.toString(16).padStart(8, '0')}`,
      };
      if (opts.json) process.stdout.write(JSON.stringify(result) + '\n');
      else {
        process.stdout.write(`signed ${image} -> ${opts.out} (${result.size} bytes)\n` +
          `  key id ${t.keyId}, version ${result.version}, security counter ${t.securityCounter}\n` +
          `  sha256 ${t.sha256}\n  header crc32 ${result.crc32} (covers the trailer)\n`);
      }
    });
}
