/**
 * The in-process MQTT broker for demos and quick runs (`embedded = true`): aedes on loopback.
 * aedes 1.2 speaks MQTT 3.1.1 only, so clients must connect with protocol version 4.
 *
 * Access (docs/mqtt.md "Access to the embedded broker"):
 * - the gateway's own bridge connects with an internal credential generated here (random, never
 *   logged, never written anywhere) and is the only client that may publish, and only under
 *   `<prefix>/<gateway-id>/`;
 * - monitors connect with a `[control] tokens` entry (username = token name, password = the token;
 *   any role) and may only subscribe; with `anonymousRead`, clients without a username may too;
 * - anything else is refused at CONNECT (return code 4 bad username or password, 5 not authorized);
 * - with `commands` (mqtt.commands = true), a monitor whose token has the operator or admin role may
 *   also publish, not retained, to exactly the two job command topics (`<prefix>/<gw>/jobs/submit`
 *   and `<prefix>/<gw>/jobs/<id>/cancel`); the command plane checks the token in the payload again.
 *   Messages on those topics are forwarded to the gateway's own client only: they carry tokens.
 *
 * Bounds: every packet a client sends is at most `maxMessageBytes` long (remaining length), checked
 * on the fixed header before aedes buffers the body (aedes' parser, mqtt-packet, has no size limit
 * and would buffer the whole packet first), so an oversized packet costs one socket read; retained
 * messages held (count and bytes); connections.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import type { BridgeLogger } from './bridge.js';
import { isCommandTopic, type TopicRoot } from './topics.js';

/** The entries of `[control] tokens` (and HSX_GATEWAY_TOKENS): only the name and the hash are used. */
export interface BrokerTokenEntry {
  name: string;
  role: string;
  /** SHA-256 of the token, hex. */
  sha256: string;
}

export interface EmbeddedBrokerOptions {
  port?: number;
  host?: string;
  /** The topic root the gateway owns: only the internal client publishes, and only under it. */
  topics: TopicRoot;
  /** Monitors: username = token name, password = the token. */
  tokens?: readonly BrokerTokenEntry[];
  /** Clients without a username may subscribe (never publish). Default false. */
  anonymousRead?: boolean;
  /** Longest packet a client may send (MQTT remaining length); longer: disconnected, nothing stored. Default 256 KiB. */
  maxMessageBytes?: number;
  /** Retained messages held; a retained publish beyond is delivered but not stored. Default 1000. */
  maxRetained?: number;
  /** Bytes (topic + payload) of retained messages held. Default 16 MiB. */
  maxRetainedBytes?: number;
  /** Monitor connections held at once (one more socket is kept for the gateway's own client). Default 64. */
  maxConnections?: number;
  /**
   * The job command plane is on (mqtt.commands): operator/admin monitors may publish to the two
   * command topics. Default false: only the gateway publishes.
   */
  commands?: boolean;
  /** The client id the gateway's bridge uses; no other client may take it. Default: random. */
  clientId?: string;
  logger?: BridgeLogger;
}

/** What the gateway's own bridge connects with. Never log it. */
export interface InternalCredential {
  username: string;
  password: string;
  clientId: string;
}

export interface EmbeddedBrokerStats {
  /** Sockets open now. */
  connections: number;
  /** CONNECTs refused (bad credentials, anonymous, reserved client id, too many clients, persistent session). */
  refusedConnects: number;
  /** Connections closed for a packet over maxMessageBytes. */
  oversized: number;
  /** Sockets closed at accept because maxConnections was reached. */
  refusedSockets: number;
  /** PUBLISH (or Last Will) refused by the ACL. */
  refusedPublishes: number;
  /** Retained messages not stored because of maxRetained / maxRetainedBytes. */
  retainedNotStored: number;
  retained: number;
  retainedBytes: number;
}

export interface EmbeddedBroker {
  url: string;
  port: number;
  /** The gateway bridge's credential (in-process only). */
  readonly internal: InternalCredential;
  stats(): EmbeddedBrokerStats;
  close(): Promise<void>;
}

export const EMBEDDED_DEFAULTS = {
  maxMessageBytes: 256 * 1024,
  maxRetained: 1000,
  maxRetainedBytes: 16 * 1024 * 1024,
  maxConnections: 64,
} as const;

type Kind = 'gateway' | 'monitor' | 'anonymous';
/** Who a connected client is; kept beside aedes' Client object. */
const identities = new WeakMap<Client, { kind: Kind; name: string; role: string | null }>();

/** Roles whose token may publish a job command (operator and above, as on the control port). */
const COMMAND_ROLES: ReadonlySet<string> = new Set(['operator', 'admin']);

const silentLogger: BridgeLogger = { info() {}, warn() {}, error() {} };

function authError(returnCode: 4 | 5 | 3 | 2, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

/**
 * Watches the MQTT fixed headers of a byte stream (type byte, 1-4 byte remaining length) and skips
 * bodies without keeping them; `feed` returns the first remaining length over the limit (or -1
 * for a malformed length), else null.
 */
export class FrameScanner {
  private skip = 0;
  private inLength = false;
  private len = 0;
  private mult = 1;
  private lenBytes = 0;

  constructor(private readonly maxRemaining: number) {}

  feed(buf: Buffer): number | null {
    let i = 0;
    while (i < buf.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, buf.length - i);
        this.skip -= n;
        i += n;
        continue;
      }
      const b = buf[i++]!;
      if (!this.inLength) {
        this.inLength = true;
        this.len = 0;
        this.mult = 1;
        this.lenBytes = 0;
        continue;
      }
      this.len += (b & 0x7f) * this.mult;
      this.mult *= 128;
      this.lenBytes++;
      if (b & 0x80) {
        if (this.lenBytes >= 4) return -1;
        continue;
      }
      this.inLength = false;
      if (this.len > this.maxRemaining) return this.len;
      this.skip = this.len;
    }
    return null;
  }
}

/**
 * The socket as aedes sees it: bytes pass through once the scanner has seen their fixed header;
 * a packet over the limit closes the socket before its body is read.
 */
class GuardedConnection extends Duplex {
  constructor(
    private readonly socket: Socket,
    maxRemaining: number,
    onOversize: (length: number) => void,
  ) {
    super({ allowHalfOpen: false });
    const scanner = new FrameScanner(maxRemaining);
    socket.on('data', (chunk: Buffer) => {
      const over = scanner.feed(chunk);
      if (over !== null) {
        socket.removeAllListeners('data');
        socket.destroy();
        onOversize(over);
        this.destroy();
        return;
      }
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (e) => this.destroy(e));
    socket.on('close', () => this.destroy());
  }

  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.socket.destroyed) return cb(new Error('socket closed'));
    if (this.socket.write(chunk)) cb();
    else this.socket.once('drain', () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.socket.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}

function digestEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export async function startEmbeddedBroker(opts: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
  const host = opts.host ?? '127.0.0.1';
  const log = opts.logger ?? silentLogger;
  const maxMessageBytes = opts.maxMessageBytes ?? EMBEDDED_DEFAULTS.maxMessageBytes;
  const maxRetained = opts.maxRetained ?? EMBEDDED_DEFAULTS.maxRetained;
  const maxRetainedBytes = opts.maxRetainedBytes ?? EMBEDDED_DEFAULTS.maxRetainedBytes;
  const maxConnections = opts.maxConnections ?? EMBEDDED_DEFAULTS.maxConnections;
  const anonymousRead = opts.anonymousRead ?? false;
  const commands = opts.commands ?? false;
  const ownRoot = `${opts.topics.prefix}/${opts.topics.gatewayId}/`;
  const internal: InternalCredential = {
    username: `hsx-gateway-${opts.topics.gatewayId}`,
    password: randomBytes(32).toString('base64url'),
    clientId: opts.clientId ?? `hsx-gateway-${randomBytes(8).toString('hex')}`,
  };
  const internalDigest = createHash('sha256').update(internal.password).digest();
  const tokens = (opts.tokens ?? []).map((t) => ({ name: t.name, role: t.role, digest: Buffer.from(t.sha256, 'hex') }));

  const stats = { connections: 0, refusedConnects: 0, oversized: 0, refusedSockets: 0, refusedPublishes: 0, retainedNotStored: 0 };
  /** topic → bytes (topic + payload) of what the broker holds retained. */
  const retained = new Map<string, number>();
  let retainedBytes = 0;
  let broker: Aedes | undefined;
  /** Monitors (and anonymous readers) connected now: aedes' registered clients that are not the gateway. */
  const connectedMonitors = (): number => {
    const clients = (broker as unknown as { clients?: Record<string, Client> } | undefined)?.clients ?? {};
    let n = 0;
    for (const c of Object.values(clients)) if (identities.get(c)?.kind !== 'gateway') n++;
    return n;
  };

  const refuse = (client: Client, why: string, code: 2 | 3 | 4 | 5): AuthenticateError => {
    stats.refusedConnects++;
    log.warn({ clientId: client.id, reason: why, returnCode: code }, `mqtt: connection refused: ${why}`);
    return authError(code, why);
  };

  broker = await Aedes.createBroker({
    connectTimeout: 10_000,
    // The gateway's client id may be longer than MQTT 3.1's 23 characters (3.1.1 has no limit).
    maxClientsIdLength: 64,
    authenticate(client, username, password, done) {
      const pass = password ?? Buffer.alloc(0);
      if (username === internal.username && digestEqual(createHash('sha256').update(pass).digest(), internalDigest)) {
        if (client.id !== internal.clientId) return done(refuse(client, 'the gateway credential with another client id', 2), false);
        identities.set(client, { kind: 'gateway', name: internal.username, role: null });
        return done(null, true);
      }
      if (client.id === internal.clientId) return done(refuse(client, "client id reserved for the gateway's own client", 2), false);
      if (!client.clean) return done(refuse(client, 'persistent sessions (clean session = 0) are not offered', 5), false);
      if (connectedMonitors() >= maxConnections) return done(refuse(client, `too many clients (max_connections ${maxConnections})`, 3), false);
      let kind: Kind | null = null;
      let name = '';
      let role: string | null = null;
      if (username === undefined || username === '') {
        if (password !== undefined && password.length > 0) return done(refuse(client, 'password without a username', 4), false);
        if (!anonymousRead) return done(refuse(client, 'anonymous clients are not allowed (mqtt.anonymous_read = false)', 5), false);
        kind = 'anonymous';
        name = 'anonymous';
      } else {
        const digest = createHash('sha256').update(pass).digest();
        let ok = false;
        for (const t of tokens) {
          if (t.name === username && digestEqual(t.digest, digest) && !ok) {
            ok = true;
            role = t.role;
          }
        }
        if (!ok) return done(refuse(client, 'bad username or password', 4), false);
        kind = 'monitor';
        name = username;
      }
      identities.set(client, { kind, name, role });
      return done(null, true);
    },
    authorizePublish(client, packet, done) {
      const who = client ? identities.get(client) : undefined;
      const size = packet.payload?.length ?? 0;
      if (who && who.kind === 'monitor' && commands && who.role !== null && COMMAND_ROLES.has(who.role) && isCommandTopic(opts.topics, packet.topic)) {
        // A job command from an operator: never stored (a retained request would be replayed to
        // every new subscriber), bounded like everything else.
        if (packet.retain) {
          stats.refusedPublishes++;
          log.warn({ clientId: client?.id, user: who.name, topic: packet.topic }, `mqtt: retained publish to command topic ${packet.topic} refused`);
          return done(new Error('not authorized to publish'));
        }
        if (size > maxMessageBytes) {
          stats.refusedPublishes++;
          return done(new Error(`message of ${size} bytes over max_message_bytes ${maxMessageBytes}`));
        }
        return done(null);
      }
      if (!who || who.kind !== 'gateway') {
        stats.refusedPublishes++;
        log.warn({ clientId: client?.id, user: who?.name, topic: packet.topic }, `mqtt: publish to ${packet.topic} refused: only the gateway publishes`);
        return done(new Error('not authorized to publish'));
      }
      if (!packet.topic.startsWith(ownRoot)) {
        stats.refusedPublishes++;
        log.warn({ topic: packet.topic }, `mqtt: the gateway's client may only publish under ${ownRoot}`);
        return done(new Error('not authorized to publish'));
      }
      if (size > maxMessageBytes) {
        stats.refusedPublishes++;
        return done(new Error(`message of ${size} bytes over max_message_bytes ${maxMessageBytes}`));
      }
      if (packet.retain) {
        const held = retained.get(packet.topic);
        const bytes = Buffer.byteLength(packet.topic) + size;
        if (size === 0) {
          if (held !== undefined) {
            retained.delete(packet.topic);
            retainedBytes -= held;
          }
        } else if ((held === undefined && retained.size >= maxRetained) || retainedBytes - (held ?? 0) + bytes > maxRetainedBytes) {
          // Delivered to the subscribers there are, not stored: the bridge must not be cut off for it.
          stats.retainedNotStored++;
          log.warn({ topic: packet.topic, retained: retained.size, retainedBytes, maxRetained, maxRetainedBytes }, `mqtt: retained ${packet.topic} not stored: retained limit reached`);
          packet.retain = false;
        } else {
          retained.set(packet.topic, bytes);
          retainedBytes += bytes - (held ?? 0);
        }
      }
      return done(null);
    },
    authorizeSubscribe(client, sub, done) {
      if (!identities.has(client)) return done(new Error('not authenticated'));
      return done(null, sub);
    },
    // Job commands carry a token in their payload: only the gateway's own client receives them,
    // whatever another client subscribed to (`#` included).
    authorizeForward(client, packet) {
      if (isCommandTopic(opts.topics, packet.topic) && identities.get(client)?.kind !== 'gateway') return null;
      return packet;
    },
  });
  const aedes = broker;

  const server: Server = createServer((socket) => {
    // One socket beyond max_connections is kept for the gateway's own client.
    if (stats.connections >= maxConnections + 1) {
      stats.refusedSockets++;
      socket.destroy();
      return;
    }
    stats.connections++;
    socket.once('close', () => stats.connections--);
    socket.setNoDelay(true);
    const conn = new GuardedConnection(socket, maxMessageBytes, (length) => {
      stats.oversized++;
      log.warn({ remote: socket.remoteAddress, length, maxMessageBytes }, `mqtt: packet of ${length < 0 ? 'malformed' : length} bytes over max_message_bytes ${maxMessageBytes}; client disconnected`);
    });
    conn.on('error', () => undefined);
    aedes.handle(conn);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `mqtt://${host}:${actual}`,
    port: actual,
    internal,
    stats: () => ({ ...stats, retained: retained.size, retainedBytes }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => aedes.close(() => resolve()));
        // Connected clients keep the server open; aedes closes them.
      }),
  };
}
