/**
 * A FIFO of events with O(1) push/shift and removal anywhere (used for drop-oldest-droppable
 * and for replacing a superseded drop warning). Plain arrays shift in O(n), which matters at
 * the rates a bench drives; this keeps a head index and compacts now and then.
 */
export class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  peek(): T | undefined {
    return this.items[this.head];
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Index (0 = oldest) of the first item matching, or -1. */
  findIndex(pred: (item: T) => boolean): number {
    for (let i = this.head; i < this.items.length; i++) {
      if (pred(this.items[i] as T)) return i - this.head;
    }
    return -1;
  }

  /** Index of `item` searching from the newest end (recent items are found in O(1)), or -1. */
  lastIndexOf(item: T): number {
    for (let i = this.items.length - 1; i >= this.head; i--) if (this.items[i] === item) return i - this.head;
    return -1;
  }

  removeAt(index: number): T | undefined {
    if (index === 0) return this.shift();
    const at = this.head + index;
    if (index < 0 || at >= this.items.length) return undefined;
    if (at === this.items.length - 1) return this.items.pop();
    return this.items.splice(at, 1)[0];
  }

  toArray(): T[] {
    return this.items.slice(this.head) as T[];
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}
