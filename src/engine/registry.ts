/**
 * Metadata registries: `.value`, `.cmd` and `.mailbox` entries of every loaded task, with the HSX
 * desktop profile's limits. Values and commands share one OID space each across all tasks
 * (`oid = group << 8 | id`, what GET/SET and exec address); mailboxes are descriptors owned by a PID.
 *
 * Registration is all-or-nothing by construction: `register` first checks every entry of the load
 * against the limits and the current contents, and only then applies them; `release(pid)` removes
 * everything a task owns. (The HSX reference registers entry by entry and leaves the earlier ones
 * behind when a later one fails.)
 */
import { COMMAND_FLAGS, decodeF16, MAILBOX_DEFAULT_CAPACITY, VALUE_FLAGS } from '../hxe/index.js';
import type { CommandEntry, HxeImage, MailboxEntry, ValueEntry } from '../hxe/types.js';
import { err, ok, type Result } from '../hxe/result.js';
import { engineError, type EngineError } from './errors.js';

export interface RegistryLimits {
  maxValues: number;
  maxCommands: number;
  stringTableBytes: number;
  maxMailboxes: number;
  maxNameBytes: number;
}

export const oidOf = (group: number, id: number): number => ((group & 0xff) << 8) | (id & 0xff);

/** A `.value` declaration as registered: its address, its owner and its live state added. */
export interface RegisteredValue extends ValueEntry {
  oid: number;
  pid: number;
  /** A non-zero persist key implies PERSIST (HSX design); 0xFFFF is reserved and never persisted. */
  persisted: boolean;
  readOnly: boolean;
  /** Current value, f16 raw bits. */
  raw: number;
}

/** A `.cmd` declaration as registered (the rebuild-only `reserved` bits are not kept). */
export interface RegisteredCommand extends Omit<CommandEntry, 'reserved'> {
  oid: number;
  pid: number;
  pinned: boolean;
  async: boolean;
}

/** A `.mailbox` declaration as registered under a descriptor (the verbatim JSON `source` is not kept). */
export interface RegisteredMailbox extends Omit<MailboxEntry, 'source'> {
  descriptor: number;
  pid: number;
}

export interface RegistryCounts {
  values: number;
  commands: number;
  mailboxes: number;
  stringBytes: number;
}

interface Owned {
  values: number[];
  commands: number[];
  mailboxes: number[];
  stringBytes: number;
}

const utf8 = new TextEncoder();
const byteLength = (s: string | null): number => (s === null ? 0 : utf8.encode(s).length);
const stringCost = (s: string | null): number => (s === null || s === '' ? 0 : byteLength(s) + 1);

export function isPersistedValue(v: Pick<ValueEntry, 'persistKey'>): boolean {
  return v.persistKey !== 0 && v.persistKey !== 0xffff;
}

/**
 * What the value store records with a persisted value, so a changed declaration is detected:
 * the type (bool or f16) and the declared range in raw bits.
 */
export function valueSchemaOf(v: Pick<ValueEntry, 'flags' | 'min' | 'max'>): { valueType: string } {
  const type = v.flags & VALUE_FLAGS.BOOL ? 'bool' : 'f16';
  return { valueType: `${type}[0x${v.min.raw.toString(16).padStart(4, '0')},0x${v.max.raw.toString(16).padStart(4, '0')}]` };
}

/** A declared range is one whose min and max are not both zero (HSX: 0/0 means unbounded). */
export function rangeCheck(v: Pick<RegisteredValue, 'min' | 'max'>, raw: number): { ok: true } | { ok: false; value: number } {
  const value = decodeF16(raw);
  if (Number.isNaN(value)) return { ok: false, value };
  if (v.min.raw === 0 && v.max.raw === 0) return { ok: true };
  if (value < v.min.value || value > v.max.value) return { ok: false, value };
  return { ok: true };
}

export class MetadataRegistry {
  private readonly values = new Map<number, RegisteredValue>();
  private readonly commands = new Map<number, RegisteredCommand>();
  private readonly mailboxes = new Map<number, RegisteredMailbox>();
  private readonly owned = new Map<number, Owned>();
  private stringBytes = 0;

  constructor(private readonly limits: RegistryLimits) {}

  /**
   * Checks the whole load, then applies it. `initOverrides` (oid → raw) carries persisted values
   * restored over the declared init values.
   */
  register(pid: number, image: HxeImage, initOverrides?: ReadonlyMap<number, number>): Result<RegistryCounts, EngineError> {
    if (this.owned.has(pid)) return err(engineError('EBUSY', 'register', 'pid_registered', `PID ${pid} already has registrations`, { pid }));
    const checked = this.check(image);
    if (!checked.ok) return checked;
    const own: Owned = { values: [], commands: [], mailboxes: [], stringBytes: checked.value };
    for (const v of image.values) this.addValue(pid, v, own, initOverrides);
    for (const c of image.commands) this.addCommand(pid, c, own);
    for (const m of image.mailboxes) this.addMailbox(pid, m, own);
    this.stringBytes += own.stringBytes;
    this.owned.set(pid, own);
    return ok({ values: own.values.length, commands: own.commands.length, mailboxes: own.mailboxes.length, stringBytes: own.stringBytes });
  }

  /**
   * Whether `image` could be registered once `without` (the task an update replaces) has released
   * its entries: every limit and conflict, nothing changed.
   */
  checkReplacing(image: HxeImage, without: number | null): Result<number, EngineError> {
    return this.check(image, without);
  }

  /**
   * The PIDs whose registrations `image` collides with (values, commands, mailbox targets): an
   * update replaces a task whose entries are the only ones in the way.
   */
  collisions(image: HxeImage): Map<number, string[]> {
    const out = new Map<number, string[]>();
    const add = (pid: number, what: string) => out.set(pid, [...(out.get(pid) ?? []), what]);
    for (const v of image.values) {
      const r = this.values.get(oidOf(v.group, v.id));
      if (r) add(r.pid, `value (${v.group},${v.id})`);
    }
    for (const c of image.commands) {
      const r = this.commands.get(oidOf(c.group, c.id));
      if (r) add(r.pid, `command (${c.group},${c.id})`);
    }
    return out;
  }

  /** Every limit and conflict, with nothing changed; returns the string-table bytes the load needs. */
  private check(image: HxeImage, without: number | null = null): Result<number, EngineError> {
    const L = this.limits;
    const freed = without === null ? null : this.owned.get(without) ?? null;
    const fv = freed?.values.length ?? 0;
    const fc = freed?.commands.length ?? 0;
    const fm = freed?.mailboxes.length ?? 0;
    const fs = freed?.stringBytes ?? 0;
    const full = (what: string, reason: string, inUse: number, requested: number, limit: number) =>
      err(engineError('ENOSPC', 'register', reason, `${what} registry full: ${inUse} in use + ${requested} requested > ${limit}`,
        { inUse, requested, limit }));
    if (this.values.size - fv + image.values.length > L.maxValues) return full('value', 'values_full', this.values.size - fv, image.values.length, L.maxValues);
    if (this.commands.size - fc + image.commands.length > L.maxCommands) return full('command', 'commands_full', this.commands.size - fc, image.commands.length, L.maxCommands);
    if (this.mailboxes.size - fm + image.mailboxes.length > L.maxMailboxes) return full('mailbox', 'mailboxes_full', this.mailboxes.size - fm, image.mailboxes.length, L.maxMailboxes);

    const values = this.checkAddressed('value', this.values, image.values,
      (v) => stringCost(v.name) + stringCost(v.unit) + stringCost(v.groupName), without);
    if (!values.ok) return values;
    const commands = this.checkAddressed('command', this.commands, image.commands,
      (c) => stringCost(c.name) + stringCost(c.help) + stringCost(c.groupName), without);
    if (!commands.ok) return commands;
    const strings = values.value + commands.value;

    const targets = new Set<string>();
    for (const m of image.mailboxes) {
      if (targets.has(m.target)) {
        return err(engineError('EEXIST', 'register', 'mailbox_exists', `mailbox "${m.target}" is declared twice`, { target: m.target }));
      }
      targets.add(m.target);
      const e = this.nameTooLong('mailbox', m.target);
      if (e) return err(e);
    }
    if (this.stringBytes - fs + strings > L.stringTableBytes) {
      return err(engineError('ENOSPC', 'register', 'string_table_full',
        `string table full: ${this.stringBytes - fs} bytes in use + ${strings} requested > ${L.stringTableBytes}`,
        { inUse: this.stringBytes - fs, requested: strings, limit: L.stringTableBytes }));
    }
    return ok(strings);
  }

  /**
   * Values and commands alike: no (group, id) already registered or declared twice in the image,
   * names within the limit. Returns the string-table bytes the entries need.
   */
  private checkAddressed<E extends { group: number; id: number; name: string | null }>(
    kind: 'value' | 'command', registered: ReadonlyMap<number, { pid: number }>, entries: readonly E[], stringBytes: (e: E) => number,
    without: number | null,
  ): Result<number, EngineError> {
    let strings = 0;
    const seen = new Set<number>();
    for (const e of entries) {
      const oid = oidOf(e.group, e.id);
      const found = registered.get(oid);
      const clash = found && found.pid !== without ? found : undefined;
      if (clash || seen.has(oid)) {
        return err(engineError('EEXIST', 'register', `${kind}_exists`, `${kind} (${e.group},${e.id}) is already registered${clash ? ` by PID ${clash.pid}` : ' twice in this image'}`,
          { oid, group: e.group, id: e.id, ownerPid: clash?.pid ?? null }));
      }
      seen.add(oid);
      const long = this.nameTooLong(kind, e.name);
      if (long) return err(long);
      strings += stringBytes(e);
    }
    return ok(strings);
  }

  private nameTooLong(kind: string, name: string | null): EngineError | null {
    const bytes = byteLength(name);
    const limit = this.limits.maxNameBytes;
    return bytes > limit
      ? engineError('EBADMSG', 'register', 'name_too_long', `${kind} name "${name}" is ${bytes} bytes, limit ${limit}`, { kind, name, bytes, limit })
      : null;
  }

  private addValue(pid: number, v: ValueEntry, own: Owned, initOverrides?: ReadonlyMap<number, number>): void {
    const oid = oidOf(v.group, v.id);
    const persisted = isPersistedValue(v);
    this.values.set(oid, {
      oid, pid, group: v.group, id: v.id, flags: persisted ? v.flags | VALUE_FLAGS.PERSIST : v.flags, auth: v.auth,
      name: v.name, unit: v.unit, groupName: v.groupName, init: v.init, epsilon: v.epsilon, min: v.min, max: v.max,
      persistKey: v.persistKey, persisted, readOnly: (v.flags & VALUE_FLAGS.RO) !== 0,
      raw: initOverrides?.get(oid) ?? v.init.raw,
    });
    own.values.push(oid);
  }

  private addCommand(pid: number, c: CommandEntry, own: Owned): void {
    const oid = oidOf(c.group, c.id);
    this.commands.set(oid, {
      oid, pid, group: c.group, id: c.id, flags: c.flags, auth: c.auth, handlerOffset: c.handlerOffset,
      name: c.name, help: c.help, groupName: c.groupName,
      pinned: (c.flags & COMMAND_FLAGS.PIN) !== 0, async: (c.flags & COMMAND_FLAGS.ASYNC) !== 0,
    });
    own.commands.push(oid);
  }

  private addMailbox(pid: number, m: MailboxEntry, own: Owned): void {
    let descriptor = 0;
    while (this.mailboxes.has(descriptor)) descriptor++;
    const entry: RegisteredMailbox = {
      descriptor, pid, target: m.target, capacity: m.capacity > 0 ? m.capacity : MAILBOX_DEFAULT_CAPACITY, mode: m.mode,
    };
    if (m.extra) entry.extra = m.extra;
    this.mailboxes.set(descriptor, entry);
    own.mailboxes.push(descriptor);
  }

  /** Removes everything `pid` registered; returns how many entries went. */
  release(pid: number): number {
    const own = this.owned.get(pid);
    if (!own) return 0;
    for (const oid of own.values) this.values.delete(oid);
    for (const oid of own.commands) this.commands.delete(oid);
    for (const d of own.mailboxes) this.mailboxes.delete(d);
    this.stringBytes -= own.stringBytes;
    this.owned.delete(pid);
    return own.values.length + own.commands.length + own.mailboxes.length;
  }

  value(oid: number): RegisteredValue | undefined {
    return this.values.get(oid);
  }

  command(oid: number): RegisteredCommand | undefined {
    return this.commands.get(oid);
  }

  valuesOf(pid: number): RegisteredValue[] {
    return (this.owned.get(pid)?.values ?? []).map((oid) => this.values.get(oid)!);
  }

  commandsOf(pid: number): RegisteredCommand[] {
    return (this.owned.get(pid)?.commands ?? []).map((oid) => this.commands.get(oid)!);
  }

  mailboxesOf(pid: number): RegisteredMailbox[] {
    return (this.owned.get(pid)?.mailboxes ?? []).map((d) => this.mailboxes.get(d)!);
  }

  counts(): RegistryCounts {
    return { values: this.values.size, commands: this.commands.size, mailboxes: this.mailboxes.size, stringBytes: this.stringBytes };
  }

  owners(): number[] {
    return [...this.owned.keys()];
  }
}
