/**
 * What a master sends to a group of targets that run one base: the cheapest of a delta patch, the
 * compressed full image and the raw image, by bytes on the wire. A patch is never chosen when it is not
 * strictly smaller than the compressed full image (the full image needs no base and is as safe to resume).
 */
import { compressImage, type CompressOptions } from './compress.js';
import { makePatch, type MakePatchOptions } from './bsdiff.js';
import { applierRamBytes } from '../../engine/codec/apply.js';
import { MAX_WINDOW_BITS } from '../../engine/codec/inflate.js';

export type TransferKind = 'skip' | 'patch' | 'compressed' | 'raw';

export interface TransferSizes {
  raw: number;
  compressed?: number | null;
  patch?: number | null;
}

/** The size comparison alone: the kind to send and its size. */
export function cheapestTransfer(sizes: TransferSizes): { kind: Exclude<TransferKind, 'skip'>; bytes: number } {
  let kind: 'patch' | 'compressed' | 'raw' = 'raw';
  let bytes = sizes.raw;
  if (sizes.compressed != null && sizes.compressed < bytes) {
    kind = 'compressed';
    bytes = sizes.compressed;
  }
  if (sizes.patch != null && sizes.patch < bytes) {
    kind = 'patch';
    bytes = sizes.patch;
  }
  return { kind, bytes };
}

export interface TransferPlan {
  kind: TransferKind;
  /** What goes on the wire (empty for skip). */
  payload: Uint8Array;
  sizes: { raw: number; compressed: number; patch: number | null };
}

/** The largest patch window whose applier fits `ramBytes` of device RAM (null: none fits). */
export function patchWindowBitsFor(ramBytes: number): number | null {
  for (let wb = MAX_WINDOW_BITS; wb >= 9; wb--) if (applierRamBytes(wb).total <= ramBytes) return wb;
  return null;
}

export interface PlanOptions {
  /** The target already runs this image (same SHA-256): nothing moves. */
  sameAsBase?: boolean;
  /**
   * RAM the device offers its decoder and applier (from its announce), default 4096: picks the patch
   * window (patchWindowBitsFor) unless `patch.windowBits` is given. The compressed image always uses
   * 4 KiB: its decoder reads the window back from flash.
   */
  deviceRamBytes?: number;
  compress?: CompressOptions;
  patch?: MakePatchOptions;
}

/**
 * Plans one target group: `base` is the image they run (from the master's content-addressed store),
 * null when unknown.
 */
export function planTransfer(target: Uint8Array, base: Uint8Array | null, options: PlanOptions = {}): TransferPlan {
  const compressed = compressImage(target, options.compress);
  if (options.sameAsBase) return { kind: 'skip', payload: new Uint8Array(0), sizes: { raw: target.length, compressed: compressed.bytes.length, patch: null } };
  const wb = options.patch?.windowBits ?? patchWindowBitsFor(options.deviceRamBytes ?? 4096);
  const patch = base && wb !== null ? makePatch(base, target, { ...options.patch, windowBits: wb }) : null;
  const sizes = { raw: target.length, compressed: compressed.bytes.length, patch: patch ? patch.bytes.length : null };
  const pick = cheapestTransfer(sizes);
  const payload = pick.kind === 'patch' ? patch!.bytes : pick.kind === 'compressed' ? compressed.bytes : target;
  return { kind: pick.kind, payload, sizes };
}
