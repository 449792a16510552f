/**
 * The HXE image library: parse/verify (one-shot and streaming), build, strip. Pure: no Node I/O.
 * Byte layout: docs/hxe_format.md.
 */
export type * from './types.js';
export { ok, err, type Result } from './result.js';
export { parseImage } from './parse.js';
export { InPlaceVerifier, StreamingVerifier, type StreamingOptions } from './stream.js';
export { buildImage, specFromImage, type ImageSpec, type ValueSpec, type CommandSpec, type MailboxSpec, type BuildError } from './build.js';
export { strip } from './strip.js';
export { hxeCrc32 } from './crc.js';
export { decodeF16, encodeF16, f16FromRaw } from './f16.js';
export { formatMode, parseModeText } from './mailbox-mode.js';
export {
  HXE_MAGIC, HEADER_V1_SIZE, HEADER_V2_SIZE, DEFAULT_LIMITS, SECTION_VALUE, SECTION_COMMAND, SECTION_MAILBOX,
  VALUE_FLAGS, COMMAND_FLAGS, AUTH_LEVELS, MAILBOX_MODES, MAILBOX_DEFAULT_CAPACITY, FLAG_ALLOW_MULTIPLE, FLAG_MANIFEST_PRESENT,
} from './constants.js';
