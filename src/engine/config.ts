/**
 * Engine configuration: timeouts, chunk and buffer limits, the target's memory budgets and
 * capability set, registry limits and the app-name policy. Validated with zod; every problem
 * names its key path (`arenas.code: expected an integer ≥ 1`), because a bench rig's config is
 * edited by hand. Defaults are the HSX desktop profile.
 */
import { z } from 'zod';
import { err, ok, type Result } from '../hxe/result.js';

const positiveInt = z.number().int().min(1);
const byteCount = z.number().int().min(0).max(0x7fff_ffff);

const arenaSchema = z.strictObject({
  /** Total bytes of each VM arena (shared by all tasks). */
  code: byteCount.default(1 << 20),
  rodata: byteCount.default(1 << 20),
  /** data + bss */
  data: byteCount.default(1 << 20),
  stack: byteCount.default(1 << 20),
});

const imageLimitSchema = z.strictObject({
  /** Per-image budgets of the target (the HSX VM applies 0x10000 to code, rodata and bss). */
  code: byteCount.default(0x10000),
  rodata: byteCount.default(0x10000),
  bss: byteCount.default(0x10000),
  stack: byteCount.default(0x10000),
});

const registrySchema = z.strictObject({
  maxValues: z.number().int().min(0).max(65536).default(256),
  maxCommands: z.number().int().min(0).max(65536).default(256),
  /** Bytes of names, units, help and group names (each with its NUL), shared by all tasks. */
  stringTableBytes: byteCount.default(4096),
  maxMailboxes: z.number().int().min(0).max(65536).default(256),
  /** Longest value/command/mailbox name in bytes. */
  maxNameBytes: z.number().int().min(1).max(255).default(32),
});

export const engineConfigSchema = z.strictObject({
  /** Largest gap between two writes of a streaming session before it is aborted. */
  writeTimeoutMs: positiveInt.default(5_000),
  /** Longest a streaming session may take from begin to end. */
  totalTimeoutMs: positiveInt.default(300_000),
  maxChunkBytes: positiveInt.max(16 << 20).default(4096),
  /** Largest image a session may buffer (and a monolithic load may pass). */
  maxImageBytes: positiveInt.max(0x7fff_ffff).default(1 << 20),
  /** Bytes buffered by all open sessions together. */
  maxBufferedBytes: positiveInt.max(Number.MAX_SAFE_INTEGER).default(256 << 20),
  maxSessions: z.number().int().min(1).max(1 << 20).default(1024),
  /** Tasks (PIDs held by READY tasks and open sessions). */
  maxTasks: z.number().int().min(1).max(65535).default(1024),
  /** How many ended sessions are remembered so a late write gets ETIMEDOUT/ECANCELED, not ESRCH. */
  closedSessionMemory: z.number().int().min(0).max(65536).default(256),
  /** A progress event each time this many more bytes arrived (or a whole percent, when the total is known). */
  progressStepBytes: positiveInt.default(4096),
  defaultStackBytes: byteCount.default(4096),
  /** Capability bits the target offers (docs/hxe_format.md: 0 mailbox, 1 value/command, 2 FRAM, 3 CAN, 4 UART). */
  capabilities: z.number().int().min(0).max(0xffff_ffff).default(0x1f),
  arenas: arenaSchema.default(arenaSchema.parse({})),
  imageLimits: imageLimitSchema.default(imageLimitSchema.parse({})),
  registry: registrySchema.default(registrySchema.parse({})),
  /** App names are trimmed to this many bytes, instance suffix included (HSX: 31). */
  maxAppNameBytes: z.number().int().min(4).max(255).default(31),
});

export type EngineConfig = z.infer<typeof engineConfigSchema>;
export type EngineConfigInput = z.input<typeof engineConfigSchema>;

export interface EngineConfigError {
  code: 'ECONFIG';
  /** The first offending key path, e.g. `arenas.code`. */
  key: string;
  /** Every problem as `key.path: what was expected`. */
  problems: string[];
  message: string;
}

function keyPath(path: ReadonlyArray<PropertyKey>): string {
  return path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[');
}

export function validateEngineConfig(raw: unknown): Result<EngineConfig, EngineConfigError> {
  const parsed = engineConfigSchema.safeParse(raw ?? {});
  if (parsed.success) return ok(parsed.data);
  const problems: string[] = [];
  let firstKey = '';
  for (const issue of parsed.error.issues) {
    const base = keyPath(issue.path);
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) {
        const key = base ? `${base}.${k}` : k;
        firstKey ||= key;
        problems.push(`${key}: unknown key`);
      }
      continue;
    }
    const key = base || '(top level)';
    firstKey ||= key;
    problems.push(`${key}: ${issue.message}`);
  }
  return err({ code: 'ECONFIG', key: firstKey, problems, message: `invalid engine config: ${problems.join('; ')}` });
}

/** Thrown by the engine constructor: a bad config is a programming or deployment error, not input. */
export class EngineConfigValidationError extends Error {
  readonly key: string;
  readonly problems: string[];
  constructor(e: EngineConfigError) {
    super(e.message);
    this.name = 'EngineConfigValidationError';
    this.key = e.key;
    this.problems = e.problems;
  }
}
