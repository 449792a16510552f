import type { Command } from 'commander';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { buildImage, parseImage } from '../../hxe/index.js';
import { specFromDocument } from '../../hxe/spec.js';
import { err, ok } from '../../hxe/result.js';
import { describeError, imageJson } from './inspect.js';

/**
 * `hsx-gateway pack SPEC -o OUT.hxe [--json]`: build an image from a TOML or JSON spec (format of
 * src/hxe/spec.ts; samples in configs/images/). Exit 0 written, 1 bad spec (the message names the field),
 * 2 usage. The image is parsed back before it is written, so pack never writes what inspect would reject.
 */
export function registerPack(program: Command): void {
  program
    .command('pack')
    .description('build an .hxe image from a TOML or JSON spec')
    .argument('<spec>', 'the spec file (.toml or .json)')
    .requiredOption('-o, --output <file>', 'where to write the image')
    .option('--json', 'print the result as one JSON object')
    .action((specPath: string, opts: { output: string; json?: boolean }) => {
      const fail = (field: string, message: string): void => {
        if (opts.json) process.stdout.write(`${JSON.stringify({ ok: false, error: { code: 'EINVAL', reason: 'bad_spec', field, message } })}\n`);
        else process.stderr.write(`pack: ${specPath}: ${field}: ${message}\n`);
        process.exitCode = 1;
      };
      let text: string;
      try {
        text = readFileSync(specPath, 'utf8');
      } catch (e) {
        return fail('(spec)', (e as Error).message);
      }
      let doc: unknown;
      try {
        doc = extname(specPath).toLowerCase() === '.json' ? JSON.parse(text) : parseToml(text);
      } catch (e) {
        return fail('(spec)', `not valid ${extname(specPath).toLowerCase() === '.json' ? 'JSON' : 'TOML'}: ${(e as Error).message}`);
      }
      const base = dirname(resolve(specPath));
      const spec = specFromDocument(doc, (p) => {
        try {
          return ok(new Uint8Array(readFileSync(resolve(base, p))));
        } catch (e) {
          return err(`cannot read ${p}: ${(e as Error).message}`);
        }
      });
      if (!spec.ok) return fail(spec.error.field, spec.error.message);
      const built = buildImage(spec.value);
      if (!built.ok) return fail(built.error.field, built.error.message);
      const check = parseImage(built.value);
      if (!check.ok) {
        // the writer and the reader disagree: a bug, reported rather than written
        return fail('(image)', `built image does not verify: ${describeError(check.error)}`);
      }
      try {
        writeFileSync(opts.output, built.value);
      } catch (e) {
        if (opts.json) process.stdout.write(`${JSON.stringify({ ok: false, error: { code: 'EIO', reason: 'write_failed', message: (e as Error).message } })}\n`);
        else process.stderr.write(`pack: ${(e as Error).message}\n`);
        process.exitCode = 1;
        return;
      }
      const img = check.value;
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ ...imageJson(img), output: opts.output, size: img.size })}\n`);
      } else {
        process.stdout.write(`wrote ${opts.output}: ${img.size} bytes, crc32 0x${img.header.crc32.toString(16).padStart(8, '0')}, ` +
          `${img.values.length} values, ${img.commands.length} commands, ${img.mailboxes.length} mailboxes\n`);
      }
    });
}

