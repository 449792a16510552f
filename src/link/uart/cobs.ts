/**
 * Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00 can delimit frames
 * on the wire. After line noise a receiver loses at most the frame it is in and resynchronises at
 * the next 0x00. Overhead is one byte per 254 payload bytes (plus the first code byte).
 *
 * Both directions work on runs between zero bytes with Buffer.indexOf and block copies instead of
 * a per-byte loop: on a fast line (a pty moves tens of MB/s) the per-byte loop was the listener's
 * largest cost.
 */

/** Worst-case encoded size of `n` input bytes (no delimiter). */
export function cobsMaxEncodedLength(n: number): number {
  return n + Math.floor(n / 254) + 1;
}

const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.length));

/**
 * Encodes `input` and appends the 0x00 delimiter, so the result is exactly what goes on the wire.
 */
export function cobsEncodeWithDelimiter(input: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(cobsMaxEncodedLength(input.length) + 1);
  return out.subarray(0, cobsEncodeInto(input, out, 0));
}

/**
 * Encodes `input` followed by the 0x00 delimiter into `out` at `at` (which must have room for
 * `cobsMaxEncodedLength(input.length) + 1` bytes) and returns the position after the delimiter.
 * Lets a sender encode several frames back to back into one write buffer.
 */
export function cobsEncodeInto(input: Uint8Array, out: Buffer, at: number): number {
  const src = asBuffer(input);
  let write = at;
  let read = 0;
  // Each block: a code byte (1 + run length) and up to 254 non-zero bytes. A block of 254 bytes
  // (code 0xff) has no implied zero after it; every other block stands for "run, then a zero",
  // except the last block of the frame.
  for (;;) {
    let zero = src.indexOf(0, read);
    if (zero === -1) zero = src.length;
    // The run [read, zero) is split into blocks of at most 254 bytes.
    while (zero - read >= 254) {
      out[write++] = 0xff;
      src.copy(out, write, read, read + 254);
      write += 254;
      read += 254;
    }
    const run = zero - read;
    // The final block ends the input (after a full 0xff block that ends it exactly, a final 0x01
    // still follows: the encoder always ends with a short block, which the decoder accepts).
    out[write++] = run + 1;
    src.copy(out, write, read, zero);
    write += run;
    if (zero === src.length) break;
    read = zero + 1;
  }
  out[write++] = 0;
  return write;
}

/**
 * Decodes one COBS block (without its delimiter). Returns null when the block is not valid COBS
 * (a zero byte inside, or a code that runs past the end) — what line noise usually produces.
 *
 * With `inPlace`, the block's own memory receives the decoded bytes (the output is never longer
 * than the input and is written behind the read position), saving an allocation per frame; the
 * caller must own the block.
 */
export function cobsDecode(input: Uint8Array, inPlace = false): Buffer | null {
  const src = asBuffer(input);
  if (src.indexOf(0) !== -1) return null;
  const out = inPlace ? src : Buffer.allocUnsafe(src.length);
  let read = 0;
  let write = 0;
  while (read < src.length) {
    const code = src[read]!;
    const end = read + code;
    if (end > src.length) return null;
    src.copy(out, write, read + 1, end); // memmove semantics: safe when out === src
    write += code - 1;
    read = end;
    // A block shorter than 0xff stands for its bytes and a zero, except at the very end of the frame.
    if (code !== 0xff && read < src.length) out[write++] = 0;
  }
  return out.subarray(0, write);
}
