/**
 * JSON-lines framing for the control connection. A line longer than the limit is answered with
 * one error and then skipped up to its newline without being kept in memory, so a client that
 * sends 1 GiB without a newline costs us at most `maxLineBytes`. Bytes that are not UTF-8 are
 * reported, not guessed at.
 */
export type Frame =
  | { kind: 'line'; text: string }
  | { kind: 'invalid_utf8' }
  | { kind: 'too_long'; limit: number };

const NL = 0x0a;
const CR = 0x0d;

export class LineFramer {
  private parts: Buffer[] = [];
  private size = 0;
  /** Inside an over-long line: dropping bytes until the next newline. */
  private discarding = false;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private readonly maxLineBytes: number,
    private readonly onFrame: (frame: Frame) => void,
  ) {}

  /** Bytes currently held for an unfinished line (never more than maxLineBytes). */
  get buffered(): number {
    return this.size;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(NL, start);
      const end = nl === -1 ? chunk.length : nl;
      if (this.discarding) {
        if (nl !== -1) this.discarding = false;
      } else if (this.size + (end - start) > this.maxLineBytes) {
        this.parts = [];
        this.size = 0;
        this.discarding = nl === -1;
        this.onFrame({ kind: 'too_long', limit: this.maxLineBytes });
      } else if (end > start || nl !== -1) {
        if (end > start) {
          this.parts.push(chunk.subarray(start, end));
          this.size += end - start;
        }
        if (nl !== -1) this.finishLine();
      }
      if (nl === -1) break;
      start = nl + 1;
    }
  }

  private finishLine(): void {
    let buf = this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    if (buf.length && buf[buf.length - 1] === CR) buf = buf.subarray(0, buf.length - 1);
    if (buf.length === 0) return; // blank lines are keep-alives, not requests
    let text: string;
    try {
      text = this.decoder.decode(buf);
    } catch {
      this.onFrame({ kind: 'invalid_utf8' });
      return;
    }
    this.onFrame({ kind: 'line', text });
  }
}
