/**
 * Target profiles (configs/profiles/*.toml): the budgets and capability set of the device class
 * an engine stands for. A profile's [engine] table is exactly the engine's config input, checked by
 * the engine's own validator, so the capability and budget gates get their numbers from here.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { err, ok, type Result } from '../hxe/result.js';
import { validateEngineConfig, type EngineConfig, type EngineConfigInput } from '../engine/config.js';
import type { PreRegistrationGate } from '../engine/gates.js';
import { policyGate, type SignaturePolicy } from '../engine/policy.js';
import { loadSignaturePolicy, type KeyError } from './keys.js';

export const BUILTIN_PROFILES = ['desktop', 'embedded'] as const;
export type BuiltinProfile = (typeof BUILTIN_PROFILES)[number];

export interface TargetProfile {
  name: string;
  description: string;
  file: string;
  /** The engine config input as written (merge overrides into it, then hand it to the engine). */
  engine: EngineConfigInput;
  /** The same, validated and with every default filled in. */
  resolved: EngineConfig;
}

export interface ProfileError {
  code: 'ECONFIG';
  file: string;
  problems: string[];
  message: string;
}

const profileSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,32}$/, 'expected 1-32 characters of [A-Za-z0-9_.-]'),
  description: z.string().default(''),
  engine: z.record(z.string(), z.unknown()),
});

const profileErr = (file: string, problems: string[]): { ok: false; error: ProfileError } =>
  err({ code: 'ECONFIG', file, problems, message: `${file}: invalid target profile:\n  ${problems.join('\n  ')}` });

/** configs/profiles, found from this module's location (src/gateway or dist/gateway). */
export function profilesDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'configs', 'profiles');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  return resolve('configs', 'profiles');
}

/** Loads a profile by built-in name (`desktop`, `embedded`) or by path to a TOML file. */
export function loadProfile(nameOrFile: string): Result<TargetProfile, ProfileError> {
  const file = (BUILTIN_PROFILES as readonly string[]).includes(nameOrFile) ? join(profilesDir(), `${nameOrFile}.toml`) : nameOrFile;
  let raw: unknown;
  try {
    raw = parseToml(readFileSync(file, 'utf8'));
  } catch (e) {
    return profileErr(file, [(e as Error).message.split('\n')[0] ?? 'cannot read']);
  }
  const parsed = profileSchema.safeParse(raw);
  if (!parsed.success) {
    return profileErr(file, parsed.error.issues.map((i) =>
      i.code === 'unrecognized_keys' ? `unknown key(s) ${i.keys.join(', ')}` : `${i.path.join('.') || '(top level)'}: ${i.message}`));
  }
  const engine = parsed.data.engine as EngineConfigInput;
  const resolved = validateEngineConfig(engine);
  if (!resolved.ok) return profileErr(file, resolved.error.problems.map((p) => `engine.${p}`));
  return ok({ name: parsed.data.name, description: parsed.data.description, file, engine, resolved: resolved.value });
}

/**
 * A profile's engine config with overrides on top (nested tables merge key by key), e.g. the
 * gateway config's [engine] table or a test's smaller arena.
 */
export function engineConfigFor(profile: TargetProfile, overrides: Record<string, unknown> = {}): EngineConfigInput {
  return deepMerge(profile.engine as Record<string, unknown>, overrides) as EngineConfigInput;
}

function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isTable(b) && isTable(v) ? deepMerge(b, v) : v;
  }
  return out;
}

const isTable = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);

/** The gateway config's [policy] table (src/gateway/config.ts). */
export interface PolicySettings {
  profile: string;
  require_signature: boolean;
  keys_dir?: string | undefined;
  anti_downgrade?: boolean;
}

export interface EngineSetup {
  /** Hand to `new ProvisioningEngine({ config, … })`: the profile's budgets, the overrides, and the policy gate. */
  config: EngineConfigInput & { gates: PreRegistrationGate[] };
  profile: TargetProfile;
  policy: SignaturePolicy;
}

/**
 * Everything policy-related an engine needs, from the gateway config: the target profile's
 * budgets and capabilities with `[engine]` overrides on top, and the signature/anti-downgrade
 * gate. Wrap the engine's event sink with `withAuditLog` (src/engine/policy.ts) for audit lines.
 */
export function engineSetup(policy: PolicySettings, engineOverrides: Record<string, unknown> = {}):
  Result<EngineSetup, ProfileError | KeyError> {
  const profile = loadProfile(policy.profile);
  if (!profile.ok) return profile;
  const config = engineConfigFor(profile.value, engineOverrides);
  const checked = validateEngineConfig(config);
  if (!checked.ok) return profileErr(profile.value.file, checked.error.problems.map((p) => `engine.${p} (after [engine] overrides)`));
  const sig = loadSignaturePolicy(policy);
  if (!sig.ok) return sig;
  return ok({ config: { ...config, gates: [policyGate(sig.value)] }, profile: profile.value, policy: sig.value });
}
