import type { Command } from 'commander';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../gateway/config.js';
import { EXIT, errorLine, logFormatOption, usageError } from '../output.js';

/** configs/demo.toml of this checkout (src/cli/commands or dist/cli/commands: three levels up). */
const DEMO_CONFIG = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..'), 'configs', 'demo.toml');

/**
 * `hsx-gateway demo`: what `make run` runs. Exit 0 only when every step of the scenario succeeded.
 * The options and the configuration are checked before the demo (gateway, links, MQTT, broker) is
 * imported, so a bad config exits 2 at once.
 */
export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('flash simulated devices over CAN and UART, show persistence across a power cycle, serve until Ctrl-C')
    .option('--once', 'exit after the scenario instead of serving')
    .option('--json', 'JSON lines instead of progress bars and tables')
    .option('--state <dir>', 'where the simulated devices keep their flash and FRAM files (default .demo-state)')
    .option('--keep-state', 'do not wipe the state directory first')
    .option('--control-port <n>', 'control server port (default 9998; 0 picks a free one)')
    .option('--mqtt-port <n>', 'embedded MQTT broker port (default 1883; 0 picks a free one)')
    .option('--http-port <n>', 'also serve the live page and /metrics on this port (0 picks a free one)')
    .option('--config <file>', 'the demo gateway configuration (default configs/demo.toml)')
    .option('--log-format <fmt>', 'log lines on stderr: pretty (human) or json (default: pretty on a terminal, json otherwise)')
    .action(async (opts: { once?: boolean; json?: boolean; state?: string; keepState?: boolean; controlPort?: string; mqttPort?: string; httpPort?: string; config?: string; logFormat?: string }) => {
      const json = !!opts.json;
      const port = (v: string | undefined, flag: string): number | undefined | null => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!/^\d{1,5}$/.test(v) || n > 65535) {
          usageError(json, 'demo', `${flag} must be 0..65535, got ${v}`, 'bad_option', { option: flag });
          return null;
        }
        return n;
      };
      const controlPort = port(opts.controlPort, '--control-port');
      if (controlPort === null) return void (process.exitCode = EXIT.USAGE);
      const mqttPort = port(opts.mqttPort, '--mqtt-port');
      if (mqttPort === null) return void (process.exitCode = EXIT.USAGE);
      const httpPort = port(opts.httpPort, '--http-port');
      if (httpPort === null) return void (process.exitCode = EXIT.USAGE);
      const logFormat = logFormatOption(opts.logFormat);
      if (logFormat === null) {
        process.exitCode = usageError(json, 'demo', `--log-format must be pretty or json, got ${opts.logFormat}`, 'bad_option', { option: '--log-format' });
        return;
      }
      const cfg = loadConfig(opts.config ?? DEMO_CONFIG);
      if (!cfg.ok) {
        if (json) process.stdout.write(errorLine('ECONFIG', 'invalid_config', cfg.error.message, { file: cfg.error.file, problems: cfg.error.problems }));
        else process.stderr.write(`demo: ${cfg.error.message}\n`);
        process.exitCode = EXIT.USAGE;
        return;
      }
      const { runDemo } = await import('../../gateway/demo.js');
      const o: Parameters<typeof runDemo>[0] = { once: !!opts.once, json, keepState: !!opts.keepState, config: cfg.value };
      if (logFormat) o.logFormat = logFormat;
      if (opts.state) o.stateDir = opts.state;
      if (controlPort !== undefined) o.controlPort = controlPort;
      if (mqttPort !== undefined) o.mqttPort = mqttPort;
      if (httpPort !== undefined) o.httpPort = httpPort;
      try {
        const r = await runDemo(o);
        process.exitCode = r.ok ? 0 : 1;
      } catch (e) {
        if (json) process.stdout.write(errorLine('EIO', 'demo_failed', (e as Error).message));
        else process.stderr.write(`demo: ${(e as Error).message}\n`);
        process.exitCode = EXIT.FAILED;
      }
    });
}
