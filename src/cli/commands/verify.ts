import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { loadTrustedKeys } from '../../gateway/keys.js';
import { parseImage } from '../../hxe/parse.js';
import { describeVerdict, NO_KEYS, verifySignature, type SignatureVerdict, type TrustedKeys } from '../../hxe/signature.js';
import { formatVersion } from '../../hxe/trailer.js';
import type { HxeImage } from '../../hxe/types.js';
import { errorLine } from '../output.js';

/**
 * `hsx-gateway verify IMAGE --keys DIR`: format check plus signature check against the trusted
 * keys and revocation list of DIR. Exit 0 only when the signature verifies.
 */
export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description('verify an image and its signature against a trusted keys directory')
    .argument('<image>', 'the .hxe image')
    .requiredOption('--keys <dir>', 'trusted keys directory (NAME.pub files, optional revoked.txt)')
    .option('--json', 'print the result as JSON')
    .action((image: string, opts: { keys: string; json?: boolean }) => {
      const fail = (message: string, extra: Record<string, unknown> = {}): void => {
        const e = extra['error'] as { code?: string; reason?: string; offset?: number } | undefined;
        if (opts.json) process.stdout.write(errorLine(e?.code ?? 'EIO', e?.reason ?? 'unreadable', message, { image, ...(e?.offset !== undefined ? { offset: e.offset } : {}) }));
        else process.stderr.write(`verify: ${message}\n`);
        process.exitCode = 1;
      };
      const keys = loadTrustedKeys(opts.keys);
      if (!keys.ok) return fail(keys.error.message);
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(readFileSync(image));
      } catch (e) {
        return fail(`${image}: ${(e as Error).message}`);
      }
      const parsed = parseImage(bytes);
      if (!parsed.ok) {
        const e = parsed.error;
        return fail(`${image}: ${e.code} ${e.reason}${e.offset !== undefined ? ` at offset 0x${e.offset.toString(16)}` : ''}: ${e.message}`, { error: e });
      }
      const t = parsed.value.trailer;
      const verdict = verifySignature(bytes, t, keys.value);
      const result = {
        ok: verdict.status === 'verified', image, appName: parsed.value.header.appName, verdict,
        ...(t ? { version: formatVersion(t.version), securityCounter: t.securityCounter, keyId: t.keyId } : {}),
        trustedKeys: keys.value.keys.size, revokedKeys: keys.value.revoked.size,
        // a failed verdict is an error in the one JSON error shape too (the verdict stays beside it)
        ...(verdict.status === 'verified' ? {} : { error: { code: 'EBADSIG', reason: verdict.status, message: `${image}: ${describeVerdict(verdict)}` } }),
      };
      if (opts.json) process.stdout.write(JSON.stringify(result) + '\n');
      else (result.ok ? process.stdout : process.stderr).write(`${image}: ${describeVerdict(verdict)}\n`);
      if (!result.ok) process.exitCode = 1;
    });
}

/** A verdict that means the image was altered or its key withdrawn (as opposed to "not checked"). */
export function verdictIsFailure(v: SignatureVerdict): boolean {
  return v.status === 'digest_mismatch' || v.status === 'bad_signature' || v.status === 'revoked_key';
}

/**
 * The trailer and signature status for `inspect` (JSON form). Without keys the digest is still
 * checked, so an altered image shows as such; the signature itself needs `--keys`.
 */
export function trailerJson(img: HxeImage, bytes: Uint8Array, keys: TrustedKeys | null): Record<string, unknown> {
  const t = img.trailer;
  const verdict = verifySignature(bytes, t, keys ?? NO_KEYS);
  return {
    trailer: t
      ? {
        offset: t.offset, length: t.length, version: formatVersion(t.version), securityCounter: t.securityCounter,
        keyId: t.keyId, sha256: t.sha256, signature: Buffer.from(t.signature).toString('hex'),
      }
      : null,
    signature: { ...verdict, keysChecked: keys !== null },
  };
}

/** The trailer and signature status for `inspect` (text form). */
export function describeTrailer(img: HxeImage, bytes: Uint8Array, keys: TrustedKeys | null): string {
  const t = img.trailer;
  const verdict = verifySignature(bytes, t, keys ?? NO_KEYS);
  if (!t) return `\nsignature: unsigned\n`;
  const status = !keys && verdict.status === 'unknown_key' ? `not checked (give --keys DIR); digest OK` : describeVerdict(verdict);
  const rows = [
    ['offset', `0x${t.offset.toString(16)} (${t.length} bytes)`],
    ['version', formatVersion(t.version)],
    ['security_counter', String(t.securityCounter)],
    ['key_id', t.keyId],
    ['sha256', t.sha256],
    ['signature', status],
  ];
  const w = Math.max(...rows.map((r) => r[0]!.length));
  return `\nsignature trailer\n${rows.map(([k, v]) => `${k!.padEnd(w)}  ${v}`).join('\n')}\n`;
}

/**
 * Everything `inspect` shows about signing, in one call: loads `keysDir` when given, checks the
 * trailer, and says whether the result should fail the command (altered image, bad signature,
 * revoked key, unreadable keys directory).
 */
export function signatureReport(img: HxeImage, bytes: Uint8Array, keysDir: string | undefined):
  { json: Record<string, unknown>; text: string; failed: boolean } {
  // an unsigned image inspected without --keys: nothing to add (inspect's documented JSON shape stays as it was)
  if (!img.trailer && keysDir === undefined) return { json: {}, text: '', failed: false };
  let keys: TrustedKeys | null = null;
  if (keysDir !== undefined) {
    const loaded = loadTrustedKeys(keysDir);
    if (!loaded.ok) {
      return { json: { signature: { status: 'keys_unreadable', message: loaded.error.message } }, text: `\nsignature: ${loaded.error.message}\n`, failed: true };
    }
    keys = loaded.value;
  }
  const verdict = verifySignature(bytes, img.trailer, keys ?? NO_KEYS);
  return { json: trailerJson(img, bytes, keys), text: describeTrailer(img, bytes, keys), failed: verdictIsFailure(verdict) };
}
