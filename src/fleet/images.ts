/**
 * Images over MQTT (docs/fleet.md "Images"): an image is published retained at
 * `<prefix>/fleet/images/<sha256>`; one larger than the part limit is published as a manifest there and
 * numbered parts at `…/<sha256>/<n>`. `assembleImage` is the reader's side: it verifies the SHA-256.
 */
import { createHash } from 'node:crypto';
import { FleetError, imagePartTopic, imageTopic } from './rollout.js';

/** The default largest payload `fleet` publishes (NATS refuses over 1 MB by default; Mosquitto's default is 256 MB). */
export const DEFAULT_PART_BYTES = 256 * 1024;
export const MAX_PART_BYTES = 1024 * 1024;

export interface ImageManifest {
  hsx_fleet_image: 1;
  sha256: string;
  size: number;
  parts: number;
  part_bytes: number;
}

export const sha256Hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The retained messages that carry `bytes`: topic → payload, the manifest (if any) last. */
export function imageMessages(prefix: string, bytes: Uint8Array, partBytes: number): { sha256: string; parts: number; messages: Array<[string, Buffer]> } {
  if (!Number.isSafeInteger(partBytes) || partBytes < 64 || partBytes > MAX_PART_BYTES) {
    throw new FleetError('EINVAL', 'bad_part_bytes', `--max-message-bytes must be 64..${MAX_PART_BYTES}`, 'max-message-bytes');
  }
  const sha = sha256Hex(bytes);
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length <= partBytes) return { sha256: sha, parts: 0, messages: [[imageTopic(prefix, sha), buf]] };
  const n = Math.ceil(bytes.length / partBytes);
  const messages: Array<[string, Buffer]> = [];
  for (let i = 0; i < n; i++) messages.push([imagePartTopic(prefix, sha, i), buf.subarray(i * partBytes, (i + 1) * partBytes)]);
  const manifest: ImageManifest = { hsx_fleet_image: 1, sha256: sha, size: bytes.length, parts: n, part_bytes: partBytes };
  // Parts first: a reader that sees the manifest finds every part already retained.
  messages.push([imageTopic(prefix, sha), Buffer.from(JSON.stringify(manifest))]);
  return { sha256: sha, parts: n, messages };
}

/**
 * The image `sha` from retained messages (topic → payload): its bytes when they hash to `sha`, else a
 * manifest and its parts. A mismatch is refused (`EBADMSG:image_hash_mismatch`); nothing there is
 * `ENOENT:no_such_image`.
 */
export function assembleImage(prefix: string, sha: string, got: Map<string, Buffer>, maxBytes: number): Uint8Array {
  const head = got.get(imageTopic(prefix, sha));
  if (!head) throw new FleetError('ENOENT', 'no_such_image', `no image ${sha} on the broker (${imageTopic(prefix, sha)})`, 'image_sha256');
  if (sha256Hex(head) === sha) return new Uint8Array(head);
  let m: Partial<ImageManifest> | null = null;
  try {
    m = head[0] === 0x7b ? (JSON.parse(head.toString('utf8')) as Partial<ImageManifest>) : null;
  } catch {
    m = null;
  }
  if (!m || m.hsx_fleet_image !== 1) throw new FleetError('EBADMSG', 'image_hash_mismatch', `the image at ${imageTopic(prefix, sha)} does not hash to ${sha}`, 'image_sha256');
  if (m.sha256 !== sha || !Number.isSafeInteger(m.parts) || !Number.isSafeInteger(m.size) || m.parts! < 1 || m.parts! > 4096) {
    throw new FleetError('EBADMSG', 'bad_image_manifest', `the manifest at ${imageTopic(prefix, sha)} is not valid`, 'image_sha256');
  }
  if (m.size! > maxBytes) throw new FleetError('ENOSPC', 'image_too_large', `image ${sha} is ${m.size} bytes, over the gateway's max_image_bytes ${maxBytes}`, 'image_sha256');
  const parts: Buffer[] = [];
  for (let i = 0; i < m.parts!; i++) {
    const p = got.get(imagePartTopic(prefix, sha, i));
    if (!p) throw new FleetError('ENOENT', 'image_part_missing', `part ${i} of image ${sha} is not on the broker`, 'image_sha256');
    parts.push(p);
  }
  const bytes = Buffer.concat(parts);
  if (bytes.length !== m.size || sha256Hex(bytes) !== sha) throw new FleetError('EBADMSG', 'image_hash_mismatch', `the parts of image ${sha} do not hash to it`, 'image_sha256');
  return new Uint8Array(bytes);
}
