/**
 * Turns of the event loop, shared among the control connections that have more requests waiting
 * than one turn allows them (connection.ts pump). A connection that has handled its
 * `requestsPerTurn` requests waits here; each turn, after the loop has polled every socket (new
 * connections, new requests), the `slicesPerTurn` connections that have waited longest get their
 * next share, in the order they came. So however many connections flood, a turn holds a bounded
 * amount of their work, and a client that sends one request is read and answered in the next turn,
 * not after everyone's backlog. It counts requests and turns, never time: the same input is served
 * in the same order on a fast host and on a loaded one.
 */
export class TurnShares {
  private readonly waiting: (() => void)[] = [];
  private scheduled = false;

  constructor(readonly slicesPerTurn: number) {}

  /** Connections waiting for a share. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Resolves in a later turn of the event loop (after its poll phase), when the caller's place in line comes. */
  next(): Promise<void> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.run);
  }

  private readonly run = (): void => {
    this.scheduled = false;
    const n = Math.min(Math.max(1, this.slicesPerTurn), this.waiting.length);
    for (const resolve of this.waiting.splice(0, n)) resolve();
    // the rest wait for the next turn (an immediate queued now runs after the next poll phase)
    if (this.waiting.length) this.schedule();
  };
}
