/**
 * `hsx-gateway serve` in its own process, as a rig runs it, for the gateway's end-to-end tests:
 * started from a config file with an ephemeral control port, resolved once it says it is serving.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

type Json = Record<string, unknown>;

export function startGateway(config: string): Promise<{ child: ChildProcess; control: string }> {
  const child = spawn(process.execPath, ['--import=tsx', 'src/cli/main.ts', 'serve', '--config', config, '--control-port', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start in 60 s; stderr:\n${stderr}`)), 60_000);
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code}; stderr:\n${stderr}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as Json;
      if (m['type'] === 'serving') {
        clearTimeout(timer);
        const c = m['control'] as { host: string; port: number };
        resolve({ child, control: `${c.host}:${c.port}` });
      }
    });
  });
}

/** Waits for a condition on messages that arrive asynchronously (MQTT, a child's output); bounded. */
export async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
