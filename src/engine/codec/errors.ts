/**
 * Codec errors are values, in the style of the HXE and engine errors: a POSIX-like code, a stable
 * machine-readable reason, the field that was wrong, the byte offset where it was found and one
 * human-readable line. `process()` and `finish()` return one (or null); nothing in the codec throws on
 * untrusted input.
 *
 * Offsets: `offset` is a byte offset in what the caller fed (`in: 'input'`: the compressed stream, or
 * the patch file for the applier), or in the decoded patch body (`in: 'body'`: the record stream that the
 * applier reads after inflating), so a record field is named where it starts.
 */

export type CodecErrorCode = 'EBADMSG' | 'ENOSPC' | 'EINVAL';

export type CodecErrorReason =
  // deflate stream
  | 'bad_block_type' // BTYPE 3
  | 'stored_length_mismatch' // NLEN is not the complement of LEN
  | 'bad_code_lengths' // over-subscribed / incomplete / impossible Huffman code, repeat with no previous length
  | 'bad_symbol' // literal/length 286-287, distance 30-31, a code that matches no symbol
  | 'window_exceeded' // distance larger than the configured window
  | 'distance_before_start' // distance reaches before the first byte of output
  | 'output_overflow' // the stream decodes to more than the announced size
  | 'trailing_data' // bytes after the final block
  | 'truncated' // finish() before the final block ended or before the announced size was reached
  // patch
  | 'bad_magic'
  | 'bad_version'
  | 'bad_header' // a reserved field, a window out of range, the header CRC
  | 'base_mismatch' // the patch is for another base (SHA-256)
  | 'base_size_mismatch' // the patch is for a base of another size
  | 'target_too_large' // target larger than the slot the caller offers
  | 'copy_beyond_base' // an add run reads past the end of the base
  | 'seek_beyond_base' // a seek moves the base cursor outside the base
  | 'length_overflow' // a varint longer than 32 bits, or a run longer than the target left
  // both
  | 'bad_state' // a saved state that does not restore
  | 'bad_call'; // process() after finish() or after an error; a bad limit given by the caller

export interface CodecError {
  code: CodecErrorCode;
  reason: CodecErrorReason;
  /** What was wrong: `deflate.distance`, `header.baseSha256`, `record[12].add`, … */
  field: string;
  /** Byte offset where it was found (see `in`). */
  offset: number;
  /** Which byte sequence `offset` counts in. */
  in: 'input' | 'body' | 'state';
  message: string;
  detail?: Record<string, number | string>;
}

const ENOSPC_REASONS: ReadonlySet<CodecErrorReason> = new Set(['output_overflow', 'target_too_large']);

export function codecError(
  reason: CodecErrorReason,
  field: string,
  offset: number,
  message: string,
  where: CodecError['in'] = 'input',
  detail?: Record<string, number | string>,
): CodecError {
  const code: CodecErrorCode = reason === 'bad_call' ? 'EINVAL' : ENOSPC_REASONS.has(reason) ? 'ENOSPC' : 'EBADMSG';
  const e: CodecError = { code, reason, field, offset, in: where, message: `${message} (${field} at ${where} offset ${offset})` };
  if (detail !== undefined) e.detail = detail;
  return e;
}

/** Internal: thrown inside a state machine step and caught at its public boundary. Never escapes. */
export class CodecStop {
  constructor(readonly error: CodecError) {}
}

export const isCodecError = (v: unknown): v is CodecError =>
  typeof v === 'object' && v !== null && typeof (v as CodecError).reason === 'string' && typeof (v as CodecError).field === 'string';
