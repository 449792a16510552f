/**
 * Device-side decoding of compressed and delta transfers (issue 25): pure streaming state machines,
 * no Node modules. Formats, RAM figures and errors: docs/delta.md.
 */
export { Inflater, inflateRamBytes, MAX_WINDOW_BITS, MIN_WINDOW_BITS, type InflateLimits, type InflateIO } from './inflate.js';
export { PatchApplier, applierRamBytes, type PatchApplyOptions, type PatchIO } from './apply.js';
export {
  PATCH_MAGIC, PATCH_VERSION, PATCH_HEADER_SIZE, BODY_DEFLATE, FLAG_CARRY, H as PATCH_HEADER_FIELDS, decodePatchHeader, encodePatchHeader,
  putVarint, zigzag, unzigzag, crc32, type PatchHeader,
} from './patch-format.js';
export { codecError, isCodecError, type CodecError, type CodecErrorCode, type CodecErrorReason } from './errors.js';
export { openTransferDecoder, restoreTransferDecoder, type TransferDecoder, type TransferEncoding, type TransferTarget, type SlotIO } from './transfer.js';
