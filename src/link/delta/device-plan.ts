/**
 * What a master sends one device (or one group of devices that run the same image), link-agnostic:
 * CURRENT (it runs the image already: nothing moves), DELTA (a patch from the base it runs, when the
 * content-addressed store holds that base and the patch is strictly smaller than the compressed image),
 * COMPRESSED (raw deflate) or RAW (the device decodes nothing, or the caller turned both off).
 */
import { compressImage, type CompressedImage } from './compress.js';
import { makePatch } from './bsdiff.js';
import { cheapestTransfer, patchWindowBitsFor } from './plan.js';
import { sha256Hex, type ImageSource } from './image-store.js';

export type TransferMode = 'current' | 'delta' | 'compressed' | 'raw';

/** What the master learnt about the device before data moves (UART: INFO version 3). */
export interface DeviceCodecState {
  /** SHA-256 (hex) of the image it runs, or null. */
  sha256: string | null;
  /** What it decodes, or null (an older device: raw only). */
  codec: { deflate: boolean; patch: boolean; maxWindowBits: number; ramBytes: number } | null;
}

export interface EncodedPayload {
  kind: 'deflate' | 'patch';
  windowBits: number;
  bytes: Uint8Array;
  baseSha256?: Uint8Array;
}

export interface TransferChoice {
  mode: TransferMode;
  /** null: send the raw image (or nothing, for current). */
  encoded: EncodedPayload | null;
  /** The base a delta applies to (hex), else null. */
  base: string | null;
  /** Bytes each candidate would put on the wire (null: not possible or turned off). */
  sizes: { raw: number; compressed: number | null; patch: number | null };
}

export interface ChooseOptions {
  /** Allow the compressed full image (default true). */
  compress?: boolean;
  /** Allow a delta patch (default true). */
  delta?: boolean;
  /** Send even when the device runs the image already. */
  force?: boolean;
  /** Leave out this base (it was refused: the device's active slot does not hash to it). */
  excludeBase?: string;
  /** Compressed images by window bits, shared by calls for one image (a CAN plan asks once per group). */
  compressedCache?: Map<number, CompressedImage>;
}

/**
 * Patches and compressed images are pure functions of the images' bytes, so they are kept by SHA-256
 * (a bounded LRU, this process): a gateway that updates several buses or retries a job, or a CAN plan
 * with several groups on one base, computes each once.
 */
const MEMO_BYTES = 32 << 20;
const memo = new Map<string, { bytes: Uint8Array; windowBits: number }>();
let memoBytes = 0;
function memoized<T extends { bytes: Uint8Array; windowBits: number }>(key: string, make: () => T): { bytes: Uint8Array; windowBits: number } {
  const held = memo.get(key);
  if (held) {
    memo.delete(key);
    memo.set(key, held);
    return held;
  }
  const made = make();
  const entry = { bytes: made.bytes, windowBits: made.windowBits };
  memo.set(key, entry);
  memoBytes += entry.bytes.length;
  while (memoBytes > MEMO_BYTES && memo.size > 1) {
    const [k, v] = memo.entries().next().value!;
    memo.delete(k);
    memoBytes -= v.bytes.length;
  }
  return entry;
}

export async function chooseTransfer(image: Uint8Array, device: DeviceCodecState, store: ImageSource | null, o: ChooseOptions = {}): Promise<TransferChoice> {
  const sha = sha256Hex(image);
  const sizes: TransferChoice['sizes'] = { raw: image.length, compressed: null, patch: null };
  if (device.sha256 === sha && !o.force) return { mode: 'current', encoded: null, base: null, sizes };
  const codec = device.codec;
  let compressed: CompressedImage | null = null;
  if (codec?.deflate && o.compress !== false) {
    const wb = Math.min(12, codec.maxWindowBits);
    compressed = o.compressedCache?.get(wb) ?? { ...memoized(`z:${sha}:${wb}`, () => compressImage(image, { windowBits: wb })), rawSize: image.length };
    o.compressedCache?.set(wb, compressed);
  }
  if (compressed) sizes.compressed = compressed.bytes.length;
  let patch: { bytes: Uint8Array; windowBits: number } | null = null;
  const baseSha = device.sha256;
  if (codec?.patch && o.delta !== false && baseSha && baseSha !== sha && baseSha !== o.excludeBase && store) {
    const base = await store.get(baseSha);
    const wb = patchWindowBitsFor(codec.ramBytes);
    if (base && wb !== null) {
      // keyed by the hash of the bytes the store gave, not the SHA-256 asked for: a patch is made from those
      patch = memoized(`p:${sha256Hex(base)}:${sha}:${wb}`, () => makePatch(base, image, { windowBits: wb }));
      sizes.patch = patch.bytes.length;
    }
  }
  const pick = cheapestTransfer(sizes);
  if (pick.kind === 'patch' && patch) {
    return { mode: 'delta', encoded: { kind: 'patch', windowBits: patch.windowBits, bytes: patch.bytes, baseSha256: Buffer.from(baseSha!, 'hex') }, base: baseSha, sizes };
  }
  if (pick.kind === 'compressed' && compressed) {
    return { mode: 'compressed', encoded: { kind: 'deflate', windowBits: compressed.windowBits, bytes: compressed.bytes }, base: null, sizes };
  }
  return { mode: 'raw', encoded: null, base: null, sizes };
}
