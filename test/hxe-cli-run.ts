/**
 * Test-only: run the real CLI in a child process. When `dist/` is at least as new as every file in `src/`
 * (as after `make test`'s build) the built `dist/cli/main.js` runs — what users run, and it starts without
 * transpiling; otherwise the sources run through tsx, so a stale build is never what gets tested.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIST_MAIN = join(ROOT, 'dist', 'cli', 'main.js');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function distIsFresh(): boolean {
  if (!existsSync(DIST_MAIN)) return false;
  const distNewest = newestMtime(join(ROOT, 'dist'));
  return statSync(DIST_MAIN).mtimeMs > 0 && distNewest >= newestMtime(join(ROOT, 'src'));
}

export const CLI_ARGS: string[] = distIsFresh() ? [DIST_MAIN] : ['--import', 'tsx', 'src/cli/main.ts'];

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[]): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...CLI_ARGS, ...args], { cwd: ROOT, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export { ROOT };
