/**
 * The VM loader model: the `vm_load_hxe` / `vm_load_begin/write/end/abort` contract of the HSX
 * executive, behind an interface so a real VM (or a remote one) can replace the in-process model.
 *
 * The engine owns the byte stream and the metadata; the VM only ever sees the stripped image
 * (entry, code, rodata, bss size). The mapping to the HSX calls:
 *   vm_load_begin  → reservePid()      a PID for a load in progress
 *   vm_load_end /
 *   vm_load_hxe    → load(pid, image)  allocate arenas, create the task
 *   vm_load_abort /
 *   unload         → release(pid)      free the PID and every arena block it holds
 */
import type { StrippedImage } from '../hxe/types.js';
import { err, ok, type Result } from '../hxe/result.js';
import { engineError, type EngineError } from './errors.js';

export type ArenaKind = 'code' | 'rodata' | 'data' | 'stack';
export const ARENA_KINDS: readonly ArenaKind[] = ['code', 'rodata', 'data', 'stack'];

export interface ArenaBlock {
  base: number;
  size: number;
}

export interface VmTask {
  pid: number;
  entry: number;
  arenas: Record<ArenaKind, ArenaBlock>;
  /** What was loaded into the code and rodata arenas (the VM's copy). */
  code: Uint8Array;
  rodata: Uint8Array;
}

export interface ArenaUsage {
  size: number;
  used: number;
  /** Largest single block that could still be allocated. */
  largestFree: number;
}

export interface VmUsage {
  /** PIDs in use: reserved for loads in progress plus tasks. */
  pids: number;
  reserved: number;
  tasks: number;
  arenas: Record<ArenaKind, ArenaUsage>;
}

export interface VmLoader {
  reservePid(): Result<number, EngineError>;
  load(pid: number, image: StrippedImage, stackBytes: number): Result<VmTask, EngineError>;
  release(pid: number): Result<void, EngineError>;
  task(pid: number): VmTask | undefined;
  tasks(): VmTask[];
  /** With `without`, the usage as if that task's arenas were already free (an update's budget check). */
  usage(without?: number): VmUsage;
}

/** First-fit allocator over one arena; blocks are kept sorted by base. */
class Arena {
  private blocks: Array<{ base: number; size: number; pid: number }> = [];
  private usedBytes = 0;

  constructor(
    readonly kind: ArenaKind,
    readonly size: number,
  ) {}

  allocate(pid: number, size: number): ArenaBlock | null {
    if (size === 0) return { base: 0, size: 0 };
    let cursor = 0;
    for (let i = 0; i <= this.blocks.length; i++) {
      const next = this.blocks[i];
      const gapEnd = next ? next.base : this.size;
      if (gapEnd - cursor >= size) {
        this.blocks.splice(i, 0, { base: cursor, size, pid });
        this.usedBytes += size;
        return { base: cursor, size };
      }
      if (next) cursor = next.base + next.size;
    }
    return null;
  }

  free(pid: number): void {
    const kept = this.blocks.filter((b) => b.pid !== pid);
    for (const b of this.blocks) if (b.pid === pid) this.usedBytes -= b.size;
    this.blocks = kept;
  }

  usage(without?: number): ArenaUsage {
    let largest = 0;
    let cursor = 0;
    let used = this.usedBytes;
    for (const b of this.blocks) {
      if (b.pid === without) {
        used -= b.size;
        continue;
      }
      largest = Math.max(largest, b.base - cursor);
      cursor = b.base + b.size;
    }
    largest = Math.max(largest, this.size - cursor);
    return { size: this.size, used, largestFree: largest };
  }
}

export interface InProcessVmOptions {
  arenas: Record<ArenaKind, number>;
  maxTasks: number;
  /** PIDs count up from 1 and wrap after this (skipping those in use), like the HSX executive's next_pid. */
  maxPid?: number;
}

export class InProcessVmLoader implements VmLoader {
  private readonly arenas: Record<ArenaKind, Arena>;
  private readonly reserved = new Set<number>();
  private readonly taskTable = new Map<number, VmTask>();
  private nextPid = 1;
  private readonly maxPid: number;

  constructor(private readonly options: InProcessVmOptions) {
    this.maxPid = options.maxPid ?? 0xffff;
    this.arenas = {
      code: new Arena('code', options.arenas.code),
      rodata: new Arena('rodata', options.arenas.rodata),
      data: new Arena('data', options.arenas.data),
      stack: new Arena('stack', options.arenas.stack),
    };
  }

  reservePid(): Result<number, EngineError> {
    const inUse = this.reserved.size + this.taskTable.size;
    if (inUse >= this.options.maxTasks || inUse >= this.maxPid) {
      return err(engineError('ENOSPC', 'begin', 'no_pid', `no free PID: ${inUse} of ${this.options.maxTasks} tasks in use`,
        { inUse, limit: this.options.maxTasks }));
    }
    while (this.reserved.has(this.nextPid) || this.taskTable.has(this.nextPid)) this.advancePid();
    const pid = this.nextPid;
    this.advancePid();
    this.reserved.add(pid);
    return ok(pid);
  }

  private advancePid(): void {
    this.nextPid = this.nextPid >= this.maxPid ? 1 : this.nextPid + 1;
  }

  load(pid: number, image: StrippedImage, stackBytes: number): Result<VmTask, EngineError> {
    if (!this.reserved.has(pid)) {
      return err(engineError(this.taskTable.has(pid) ? 'EBUSY' : 'ESRCH', 'end', this.taskTable.has(pid) ? 'task_exists' : 'unknown_pid',
        `PID ${pid} is not reserved for a load`, { pid }));
    }
    const wanted: Record<ArenaKind, number> = {
      code: image.code.length, rodata: image.rodata.length, data: image.bssSize, stack: stackBytes,
    };
    const got: Partial<Record<ArenaKind, ArenaBlock>> = {};
    for (const kind of ARENA_KINDS) {
      const block = this.arenas[kind].allocate(pid, wanted[kind]);
      if (!block) {
        // all or nothing: give back what this load already took
        for (const k of ARENA_KINDS) this.arenas[k].free(pid);
        const available = this.arenas[kind].usage().largestFree;
        return err(engineError('ENOSPC', 'end', 'arena_full',
          `${kind} arena: image needs ${wanted[kind]} bytes, ${available} available`,
          { arena: kind, required: wanted[kind], available }));
      }
      got[kind] = block;
    }
    this.reserved.delete(pid);
    const task: VmTask = {
      pid, entry: image.entry, arenas: got as Record<ArenaKind, ArenaBlock>, code: image.code, rodata: image.rodata,
    };
    this.taskTable.set(pid, task);
    return ok(task);
  }

  release(pid: number): Result<void, EngineError> {
    if (this.reserved.delete(pid)) return ok(undefined);
    if (!this.taskTable.delete(pid)) return err(engineError('ESRCH', 'end', 'unknown_pid', `unknown PID ${pid}`, { pid }));
    for (const kind of ARENA_KINDS) this.arenas[kind].free(pid);
    return ok(undefined);
  }

  task(pid: number): VmTask | undefined {
    return this.taskTable.get(pid);
  }

  tasks(): VmTask[] {
    return [...this.taskTable.values()];
  }

  usage(without?: number): VmUsage {
    return {
      pids: this.reserved.size + this.taskTable.size,
      reserved: this.reserved.size,
      tasks: this.taskTable.size,
      arenas: {
        code: this.arenas.code.usage(without), rodata: this.arenas.rodata.usage(without),
        data: this.arenas.data.usage(without), stack: this.arenas.stack.usage(without),
      },
    };
  }
}
