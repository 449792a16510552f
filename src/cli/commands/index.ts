import type { Command } from 'commander';
import { registerFlash } from './flash.js';
import { registerDevice } from './device.js';
import { registerCan } from './can.js';
import { registerFlashInfo } from './flash-info.js';
import { registerKeygen } from './keygen.js';
import { registerSign } from './sign.js';
import { registerVerify } from './verify.js';
import { registerInspect } from './inspect.js';
import { registerPack } from './pack.js';
import { registerPs } from './ps.js';
import { registerStatus } from './status.js';
import { registerPersist } from './persist.js';
import { registerRollback } from './rollback.js';
import { registerServe } from './serve.js';
import { registerDemo } from './demo.js';
import { registerScan } from './scan.js';
import { registerJob } from './job.js';
import { registerVal } from './val.js';
import { registerFleet } from './fleet.js';

/**
 * Every subcommand lives in its own module and registers itself here, one line each,
 * so adding a command never touches another command's code.
 */
type Register = (program: Command) => void;

const registrations: Register[] = [
  // (subcommands are added here, one import each)
  registerFlash,
  registerDevice,
  registerCan,
  registerFlashInfo,
  registerKeygen,
  registerSign,
  registerVerify,
  registerInspect,
  registerPack,
  registerPs,
  registerStatus,
  registerPersist,
  registerRollback,
  registerServe,
  registerDemo,
  registerScan,
  registerJob,
  registerVal,
  registerFleet,
];

export function registerAll(program: Command): void {
  for (const register of registrations) register(program);
}
