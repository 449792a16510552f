/**
 * The HSX reference executive's reply shapes for what a provisioning gateway knows without running
 * code: an image's metadata as `load` reports it, the task rows of `ps`, the `info` document, the
 * mailbox descriptors of `mailbox_snapshot` and `list`, the command rows of `cmd.list`. Field names
 * and types follow the recorded shell transcript (docs/executive_protocol.md, "The reference's
 * commands"); what only a VM has (registers, the scheduler, step counters) is given the value an
 * idle, never-scheduled task has in the reference (zeros, `false`, empty lists, `null`).
 */
import { parseImage } from '../../hxe/parse.js';
import type { CommandEntry, HxeImage, MailboxEntry, ValueEntry } from '../../hxe/types.js';
import type { RegisteredCommand, RegisteredMailbox, RegisteredValue } from '../../engine/registry.js';

/** The registries' read side, as the engine exposes it (`ProvisioningEngine.metadata`). */
export interface MetadataView {
  value(oid: number): RegisteredValue | undefined;
  command(oid: number): RegisteredCommand | undefined;
  valuesOf(pid: number): RegisteredValue[];
  commandsOf(pid: number): RegisteredCommand[];
  mailboxesOf(pid: number): RegisteredMailbox[];
}

const SECTION = { VALUE: 1, CMD: 2, MAILBOX: 3 } as const;
const oidOf = (group: number, id: number): number => ((group & 0xff) << 8) | (id & 0xff);

/** The reference's priority and time slice of a freshly loaded task. */
export const REFERENCE_PRIORITY = 10;
export const REFERENCE_QUANTUM = 1;

function valueEntry(v: ValueEntry): Record<string, unknown> {
  return {
    group_id: v.group, value_id: v.id, flags: v.flags, auth_level: v.auth,
    init_raw: v.init.raw, init_value: v.init.value, name: v.name, unit: v.unit ?? '',
    epsilon_raw: v.epsilon.raw, epsilon: v.epsilon.value, min_raw: v.min.raw, min: v.min.value,
    max_raw: v.max.raw, max: v.max.value, persist_key: v.persistKey, group_name: v.groupName,
  };
}

function commandEntry(c: CommandEntry): Record<string, unknown> {
  return {
    group_id: c.group, cmd_id: c.id, flags: c.flags, auth_level: c.auth, handler_offset: c.handlerOffset,
    name: c.name, help: c.help, group_name: c.groupName, reserved: c.reserved ?? 0,
  };
}

function mailboxEntry(m: MailboxEntry): Record<string, unknown> {
  const raw = m.source ?? { target: m.target, capacity: m.capacity, mode_mask: m.mode, ...(m.extra ?? {}) };
  const owner = (m.extra?.['owner_pid'] ?? raw['owner_pid']) as unknown;
  const bindings = (m.extra?.['bindings'] ?? raw['bindings']) as unknown;
  return {
    target: m.target, name: m.target, capacity: m.capacity > 0 ? m.capacity : null, queue_depth: m.capacity,
    mode_mask: m.mode, flags: m.mode, reserved: null,
    owner_pid: typeof owner === 'number' ? owner : null,
    bindings: Array.isArray(bindings) ? bindings : [],
    _source: 'json', raw,
  };
}

/** Namespace number and bare name of a mailbox target (`pid:` 0, `svc:` 1, `app:` 2, `shared:` 3). */
export function mailboxNamespace(target: string): { namespace: number; name: string } {
  const m = /^(pid|svc|app|shared):(.*)$/.exec(target);
  if (!m) return { namespace: 1, name: target };
  const ns = { pid: 0, svc: 1, app: 2, shared: 3 }[m[1] as 'pid' | 'svc' | 'app' | 'shared'];
  return { namespace: ns, name: ns === 0 ? target : (m[2] as string) };
}

/** `pid:7` is owned by pid 7; every other declared mailbox by the task that declared it. */
export function ownerOf(m: RegisteredMailbox): number {
  const pid = /^pid:(\d+)$/.exec(m.target);
  return pid ? Number(pid[1]) : m.pid;
}

export function mailboxCreation(regs: readonly RegisteredMailbox[]): Record<string, unknown>[] {
  return regs.map((m) => ({ target: m.target, status: 'ok', descriptor: m.descriptor, capacity: m.capacity, mode_mask: m.mode, owner_pid: /^pid:/.test(m.target) ? ownerOf(m) : null }));
}

/**
 * The `load`/`exec` reply's image fields the engine's task does not carry: header `flags`, the
 * parsed `metadata` (sections with their entries, and the values, commands and mailboxes as
 * registered, with their oids and descriptors), `meta_count`, `manifest_present`,
 * `mailbox_creation`, and the symbol status (the gateway keeps no symbol files).
 */
export function imageExtras(bytes: Uint8Array | undefined, pid: number, meta: MetadataView | undefined): Record<string, unknown> {
  const parsed = bytes ? parseImage(bytes) : null;
  const image: HxeImage | null = parsed && parsed.ok ? parsed.value : null;
  if (!image) return {};
  const regMailboxes = meta?.mailboxesOf(pid) ?? [];
  const sections = image.sections.map((s) => {
    const entries = s.type === SECTION.VALUE ? image.values.map(valueEntry)
      : s.type === SECTION.CMD ? image.commands.map(commandEntry)
        : s.type === SECTION.MAILBOX ? image.mailboxes.map(mailboxEntry) : [];
    return { type: s.type, offset: s.offset, size: s.size, entry_count: s.entryCount, entries };
  });
  const creation = mailboxCreation(regMailboxes);
  return {
    flags: image.header.flags,
    metadata: {
      sections,
      values: image.values.map((v) => ({ ...valueEntry(v), oid: oidOf(v.group, v.id) })),
      commands: image.commands.map((c) => ({ ...commandEntry(c), oid: oidOf(c.group, c.id) })),
      mailboxes: image.mailboxes.map((m) => {
        const reg = regMailboxes.find((r) => r.target === m.target);
        return { ...mailboxEntry(m), ...(reg ? { owner_pid: ownerOf(reg), descriptor: reg.descriptor } : {}) };
      }),
      ...(creation.length ? { _mailbox_creation: creation } : {}),
    },
    meta_count: image.header.metaCount,
    manifest_present: image.header.manifestPresent,
    mailbox_creation: creation,
    symbols: { pid, loaded: false, path: null },
    warnings: [],
  };
}

/** A task's VM-side fields in the reference's `ps` row, as an idle task that never ran has them. */
export function accountingFields(t: { entry?: number; arenas?: Record<string, { base: number; size: number }> | undefined; sizes?: { stack?: number } | undefined }): Record<string, unknown> {
  const stack = t.arenas?.['stack'];
  const data = t.arenas?.['data'];
  const stackBase = stack?.base ?? 0;
  return {
    pc: t.entry ?? 0,
    priority: REFERENCE_PRIORITY,
    quantum: REFERENCE_QUANTUM,
    accounted_steps: 0,
    accounted_cycles: 0,
    sleep_pending: false,
    sleep_pending_ms: null,
    sleep_deadline: null,
    exit_status: null,
    trace: false,
    reg_base: data?.base ?? 0,
    stack_base: stackBase,
    stack_limit: stackBase,
    stack_size: t.sizes?.stack ?? stack?.size ?? 0,
  };
}

/** The reference's mailbox descriptor (`mailbox_snapshot`). */
export function descriptorRow(m: RegisteredMailbox): Record<string, unknown> {
  const { namespace, name } = mailboxNamespace(m.target);
  return {
    descriptor_id: m.descriptor, namespace, name, owner_pid: ownerOf(m), capacity: m.capacity,
    bytes_used: 0, queue_depth: 0, head_seq: 0, next_seq: 0, mode_mask: m.mode, waiters: [], taps: [],
    target: m.target,
  };
}

/** One row of `list` (the channels a task owns). */
export function channelRow(m: RegisteredMailbox): Record<string, unknown> {
  const { namespace, name } = mailboxNamespace(m.target);
  return {
    descriptor_id: m.descriptor, target: m.target, name, namespace, mode_mask: m.mode, capacity: m.capacity,
    bytes_used: 0, queue_depth: 0, subscriber_count: null,
  };
}

/** One row of `cmd.list`. */
export function commandRow(c: RegisteredCommand): Record<string, unknown> {
  const row: Record<string, unknown> = {
    oid: c.oid, group_id: c.group, cmd_id: c.id, flags: c.flags, auth_level: c.auth, owner_pid: c.pid, handler_ref: c.handlerOffset, desc_head: null,
  };
  if (c.groupName) row['group_name'] = c.groupName;
  if (c.name) row['name'] = c.name;
  if (c.help) row['help'] = c.help;
  return row;
}

/** The clock document of a gateway: nothing runs, so it is stopped and never stepped. */
export function stoppedClock(): Record<string, unknown> {
  return {
    state: 'stopped', running: false, mode: 'stopped', throttled: false, throttle_reason: null, last_wait_s: 0,
    rate_hz: 0, step_size: 1, auto_steps: 0, auto_total_steps: 0, manual_steps: 0, manual_total_steps: 0,
  };
}
