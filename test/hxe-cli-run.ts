/** Test-only: run the real CLI in a child process (dist or sources: see support/cli-argv.ts). */
import { execFile } from 'node:child_process';
import { cliArgv, ROOT } from './support/cli-argv.js';

export const CLI_ARGS: string[] = cliArgv();

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
