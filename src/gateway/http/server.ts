/**
 * The gateway's HTTP side (README "The live page", docs/metrics.md): the live page, its JSON state
 * and event stream, job submit and cancel for operators, and `/metrics` for Prometheus.
 *
 * Access is the control port's: the same tokens (`[[control.tokens]]`, HSX_GATEWAY_TOKENS) and roles,
 * sent as `Authorization: Bearer <token>`. Without tokens it binds loopback only and every local
 * client is admin, as on the control port; another address is refused at start. With tokens, every
 * data path needs a viewer's (the page's HTML, script and style carry no data and are served to
 * anyone). Submit and cancel are the control port's `job.submit` and `job.cancel`, run through its
 * role table, handler and audit (ControlServer.runAs): one code path.
 *
 * | path | method | role | what |
 * |---|---|---|---|
 * | `/` | GET | — | the page |
 * | `/page.js`, `/page.css` | GET | — | its script and style |
 * | `/api/state` | GET | viewer | the page's state (model.ts); `?part=rows` only what scans and boots change |
 * | `/api/events` | GET | viewer | server-sent events (sse.ts); `?since=SEQ` replays after SEQ |
 * | `/api/jobs` | POST | operator | submit: `{link, image, targets?|nodes?, options?}` as `job.submit` |
 * | `/api/jobs/<id>/cancel` | POST | operator | cancel, as `job.cancel` |
 * | `/metrics` | GET | viewer | Prometheus text format |
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { isLoopbackHost, type Identity } from '../control/auth.js';
import { addressKey } from '../control/limits.js';
import type { CommandResult } from '../control/command-types.js';
import type { EventBus } from '../events/index.js';
import type { GatewayMetrics } from './metrics.js';
import type { PageModel } from './model.js';
import { PageStream } from './sse.js';
import { pageAsset } from './page/assets.js';

/** What the HTTP side needs of the control port: its tokens and its command path. */
export interface ControlAccess {
  readonly tokensConfigured: boolean;
  /** The control port's failed-authentication throttle (limits.ts): a wrong token's reply waits as long as there. */
  readonly authFailures?: { fail(address: string, connFailures: number): { delayMs: number } };
  verifyToken(token: string | null): Identity | null;
  runAs(cmd: string, fields: Record<string, unknown>, caller: { identity: Identity | null; peer: string }): Promise<CommandResult>;
}

export interface PageServerOptions {
  host: string;
  port: number;
  maxStreams: number;
  maxBodyBytes: number;
  bus: EventBus;
  control: ControlAccess;
  model: PageModel;
  metrics: GatewayMetrics;
  logger?: Logger;
}

export interface PageServerError {
  code: 'EINSECURE' | 'ELISTEN';
  message: string;
}

/** Longest request target (path and query). */
export const MAX_URL_BYTES = 2048;

class HttpError extends Error {
  constructor(readonly status: number, readonly error: string, message: string, readonly extra: Record<string, unknown> = {}) {
    super(message);
  }
}

const JOB_ID = /^j-\d{1,15}$/;

/** The HTTP status for a control error (`EPERM:operator_required` → 403, ...). */
export function statusOfWireError(error: string): number {
  const code = error.split(':')[0] ?? '';
  switch (code) {
    case 'EPERM':
      return 403;
    case 'ESRCH':
    case 'ENOENT':
      return 404;
    case 'EBUSY':
      return 409;
    case 'ELIMIT':
      return 429;
    case 'ENOTSUP':
      return 503;
    case 'ENOSPC':
      return 413;
    default:
      return code === 'internal_error' ? 500 : 400;
  }
}

export class PageServer {
  private readonly server: Server;
  private readonly streams = new Set<PageStream>();
  private readonly sockets = new Set<Socket>();
  private listening = false;

  constructor(private readonly opts: PageServerOptions) {
    this.server = createServer({ maxHeaderSize: 8192, requestTimeout: 15_000, headersTimeout: 10_000, keepAliveTimeout: 5_000 }, (req, res) => {
      void this.handle(req, res);
    });
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    // a request line or headers Node cannot parse (or too large): a 4xx with a reason, then close
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable) return socket.destroy();
      const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
      const status = tooLarge ? 431 : 400;
      const body = JSON.stringify({ ok: false, error: tooLarge ? 'headers_too_large' : 'bad_request', message: tooLarge ? 'request headers over 8 KiB' : `malformed HTTP request (${err.code ?? 'parse error'})` });
      socket.end(`HTTP/1.1 ${status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    });
  }

  /** Binds; refuses a non-loopback address when no access token is configured. */
  listen(): Promise<{ ok: true; value: { host: string; port: number } } | { ok: false; error: PageServerError }> {
    const { host, port } = this.opts;
    if (!this.opts.control.tokensConfigured && !isLoopbackHost(host)) {
      return Promise.resolve({
        ok: false,
        error: { code: 'EINSECURE', message: `http: refusing to listen on ${host}: no access tokens configured ([[control.tokens]] or HSX_GATEWAY_TOKENS); without them the page binds loopback only` },
      });
    }
    return new Promise((done) => {
      const onError = (e: Error) => done({ ok: false, error: { code: 'ELISTEN', message: `http: cannot listen on ${host}:${port}: ${e.message}` } });
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        this.listening = true;
        done({ ok: true, value: this.address() });
      });
    });
  }

  address(): { host: string; port: number } {
    const a = this.server.address();
    if (a && typeof a === 'object') return { host: a.address, port: a.port };
    return { host: this.opts.host, port: this.opts.port };
  }

  get streamCount(): number {
    return this.streams.size;
  }

  /** The open streams (tests: how much each holds). */
  streamsInfo(): Array<{ buffered: number; pending: number; active: boolean }> {
    return [...this.streams].map((s) => ({ buffered: s.buffered, pending: s.sub.pending, active: s.sub.active }));
  }

  async close(): Promise<void> {
    for (const s of [...this.streams]) s.end('server_closed');
    if (!this.listening) return;
    this.listening = false;
    const closed = new Promise<void>((done) => this.server.close(() => done()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  // ---- requests -------------------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await this.route(req, res);
    } catch (e) {
      if (e instanceof HttpError) return this.json(res, e.status, { ok: false, error: e.error, message: e.message, ...e.extra });
      const incident = randomUUID();
      this.opts.logger?.error({ incident, err: e, url: req.url?.slice(0, 200) }, 'http: internal error answering a request');
      if (!res.headersSent) this.json(res, 500, { ok: false, error: 'internal_error', incident });
      else res.destroy();
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = req.url ?? '/';
    if (Buffer.byteLength(raw) > MAX_URL_BYTES) throw new HttpError(414, 'uri_too_long', `request target over ${MAX_URL_BYTES} bytes`);
    let url: URL;
    try {
      url = new URL(raw, 'http://gateway.invalid');
    } catch {
      throw new HttpError(400, 'bad_url', 'the request target is not a valid URL path');
    }
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const only = (allowed: string): void => {
      if (method !== allowed && !(allowed === 'GET' && method === 'HEAD')) {
        res.setHeader('allow', allowed === 'GET' ? 'GET, HEAD' : allowed);
        throw new HttpError(405, 'method_not_allowed', `${path} takes ${allowed}, not ${method}`);
      }
    };
    const asset = pageAsset(path);
    if (asset) {
      only('GET');
      res.writeHead(200, {
        'content-type': asset.type,
        'content-length': asset.body.length,
        'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff',
        'content-security-policy': "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        'referrer-policy': 'no-referrer',
      });
      res.end(method === 'HEAD' ? undefined : asset.body);
      return;
    }
    if (path === '/metrics') {
      only('GET');
      await this.caller(req, url);
      const text = await this.opts.metrics.text();
      res.writeHead(200, { 'content-type': this.opts.metrics.contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (path === '/api/state') {
      only('GET');
      const who = await this.caller(req, url);
      const part = url.searchParams.get('part');
      if (part !== null && part !== 'rows') throw new HttpError(400, 'bad_part', 'part must be rows (or absent for the whole state)');
      return this.json(res, 200, part === 'rows' ? this.opts.model.rows() : this.opts.model.snapshot({ name: who.name, role: who.role }));
    }
    if (path === '/api/events') {
      only('GET');
      await this.caller(req, url);
      const since = url.searchParams.get('since');
      let sinceSeq: number | null = null;
      if (since !== null) {
        if (!/^\d{1,15}$/.test(since)) throw new HttpError(400, 'bad_since', 'since must be an event seq (a whole number)');
        sinceSeq = Number(since);
      }
      if (this.streams.size >= this.opts.maxStreams) {
        throw new HttpError(503, 'too_many_streams', `at most ${this.opts.maxStreams} live streams at once ([http] max_streams)`, { limit: this.opts.maxStreams });
      }
      req.socket.setNoDelay(true);
      const stream: PageStream = new PageStream({ bus: this.opts.bus, res, sinceSeq, onClose: () => this.streams.delete(stream) });
      if (stream.sub.active) this.streams.add(stream);
      return;
    }
    if (path === '/api/jobs') {
      only('POST');
      const who = await this.caller(req, url);
      const body = await this.body(req);
      const fields: Record<string, unknown> = {};
      for (const k of ['link', 'image', 'targets', 'nodes', 'options', 'client_token']) if (k in body) fields[k] = body[k];
      const extra = Object.keys(body).filter((k) => !(k in fields));
      if (extra.length) throw new HttpError(400, 'unknown_field', `a submit takes link, image, targets or nodes, options, client_token; not ${extra.slice(0, 5).join(', ')}`);
      return this.command(res, 'job.submit', fields, who, req);
    }
    const cancel = /^\/api\/jobs\/([^/]+)\/cancel$/.exec(path);
    if (cancel) {
      only('POST');
      const who = await this.caller(req, url);
      const id = decodeURIComponent(cancel[1] ?? '');
      if (!JOB_ID.test(id)) throw new HttpError(400, 'bad_job_id', 'a job id is j-<n>');
      await this.drain(req);
      return this.command(res, 'job.cancel', { id }, who, req);
    }
    throw new HttpError(404, 'not_found', `nothing at ${path.slice(0, 200)}`);
  }

  /** Who asks: the bearer token's identity (the control port's store), or the loopback `local` admin without tokens. */
  private async caller(req: IncomingMessage, _url: URL): Promise<Identity> {
    const h = req.headers['authorization'];
    let token: string | null = null;
    if (typeof h === 'string') {
      const m = /^Bearer\s+(\S{1,512})\s*$/i.exec(h);
      if (!m) throw new HttpError(401, 'bad_authorization', 'Authorization must be "Bearer <token>"');
      token = m[1] ?? null;
    }
    if (this.opts.control.tokensConfigured && token === null) {
      throw new HttpError(401, 'token_required', 'this gateway has access tokens: send a viewer, operator or admin token (Authorization: Bearer <token>)');
    }
    const who = this.opts.control.verifyToken(token);
    if (!who) {
      // as on the control port: the reply to a wrong token waits, longer with each failure of the address
      const delayMs = this.opts.control.authFailures?.fail(addressKey(req.socket.remoteAddress), 1).delayMs ?? 0;
      if (delayMs > 0) {
        await new Promise<void>((done) => {
          const onClose = (): void => {
            clearTimeout(timer);
            done();
          };
          const timer = setTimeout(() => {
            req.socket.off('close', onClose);
            done();
          }, delayMs);
          req.socket.once('close', onClose);
        });
      }
      this.opts.logger?.warn({ peer: `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? 0}`, delay_ms: delayMs }, 'http: invalid token');
      throw new HttpError(401, 'invalid_token', 'the token is not one of this gateway\'s');
    }
    return who;
  }

  private async command(res: ServerResponse, cmd: string, fields: Record<string, unknown>, who: Identity, req: IncomingMessage): Promise<void> {
    const peer = `http:${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? 0}`;
    const r = await this.opts.control.runAs(cmd, fields, { identity: who, peer });
    if (r.kind === 'ok') return this.json(res, 200, { ok: true, ...r.body });
    if (r.kind === 'error') return this.json(res, statusOfWireError(r.error), { ok: false, error: r.error, ...(r.detail ? { detail: r.detail } : {}) });
    throw new Error('a stream where a reply was expected');
  }

  /** A JSON object body of at most maxBodyBytes; 415, 413 or 400 with the reason otherwise. */
  private async body(req: IncomingMessage): Promise<Record<string, unknown>> {
    const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (type !== 'application/json') {
      await this.drain(req);
      throw new HttpError(415, 'unsupported_media_type', 'send the request as application/json');
    }
    const max = this.opts.maxBodyBytes;
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > max) {
      req.resume();
      throw new HttpError(413, 'body_too_large', `a request body may have at most ${max} bytes ([http] max_body_bytes)`, { limit: max });
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > max) {
        req.resume();
        throw new HttpError(413, 'body_too_large', `a request body may have at most ${max} bytes ([http] max_body_bytes)`, { limit: max });
      }
      chunks.push(c as Buffer);
    }
    let v: unknown;
    try {
      v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      throw new HttpError(400, 'bad_json', 'the body is not JSON');
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new HttpError(400, 'bad_json', 'the body must be a JSON object');
    return v as Record<string, unknown>;
  }

  /** Reads and discards a body we do not use (bounded). */
  private async drain(req: IncomingMessage): Promise<void> {
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > this.opts.maxBodyBytes) throw new HttpError(413, 'body_too_large', `a request body may have at most ${this.opts.maxBodyBytes} bytes`);
    }
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }
}
