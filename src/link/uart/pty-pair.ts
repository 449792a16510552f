/**
 * A linked pseudo-terminal pair made by socat: two real serial ports (termios, serialport's
 * native binding) joined back to back, for the tests and for the demo's UART device: bytes
 * written to `a` come out of `b` and back.
 *
 *   const pair = await startPtyPair();   // pair.a, pair.b are paths (symlinks to /dev/pts/N)
 *   ...
 *   await pair.stop();                    // kills socat by its PID (a "cable pull" mid-test)
 *
 * The receiving side must open its port before the sender writes: serialport flushes a port
 * when it opens it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PtyPair {
  a: string;
  b: string;
  /** socat's PID. */
  pid: number;
  /** Temp directory holding the two links. */
  dir: string;
  /** Stops socat (SIGTERM, then SIGKILL) and waits until it has exited. Idempotent. */
  stop(): Promise<void>;
  /** True while socat is running. */
  alive(): boolean;
  /** What socat logged (its -d -d notices), for a failing test's message. */
  log(): string;
}

/** True when socat is on PATH (tests print and fail when it is not, never skip silently). */
export function haveSocat(): boolean {
  return spawnSync('socat', ['-V'], { stdio: 'ignore' }).status === 0;
}

export async function startPtyPair(options: { dir?: string; timeoutMs?: number } = {}): Promise<PtyPair> {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'pty-'));
  const ownDir = options.dir === undefined;
  const a = join(dir, 'A');
  const b = join(dir, 'B');
  const child: ChildProcess = spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    if (stderr.length < 65536) stderr += d.toString();
  });
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', (e) => {
      stderr += String(e);
      exited = true;
      resolve();
    });
  });

  const deadline = Date.now() + (options.timeoutMs ?? 5000);
  while (!(existsSync(a) && existsSync(b))) {
    if (exited || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`socat did not create the pty pair in ${dir}: ${exited ? 'it exited' : 'timed out'}\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }

  // If the process ends without stop() (a timed-out test worker), socat must not outlive it.
  const killOnExit = (): void => {
    if (!exited) child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const stop = async (): Promise<void> => {
    process.off('exit', killOnExit);
    if (!exited) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exitPromise;
      clearTimeout(timer);
    }
    if (ownDir) rmSync(dir, { recursive: true, force: true });
  };
  return { a, b, pid: child.pid!, dir, stop, alive: () => !exited, log: () => stderr };
}
