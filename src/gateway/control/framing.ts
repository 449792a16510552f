/**
 * JSON-lines framing for the control connection. A line longer than the limit is answered with
 * one error and then skipped up to its newline without being kept in memory, so a client that
 * sends 1 GiB without a newline costs us at most the limit. The bytes of an unfinished line are
 * copied into one buffer of our own (never kept as slices of the socket's chunks, which would pin
 * whole read buffers, nor as one object per chunk, which a client sending a byte at a time would
 * multiply): what a connection holds before a newline is at most the limit, plus nothing. The
 * limit may change between lines (smaller before a client has authenticated). Bytes that are not
 * UTF-8 are reported, not guessed at.
 */
export type Frame =
  | { kind: 'line'; text: string }
  | { kind: 'invalid_utf8' }
  | { kind: 'too_long'; limit: number };

const NL = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);
/** A line buffer larger than this is released after its line instead of being kept for the next. */
const KEEP_BYTES = 16 * 1024;

export class LineFramer {
  private buf: Buffer = EMPTY;
  private size = 0;
  /** Inside an over-long line: dropping bytes until the next newline. */
  private discarding = false;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private maxLineBytes: number,
    private readonly onFrame: (frame: Frame) => void,
  ) {}

  /** Bytes currently held for an unfinished line (never more than the limit). */
  get buffered(): number {
    return this.size;
  }

  /** Bytes allocated for the unfinished line (never more than the limit). */
  get capacity(): number {
    return this.buf.length;
  }

  get limit(): number {
    return this.maxLineBytes;
  }

  /** The limit for the line being read and the ones after it. */
  setLimit(maxLineBytes: number): void {
    this.maxLineBytes = maxLineBytes;
  }

  /** Forgets an unfinished line (the connection is closing). */
  reset(): void {
    this.buf = EMPTY;
    this.size = 0;
    this.discarding = false;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(NL, start);
      const end = nl === -1 ? chunk.length : nl;
      if (this.discarding) {
        if (nl !== -1) this.discarding = false;
      } else if (this.size + (end - start) > this.maxLineBytes) {
        this.buf = EMPTY;
        this.size = 0;
        this.discarding = nl === -1;
        this.onFrame({ kind: 'too_long', limit: this.maxLineBytes });
      } else if (end > start || nl !== -1) {
        if (nl !== -1 && this.size === 0) {
          // the whole line is in this chunk: no copy
          this.emit(chunk.subarray(start, end));
        } else {
          if (end > start) this.append(chunk, start, end);
          if (nl !== -1) this.finishLine();
        }
      }
      if (nl === -1) break;
      start = nl + 1;
    }
  }

  private append(chunk: Buffer, start: number, end: number): void {
    const need = this.size + (end - start);
    if (need > this.buf.length) {
      // grow geometrically, never past the limit
      const cap = Math.min(this.maxLineBytes, Math.max(need, this.buf.length * 2, 256));
      const next = Buffer.allocUnsafeSlow(cap);
      this.buf.copy(next, 0, 0, this.size);
      this.buf = next;
    }
    chunk.copy(this.buf, this.size, start, end);
    this.size = need;
  }

  private finishLine(): void {
    const line = this.buf.subarray(0, this.size);
    this.size = 0;
    try {
      this.emit(line);
    } finally {
      if (this.buf.length > KEEP_BYTES) this.buf = EMPTY;
    }
  }

  private emit(line: Buffer): void {
    let buf = line;
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
