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
  out.set(input, at + cobsReserve(input.length));
  return cobsEncodeStaged(out, at, input.length);
}

/** Code bytes an encoding of `n` bytes may need beyond `n`: where cobsEncodeStaged wants its input. */
export function cobsReserve(n: number): number {
  return cobsMaxEncodedLength(n) - n;
}

/**
 * Encodes, in place, the `n` bytes staged at `out[at + cobsReserve(n)]`: the encoding and its 0x00
 * delimiter land at `out[at]`, and the position after the delimiter is returned. A sender builds a
 * frame right where it will be sent and stuffs it there: one copy of the payload, not two.
 *
 * Each block moves left with copyWithin (a memmove inside one buffer, far cheaper per call than
 * Buffer.copy between two). It never overwrites bytes not yet read: after k blocks the output has
 * grown by k code bytes, and every block but the last either consumed a zero or is a full 254-byte
 * block, which the reserve paid for.
 */
export function cobsEncodeStaged(out: Buffer, at: number, n: number): number {
  let read = at + cobsReserve(n);
  const end = read + n;
  // Zeros are searched only up to `end`: what follows in `out` is not part of this input.
  const input = out.subarray(0, end);
  let write = at;
  // Each block: a code byte (1 + run length) and up to 254 non-zero bytes. A block of 254 bytes
  // (code 0xff) has no implied zero after it; every other block stands for "run, then a zero",
  // except the last block of the frame.
  for (;;) {
    let zero = input.indexOf(0, read);
    if (zero === -1) zero = end;
    // The run [read, zero) is split into blocks of at most 254 bytes.
    while (zero - read >= 254) {
      out[write++] = 0xff;
      out.copyWithin(write, read, read + 254);
      write += 254;
      read += 254;
    }
    const run = zero - read;
    // The final block ends the input (after a full 0xff block that ends it exactly, a final 0x01
    // still follows: the encoder always ends with a short block, which the decoder accepts).
    out[write++] = run + 1;
    out.copyWithin(write, read, zero);
    write += run;
    if (zero === end) break;
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
    // In place this is a memmove inside one buffer (copyWithin, cheap per call); otherwise a copy.
    if (out === src) out.copyWithin(write, read + 1, end);
    else src.copy(out, write, read + 1, end);
    write += code - 1;
    read = end;
    // A block shorter than 0xff stands for its bytes and a zero, except at the very end of the frame.
    if (code !== 0xff && read < src.length) out[write++] = 0;
  }
  return out.subarray(0, write);
}
