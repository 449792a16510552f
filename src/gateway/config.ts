/**
 * The gateway's one configuration file (TOML), validated at start-up. Unknown keys are errors,
 * and every error names the key path and what was expected, because a bench rig's config is
 * edited by hand and a silently ignored typo costs an afternoon.
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { MAX_NODE } from '../link/can/ids.js';
import { isLoopbackHost } from '../link/loopback.js';

const hostPort = z
  .string()
  .regex(/^[^:\s]+:\d{1,5}$/, 'expected "HOST:PORT", e.g. "127.0.0.1:9998"');

const role = z.enum(['viewer', 'operator', 'admin']);

const tokenSchema = z.strictObject({
  name: z.string().min(1),
  role,
  /** SHA-256 of the token, hex; the token itself never sits in the file. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits (SHA-256 of the token)'),
});

const controlSchema = z.strictObject({
  listen: hostPort.default('127.0.0.1:9998'),
  tokens: z.array(tokenSchema).default([]),
  max_line_bytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
  /**
   * The only directory `load`/`exec`/`provision.load` may name a file in (paths are relative to
   * it); relative to the config file. Default: `images` next to the config file.
   */
  images_dir: z.string().min(1).default('images'),
  /** At most this many bytes are read from such a file (the engine's own maxImageBytes also applies). */
  max_image_bytes: z.number().int().min(1).max(0x7fff_ffff).default(1024 * 1024),
  // The named limits (src/gateway/control/limits.ts, docs/security.md "Connection limits"):
  // over one, the client gets `ELIMIT:<key>` with detail.limit (and, for the connection ones, is closed).
  /** Connections held at once. */
  max_connections: z.number().int().min(1).max(65_535).default(64),
  /** Connections held at once from one remote address. */
  max_connections_per_address: z.number().int().min(1).max(65_535).default(16),
  /** Connections held at once that have not authenticated; the oldest is closed to make room. */
  max_unauthenticated: z.number().int().min(1).max(65_535).default(8),
  /** Longest line before a connection has authenticated (with tokens configured). */
  pre_auth_line_bytes: z.number().int().min(256).max(64 * 1024 * 1024).default(4096),
  /** A connection that has not authenticated (without tokens: sent a line) this long after it opened is closed. */
  pre_auth_timeout_ms: z.number().int().min(100).max(3_600_000).default(10_000),
  /** An authenticated connection that sends nothing this long is closed (not an event stream); 0 = never. */
  idle_timeout_ms: z.number().int().min(0).max(86_400_000).default(600_000),
  /** Protocol sessions in all. */
  max_sessions: z.number().int().min(1).max(1_000_000).default(256),
  /** Open protocol sessions one connection opened. */
  max_sessions_per_connection: z.number().int().min(1).max(1_000_000).default(16),
  /** Event streams (`events.subscribe`, `job.watch`) open at once: `ELIMIT:max_streams`, the connection carries on. */
  max_streams: z.number().int().min(1).max(65_535).default(32),
  /** Event streams open at once from one remote address: `ELIMIT:max_streams_per_address`. */
  max_streams_per_address: z.number().int().min(1).max(65_535).default(8),
  /** The connection is closed after this many failed authentications. */
  max_auth_failures: z.number().int().min(1).max(1000).default(5),
  /** The reply to a failed authentication waits this long, doubled for each failure of the connection or its address... */
  auth_failure_delay_ms: z.number().int().min(0).max(60_000).default(100),
  /** ...up to this. */
  auth_failure_delay_max_ms: z.number().int().min(0).max(600_000).default(5000),
  /** Failures per address are counted, and their audit lines coalesced into one with a count, per window this long. */
  auth_failure_window_ms: z.number().int().min(1000).max(86_400_000).default(60_000),
});

const mqttSchema = z
  .strictObject({
    embedded: z.boolean().default(false),
    /** Port for the embedded broker; 0 picks a free one. */
    embedded_port: z.number().int().min(0).max(65535).default(1883),
    url: z.string().regex(/^mqtts?:\/\/.+/, 'expected an mqtt:// or mqtts:// URL').optional(),
    /**
     * Brokers in order (docs/mqtt.md "Several brokers"): the bridge and the fleet side connect to the
     * first that answers and fail over to the next when theirs goes away. `url` is the one-element list.
     */
    urls: z.array(z.string().regex(/^mqtts?:\/\/[^/\s]+\/?$/, 'expected an mqtt:// or mqtts:// URL (host:port, no path)')).min(1).max(16).optional(),
    client_id: z.string().min(1).max(64).optional(),
    username: z.string().optional(),
    password: z.string().optional(),
    ca_file: z.string().optional(),
    cert_file: z.string().optional(),
    key_file: z.string().optional(),
    topic_prefix: z.string().regex(/^[^#+\s]+$/, 'expected a topic prefix without wildcards or spaces').default('hsx'),
    protocol_version: z.union([z.literal(4), z.literal(5)]).optional(),
    qos_terminal: z.union([z.literal(0), z.literal(1), z.literal(2)]).default(1),
    qos_progress: z.union([z.literal(0), z.literal(1), z.literal(2)]).default(0),
    buffer_limit: z.number().int().min(16).max(1_000_000).default(10_000),
    // The embedded broker's access and bounds (docs/mqtt.md "Access to the embedded broker"); an
    // external broker has its own.
    /** Clients without a username may subscribe (never publish); otherwise a `[control] tokens` entry is needed. */
    anonymous_read: z.boolean().default(false),
    /** Longest packet a client may send the embedded broker; longer: the client is disconnected, nothing stored. */
    max_message_bytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(256 * 1024),
    /** Retained messages the embedded broker holds; beyond, a retained message is delivered but not stored. */
    max_retained: z.number().int().min(1).max(1_000_000).default(1000),
    /** Bytes (topic + payload) of retained messages the embedded broker holds. */
    max_retained_bytes: z.number().int().min(1024).max(1024 * 1024 * 1024).default(16 * 1024 * 1024),
    /** Clients (other than the gateway's own) connected to the embedded broker at once. */
    max_connections: z.number().int().min(1).max(65_535).default(64),
    /**
     * The MQTT command plane for jobs (docs/mqtt.md "Jobs"): submit and cancel over MQTT, each request
     * carrying a `[control] tokens` token (operator or admin). Off by default; refused at start-up
     * when no token is configured.
     */
    commands: z.boolean().default(false),
  })
  .refine((m) => !(m.embedded && m.url), { message: 'give either embedded = true or url, not both', path: ['url'] })
  .refine((m) => !(m.embedded && m.urls), { message: 'give either embedded = true or urls, not both', path: ['urls'] })
  .refine((m) => !(m.url && m.urls), { message: 'give either url (one broker) or urls (a list), not both', path: ['urls'] })
  .refine((m) => !m.urls || new Set(m.urls).size === m.urls.length, { message: 'a broker is listed twice', path: ['urls'] });

/** The gateway's broker URLs in order: `mqtt.urls`, or `[mqtt.url]`, or none. */
export function mqttUrls(m: { url?: string | undefined; urls?: string[] | undefined } | undefined): string[] {
  if (!m) return [];
  if (m.urls?.length) return [...m.urls];
  return m.url ? [m.url] : [];
}

const linkRole = z.enum(['master', 'listener']);

const uartLinkSchema = z.strictObject({
  /** What jobs and `scan` call this link (default: its interface or port). Letters, digits, `_.-`. */
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'expected 1-64 characters of [A-Za-z0-9_.-]').optional(),
  port: z.string().min(1),
  baud: z.number().int().min(1200).max(16_000_000).default(921_600),
  role: linkRole,
  /** For a listener: the simulated device it feeds. */
  device: z.string().optional(),
});

const canLinkSchema = z.strictObject({
  /** What jobs and `scan` call this link (default: its interface or port). Letters, digits, `_.-`. */
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'expected 1-64 characters of [A-Za-z0-9_.-]').optional(),
  interface: z.string().min(1),
  backend: z.enum(['socketcan', 'virtual']).default('socketcan'),
  bitrate: z.number().int().min(10_000).max(1_000_000).default(500_000),
  /** Model bus timing on the virtual backend (frames take the time a real bus gives them). */
  timing: z.boolean().default(true),
  fd: z.boolean().default(false),
  node_id: z.number().int().min(0).max(MAX_NODE).optional(),
  role: linkRole,
  /**
   * The virtual CAN hub of a `virtual` HOST:PORT link, when this gateway is the first process on the
   * address and so hosts it (src/link/can/virtual-net.ts; docs/can_protocol.md, docs/security.md).
   */
  hub: z.strictObject({
    /** Frames one hub connection may have waiting for the bus; more: the connection is cut off (flood). */
    max_queued_frames: z.number().int().min(16).max(1_000_000).default(4096),
    /** Bytes per second one connection may send, sustained… */
    max_bytes_per_second: z.number().int().min(1024).max(1024 * 1024 * 1024).default(32 * 1024 * 1024),
    /** …and in one burst; more is a flood: the connection is cut off. */
    burst_bytes: z.number().int().min(1024).max(1024 * 1024 * 1024).default(8 * 1024 * 1024),
    /** Bytes waiting to be written to one connection; more: it is cut off (slow reader). */
    max_output_bytes: z.number().int().min(1024).max(1024 * 1024 * 1024).default(4 * 1024 * 1024),
    /** Where the hub listens: the link's HOST (default), or `0.0.0.0` / `::` (every interface; needs allow_remote). */
    bind: z.string().min(1).optional(),
    /** Let the hub listen on a non-loopback address (it has no authentication); the same as `?remote=1`. */
    allow_remote: z.boolean().default(false),
  }).optional(),
});

const deviceSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,32}$/, 'expected 1-32 characters of [A-Za-z0-9_.-]'),
  state_dir: z.string().min(1),
  /** The CAN node id (1..63: six bits of the identifier plan, docs/can_protocol.md). */
  node_id: z.number().int().min(1).max(MAX_NODE).optional(),
  flash: z
    .strictObject({
      size: z.number().int().min(64 * 1024).max(256 * 1024 * 1024).optional(),
      sector_size: z.number().int().min(256).max(1024 * 1024).optional(),
      page_size: z.number().int().min(1).max(64 * 1024).optional(),
      endurance: z.number().int().min(1).optional(),
    })
    .default({}),
  fram: z.strictObject({ size: z.number().int().min(1024).max(64 * 1024 * 1024).optional() }).default({}),
  /** The CAN link (by interface) this device listens on, if any. */
  can: z.string().optional(),
  /** An image of an app the device runs: `replace` updates it (default), `reject` refuses it (EEXIST). */
  update: z.enum(['replace', 'reject']).default('replace'),
});

const bootSchema = z.strictObject({
  preload_dir: z.string().optional(),
  sd_manifest: z.string().optional(),
  /** How long to wait for a CAN master's announcement before falling back. */
  can_wait_ms: z.number().int().min(0).max(600_000).default(0),
  max_failed_boots: z.number().int().min(1).max(100).default(3),
  confirm_window_ms: z.number().int().min(0).max(24 * 3600_000).default(10_000),
});

/** Jobs on the master links (docs/jobs.md): how many finished jobs the journal keeps, and for how long. */
const jobsSchema = z.strictObject({
  max_finished: z.number().int().min(1).max(100_000).default(1000),
  max_age_s: z.number().int().min(60).max(10 * 365 * 86_400).default(7 * 86_400),
});

/**
 * The live page and `/metrics` (docs/metrics.md, README "The live page"): served by `serve` only when
 * `port` is set (or `serve --http-port`). Loopback by default; another address needs access tokens,
 * as the control port does.
 */
const httpSchema = z.strictObject({
  /** TCP port; 0 picks a free one. Without it (and without --http-port) no page is served. */
  port: z.number().int().min(0).max(65535).optional(),
  host: z.string().min(1).default('127.0.0.1'),
  /** Live-page event streams open at once; more are answered 503. */
  max_streams: z.number().int().min(1).max(1024).default(32),
  /** Longest request body (a job submit); longer is 413. */
  max_body_bytes: z.number().int().min(1024).max(1024 * 1024).default(16 * 1024),
});

const policySchema = z.strictObject({
  profile: z.enum(['desktop', 'embedded']).default('desktop'),
  require_signature: z.boolean().default(false),
  keys_dir: z.string().optional(),
  name_policy: z.enum(['reject', 'rename']).optional(),
});

const gatewaySchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'expected 1-64 characters of [A-Za-z0-9_.-] (it is an MQTT topic level)'),
  /** The gateway's own state (the job journal and its images); jobs are off without it (docs/jobs.md). */
  state_dir: z.string().min(1).optional(),
  log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
});

export const configSchema = z.strictObject({
  gateway: gatewaySchema,
  control: controlSchema.default(controlSchema.parse({})),
  mqtt: mqttSchema.optional(),
  links: z
    .strictObject({
      uart: z.array(uartLinkSchema).default([]),
      can: z.array(canLinkSchema).default([]),
    })
    .default({ uart: [], can: [] }),
  devices: z.array(deviceSchema).default([]),
  /** Engine budgets and timeouts, passed to the engine's own validator (which names bad keys). */
  engine: z.record(z.string(), z.unknown()).default({}),
  policy: policySchema.default(policySchema.parse({})),
  jobs: jobsSchema.default(jobsSchema.parse({})),
  http: httpSchema.default(httpSchema.parse({})),
  boot: bootSchema.default(bootSchema.parse({})),
});

export type GatewayConfig = z.infer<typeof configSchema>;
export type DeviceConfig = GatewayConfig['devices'][number];
export type MqttConfig = z.infer<typeof mqttSchema>;

export interface ConfigError {
  code: 'ECONFIG';
  file: string;
  /** Each problem as `key.path: what was expected`. */
  problems: string[];
  message: string;
}

/** The raw value at a schema issue's path, for the message (undefined when absent). */
function valueAt(raw: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let v: unknown = raw;
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return typeof v === 'object' && v !== null ? undefined : v;
}

function keyPath(path: ReadonlyArray<PropertyKey>): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '');
}

/** Validates an already-parsed object; paths in it are resolved against `baseDir`. */
export function validateConfig(raw: unknown, file = '<inline>', baseDir = process.cwd()):
  { ok: true; value: GatewayConfig } | { ok: false; error: ConfigError } {
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => {
      const where = keyPath(i.path) || '(top level)';
      if (i.code === 'unrecognized_keys') return `${where ? where + ': ' : ''}unknown key(s) ${i.keys.map((k) => `"${k}"`).join(', ')}`;
      const value = valueAt(raw, i.path);
      // Say what was there and what is allowed: `devices[0].node_id = 100: must be <= 63`.
      const shown = value === undefined ? '' : ` = ${JSON.stringify(value)}`;
      if (i.code === 'too_big' || i.code === 'too_small') {
        const bound = i.code === 'too_big' ? `<= ${String(i.maximum)}` : `>= ${String(i.minimum)}`;
        const what = i.origin === 'number' || i.origin === 'int' || i.origin === 'bigint' ? '' : ` (${i.origin} length)`;
        return `${where}${shown}: must be ${bound}${what}`;
      }
      if (i.code === 'invalid_type' && value === undefined && valueAt(raw, i.path.slice(0, -1)) === undefined && i.path.length > 0) {
        return `${where}: required (a ${i.expected})`;
      }
      return `${where}${shown}: ${i.message}`;
    });
    return { ok: false, error: { code: 'ECONFIG', file, problems, message: `${file}: invalid configuration:\n  ${problems.join('\n  ')}` } };
  }
  const cfg = parsed.data;
  const names = new Set<string>();
  const problems: string[] = [];
  cfg.devices.forEach((d, i) => {
    if (names.has(d.name)) problems.push(`devices[${i}].name: duplicate device name "${d.name}"`);
    names.add(d.name);
    d.state_dir = resolvePath(baseDir, d.state_dir);
  });
  cfg.links.uart.forEach((u, i) => {
    if (u.device !== undefined && !names.has(u.device)) problems.push(`links.uart[${i}].device: no device named "${u.device}"`);
  });
  cfg.links.can.forEach((l, i) => {
    const problem = hubProblem(l);
    if (problem) problems.push(`links.can[${i}].hub${problem}`);
  });
  // Jobs and scans name a link: two master links with one name would be one queue for two buses.
  const linkNames = new Map<string, string>();
  const masters = [
    ...cfg.links.can.map((l, i) => ({ l, at: `links.can[${i}]`, name: l.name ?? l.interface })),
    ...cfg.links.uart.map((l, i) => ({ l, at: `links.uart[${i}]`, name: l.name ?? l.port })),
  ].filter((m) => m.l.role === 'master');
  for (const m of masters) {
    const first = linkNames.get(m.name);
    if (first) problems.push(`${m.at}.name: master link "${m.name}" is already ${first}; give each master link its own name`);
    else linkNames.set(m.name, m.at);
  }
  // Two devices answering as one node on one bus would both take every image meant for either.
  const nodes = new Map<string, { index: number; name: string }>();
  cfg.devices.forEach((d, i) => {
    if (d.node_id === undefined) return;
    const bus = d.can ?? cfg.links.can[0]?.interface ?? '(no CAN link)';
    const key = `${bus}\u0000${d.node_id}`;
    const first = nodes.get(key);
    if (first) problems.push(`devices[${i}].node_id: node ${d.node_id} on CAN link "${bus}" is already devices[${first.index}] ("${first.name}"); each device on a bus needs its own node id`);
    else nodes.set(key, { index: i, name: d.name });
  });
  if (problems.length) {
    return { ok: false, error: { code: 'ECONFIG', file, problems, message: `${file}: invalid configuration:\n  ${problems.join('\n  ')}` } };
  }
  cfg.control.images_dir = resolvePath(baseDir, cfg.control.images_dir);
  if (cfg.gateway.state_dir) cfg.gateway.state_dir = resolvePath(baseDir, cfg.gateway.state_dir);
  if (cfg.boot.preload_dir) cfg.boot.preload_dir = resolvePath(baseDir, cfg.boot.preload_dir);
  if (cfg.boot.sd_manifest) cfg.boot.sd_manifest = resolvePath(baseDir, cfg.boot.sd_manifest);
  if (cfg.policy.keys_dir) cfg.policy.keys_dir = resolvePath(baseDir, cfg.policy.keys_dir);
  for (const k of ['ca_file', 'cert_file', 'key_file'] as const) {
    const v = cfg.mqtt?.[k];
    if (cfg.mqtt && v) cfg.mqtt[k] = resolvePath(baseDir, v);
  }
  return { ok: true, value: cfg };
}

function resolvePath(baseDir: string, p: string): string {
  return isAbsolute(p) ? p : resolve(baseDir, p);
}

/** Reads and validates a TOML config file; a syntax error names the line and column. */
export function loadConfig(file: string): { ok: true; value: GatewayConfig } | { ok: false; error: ConfigError } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const msg = (e as Error).message;
    return { ok: false, error: { code: 'ECONFIG', file, problems: [msg], message: `${file}: cannot read: ${msg}` } };
  }
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (e) {
    // smol-toml's errors carry the line and column (1-based) and a code frame; say where.
    const te = e as Error & { line?: number; column?: number; codeblock?: string };
    const msg = te.message.split('\n')[0] ?? 'syntax error';
    const at = typeof te.line === 'number' ? `:${te.line}${typeof te.column === 'number' ? `:${te.column}` : ''}` : '';
    const frame = te.codeblock ? `\n${te.codeblock.replace(/\n+$/, '')}` : '';
    return { ok: false, error: { code: 'ECONFIG', file, problems: [`line ${te.line ?? '?'}, column ${te.column ?? '?'}: ${msg}`], message: `${file}${at}: TOML syntax error: ${msg}${frame}` } };
  }
  const checked = validateConfig(raw, file, dirname(resolve(file)));
  if (!checked.ok) return checked;
  const problems = missingBootPaths(checked.value);
  if (problems.length) return { ok: false, error: { code: 'ECONFIG', file, problems, message: `${file}: invalid configuration:\n  ${problems.join('\n  ')}` } };
  return checked;
}

/**
 * Boot sources that point nowhere are a configuration error, not an empty boot: a mistyped
 * `preload_dir` would otherwise start every device without its images and say nothing.
 */
function missingBootPaths(cfg: GatewayConfig): string[] {
  const problems: string[] = [];
  const check = (key: string, path: string | undefined, kind: 'directory' | 'file'): void => {
    if (!path) return;
    let st;
    try {
      st = statSync(path);
    } catch {
      problems.push(`${key} = ${JSON.stringify(path)}: no such ${kind}`);
      return;
    }
    if (kind === 'directory' ? !st.isDirectory() : !st.isFile()) problems.push(`${key} = ${JSON.stringify(path)}: not a ${kind}`);
  };
  check('boot.preload_dir', cfg.boot.preload_dir, 'directory');
  check('boot.sd_manifest', cfg.boot.sd_manifest, 'file');
  return problems;
}

/** The name jobs and `scan` use for a link: its `name`, else its CAN interface or serial port. */
export function linkName(l: GatewayConfig['links']['can'][number] | GatewayConfig['links']['uart'][number]): string {
  return l.name ?? ('interface' in l ? l.interface : l.port);
}

/** Wildcard listen addresses a hub may bind to instead of its HOST (every interface). */
const WILDCARD_HOSTS = new Set(['0.0.0.0', '::', '[::]']);

/** What is wrong with a CAN link's `hub` table (a suffix for the key path and the reason), or null. */
function hubProblem(l: { backend: string; interface: string; hub?: { bind?: string | undefined; allow_remote: boolean } | undefined }): string | null {
  if (!l.hub) return null;
  const m = /^(.+):(\d{1,5})(\?.*)?$/.exec(l.interface);
  if (l.backend !== 'virtual' || !m) return `: applies to backend = "virtual" links written HOST:PORT only (got ${l.backend} "${l.interface}")`;
  const host = m[1]!;
  const remote = l.hub.allow_remote || /[?&]remote=1(&|$)/.test(m[3] ?? '');
  const bind = l.hub.bind;
  if (bind !== undefined && bind !== host && !WILDCARD_HOSTS.has(bind)) {
    return `.bind: "${bind}" is neither the link's host "${host}" nor every interface ("0.0.0.0", "::"): members connect to ${host}`;
  }
  const listens = bind ?? host;
  if (!remote && !isLoopbackHost(listens)) {
    return `.bind: "${listens}" is not a loopback address; the hub has no authentication, so set allow_remote = true to open it on purpose`;
  }
  return null;
}
