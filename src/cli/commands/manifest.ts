import type { Command } from 'commander';

/**
 * Every subcommand by name, with the one-line description `--help` shows and how to load it. The CLI
 * imports a command's module only when that command runs (main.ts): `--help` lists these lines
 * without importing any, and `inspect` never loads the gateway, MQTT or the link layers. The
 * descriptions must match what each module registers (test/cli-startup.test.ts checks it);
 * `registerAll` (index.ts) still registers everything at once for in-process tests.
 */
export interface CommandEntry {
  name: string;
  description: string;
  load(): Promise<(program: Command) => void>;
}

export const COMMANDS: readonly CommandEntry[] = [
  { name: 'flash', description: 'flash an image to a device (master role) over UART or CAN', load: async () => (await import('./flash.js')).registerFlash },
  { name: 'device', description: 'run a simulated device (listener role) on a UART port or CAN interface', load: async () => (await import('./device.js')).registerDevice },
  { name: 'can', description: 'CAN bus tools: value GET/SET on a node', load: async () => (await import('./can.js')).registerCan },
  { name: 'flash-info', description: 'show a device flash/FRAM file: layout, slots, manifest, wear, persisted values', load: async () => (await import('./flash-info.js')).registerFlashInfo },
  { name: 'keygen', description: 'generate an Ed25519 image-signing key pair (NAME.key mode 0600, NAME.pub)', load: async () => (await import('./keygen.js')).registerKeygen },
  { name: 'sign', description: 'sign an .hxe image with an Ed25519 key (appends the signature trailer)', load: async () => (await import('./sign.js')).registerSign },
  { name: 'verify', description: 'verify an image and its signature against a trusted keys directory', load: async () => (await import('./verify.js')).registerVerify },
  { name: 'inspect', description: 'verify an .hxe image and describe its header and metadata sections', load: async () => (await import('./inspect.js')).registerInspect },
  { name: 'pack', description: 'build an .hxe image from a TOML or JSON spec', load: async () => (await import('./pack.js')).registerPack },
  { name: 'ps', description: 'list the tasks loaded on every device of a gateway (asks the control server)', load: async () => (await import('./ps.js')).registerPs },
  { name: 'status', description: 'provisioning status of a task, or of all tasks (asks the control server)', load: async () => (await import('./status.js')).registerStatus },
  { name: 'persist', description: 'persist a loaded task\'s image to the device (asks the control server; operator role)', load: async () => (await import('./persist.js')).registerPersist },
  { name: 'rollback', description: 'roll a device back to its previous image (asks the control server; admin role)', load: async () => (await import('./rollback.js')).registerRollback },
  { name: 'val', description: 'read and write a device\'s registered values (asks the control server; set: operator role)', load: async () => (await import('./val.js')).registerVal },
  { name: 'serve', description: 'run the gateway daemon from a configuration file', load: async () => (await import('./serve.js')).registerServe },
  { name: 'demo', description: 'flash simulated devices over CAN and UART, show persistence across a power cycle, serve until Ctrl-C', load: async () => (await import('./demo.js')).registerDemo },
  { name: 'scan', description: 'list the devices on a CAN bus or UART link and what each runs (app, version, SHA-256, slots)', load: async () => (await import('./scan.js')).registerScan },
  { name: 'job', description: 'jobs on a gateway\'s master links: submit, list, status, cancel, watch (asks the control server)', load: async () => (await import('./job.js')).registerJob },
  { name: 'fleet', description: 'rollouts across gateways over their MQTT broker (docs/fleet.md)', load: async () => (await import('./fleet.js')).registerFleet },
];

/**
 * The subcommand `argv` (after `node main.js`) runs: its first word that is not an option, or the
 * one after `help`. Undefined: no command (`--help`, `--version`, nothing).
 */
export function commandNamed(argv: readonly string[]): CommandEntry | undefined {
  const words = argv.filter((a) => !a.startsWith('-'));
  const name = words[0] === 'help' ? words[1] : words[0];
  return COMMANDS.find((c) => c.name === name);
}

/**
 * Registers `chosen` for real (its module loaded) and every other command as a stub that only
 * names itself for `--help`; the order is the manifest's, so help reads the same whatever runs.
 */
export async function registerFor(program: Command, chosen: CommandEntry | undefined): Promise<void> {
  for (const c of COMMANDS) {
    if (c === chosen) (await c.load())(program);
    else program.command(c.name).description(c.description);
  }
}
