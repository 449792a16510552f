/** Test-only: run the real CLI in a child process (dist or sources: see support/cli-argv.ts). */
import { execFile } from 'node:child_process';
import { cliArgv, ROOT } from './support/cli-argv.js';

export const CLI_ARGS: string[] = cliArgv();

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** `env` is added to this process's environment (e.g. `{ HSX_GATEWAY_TOKEN: '' }` to clear a variable). */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...CLI_ARGS, ...args], { cwd: ROOT, timeout: 60_000, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export { ROOT };
