import type { Command } from 'commander';
import { loadConfig } from '../../gateway/config.js';
import { Gateway } from '../../gateway/gateway.js';
import { createLogger } from '../../gateway/logger.js';
import { allTopics } from '../../gateway/mqtt/topics.js';

/**
 * `hsx-gateway serve`: the daemon. The first SIGINT/SIGTERM stops cleanly (aborts in-flight
 * transfers, flushes MQTT, closes device files); a second one exits at once.
 */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the gateway daemon from a configuration file')
    .requiredOption('--config <file>', 'gateway configuration (TOML)')
    .option('--control-port <n>', 'override the control server port (0 picks a free one)')
    .option('--mqtt-url <url>', 'override the MQTT broker URL')
    .option('--json', 'print start-up and shutdown as JSON lines')
    .action(async (opts: { config: string; controlPort?: string; mqttUrl?: string; json?: boolean }) => {
      const out = (obj: Record<string, unknown>, human: string) => process.stdout.write((opts.json ? JSON.stringify(obj) : human) + '\n');
      const cfg = loadConfig(opts.config);
      if (!cfg.ok) {
        process.stderr.write(cfg.error.message + '\n');
        process.exitCode = 2;
        return;
      }
      let controlPort: number | undefined;
      if (opts.controlPort !== undefined) {
        controlPort = Number(opts.controlPort);
        if (!Number.isInteger(controlPort) || controlPort < 0 || controlPort > 65535) {
          process.stderr.write(`serve: --control-port must be 0..65535, got ${opts.controlPort}\n`);
          process.exitCode = 2;
          return;
        }
      }
      const log = createLogger(cfg.value.gateway.log_level);
      const overrides: { controlPort?: number; mqttUrl?: string } = {};
      if (controlPort !== undefined) overrides.controlPort = controlPort;
      if (opts.mqttUrl) overrides.mqttUrl = opts.mqttUrl;
      const started = await Gateway.start(cfg.value, log, overrides);
      if (!started.ok) {
        process.stderr.write(`serve: ${started.error.component}: ${started.error.message}\n`);
        process.exitCode = 1;
        return;
      }
      const gw = started.value;
      const addr = gw.controlAddress();
      const topics = allTopics({ prefix: cfg.value.mqtt?.topic_prefix ?? 'hsx', gatewayId: cfg.value.gateway.id });
      out(
        { type: 'serving', gateway: cfg.value.gateway.id, control: addr, mqtt: gw.bridge ? topics : null, devices: [...gw.devices.keys()], pid: process.pid },
        `gateway ${cfg.value.gateway.id} serving: control ${addr?.host}:${addr?.port}, devices ${[...gw.devices.keys()].join(', ') || '(none)'}` +
          (gw.bridge ? `, MQTT topics ${topics}` : ''),
      );
      await new Promise<void>((resolve) => {
        let stopping = false;
        const onSignal = (sig: NodeJS.Signals) => {
          if (stopping) {
            process.stderr.write(`serve: second ${sig}; exiting now\n`);
            process.exit(130);
          }
          stopping = true;
          out({ type: 'stopping', signal: sig }, `serve: ${sig}: stopping (again to exit at once)`);
          void gw.stop().then(resolve, (e: Error) => {
            process.stderr.write(`serve: stop failed: ${e.message}\n`);
            process.exitCode = 1;
            resolve();
          });
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      });
      out({ type: 'stopped' }, 'serve: stopped');
    });
}
