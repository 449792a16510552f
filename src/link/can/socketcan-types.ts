/**
 * Our own declarations for the `socketcan` npm package (4.3.1). Its shipped `.d.ts` imports a
 * native `.node` module type that does not resolve, so with `skipLibCheck` every channel silently
 * becomes `any`. We load the package through `createRequire` and type it with these interfaces,
 * written against its native source (native/can.cc).
 */

/** A frame as the native addon hands it over: FD frames carry no flag, only a longer `data`. */
export interface SocketcanMessage {
  id: number;
  data: Buffer;
  ext?: boolean;
  rtr?: boolean;
  /** Set on error frames (CAN_ERR_FLAG); `id` then holds the error class bits. */
  err?: boolean;
  ts_sec?: number;
  ts_usec?: number;
}

/** What `send`/`sendFD` accept. `fd_brs` switches the bit rate in the FD data phase. */
export interface SocketcanOutgoing {
  id: number;
  data: Buffer;
  ext?: boolean;
  rtr?: boolean;
  fd_brs?: boolean;
}

export interface SocketcanFilter {
  id: number;
  mask: number;
  invert?: boolean;
}

export interface SocketcanRawChannel {
  addListener(event: 'onMessage', callback: (msg: SocketcanMessage) => void, instance?: object): void;
  addListener(event: 'onStopped', callback: () => void, instance?: object): void;
  start(): void;
  stop(): void;
  /** Returns the byte count written, or -1 on failure (errno is not exposed). */
  send(message: SocketcanOutgoing): number;
  /** Pads the payload to the next CAN FD length; returns bytes written or -1. */
  sendFD(message: SocketcanOutgoing): number;
  setRxFilters(filters: SocketcanFilter | SocketcanFilter[]): void;
  setErrorFilters(errorMask: number): void;
  disableLoopback(): void;
}

export interface SocketcanChannelOptions {
  timestamps?: boolean;
  protocol?: number;
  non_block_send?: boolean;
}

export interface SocketcanModule {
  /** Throws a bare `Error('Error while creating channel')` when the kernel has no CAN or the interface is missing. */
  createRawChannel(channel: string, timestamps?: boolean, protocol?: number): SocketcanRawChannel;
  createRawChannelWithOptions(channel: string, options: SocketcanChannelOptions): SocketcanRawChannel;
}
