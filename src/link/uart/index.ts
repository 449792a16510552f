/**
 * The UART link (docs/uart_protocol.md): COBS framing over a serial port (port-transport.ts),
 * and the session protocol above it in two roles, master (master.ts) and listener (listener.ts).
 * Importing this module registers the framing layer as transport kind `uart`.
 */
import { registerTransport } from '../transport.js';
import { UartPortTransport, type UartPortOptions } from './port-transport.js';

export { UartPortTransport, UartLinkError, type UartPortOptions } from './port-transport.js';
export { sendImage, type MasterOptions, type MasterProgress, type FlashOutcome, type FlashVerdict } from './master.js';
export { UartListener, type ListenerOptions, type ListenerEvent, type ListenerIntake } from './listener.js';
export { MemoryPartialStore, DirectoryPartialStore, type PartialStore, type PartialKey, type PartialWriter } from './partial-store.js';
export { FrameType, encodeFrame, decodeFrame, frameBytes, parseFrameBytes, type Frame, type FrameDrop } from './frame.js';
export { cobsEncodeWithDelimiter, cobsDecode } from './cobs.js';
export { CobsFrameReader, type FrameReaderSink } from './frame-reader.js';
export { runUartDevice, deviceCommand, type UartDeviceOptions } from './device-command.js';
export { uartFlashCommand, type UartFlashOptions } from './flash-command.js';
export type { UartError, UartErrorCode } from './errors.js';
export * from './settings.js';

registerTransport('uart', (options) => {
  const path = options['path'];
  if (typeof path !== 'string' || path === '') throw new TypeError('uart transport: options.path (the serial port) is required');
  return new UartPortTransport(options as unknown as UartPortOptions) as never;
});
