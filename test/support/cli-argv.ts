/**
 * How tests start the real CLI in a child process: the built `dist/cli/main.js` when it is at least
 * as new as every file in `src/` (what users run, and it starts several times faster, which matters in
 * the HIL VM); otherwise the sources through tsx, so a stale build is never what gets tested.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

export function cliArgv(): string[] {
  const built = join(ROOT, 'dist/cli/main.js');
  if (existsSync(built) && statSync(built).mtimeMs >= newestMtime(join(ROOT, 'src'))) return [built];
  return ['--import', 'tsx', join(ROOT, 'src/cli/main.ts')];
}
