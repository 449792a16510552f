/**
 * The flooding side of bench/control.ts and of test/control-limits.test.ts, in its own process
 * (forked with IPC), so that the pinger's figures are the gateway's and not a busy client's event
 * loop: a burst of pipelined `session.open` requests over a few authenticated connections, or many
 * idle connections that never send a byte.
 *
 * Messages in:  {kind:'burst', port, token, total, conns, batch}  → {kind:'burst_done', sent, replies, ms}
 *               {kind:'idle', port, n, parallel}                  → {kind:'idle_started'} once the first `parallel` are connecting,
                                                                   {kind:'idle_opened', opened, closed, ms, first_lines}
 *               {kind:'settle', max, ms}                          → {kind:'settled', open, closed, first_lines} once at most
                                                                   `max` idle connections are still open, or after `ms`
               {kind:'release'}                                  → {kind:'released'} (every idle connection destroyed)
 */
import { connect, type Socket } from 'node:net';

type Msg =
  | { kind: 'burst'; port: number; token: string; total: number; conns: number; batch: number }
  | { kind: 'idle'; port: number; n: number; parallel: number }
  | { kind: 'settle'; max: number; ms: number }
  | { kind: 'release' };

const send = (m: Record<string, unknown>): void => void process.send!(m);

/** One authenticated connection pipelining `batch` session.open lines at a time, counting the replies. */
function burster(port: number, token: string, batch: number, take: (n: number) => number, replies: Record<string, number>): Promise<void> {
  return new Promise((done) => {
    const s = connect(port, '127.0.0.1');
    s.setNoDelay(true);
    const line = `${JSON.stringify({ version: 1, cmd: 'session.open', client: 'burst' })}\n`;
    let authed = false;
    let want = 0;
    let tail = '';
    const next = (): void => {
      const n = take(batch);
      if (n === 0) {
        s.end();
        return;
      }
      want = n;
      s.write(line.repeat(n));
    };
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      tail += d;
      let i: number;
      while ((i = tail.indexOf('\n')) >= 0) {
        const l = tail.slice(0, i);
        tail = tail.slice(i + 1);
        if (!authed) {
          authed = true;
          if (!l.includes('"status":"ok"')) {
            replies[`auth_failed:${l.slice(0, 80)}`] = 1;
            s.destroy();
            return;
          }
          next();
          continue;
        }
        const k = l.includes('"status":"ok"') ? 'ok' : /"error":"([^"]*)"/.exec(l)?.[1] ?? 'unparsed';
        replies[k] = (replies[k] ?? 0) + 1;
        if (--want === 0) next();
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      const k = `socket_error:${e.code ?? e.message}`;
      replies[k] = (replies[k] ?? 0) + 1;
    });
    s.on('close', () => done());
    s.once('connect', () => s.write(`${JSON.stringify({ version: 1, cmd: 'auth', token })}\n`));
  });
}

let idle: Socket[] = [];
let idleClosed = 0;
const firstLines: Record<string, number> = {};
let onIdleClose: (() => void) | null = null;

async function openIdle(port: number, n: number, parallel: number): Promise<void> {
  const t0 = performance.now();
  const closedBefore = idleClosed;
  for (let i = 0; i < n; i += parallel) {
    const batch: Promise<void>[] = [];
    for (let j = i; j < Math.min(n, i + parallel); j++) {
      const s = connect(port, '127.0.0.1');
      idle.push(s);
      let first = true;
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        if (!first) return;
        first = false;
        const k = /"error":"([^"]*)"/.exec(d)?.[1] ?? d.slice(0, 40);
        firstLines[k] = (firstLines[k] ?? 0) + 1;
      });
      s.on('error', () => {});
      s.once('close', () => {
        idleClosed++;
        onIdleClose?.();
      });
      batch.push(new Promise<void>((r) => {
        s.once('connect', () => r());
        s.once('close', () => r());
      }));
    }
    if (i === 0) send({ kind: 'idle_started' });
    await Promise.all(batch);
  }
  send({ kind: 'idle_opened', opened: n, closed: idleClosed - closedBefore, ms: performance.now() - t0, first_lines: { ...firstLines } });
}

process.on('message', (m: Msg) => {
  if (m.kind === 'burst') {
    let sent = 0;
    const take = (k: number): number => {
      const n = Math.min(k, m.total - sent);
      sent += n;
      return n;
    };
    const replies: Record<string, number> = {};
    const t0 = performance.now();
    void Promise.all(Array.from({ length: m.conns }, () => burster(m.port, m.token, m.batch, take, replies)))
      .then(() => send({ kind: 'burst_done', sent, replies, ms: performance.now() - t0 }))
      .catch((e: Error) => send({ kind: 'error', message: e.message }));
  } else if (m.kind === 'idle') {
    void openIdle(m.port, m.n, m.parallel);
  } else if (m.kind === 'settle') {
    const report = (): void => {
      clearTimeout(timer);
      onIdleClose = null;
      send({ kind: 'settled', open: idle.length - idleClosed, closed: idleClosed, first_lines: { ...firstLines } });
    };
    const timer = setTimeout(report, m.ms);
    onIdleClose = () => {
      if (idle.length - idleClosed <= m.max) report();
    };
    onIdleClose();
  } else if (m.kind === 'release') {
    for (const s of idle) s.destroy();
    idle = [];
    idleClosed = 0;
    for (const k of Object.keys(firstLines)) delete firstLines[k];
    send({ kind: 'released' });
  }
});
send({ kind: 'ready' });
