/**
 * Pre-registration gates: checks that run on a verified image before ANY registration or
 * allocation (in a monolithic load after parsing, in a streaming load at `end`). A gate returns
 * an `EngineError` to refuse the image, or null to let it pass; the first refusal wins and
 * nothing is registered or allocated.
 *
 * The engine always runs the configured gates first (signature, anti-downgrade: "may this image
 * be loaded at all?"), then the two built-in ones below ("can this target host it?").
 */
import type { HxeHeader, HxeImage } from '../hxe/types.js';
import type { EngineConfig } from './config.js';
import { engineError, type EngineError } from './errors.js';
import type { ImageStore } from './ports.js';
import type { ArenaKind, VmUsage } from './vm.js';

export interface GateContext {
  source: string;
  mode: 'monolithic' | 'stream';
  /** The PID reserved for a streaming load; null for a monolithic one (allocated after the gates). */
  pid: number | null;
  config: Readonly<EngineConfig>;
  /** Stack the task will get (load option or the configured default). */
  stackBytes: number;
  vm: VmUsage;
  imageStore?: ImageStore;
}

export type PreRegistrationGate = (image: HxeImage, bytes: Uint8Array, ctx: GateContext) => EngineError | null;

/** Capability bits (docs/hxe_format.md, from the HSX table). */
export const CAPABILITY_BITS: Readonly<Record<number, string>> = { 0: 'mailbox', 1: 'value_command', 2: 'fram', 3: 'can', 4: 'uart' };

export function capabilityNames(mask: number): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 32; bit++) if ((mask >>> bit) & 1) names.push(CAPABILITY_BITS[bit] ?? `bit${bit}`);
  return names;
}

const hex = (n: number) => `0x${(n >>> 0).toString(16)}`;

/** `req_caps` bits the target lacks → EPERM `caps`. */
export const capabilityGate: PreRegistrationGate = (image, _bytes, ctx) => {
  const required = image.header.reqCaps >>> 0;
  const missing = (required & ~ctx.config.capabilities) >>> 0;
  if (missing === 0) return null;
  const names = capabilityNames(missing);
  return engineError('EPERM', 'verify', 'caps',
    `image requires capabilities ${hex(required)}; target lacks ${hex(missing)} (${names.join(', ')})`,
    { required, available: ctx.config.capabilities, missing, missingNames: names });
};

/**
 * Code/rodata/bss/stack against the target's per-image budget, then against the free space of the
 * VM's arenas → ENOSPC naming the arena and both numbers. Needs only the header, so a streaming
 * load runs it as soon as the header is in, and again (as `budgetGate`) before anything is allocated.
 */
export function checkBudgets(
  h: Pick<HxeHeader, 'codeLen' | 'roLen' | 'bssSize'>,
  stackBytes: number,
  config: Readonly<EngineConfig>,
  vm: VmUsage,
): EngineError | null {
  const needs: Array<[ArenaKind, keyof EngineConfig['imageLimits'], number]> = [
    ['code', 'code', h.codeLen], ['rodata', 'rodata', h.roLen], ['data', 'bss', h.bssSize], ['stack', 'stack', stackBytes],
  ];
  for (const [arena, limitKey, required] of needs) {
    const limit = config.imageLimits[limitKey];
    if (required > limit) {
      return engineError('ENOSPC', 'verify', 'budget', `${arena} arena: image needs ${required} bytes, target budget is ${limit}`,
        { arena, required, limit });
    }
  }
  for (const [arena, , required] of needs) {
    const available = vm.arenas[arena].largestFree;
    if (required > available) {
      return engineError('ENOSPC', 'verify', 'arena_full', `${arena} arena: image needs ${required} bytes, ${available} available`,
        { arena, required, available });
    }
  }
  return null;
}

export const budgetGate: PreRegistrationGate = (image, _bytes, ctx) => checkBudgets(image.header, ctx.stackBytes, ctx.config, ctx.vm);
