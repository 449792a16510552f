/**
 * The receiving half of a JSON-lines connection, for clients of the control server: splits what
 * arrives into lines, keeps them in order until taken, and lets the caller wait for the next one
 * with a deadline. `ControlClient` and the tests' raw client both read the server through it.
 */
import type { Socket } from 'node:net';

export type NextLine = { line: string } | { closed: string } | { timeout: true };

export class LineReader {
  private readonly lines: string[] = [];
  private cursor = 0;
  private buf = '';
  private waiters: (() => void)[] = [];
  /** Why no more lines will come (EOF, close or a socket error); null while open. */
  closedWith: string | null = null;

  constructor(socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
      this.wake();
    });
    const closed = (why: string) => {
      this.closedWith ??= why;
      this.wake();
    };
    socket.on('end', () => closed('connection closed by the server'));
    socket.on('close', () => closed('connection closed by the server'));
    socket.on('error', (e) => closed(e.message));
  }

  /** The next line not yet taken; waits up to `ms` for it. Lines already received are returned even after EOF. */
  async next(ms: number): Promise<NextLine> {
    const deadline = Date.now() + ms;
    while (this.cursor >= this.lines.length) {
      if (this.closedWith !== null) return { closed: this.closedWith };
      const left = deadline - Date.now();
      if (left <= 0) return { timeout: true };
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const line = this.lines[this.cursor] as string;
    // Taken lines are released (a long-lived client must not keep its whole history).
    this.lines[this.cursor++] = '';
    if (this.cursor > 1024 && this.cursor * 2 > this.lines.length) {
      this.lines.splice(0, this.cursor);
      this.cursor = 0;
    }
    return { line };
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
