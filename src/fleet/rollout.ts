/**
 * Fleet rollouts (docs/fleet.md): the topics under `<prefix>/fleet/`, the rollout document and its
 * validation, the selector, the wave plan and the thresholds. Pure: no MQTT here, so the gateway (which
 * checks a job request against the rollout document) and the `fleet` client share one definition.
 */

export const ROLLOUT_DOC_VERSION = 1;

export const fleetRoot = (prefix: string): string => `${prefix}/fleet`;
/** Retained: the rollout document. */
export const rolloutTopic = (prefix: string, id: string): string => `${fleetRoot(prefix)}/rollouts/${id}`;
export const rolloutFilter = (prefix: string): string => `${fleetRoot(prefix)}/rollouts/+`;
/** Retained: an image (its bytes), or its manifest when it is split into parts. */
export const imageTopic = (prefix: string, sha: string): string => `${fleetRoot(prefix)}/images/${sha}`;
/** Retained: part `n` (0-based) of a split image. */
export const imagePartTopic = (prefix: string, sha: string, n: number): string => `${imageTopic(prefix, sha)}/${n}`;

export type RolloutState = 'running' | 'paused' | 'completed' | 'cancelled';
export type TargetState = 'PENDING' | 'QUEUED' | 'IN_PROGRESS' | 'SUCCEEDED' | 'SKIPPED' | 'FAILED' | 'CANCELED' | 'TIMED_OUT';
export const TERMINAL_TARGET = new Set<TargetState>(['SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELED', 'TIMED_OUT']);
const TARGET_STATES = new Set<string>(['PENDING', 'QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'SKIPPED', 'FAILED', 'CANCELED', 'TIMED_OUT']);
const ROLLOUT_STATES = new Set<string>(['running', 'paused', 'completed', 'cancelled']);

export interface RolloutTarget {
  gateway: string;
  device: string;
  link: string;
  target: string;
  state: TargetState;
  /** The gateway's job id once the submit was accepted. */
  job_id: string | null;
  /** Why it failed / timed out / was cancelled (code:reason), else null. */
  error: string | null;
}

export interface WaveCounts {
  succeeded: number;
  skipped: number;
  failed: number;
  timed_out: number;
  canceled: number;
  pending: number;
}

export interface Wave {
  index: number;
  /** As given: a count ("1") or a percentage of the work ("10%"), cumulative. */
  spec: string;
  state: 'pending' | 'running' | 'done';
  started_ts: number | null;
  finished_ts: number | null;
  targets: RolloutTarget[];
  counts: WaveCounts;
}

export interface ImageRef {
  sha256: string;
  size: number;
  name: string;
  /** 0: the bytes are at `images/<sha>` itself; N: a manifest there and N parts. */
  parts: number;
}

export interface RolloutDoc {
  v: number;
  id: string;
  /** Rises with every write; a writer that sees a higher one than it wrote stops. */
  version: number;
  state: RolloutState;
  reason: string | null;
  /** The client that drives it (its MQTT client id), null when none does. */
  controller: string | null;
  created_ts: number;
  updated_ts: number;
  image: ImageRef;
  selector: string;
  waves_spec: string[];
  /** 0..1: pause when (failed + timed_out) / finished work exceeds it. */
  abort_failure_rate: number;
  timeout_s: number;
  /** Index of the wave running (or to run next when paused); null before the first and at the end. */
  current_wave: number | null;
  /** Devices the selector matched that already run the image: never work. */
  skipped: RolloutTarget[];
  waves: Wave[];
  totals: WaveCounts & { devices: number };
}

export class FleetError extends Error {
  constructor(readonly code: string, readonly reason: string, message: string, readonly field?: string) {
    super(message);
  }
}

// ---- selector ---------------------------------------------------------------------------------

export const SELECTOR_KEYS = ['app', 'gateway', 'device', 'link', 'target', 'version', 'sha256'] as const;
export type SelectorKey = (typeof SELECTOR_KEYS)[number];
export type Selector = Array<{ key: SelectorKey; glob: string; re: RegExp }>;

/** `app=sensor_app,gateway=hall-b-*`: every term must match; `*` and `?` are globs. */
export function parseSelector(s: string): Selector {
  const out: Selector = [];
  const text = s.trim();
  if (text === '') throw new FleetError('EINVAL', 'bad_selector', 'the selector is empty (e.g. app=sensor_app,gateway=hall-b-*)', 'select');
  for (const term of text.split(',')) {
    const eq = term.indexOf('=');
    if (eq <= 0) throw new FleetError('EINVAL', 'bad_selector', `selector term "${term}" is not key=value`, 'select');
    const key = term.slice(0, eq).trim();
    const glob = term.slice(eq + 1).trim();
    if (!(SELECTOR_KEYS as readonly string[]).includes(key)) {
      throw new FleetError('EINVAL', 'bad_selector', `selector key "${key}" is not one of ${SELECTOR_KEYS.join(', ')}`, 'select');
    }
    if (glob === '') throw new FleetError('EINVAL', 'bad_selector', `selector term "${term}" has no value`, 'select');
    const re = new RegExp(`^${glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
    out.push({ key: key as SelectorKey, glob, re });
  }
  return out;
}

export interface FleetDevice {
  gateway: string;
  device: string;
  link: string;
  target: string;
  app_name: string | null;
  version: string | null;
  sha256: string | null;
  scanned_ts: number | null;
  /** The gateway's retained status (online/offline), null when unknown. */
  gateway_state: string | null;
}

export function matches(sel: Selector, d: FleetDevice): boolean {
  return sel.every(({ key, re }) => {
    const v = key === 'app' ? d.app_name : key === 'gateway' ? d.gateway : d[key];
    return v !== null && re.test(v);
  });
}

// ---- waves and thresholds ---------------------------------------------------------------------

/** `1,10%,100%`: cumulative counts or percentages; must rise and end at 100% (or cover everyone). */
export function parseWaves(s: string): string[] {
  const specs = s.split(',').map((x) => x.trim());
  if (specs.length === 0 || specs.some((x) => x === '')) throw new FleetError('EINVAL', 'bad_waves', 'waves must be a comma-separated list such as 1,10%,100%', 'waves');
  if (specs.length > 100) throw new FleetError('EINVAL', 'bad_waves', 'at most 100 waves', 'waves');
  for (const x of specs) {
    const m = /^(\d+)(%?)$/.exec(x);
    if (!m) throw new FleetError('EINVAL', 'bad_waves', `wave "${x}" is neither a count (5) nor a percentage (10%)`, 'waves');
    const n = Number(m[1]);
    if (n < 1 || (m[2] === '%' && n > 100)) throw new FleetError('EINVAL', 'bad_waves', `wave "${x}" is out of range (a count ≥ 1, a percentage 1..100%)`, 'waves');
  }
  if (specs[specs.length - 1] !== '100%') throw new FleetError('EINVAL', 'bad_waves', 'the last wave must be 100% (every selected device)', 'waves');
  return specs;
}

/** Splits `n` targets over the waves (cumulative sizes); empty waves are dropped. */
export function waveSizes(specs: string[], n: number): Array<{ spec: string; size: number }> {
  let done = 0;
  const out: Array<{ spec: string; size: number }> = [];
  for (const spec of specs) {
    const upto = spec.endsWith('%') ? Math.ceil((n * Number(spec.slice(0, -1))) / 100) : Number(spec);
    const size = Math.max(0, Math.min(n, upto) - done);
    if (size > 0) out.push({ spec, size });
    done += size;
  }
  return out;
}

/** `5%` or `0.05` → 0.05; out of 0..100% is refused. */
export function parseRate(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(s.trim());
  const v = m ? (m[2] ? Number(m[1]) / 100 : Number(m[1])) : NaN;
  if (!Number.isFinite(v) || v < 0 || v > 1) throw new FleetError('EINVAL', 'bad_threshold', `--abort-failure-rate "${s}" is out of range: give 0%..100% (or 0..1)`, 'abort-failure-rate');
  return v;
}

/** `90s`, `10m`, `1h`, or seconds; 1 s .. 7 days. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim());
  const v = m ? Number(m[1]) * ({ ms: 0.001, s: 1, m: 60, h: 3600 } as Record<string, number>)[m[2] ?? 's']! : NaN;
  if (!Number.isFinite(v) || v < 1 || v > 7 * 86400) throw new FleetError('EINVAL', 'bad_timeout', `--timeout "${s}" is out of range: give 1s..7d (e.g. 90s, 10m, 1h)`, 'timeout');
  return v;
}

export function emptyCounts(): WaveCounts {
  return { succeeded: 0, skipped: 0, failed: 0, timed_out: 0, canceled: 0, pending: 0 };
}

export function countTargets(ts: RolloutTarget[]): WaveCounts {
  const c = emptyCounts();
  for (const t of ts) {
    if (t.state === 'SUCCEEDED') c.succeeded++;
    else if (t.state === 'SKIPPED') c.skipped++;
    else if (t.state === 'FAILED') c.failed++;
    else if (t.state === 'TIMED_OUT') c.timed_out++;
    else if (t.state === 'CANCELED') c.canceled++;
    else c.pending++;
  }
  return c;
}

/** Recomputes every wave's counts and the totals. */
export function recount(doc: RolloutDoc): void {
  for (const w of doc.waves) w.counts = countTargets(w.targets);
  const all = [...doc.skipped, ...doc.waves.flatMap((w) => w.targets)];
  doc.totals = { ...countTargets(all), devices: all.length };
}

/** Failed + timed out over the work that ended (skipped devices are not work). */
export function failureRate(doc: RolloutDoc): number {
  const c = countTargets(doc.waves.flatMap((w) => w.targets));
  const done = c.succeeded + c.failed + c.timed_out;
  return done === 0 ? 0 : (c.failed + c.timed_out) / done;
}

// ---- validation -------------------------------------------------------------------------------

const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
export const validRolloutId = (id: string): boolean => ID_RE.test(id);

/**
 * The document as read from the broker, checked: every field, and the state's invariants (a hand edit
 * must not make a controller or a gateway act on nonsense). Throws FleetError `EINVAL:bad_rollout_doc`
 * naming the first problem.
 */
export function checkRolloutDoc(raw: unknown, expectId?: string): RolloutDoc {
  const bad = (where: string, what: string): never => {
    throw new FleetError('EINVAL', 'bad_rollout_doc', `the rollout document is invalid: ${where} ${what}`, where);
  };
  const isObj = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x);
  if (!isObj(raw)) return bad('document', 'is not a JSON object');
  const d = raw;
  if (d['v'] !== ROLLOUT_DOC_VERSION) bad('v', `must be ${ROLLOUT_DOC_VERSION}`);
  if (typeof d['id'] !== 'string' || !validRolloutId(d['id'])) bad('id', 'must be 1-64 of [A-Za-z0-9_.-]');
  if (expectId !== undefined && d['id'] !== expectId) bad('id', `is "${String(d['id'])}" on the topic of ${expectId}`);
  if (!Number.isSafeInteger(d['version']) || (d['version'] as number) < 1) bad('version', 'must be an integer ≥ 1');
  if (typeof d['state'] !== 'string' || !ROLLOUT_STATES.has(d['state'])) bad('state', `must be one of ${[...ROLLOUT_STATES].join(', ')}`);
  if (d['reason'] !== null && typeof d['reason'] !== 'string') bad('reason', 'must be a string or null');
  if (d['controller'] !== null && typeof d['controller'] !== 'string') bad('controller', 'must be a string or null');
  for (const k of ['created_ts', 'updated_ts', 'timeout_s']) if (typeof d[k] !== 'number' || !Number.isFinite(d[k]) || (d[k] as number) < 0) bad(k, 'must be a non-negative number');
  if ((d['timeout_s'] as number) < 1) bad('timeout_s', 'must be ≥ 1');
  const rate = d['abort_failure_rate'];
  if (typeof rate !== 'number' || !(rate >= 0 && rate <= 1)) bad('abort_failure_rate', 'must be a number 0..1');
  const img = d['image'];
  if (!isObj(img)) return bad('image', 'must be an object');
  if (typeof img['sha256'] !== 'string' || !/^[0-9a-f]{64}$/.test(img['sha256'])) bad('image.sha256', 'must be 64 lower-case hex digits');
  if (!Number.isSafeInteger(img['size']) || (img['size'] as number) < 1) bad('image.size', 'must be an integer ≥ 1');
  if (!Number.isSafeInteger(img['parts']) || (img['parts'] as number) < 0) bad('image.parts', 'must be an integer ≥ 0');
  if (typeof img['name'] !== 'string') bad('image.name', 'must be a string');
  if (typeof d['selector'] !== 'string') bad('selector', 'must be a string');
  if (!Array.isArray(d['waves_spec']) || !d['waves_spec'].every((x) => typeof x === 'string')) bad('waves_spec', 'must be a list of strings');
  const checkTargets = (where: string, ts: unknown): void => {
    if (!Array.isArray(ts)) return void bad(where, 'must be a list');
    ts.forEach((t, i) => {
      const w = `${where}[${i}]`;
      if (!isObj(t)) return void bad(w, 'must be an object');
      for (const k of ['gateway', 'device', 'link', 'target']) if (typeof t[k] !== 'string' || t[k] === '') bad(`${w}.${k}`, 'must be a non-empty string');
      if (typeof t['state'] !== 'string' || !TARGET_STATES.has(t['state'])) bad(`${w}.state`, `must be one of ${[...TARGET_STATES].join(', ')}`);
      if (t['job_id'] !== null && typeof t['job_id'] !== 'string') bad(`${w}.job_id`, 'must be a string or null');
      if (t['error'] !== null && typeof t['error'] !== 'string') bad(`${w}.error`, 'must be a string or null');
    });
  };
  checkTargets('skipped', d['skipped']);
  const waves = d['waves'];
  if (!Array.isArray(waves)) return bad('waves', 'must be a list');
  const seen = new Set<string>();
  waves.forEach((w, i) => {
    if (!isObj(w)) return void bad(`waves[${i}]`, 'must be an object');
    if (w['index'] !== i) bad(`waves[${i}].index`, `must be ${i}`);
    if (!['pending', 'running', 'done'].includes(w['state'] as string)) bad(`waves[${i}].state`, 'must be pending, running or done');
    checkTargets(`waves[${i}].targets`, w['targets']);
    for (const t of w['targets'] as RolloutTarget[]) {
      const key = `${t.gateway}\u0000${t.link}\u0000${t.target}`;
      if (seen.has(key)) bad(`waves[${i}].targets`, `list ${t.gateway}/${t.device} twice`);
      seen.add(key);
      if (w['state'] === 'pending' && t.state !== 'PENDING' && t.state !== 'CANCELED') bad(`waves[${i}]`, `is pending but target ${t.gateway}/${t.device} is ${t.state}`);
    }
  });
  const cur = d['current_wave'];
  if (cur !== null && (!Number.isSafeInteger(cur) || (cur as number) < 0 || (cur as number) >= waves.length)) bad('current_wave', `must be null or 0..${waves.length - 1}`);
  const state = d['state'] as RolloutState;
  if (state === 'running' && cur === null && waves.length > 0) bad('current_wave', 'must name a wave while the rollout is running');
  if (cur !== null) {
    // Waves run in order: those before the current one are done, those after it pending.
    waves.forEach((w, i) => {
      const ws = (w as Record<string, unknown>)['state'];
      if (i < (cur as number) && ws !== 'done') bad(`waves[${i}].state`, `must be done before the current wave ${cur as number}`);
      if (i > (cur as number) && ws !== 'pending') bad(`waves[${i}].state`, `must be pending after the current wave ${cur as number}`);
    });
  }
  if (state === 'completed' && waves.some((w) => (w as Record<string, unknown>)['state'] !== 'done')) bad('state', 'is completed but a wave is not done');
  return raw as unknown as RolloutDoc;
}
