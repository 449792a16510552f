import type { Command } from 'commander';
import type { InventoryEntry } from '../../link/flasher.js';

/**
 * `hsx-gateway scan --can BUS [--nodes LIST] [--timeout MS] [--json]` and
 * `hsx-gateway scan --uart PORT [--baud N] [--timeout MS] [--json]`: which devices answer on a link
 * and what each runs (app, version, SHA-256, slot states, slot size): a table, or JSON lines (one
 * `entry` per device, a `problem` per device whose answer was refused, then a `summary`).
 * Exit 0 when at least one device was listed, 1 when devices answered but none could be listed (or
 * the link could not be opened), 2 on usage errors, 3 when nothing answered.
 */
export function registerScan(program: Command): void {
  program
    .command('scan')
    .description('list the devices on a CAN bus or UART link and what each runs (app, version, SHA-256, slots)')
    .option('--can <iface>', 'CAN bus: SocketCAN interface (can0, vcan0), virtual:NAME or virtual:HOST:PORT')
    .option('--nodes <list>', 'CAN: only these node ids, e.g. 1-16 or 3,5,7 (the scan ends once all answered)')
    .option('--uart <port>', 'UART: serial port of the device')
    .option('--baud <n>', 'UART line rate')
    .option('--timeout <ms>', 'how long to wait for answers (CAN: after the request, default 1000; UART: per attempt, default 500)')
    .option('--json', 'JSON lines: one per device, then a summary')
    .action(async (opts: Record<string, unknown>) => {
      process.exitCode = await runScan(opts);
    });
}

type Out = (line: string) => void;

export interface ScanProblemLine {
  target: string;
  code: string;
  reason: string;
  offset: number | null;
  message: string;
}

function intOption(raw: unknown, name: string, min: number, max: number): number | undefined | string {
  if (raw === undefined) return undefined;
  const s = String(raw);
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < min || n > max) return `${name} must be an integer ${min}..${max}, got ${s}`;
  return n;
}

export async function runScan(o: Record<string, unknown>, out: Out = (l) => void process.stdout.write(`${l}\n`), err: Out = (l) => void process.stderr.write(`${l}\n`)): Promise<number> {
  const json = o['json'] === true;
  const usage = (message: string): number => {
    if (json) out(JSON.stringify({ ok: false, type: 'error', error: { code: 'EUSAGE', reason: 'bad_usage', message: `scan: ${message}` } }));
    else err(`scan: ${message}`);
    return 2;
  };
  const can = typeof o['can'] === 'string' ? o['can'] : undefined;
  const uart = typeof o['uart'] === 'string' ? o['uart'] : undefined;
  if ((can === undefined) === (uart === undefined)) return usage('give exactly one of --can IFACE or --uart PORT');
  const timeout = intOption(o['timeout'], '--timeout', 1, 600_000);
  if (typeof timeout === 'string') return usage(timeout);
  const failed = (code: string, message: string): number => {
    if (json) out(JSON.stringify({ ok: false, type: 'error', error: { code, reason: code === 'ENODEV' ? 'link_unavailable' : 'scan_failed', message } }));
    else err(`scan: ${message}`);
    return 1;
  };

  let entries: InventoryEntry[];
  let problems: ScanProblemLine[];
  let elapsedMs: number;
  const link = can !== undefined ? 'can' : 'uart';
  if (can !== undefined) {
    if (o['baud'] !== undefined) return usage('--baud applies to --uart only');
    const { parseCanAddress, createCanBus } = await import('../../link/can/address.js');
    const { parseNodeList } = await import('../../link/can/master.js');
    const { scanCanReport } = await import('../../link/can/scan.js');
    let nodes: number[] | undefined;
    if (o['nodes'] !== undefined) {
      const parsed = parseNodeList(String(o['nodes']));
      if (typeof parsed === 'string') return usage(parsed);
      nodes = parsed;
    }
    const address = parseCanAddress(can);
    if (!address.ok) return usage(address.message);
    let bus;
    try {
      bus = createCanBus(address.address);
      await bus.open();
    } catch (e) {
      return failed('ENODEV', e instanceof Error ? e.message : String(e));
    }
    const controller = new AbortController();
    const interrupt = (): void => controller.abort();
    process.once('SIGINT', interrupt);
    try {
      const r = await scanCanReport(bus, { signal: controller.signal, ...(timeout !== undefined ? { timeoutMs: timeout } : {}), ...(nodes ? { nodes } : {}) });
      entries = r.entries;
      problems = r.problems;
      elapsedMs = r.elapsedMs;
    } finally {
      process.off('SIGINT', interrupt);
      await bus.close();
    }
  } else {
    if (o['nodes'] !== undefined) return usage('--nodes applies to --can only');
    const baud = intOption(o['baud'], '--baud', 50, 20_000_000);
    if (typeof baud === 'string') return usage(baud);
    const { UartPortTransport, UartLinkError } = await import('../../link/uart/port-transport.js');
    const { scanUartReport } = await import('../../link/uart/scan.js');
    const transport = new UartPortTransport({ path: uart!, ...(baud !== undefined ? { baudRate: baud } : {}) });
    try {
      await transport.open();
    } catch (e) {
      return e instanceof UartLinkError ? failed(e.info.code, e.info.message) : failed('EIO', String(e));
    }
    const controller = new AbortController();
    const interrupt = (): void => controller.abort();
    process.once('SIGINT', interrupt);
    try {
      const r = await scanUartReport(transport, { signal: controller.signal, ...(timeout !== undefined ? { timeoutMs: timeout } : {}) });
      entries = r.entries;
      problems = r.problems;
      elapsedMs = r.elapsedMs;
    } finally {
      process.off('SIGINT', interrupt);
      await transport.close();
    }
  }

  if (json) {
    for (const e of entries) out(JSON.stringify({ type: 'entry', link, ...e }));
    for (const p of problems) out(JSON.stringify({ type: 'problem', link, target: p.target, code: p.code, reason: p.reason, offset: p.offset, message: p.message }));
    out(JSON.stringify({ type: 'summary', link, answered: entries.length, problems: problems.length, elapsed_ms: elapsedMs }));
  } else {
    for (const line of inventoryTable(entries, link === 'can' ? 'node' : 'target')) out(line);
    for (const p of problems) out(`${link === 'can' ? 'node' : 'target'} ${p.target}: ${p.code} ${p.reason}: ${p.message}`);
    out(`${entries.length} device${entries.length === 1 ? '' : 's'} listed${problems.length > 0 ? `, ${problems.length} answer${problems.length === 1 ? '' : 's'} refused` : ''} (${elapsedMs} ms)`);
  }
  if (entries.length > 0) return 0;
  return problems.length > 0 ? 1 : 3;
}

const slotText = (e: InventoryEntry, name: 'A' | 'B'): string => {
  const s = e.slots.find((x) => x.slot === name);
  if (!s) return '-';
  return `${s.state}${s.active ? '*' : ''}${s.version ? ` ${s.version}` : ''}`;
};

function sizeText(n: number | null): string {
  if (n === null) return '-';
  return n % 1024 === 0 ? `${n / 1024} KiB` : `${n} B`;
}

/** The table `scan` prints: one row per device; `*` marks the active slot. */
export function inventoryTable(entries: readonly InventoryEntry[], first = 'node'): string[] {
  if (entries.length === 0) return [];
  const rows = [[first, 'app', 'version', 'sha256', 'slot A', 'slot B', 'slot size']];
  for (const e of entries) {
    rows.push([e.target, e.app_name ?? '(none)', e.version || '-', e.sha256 ? e.sha256.slice(0, 12) : '-', slotText(e, 'A'), slotText(e, 'B'), sizeText(e.slot_bytes)]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
  if (entries.some((e) => e.slots.some((s) => s.active))) lines.push('(* the active slot)');
  return lines;
}
