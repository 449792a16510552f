/**
 * Starts a real Mosquitto broker on a free loopback port with its own config file, and stops it
 * by PID. The Debian package installs no running service here; `.ci/run` installs the package.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface MosquittoOptions {
  /** username → password; enables authentication. */
  users?: Record<string, string>;
  /** ACL file lines (mosquitto syntax), used with users. */
  acl?: string[];
  port?: number;
  /** Keep sessions and retained messages across a restart (saved on SIGTERM). */
  persistence?: boolean;
}

export interface Mosquitto {
  port: number;
  url: string;
  pid: number;
  dir: string;
  stop(): Promise<void>;
  /** Kills the broker with `signal` (SIGKILL: no goodbye, as a crash) and resolves once it is gone. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts a stopped broker again on the same port (for outage tests). */
  restart(): Promise<void>;
}

const BIN = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto'].find((p) => existsSync(p));

export function mosquittoAvailable(): boolean {
  return BIN !== undefined;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitListening(port: number, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const okNow = await new Promise<boolean>((resolve) => {
      const c = connect(port, '127.0.0.1');
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (okNow) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<Mosquitto> {
  if (!BIN) throw new Error('mosquitto is not installed (apt-get install -y mosquitto); .ci/run installs it');
  const dir = mkdtempSync(join(tmpdir(), 'hsx-mosq-'));
  const port = opts.port ?? (await freePort());
  // `user root`: as root mosquitto would otherwise switch to the mosquitto user and lose access to our 0700 temp dir.
  const lines = [`listener ${port} 127.0.0.1`, 'user root', `log_dest file ${join(dir, 'mosquitto.log')}`, 'log_type all'];
  lines.push(opts.persistence ? `persistence true\npersistence_location ${dir}/` : 'persistence false');
  if (opts.users) {
    const pw = join(dir, 'passwd');
    writeFileSync(pw, '');
    for (const [u, p] of Object.entries(opts.users)) {
      const r = spawnSync('mosquitto_passwd', ['-b', pw, u, p]);
      if (r.status !== 0) throw new Error(`mosquitto_passwd failed: ${r.stderr}`);
    }
    lines.push('allow_anonymous false', `password_file ${pw}`);
    if (opts.acl) {
      const aclFile = join(dir, 'acl');
      writeFileSync(aclFile, opts.acl.join('\n') + '\n');
      lines.push(`acl_file ${aclFile}`);
    }
  } else {
    lines.push('allow_anonymous true');
  }
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, lines.join('\n') + '\n');
  let child: ChildProcess;
  const launch = async (): Promise<void> => {
    child = spawn(BIN!, ['-c', conf], { stdio: 'ignore' });
    await waitListening(port);
  };
  await launch();
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    await exited;
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill(signal);
    await exited;
  };
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    kill,
    get pid() {
      return child.pid ?? -1;
    },
    dir,
    stop,
    restart: launch,
  };
}
