/**
 * `hsx-gateway fleet ls | rollout create|watch|pause|resume|cancel|status|list`: a client of the MQTT
 * broker (no server of its own) for rollouts across gateways (docs/fleet.md).
 *
 * Exit codes: 0 done (a rollout: completed with no failed, timed-out or cancelled device), 1 a rollout
 * that paused, was cancelled or had failures, or a refusal (no such rollout, no device matched, a
 * document that is invalid), 2 usage (bad options, thresholds out of range), 3 no broker answered.
 */
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { CLIENT_TOKEN_ENV } from '../../gateway/control/client.js';
import { DEFAULT_PART_BYTES } from '../../fleet/images.js';
import { FleetMqtt } from '../../fleet/mqtt.js';
import { cancelRollout, createRollout, listRollouts, pauseRollout, pct, readFleet, readRollout, RolloutController } from '../../fleet/controller.js';
import { FleetError, parseDuration, parseRate, parseSelector, parseWaves, rolloutTopic, type RolloutDoc } from '../../fleet/rollout.js';

interface CommonOpts {
  broker: string[];
  prefix: string;
  token?: string;
  json?: boolean;
}

/** Refusals of the command line itself (exit 2); the rest (no match, a bad document on the broker) are 1. */
const USAGE_REASONS = new Set(['bad_selector', 'bad_waves', 'bad_threshold', 'bad_timeout', 'bad_part_bytes', 'bad_rollout_id', 'no_image', 'empty_image']);

class Exit {
  constructor(readonly code: number) {}
}

const out = (s: string): void => void process.stdout.write(s);
const line = (o: Record<string, unknown>): void => out(`${JSON.stringify(o)}\n`);

function fail(opts: CommonOpts, e: unknown): number {
  if (e instanceof Exit) return e.code;
  const f = e instanceof FleetError ? e : null;
  const code = f && USAGE_REASONS.has(f.reason) ? 2 : 1;
  const message = (e as Error).message;
  if (opts.json) line({ type: 'error', ok: false, code: f?.code ?? 'EIO', reason: f?.reason ?? 'error', message, ...(f?.field ? { field: f.field } : {}) });
  else process.stderr.write(`fleet: ${message}\n`);
  return code;
}

function usage(opts: CommonOpts, message: string): Exit {
  if (opts.json) line({ type: 'error', ok: false, kind: 'usage', code: 'EINVAL', reason: 'usage', message });
  else process.stderr.write(`fleet: ${message}\n`);
  return new Exit(2);
}

async function connect(opts: CommonOpts): Promise<FleetMqtt> {
  if (!opts.broker.length) throw usage(opts, '--broker URL is required (repeat it for more brokers)');
  try {
    return await FleetMqtt.connect({ urls: opts.broker, prefix: opts.prefix, persistent: false });
  } catch (e) {
    if (opts.json) line({ type: 'error', ok: false, code: 'ECONNREFUSED', reason: 'no_broker', message: (e as Error).message });
    else process.stderr.write(`fleet: ${(e as Error).message}\n`);
    throw new Exit(3);
  }
}

function token(opts: CommonOpts): string {
  const t = opts.token ?? process.env[CLIENT_TOKEN_ENV];
  if (!t) throw usage(opts, `a token is required (--token or $${CLIENT_TOKEN_ENV}): gateways run a rollout's jobs only for an operator's token`);
  return t;
}

async function withBroker(opts: CommonOpts, fn: (m: FleetMqtt) => Promise<number>): Promise<number> {
  let m: FleetMqtt | null = null;
  try {
    m = await connect(opts);
    return await fn(m);
  } catch (e) {
    return fail(opts, e);
  } finally {
    await m?.close().catch(() => {});
  }
}

function summary(d: RolloutDoc): string {
  const t = d.totals;
  const wave = d.current_wave === null ? '' : ` wave ${d.current_wave + 1}/${d.waves.length}`;
  return `${d.id} v${d.version} ${d.state}${wave}: ${t.succeeded} succeeded, ${t.skipped} skipped, ${t.failed} failed, ${t.timed_out} timed out, ${t.canceled} cancelled, ${t.pending} pending of ${t.devices}${d.reason ? ` (${d.reason})` : ''}`;
}

function showDoc(opts: CommonOpts, d: RolloutDoc, type = 'rollout'): void {
  if (opts.json) line({ type, rollout: d });
  else out(`${summary(d)}\n`);
}

const good = (d: RolloutDoc): boolean => d.state === 'completed' && d.totals.failed + d.totals.timed_out + d.totals.canceled === 0;

async function drive(opts: CommonOpts, m: FleetMqtt, id: string): Promise<number> {
  let last = 0;
  const ctl = new RolloutController(m, id, {
    token: token(opts),
    onDoc: (d) => {
      if (d.version <= last) return;
      last = d.version;
      showDoc(opts, d);
    },
  });
  const d = await ctl.run();
  if (opts.json) line({ type: 'result', ok: good(d), stopped: ctl.stoppedBecause, rollout: d });
  else out(`${summary(d)}${ctl.stoppedBecause ? ` — stopped: ${ctl.stoppedBecause}` : ''}\n`);
  return good(d) ? 0 : 1;
}

async function watch(opts: CommonOpts, m: FleetMqtt, id: string): Promise<number> {
  const topic = rolloutTopic(m.prefix, id);
  let last = 0;
  const end = await new Promise<RolloutDoc>((resolve, reject) => {
    m.on(topic, (_t, payload) => {
      if (payload.length === 0) return;
      let d: RolloutDoc;
      try {
        d = JSON.parse(payload.toString('utf8')) as RolloutDoc;
      } catch {
        return reject(new FleetError('EINVAL', 'bad_rollout_doc', `the rollout document at ${topic} is not JSON`));
      }
      if (typeof d.version !== 'number' || d.version <= last) return;
      last = d.version;
      showDoc(opts, d);
      if (d.state !== 'running') resolve(d);
    });
    m.subscribe([topic]).catch(reject);
  });
  if (opts.json) line({ type: 'result', ok: good(end), rollout: end });
  return good(end) ? 0 : 1;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

function lingerUntilSignal(say: string | null): Promise<void> {
  if (say) process.stderr.write(`${say}\n`);
  return new Promise((res) => {
    process.once('SIGINT', () => res());
    process.once('SIGTERM', () => res());
  });
}

function common(cmd: Command): Command {
  return cmd
    .option('--broker <url>', 'MQTT broker URL, e.g. mqtt://host:1883 (repeatable: tried in order)', collect, [])
    .option('--prefix <prefix>', 'topic prefix of the gateways (their mqtt.topic_prefix)', 'hsx')
    .option('--token <token>', `an operator's access token, as the gateways' [control] tokens know it (default: $${CLIENT_TOKEN_ENV})`)
    .option('--json', 'JSON lines');
}

/** The repository root (src/cli/commands or dist/cli/commands: three levels up): the demo's images and configs. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function registerFleet(program: Command): void {
  const fleet = program.command('fleet').description('rollouts across gateways over their MQTT broker (docs/fleet.md)');

  fleet
    .command('demo')
    .description('a whole fleet on this machine: a broker, N gateway processes with M simulated devices each, v1 everywhere, then a 2-wave rollout of v2')
    .option('--gateways <n>', 'gateway processes (1..32)', '3')
    .option('--devices <m>', 'simulated devices per gateway, each on the gateway\'s own virtual CAN bus (1..16)', '4')
    .option('--broker <url>', 'use this running broker instead of starting one (repeatable: gateways spread round-robin, the fleet client gets all)', collect, [])
    .option('--prefix <prefix>', 'topic prefix of the demo gateways', 'hsx-demo')
    .option('--state <dir>', 'where the devices and gateways keep their state between runs', '.fleet-demo-state')
    .option('--fresh', 'wipe the state directory first')
    .option('--once', 'exit after the rollout instead of keeping the fleet up until Ctrl-C')
    .option('--json', 'JSON lines; the last is {"type":"summary",...}')
    .action(async (opts: { gateways: string; devices: string; broker: string[]; prefix: string; state: string; fresh?: boolean; once?: boolean; json?: boolean }) => {
      const co: CommonOpts = { broker: opts.broker, prefix: opts.prefix, ...(opts.json ? { json: true } : {}) };
      const n = Number(opts.gateways);
      const m = Number(opts.devices);
      try {
        if (!/^\d+$/.test(opts.gateways) || n < 1 || n > 32) throw usage(co, `--gateways must be 1..32, got ${opts.gateways}`);
        if (!/^\d+$/.test(opts.devices) || m < 1 || m > 16) throw usage(co, `--devices must be 1..16, got ${opts.devices}`);
        for (const b of opts.broker) if (!/^mqtts?:\/\/[^/\s]+\/?$/.test(b)) throw usage(co, `--broker must be an mqtt:// or mqtts:// URL, got ${b}`);
      } catch (e) {
        process.exitCode = fail(co, e);
        return;
      }
      const { runFleetDemo } = await import('../../fleet/demo.js');
      try {
        const summary = await runFleetDemo({
          gateways: n,
          devices: m,
          brokers: opts.broker,
          stateDir: opts.state,
          fresh: !!opts.fresh,
          prefix: opts.prefix,
          root: ROOT,
          cliArgv: [...process.execArgv, process.argv[1]!],
          say: (o, text) => (opts.json ? line(o) : out(`${text}\n`)),
          onSummary: (summary) => {
            if (opts.json) line({ ...summary });
            else out(`summary: ${summary.succeeded} succeeded, ${summary.failed} failed, ${summary.skipped} skipped, ${summary.timed_out} timed out; ${summary.on_v2}/${summary.devices} devices run v2\n`);
          },
          linger: () => (opts.once ? Promise.resolve() : lingerUntilSignal('fleet demo: the fleet is up (Ctrl-C ends it)')),
        });
        process.exitCode = summary.ok ? 0 : 1;
      } catch (e) {
        process.exitCode = fail(co, e);
      }
    });

  common(fleet.command('ls'))
    .description('gateways and devices, from the retained status and inventory documents')
    .action(async (opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, async (m) => {
        const f = await readFleet(m);
        if (opts.json) {
          for (const g of f.gateways) line({ type: 'gateway', ...g, devices: f.devices.filter((d) => d.gateway === g.gateway).length });
          for (const d of f.devices) line({ type: 'device', ...d });
          line({ type: 'result', ok: true, gateways: f.gateways.length, devices: f.devices.length });
        } else {
          for (const g of f.gateways) {
            out(`${g.gateway}  ${g.state ?? 'unknown'}\n`);
            for (const d of f.devices.filter((x) => x.gateway === g.gateway)) {
              out(`  ${d.device.padEnd(16)} ${`${d.link}:${d.target}`.padEnd(16)} ${d.app_name ?? '-'} ${d.version ?? ''} ${d.sha256 ? d.sha256.slice(0, 12) : ''}\n`);
            }
          }
          out(`${f.gateways.length} gateway(s), ${f.devices.length} device(s)\n`);
        }
        return 0;
      });
    });

  const rollout = fleet.command('rollout').description('rollouts: create, watch, pause, resume, cancel, status, list');

  common(rollout.command('create'))
    .description('publish an image and run it to the selected devices in waves')
    .requiredOption('--image <file>', 'the HXE image')
    .requiredOption('--select <selector>', 'e.g. app=sensor_app,gateway=hall-b-* (keys: app, gateway, device, link, target, version, sha256; * and ? glob)')
    .option('--waves <list>', 'cumulative wave sizes: counts or percentages, ending at 100%', '1,10%,100%')
    .option('--abort-failure-rate <rate>', 'pause when failed + timed out exceed this share of the finished work', '5%')
    .option('--timeout <duration>', 'per wave: devices not done by then are TIMED_OUT (e.g. 90s, 10m)', '10m')
    .option('--id <id>', 'the rollout id (default: r-<time>-<random>)')
    .option('--max-message-bytes <n>', 'largest MQTT payload to publish: bigger images go in parts', String(DEFAULT_PART_BYTES))
    .option('--no-run', 'create the rollout and leave (no controller: run `fleet rollout resume ID`)')
    .action(async (opts: CommonOpts & { image: string; select: string; waves: string; abortFailureRate: string; timeout: string; id?: string; maxMessageBytes: string; run: boolean }) => {
      // Every option is checked before the broker is asked anything.
      let rate: number;
      let timeoutS: number;
      try {
        token(opts);
        parseSelector(opts.select);
        parseWaves(opts.waves);
        rate = parseRate(opts.abortFailureRate);
        timeoutS = parseDuration(opts.timeout);
      } catch (e) {
        process.exitCode = fail(opts, e);
        return;
      }
      process.exitCode = await withBroker(opts, async (m) => {
        const partBytes = Number(opts.maxMessageBytes);
        let image: Uint8Array;
        try {
          image = new Uint8Array(await readFile(opts.image));
        } catch (e) {
          throw new FleetError('EINVAL', 'no_image', `cannot read --image ${opts.image}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'image');
        }
        if (image.length === 0) throw new FleetError('EINVAL', 'empty_image', `--image ${opts.image} is empty`, 'image');
        const d = await createRollout(m, {
          ...(opts.id ? { id: opts.id } : {}),
          image,
          imageName: basename(opts.image),
          selector: opts.select,
          waves: opts.waves,
          abortFailureRate: rate,
          timeoutS,
          partBytes,
        });
        showDoc(opts, d, 'created');
        if (d.state !== 'running' || !opts.run) {
          if (opts.json) line({ type: 'result', ok: good(d) || d.state === 'running', rollout: d });
          return good(d) || d.state === 'running' ? 0 : 1;
        }
        return drive(opts, m, d.id);
      });
    });

  common(rollout.command('resume <id>'))
    .description('drive a paused rollout, or one whose controller is gone, from here')
    .action(async (id: string, opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, (m) => drive(opts, m, id));
    });

  common(rollout.command('watch <id>'))
    .description('follow a rollout document (waits for it to appear) until it stops running')
    .action(async (id: string, opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, (m) => watch(opts, m, id));
    });

  common(rollout.command('pause <id>'))
    .description('stop after the jobs already running; nothing new is started (resume continues)')
    .action(async (id: string, opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, async (m) => {
        showDoc(opts, await pauseRollout(m, id, 'fleet pause'), 'result');
        return 0;
      });
    });

  common(rollout.command('cancel <id>'))
    .description('end a rollout: gateways refuse its requests, running jobs are cancelled')
    .action(async (id: string, opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, async (m) => {
        showDoc(opts, await cancelRollout(m, id, token(opts), 'fleet cancel'), 'result');
        return 0;
      });
    });

  common(rollout.command('status <id>'))
    .description('the rollout document as it is now')
    .action(async (id: string, opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, async (m) => {
        const d = await readRollout(m, id);
        if (!d) throw new FleetError('ENOENT', 'no_such_rollout', `no rollout ${id} under ${m.prefix}/fleet/rollouts/`, 'id');
        if (opts.json) line({ type: 'result', ok: true, rollout: d });
        else {
          out(`${summary(d)}\n  image ${d.image.name} ${d.image.sha256}, selector ${d.selector}, waves ${d.waves_spec.join(',')}, abort over ${pct(d.abort_failure_rate)}, timeout ${d.timeout_s}s\n`);
          for (const w of d.waves) out(`  wave ${w.index + 1} (${w.spec}) ${w.state}: ${w.targets.map((t) => `${t.gateway}/${t.device}=${t.state}`).join(' ')}\n`);
          if (d.skipped.length) out(`  skipped (already current): ${d.skipped.map((t) => `${t.gateway}/${t.device}`).join(' ')}\n`);
        }
        return 0;
      });
    });

  common(rollout.command('list'))
    .description('every rollout document on the broker')
    .action(async (opts: CommonOpts) => {
      process.exitCode = await withBroker(opts, async (m) => {
        const all = await listRollouts(m);
        for (const d of all) {
          if ('error' in d) {
            if (opts.json) line({ type: 'invalid', id: d.id, error: d.error });
            else out(`${d.id} INVALID: ${d.error}\n`);
          } else if (opts.json) line({ type: 'rollout', rollout: d });
          else out(`${summary(d)}\n`);
        }
        if (opts.json) line({ type: 'result', ok: true, rollouts: all.length });
        return 0;
      });
    });
}
