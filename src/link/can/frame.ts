/**
 * A CAN frame as every backend carries it, plus the frame-format arithmetic the protocol and the
 * timing model need: CAN FD's discrete payload lengths and the number of bits a frame occupies on
 * the wire (with bit stuffing), so a virtual bus can give frames the time a real one would.
 */

export interface CanFrame {
  /** 11-bit identifier (29-bit when `ext`). */
  id: number;
  /** 0..8 bytes (classic) or 0..64 bytes (FD). */
  data: Uint8Array;
  /** Send as CAN FD (with bit-rate switch). Received frames from SocketCAN carry no FD flag. */
  fd?: boolean;
  ext?: boolean;
}

export const CLASSIC_MAX = 8;
export const FD_MAX = 64;

/** The payload lengths a CAN FD frame can have; a shorter payload is padded up to the next one. */
const FD_LENGTHS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64] as const;

/** The wire length of a payload of `n` bytes: FD pads to the next allowed length. */
export function fdPaddedLength(n: number): number {
  for (const len of FD_LENGTHS) if (len >= n) return len;
  throw new RangeError(`CAN FD payload of ${n} bytes exceeds ${FD_MAX}`);
}

/** Checks a frame before it goes on a bus; returns the problem or null. */
export function frameProblem(frame: CanFrame, fdAllowed: boolean): string | null {
  const maxId = frame.ext ? 0x1fff_ffff : 0x7ff;
  if (!Number.isInteger(frame.id) || frame.id < 0 || frame.id > maxId) return `id 0x${frame.id.toString(16)} out of range`;
  const max = frame.fd ? FD_MAX : CLASSIC_MAX;
  if (frame.data.length > max) return `payload of ${frame.data.length} bytes exceeds ${max}`;
  if (frame.fd && !fdAllowed) return 'CAN FD frame on a bus opened without FD';
  return null;
}

// ---------------------------------------------------------------------------------------------
// Bits on the wire

/** Bits a frame occupies, split by the rate they are sent at (FD data phase may be faster). */
export interface FrameBits {
  /** Bits sent at the nominal (arbitration) bit rate, including stuff bits and inter-frame space. */
  nominal: number;
  /** Bits sent at the data bit rate (FD with BRS); 0 for classic frames. */
  data: number;
}

/** CRC-15/CAN over a bit sequence (the classic frame's CRC field, needed to count its stuff bits). */
function crc15(bits: readonly number[]): number {
  let crc = 0;
  for (const bit of bits) {
    const next = bit ^ ((crc >> 14) & 1);
    crc = (crc << 1) & 0x7fff;
    if (next) crc ^= 0x4599;
  }
  return crc;
}

function pushBits(out: number[], value: number, width: number): void {
  for (let i = width - 1; i >= 0; i--) out.push((value >>> i) & 1);
}

/** Stuff bits the CAN rule inserts: after five equal bits, one of the opposite level. */
function stuffCount(bits: readonly number[]): number {
  let count = 0;
  let run = 0;
  let last = -1;
  for (const bit of bits) {
    if (bit === last) run++;
    else {
      last = bit;
      run = 1;
    }
    if (run === 5) {
      count++;
      last = 1 - bit; // the stuff bit starts a new run
      run = 1;
    }
  }
  return count;
}

/** Classic frames: DLC 0..8, all bits at the nominal rate. */
const CLASSIC_TRAILER = 1 + 1 + 1 + 7 + 3; // CRC delimiter, ACK slot, ACK delimiter, EOF, IFS
/** FD: CRC delimiter, ACK slot + delimiter, EOF, IFS (nominal rate). */
const FD_TRAILER = 1 + 2 + 7 + 3;

function dlcOf(length: number): number {
  if (length <= 8) return length;
  return FD_LENGTHS.indexOf(fdPaddedLength(length) as (typeof FD_LENGTHS)[number]);
}

/**
 * Bits of a base-format (11-bit) data frame on the wire, computed from its actual bits so stuffing
 * is exact for classic frames (including the CRC-15 field) and for the FD dynamic-stuffing region;
 * the FD CRC field uses fixed stuff bits (one per four bits), so its length does not depend on data.
 */
export function frameBits(frame: CanFrame): FrameBits {
  const len = frame.fd ? fdPaddedLength(frame.data.length) : frame.data.length;
  const bits: number[] = [0]; // SOF (dominant)
  pushBits(bits, frame.id & 0x7ff, 11);
  if (!frame.fd) {
    bits.push(0, 0, 0); // RTR, IDE, r0
    pushBits(bits, len, 4);
    for (let i = 0; i < len; i++) pushBits(bits, frame.data[i] ?? 0, 8);
    pushBits(bits, crc15(bits), 15);
    return { nominal: bits.length + stuffCount(bits) + CLASSIC_TRAILER, data: 0 };
  }
  // FD: SOF ID RRS IDE FDF res BRS | ESI DLC DATA — arbitration part ends after BRS.
  bits.push(0, 0, 1, 0, 1); // RRS, IDE, FDF, res, BRS
  const arbitrationBits = bits.length;
  bits.push(0); // ESI
  pushBits(bits, dlcOf(len), 4);
  for (let i = 0; i < len; i++) pushBits(bits, frame.data[i] ?? 0, 8);
  const stuffed = stuffCount(bits);
  // Share of stuff bits falling in the arbitration part, counted on that part alone.
  const arbStuff = stuffCount(bits.slice(0, arbitrationBits));
  const crcBits = 4 + (len <= 16 ? 17 : 21); // stuff count (gray + parity) + CRC-17/21
  const fixedStuff = Math.ceil(crcBits / 4);
  return {
    nominal: arbitrationBits + arbStuff + FD_TRAILER,
    data: bits.length - arbitrationBits + (stuffed - arbStuff) + crcBits + fixedStuff,
  };
}

/** Microseconds a frame holds the bus at the given rates. */
export function frameMicros(frame: CanFrame, bitrate: number, dataBitrate: number): number {
  const b = frameBits(frame);
  return (b.nominal * 1e6) / bitrate + (b.data * 1e6) / (frame.fd ? dataBitrate : bitrate);
}
