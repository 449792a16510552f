/**
 * The host preload directory: every `*.hxe` in one folder (not watched; read at boot), in name
 * order, so a bench engineer controls boot order with file names.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { readImageFile } from './image-file.js';
import type { SourcedImage, SourceProblem } from './sourced-image.js';

export function loadPreloadDir(dir: string): { images: SourcedImage[]; problems: SourceProblem[] } {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.toLowerCase().endsWith('.hxe')).sort();
  } catch (e) {
    return { images: [], problems: [{ source: `file:${dir}`, message: `cannot list preload directory: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` }] };
  }
  const images: SourcedImage[] = [];
  const problems: SourceProblem[] = [];
  names.forEach((name, i) => {
    const path = join(dir, name);
    const r = readImageFile(path);
    if (r.ok) images.push({ source: `file:${path}`, bytes: r.value, bootPriority: i });
    else problems.push({ source: `file:${path}`, message: r.error.message });
  });
  return { images, problems };
}
