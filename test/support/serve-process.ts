/**
 * `hsx-gateway serve` in its own process for the end-to-end tests that only need its control port:
 * a thin view of `startServe` (serve-child.ts), plus `until` for conditions on messages that arrive
 * asynchronously (MQTT, a child's output).
 */
import type { ChildProcess } from 'node:child_process';
import { startServe } from './serve-child.js';

export async function startGateway(config: string): Promise<{ child: ChildProcess; control: string }> {
  const s = await startServe(config);
  return { child: s.child, control: s.control };
}

/** Waits for a condition on messages that arrive asynchronously; bounded. */
export async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
