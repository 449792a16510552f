/**
 * The RAM a CAN node needs to receive an encoded stream (issue 25), counted as a C bootloader lays it
 * out (docs/delta.md "CAN: receiving an encoded stream"). Chunks are numbered in the encoded stream and
 * may arrive out of order (loss, repair rounds at the end of the pass), so the node stages the stream
 * by chunk number in flash (a staging area of `streamBytes`, with one bit per chunk that programming
 * clears, 1 → 0, when the chunk is there) and feeds the decoder each 256-chunk block, in order, once the
 * block's SYNC CRC-32 checks. RAM then holds only the decoder and these fixed receive fields; no buffer
 * is sized from anything the master announces.
 */
import { applierRamBytes } from '../../engine/codec/apply.js';
import { inflateRamBytes } from '../../engine/codec/inflate.js';
import { BLOCK_CHUNKS } from './messages.js';

/** Receive state besides the decoder, in bytes. */
export function canRxRamParts(fd = false): Record<string, number> {
  return {
    /** one data frame being handled */
    frame: fd ? 64 : 8,
    /** which chunks of the current block arrived (256 bits) */
    blockBitmap: BLOCK_CHUNKS / 8,
    /** the current block's CRC-32 from its SYNC */
    blockCrc: 4,
    /** session, chunk size, window, flags, chunk count, stream and image sizes, reference, highest seen, fed chunks, u32 each but the first four */
    counters: 4 + 4 * 7,
    /** the announced SHA-256 of the image */
    imageSha256: 32,
    /** SHA-256 context over the decoded image (state, block buffer, length) */
    sha256Context: 32 + 64 + 8,
    /** running CRC-32 of the decoded image and of the stream */
    crcs: 8,
  };
}

/** Total RAM besides flash: the decoder (compressed: window read back from flash; patch: applier) plus the receive state. */
export function canStreamRamBytes(encoding: { kind: 'deflate'; windowBits: number } | { kind: 'patch'; windowBits: number }, fd = false): { total: number; decoder: number; receive: number } {
  const decoder = encoding.kind === 'deflate' ? inflateRamBytes(encoding.windowBits, 'output').total : applierRamBytes(encoding.windowBits).total;
  const receive = Object.values(canRxRamParts(fd)).reduce((a, b) => a + b, 0);
  return { total: decoder + receive, decoder, receive };
}
