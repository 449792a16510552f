import type { Command } from 'commander';
import { registerFlash } from './flash.js';
import { registerDevice } from './device.js';

/**
 * Every subcommand lives in its own module and registers itself here, one line each,
 * so adding a command never touches another command's code.
 */
type Register = (program: Command) => void;

const registrations: Register[] = [
  // (subcommands are added here, one import each)
  registerFlash,
  registerDevice,
];

export function registerAll(program: Command): void {
  for (const register of registrations) register(program);
}
