/** Master side of compressed and delta transfers (issue 25). Device side: src/engine/codec/. */
export { compressImage, nodeWindowBits, type CompressOptions, type CompressedImage } from './compress.js';
export { makePatch, diffRecords, encodeRecords, sha256, type Patch, type PatchRecord, type MakePatchOptions, type DiffOptions } from './bsdiff.js';
export { planTransfer, cheapestTransfer, patchWindowBitsFor, type PlanOptions, type TransferPlan, type TransferKind, type TransferSizes } from './plan.js';
export { suffixArray } from './suffix-array.js';
export { deflateRawOptimal, limitedLengths, type DeflateOptions } from './deflate.js';
export { ContentStore, MemoryContentStore, defaultCacheDir, stateImageDir, sha256Hex as imageSha256, type ImageSource } from './image-store.js';
export { chooseTransfer, type TransferChoice, type TransferMode, type DeviceCodecState, type EncodedPayload, type ChooseOptions } from './device-plan.js';
