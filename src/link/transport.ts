/**
 * The one transport abstraction: every source and link (filesystem, SD manifest, UART, CAN)
 * implements this and registers by name, so workflows and the boot sequence never branch on
 * the kind of transport. Kept deliberately small.
 */
import type { EventEmitter } from 'node:events';

export interface TransportStatus {
  state: 'opening' | 'open' | 'closed' | 'error';
  detail?: string;
  /** Counters a transport keeps (frames dropped for CRC, retransmits, …). */
  counters?: Record<string, number>;
}

export interface Transport<Out = Uint8Array, In = Uint8Array> extends EventEmitter {
  readonly name: string;
  open(): Promise<void>;
  send(message: Out): Promise<void>;
  /** Registers a receiver; returns a function that removes it. */
  receive(handler: (message: In) => void): () => void;
  close(): Promise<void>;
  status(): TransportStatus;
  // events: 'status' (TransportStatus)
}

export type TransportFactory = (options: Record<string, unknown>) => Transport<unknown, unknown>;

const registry = new Map<string, TransportFactory>();

export function registerTransport(kind: string, factory: TransportFactory): void {
  if (registry.has(kind)) throw new Error(`transport kind already registered: ${kind}`);
  registry.set(kind, factory);
}

export function createTransport(kind: string, options: Record<string, unknown>): Transport<unknown, unknown> {
  const factory = registry.get(kind);
  if (!factory) throw new Error(`unknown transport kind: ${kind} (known: ${[...registry.keys()].join(', ') || 'none'})`);
  return factory(options);
}
