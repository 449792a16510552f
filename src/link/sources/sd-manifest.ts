/**
 * SD-card manifests: a TOML or JSON file on a mounted card listing the images to boot. Every
 * field is validated with an error naming it; paths resolve relative to the manifest and are
 * refused if they escape its directory (symlinks included), because a card is untrusted media.
 */
import { createHash } from 'node:crypto';
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, extname, isAbsolute, relative, resolve, sep } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { readImageFile } from './image-file.js';
import type { SourcedImage, SourceProblem } from './sourced-image.js';

const entrySchema = z.strictObject({
  path: z.string().min(1),
  app_name: z.string().regex(/^[\x20-\x7e]{1,31}$/, 'expected 1-31 printable ASCII characters').optional(),
  version: z.string().regex(/^\d+\.\d+\.\d+(\+\d+)?$/, 'expected MAJOR.MINOR.PATCH[+BUILD]').optional(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits').optional(),
  boot_priority: z.number().int().min(0).max(65535).default(100),
  fram_keys: z.array(z.number().int().min(1).max(0xfffe, 'keys 0x0000 and 0xFFFF are reserved')).default([]),
  persist: z.boolean().default(false),
});

export const manifestSchema = z.strictObject({
  version: z.literal(1, 'expected manifest version 1'),
  images: z.array(entrySchema).max(256, 'at most 256 images per manifest'),
});

export type ManifestEntry = z.infer<typeof entrySchema>;

export interface ManifestError {
  code: 'EMANIFEST';
  file: string;
  problems: string[];
  message: string;
}

const MAX_MANIFEST_BYTES = 256 * 1024;

function fail(file: string, problems: string[]): { ok: false; error: ManifestError } {
  return { ok: false, error: { code: 'EMANIFEST', file, problems, message: `${file}: ${problems.join('; ')}` } };
}

/** Parses and validates a manifest file (no image is read yet). */
export function readManifest(file: string): { ok: true; value: ManifestEntry[] } | { ok: false; error: ManifestError } {
  let text: string;
  try {
    const buf = readFileSync(file);
    if (buf.length > MAX_MANIFEST_BYTES) return fail(file, [`manifest is ${buf.length} bytes; the limit is ${MAX_MANIFEST_BYTES}`]);
    text = buf.toString('utf8');
  } catch (e) {
    return fail(file, [`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`]);
  }
  let raw: unknown;
  try {
    raw = extname(file).toLowerCase() === '.json' ? JSON.parse(text) : parseToml(text);
  } catch (e) {
    return fail(file, [`syntax error: ${(e as Error).message.split('\n')[0]}`]);
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    return fail(
      file,
      parsed.error.issues.map((i) => {
        const where = i.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
        return i.code === 'unrecognized_keys' ? `${where || '(top level)'}: unknown key(s) ${i.keys.join(', ')}` : `${where || '(top level)'}: ${i.message}`;
      }),
    );
  }
  return { ok: true, value: parsed.data.images };
}

/** Resolves an entry's path inside the manifest's directory, or says why it may not be used. */
export function resolveInside(manifestFile: string, entryPath: string): { ok: true; value: string } | { ok: false; error: string } {
  const root = realpathSync(dirname(resolve(manifestFile)));
  if (isAbsolute(entryPath)) return { ok: false, error: `absolute path "${entryPath}" is not allowed; give it relative to the manifest` };
  const candidate = resolve(root, entryPath);
  let real: string;
  try {
    real = realpathSync(candidate);
  } catch {
    return { ok: false, error: `"${entryPath}" does not exist` };
  }
  const rel = relative(root, real);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel) || rel.split(sep).includes('..')) {
    return { ok: false, error: `"${entryPath}" escapes the manifest's directory` };
  }
  return { ok: true, value: real };
}

/**
 * Loads every image a manifest lists. Entries that fail (missing file, escape, wrong SHA-256)
 * are reported as problems and skipped; the others still boot.
 */
export function loadManifestImages(file: string):
  { ok: true; value: { images: SourcedImage[]; problems: SourceProblem[] } } | { ok: false; error: ManifestError } {
  const m = readManifest(file);
  if (!m.ok) return m;
  const images: SourcedImage[] = [];
  const problems: SourceProblem[] = [];
  m.value.forEach((entry, i) => {
    const source = `sd:${file}#${i}`;
    const where = resolveInside(file, entry.path);
    if (!where.ok) {
      problems.push({ source, field: `images[${i}].path`, message: where.error });
      return;
    }
    const bytes = readImageFile(where.value);
    if (!bytes.ok) {
      problems.push({ source, field: `images[${i}].path`, message: bytes.error.message });
      return;
    }
    if (entry.sha256) {
      const actual = createHash('sha256').update(bytes.value).digest('hex');
      if (actual !== entry.sha256) {
        problems.push({ source, field: `images[${i}].sha256`, message: `image ${entry.path} has SHA-256 ${actual}, the manifest expects ${entry.sha256}` });
        return;
      }
    }
    const expected: SourcedImage['expected'] = {};
    if (entry.app_name) expected.appName = entry.app_name;
    if (entry.version) expected.version = entry.version;
    if (entry.sha256) expected.sha256 = entry.sha256;
    images.push({ source, bytes: bytes.value, bootPriority: entry.boot_priority, expected, framKeys: entry.fram_keys, persist: entry.persist });
  });
  images.sort((a, b) => a.bootPriority - b.bootPriority);
  return { ok: true, value: { images, problems } };
}
