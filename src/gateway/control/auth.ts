/**
 * Access control for the control server: bearer tokens with one of three roles. Tokens are
 * kept only as SHA-256 hashes (from the gateway config, or hashed on load from an environment
 * variable) and compared in constant time. Without any token the server trusts local clients
 * only: it binds loopback and refuses anything else.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

export type Role = 'viewer' | 'operator' | 'admin';
export const ROLES: readonly Role[] = ['viewer', 'operator', 'admin'];

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

/** True when `have` includes everything `need` may do. */
export function roleAllows(have: Role | null, need: Role): boolean {
  return have !== null && RANK[have] >= RANK[need];
}

export interface TokenEntry {
  name: string;
  role: Role;
  /** SHA-256 of the token, 64 lowercase hex digits. */
  sha256: string;
}

export interface Identity {
  /** The token's name, or `local` when no token store is configured. */
  name: string;
  role: Role;
}

export function sha256Hex(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export interface TokenParseError {
  code: 'ETOKENS';
  message: string;
}

/**
 * Parses the environment form: entries separated by commas, each `name:role:token` (the token in
 * clear, hashed here at once) or `name:role:sha256:<64 hex>`.
 */
export function parseTokenEnv(value: string, varName = 'HSX_GATEWAY_TOKENS'):
  { ok: true; value: TokenEntry[] } | { ok: false; error: TokenParseError } {
  const entries: TokenEntry[] = [];
  const items = value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  for (const [i, item] of items.entries()) {
    const parts = item.split(':');
    const [name, role] = parts;
    const fail = (why: string) => ({ ok: false as const, error: { code: 'ETOKENS' as const, message: `${varName} entry ${i + 1}: ${why}` } });
    if (!name || parts.length < 3) return fail('expected name:role:token or name:role:sha256:<hex>');
    if (!ROLES.includes(role as Role)) return fail(`role must be viewer, operator or admin, got "${role ?? ''}"`);
    let hash: string;
    if (parts[2] === 'sha256' && parts.length === 4) {
      hash = (parts[3] ?? '').toLowerCase();
      if (!/^[0-9a-f]{64}$/.test(hash)) return fail('sha256 must be 64 hex digits');
    } else {
      const token = parts.slice(2).join(':');
      if (token.length < 8) return fail('token must be at least 8 characters');
      hash = sha256Hex(token);
    }
    entries.push({ name, role: role as Role, sha256: hash });
  }
  return { ok: true, value: entries };
}

export class TokenStore {
  private readonly entries: { name: string; role: Role; digest: Buffer }[];

  constructor(entries: readonly TokenEntry[]) {
    this.entries = entries.map((e) => ({ name: e.name, role: e.role, digest: Buffer.from(e.sha256, 'hex') }));
  }

  get size(): number {
    return this.entries.length;
  }

  /** The identity a presented token grants, or null. Every entry is compared (constant time). */
  verify(token: string): Identity | null {
    const digest = createHash('sha256').update(token, 'utf8').digest();
    let found: Identity | null = null;
    for (const e of this.entries) {
      if (e.digest.length === digest.length && timingSafeEqual(e.digest, digest) && found === null) {
        found = { name: e.name, role: e.role };
      }
    }
    return found;
  }
}

export { isLoopbackHost } from '../../link/loopback.js';
