import type { Command } from 'commander';
import { CLIENT_TOKEN_ENV, ControlClient, clientErrorJson, clientExitCode, DEFAULT_CONNECT, type ClientError, type Reply } from '../../gateway/control/client.js';
import { parseOid, parseValue } from '../../gateway/values.js';

/**
 * `hsx-gateway val list|get|set`: a device's registered values through a gateway's control server
 * (`val.list`, `val.get`, `val.set`; docs/executive_protocol.md). `--device` names one of the
 * gateway's devices; `--link L --node N` a node on one of its CAN master links. Exit codes: 0 ok,
 * 1 refused (read-only, auth level, range, unknown oid, access) or failed, 2 usage, 3 the CAN node
 * did not answer.
 */
interface ValOpts {
  connect: string;
  token?: string;
  device?: string;
  link?: string;
  node?: string;
  pid?: string;
  group?: string;
  json?: boolean;
}

export function registerVal(program: Command): void {
  const val = program.command('val').description('read and write a device\'s registered values (asks the control server; set: operator role)');
  const common = (c: Command): Command =>
    c
      .option('--connect <host:port>', 'control server address', DEFAULT_CONNECT)
      .option('--token <token>', `access token (default: $${CLIENT_TOKEN_ENV})`)
      .option('--device <name>', 'device (default: the gateway\'s first)')
      .option('--link <name>', 'a CAN master link of the gateway (with --node)')
      .option('--node <n>', 'node id on --link (1..63)')
      .option('--json', 'one JSON line: {"ok":true,…} or {"ok":false,"kind","error","detail"}');
  common(val.command('list').description('list the registered values')
    .option('--pid <pid>', 'only this task\'s values')
    .option('--group <g>', 'only this group'))
    .action(async (opts: ValOpts) => {
      process.exitCode = await runVal('list', opts, undefined, undefined);
    });
  common(val.command('get').description('read a value').argument('<oid>', 'oid: GROUP:ID, a number or 0x…'))
    .action(async (oid: string, opts: ValOpts) => {
      process.exitCode = await runVal('get', opts, oid, undefined);
    });
  common(val.command('set').description('write a value (read-only, auth level and range are checked by the gateway)')
    .argument('<oid>', 'oid: GROUP:ID, a number or 0x…')
    .argument('<value>', 'a number (stored as f16)'))
    .action(async (oid: string, value: string, opts: ValOpts) => {
      process.exitCode = await runVal('set', opts, oid, value);
    });
}

type Io = { out: (s: string) => void; err: (s: string) => void };
const processIo: Io = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

/** Runs one `val` subcommand; returns the exit code. */
export async function runVal(op: 'list' | 'get' | 'set', opts: ValOpts, oidText: string | undefined, valueText: string | undefined, io: Io = processIo): Promise<number> {
  const name = `val ${op}`;
  const fail = (e: ClientError, code: number): number => {
    if (opts.json) io.out(`${JSON.stringify(clientErrorJson(e))}\n`);
    else io.err(`${name}: ${e.message}${e.detail?.['message'] && !e.message.includes(String(e.detail['message'])) ? ` (${String(e.detail['message'])})` : ''}\n`);
    return code;
  };
  const usage = (message: string, field: string) => fail({ kind: 'usage', message, error: `EINVAL:${field}`, detail: { field } }, 2);

  // what can be checked here is checked before connecting, with the gateway's own rule
  const fields: Record<string, unknown> = {};
  if (opts.link !== undefined || opts.node !== undefined) {
    if (opts.link === undefined || opts.node === undefined) return usage('--link and --node go together', opts.link === undefined ? 'link' : 'node');
    if (opts.device !== undefined) return usage('give --device or --link/--node, not both', 'device');
    if (!/^\d+$/.test(opts.node) || Number(opts.node) < 1 || Number(opts.node) > 63) return usage(`--node must be a node id 1..63, got "${opts.node}"`, 'node');
    fields['link'] = opts.link;
    fields['node'] = Number(opts.node);
  } else if (opts.device !== undefined) fields['device'] = opts.device;
  if (oidText !== undefined) {
    const oid = parseOid(oidText);
    if (!oid.ok) return usage(oid.error.message, 'oid');
    fields['oid'] = oid.value;
  }
  if (valueText !== undefined) {
    const v = parseValue(valueText);
    if (!v.ok) return usage(v.error.message, 'value');
    fields['value'] = Number(valueText);
  }
  for (const [flag, key] of [['pid', 'pid'], ['group', 'group']] as const) {
    const raw = opts[flag];
    if (raw === undefined) continue;
    if (!/^\d+$/.test(raw)) return usage(`--${flag} must be a non-negative integer, got "${raw}"`, key);
    fields[key] = Number(raw);
  }

  const token = opts.token ?? process.env[CLIENT_TOKEN_ENV];
  const c = await ControlClient.connect(opts.connect ?? DEFAULT_CONNECT, token === undefined ? {} : { token });
  if (!c.ok) return fail(c.error, clientExitCode(c.error));
  try {
    const r = await c.value.request(`val.${op}`, fields);
    if (!r.ok) return fail(r.error, clientExitCode(r.error));
    const value = r.value['value'] as Reply | undefined;
    // a refusal by the registry keeps the reference's shape: status ok, the HSX status in value.status
    if (value && typeof value['status'] === 'number' && value['status'] !== 0) {
      const { error, message, ...detail } = value;
      return fail({ kind: 'remote', message: `server: ${String(error)}: ${String(message)}`, error: String(error), detail: { ...detail, message } }, 1);
    }
    if (opts.json) io.out(`${JSON.stringify({ ok: true, ...r.value })}\n`);
    else io.out(render(op, r.value, fields['oid'] as number | undefined));
    return 0;
  } finally {
    c.value.close();
  }
}

const gid = (oid: number): string => `${oid >> 8}:${oid & 0xff}`;
const hex16 = (n: unknown): string => `0x${Number(n).toString(16).padStart(4, '0')}`;

function render(op: 'list' | 'get' | 'set', reply: Reply, oid: number | undefined): string {
  if (op === 'list') {
    const values = (reply['values'] ?? []) as Reply[];
    if (values.length === 0) return 'no values registered\n';
    const rows = values.map((v) => [
      String(v['oid']), gid(Number(v['oid'])), String(v['name'] ?? ''), String(v['last_value']), String(v['unit'] ?? ''),
      v['min'] === undefined ? '' : `${String(v['min'])}..${String(v['max'])}`,
      [v['read_only'] ? 'ro' : 'rw', v['persisted'] ? 'persist' : ''].filter(Boolean).join(','),
      String(v['auth_level']), String(v['owner_pid']),
    ]);
    const head = ['OID', 'GROUP:ID', 'NAME', 'VALUE', 'UNIT', 'RANGE', 'FLAGS', 'AUTH', 'PID'];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
    const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd();
    return [fmt(head), ...rows.map(fmt)].join('\n') + '\n';
  }
  const v = (reply['value'] ?? {}) as Reply;
  const at = oid === undefined ? '' : `${oid} (${gid(oid)})`;
  if (op === 'get') return `${at} = ${String(v['value'])} (f16 ${hex16(v['f16'])}${v['pid'] === null || v['pid'] === undefined ? '' : `, pid ${String(v['pid'])}`})\n`;
  return `${at} set to ${String(v['value'])} (f16 ${hex16(v['f16'])})${v['persisted'] ? ', persisted' : ''}\n`;
}
