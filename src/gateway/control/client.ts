/**
 * A client of the control server (JSON lines over TCP), for the CLI's thin commands (`ps`,
 * `status`, `persist`, `rollback`) and for scripts. One request at a time, in order; every
 * failure is a value saying whether it was the connection, the protocol or the server's answer.
 */
import { connect, type Socket } from 'node:net';
import { err, ok, type Result } from '../../hxe/result.js';
import { LineReader } from './line-reader.js';

export const DEFAULT_CONNECT = '127.0.0.1:9998';
/** A CLI reads its token from here when --token is not given (kept out of shell history). */
export const CLIENT_TOKEN_ENV = 'HSX_GATEWAY_TOKEN';

export interface ClientError {
  kind: 'usage' | 'connect' | 'timeout' | 'closed' | 'protocol' | 'remote';
  message: string;
  /** For `remote`: the server's error string (e.g. `EPERM:admin_required`) and detail. */
  error?: string;
  detail?: Record<string, unknown>;
}

export type Reply = Record<string, unknown>;

const REASON_OF_KIND: Record<ClientError['kind'], [string, string]> = {
  usage: ['EUSAGE', 'bad_usage'],
  connect: ['ECONNREFUSED', 'cannot_connect'],
  timeout: ['ETIMEDOUT', 'no_reply'],
  closed: ['ECONNRESET', 'connection_closed'],
  protocol: ['EPROTO', 'bad_reply'],
  remote: ['EIO', 'remote_error'],
};

/**
 * A client error in the CLI's one JSON error shape (src/cli/output.ts):
 * `{"ok":false,"error":{"code","reason","message","kind","remote",…the server's detail}}`. A
 * server's `CODE:reason` string is split in two; its `detail` (the device list, the field, the
 * hint) sits beside them, never replacing `code`, `reason` or `message`.
 */
export function clientErrorJson(e: ClientError): { ok: false; error: Record<string, unknown> } {
  let [code, reason] = REASON_OF_KIND[e.kind];
  const m = e.error ? /^([A-Z][A-Z0-9_]*):(.+)$/.exec(e.error) : null;
  if (m) [code, reason] = [m[1]!, m[2]!];
  else if (e.error) reason = e.error;
  const { message: detailMessage, ...detail } = e.detail ?? {};
  const message = e.kind === 'remote' && typeof detailMessage === 'string' ? detailMessage : e.message;
  if (detailMessage !== undefined && typeof detailMessage !== 'string') detail['detail_message'] = detailMessage;
  if (e.kind === 'connect' || (e.kind === 'timeout' && e.message.startsWith('no connection'))) detail['no_gateway'] = true;
  const hint = hintFor(e).replace(/^; /, '');
  if (hint) detail['hint'] = hint;
  return { ok: false, error: { ...detail, kind: e.kind, remote: e.kind === 'remote', code, reason, message } };
}

export function parseHostPort(target: string): Result<{ host: string; port: number }, ClientError> {
  const m = /^(\[[^\]]+\]|[^:\s]+):(\d{1,5})$/.exec(target.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port > 0 && port < 65536)) {
    return err({ kind: 'usage', message: `--connect: expected HOST:PORT (e.g. ${DEFAULT_CONNECT}), got "${target}"` });
  }
  return ok({ host: (m[1] as string).replace(/^\[|\]$/g, ''), port });
}

export class ControlClient {
  private readonly reader: LineReader;

  private constructor(private readonly socket: Socket, private readonly token: string | undefined, private readonly timeoutMs: number) {
    this.reader = new LineReader(socket);
  }

  static connect(target: string, opts: { token?: string; timeoutMs?: number } = {}): Promise<Result<ControlClient, ClientError>> {
    const hp = parseHostPort(target);
    if (!hp.ok) return Promise.resolve(hp);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise((done) => {
      const socket = connect(hp.value.port, hp.value.host);
      const timer = setTimeout(() => {
        socket.destroy();
        done(err({ kind: 'timeout', message: `no connection to ${target} within ${timeoutMs} ms` }));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        done(ok(new ControlClient(socket, opts.token, timeoutMs)));
      });
      socket.once('error', (e) => {
        clearTimeout(timer);
        done(err({ kind: 'connect', message: `cannot connect to ${target}: ${e.message}` }));
      });
    });
  }

  private async nextLine(): Promise<Result<string, ClientError>> {
    const next = await this.reader.next(this.timeoutMs);
    if ('line' in next) return ok(next.line);
    if ('closed' in next) return err({ kind: 'closed', message: next.closed });
    return err({ kind: 'timeout', message: `no reply within ${this.timeoutMs} ms` });
  }

  /** Sends one request; an `error` reply comes back as a `remote` error with the server's string. */
  async request(cmd: string, fields: Record<string, unknown> = {}): Promise<Result<Reply, ClientError>> {
    const req: Record<string, unknown> = { version: 1, cmd, ...fields };
    if (this.token !== undefined) req['token'] = this.token;
    this.socket.write(`${JSON.stringify(req)}\n`);
    const line = await this.nextLine();
    if (!line.ok) return line;
    let reply: unknown;
    try {
      reply = JSON.parse(line.value);
    } catch {
      return err({ kind: 'protocol', message: `reply is not JSON: ${line.value.slice(0, 200)}` });
    }
    if (reply === null || typeof reply !== 'object') return err({ kind: 'protocol', message: 'reply is not a JSON object' });
    const r = reply as Reply;
    if (r['status'] !== 'ok') {
      const error = String(r['error'] ?? 'unknown_error');
      const e: ClientError = { kind: 'remote', message: `server: ${error}`, error };
      if (r['detail'] && typeof r['detail'] === 'object') e.detail = r['detail'] as Record<string, unknown>;
      return err(e);
    }
    return ok(r);
  }

  close(): void {
    this.socket.end();
    this.socket.destroy();
  }
}

export interface ClientCommandOptions {
  connect?: string;
  token?: string;
  json?: boolean;
  device?: string;
}

type ClientIo = { out: (s: string) => void; err: (s: string) => void };

/** What to do about a refusal, said to a person (JSON output carries the server's detail instead). */
function hintFor(e: ClientError): string {
  const error = e.error ?? '';
  if (error.startsWith('EPERM:') && error.endsWith('_required')) {
    return `; give a token with that role: --token TOKEN or $${CLIENT_TOKEN_ENV}`;
  }
  const devices = e.detail?.['devices'];
  if (error === 'ENODEV:unknown_device' && Array.isArray(devices)) return `; the gateway's devices: ${devices.map(String).join(', ') || '(none)'}`;
  return '';
}
const processIo: ClientIo = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

/** Exit code of a client error: 2 usage, 3 no gateway answered (connect) or no device did (ETIMEDOUT), else 1. */
export function clientExitCode(e: ClientError): number {
  if (e.kind === 'usage') return 2;
  if (e.kind === 'connect' || (e.kind === 'timeout' && e.message.startsWith('no connection'))) return 3;
  if (e.kind === 'remote' && e.error?.startsWith('ETIMEDOUT')) return 3;
  return 1;
}

/**
 * The whole life of a thin CLI command: connect, one request, print (JSON or human), exit code
 * (0 ok, 1 the server or the connection said no, 2 usage).
 */
export async function runClientCommand(
  opts: ClientCommandOptions,
  cmd: string,
  fields: Record<string, unknown>,
  human: (reply: Reply) => string,
  io: ClientIo = processIo,
): Promise<number> {
  return runClientSession(opts, cmd, (client) => client.request(cmd, opts.device === undefined ? fields : { ...fields, device: opts.device }), human, io);
}

/**
 * The same life for a command that needs several requests on one connection (`ps` of every
 * device): `body` makes them and returns the reply to print, or the first error.
 */
export async function runClientSession(
  opts: ClientCommandOptions,
  name: string,
  body: (client: ControlClient) => Promise<Result<Reply, ClientError>>,
  human: (reply: Reply) => string,
  io: ClientIo = processIo,
): Promise<number> {
  const token = opts.token ?? process.env[CLIENT_TOKEN_ENV];
  const c = await ControlClient.connect(opts.connect ?? DEFAULT_CONNECT, token === undefined ? {} : { token });
  const fail = (e: ClientError): number => {
    if (opts.json) io.out(`${JSON.stringify(clientErrorJson(e))}\n`);
    else io.err(`${name}: ${e.message}${e.detail?.['message'] ? ` (${String(e.detail['message'])})` : ''}${hintFor(e)}\n`);
    return clientExitCode(e);
  };
  if (!c.ok) return fail(c.error);
  try {
    const r = await body(c.value);
    if (!r.ok) return fail(r.error);
    if (opts.json) io.out(`${JSON.stringify({ ok: true, ...r.value })}\n`);
    else io.out(human(r.value));
    return 0;
  } finally {
    c.value.close();
  }
}
