/**
 * `hsx-gateway serve --json` as a child process whose every output line is kept, for the tests that
 * signal it (shutdown) or watch its log (the CAN hub's cut-off lines): resolves once it says
 * `serving`; `waitFor` waits on its lines (events, bounded), `exited` settles with the exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { cliArgv, ROOT } from './cli-argv.js';

type Json = Record<string, unknown>;

export interface ServeChild {
  child: ChildProcess;
  control: string;
  /** stdout JSON lines, in order. */
  lines: Json[];
  stderr(): string;
  waitFor(pred: (l: Json) => boolean, what: string, ms?: number): Promise<Json>;
  /** Settles when the process is gone, with the time it went (performance.now()). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

export async function startServe(config: string, extraArgs: string[] = []): Promise<ServeChild> {
  const child = spawn(process.execPath, [...cliArgv(), 'serve', '--config', config, '--control-port', '0', '--json', ...extraArgs], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines: Json[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      lines.push(JSON.parse(line) as Json);
    } catch {
      lines.push({ type: 'text', line });
    }
    for (const w of [...waiters]) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => {
      const at = performance.now();
      for (const w of [...waiters]) w();
      resolve({ code, signal, at });
    }),
  );
  const waitFor = (pred: (l: Json) => boolean, what: string, ms = 60_000): Promise<Json> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = lines.find(pred);
        if (hit) {
          done();
          resolve(hit);
        } else if (child.exitCode !== null || child.signalCode !== null) {
          done();
          reject(new Error(`serve exited (${child.exitCode ?? child.signalCode}) before ${what}; stderr:\n${stderr.slice(-4000)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out waiting for ${what}; stderr:\n${stderr.slice(-4000)}`));
      }, ms);
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });
  const serving = await waitFor((l) => l['type'] === 'serving', 'serving');
  const c = serving['control'] as { host: string; port: number };
  return { child, control: `${c.host}:${c.port}`, lines, stderr: () => stderr, waitFor, exited };
}
