import type { Command } from 'commander';
import { loadConfig } from '../../gateway/config.js';
import { EXIT, errorLine, logFormatOption, usageError } from '../output.js';

/** `serve` is gone within this long of the first SIGINT/SIGTERM, whatever the broker, links or clients do. */
export const STOP_DEADLINE_MS = 5_000;

/**
 * The exit code of a stop that finished in time but could not flush everything (MQTT messages the
 * broker never took, a journal or device file not closed, an aborted transfer, replies a client did
 * not read): each is named on its own `unflushed` line first. 0 is kept for a stop that lost nothing.
 */
export const STOP_UNFLUSHED_EXIT = 4;

/**
 * `hsx-gateway serve`: the daemon. The first SIGINT/SIGTERM stops cleanly (aborts in-flight
 * transfers, flushes MQTT, closes device files) within STOP_DEADLINE_MS, and says what it could
 * not flush; a second one exits at once (code 130 for SIGINT, 143 for SIGTERM). Exit codes of a
 * stop: 0 everything flushed, STOP_UNFLUSHED_EXIT (4) something not flushed, 1 the stop failed or
 * missed its deadline.
 *
 * Start-up order: the options and the configuration are checked first, with nothing but the config
 * reader loaded; only then are the gateway, its links, MQTT and the broker imported. A bad config
 * exits 2 at once, whatever bus backend it names (test/cli-daemon-start.test.ts counts the modules).
 */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the gateway daemon from a configuration file')
    .requiredOption('--config <file>', 'gateway configuration (TOML)')
    .option('--control-port <n>', 'override the control server port (0 picks a free one)')
    .option('--mqtt-url <url>', 'override the MQTT broker URL')
    .option('--http-port <n>', 'serve the live page and /metrics on this port (0 picks a free one); overrides [http] port')
    .option('--json', 'print start-up and shutdown as JSON lines')
    .option('--log-format <fmt>', 'log lines on stderr: pretty (human) or json (default: pretty on a terminal, json otherwise)')
    .action(async (opts: { config: string; controlPort?: string; mqttUrl?: string; httpPort?: string; json?: boolean; logFormat?: string }) => {
      const out = (obj: Record<string, unknown>, human: string) => process.stdout.write((opts.json ? JSON.stringify(obj) : human) + '\n');
      const json = !!opts.json;
      const logFormat = logFormatOption(opts.logFormat);
      if (logFormat === null) {
        process.exitCode = usageError(json, 'serve', `--log-format must be pretty or json, got ${opts.logFormat}`, 'bad_option', { option: '--log-format' });
        return;
      }
      let controlPort: number | undefined;
      if (opts.controlPort !== undefined) {
        controlPort = Number(opts.controlPort);
        if (!/^\d{1,5}$/.test(opts.controlPort) || controlPort > 65535) {
          process.exitCode = usageError(json, 'serve', `--control-port must be 0..65535, got ${opts.controlPort}`, 'bad_option', { option: '--control-port' });
          return;
        }
      }
      let httpPort: number | undefined;
      if (opts.httpPort !== undefined) {
        httpPort = Number(opts.httpPort);
        if (!/^\d{1,5}$/.test(opts.httpPort) || httpPort > 65535) {
          process.exitCode = usageError(json, 'serve', `--http-port must be 0..65535, got ${opts.httpPort}`, 'bad_option', { option: '--http-port' });
          return;
        }
      }
      const cfg = loadConfig(opts.config);
      if (!cfg.ok) {
        if (json) process.stdout.write(errorLine('ECONFIG', 'invalid_config', cfg.error.message, { file: cfg.error.file, problems: cfg.error.problems }));
        else process.stderr.write(cfg.error.message + '\n');
        process.exitCode = EXIT.USAGE;
        return;
      }
      // Only a valid configuration loads the gateway (links, MQTT, the broker, persistence).
      const [{ Gateway }, { createLogger }, { allTopics }] = await Promise.all([
        import('../../gateway/gateway.js'),
        import('../../gateway/logger.js'),
        import('../../gateway/mqtt/topics.js'),
      ]);
      const log = createLogger(cfg.value.gateway.log_level, logFormat ? { format: logFormat } : {});
      const overrides: { controlPort?: number; mqttUrl?: string; httpPort?: number } = {};
      if (controlPort !== undefined) overrides.controlPort = controlPort;
      if (httpPort !== undefined) overrides.httpPort = httpPort;
      if (opts.mqttUrl) overrides.mqttUrl = opts.mqttUrl;
      const started = await Gateway.start(cfg.value, log, overrides);
      if (!started.ok) {
        if (json) process.stdout.write(errorLine(started.error.code, 'start_failed', started.error.message, { component: started.error.component }));
        else process.stderr.write(`serve: ${started.error.component}: ${started.error.message}\n`);
        process.exitCode = EXIT.FAILED;
        return;
      }
      const gw = started.value;
      const addr = gw.controlAddress();
      const http = gw.httpAddress();
      const topics = allTopics({ prefix: cfg.value.mqtt?.topic_prefix ?? 'hsx', gatewayId: cfg.value.gateway.id });
      let t0 = 0;
      const code = await new Promise<number>((resolve) => {
        let stopping = false;
        const onSignal = (sig: NodeJS.Signals) => {
          if (stopping) {
            const code = sig === 'SIGINT' ? 130 : 143;
            out(
              { type: 'exit', reason: 'second_signal', signal: sig, code, stopping: gw.stopping, elapsed_ms: Date.now() - t0 },
              `serve: second ${sig}; exiting now without finishing the stop (${gw.stopping ?? 'nearly done'}), exit code ${code}`,
            );
            process.exit(code);
          }
          stopping = true;
          t0 = Date.now();
          out({ type: 'stopping', signal: sig, deadline_ms: STOP_DEADLINE_MS }, `serve: ${sig}: stopping within ${STOP_DEADLINE_MS / 1000} s (again to exit at once)`);
          // The backstop: every step of stop() is bounded, but nothing may keep us past the deadline.
          const backstop = setTimeout(() => {
            out(
              { type: 'exit', reason: 'stop_deadline', stopping: gw.stopping, code: 1, elapsed_ms: Date.now() - t0 },
              `serve: not stopped within ${STOP_DEADLINE_MS / 1000} s (still ${gw.stopping ?? 'finishing'}); exiting, exit code 1`,
            );
            process.exit(1);
          }, STOP_DEADLINE_MS - 250);
          void gw.stop({ timeoutMs: STOP_DEADLINE_MS - 1_000 }).then(
            (report) => {
              clearTimeout(backstop);
              for (const u of report.unflushed) out({ type: 'unflushed', component: u.component, what: u.what }, `serve: not flushed: ${u.component}: ${u.what}`);
              const code = report.clean ? 0 : STOP_UNFLUSHED_EXIT;
              out(
                { type: 'stopped', clean: report.clean, unflushed: report.unflushed, elapsed_ms: report.elapsedMs, code },
                `serve: stopped in ${report.elapsedMs} ms` + (report.clean ? '' : ` (${report.unflushed.length} item(s) not flushed, see above); exit code ${code}`),
              );
              resolve(code);
            },
            (e: Error) => {
              clearTimeout(backstop);
              out({ type: 'stopped', clean: false, error: e.message, elapsed_ms: Date.now() - t0 }, `serve: stop failed: ${e.message}`);
              resolve(1);
            },
          );
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
        // Only now: whoever reacts to this line with a signal must find the handlers in place.
        out(
          {
            type: 'serving', gateway: cfg.value.gateway.id, control: addr, http, mqtt: gw.bridge ? topics : null, devices: [...gw.devices.keys()],
            links: [...gw.flashers.keys()], jobs: gw.jobs ? 'enabled' : 'disabled',
            inventory: Object.fromEntries((gw.inventory?.all() ?? []).map((i) => [i.link, i.entries.map((e) => e.target)])),
            recovered: gw.jobs ? { interrupted: gw.jobs.recovery.interrupted, requeued: gw.jobs.recovery.requeued } : null,
            pid: process.pid,
          },
          `gateway ${cfg.value.gateway.id} serving: control ${addr?.host}:${addr?.port}, devices ${[...gw.devices.keys()].join(', ') || '(none)'}` +
            (gw.flashers.size ? `, master links ${[...gw.flashers.keys()].join(', ')} (jobs ${gw.jobs ? 'on' : 'off: no [gateway] state_dir'})` : '') +
            (gw.jobs?.recovery.interrupted.length ? `, ${gw.jobs.recovery.interrupted.length} job(s) interrupted by the last stop: ${gw.jobs.recovery.interrupted.join(', ')}` : '') +
            (gw.bridge ? `, MQTT topics ${topics}` : '') +
            (http ? `, live page http://${http.host}:${http.port}/ (metrics at /metrics)` : ''),
        );
      });
      // Whatever still holds the event loop (a broker socket, a reconnect timer) must not keep us.
      process.exit(code);
    });
}
