/**
 * Control port fairness bench (issue 23, item 4 goals): how much a flooding client slows everyone
 * else's `ping`, against the ping of the same gateway measured in the same run, quiet. One JSON
 * object per line ({"bench":"control","measure":...}), then a `summary` line with the medians over
 * the runs and whether each goal held. A missed goal is reported, never an exit code.
 *
 *   npx tsx bench/control.ts [runs]        (default 5 runs)
 *
 * The rig: a real `serve` process per run (a token, one simulated device, its log to a file as a
 * daemon's would go), the flooding clients in a second process (test/support/control-flood.ts),
 * and the pinging client here, so each of the three has its own event loop and the figures are the
 * gateway's, not a busy client's. Two kinds of ping, alternating:
 *   - fresh: connect, `{"cmd":"ping","token":…}`, reply (what the tests time: a new client);
 *   - held: `ping` on a connection authenticated beforehand (the request alone).
 *
 * 1. session_open_burst — goal: during a burst of 50,000 `session.open` (8 authenticated
 *    connections, each pipelining 250 at a time and reading the replies) the median ping is at
 *    most 2 × the quiet median measured just before (baseline_ms), for each kind.
 * 2. idle_opens — goal: while 1,024 idle connections are being opened (256 connecting at a time),
 *    every ping answers within 100 ms (max_ms); the baseline is the quiet ping of the same run.
 *
 * Each line carries the 1-minute load average at its start and end (a 2-core host shared with
 * other jobs) and the CPU time `serve` used meanwhile (serve_cpu_ms, from /proc; 10 ms ticks): a
 * run on a loaded host says so, and a ping that waited far longer than serve worked waited for a
 * CPU, not for the gateway.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const TOKEN = 'bench-control-token';
const repoRoot = new URL('..', import.meta.url).pathname;
const RUNS = Number(process.argv[2] ?? 5);
const BURST = { total: 50_000, conns: 8, batch: 250 };
const IDLE = { n: 1024, parallel: 256 };

type Json = Record<string, unknown>;
const r2 = (n: number): number => Math.round(n * 100) / 100;
const median = (xs: number[]): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const load1 = (): number => r2(loadavg()[0]!);
const out = (o: Json): void => console.log(JSON.stringify({ bench: 'control', ...o }));

async function startServe(): Promise<{ child: ChildProcess; port: number; cpuMs: () => number; sysMs: () => number; logLines: () => number; stop: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-bench-control-'));
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, [
    '[gateway]', 'id = "bench-control"', 'log_level = "info"',
    '[control]', 'listen = "127.0.0.1:0"',
    '[[control.tokens]]', 'name = "ops"', 'role = "admin"', `sha256 = "${createHash('sha256').update(TOKEN).digest('hex')}"`,
    '[[devices]]', 'name = "node1"', 'state_dir = "state/node1"', 'flash = { size = 262144 }', 'fram = { size = 16384 }',
    '[boot]', 'confirm_window_ms = 0',
  ].join('\n'));
  const logPath = join(dir, 'serve.log');
  const child = spawn(process.execPath, [...(process.env['BENCH_SERVE_NODE_ARGS']?.split(' ').filter(Boolean) ?? []), '--import=tsx', 'src/cli/main.ts', 'serve', '--config', config, '--control-port', '0', '--json'], {
    cwd: repoRoot, stdio: ['ignore', 'pipe', openSync(logPath, 'w')],
  });
  const port = await new Promise<number>((res, rej) => {
    const timer = setTimeout(() => rej(new Error('serve did not start in 60 s')), 60_000);
    child.once('exit', (code) => rej(new Error(`serve exited with ${code}: ${readFileSync(logPath, 'utf8').slice(-2000)}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as Json;
      if (m['type'] === 'serving') {
        clearTimeout(timer);
        res((m['control'] as { port: number }).port);
      }
    });
  });
  return {
    child,
    port,
    cpuMs: () => {
      // utime + stime of serve, in clock ticks (100 per second on Linux)
      const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(f[11]) + Number(f[12])) * 10;
    },
    sysMs: () => Number(readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[12]) * 10,
    logLines: () => readFileSync(logPath, 'utf8').split('\n').length - 1,
    stop: () => new Promise<void>((r) => {
      child.once('exit', () => {
        rmSync(dir, { recursive: true, force: true });
        r();
      });
      child.kill(process.env['BENCH_SERVE_NODE_ARGS'] ? 'SIGINT' : 'SIGKILL');
    }),
  };
}

/** A JSON-lines connection for pings. */
class Conn {
  private tail = '';
  private waiting: ((line: string | null) => void) | null = null;
  private constructor(private readonly s: Socket) {
    s.setNoDelay(true);
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      this.tail += d;
      const i = this.tail.indexOf('\n');
      if (i >= 0 && this.waiting) {
        const line = this.tail.slice(0, i);
        this.tail = this.tail.slice(i + 1);
        const w = this.waiting;
        this.waiting = null;
        w(line);
      }
    });
    s.on('error', () => {});
    s.on('close', () => this.waiting?.(null));
  }

  static open(port: number): Promise<Conn | null> {
    return new Promise((res) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => res(new Conn(s)));
      s.once('error', () => res(null));
    });
  }

  request(o: Json, ms = 10_000): Promise<Json | null> {
    return new Promise((res) => {
      const timer = setTimeout(() => res(null), ms);
      this.waiting = (line) => {
        clearTimeout(timer);
        res(line === null ? null : (JSON.parse(line) as Json));
      };
      this.s.write(`${JSON.stringify({ version: 1, ...o })}\n`);
    });
  }

  destroy(): void {
    this.s.destroy();
  }
}

/** The slowest fresh ping of the current measure: how long its connect took, and the whole. */
let slowest = { connect_ms: 0, total_ms: 0 };

/** A fresh client's ping (connect included), in ms; null when not answered. */
async function freshPing(port: number): Promise<number | null> {
  const t0 = performance.now();
  const c = await Conn.open(port);
  if (!c) return null;
  const connected = performance.now() - t0;
  try {
    const r = await c.request({ cmd: 'ping', token: TOKEN });
    const total = performance.now() - t0;
    if (total > slowest.total_ms) slowest = { connect_ms: r2(connected), total_ms: r2(total) };
    return r?.['reply'] === 'pong' ? total : null;
  } finally {
    c.destroy();
  }
}

async function heldPing(c: Conn): Promise<number | null> {
  const t0 = performance.now();
  const r = await c.request({ cmd: 'ping' });
  return r?.['reply'] === 'pong' ? performance.now() - t0 : null;
}

class Flooder {
  private readonly child: ChildProcess;
  private readonly waiters = new Map<string, (m: Json) => void>();
  readonly ready: Promise<void>;
  constructor() {
    this.child = fork(new URL('../test/support/control-flood.ts', import.meta.url).pathname, [], { execArgv: ['--import=tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (m: Json) => {
      const w = this.waiters.get(String(m['kind']));
      if (m['kind'] === 'error') console.error(`bench/control: flooder: ${String(m['message'])}`);
      if (w) {
        this.waiters.delete(String(m['kind']));
        w(m);
      }
    });
    this.ready = this.next('ready').then(() => {});
  }

  next(kind: string): Promise<Json> {
    return new Promise((r) => this.waiters.set(kind, r));
  }

  send(m: Json): void {
    this.child.send(m);
  }

  stop(): void {
    this.child.kill();
  }
}

/** Quiet pings, alternating fresh and held. */
async function quiet(port: number, held: Conn, n = 20): Promise<{ fresh: number[]; held: number[] }> {
  const f: number[] = [];
  const h: number[] = [];
  for (let i = 0; i < n; i++) {
    const a = await freshPing(port);
    if (a !== null) f.push(a);
    const b = await heldPing(held);
    if (b !== null) h.push(b);
  }
  return { fresh: f, held: h };
}

interface RunFigures {
  burst: { base_fresh: number; base_held: number; fresh: number; held: number };
  idle: { base_fresh: number; first: number; max: number; med: number; after: number };
}

async function run(i: number, flooder: Flooder): Promise<RunFigures> {
  const gw = await startServe();
  try {
    const held = await Conn.open(gw.port);
    if (!held || (await held.request({ cmd: 'auth', token: TOKEN }))?.['status'] !== 'ok') throw new Error('auth failed');
    await quiet(gw.port, held, 5); // warm-up

    // 1. session.open burst
    let l0 = load1();
    const base = await quiet(gw.port, held);
    const done = flooder.next('burst_done');
    let finished: Json | null = null;
    void done.then((m) => (finished = m));
    const cpu0 = gw.cpuMs();
    flooder.send({ kind: 'burst', port: gw.port, token: TOKEN, ...BURST });
    const fresh: number[] = [];
    const heldMs: number[] = [];
    let unanswered = 0;
    while (finished === null) {
      const a = await freshPing(gw.port);
      if (a === null) unanswered++;
      else if (finished === null) fresh.push(a);
      const b = await heldPing(held);
      if (b === null) unanswered++;
      else if (finished === null) heldMs.push(b);
    }
    const burst = finished as Json;
    const bf = { base_fresh: median(base.fresh), base_held: median(base.held), fresh: median(fresh), held: median(heldMs) };
    out({
      measure: 'session_open_burst', run: i, requests: burst['sent'], replies: burst['replies'], burst_ms: r2(burst['ms'] as number),
      fresh: { baseline_ms: r2(bf.base_fresh), during_median_ms: r2(bf.fresh), during_max_ms: r2(Math.max(...fresh)), ratio: r2(bf.fresh / bf.base_fresh), pings: fresh.length },
      held: { baseline_ms: r2(bf.base_held), during_median_ms: r2(bf.held), during_max_ms: r2(Math.max(...heldMs)), ratio: r2(bf.held / bf.base_held), pings: heldMs.length },
      unanswered, serve_cpu_ms: gw.cpuMs() - cpu0, goal: 'ratio <= 2', load1: [l0, load1()],
    });

    // 2. idle connections being opened
    l0 = load1();
    const base2 = await quiet(gw.port, held);
    const opened = flooder.next('idle_opened');
    let idleDone: Json | null = null;
    void opened.then((m) => (idleDone = m));
    slowest = { connect_ms: 0, total_ms: 0 };
    const cpu1 = gw.cpuMs();
    const sys1 = gw.sysMs();
    const w0 = performance.now();
    flooder.send({ kind: 'idle', port: gw.port, ...IDLE });
    const during: number[] = [];
    let unanswered2 = 0;
    while (idleDone === null) {
      const a = await freshPing(gw.port);
      if (a === null) unanswered2++;
      else during.push(a);
    }
    const cpuIdle = { serve_cpu_ms: gw.cpuMs() - cpu1, serve_sys_ms: gw.sysMs() - sys1, wall_ms: r2(performance.now() - w0) };
    const slowestDuring = slowest;
    const after = await quiet(gw.port, held, 5);
    const idle = idleDone as Json;
    flooder.send({ kind: 'release' });
    await flooder.next('released');
    const idf = { base_fresh: median(base2.fresh), first: during[0] ?? NaN, max: Math.max(...during), med: median(during), after: median(after.fresh) };
    out({
      measure: 'idle_opens', run: i, connections: idle['opened'], open_ms: r2(idle['ms'] as number), closed_by_server: idle['closed'], first_lines: idle['first_lines'],
      fresh: { baseline_ms: r2(idf.base_fresh), during_first_ms: r2(idf.first), during_median_ms: r2(idf.med), during_max_ms: r2(idf.max), pings: during.length, held_after_ms: r2(idf.after), slowest: slowestDuring },
      unanswered: unanswered2, ...cpuIdle, goal: 'during_max_ms <= 100', load1: [l0, load1()], serve_log_lines: gw.logLines(),
    });
    held.destroy();
    return { burst: bf, idle: idf };
  } finally {
    await gw.stop();
  }
}

const flooder = new Flooder();
await flooder.ready;
const runs: RunFigures[] = [];
for (let i = 1; i <= RUNS; i++) runs.push(await run(i, flooder));
flooder.stop();
const m = (f: (r: RunFigures) => number): number => r2(median(runs.map(f)));
const ratioFresh = m((r) => r.burst.fresh / r.burst.base_fresh);
const ratioHeld = m((r) => r.burst.held / r.burst.base_held);
const idleMax = m((r) => r.idle.max);
out({
  measure: 'summary', runs: RUNS,
  session_open_burst: {
    fresh: { baseline_ms: m((r) => r.burst.base_fresh), during_ms: m((r) => r.burst.fresh), ratio: ratioFresh },
    held: { baseline_ms: m((r) => r.burst.base_held), during_ms: m((r) => r.burst.held), ratio: ratioHeld },
    goal: 'ratio <= 2', met: ratioFresh <= 2 && ratioHeld <= 2,
  },
  idle_opens: { baseline_ms: m((r) => r.idle.base_fresh), during_first_ms: m((r) => r.idle.first), during_median_ms: m((r) => r.idle.med), during_max_ms: idleMax, goal: 'during_max_ms <= 100', met: idleMax <= 100 },
  load1: load1(),
});
