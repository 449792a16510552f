/**
 * Provisioning policy gates (docs/security.md): "may this image be loaded at all?" — checked
 * after the format verification and before any registration or allocation, through the engine's
 * pre-registration gate hook (src/engine/gates.ts), in monolithic loads and at a stream's `end`.
 *
 * - signature: `requireSignature` refuses unsigned images (`EPERM unsigned`) and images signed by
 *   a key that is not trusted (`EPERM unknown_key`). Whatever `requireSignature` says, a trailer
 *   that is present must be honest: a digest that does not match (`EPERM digest_mismatch`), a
 *   signature that does not verify (`EPERM bad_signature`) or a revoked key (`EPERM revoked_key`)
 *   is refused, because each of those is evidence of tampering or of a withdrawn key.
 * - anti-downgrade: the image's security counter must be at least the highest counter the device
 *   ever committed (`ImageStore.securityCounter()`), else `EPERM downgrade`. Only a verified
 *   signature vouches for a counter; any other image counts as counter 0.
 *
 * Refusals are reported through the engine's `provisioning.error` event; `withAuditLog` turns
 * every such event (these gates', the capability and budget gates', every other refusal) into
 * one audit line.
 */
import { describeVerdict, NO_KEYS, verifySignature, type SignatureVerdict, type TrustedKeys } from '../hxe/signature.js';
import { formatVersion } from '../hxe/trailer.js';
import type { HxeImage } from '../hxe/types.js';
import { engineError, type EngineError } from './errors.js';
import type { GateContext, PreRegistrationGate } from './gates.js';
import type { EngineEvent, EventSink, ImageStore } from './ports.js';

export interface SignaturePolicy {
  /** Refuse unsigned images and images signed by keys outside `trustedKeys`. */
  requireSignature: boolean;
  trustedKeys: TrustedKeys;
  /** Refuse images whose security counter is below the device's recorded counter (default true). */
  antiDowngrade?: boolean;
}

export const OPEN_POLICY: SignaturePolicy = { requireSignature: false, trustedKeys: NO_KEYS, antiDowngrade: true };

/** What the policy concluded about an image's provenance, for the manifest and for `inspect`. */
export interface ImageProvenance {
  verdict: SignatureVerdict;
  /** The counter the device may record for this image: the trailer's when the signature verified, else 0. */
  securityCounter: number;
  /** The trailer's version text, or "0.0.0+0" for an unsigned image. */
  version: string;
}

export function provenanceOf(image: HxeImage, bytes: Uint8Array, trusted: TrustedKeys): ImageProvenance {
  const verdict = verifySignature(bytes, image.trailer, trusted);
  return {
    verdict,
    securityCounter: verdict.status === 'verified' ? verdict.securityCounter : 0,
    version: image.trailer ? formatVersion(image.trailer.version) : '0.0.0+0',
  };
}

/**
 * Counters that a verified signature vouched for, by the parsed image that passed the gate. The
 * engine keeps that same image object for the task, so whoever fills `ImageMeta.securityCounter`
 * for a commit can ask `vouchedSecurityCounter(image)` instead of trusting the trailer blindly.
 */
const vouched = new WeakMap<HxeImage, number>();

/** The security counter the policy gate verified for this image; 0 when none was verified. */
export function vouchedSecurityCounter(image: HxeImage): number {
  return vouched.get(image) ?? 0;
}

const refusal = (reason: string, message: string, detail: Record<string, unknown>): EngineError =>
  engineError('EPERM', 'verify', reason, message, detail);

/** The signature verdict as a refusal, or null when the policy lets the image through. */
function signatureRefusal(v: SignatureVerdict, requireSignature: boolean): EngineError | null {
  switch (v.status) {
    case 'verified':
      return null;
    case 'unsigned':
      return requireSignature ? refusal('unsigned', 'image is not signed and the policy requires a signature', { requireSignature }) : null;
    case 'unknown_key':
      return requireSignature
        ? refusal('unknown_key', `image is signed by key ${v.keyId}, which is not a trusted key`, { keyId: v.keyId, version: v.version })
        : null;
    case 'revoked_key':
      return refusal('revoked_key', `image is signed by revoked key ${v.keyId}`, { keyId: v.keyId, version: v.version });
    case 'digest_mismatch':
      return refusal('digest_mismatch', `image was altered after signing: ${describeVerdict(v)}`, { keyId: v.keyId, expected: v.expected, actual: v.actual });
    case 'bad_signature':
      return refusal('bad_signature', `signature does not verify with trusted key ${v.keyId}`, { keyId: v.keyId });
  }
}

function downgradeRefusal(p: ImageProvenance, store: ImageStore | undefined): EngineError | null {
  if (!store) return null;
  const deviceCounter = store.securityCounter();
  if (p.securityCounter >= deviceCounter) return null;
  const vouched = p.verdict.status === 'verified' ? '' : ' (an image without a verified signature counts as 0)';
  return refusal('downgrade',
    `image security counter ${p.securityCounter} is below the device's recorded counter ${deviceCounter}${vouched}`,
    { imageCounter: p.securityCounter, deviceCounter, version: p.version });
}

/**
 * The policy as the engine's pre-registration gate. `imageStore` falls back to the one in the
 * gate context (the engine passes its own store there).
 */
export function policyGate(policy: SignaturePolicy, imageStore?: ImageStore): PreRegistrationGate {
  return (image: HxeImage, bytes: Uint8Array, ctx: GateContext): EngineError | null => {
    const p = provenanceOf(image, bytes, policy.trustedKeys);
    const refused = signatureRefusal(p.verdict, policy.requireSignature)
      ?? (policy.antiDowngrade === false ? null : downgradeRefusal(p, imageStore ?? ctx.imageStore));
    if (refused) {
      refused.detail = { ...refused.detail, source: ctx.source, appName: image.header.appName };
      return refused;
    }
    if (p.verdict.status === 'verified') vouched.set(image, p.securityCounter);
    return null;
  };
}

/** One audit record per refusal: who sent what, what was refused and why. */
export interface AuditRecord {
  audit: 'refusal';
  ts: number;
  code: string;
  reason: string;
  where: string;
  pid: number | null;
  source: string | null;
  appName: string | null;
  message: string;
  detail: Record<string, unknown>;
}

function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}

/** The audit record for an engine event, or null when the event is not a refusal. */
export function auditRecordOf(event: EngineEvent, ts: number): AuditRecord | null {
  if (event.type !== 'provisioning.error') return null;
  const d = event.data;
  const detail = (typeof d['detail'] === 'object' && d['detail'] !== null ? d['detail'] : {}) as Record<string, unknown>;
  return {
    audit: 'refusal',
    ts,
    code: str(d['code']) ?? 'UNKNOWN',
    reason: str(d['reason']) ?? 'unknown',
    where: str(d['where']) ?? event.phase,
    pid: event.pid,
    source: str(d['source']) ?? str(detail['source']),
    appName: str(d['appName']) ?? str(detail['appName']),
    message: str(d['message']) ?? '',
    detail,
  };
}

/**
 * Wraps an event sink so that every refusal also becomes one JSON audit line through `write`
 * (the gateway points it at its log). Events pass through unchanged and first, so the audit
 * never delays or drops an event.
 */
export function withAuditLog(inner: EventSink, write: (line: string) => void, now: () => number = Date.now): EventSink {
  return {
    emit(event: EngineEvent): void {
      inner.emit(event);
      const rec = auditRecordOf(event, now());
      if (rec) write(JSON.stringify(rec));
    },
  };
}
