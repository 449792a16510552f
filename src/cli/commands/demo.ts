import type { Command } from 'commander';
import { runDemo } from '../../gateway/demo.js';

/** `hsx-gateway demo`: what `make run` runs. Exit 0 only when every step of the scenario succeeded. */
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
    .action(async (opts: { once?: boolean; json?: boolean; state?: string; keepState?: boolean; controlPort?: string; mqttPort?: string; httpPort?: string }) => {
      const port = (v: string | undefined, flag: string): number | undefined | null => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0 || n > 65535) {
          process.stderr.write(`demo: ${flag} must be 0..65535, got ${v}\n`);
          return null;
        }
        return n;
      };
      const controlPort = port(opts.controlPort, '--control-port');
      const mqttPort = port(opts.mqttPort, '--mqtt-port');
      const httpPort = port(opts.httpPort, '--http-port');
      if (controlPort === null || mqttPort === null || httpPort === null) {
        process.exitCode = 2;
        return;
      }
      const o: Parameters<typeof runDemo>[0] = { once: !!opts.once, json: !!opts.json, keepState: !!opts.keepState };
      if (opts.state) o.stateDir = opts.state;
      if (controlPort !== undefined) o.controlPort = controlPort;
      if (mqttPort !== undefined) o.mqttPort = mqttPort;
      if (httpPort !== undefined) o.httpPort = httpPort;
      try {
        const r = await runDemo(o);
        process.exitCode = r.ok ? 0 : 1;
      } catch (e) {
        process.stderr.write(`demo: ${(e as Error).message}\n`);
        process.exitCode = 1;
      }
    });
}
